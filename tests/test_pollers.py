"""The pollers end to end: simulator -> client -> normalize -> GameStore (diff, seq, history)
-> bus, with simulated time advanced through whole games; the raw cache; the quota; the
state `/v1/sports` reads."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from btsguru.clock import FakeClock
from btsguru.pollers.book import ScheduleBook
from btsguru.pollers.budget import SportBudget
from btsguru.pollers.cadence import CadenceSettings, Kind, is_host_failure, live_decision
from btsguru.pollers.context import QUERIES
from btsguru.pollers.scheduler import IterationFailed
from btsguru.pollers.state import PollerStateReader
from btsguru.pollers.tasks import LiveTask, ScheduleTask
from btsguru.sports import SPORTS
from btsguru.sports.base import Phase
from btsguru.upstream import QuotaGovernor
from tests.poller_fixtures import next_normal_game, poller_stack
from tests.store_fixtures import make_game
from tests.upstream_fixtures import (
    PinnedClock,
    point_at,
    redis_stores,
    sim_fault,
    sim_stats,
    simulator,
    with_quota,
)
from tests.waiting import wait_until

DAY_S = 86_400
# Fixed instants for the tests that need a time of day, on a clock the simulator and the
# relay share (`PinnedClock`): the same games whenever the tests run.
MORNING = datetime(2030, 5, 4, 9, 0, tzinfo=UTC).timestamp()
# Yesterday's late games are still in play then (four to seven of each date-swept sport)
# and none of them changes between in play and not for ten minutes.
JUST_AFTER_MIDNIGHT = datetime(2030, 5, 5, 0, 3, tzinfo=UTC).timestamp()
DATE_SWEPT = ("basketball", "hockey", "baseball")  # no `live=all`: polled by date
# The contract's live and break codes of those sports: a game the pollers chase.
IN_PLAY_CODES = {
    "basketball": {"Q1", "Q2", "Q3", "Q4", "OT", "HT", "BT"},
    "hockey": {"P1", "P2", "P3", "OT", "PT", "BT"},
    "baseball": {f"IN{n}" for n in range(1, 10)},
}


def _goals(sim_game):
    """The goals the simulator's timeline holds for a game (shoot-out kicks aside)."""
    return [e for e in sim_game.events if e.points > 0 and e.period != "PEN" and e.stat is None]


def _assert_seq_has_no_gap(story):
    assert [e.data["seq"] for e in story] == list(range(1, len(story) + 1))


async def _play(stack, server, sport, match, step_s, max_steps=400):
    """Schedule once, then advance the simulator `step_s` at a time, polling live after
    each step, until the store has the game finished."""
    ctx = stack.pollers.contexts[sport]
    live = LiveTask(ctx)
    await ScheduleTask(ctx).run_once()
    await live.run_once()  # the date-sweeping sports' today is the live task's
    stored = await stack.games.get(sport, match.id)
    assert stored is not None and stored.status.phase is Phase.SCHEDULED
    server.simulator.advance(match.start_ts - server.simulator.now().sim_now + 5)
    for _ in range(max_steps):
        await live.run_once()
        game = await stack.games.get(sport, match.id)
        if game is not None and game.status.phase is Phase.FINISHED:
            return game
        server.simulator.advance(step_s)
    raise AssertionError(f"{sport} {match.id} did not finish in {max_steps} steps")


async def test_a_football_match_is_told_on_the_bus(test_config):
    # the same games whenever the test runs: the simulator and the relay on one clock
    clock = PinnedClock(MORNING)
    async with simulator(clock=clock) as server:
        config = point_at(with_quota(test_config), server)
        async with poller_stack(config, clock=clock, sports=["football"],
                                kinds=("live", "schedule")) as stack:
            match = next_normal_game(server, "football", after_s=300)
            assert match is not None
            final = await _play(stack, server, "football", match, step_s=60)

            story = stack.of_game(match.id)
            names = [e.event for e in story]
            assert names[0] == "game.started" and names[-1] == "game.finished", names
            assert names.count("game.started") == names.count("game.finished") == 1
            statuses = [e.data["changes"]["status.code"] for e in story
                        if e.event == "game.status"]
            assert statuses[statuses.index("HT"):][:2] == ["HT", "2H"], statuses
            # each goal: its score, then its event, consecutively
            goals = [e for e in story if e.event == "game.event"
                     and e.data["event"]["type"] == "goal"]
            assert len(goals) == len(_goals(match)) > 0
            for i, event in enumerate(story):
                if event.event == "game.score":
                    following = story[i + 1]
                    assert following.event == "game.event", names[i:i + 3]
                    assert following.data["event"]["type"] == "goal"
            home, away = match.state_at(10**7).totals()
            finished = story[-1].data["changes"]
            assert (finished["home.score"], finished["away.score"]) == (home, away)
            assert finished["status.code"] == "FT"
            assert (final.home.score, final.away.score) == (home, away)
            assert final.seq == len(story)
            _assert_seq_has_no_gap(story)
            # what the poller fetched is what a raw-proxy user now hits
            assert await stack.cache.get("football", "fixtures", {"live": "all"}) is not None
            assert await stack.cache.get("football", "fixtures", {"ids": str(match.id)}) \
                is not None


