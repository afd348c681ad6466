"""The benchmarks keep working: each scenario runs at its smallest size and writes sane
figures (the targets themselves are judged on full-size runs, not here)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli_helpers import ROOT, run_bench


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (Debian package) not installed")
@pytest.mark.timeout(240)
def test_rest_hits_scenario_runs_and_reports():
    result = run_bench("rest_hits", timeout_s=180)
    assert result.returncode == 0, result.stderr
    assert "tornado hello (reference)" in result.stdout
    report = json.loads((ROOT / "bench" / "results" / "rest_hits.json").read_text())
    rows = {(row["target"], row["processes"]): row for row in report["rows"]}
    for processes in (1, 2):
        hello = rows[("tornado hello (reference)", processes)]
        assert hello["req/s"] > 0 and hello["result"] == "reference"
        for target in ("GET /v1/football/raw/leagues (HIT)", "GET /v1/football/live"):
            row = rows[(target, processes)]
            assert row["req/s"] > 0 and row["p99 ms"] > 0
            assert row["non-2xx"] == 0, "every cached hit must be a 200"
            assert row["result"] in ("pass", "FAIL")  # judged on full-size runs
            assert row["ratio"] == round(row["req/s"] / hello["req/s"], 3)
    assert report["first_answer"] == "MISS"
    assert report["live_games"] > 0, "the live list holds games"
    assert report["upstream_requests"] == 1, "one miss, then hits only"
    if ("nginx proxy_cache (scale)", 1) in rows:
        assert report["nginx_cache"] == "HIT"
    assert report["machine"]["cores"] >= 1


@pytest.mark.timeout(180)
def test_normalize_scenario_runs_and_reports():
    result = run_bench("normalize", timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "bench" / "results" / "normalize.json").read_text())
    assert {row["sport"] for row in report["rows"]} >= {"football", "basketball"}
    assert all(row["normalize ms (median)"] > 0 for row in report["rows"])


@pytest.mark.timeout(180)
def test_bandwidth_scenario_runs_and_reports():
    result = run_bench("bandwidth", timeout_s=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "bench" / "results" / "bandwidth.json").read_text())
    assert {row["frames"] for row in report["rows"]} == {"uncompressed", "permessage-deflate"}
    for row in report["rows"]:
        assert 0 < row["events B/match"] < row["reference B/match"]
    for match in report["per_match"]:
        # a snapshot, a start and a finish at the least; the full game on every change
        # is pushed more often than events are polled
        assert match["events"] >= 3
        assert match["full_pushes"] >= match["event_poll_pushes"] >= 2
        assert match["events_deflate"] <= match["events_bytes"]


@pytest.mark.timeout(300)
def test_economy_scenario_runs_and_reports():
    result = run_bench("economy", timeout_s=240)
    assert result.returncode == 0, result.stderr
    clients = json.loads((ROOT / "bench" / "results" / "economy_clients.json").read_text())
    assert clients["ws_messages_delivered"] > 0 and clients["ws_failed"] == 0
    assert clients["rest_requests"] > 0
    assert set(clients["rest_by_status"]) <= {"200", "200 HIT"}, clients["rest_by_status"]
    assert clients["settled_reads"], "no quiet moment to read the counters in"
    every = {row["sport"]: row for row in clients["rows"]}["all"]
    assert every["pollers' requests"] > 0
    # the clients and the REST traffic cost the upstream nothing: what the simulator
    # served is exactly what the pollers asked for
    assert every["extra by clients"] == 0 and every["user (REST miss)"] == 0, every
    assert every["simulator requests"] == every["pollers' requests"]
    assert set(clients["quiet_extra"].values()) == {0}
    day = json.loads((ROOT / "bench" / "results" / "economy_day.json").read_text())
    rows = {row["sport"]: row for row in day["rows"]}
    assert set(rows) == {"football", "basketball", "hockey", "baseball", "american-football"}
    for row in rows.values():
        assert row["requests/day"] > 0
        assert 0 < row["age p50 s"] <= row["age p90 s"]


@pytest.mark.timeout(240)
def test_e2e_scenario_runs_and_reports():
    result = run_bench("e2e", timeout_s=180)
    assert result.returncode == 0, result.stderr
    report = json.loads((ROOT / "bench" / "results" / "e2e.json").read_text())
    assert report["failed"] == 0 and report["out_of_order"] == 0
    rows = {row["sport"]: row for row in report["rows"]}
    assert set(rows) == {"football", "basketball", "hockey"}
    measured = [row for row in rows.values() if row["changes"]]
    # basketball's scores move every few seconds of play: its changes are never absent
    assert rows["basketball"]["changes"] > 0, rows
    for row in measured:
        done, total = (int(n) for n in row["delivered to all"].split("/"))
        assert done == total == row["changes"], row
        assert 0 < row["p50 s"] <= row["p99 s"], row
        assert 0 <= row["change->bus p50 s"] <= row["change->bus p99 s"], row
        assert 0 < row["bus->last p50 ms"] <= row["bus->last p99 ms"], row
    for samples in report["samples"].values():
        for poll_s, fan_s, total_s, _got in samples:
            assert abs(poll_s + fan_s - total_s) < 1e-6


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="the Sentinel set and the Cluster need redis-server and redis-cli")
@pytest.mark.timeout(240)
def test_topologies_scenario_runs_and_reports():
    result = run_bench("topologies", timeout_s=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "topologies.json").read_text())
    assert [row["topology"] for row in report["rows"]] == ["single", "sentinel", "cluster"]
    clients = report["size"]["clients"]
    for name, measured in report["topologies"].items():
        for run in ("bus", "bus_paced"):
            figures = measured[run]
            # every event ingested reached the other process's bus listener, once
            assert figures["sent"] > 0 and figures["received"] == figures["sent"], (name, run)
            assert figures["repeated"] == 0 and figures["unexpected"] == 0, (name, run)
            assert 0 < figures["p50 ms"] <= figures["p99 ms"] < 60_000, (name, run)
            assert 0 < figures["events/s"] < 10**6, (name, run)
        fan = measured["fanout"]
        assert fan["processes"] == 2 and fan["clients"] == clients
        assert fan["events"] >= 5, name
        assert fan["delivered (min per event)"] == clients, name
        assert fan["failed"] == 0 and fan["out of order"] == 0, name
        assert 0 < fan["p50 ms"] <= fan["p99 ms"] < 5000, name
        assert len(report["fanout_latencies_ms"][name]["fanout"]) == fan["events"]
    assert report["machine"]["cores"] >= 1
