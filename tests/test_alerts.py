"""The alerter over real Redis and a real local webhook receiver, on an injected clock:
raise, de-duplicate, resolve, leader-only, the console rows and webhook retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.alerts import Alerter, AlertStore, WebhookSender
from btsguru.auth.watch import AccessWatch
from btsguru.backoff import Backoff
from btsguru.clock import FakeClock, SystemClock
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.store.redis import open_redis
from btsguru.upstream.quota import QuotaGovernor
from tests.conftest import make_test_config, purge_redis_prefix

DAY_QUOTA = 20


class Receiver(tornado.web.RequestHandler):
    def initialize(self, got: list[dict[str, Any]], fail_first: list[int]) -> None:
        self.got = got
        self.fail_first = fail_first

    def check_xsrf_cookie(self) -> None:
        pass

    def post(self) -> None:
        if self.fail_first[0] > 0:
            self.fail_first[0] -= 1
            self.set_status(503)
            return
        self.got.append(orjson.loads(self.request.body))
        self.write({"ok": True})


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []
    app = tornado.web.Application([(r"/hook", Receiver, {"got": got,
                                                          "fail_first": [fail_first]})])
    server = HTTPServer(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hook", got
    finally:
        server.stop()


def sender(url: str) -> WebhookSender:
    # real time, tiny backoff: the retries are real requests, not a simulation
    return WebhookSender(url, SystemClock(), backoff=Backoff(base_s=0.01, cap_s=0.02))


@pytest.fixture
def world(tmp_path, io_loop):
    config = make_test_config(tmp_path, BTSGURU_SPORTS="football",
                              UPSTREAM_DAILY_QUOTA=str(DAY_QUOTA))
    redis = open_redis(config)
    clock = FakeClock()
    yield config, redis, clock
    io_loop.run_sync(redis.close)
    purge_redis_prefix(config)


def make_alerter(world, webhook: WebhookSender | None, **kw: Any) -> Alerter:
    config, redis, clock = world
    return Alerter(config.sports, clock, redis, quota=QuotaGovernor(redis, config, clock),
                   tasks=PollerStateReader(redis, clock), webhook=webhook,
                   leases=Leases(redis, clock), **kw)


async def spend(world, n: int) -> None:
    config, redis, clock = world
    quota = QuotaGovernor(redis, config, clock)
    for _ in range(n):
        assert (await quota.try_acquire("football", "poller")).token is not None


async def test_quota_alerts_raise_once_then_resolve_never(world):
    async with receiver() as (url, got):
        alerter = make_alerter(world, sender(url))
        try:
            assert await alerter.check_once() == []
            await spend(world, 16)  # 80% of 20
            events = await alerter.check_once()
            assert [(e.status, e.alert.id) for e in events] == \
                [("firing", "quota_day_80:football")]
            assert await alerter.check_once() == []  # still firing: not raised again
            await spend(world, 3)  # 95%
            events = await alerter.check_once()
            assert [(e.status, e.alert.id, e.alert.severity) for e in events] == \
                [("firing", "quota_day_95:football", "critical")]
            assert [g["id"] for g in got] == ["quota_day_80:football", "quota_day_95:football"]
            assert got[1]["status"] == "firing" and "19 of 20" in got[1]["text"]
            assert got[1]["text"].startswith(":rotating_light: CRITICAL quota_day_95")
        finally:
            await alerter.stop()


async def test_poller_failures_and_stale_data_raise_and_resolve(world):
    _config, redis, clock = world
    state = PollerState(redis, clock)
    async with receiver() as (url, got):
        alerter = make_alerter(world, sender(url))
        try:
            await state.update("football", "live", {
                "failures": 3, "last_error": "upstream timeout", "interval_s": 10,
                "live_games": 2, "last_success": clock.time() - 25})
            events = await alerter.check_once()
            assert [e.alert.id for e in events] == ["poller_failing:football:live"]
            clock.advance(10)  # data 35 s old > 3 x 10 s cadence with games live
            events = await alerter.check_once()
            assert [e.alert.id for e in events] == ["data_stale:football"]
            assert "35 s old" in events[0].alert.message
            await state.update("football", "live", {"failures": 0,
                                                     "last_success": clock.time()})
            events = await alerter.check_once()
            assert sorted((e.status, e.alert.id) for e in events) == [
                ("resolved", "data_stale:football"),
                ("resolved", "poller_failing:football:live")]
            assert [g["status"] for g in got] == ["firing", "firing", "resolved", "resolved"]
            assert all(g["text"].startswith(":white_check_mark: RESOLVED") for g in got[2:])
            assert await AlertStore(redis).firing() == {}
            rows = await AlertStore(redis).rows()
            assert [r.level for r in rows] == ["info", "info", "critical", "critical"]
            assert rows[-1].message.startswith("poller_failing: football live: 3 failures")
        finally:
            await alerter.stop()


async def test_only_the_lease_holder_reports(world):
    leader = make_alerter(world, None)
    other = make_alerter(world, None)
    await spend(world, 16)
    assert len(await leader.check_once()) == 1
    assert await other.check_once() == []
    # the leader steps down; the next one shares the firing set and does not re-raise
    await leader.leases.release(["alerter"])
    assert await other.check_once() == []
    await spend(world, 3)
    assert [e.alert.id for e in await other.check_once()] == ["quota_day_95:football"]


async def test_the_leaders_lease_outlives_the_time_between_its_checks(world):
    """It is renewed once per check: a TTL shorter than the interval handed the lead to
    another process between every two checks."""
    config, redis, clock = world
    for interval_s in (5.0, 15.0, 60.0):
        alerter = Alerter(config.sports, clock, redis, quota=QuotaGovernor(redis, config, clock),
                          tasks=PollerStateReader(redis, clock), interval_s=interval_s)
        assert alerter.leases.ttl_s >= 2 * interval_s


async def test_breaker_database_and_a_webhook_that_fails_twice(world):
    async def dead_database() -> None:
        raise OSError("connection refused")

    async with receiver(fail_first=2) as (url, got):
        alerter = make_alerter(world, sender(url), breaker_state=lambda sport: "open",
                               database_ping=dead_database)
        try:
            events = await alerter.check_once()
            assert sorted(e.alert.id for e in events) == ["circuit_open:football",
                                                          "database_unreachable"]
            # 2 x 503 then 2xx: the first event arrives on its third attempt
            assert sorted(g["id"] for g in got) == ["circuit_open:football",
                                                    "database_unreachable"]
        finally:
            await alerter.stop()


async def test_a_webhook_that_never_answers_gives_up_and_logs(world, caplog):
    hook = WebhookSender("http://127.0.0.1:9/hook", SystemClock(), attempts=2,
                         backoff=Backoff(base_s=0.01, cap_s=0.02))
    alerter = make_alerter(world, hook)
    try:
        await spend(world, 16)
        events = await asyncio.wait_for(alerter.check_once(), 15)
        assert len(events) == 1
        assert "not delivered after 2 attempts" in caplog.text
        assert "127.0.0.1:9" not in caplog.text  # the URL may hold a token
    finally:
        await alerter.stop()


async def test_the_ops_console_shows_recent_alerts(tmp_path):
    from tests.console_fixtures import console_app

    async with console_app(tmp_path, BTSGURU_SPORTS="football",
                           UPSTREAM_DAILY_QUOTA=str(DAY_QUOTA)) as c:
        admin = await c.admin()
        for _ in range(16):
            assert (await c.services.quota.try_acquire("football", "poller")).token
        events = await c.services.alerts.check_once()
        assert [e.alert.id for e in events] == ["quota_day_80:football"]
        page = await admin.get("/console/ops")
        assert page.status == 200
        assert "quota_day_80: football: 16 of 20 upstream requests used today" in page.text
        assert "No recent alerts." not in page.text


# -- unusual access and users nearing their quota (counted by btsguru.auth.watch) --

async def test_cache_busting_and_auth_failure_bursts_raise_then_resolve(world):
    _config, redis, clock = world
    watch = AccessWatch(redis.data, redis.keys, clock)
    async with receiver() as (url, got):
        alerter = make_alerter(world, sender(url), cache_busting_misses=40,
                               auth_failure_burst=10)
        try:
            for n in range(25):  # key 7: distinct queries, over two flushes
                watch.raw_miss(7, "bts_buster", f"football/fixtures?[('team', '{n}')]")
            await watch.flush()
            for n in range(25, 45):
                watch.raw_miss(7, "bts_buster", f"football/fixtures?[('team', '{n}')]")
                watch.raw_miss(7, "bts_buster", "football/fixtures?[('team', '1')]")  # again
            for _ in range(100):  # key 8: many misses, always the same query
                watch.raw_miss(8, "bts_honest", "football/leagues?[]")
            for _ in range(10):
                watch.auth_failed("203.0.113.9")
            for _ in range(9):
                watch.auth_failed("2001:db8::5")
            await watch.flush()
            # the minute is not over yet: only complete minutes are judged
            assert await alerter.check_once() == []
            clock.advance(60)
            events = await alerter.check_once()
            assert sorted((e.status, e.alert.id) for e in events) == [
                ("firing", "auth_failure_burst:203.0.113.9"), ("firing", "cache_busting:7")]
            busting = next(e.alert for e in events if e.alert.name == "cache_busting")
            assert busting.message.startswith("key bts_buster (id 7): 45 distinct raw-proxy")
            assert sorted(g["id"] for g in got) == ["auth_failure_burst:203.0.113.9",
                                                    "cache_busting:7"]
            assert all(g["text"].startswith(":warning: WARNING") for g in got)
            # the IPv6 address below the threshold, one more failure in the next minute
            for _ in range(12):
                watch.auth_failed("2001:db8::5")
            await watch.flush()
            clock.advance(60)
            events = await alerter.check_once()
            assert sorted((e.status, e.alert.id) for e in events) == [
                ("firing", "auth_failure_burst:2001:db8::5"),
                ("resolved", "auth_failure_burst:203.0.113.9"),
                ("resolved", "cache_busting:7")]
        finally:
            await alerter.stop()


async def test_a_flush_that_fails_keeps_the_counts(world):
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    _config, redis, clock = world
    dead = aioredis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=1)
    try:
        watch = AccessWatch(dead, redis.keys, clock)
        watch.auth_failed("198.51.100.1")
        watch.quota_used(5, "free", 9, 10)
        with pytest.raises(RedisConnectionError):
            await watch.flush()
        # kept for the next flush: the same counts reach the live Redis
        watch._redis = redis.data
        await watch.flush()
        clock.advance(60)
        alerter = make_alerter(world, None, auth_failure_burst=1)
        events = await alerter.check_once()
        assert sorted(e.alert.id for e in events) == ["auth_failure_burst:198.51.100.1",
                                                      "user_quota_80:5"]
    finally:
        await dead.aclose()


async def test_a_user_nearing_the_daily_quota_shows_and_alerts(tmp_path):
    from tests.console_fixtures import console_app
    from tests.test_console import v1_usage

    async with receiver() as (url, got), console_app(
            tmp_path, BTSGURU_SPORTS="football", ALERT_WEBHOOK_URL=url) as c:
        await c.services.tiers.update("free", daily_quota=10)
        client = c.client()
        assert (await client.signup("near@example.com")).status == 200
        _page, secret = await client.create_key("app")
        for _ in range(7):
            assert await v1_usage(c, secret) == 200
        await c.services.access.watch.flush()
        page = await client.get("/console/usage")
        assert 'id="quota-notice"' not in page.text  # 7 of 10: not yet
        assert await c.services.alerts.check_once() == []
        assert await v1_usage(c, secret) == 200  # the 8th: 80%
        await c.services.access.watch.flush()
        page = await client.get("/console/usage")
        assert "You have used 8 of your 10 requests today (80%)" in page.text
        events = await c.services.alerts.check_once()
        user_id = (await c.services.users.get_by_email("near@example.com")).id
        assert [(e.status, e.alert.id) for e in events] == [
            ("firing", f"user_quota_80:{user_id}")]
        assert got[0]["text"] == (f":warning: WARNING user_quota_80: user {user_id} (free "
                                  "tier): 8 of 10 requests of the daily quota used today (80%)")
        assert await v1_usage(c, secret) == 200
        await c.services.access.watch.flush()
        assert await c.services.alerts.check_once() == []  # still firing: not sent again
        assert len(got) == 1


async def test_the_handlers_count_raw_misses_and_failed_keys(tmp_path):
    from btsguru.auth.watch import minute_of
    from tests.test_raw_proxy import relay

    async with relay(tmp_path) as r:
        for league in ("39", "61", "78"):  # three distinct misses, then hits
            status, headers, _ = await r.get("/v1/football/raw/fixtures", league=league,
                                             date="2026-01-10")
            assert (status, headers["X-Cache"]) == (200, "MISS")
            status, headers, _ = await r.get("/v1/football/raw/fixtures", league=league,
                                             date="2026-01-10")
            assert (status, headers["X-Cache"]) == (200, "HIT")
        for _ in range(2):
            status, _h, _b = await r.get("/v1/football/raw/leagues", key="bts_wrong_key")
            assert status == 401
        access = r.services.access
        await access.watch.flush()
        now = minute_of(r.services.clock.time())
        counts: dict[str, int] = {}
        for minute in (now - 1, now):  # the requests may straddle a minute's end
            for name, count in (await access.watch.minute_counts(minute)).items():
                counts[name] = counts.get(name, 0) + count
        busting = {k: v for k, v in counts.items() if k.startswith("busting:")}
        assert list(busting.values()) == [3]
        assert counts["authfail:127.0.0.1"] == 2


async def test_a_sentinel_failover_is_raised_for_a_while_then_resolved(world):
    """The master's moves come from the process's `MasterWatch` (here fed by hand: the
    real failovers are `test_sentinel_failover.py`); the alert resolves by itself."""
    import dataclasses

    from redis.asyncio.sentinel import Sentinel

    from btsguru.alerts import FAILOVER_ALERT_S
    from btsguru.store.sentinel import MasterWatch

    config, redis, clock = world
    watch = MasterWatch(Sentinel([]), "mymaster", "(none)")  # asking it finds no master
    watch.observed("10.0.0.1", 6379)  # where the master was at start-up: no failover
    alerter = make_alerter((config, dataclasses.replace(redis, master=watch), clock), None)
    try:
        assert await alerter.check_once() == []
        assert watch.observed("10.0.0.2", 6379) is True
        events = await alerter.check_once()
        assert [(e.status, e.alert.id, e.alert.severity) for e in events] == \
            [("firing", "redis_failover:10.0.0.2:6379", "warning")]
        assert "moved from 10.0.0.1:6379 to 10.0.0.2:6379" in events[0].alert.message
        clock.advance(FAILOVER_ALERT_S - 1)
        assert await alerter.check_once() == []  # still raised, not raised again
        clock.advance(1)
        events = await alerter.check_once()
        assert [(e.status, e.alert.id) for e in events] == \
            [("resolved", "redis_failover:10.0.0.2:6379")]
    finally:
        await alerter.stop()