async def test_a_hockey_game_with_its_events(test_config):
    # date-based sports are polled by the relay's UTC day: the match (about 3 simulated
    # hours, played in fast-forward) must kick off on it, so the simulator and the relay
    # share a clock pinned to a morning, whatever the time of day the test runs at
    clock = PinnedClock(MORNING)
    async with simulator(clock=clock) as server:
        midnight = MORNING - MORNING % DAY_S + DAY_S
        match = next_normal_game(server, "hockey", after_s=60, until=midnight)
        assert match is not None
        config = point_at(with_quota(test_config), server)
        async with poller_stack(config, clock=clock, sports=["hockey"],
                                kinds=("live", "schedule")) as stack:
            final = await _play(stack, server, "hockey", match, step_s=120)
            story = stack.of_game(match.id)
            names = [e.event for e in story]
            assert names[0] == "game.started" and names[-1] == "game.finished", names
            home, away = match.state_at(10**7).totals()
            assert (final.home.score, final.away.score) == (home, away)
            assert names.count("game.score") >= 1
            goals = [e for e in story if e.event == "game.event"
                     and e.data["event"]["type"] == "goal"]
            assert len(goals) == len(_goals(match))  # from /games/events, spread over runs
            assert [p.name for p in final.periods][:3] == ["P1", "P2", "P3"]
            _assert_seq_has_no_gap(story)
            reported = stack.pollers.fetcher.counts.requests["hockey"]
            stats = await sim_stats(server)
            assert stats["by_path"].get("/hockey/games/events", 0) >= 1
            assert stats["requests"] == reported


def _in_play(server, sport):
    """The simulator's games of `sport` in play now, by id."""
    sim_now = int(server.simulator.now().sim_now)
    return {g.id: g for g in server.simulator.schedule.games_between(sport, sim_now - DAY_S,
                                                                     sim_now + 1)
            if g.state_at(sim_now - g.start_ts).code in IN_PLAY_CODES[sport]}


@pytest.mark.parametrize("first", [LiveTask, ScheduleTask], ids=["live-first", "schedule-first"])
async def test_just_after_midnight_yesterdays_games_in_play_are_followed(test_config, first):
    """Just after midnight UTC some games in play started yesterday. The date-swept
    sports' pollers find them on a store that never saw them in play (a fresh deployment,
    `btsguru refresh`), whichever task runs first, and follow them to their finals."""
    clock = PinnedClock(JUST_AFTER_MIDNIGHT)
    midnight = JUST_AFTER_MIDNIGHT - JUST_AFTER_MIDNIGHT % DAY_S
    async with simulator(clock=clock) as server:
        config = point_at(with_quota(test_config), server)
        async with poller_stack(config, clock=clock, sports=DATE_SWEPT,
                                kinds=("live", "schedule")) as stack:
            for sport in DATE_SWEPT:
                ctx = stack.pollers.contexts[sport]
                await first(ctx).run_once()
                in_play = _in_play(server, sport)
                yesterdays = {i for i, g in in_play.items() if g.start_ts < midnight}
                assert yesterdays, sport  # what this test is about
                assert yesterdays <= {g.id for g in await stack.games.live(sport)}, sport
                live = LiveTask(ctx)
                await live.run_once()
                assert {g.id for g in await stack.games.live(sport)} == set(in_play), sport
                for _ in range(60):  # ten simulated hours: every game of yesterday ends
                    server.simulator.advance(600)
                    await live.run_once()
                    stored = [await stack.games.get(sport, i) for i in sorted(yesterdays)]
                    if all(g is not None and g.status.phase is Phase.FINISHED for g in stored):
                        break
                for game_id in sorted(yesterdays):
                    home, away = in_play[game_id].state_at(10**7).totals()
                    final = await stack.games.get(sport, game_id)
                    assert final is not None and final.status.phase is Phase.FINISHED, \
                        (sport, game_id, final and final.status)
                    assert (final.home.score, final.away.score) == (home, away), (sport, game_id)
                    names = [e.event for e in stack.of_game(game_id)]
                    assert names.count("game.finished") == 1, (sport, game_id, names)
                server.simulator.reset()


