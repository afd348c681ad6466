"""Every script, transaction and multi-key command of each key family stays in one Redis
Cluster hash slot: the real code paths run on the test Redis under `tests.slot_guard`."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from btsguru.alerts import Alert, AlertEvent, AlertStore
from btsguru.auth.ratelimit import RateLimiter, RatePolicy
from btsguru.auth.usage import UsageService
from btsguru.clock import FakeClock, SystemClock
from btsguru.console.sessions import SessionStore
from btsguru.console.throttle import LoginThrottle
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerState
from btsguru.realtime.slots import ALIVE_CACHE_S, StreamSlots
from btsguru.sports.standings import StandingRow
from btsguru.store.bus import game_channel
from btsguru.store.pusher import PusherState
from btsguru.store.redis import Keys, open_redis
from btsguru.store.series import SeriesStore
from btsguru.store.standings import StandingsStore
from btsguru.upstream.quota import QuotaGovernor, RateLimitInfo
from tests.access_fixtures import make_account, migrated_sqlite
from tests.slot_guard import SlotGuard, guarding
from tests.store_fixtures import NOW, goal, live, make_game, open_store


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlotGuard]:
    with guarding(monkeypatch) as found:
        yield found


async def test_the_guard_catches_a_cross_slot_script_and_transaction(test_config, guard):
    stores = open_redis(test_config)
    try:
        script = stores.data.register_script("return #KEYS")
        keys = stores.keys
        assert await script(keys=[keys.key("a"), keys.key("b")]) == 2  # one Redis: runs
        assert await script(keys=[keys.tagged("t", "x", "a"), keys.tagged("t", "x", "b")]) == 2
        async with stores.data.pipeline(transaction=True) as pipe:
            pipe.set(keys.key("a"), 1)
            pipe.set(keys.key("b"), 1)
            await pipe.execute()
        await stores.data.delete(keys.key("a"), keys.key("b"))
        async with stores.data.pipeline(transaction=False) as pipe:  # may span slots
            pipe.get(keys.key("a"))
            pipe.get(keys.key("b"))
            await pipe.execute()
    finally:
        await stores.close()
    # (the first EVALSHA of a script is sent again after SCRIPT LOAD: seen twice)
    assert {v.what.split()[0] for v in guard.violations} == {"EVALSHA", "MULTI", "DEL"}
    assert all(len(v.slots) == 2 for v in guard.violations)
    assert guard.seen["MULTI"] == 1


def test_tagged_keys_share_a_slot_and_keep_the_prefix():
    from redis.crc import key_slot

    keys = Keys("btsguru:")
    assert keys.tagged("quota", "football", "day", "2024-08-16") == \
        "btsguru:quota:{football}:day:2024-08-16"
    assert key_slot(keys.tagged("quota", "football", "seq").encode()) == \
        key_slot(keys.tagged("game", "football", 7).encode()) == key_slot(b"football")
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError):
            keys.tagged("quota", bad)


async def test_quota_take_refuse_note_and_mark(test_config, guard):
    stores = open_redis(test_config)
    clock = FakeClock(NOW)
    try:
        quota = QuotaGovernor(stores, test_config, clock, day_reserve_fraction=0,
                              minute_reserve_fraction=0)
        minute = quota.minute_limit("football")
        decisions = [await quota.try_acquire("football", "poller") for _ in range(minute + 1)]
        assert all(d.token for d in decisions[:-1]) and decisions[-1].token is None
        await quota.note_limits("football", RateLimitInfo(100, 50, minute, 0),
                                decisions[0].token)
        await quota.mark_day_spent("football")
        await quota.mark_minute_spent("football")
        assert (await quota.snapshot("football")).day_spent
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= minute + 2 and guard.seen["MULTI"] == 1


async def test_leases_take_renew_release(test_config, guard):
    stores = open_redis(test_config)
    try:
        a = Leases(stores, FakeClock(NOW), token="host-a:1:aaaa")
        b = Leases(stores, FakeClock(NOW), token="host-b:2:bbbb")
        assert await a.refresh(["football:live", "hockey:live"]) == \
            {"football:live": True, "hockey:live": True}
        assert await a.refresh(["football:live"]) == {"football:live": True}  # renewed
        assert await b.refresh(["football:live"]) == {"football:live": False}
        await a.release(["football:live", "hockey:live"])
        assert await b.refresh(["football:live"]) == {"football:live": True}
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 6


async def test_game_ingest_history_and_replay(test_config, runner, guard):
    node = open_store(test_config, runner)
    try:
        game = make_game(1001)
        await node.games.ingest("football", [game, make_game(1002)])
        result = await node.games.ingest("football", [live(game, 1, 0, 12, events=(goal(12),))])
        assert result.events > 0 and [c.seq for c in result.changes] == \
            list(range(1, result.events + 1))
        first = await node.history.window_start("football")
        assert first is not None
        appended = await node.history.append("football", "note",
                                             game_channel("football", 39, 1001), {"n": 1})
        replay = await node.history.read_after("football", first)
        assert replay is not None and replay[-1].id == appended.id
    finally:
        await node.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 4 and guard.seen["MULTI"] >= 1


async def test_usage_flush_and_rollup(test_config, runner, guard):
    a = await make_account(runner, "a@example.com")
    b = await make_account(runner, "b@example.com")
    clock = FakeClock(NOW)
    stores = open_redis(test_config)
    usage = UsageService(stores.data, stores.keys, runner, clock, close_grace_s=0)
    try:
        usage.record(a.user_id, a.key_id, "live")
        usage.record(b.user_id, b.key_id, "games", cache_hit=True)
        assert await usage.flush() == 2
        clock.advance(2 * 86_400)  # both periods closed: the rollup forgets them
        assert await usage.rollup() == 4
        assert await stores.data.scard(usage.pending_key) == 0
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["MULTI"] == 1 and guard.seen["EVALSHA"] >= 4  # + a NOSCRIPT retry


async def test_rate_limit_take_and_lease_return(test_config, guard):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    policy = RatePolicy(burst=100, refill_per_s=10.0, daily_quota=1000)
    try:
        for user_id in (7, 8):
            for _ in range(10):
                assert (await limiter.check(user_id, policy)).allowed
        assert await limiter.return_expired(everything=True) > 0
        await limiter.reset(7)
    finally:
        await limiter.close()
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 4


async def test_stream_slots_take_release_close(test_config, guard):
    stores = open_redis(test_config)
    clock = FakeClock(NOW)
    slots = StreamSlots(stores.reverb, stores.keys, process_id="proc-a")
    other = StreamSlots(stores.reverb, stores.keys, process_id="proc-b", clock=clock)
    try:
        await slots.heartbeat()
        await other.heartbeat()
        assert await slots.acquire(7, 3) == 1
        assert await other.acquire(7, 3) == 2  # proc-a unknown to it: read, then counted
        assert await slots.acquire(7, 3) == 3
        assert await other.acquire(7, 3) is None
        await slots.release(7)
        # proc-a dies without a word: once proc-b's memory of it as alive is stale, the
        # next take reads its heartbeat and reaps its count
        await stores.reverb.delete(stores.keys.key("streams", "proc", "proc-a"))
        assert await other.acquire(7, 3) == 3  # proc-a still seen alive: counted
        assert await other.acquire(7, 3) is None
        clock.advance(ALIVE_CACHE_S)
        assert await other.acquire(7, 3) == 3
        assert await stores.reverb.hgetall(stores.keys.key("streams", "user", 7)) == \
            {b"proc-b": b"3"}
        await other.close()
        await slots.close()
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 7


async def test_pusher_counts_and_reaping(test_config, guard):
    stores = open_redis(test_config)
    one = PusherState(stores.reverb, stores.keys, process_id="proc-a")
    two = PusherState(stores.reverb, stores.keys, process_id="proc-b", heartbeat_ttl_s=1)
    try:
        await one.heartbeat()
        await one.count("sports.football", 2)
        assert await one.channel_counts() == {"sports.football": 2}
        await one.reap()  # reaps nobody: every process is alive
        await two.close()  # reaps its own (empty) ledger, deletes its keys one by one
        await one.close()
    finally:
        await stores.close()
    guard.assert_clean()


async def test_pusher_presence_join_leave_reap_and_reassert(test_config, guard):
    stores = open_redis(test_config)
    one = PusherState(stores.reverb, stores.keys, process_id="proc-a")
    two = PusherState(stores.reverb, stores.keys, process_id="proc-b")
    room = "presence-room"
    try:
        await one.heartbeat()
        await two.heartbeat()
        assert await one.join(room, "u1", b'{"name":"A"}', 100) == 1
        assert await two.join(room, "u1", b'{"name":"A"}', 100) == 2  # not new anywhere
        assert await two.join(room, "u2", b'{"name":"B"}', 2) == 1
        assert await one.join(room, "u3", b'{"name":"C"}', 2) == -1  # full
        assert await one.members(room) == {"u1": {"name": "A"}, "u2": {"name": "B"}}
        assert not await one.leave(room, "u1")  # u1 still has a socket on proc-b
        assert await one.join("presence-lobby", "u1", b'{"name":"A"}', 100) == 1
        # proc-b dies without a word: proc-a reaps it channel by channel
        await stores.reverb.delete(stores.keys.key("pusher", "proc", "proc-b"))
        announced = []
        one.publish = lambda channel, message: _note(announced, channel, message)  # type: ignore[method-assign]
        await one.reap()
        assert sorted(announced) == [(room, "u1"), (room, "u2")]
        assert await one.members(room) == {}
        assert await one.members("presence-lobby") == {"u1": {"name": "A"}}
        # proc-a's heartbeat lapses and its members are reaped too: it writes them back,
        # and writing them back twice changes nothing
        await stores.reverb.delete(stores.keys.key("pusher", "proc", "proc-a"))
        await two.reap()
        assert await one.members("presence-lobby") == {}
        await one.heartbeat()
        await one.heartbeat()
        assert list(await one.members("presence-lobby")) == ["u1"]
        assert await one.leave("presence-lobby", "u1")  # its only socket: the last
        assert await one.members("presence-lobby") == {}
    finally:
        await one.close()
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 10


async def _note(into: list[tuple[str, str]], channel: str, message: dict) -> None:
    assert message["event"] == "pusher_internal:member_removed"
    into.append((channel, orjson.loads(message["data"])["user_id"]))


async def test_alerts_raise_resolve_and_an_upgrade_keeps_the_old_firing_set(test_config,
                                                                             guard):
    stores = open_redis(test_config)
    keys = stores.keys
    old = Alert("quota_day_80:hockey", "quota_day_80", "warning", "80% of the day")
    new = Alert("circuit_open:football", "circuit_open", "critical", "breaker open")
    try:
        # what an earlier version left: an alert firing, and its event, untagged
        await stores.data.hset(keys.key("alerts", "firing"), old.id,
                               orjson.dumps(old.__dict__))
        await stores.data.lpush(keys.key("alerts", "recent"),
                                orjson.dumps(AlertEvent("firing", old, NOW).to_json()))
        store = AlertStore(stores)
        assert await store.firing() == {old.id: old}  # not raised again
        await store.record(AlertEvent("firing", new, NOW + 60))
        assert await store.firing() == {old.id: old, new.id: new}
        await store.record(AlertEvent("resolved", old, NOW + 120))
        assert await store.firing() == {new.id: new}
        assert await stores.data.exists(keys.key("alerts", "firing")) == 0
        assert [(e["status"], e["id"]) for e in await store.recent()] == [
            ("resolved", old.id), ("firing", new.id), ("firing", old.id)]
        assert [(e["status"], e["id"]) for e in await store.recent(limit=2)] == [
            ("resolved", old.id), ("firing", new.id)]
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["MULTI"] == 2


async def test_series_poller_state_standings_sessions_throttle(test_config, guard):
    stores = open_redis(test_config)
    clock = FakeClock(NOW)
    try:
        await SeriesStore(stores).write(NOW, "proc-a", {"rest": 3}, {"ws": 1})
        await PollerState(stores, clock).update("football", "live", {"next_run": NOW + 5},
                                                count_requests=1)
        standings = StandingsStore(stores)
        row = StandingRow.from_json({"rank": 1, "team": {"id": 33, "name": "A"},
                                     "points": 3, "group": "League"})
        await standings.replace("football", 39, "2024", [row], refreshed_at=NOW)
        assert await standings.latest_season("football", 39) == "2024"
        sessions = SessionStore(stores, clock)
        first, second = await sessions.create(5), await sessions.create(5)
        await sessions.delete(first.id)
        assert await sessions.delete_user_sessions(5) == 1
        assert await sessions.get(second.id) is None
        throttle = LoginThrottle(stores)
        await throttle.failed("a@example.com", "192.0.2.1")
        assert await throttle.signup_allowed("192.0.2.1") is None
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 1 and guard.seen["MULTI"] >= 4


async def test_an_upgrade_keeps_usage_and_standings_written_under_the_old_names(
        test_config, runner):
    from datetime import UTC, datetime

    from btsguru.db.models import UsageDaily

    a = await make_account(runner, "a@example.com")
    clock = FakeClock(NOW)
    stores = open_redis(test_config)
    keys = stores.keys
    usage = UsageService(stores.data, stores.keys, runner, clock, close_grace_s=0)
    try:
        # what an earlier version left: a day's total of 5, pending under the old names
        day = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d")
        old = keys.key("usage", "d", day, a.user_id)
        await stores.data.hset(old, mapping={f"{a.key_id}:live:r": 5, "v": 1})
        await stores.data.sadd(usage.legacy_pending_key, old)
        for _ in range(3):  # and this version's requests the same day
            usage.record(a.user_id, a.key_id, "live")
        await usage.flush()
        await usage.rollup()
        rows = await runner.read(lambda: [(r.day, r.requests) for r in UsageDaily.select()])
        assert [n for _, n in rows] == [8]  # summed, not the larger of 5 and 3
        clock.advance(2 * 86_400)
        await usage.rollup()
        assert await stores.data.scard(usage.legacy_pending_key) == 0

        standings = StandingsStore(stores)
        row = {"rank": 1, "team": {"id": 33, "name": "A"}, "points": 3}
        await stores.reverb.zadd(keys.key("standings", "football", 39, "2024"),
                                 {orjson.dumps(row): 0})
        await stores.reverb.hset(keys.key("standings", "meta", "football", 39), "latest", "2024")
        assert await standings.latest_season("football", 39) == "2024"
        assert [r.team_id for r in await standings.get("football", 39)] == [33]
    finally:
        await stores.close()


class _Occupancy:
    """What `store.pusher` tells the webhooks of occupancy: (channel, before, after)."""

    tracks_occupancy = True

    def __init__(self) -> None:
        self.changes: list[tuple[str, int, int]] = []
        self.removed: list[tuple[str, str]] = []

    async def occupancy_changed(self, channel: str, before: int, after: int) -> None:
        self.changes.append((channel, before, after))

    async def member_added(self, channel: str, user_id: str) -> None:
        pass

    async def member_removed(self, channel: str, user_id: str) -> None:
        self.removed.append((channel, user_id))


async def test_pusher_occupancy_is_cluster_wide_and_a_dead_process_is_reaped(test_config,
                                                                            guard):
    stores = open_redis(test_config)
    sink = _Occupancy()
    one = PusherState(stores.reverb, stores.keys, process_id="proc-a", webhooks=sink)
    two = PusherState(stores.reverb, stores.keys, process_id="proc-b", webhooks=sink)
    try:
        await one.heartbeat()
        await two.heartbeat()
        await one.count("orders", 1)  # the first subscriber anywhere
        await two.count("orders", 1)
        await two.count("orders", 1)
        await two.count("lobby", 1)
        assert await two.join("presence-lobby", "u1", b"{}", 100) == 1
        await one.count("orders", -1)  # others remain
        assert await one.channel_counts() == {"orders": 2, "lobby": 1}
        # proc-b dies without a word: proc-a reaps its subscribers, emptying both channels
        await stores.reverb.delete(stores.keys.key("pusher", "proc", "proc-b"))
        await one.reap()
        assert sink.changes == [("orders", 0, 1), ("orders", 1, 2), ("orders", 2, 3),
                                ("lobby", 0, 1), ("orders", 3, 2), ("orders", 2, 0),
                                ("lobby", 1, 0)]
        assert sink.removed == [("presence-lobby", "u1")]
        assert await one.channel_counts() == {}
        assert await one.occupancy.total("orders") == 0
        # proc-a's heartbeat lapses and it is reaped too: writing back makes it occupied
        await one.count("orders", 1)
        await stores.reverb.delete(stores.keys.key("pusher", "proc", "proc-a"))
        await two.reap()
        await one.heartbeat()
        assert sink.changes[-3:] == [("orders", 0, 1), ("orders", 1, 0), ("orders", 0, 1)]
        assert await one.channel_counts() == {"orders": 1}
    finally:
        await one.close()
        await stores.close()
    guard.assert_clean()
    assert guard.seen["EVALSHA"] >= 10


async def test_webhook_queue_holds_and_turns(test_config, guard):
    from btsguru.store.webhook_queue import WebhookQueue

    stores = open_redis(test_config)
    urls = ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    queue = WebhookQueue(stores.reverb, stores.keys, urls)
    try:
        for url in urls:
            await queue.ensure_group(url)
            await queue.ensure_group(url)  # again: no error
        await queue.enqueue(b'{"time_ms":1,"events":[]}', 1)
        assert await queue.depth() == 2
        taken = await queue.read(urls[0], "proc-a", 10, 1)
        assert [(b.body, b.at_ms) for b in taken] == [(b'{"time_ms":1,"events":[]}', 1)]
        await queue.touch(urls[0], "proc-a", [taken[0].id])
        assert await queue.claim_stale(urls[0], "proc-b", 60_000, 10) == []  # still held
        await queue.release(urls[0], "proc-a", [taken[0].id], 120_000)
        assert [b.id for b in await queue.claim_stale(urls[0], "proc-b", 60_000, 10)] == \
            [taken[0].id]
        await queue.failed(urls[0], "HTTP 500", NOW, dropped=True)
        assert [(h.failing_since, h.dropped, h.queued) for h in await queue.health()] == \
            [(NOW, 1, 1), (None, 0, 1)]
        await queue.done(urls[0], taken[0].id)
        await queue.delivered(urls[0])
        assert [(h.failing_since, h.queued) for h in await queue.health()] == \
            [(None, 0), (None, 1)]
        await queue.hold(b"vacated", NOW + 5)
        assert await queue.due(NOW, 10) == []
        assert await queue.due(NOW + 5, 10) == [b"vacated"]
        assert await queue.take(b"vacated") and not await queue.take(b"vacated")
        assert await queue.count_turn("orders", 60_000) == 0
        assert 0 < await queue.count_turn("orders", 60_000) <= 60_000
    finally:
        await stores.close()
    guard.assert_clean()
    assert guard.seen["MULTI"] == 2  # a failure recorded, a batch done
