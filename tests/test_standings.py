"""Standings: each sport's upstream shape (hand-written and the simulator's) -> the
contract's rows, and the Redis store's reads."""

from __future__ import annotations

from datetime import date

import pytest

from btsguru.simulator.catalog import Catalog
from btsguru.simulator.reference import current_season, standings
from btsguru.sports import SPORTS
from btsguru.sports.standings import StandingRow, normalize_standings, standings_season
from btsguru.store.redis import open_redis
from btsguru.store.standings import StandingsStore
from tests.waiting import wait_until

FOOTBALL = [{"league": {"id": 39, "season": 2024, "standings": [[
    {"rank": 1, "team": {"id": 40, "name": "Liverpool"}, "points": 84, "group": "Premier League",
     "all": {"played": 38, "win": 25, "draw": 9, "lose": 4, "goals": {"for": 86, "against": 41}}},
    {"rank": 2, "team": {"id": 42, "name": "Arsenal"}, "points": None, "group": None,
     "all": {"played": 38, "win": "20"}},
    {"rank": 3, "team": {"name": "no id"}},
]]}}]

BASKETBALL = [[
    {"position": 1, "group": {"name": "Western Conference"}, "team": {"id": 145, "name": "Hawks"},
     "games": {"played": 82, "win": {"total": 57, "percentage": "0.695"},
               "lose": {"total": 25, "percentage": "0.305"}},
     "points": {"for": 9500, "against": 9100}},
], [
    {"position": 1, "group": {"name": "Eastern Conference"}, "team": {"id": 146, "name": "Owls"},
     "games": {"played": 82}, "points": None},
]]

HOCKEY = [[
    {"position": 1, "group": {"name": "Central"}, "team": {"id": 41, "name": "Ice Bears"},
     "games": {"played": 82, "win": {"total": 50}, "win_overtime": {"total": 4},
               "lose": {"total": 20}, "lose_overtime": {"total": 8}},
     "goals": {"for": 280, "against": 220}, "points": 116},
]]

BASEBALL = [[
    {"position": 3, "group": {"name": "AL East"}, "team": {"id": 51, "name": "Harbor Cats"},
     "games": {"played": 162, "win": {"total": 90}, "lose": {"total": 72}},
     "points": {"for": 780, "against": 700}},
]]

AMERICAN_FOOTBALL = [
    {"conference": "National Football Conference", "division": "North", "position": 2,
     "team": {"id": 62, "name": "Bay Sharks"}, "won": 9, "lost": 7, "ties": 1,
     "points": {"for": 400, "against": 380}, "league": {"season": "2024"}},
    {"conference": "American Football Conference", "division": "East", "position": 1,
     "team": {"id": 61, "name": "Metro Miners"}, "won": 12, "lost": 5, "ties": 0,
     "points": {"for": 450, "against": 300}},
]


def test_football_rows():
    rows = normalize_standings("football", FOOTBALL)
    assert [r.to_json() for r in rows] == [
        {"rank": 1, "team": {"id": 40, "name": "Liverpool"}, "points": 84, "played": 38,
         "won": 25, "drawn": 9, "lost": 4, "scored": 86, "conceded": 41,
         "group": "Premier League"},
        {"rank": 2, "team": {"id": 42, "name": "Arsenal"}, "points": None, "played": 38,
         "won": 20, "drawn": None, "lost": None, "scored": None, "conceded": None,
         "group": None},
    ]
    assert standings_season("football", FOOTBALL) == "2024"


def test_v1_rows_have_no_draws():
    basketball = normalize_standings("basketball", BASKETBALL)
    assert [(r.rank, r.team_id, r.won, r.lost, r.drawn, r.points, r.scored, r.group)
            for r in basketball] == [(1, 145, 57, 25, None, None, 9500, "Western Conference"),
                                     (1, 146, None, None, None, None, None,
                                      "Eastern Conference")]
    hockey = normalize_standings("hockey", HOCKEY)[0]
    assert (hockey.won, hockey.lost, hockey.drawn, hockey.points, hockey.scored,
            hockey.conceded) == (54, 28, None, 116, 280, 220)
    baseball = normalize_standings("baseball", BASEBALL)[0]
    assert (baseball.rank, baseball.played, baseball.won, baseball.lost, baseball.scored) == \
        (3, 162, 90, 72, 780)


def test_american_football_ties_and_divisions():
    rows = normalize_standings("american-football", AMERICAN_FOOTBALL)
    assert [(r.group, r.rank, r.team_id, r.played, r.drawn, r.points) for r in rows] == [
        ("American Football Conference - East", 1, 61, 17, 0, None),
        ("National Football Conference - North", 2, 62, 17, 1, None)]


@pytest.mark.parametrize("garbage", [None, {}, "x", [None, 1, "a"], [[None]], [{"league": []}]])
def test_garbage_gives_no_rows(garbage):
    for sport in SPORTS:
        assert normalize_standings(sport, garbage) == []