async def test_the_pollers_never_exceed_the_minute_quota(test_config):
    quota = 10
    async with simulator(quota_minute=quota) as server:
        config = point_at(with_quota(test_config, minute=quota), server).replace(
            poll_live_interval_football_s=1, poll_crucial_interval_football_s=1,
            poll_live_interval_basketball_s=1, poll_crucial_interval_basketball_s=1,
            poll_live_interval_hockey_s=1, poll_crucial_interval_hockey_s=1,
            poll_live_interval_baseball_s=1, poll_crucial_interval_baseball_s=1,
            poll_live_interval_american_football_s=1,
            poll_crucial_interval_american_football_s=1)
        async with poller_stack(config) as stack:
            # the governor's answers, counted: a refusal proves that the pollers asked for
            # more than the minute allows; a token granted is a request on its way
            granted: Counter[str] = Counter()
            refused: Counter[str] = Counter()
            take = stack.quota.try_acquire

            async def counted(sport, purpose):
                decision = await take(sport, purpose)
                (refused if decision.token is None else granted)[sport] += 1
                return decision

            stack.quota.try_acquire = counted
            await stack.pollers.start()

            async def settled():
                stats = await sim_stats(server)
                return all(refused[s] and _sport_requests(stats, s) == granted[s]
                           for s in SPORTS)

            # every sport wants more than its minute allows (1 s live polls alone), and
            # every request the governor let through has reached the upstream
            await wait_until(settled, timeout_s=20,
                             what=lambda: f"every sport refused (refused {dict(refused)}, "
                                          f"granted {dict(granted)})")
            stats = await sim_stats(server)
            await stack.pollers.stop()
        for sport in SPORTS:
            assert _sport_requests(stats, sport) == quota, (sport, stats["by_path"])


def _sport_requests(stats, sport):
    return sum(n for path, n in stats["by_path"].items() if path.startswith(f"/{sport}/"))


async def test_state_for_v1_sports_and_failing(test_config):
    async with simulator() as server:
        config = point_at(with_quota(test_config), server).replace(
            poll_live_interval_basketball_s=1, poll_crucial_interval_basketball_s=1,
            poll_backoff_base_s=1)
        async with poller_stack(config, sports=["basketball"], kinds=("live",),
                                use_leases=True) as stack:
            reader = PollerStateReader(stack.redis, stack.clock)
            before = await reader.state("basketball")
            assert (before.live_games, before.last_poll_at, before.failing) == (0, None, False)
            await stack.pollers.start()

            async def polled():
                return (await reader.state("basketball")).last_poll_at is not None

            await wait_until(polled, what="a live poll")
            state = await reader.state("basketball")
            live = await stack.games.live("basketball")
            assert state.live_games == len(live) > 0
            assert state.poll_interval_s == 1 and not state.failing
            assert state.data_age_s is not None and state.data_age_s <= 2
            [row] = await reader.tasks("basketball")
            assert row.holder == stack.pollers.leases.token
            assert row.requests >= 1

            await sim_fault(server, "500", count=1000)

            async def failing():
                return (await reader.state("basketball")).failing

            await wait_until(failing, what="the failure to show")
            [row] = await reader.tasks("basketball")
            assert row.failures >= 1 and "500" in (row.last_error or "")
            # the host failed: the next run is one cadence later, no backoff on top
            assert row.interval_s == 1


async def test_a_run_stops_asking_once_the_host_failed(test_config):
    """Football's schedule run asks three days; with the host failing on the first, it
    asks nothing more (a failing run is one probe), and the next run asks them all."""
    async with simulator() as server:
        config = point_at(with_quota(test_config), server)
        async with poller_stack(config, sports=["football"]) as stack:
            task = ScheduleTask(stack.pollers.contexts["football"])
            await sim_fault(server, "500", count=1)  # the next request only
            with pytest.raises(IterationFailed) as info:
                await task.run_once()
            assert (info.value.report.requests, info.value.report.failures) == (1, 1)
            assert is_host_failure(info.value.first)
            assert (await sim_stats(server))["requests"] == 1
            report = await task.run_once()
            assert report.requests == 3 and report.failures == 0
            assert (await sim_stats(server))["requests"] == 4


async def test_a_small_budget_stretches_the_sports_cadences(test_config):
    noon = datetime(2030, 5, 4, 12, 0, tzinfo=UTC).timestamp()
    clock = FakeClock(noon)
    settings = CadenceSettings.from_config(test_config)

    async def plan_for(day_quota):
        config = with_quota(test_config, day=day_quota)
        async with redis_stores(config) as stores:
            book = ScheduleBook(stores, namespace=f"budget{day_quota}")
            # an afternoon of football: a kick-off every 30 min until midnight
            games = [make_game(1000 + i, start=datetime.fromtimestamp(
                noon + i * 1800, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) for i in range(24)]
            await book.note("football", games, noon)
            budget = SportBudget("football", QUERIES["football"].shape(settings),
                                 QuotaGovernor(stores, config, clock), book, settings, clock)
            return await budget.current()

    roomy = await plan_for(7500)
    assert all(factor == 1.0 for factor in roomy.stretch.values()), roomy
    tight = await plan_for(1200)  # 12 h of 15 s polls alone would take 2880
    assert tight.factor(Kind.STATIC) == 8 and tight.factor(Kind.SCHEDULE) == 4
    assert tight.factor(Kind.LIVE) > 1
    assert tight.demand / tight.budget > 1
    # what the live poller does with it: slower, never past the idle cadence
    live_now = [make_game(1, phase=Phase.LIVE, code="1H", clock="20", home=0, away=0)]
    slowed = live_decision("football", live_now, noon, None, settings,
                           tight.factor(Kind.LIVE))
    assert 15 < slowed.interval_s <= settings.idle_s
