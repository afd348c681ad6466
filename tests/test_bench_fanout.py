"""The fan-out benchmark keeps working: at CI size every row (btsguru's WebSocket, SSE,
deflate and two-process rows, and the Node `ws` reference) delivers every event to every
client once and in order, the figures are sane, and every target is judged (the targets
themselves are judged on `--full` runs, see bench/results)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli_helpers import ROOT, run_bench


@pytest.mark.timeout(460)
def test_fanout_scenario_runs_and_reports():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the Node `ws` reference needs node and npm")
    result = run_bench("fanout", timeout_s=400)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "fanout.json").read_text())
    rows = report["rows"]
    assert {row["server"] for row in rows} == {"btsguru", "node-ws"}
    assert any(row["processes"] == 2 for row in rows)
    for row in rows:
        assert row["events"] >= 15, row
        assert row["delivered (min per event)"] == row["clients"], row
        assert row["failed"] == 0 and row["out of order"] == 0, row
        assert 0 < row["p50 ms"] <= row["p99 ms"] < 5000, row
        assert 0 < row["KiB/conn"] < 1024, row
        assert row["CPU ms/event"] > 0, row
    targets = {t["target"] for t in report["targets"]}
    assert len(targets) == 7
    assert all(isinstance(t["met"], bool) and t["measured"] > 0 for t in report["targets"])
