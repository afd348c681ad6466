"""GameStore over real Redis and SQLite: numbering, atomicity under concurrent writers,
clock ticks, persistence and the database fallback, listing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date

import orjson
import pytest

from btsguru.db.models import GameRecord
from btsguru.db.models import League as LeagueRow
from btsguru.db.models import Team as TeamRow
from btsguru.sports.base import Phase
from btsguru.sports.static import LeagueInfo, TeamInfo
from btsguru.store.bus import BusEvent
from btsguru.store.history import history_key
from tests.access_fixtures import migrated_sqlite
from tests.store_fixtures import goal, live, make_game, open_store, store_nodes


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def nodes(test_config, runner, io_loop):
    yield from store_nodes(test_config, runner, io_loop)


async def all_history(node, sport="football"):
    key = history_key(node.redis.keys, sport)
    return [(i.decode(), {k.decode(): v for k, v in f.items()})
            for i, f in await node.redis.reverb.xrange(key, "-", "+")]


async def test_first_sighting_is_stored_without_events(nodes, runner):
    node = nodes()
    result = await node.games.ingest("football", [make_game(1001), make_game(1002)])
    assert (result.new_games, result.updated_games, result.events) == (2, 0, 0)
    assert result.changes == ()
    stored = await node.games.get("football", 1001)
    assert stored is not None and stored.seq == 0
    assert stored.updated_at == "2024-08-16T12:00:00Z"
    assert await all_history(node) == []
    rows = await runner.read(lambda: sorted(r.id for r in GameRecord.select()))
    assert rows == [1001, 1002]


async def test_a_goal_takes_two_consecutive_numbers_in_history_order(nodes):
    node = nodes()
    game = make_game()
    await node.games.ingest("football", [game])
    started = await node.games.ingest("football", [live(game, 0, 0, 1)])
    assert [(c.event, c.seq) for c in started.changes] == [("game.started", 1)]
    scored = await node.games.ingest("football",
                                     [live(game, 1, 0, 12, events=(goal(11),))])
    assert [(c.event, c.seq) for c in scored.changes] == [("game.score", 2), ("game.event", 3)]
    assert scored.changes[0].change.changes == {"home.score": 1, "away.score": 0}
    stored = await node.games.get("football", game.id)
    assert stored.seq == 3 and stored.home.score == 1 and len(stored.events) == 1
    history = await all_history(node)
    assert [h[0] for h in history] == [c.id for c in (*started.changes, *scored.changes)]
    assert [int(h[1]["seq"]) for h in history] == [1, 2, 3]
    assert [h[1]["event"] for h in history] == [b"game.started", b"game.score", b"game.event"]
    assert orjson.loads(history[2][1]["data"])["event"]["player"] == "J. Striker"
    assert history[2][1]["channel"] == b"sports.football.39.1001"


async def test_a_clock_tick_updates_the_state_without_an_event(nodes):
    node = nodes()
    game = make_game()
    await node.games.ingest("football", [game])
    await node.games.ingest("football", [live(game, 1, 0, 12)])
    before = await all_history(node)
    node.clock.advance(60)
    tick = await node.games.ingest("football", [live(game, 1, 0, 13)])
    assert (tick.events, tick.updated_games, tick.new_games) == (0, 1, 0)
    stored = await node.games.get("football", game.id)
    assert stored.status.clock == "13" and stored.seq == 1
    assert stored.updated_at == "2024-08-16T12:01:00Z"
    assert await all_history(node) == before
    # the same observation again (server time aside) is not even written
    again = replace(live(game, 1, 0, 13), status=replace(
        live(game, 1, 0, 13).status, server_time="2024-08-16T12:05:00Z"))
    same = await node.games.ingest("football", [again])
    assert (same.events, same.updated_games) == (0, 0)


async def test_numbering_survives_a_restart(nodes):
    first = nodes()
    game = make_game()
    await first.games.ingest("football", [game])
    await first.games.ingest("football", [live(game, 1, 0, 10)])
    await first.close()
    second = nodes()  # a new process: nothing in memory
    result = await second.games.ingest("football", [live(game, 2, 0, 30)])
    assert [c.seq for c in result.changes] == [2]
    assert (await second.games.get("football", game.id)).seq == 2


async def test_two_concurrent_stores_number_every_change_once_in_order(nodes):
    a, b = nodes(), nodes()
    game = make_game()
    await a.games.ingest("football", [game])
    await a.games.ingest("football", [live(game, 0, 0, 1)])  # seq 1

    async def feed(node, side):
        results = []
        for n in range(1, 13):
            score = (n, 0) if side == "home" else (0, n)
            results.append(await node.games.ingest("football", [live(game, *score, 1 + n)]))
        return results

    outcome = await asyncio.gather(feed(a, "home"), feed(b, "away"))
    seqs = [c.seq for results in outcome for r in results for c in r.changes]
    assert sorted(seqs) == list(range(2, len(seqs) + 2))  # each number exactly once
    assert sum(r.skipped for results in outcome for r in results) == 0
    history = await all_history(a)
    assert [int(h[1]["seq"]) for h in history] == list(range(1, len(seqs) + 2))
    stored = await a.games.get("football", game.id)
    assert stored.seq == len(seqs) + 1
    # what the history says the game is, is what is stored
    last_score = [orjson.loads(h[1]["data"])["changes"] for h in history][-1]
    assert (stored.home.score, stored.away.score) == (last_score["home.score"],
                                                     last_score["away.score"])


async def test_get_falls_back_to_the_database_when_redis_lost_the_game(nodes, runner):
    node = nodes()
    game = make_game(2001)
    await node.games.ingest("football", [game])
    await node.games.ingest("football", [live(game, 1, 0, 5)])
    await node.redis.reverb.delete(node.games._game_key("football", 2001))
    stored = await node.games.get("football", 2001)
    assert stored is not None and stored.home.score == 1 and stored.seq == 1
    assert await node.games.get("football", 999999) is None
    # seen again after Redis lost it: diffed against the database, numbering continues
    await node.redis.reverb.delete(node.games._seq_key("football", 2001))
    result = await node.games.ingest("football", [live(game, 2, 0, 9)])
    assert [(c.event, c.seq) for c in result.changes] == [("game.score", 2)]


async def test_live_lists_games_in_play_only(nodes):
    node = nodes()
    games = [make_game(1), make_game(2), make_game(3)]
    await node.games.ingest("football", games)
    await node.games.ingest("football", [
        live(games[0], 0, 0, 3),
        replace(live(games[1], 1, 1, 45), status=replace(live(games[1], 1, 1, 45).status,
                                                           phase=Phase.BREAK, code="HT"))])
    assert [g.id for g in await node.games.live("football")] == [1, 2]
    finished = replace(live(games[0], 2, 0, 90), status=replace(
        live(games[0], 2, 0, 90).status, phase=Phase.FINISHED, code="FT"))
    await node.games.ingest("football", [finished])
    assert [g.id for g in await node.games.live("football")] == [2]
    assert await node.games.live_counts(["football", "hockey"]) == {"football": 1, "hockey": 0}


async def test_listing_by_day_with_filters(nodes):
    node = nodes()
    today = [
        make_game(11, league=39, home_id=1, away_id=2, start="2024-08-16T15:00:00Z"),
        make_game(12, league=39, home_id=3, away_id=4, start="2024-08-16T13:00:00Z"),
        make_game(13, league=140, home_id=1, away_id=5, start="2024-08-16T18:00:00Z"),
    ]
    yesterday = make_game(14, league=39, start="2024-08-15T20:00:00Z")
    long_ago = make_game(15, league=39, start="2024-08-01T20:00:00Z")
    await node.games.ingest("football", [*today, yesterday, long_ago])
    await node.games.ingest("football", [live(today[0], 0, 0, 5)])

    async def ids(**filters):
        return [g.id for g in await node.games.list("football", **filters)]

    assert await ids() == [12, 11, 13]  # today by default, by start time
    assert await ids(date=date(2024, 8, 16), league=39) == [12, 11]
    assert await ids(team=1) == [11, 13]
    assert await ids(phase=Phase.LIVE) == [11]
    assert await ids(phase=Phase.SCHEDULED, league=140) == [13]
    assert await ids(date=date(2024, 8, 15)) == [14]
    assert await ids(date=date(2024, 8, 17)) == []
    assert await ids(date=date(2024, 8, 1)) == [15]  # from the database
    assert await ids(date=date(2024, 8, 1), league=140) == []
    # rescheduled to tomorrow: leaves today's index
    moved = replace(today[2], start_time="2024-08-17T18:00:00Z")
    await node.games.ingest("football", [moved])
    assert await ids() == [12, 11]
    assert await ids(date=date(2024, 8, 17)) == [13]


async def test_today_falls_back_to_the_database_without_its_index(nodes):
    node = nodes()
    await node.games.ingest("football", [make_game(21), make_game(22, league=140)])
    await node.redis.reverb.delete(node.games._day_key("football", "2024-08-16"))
    assert [g.id for g in await node.games.list("football", league=140)] == [22]


async def test_in_memory_bus_gets_the_changes_after_they_are_stored(nodes):
    node = nodes(redis_bus=False)
    seen: list[tuple[str, BusEvent]] = []
    await node.bus.subscribe("sports.football.39", lambda ch, ev: seen.append((ch, ev)))
    game = make_game()
    await node.games.ingest("football", [game])
    result = await node.games.ingest("football", [live(game, 1, 0, 12, events=(goal(11),))])
    assert [(ch, ev.id, ev.event, ev.data["seq"]) for ch, ev in seen] == [
        ("sports.football.39", c.id, c.event, c.seq) for c in result.changes]
    assert [ev.event for _, ev in seen] == ["game.started", "game.event"]


async def test_leagues_and_teams_are_upserted(nodes, runner):
    node = nodes()
    await node.games.save_leagues("football", [LeagueInfo(39, "Premier League", "England",
                                                          2024, None)])
    await node.games.save_leagues("football", [LeagueInfo(39, "Premier League", "England",
                                                          2025, "logo.png")])
    await node.games.save_teams("football", [TeamInfo(33, "Manchester United", None, 39)])
    await node.games.save_teams("football", [TeamInfo(33, "Man Utd", "u.png", None)])

    def read():
        league = LeagueRow.get((LeagueRow.sport == "football") & (LeagueRow.id == 39))
        team = TeamRow.get((TeamRow.sport == "football") & (TeamRow.id == 33))
        return (league.season, league.logo, LeagueRow.select().count(), team.name,
                team.league_id)

    assert await runner.read(read) == ("2025", "logo.png", 1, "Man Utd", 39)


async def test_a_game_of_another_sport_is_refused(nodes):
    node = nodes()
    with pytest.raises(ValueError, match="hockey"):
        await node.games.ingest("football", [make_game(sport="hockey")])


async def test_the_embedded_store_numbers_changes_too(test_config, runner):
    """The demo runs on memory:// (fakeredis' Lua): ingest must work there as on Redis."""
    node = open_store(test_config.replace(redis_url="memory://"), runner, redis_bus=False)
    try:
        game = make_game()
        await node.games.ingest("football", [game])
        started = await node.games.ingest("football", [live(game, 0, 0, 1)])
        scored = await node.games.ingest("football", [live(game, 1, 0, 12, events=(goal(11),))])
        assert [(c.event, c.seq) for c in (*started.changes, *scored.changes)] == \
            [("game.started", 1), ("game.score", 2), ("game.event", 3)]
        assert (await node.games.get("football", game.id)).home.score == 1
    finally:
        await node.close()