@pytest.mark.parametrize("sport", SPORTS)
def test_the_simulators_standings_normalize(sport):
    catalog = Catalog(seed=7)
    today = date(2024, 11, 1)
    league = catalog.leagues[sport][0]
    season = current_season(league, today)
    response = standings(catalog, sport, {"league": str(league.id), "season": str(season)},
                         today)
    rows = normalize_standings(sport, response)
    assert {r.team_id for r in rows} == {t.id for t in league.teams}
    for row in rows:
        assert row.team_name and row.rank >= 1 and row.played is not None
        assert row.won + row.lost + (row.drawn or 0) == row.played
        assert row.scored is not None and row.conceded is not None
        assert (row.drawn is None) == (sport not in ("football", "american-football"))
        assert (row.points is None) == (sport not in ("football", "hockey"))
    if sport != "american-football":
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert standings_season(sport, response).startswith(str(season))


async def test_store_replaces_and_reads_tables(test_config):
    stores = open_redis(test_config)
    try:
        store = StandingsStore(stores)
        rows = normalize_standings("basketball", BASKETBALL)
        await store.replace("basketball", 12, "2023-2024", rows, refreshed_at=1000.0)
        await store.replace("basketball", 12, "2024-2025", rows[:1], refreshed_at=2000.0)
        await store.replace("basketball", 12, "2022-2023", rows, refreshed_at=3000.0)
        assert await store.latest_season("basketball", 12) == "2024-2025"
        assert await store.get("basketball", 12) == rows[:1]
        assert await store.get("basketball", 12, "2023-2024") == rows
        assert await store.get("basketball", 12, "2023-2024", limit=1) == rows[:1]
        assert await store.team_rows("basketball", 12, "2023-2024", 146) == rows[1:]
        assert await store.refreshed_at("basketball", 12, "2022-2023") == 3000.0
        assert await store.get("basketball", 99) == []
        # a new answer replaces the whole table
        await store.replace("basketball", 12, "2023-2024", rows[1:], refreshed_at=4000.0)
        assert await store.get("basketball", 12, "2023-2024") == rows[1:]
        assert await store.team_rows("basketball", 12, "2023-2024", 145) == []
        # the pollers' entry: season from the answer when the query had none
        assert await store.fetched("football", 39, None, FOOTBALL, 5000.0) == 2
        assert [r.team_id for r in await store.get("football", 39, "2024")] == [40, 42]
        assert await store.fetched("football", 39, "2024", [], 6000.0) == 0
        assert await store.refreshed_at("football", 39, "2024") == 5000.0
        assert isinstance((await store.get("football", 39))[0], StandingRow)
    finally:
        await stores.close()


# -- the pollers: tables right after start-up, not one check interval later --

async def test_standings_wait_for_the_schedule_then_come_at_once(test_config):
    """The standings task's first run finds an empty schedule book (nothing to fetch):
    its state row says it waits for the schedule, not that it did its work; the
    schedule's run then wakes it, and the tables come within the scheduler's wake check
    instead of STANDINGS_CHECK_S (5 minutes) later."""
    from btsguru.pollers.scheduler import WAKE_CHECK_S
    from btsguru.pollers.state import PollerStateReader
    from btsguru.pollers.tasks import STANDINGS_CHECK_S, ScheduleTask, StandingsTask
    from tests.poller_fixtures import poller_stack
    from tests.upstream_fixtures import point_at, simulator, with_quota

    assert WAKE_CHECK_S * 2 < STANDINGS_CHECK_S
    async with simulator() as server:
        config = point_at(with_quota(test_config), server)
        async with poller_stack(config, sports=["football"], kinds=("standings",),
                                use_leases=True) as stack:
            reader = PollerStateReader(stack.redis, stack.clock)
            await stack.pollers.start()

            async def waiting() -> bool:
                rows = await reader.tasks("football")
                return any(r.task == "standings" and r.reason == "waiting for the schedule"
                           for r in rows)

            await wait_until(waiting, what="the standings task to wait for the schedule")
            [before] = [r for r in await reader.tasks("football") if r.task == "standings"]
            assert before.next_run is not None
            assert before.next_run >= stack.clock.time() + STANDINGS_CHECK_S - 30
            # the schedule runs (here by hand, as the scheduler would): the book fills
            ctx = stack.pollers.contexts["football"]
            await ScheduleTask(ctx).run_once()
            [woken] = [r for r in await reader.tasks("football") if r.task == "standings"]
            assert woken.next_run is not None and woken.next_run <= stack.clock.time()

            # due now, the scheduler runs it at its next look (WAKE_CHECK_S at most); run
            # as it would, it fetches the tables and no longer waits
            task = StandingsTask(ctx)
            report = await task.run_once()
            assert int(report.extra["standings_rows"]) > 0
            assert task.next_delay_s() == (STANDINGS_CHECK_S, "standings check")
