"""The fan-out benchmark keeps working: at CI size every client gets every event and the
figures are sane (the targets are judged on `--full` runs, see bench/results)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli_helpers import ROOT


def test_fanout_scenario_runs_and_reports():
    result = subprocess.run([sys.executable, "-m", "bench", "fanout"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "fanout.json").read_text())
    rows = {row["transport"]: row for row in report["rows"]}
    assert set(rows) == {"WebSocket", "SSE"}
    for row in rows.values():
        assert row["events"] >= 20
        assert row["delivered (min per event)"] == row["clients"], row
        assert 0 < row["last client p50 ms"] <= row["last client p99 ms"] < 5000
        assert 0 < row["RSS per idle conn KiB"] < 1024
