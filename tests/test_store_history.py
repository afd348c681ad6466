"""The per-sport event history over real Redis: replay exactly once and in order, the
window, trimming, and events appended by others."""

from __future__ import annotations

import time

import pytest

from btsguru.store.history import HISTORY_RETENTION_S, history_key, parse_stream_id
from tests.access_fixtures import migrated_sqlite
from tests.store_fixtures import goal, live, make_game, open_store
from tests.waiting import wait_until


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def node(test_config, runner, io_loop):
    node = open_store(test_config, runner)
    yield node
    io_loop.run_sync(node.close)


async def play(node):
    """Two games of two leagues, a few events each; returns the stored changes."""
    a, b = make_game(1, league=39), make_game(2, league=140, home_id=7, away_id=8)
    await node.games.ingest("football", [a, b])
    changes = []
    for minute, (ha, hb) in enumerate([(1, 0), (2, 0), (2, 1)], start=10):
        result = await node.games.ingest("football", [
            live(a, ha, 0, minute, events=tuple(goal(m) for m in range(10, 10 + ha))),
            live(b, hb, 0, minute)])
        changes += result.changes
    return changes


async def test_read_after_replays_exactly_what_followed_in_order(node):
    changes = await play(node)
    ids = [c.id for c in changes]
    assert len(ids) == len(set(ids)) == 6
    assert [parse_stream_id(i) for i in ids] == sorted(parse_stream_id(i) for i in ids)
    for k in (0, 3, len(ids) - 1):
        replay = await node.history.read_after("football", ids[k])
        assert [e.id for e in replay] == ids[k + 1:]
        assert [(e.game_id, e.seq, e.event) for e in replay] == [
            (c.change.game_id, c.seq, c.event) for c in changes[k + 1:]]
    only_b = await node.history.read_after("football", ids[0], game_ids={2})
    assert [e.id for e in only_b] == [c.id for c in changes[1:] if c.change.game_id == 2]
    league = await node.history.read_after("football", ids[0], league_ids={39})
    assert {e.league_id for e in league} == {39} and league
    assert league[0].to_bus_event().channel == "sports.football.39.1"
    assert league[0].data["seq"] == league[0].seq


async def test_ids_older_than_the_window_get_none(node):
    changes = await play(node)
    assert await node.history.window_start("football") == changes[0].id
    assert await node.history.last_id("football") == changes[-1].id
    assert await node.history.read_after("football", "1-0") is None
    assert await node.history.read_after("hockey", changes[0].id) is None  # no history
    assert await node.history.read_after("football", changes[-1].id) == []
    with pytest.raises(ValueError):
        await node.history.read_after("football", "yesterday")


async def test_appends_trim_what_is_older_than_the_retention(node):
    key = history_key(node.redis.keys, "football")
    old_ms = int(time.time() * 1000) - (HISTORY_RETENTION_S + 600) * 1000
    # several listpack nodes' worth of old entries (100 per node by default), so the
    # approximate trim has whole nodes to drop
    for n in range(350):
        await node.redis.reverb.xadd(key, {"event": "game.updated", "data": "{}"},
                                     id=f"{old_ms + n}-0")
    changes = await play(node)
    first = parse_stream_id(await node.history.window_start("football"))
    assert first > (old_ms + 100, 0)  # most old entries are gone
    assert first <= parse_stream_id(changes[0].id)  # nothing recent was trimmed
    assert await node.history.read_after("football", f"{old_ms}-0") is None
    replay = await node.history.read_after("football", changes[0].id)
    assert [e.id for e in replay] == [c.id for c in changes[1:]]


async def test_append_publishes_other_events_with_an_id(node):
    got = []
    await node.bus.subscribe("sports.football", lambda ch, ev: got.append(ev))
    stored = await node.history.append("football", "news", "sports.football.39",
                                       {"text": "kick-off moved"})
    assert stored.league_id == 39 and stored.game_id is None and stored.seq is None
    await wait_until(lambda: len(got) == 1)
    assert got[0].id == stored.id and got[0].data == {"text": "kick-off moved"}
    assert got[0].channel == "sports.football.39"
    assert await node.history.last_id("football") == stored.id
    with pytest.raises(ValueError):
        await node.history.append("hockey", "news", "sports.football", {})
