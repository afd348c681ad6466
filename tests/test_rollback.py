"""A failover that lost writes (issue 19, item 3), on a real Redis: the keys a promoted
replica would hold are put back with DUMP/RESTORE (and the stream entries it never got
deleted), which is exactly what a rollback looks like to the relay. The Sentinel and
Cluster chaos tests kill real masters; this one makes the loss certain and its size known.

A game's seq must never go back nor skip unexplained: the next write after a rollback is
one `game.snapshot` numbered after the highest seq ever written, found in the writing
process or, for a process that never wrote the game, in the database.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace

import orjson
import pytest

from btsguru import metrics
from btsguru.auth.ratelimit import RateLimiter, RatePolicy
from btsguru.clock import FakeClock, SystemClock
from btsguru.store.history import history_key
from btsguru.store.redis import open_redis
from btsguru.upstream import QuotaGovernor, RateLimitInfo
from btsguru.upstream.quota import CAREFUL_SHARE, SETTLE_S
from tests.access_fixtures import migrated_sqlite
from tests.realtime_helpers import WsClient, events, relay
from tests.store_fixtures import goal, live, make_game, store_nodes
from tests.upstream_fixtures import redis_stores, with_quota

SPORT = "football"


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def nodes(test_config, runner, io_loop):
    yield from store_nodes(test_config, runner, io_loop)


def rollbacks() -> float:
    return metrics.REGISTRY.get_sample_value("btsguru_redis_rollbacks_total",
                                             {"what": "game"}) or 0.0


@contextlib.asynccontextmanager
async def replica_state(redis, keys, game_id: int) -> AsyncIterator[None]:
    """What a replica holds now; on leaving, Redis is put back to it (a failover that
    lost every write made inside the block)."""
    reverb = redis.reverb
    names = [keys.tagged("game", SPORT, game_id), keys.tagged("seq", SPORT, game_id)]
    stream = history_key(keys, SPORT)
    dumps = {name: await reverb.dump(name) for name in names}
    entries = await reverb.xrevrange(stream, "+", "-", count=1)
    last_id = entries[0][0] if entries else b"0-0"
    yield
    for name, dump in dumps.items():
        await reverb.restore(name, 0, dump, replace=True)
    lost = [i for i, _ in await reverb.xrange(stream, f"({last_id.decode()}", "+")]
    assert lost, "nothing was written inside the block: no rollback to test"
    await reverb.xdel(stream, *lost)


def scores(game, home: int, away: int, minute: int, *events):
    return live(game, home, away, minute, events=tuple(events))


async def test_a_rolled_back_game_gets_a_snapshot_numbered_after_its_high_water_mark(nodes):
    node = nodes()
    game = make_game(1001)
    await node.games.ingest(SPORT, [game])
    first = await node.games.ingest(SPORT, [scores(game, 0, 0, 1)])
    seen = first.changes[-1].seq
    async with replica_state(node.redis, node.redis.keys, 1001):
        lost = await node.games.ingest(SPORT, [scores(game, 1, 0, 10, goal(10))])
    high = lost.changes[-1].seq
    assert high > seen and (await node.games.get(SPORT, 1001)).seq == seen  # rolled back

    before = rollbacks()
    after = await node.games.ingest(SPORT, [scores(game, 2, 0, 20, goal(10), goal(20))])
    assert [(c.event, c.seq) for c in after.changes] == [("game.snapshot", high + 1)]
    snapshot = after.changes[0].change
    assert snapshot.game_id == 1001 and rollbacks() == before + 1
    data = orjson.loads(after.changes[0].data_json)
    assert (data["id"], data["seq"], data["home"]["score"]) == (1001, high + 1, 2)
    assert (await node.games.get(SPORT, 1001)).seq == high + 1

    # numbering goes on from the snapshot, with diffs against the state it carried
    goal3 = await node.games.ingest(SPORT, [scores(game, 3, 0, 30, goal(10), goal(20),
                                                   goal(30))])
    assert [c.seq for c in goal3.changes] == list(range(high + 2, high + 2 + len(
        goal3.changes)))
    told = {c.event for c in goal3.changes}
    assert "game.score" in told and "game.snapshot" not in told
    assert rollbacks() == before + 1  # once, not on every write after


async def test_a_process_that_never_wrote_the_game_finds_its_high_water_mark_in_the_database(
        nodes):
    writer = nodes()
    game = make_game(1002)
    await writer.games.ingest(SPORT, [game])
    await writer.games.ingest(SPORT, [scores(game, 0, 0, 1)])
    seen = (await writer.games.get(SPORT, 1002)).seq
    async with replica_state(writer.redis, writer.redis.keys, 1002):
        lost = await writer.games.ingest(SPORT, [scores(game, 1, 0, 10, goal(10))])
        await writer.games.flush()  # persisted: the database is not rolled back
    high = lost.changes[-1].seq
    assert high > seen

    other = nodes()  # the poller lease moved to another process during the failover
    after = await other.games.ingest(SPORT, [scores(game, 1, 1, 15, goal(10),
                                                    goal(15, team_id=36))])
    assert [(c.event, c.seq) for c in after.changes] == [("game.snapshot", high + 1)]


async def test_an_untouched_game_is_not_mistaken_for_a_rollback(nodes):
    writer, other = nodes(), nodes()
    game = make_game(1003)
    await writer.games.ingest(SPORT, [game])
    first = await writer.games.ingest(SPORT, [scores(game, 1, 0, 5, goal(5))])
    await writer.games.flush()
    # another process writes next, then the first one again: seqs only move forward
    second = await other.games.ingest(SPORT, [scores(game, 2, 0, 9, goal(5), goal(9))])
    third = await writer.games.ingest(SPORT, [scores(game, 2, 1, 12, goal(5), goal(9),
                                                     goal(12, team_id=36))])
    events_seen = [c.event for c in (*first.changes, *second.changes, *third.changes)]
    assert "game.snapshot" not in events_seen
    seqs = [c.seq for c in (*first.changes, *second.changes, *third.changes)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_subscriber_sees_the_snapshot_in_place_of_what_was_lost(tmp_path):
    async with relay(tmp_path) as r:
        s = r.services
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        try:
            await ws.subscribe("sports.football.39")
            assert (await ws.recv())["op"] == "subscribed"
            game = make_game(1001)
            await s.games.ingest(SPORT, [game])
            await s.games.ingest(SPORT, [scores(game, 0, 0, 1)])
            async with replica_state(s.redis, s.redis.keys, 1001):
                lost = await s.games.ingest(SPORT, [scores(game, 1, 0, 10, goal(10))])
            high = lost.changes[-1].seq
            await s.games.ingest(SPORT, [scores(game, 2, 0, 20, goal(10), goal(20))])
            nxt = await s.games.ingest(SPORT, [scores(game, 2, 1, 25, goal(10), goal(20),
                                                      goal(25, team_id=36))])
            last = nxt.changes[-1].seq
            got = events(await ws.recv_until(lambda m: m.get("data", {}).get("seq") == last))
            # every number once, in order: what was lost in Redis was delivered before it
            # was lost, and the snapshot carries the state on from there
            assert [e["data"]["seq"] for e in got] == list(range(1, last + 1))
            snapshot = next(e for e in got if e["event"] == "game.snapshot")
            assert snapshot["data"]["seq"] == high + 1
            assert snapshot["data"]["home"]["score"] == 2

            # a client that comes back with the id of an event Redis lost resumes from
            # the snapshot
            lost_id = next(e["id"] for e in got if e["data"]["seq"] == high)
            again = await WsClient.connect(r.ws_url, r.keys["pro"])
            try:
                await again.subscribe("sports.football.39", since=lost_id)
                replay = await again.recv_until(
                    lambda m: m.get("data", {}).get("seq") == last)
                told = [(e["event"], e["data"]["seq"]) for e in events(replay)]
                assert told[0] == ("game.snapshot", high + 1)
                assert [seq for _, seq in told] == list(range(high + 1, last + 1))
            finally:
                again.close()
        finally:
            ws.close()


# -- the upstream budget --

QUOTA_MINUTE = 20


def quota_rollbacks() -> float:
    return metrics.REGISTRY.get_sample_value("btsguru_redis_rollbacks_total",
                                             {"what": "quota"}) or 0.0


@contextlib.asynccontextmanager
async def budget_replica(stores, sport: str = SPORT) -> AsyncIterator[None]:
    """What a replica holds of `sport`'s budget now; put back on leaving (every token
    taken inside the block lost)."""
    queue = stores.queue
    names = [name.decode() for name in await queue.keys(stores.keys.tagged("quota", sport)
                                                         + "*")]
    assert names, "no budget written yet"
    dumps = {name: await queue.dump(name) for name in names}
    yield
    for name in [n.decode() for n in await queue.keys(stores.keys.tagged("quota", sport)
                                                      + "*")]:
        if name not in dumps:
            await queue.delete(name)
    for name, dump in dumps.items():
        await queue.restore(name, 0, dump, replace=True)


async def taken(governor, n: int, sport: str = SPORT) -> int:
    return sum([await governor.acquire(sport, "poller") for _ in range(n)])


async def test_tokens_a_failover_lost_are_put_back_and_the_budget_held_then_careful(
        test_config):
    config = with_quota(test_config, day=1000, minute=QUOTA_MINUTE)
    clock = FakeClock()
    async with redis_stores(config) as stores:
        a = QuotaGovernor(stores, config, clock, day_reserve_fraction=0)
        b = QuotaGovernor(stores, config, clock, day_reserve_fraction=0)  # another process
        assert await taken(a, 2) + await taken(b, 2) == 4
        async with budget_replica(stores):
            assert await taken(a, 3) + await taken(b, 3) == 6  # lost in the failover
        assert (await a.snapshot(SPORT)).minute_used == 4  # rolled back

        before = quota_rollbacks()
        held = await a.try_acquire(SPORT, "poller")  # finds its tokens gone: puts them back
        assert held.token is None and held.reason == "settling"
        assert held.retry_after_s == pytest.approx(SETTLE_S)
        assert quota_rollbacks() == before + 1
        assert (await a.snapshot(SPORT)).minute_used == 7
        held = await b.try_acquire(SPORT, "poller")  # and so does the other process
        assert held.reason == "settling" and quota_rollbacks() == before + 2
        state = await a.snapshot(SPORT)
        assert (state.minute_used, state.day_used) == (10, 10)

        clock.advance(SETTLE_S)
        # careful for one window: a tenth of the minute (2 of 20) stays unused
        careful = QUOTA_MINUTE - max(1, math.ceil(QUOTA_MINUTE * CAREFUL_SHARE))
        assert await taken(a, QUOTA_MINUTE) == careful - 10
        assert (await a.snapshot(SPORT)).minute_used == careful
        clock.advance(a.window_s + 0.001)  # a window later: the whole minute again
        assert await taken(b, QUOTA_MINUTE + 1) == QUOTA_MINUTE


async def test_a_failover_seen_makes_a_process_check_its_tokens_before_it_takes(test_config):
    config = with_quota(test_config, day=1000, minute=QUOTA_MINUTE)
    clock = FakeClock()
    watch = SimpleNamespace(failovers=0)  # what the Sentinel client counts
    async with redis_stores(config) as stores:
        governor = QuotaGovernor(replace(stores, master=watch), config, clock,
                                 day_reserve_fraction=0)
        assert await taken(governor, 3) == 3
        await governor.note_limits(SPORT, RateLimitInfo(minute_limit=QUOTA_MINUTE,
                                                        minute_remaining=5))
        async with budget_replica(stores):
            await governor.mark_minute_spent(SPORT)  # the upstream's wall, then lost
        assert (await governor.snapshot(SPORT)).minute_blocked_s == 0
        watch.failovers += 1  # the process saw a failover
        decision = await governor.try_acquire(SPORT, "poller")
        assert decision.token is None
        state = await governor.snapshot(SPORT)
        assert state.minute_blocked_s == pytest.approx(governor.window_s)  # the wall again
        assert state.minute_used == 3 and state.upstream_minute_remaining == 5


# -- rate limits --

async def test_a_rolled_back_rate_bucket_loosens_a_users_limit_by_one_burst_at_most(
        test_config):
    """The bucket a replica held hands its tokens out again: one burst more, never two."""
    policy = RatePolicy(burst=10, refill_per_s=0.001, daily_quota=None)  # no refill here
    stores = open_redis(test_config)
    try:
        a = RateLimiter(stores.data, stores.keys, SystemClock())
        b = RateLimiter(stores.data, stores.keys, SystemClock())  # another process
        bucket = a.bucket_key(42)
        assert (await a.check(42, policy)).allowed  # the bucket exists; the replica has it
        replica = await stores.data.dump(bucket)
        admitted = 1 + sum([(await a.check(42, policy)).allowed for _ in range(30)])
        assert admitted == policy.burst
        await stores.data.restore(bucket, 0, replica, replace=True)  # the failover
        admitted += sum([(await limiter.check(42, policy)).allowed
                         for limiter in (a, b) for _ in range(30)])
        assert policy.burst < admitted <= 2 * policy.burst
    finally:
        await stores.close()
