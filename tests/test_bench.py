"""The benchmarks keep working: each scenario runs at its smallest size and writes sane
figures (the targets themselves are judged on full-size runs, not here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (Debian package) not installed")
def test_rest_hits_scenario_runs_and_reports():
    result = subprocess.run([sys.executable, "-m", "bench", "rest_hits"], cwd=ROOT,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert "tornado hello (reference)" in result.stdout
    report = json.loads((ROOT / "bench" / "results" / "rest_hits.json").read_text())
    hello, raw = report["rows"]
    assert hello["req/s"] > 0 and raw["req/s"] > 0
    assert raw["non-2xx"] == 0, "every cached hit must be a 200"
    assert report["first_answer"] == "MISS"
    assert report["upstream_requests"] == 1, "one miss, then hits only"
    assert report["machine"]["cores"] >= 1


def test_normalize_scenario_runs_and_reports():
    result = subprocess.run([sys.executable, "-m", "bench", "normalize"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "bench" / "results" / "normalize.json").read_text())
    assert {row["sport"] for row in report["rows"]} >= {"football", "basketball"}
    assert all(row["normalize ms (median)"] > 0 for row in report["rows"])
