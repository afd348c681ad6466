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
from btsguru.clock import FakeClock, SystemClock
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.store.redis import open_redis
from btsguru.upstream.backoff import Backoff
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
