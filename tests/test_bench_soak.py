"""The soak scenario: its checks catch what they claim to (lost, repeated and resynced
events, chunked SSE split anywhere, events missing at the end), and at CI size the whole
soak runs and meets every pass criterion on real figures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.clients import Tally
from bench.soak import Truth, missing_at_end, rss_growth
from bench.soak_clients import SNAPSHOT, Follower, SoakSse
from tests.cli_helpers import ROOT, run_bench


def test_a_follower_counts_gaps_duplicates_and_snapshot_skips():
    f = Follower("ws", ("sports.football",))
    for seq in (4, 5, 6):  # first sight of a game: no gap before it
        f.see("game.score", 7, seq)
    f.see("game.score", 7, 6)  # again
    f.see("game.status", 7, 9)  # 7 and 8 lost
    f.see(SNAPSHOT, 7, 12)  # resynced: 10, 11 and 12 never came as events
    f.see("game.event", 7, 13)
    f.see(SNAPSHOT, 8, 3)  # a new game's snapshot skips nothing
    assert (f.events, f.duplicates, f.gaps) == (6, 1, 2)
    assert (f.snapshots, f.skipped_by_snapshot) == (2, 3)
    assert f.last_seq == {7: 13, 8: 3}


def test_a_follower_resumes_every_sport_from_an_event_or_its_cut():
    f = Follower("ws", ("sports.hockey", "sports.baseball"))
    assert f.resume_from() is None  # a new client
    f.caught_up(1_700_000_005_000)
    f.positions["hockey"] = "1700000009000-2"
    from btsguru.realtime.cursor import parse_cursor

    cursor = parse_cursor(f.resume_from() or "", ["hockey", "baseball"])
    assert cursor.positions == {"hockey": "1700000009000-2", "baseball": "1700000004000-0"}
    sse = Follower("sse", ("sports.hockey",))
    sse.caught_up(1_700_000_005_000)
    assert sse.resume_from() == "1700000004000-0"
    sse.cursor = "opaque"
    assert sse.resume_from() == "opaque"


def _sse(follower: Follower) -> tuple[SoakSse, list[str]]:
    ready: list[str] = []
    client = SoakSse(follower, Tally(), "http://127.0.0.1:1/v1/stream?channels=x",
                     lambda: ready.append("ready"), None)
    client.upgraded = True
    return client, ready


def _chunked(text: bytes, size: int) -> bytes:
    out = b""
    for at in range(0, len(text), size):
        part = text[at:at + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out


async def test_the_sse_client_reads_chunked_events_split_anywhere():
    body = (b"retry: 3000\n\n: subscribed\n\n"
            b'id: C1\nevent: game.score\ndata: {"channel":"sports.hockey","game_id":5,'
            b'"seq":1,"changes":{"home.score":1}}\n\n: hb\n\n'
            b'id: C2\nevent: game.snapshot\ndata: {"channel":"sports.hockey","id":5,'
            b'"seq":4}\n\n'
            b'id: C3\nevent: game.finished\ndata: {"channel":"sports.hockey","game_id":5,'
            b'"seq":5,"changes":{}}\n\n')
    wire = _chunked(body, 37)
    for step in (1, 7, len(wire)):
        follower = Follower("sse", ("sports.hockey",))
        client, ready = _sse(follower)
        for at in range(0, len(wire), step):
            client.body(wire[at:at + step])
        assert ready == ["ready"]
        assert (follower.events, follower.snapshots, follower.skipped_by_snapshot) == (2, 1, 3)
        assert follower.last_seq == {5: 5} and follower.cursor == "C3"


def test_missing_at_end_counts_what_was_published_after_the_start():
    truth = Truth()
    for ms, seq in ((1_000, 1), (5_000, 2), (6_000, 3), (9_000, 4)):
        truth.add("football", f"{ms}-0", 42, seq)
    truth.add("hockey", "6000-0", 43, 1)  # not a sport it follows
    times = {g: [at for at, _ in events] for g, events in truth.events.items()}
    record: dict[str, Any] = {"started_at": 3.0, "sports": ["football"], "last_seq": {42: 2}}
    # seq 3 (6 s) is owed; seq 1 came before the start, seq 4 after the cutoff
    assert missing_at_end(record, truth, 8.0, times) == 1
    record["last_seq"] = {42: 3}
    assert missing_at_end(record, truth, 8.0, times) == 0


def test_rss_growth_compares_the_middle_with_the_end():
    samples = [(float(t), 100_000 + (t * 100 if t > 50 else 0)) for t in range(101)]
    growth, mid, end = rss_growth(samples, (0.0, 100.0))
    assert mid == 100_000 and end > 109_000 and 0.09 < growth < 0.1


@pytest.mark.timeout(360)
def test_soak_scenario_meets_every_criterion_at_ci_size():
    result = run_bench("soak", timeout_s=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "bench" / "results" / "soak.json").read_text())
    rows = {row["criterion"]: row for row in report["rows"]}
    assert len(rows) == 9 and all(row["pass"] == "yes" for row in rows.values()), rows
    # the figures behind the verdicts are real: events flowed to both transports, the
    # churn resumed clients, the server was sampled, the pollers and REST were busy
    assert report["events_published"] > 0 and report["games_with_events"] > 0
    for kind in ("ws", "sse"):
        assert report["by_kind"][kind]["events"] > 0, report["by_kind"]
        assert report["by_kind"][kind]["resumes"] > 0, report["by_kind"]
    assert report["gaps"] == report["missing_at_end"] == report["duplicates"] == 0
    assert report["skipped_by_snapshot"] == report["unrecovered_in_window"] == 0
    assert report["kicked"] >= report["followers"] // 10
    assert report["connections"] == {"start": report["followers"], "end": report["followers"]}
    assert report["tasks"]["start"] > 0  # the gauge is scraped
    assert report["fds"]["end"] - report["fds"]["start"] <= 8
    assert report["fds"]["start"] > report["followers"]  # a socket per stream at least
    assert len(report["rss_kib"]["samples"]) >= 30 and abs(report["rss_kib"]["growth"]) < 0.05
    upstream = report["upstream"]
    assert upstream["pollers"] > 0 and upstream["simulator"] == upstream["pollers"]
    assert upstream["rest"] == 0 and upstream["settled_reads"]
    assert report["rest_requests"] > 100
    assert set(report["rest_by_status"]) <= {"200", "200 HIT", "200 MISS"}
    assert report["simulated_hours"] >= 6
