"""Pusher webhooks end to end: unmodified pusher-js clients make things happen, the relay
POSTs webhooks to a local app backend, and the official `pusher` server SDK validates
each POST (`webhook(...).isValid()`) and reads its events, as a Laravel or Node backend
would. Cluster-wide occupancy with the debounce runs on two `btsguru serve` processes;
delivery (retries with growing back-off, a hanging URL, a batch left by a process that
was killed) runs on the queue itself with short timings instead of minutes."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from btsguru import metrics
from btsguru.alerts import Alerter
from btsguru.app import Services
from btsguru.backoff import Backoff
from btsguru.clock import FakeClock, SystemClock
from btsguru.config import Config
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerStateReader
from btsguru.realtime.webhooks import PusherWebhooks
from btsguru.store.redis import RedisStores, open_redis
from btsguru.store.webhook_queue import url_id
from btsguru.upstream.quota import QuotaGovernor
from tests import test_pusher_js
from tests.cli_helpers import ROOT
from tests.conftest import make_test_config, purge_redis_prefix
from tests.pusher_node import NodeClient
from tests.realtime_helpers import migrate_file, relay, servers
from tests.waiting import wait_until
from tests.webhook_backend import Backend, with_config

pusher_js = test_pusher_js.pusher_js  # the same fixture: pusher-js and the SDK under Node


def occupancy(events: list[dict[str, Any]], channel: str) -> list[str]:
    return [e["name"] for e in events if e.get("channel") == channel
            and e["name"] in ("channel_occupied", "channel_vacated")]


def started(**tune: Any) -> Any:
    """A `relay(prepare=...)` that starts the webhooks with faster timings."""
    async def prepare(s: Services) -> None:
        assert s.webhooks is not None
        for name, value in tune.items():
            setattr(s.webhooks, name, value)
        s.webhooks.start(s.pusher.occupancy.total, s.pusher.members)
    return prepare


async def connected(client: NodeClient, *channels: str, again: bool = False) -> str:
    """Once pusher-js is connected and subscribed to `channels` (`again`: connected anew,
    after the lines printed so far): its socket id."""
    old = {id(line) for line in client.lines} if again else set()
    hello = await client.wait(lambda m: id(m) not in old and m["type"] == "connected")
    for name in channels:
        got = await client.wait(lambda m, n=name: id(m) not in old and m["type"] in (
            "subscribed", "subscription_error") and m["channel"] == n)
        assert got["type"] == "subscribed", got
    return str(hello["socket_id"])


@pytest.fixture
def backend(tmp_path: Path, pusher_js: Path) -> Iterator[tuple[Backend, Config]]:
    config = make_test_config(tmp_path)
    app_backend = Backend(pusher_js, config)
    try:
        yield app_backend, config
    finally:
        app_backend.close()
        purge_redis_prefix(config)


async def test_every_event_in_pushers_format_validated_by_the_sdk(tmp_path, pusher_js,
                                                                  backend):
    hooks, config = backend
    config = with_config(config, pusher_webhook_urls=(hooks.url("main"),))
    async with relay(tmp_path, config, prepare=started(debounce_s=0.5,
                                                       count_interval_s=0.5)) as r:
        ana = await NodeClient.start(pusher_js, r, ["cache-orders", "presence-room"],
                                     authEndpoint=hooks.auth_url("u-1"))
        clients = [ana]
        try:
            await connected(ana, "cache-orders", "presence-room")
            await ana.wait(lambda m: m["type"] == "cache_miss")
            bo = await NodeClient.start(pusher_js, r, ["presence-room"],  # Ana is in first
                                        authEndpoint=hooks.auth_url("u-2"))
            clients.append(bo)
            bo_socket = await connected(bo, "presence-room")
            await ana.wait(lambda m: m["type"] == "member_added" and m["id"] == "u-2")
            await bo.send('trigger presence-room client-typing {"who":"u-2"}')
            await ana.wait(lambda m: m.get("event") == "client-typing")
            await bo.stop()
            await ana.wait(lambda m: m["type"] == "member_removed" and m["id"] == "u-2")
        finally:
            for client in clients:
                await client.stop()
        await wait_until(lambda: occupancy(hooks.events("main"), "presence-room") ==
                         ["channel_occupied", "channel_vacated"], 15,
                         lambda: f"both channels vacated; got {hooks.events('main')}")
        await wait_until(lambda: occupancy(hooks.events("main"), "cache-orders") ==
                         ["channel_occupied", "channel_vacated"], 5)
        hits = hooks.answered("main")
        events = []
        for hit in hits:
            assert hit.headers["content-type"] == "application/json"
            assert hit.headers["x-pusher-key"] == config.reverb_app_key
            body = json.loads(hit.body)
            assert set(body) == {"time_ms", "events"} and body["time_ms"] > 1.7e12
            events += await hooks.validate(hit)
        assert events == hooks.events("main")
        seen = {(e["name"], e["channel"]) for e in events}
        assert {("cache_miss", "cache-orders"), ("channel_occupied", "cache-orders"),
                ("channel_occupied", "presence-room"), ("channel_vacated", "cache-orders"),
                ("channel_vacated", "presence-room")} <= seen
        members = [(e["name"], e["user_id"]) for e in events if e["name"].startswith("member")]
        assert sorted(members) == [("member_added", "u-1"), ("member_added", "u-2"),
                                   ("member_removed", "u-1"), ("member_removed", "u-2")]
        assert [e for e in events if e["name"] == "client_event"] == [{
            "name": "client_event", "channel": "presence-room", "event": "client-typing",
            "data": '{"who":"u-2"}', "socket_id": bo_socket, "user_id": "u-2"}]
        counts = [e for e in events if e["name"] == "subscription_count"]
        assert {e["channel"] for e in counts} == {"cache-orders"}  # not on presence
        assert counts[0]["subscription_count"] == 1
        assert counts[-1]["subscription_count"] == 0  # the latest count, once it is gone
        assert all(set(e) == {"name", "channel", "subscription_count"} for e in counts)


async def test_only_the_events_asked_for_are_sent(tmp_path, pusher_js, backend):
    hooks, config = backend
    config = with_config(config, pusher_webhook_urls=(hooks.url("main"),),
                         pusher_webhook_events=("channel_occupied", "channel_vacated"))
    async with relay(tmp_path, config, prepare=started(debounce_s=0.3)) as r:
        client = await NodeClient.start(pusher_js, r, ["cache-orders", "presence-room"],
                                        authEndpoint=hooks.auth_url("u-1"))
        try:
            await connected(client, "cache-orders", "presence-room")
            await client.wait(lambda m: m["type"] == "cache_miss")
        finally:
            await client.stop()
        # the vacated events come last (held for the debounce): every other event that
        # was going to be sent would have been sent by then
        await wait_until(lambda: len(occupancy(hooks.events("main"), "presence-room")) == 2
                         and len(occupancy(hooks.events("main"), "cache-orders")) == 2, 10,
                         lambda: f"both channels vacated; got {hooks.events('main')}")
        assert sorted(e["name"] for e in hooks.events("main")) == [
            "channel_occupied", "channel_occupied", "channel_vacated", "channel_vacated"]


async def test_no_urls_no_webhook_work(tmp_path, pusher_js):
    async with relay(tmp_path) as r:
        assert r.services.webhooks is None
        client = await NodeClient.start(pusher_js, r, ["orders", "cache-orders"])
        try:
            await connected(client, "orders", "cache-orders")
        finally:
            await client.stop()
        reverb = r.services.redis.reverb
        found = [k async for k in reverb.scan_iter(match=r.config.redis_cache_prefix + "*")]
        assert found and not [k for k in found if b"webhooks" in k or b"occupancy" in k]


# -- two processes --

@pytest.fixture
def two_servers(tmp_path, monkeypatch, pusher_js) -> Iterator[tuple[Backend, Config, list]]:
    config = make_test_config(tmp_path)
    hooks = Backend(pusher_js, config)
    monkeypatch.setenv("REVERB_APP_SECRET", config.reverb_app_secret.reveal())
    monkeypatch.setenv("PUSHER_WEBHOOK_URLS", hooks.url("main"))
    monkeypatch.setenv("PUSHER_WEBHOOK_EVENTS", "channel_occupied,channel_vacated")
    migrate_file(config)
    try:
        with servers(config, 2) as started_servers:
            yield hooks, config, [SimpleNamespace(port=port, config=config)
                                  for port, _process in started_servers]
    finally:
        hooks.close()
        purge_redis_prefix(config)


async def test_occupancy_is_cluster_wide_and_a_reconnect_sends_nothing(two_servers,
                                                                       pusher_js):
    hooks, config, (a, b) = two_servers
    redis = open_redis(config)
    held = redis.keys.tagged("webhooks", "held", "due")
    clients: list[NodeClient] = []
    try:
        first = await NodeClient.start(pusher_js, a, ["orders"])
        clients.append(first)
        await connected(first, "orders")
        await wait_until(lambda: hooks.events("main"), 10, "channel_occupied")
        other = await NodeClient.start(pusher_js, b, ["orders"])  # the second, elsewhere
        clients.append(other)
        await connected(other, "orders")
        await first.send("disconnect")  # one of two gone: still occupied
        await first.wait(lambda m: m.get("state") == "disconnected")
        await other.stop()  # the last one anywhere: vacated, held for the debounce...
        await wait_until(lambda: redis.reverb.zcard(held), 10, "the held channel_vacated")
        reconnected = connected(first, "orders", again=True)
        await first.send("connect")  # ...and a reconnect (to the other process) undoes it
        await reconnected
        await wait_until(lambda: _zero(redis.reverb.zcard(held)), 10, "the hold taken back")
        await first.stop()  # now for good: vacated once the debounce is over
        await wait_until(lambda: len(hooks.events("main")) >= 2, 15,
                         lambda: f"channel_vacated; got {hooks.events('main')}")
        assert occupancy(hooks.events("main"), "orders") == ["channel_occupied",
                                                            "channel_vacated"]
        for hit in hooks.answered("main"):
            await hooks.validate(hit)
    finally:
        for client in clients:
            await client.stop()
        await redis.close()


async def _zero(count: Any) -> bool:
    return await count == 0


# -- delivery --

@asynccontextmanager
async def webhooks(config: Config, urls: tuple[str, ...], *, consumer: str = "proc-a",
                   **delivery: Any) -> AsyncIterator[tuple[PusherWebhooks, RedisStores]]:
    """The webhook service alone on the test Redis, started, with delivery settings."""
    stores = open_redis(config)
    service = PusherWebhooks(stores.reverb, stores.keys,
                             with_config(config, pusher_webhook_urls=urls), SystemClock(),
                             consumer=consumer, **delivery)
    service.start(_no_total, _no_members)
    try:
        yield service, stores
    finally:
        await service.close()
        await stores.close()


async def _no_total(channel: str) -> int:
    return 0


async def _no_members(channel: str) -> dict[str, Any]:
    return {}


def counted(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("btsguru_pusher_webhooks_total",
                                             {"result": result}) or 0.0


async def test_a_failing_url_is_retried_with_growing_backoff_then_delivered_once(backend):
    hooks, config = backend
    hooks.modes["main"] = "fail"
    before = {r: counted(r) for r in ("delivered", "failed", "dropped")}
    # the ceiling of each wait (no jitter): 0.2 s, 0.4 s, 0.8 s
    async with webhooks(config, (hooks.url("main"),),
                        backoff=Backoff(0.2, 5.0, random_source=lambda: 1.0)) as (service, _):
        service.cache_miss("cache-orders")
        await wait_until(lambda: len(hooks.hits) >= 3, 10, "three refused tries")
        hooks.modes["main"] = "ok"
        await wait_until(lambda: hooks.answered("main"), 10, "the delivery")
        await wait_until(lambda: _zero(service.queue.depth()), 5, "the queue emptied")
    hits = [h for h in hooks.hits if h.name == "main"]
    assert [h.status for h in hits] == [500, 500, 500, 200]  # a 2xx ends it
    assert len({h.body for h in hits}) == 1  # the same signed batch each time
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[2] > gaps[0], gaps
    assert await hooks.validate(hits[-1]) == [{"name": "cache_miss",
                                               "channel": "cache-orders"}]
    assert counted("delivered") - before["delivered"] == 1
    assert counted("failed") - before["failed"] == 3
    assert counted("dropped") == before["dropped"]


async def test_a_url_failing_past_the_window_is_dropped_and_alerted(backend):
    hooks, config = backend
    hooks.modes["main"] = "fail"
    url = hooks.url("main")
    dropped = counted("dropped")
    async with webhooks(config, (url,), retry_for_s=0.3,
                        backoff=Backoff(0.05, 0.1)) as (service, stores):
        service.cache_miss("cache-orders")
        await wait_until(lambda: counted("dropped") > dropped, 10, "the batch dropped")
        assert await service.queue.depth() == 0
        clock = FakeClock(SystemClock().time() + 120)  # two minutes into the failures
        alerter = Alerter(config.sports, clock, stores, quota=QuotaGovernor(stores, config,
                                                                            clock),
                          tasks=PollerStateReader(stores, clock), leases=Leases(stores, clock),
                          pusher_webhooks=service.queue)
        try:
            events = await alerter.check_once()
            mine = [e for e in events if e.alert.name == "pusher_webhook_failing"]
            assert [(e.status, e.alert.id, e.alert.severity) for e in mine] == [
                ("firing", f"pusher_webhook_failing:{url_id(url)}", "critical")]
            assert url not in mine[0].alert.message  # the URL may hold a token
            assert "HTTP 500" in mine[0].alert.message and "1 dropped" in mine[0].alert.message
            hooks.modes["main"] = "ok"  # the receiver is back: the next batch clears it
            service.cache_miss("cache-orders")
            await wait_until(lambda: hooks.answered("main"), 10, "a delivery")
            events = await alerter.check_once()
            assert [(e.status, e.alert.name) for e in events] == [
                ("resolved", "pusher_webhook_failing")]
        finally:
            await alerter.stop()


async def test_a_hanging_url_does_not_hold_up_another(backend):
    hooks, config = backend
    hooks.modes["slow"] = "hang"
    urls = (hooks.url("slow"), hooks.url("fast"))
    async with webhooks(config, urls, in_flight=1, timeout_s=5.0,
                        backoff=Backoff(0.05, 0.1)) as (service, _):
        for n in range(3):  # three batches
            service.cache_miss(f"cache-{n}")
            await service.flush()
        await wait_until(lambda: len(hooks.answered("fast")) == 3, 4, "the fast URL's three")
        assert [h.status for h in hooks.hits if h.name == "slow"] == [0]  # one, still hanging
        hooks.release()  # the slow URL answers at last: everything reaches it too
        hooks.modes["slow"] = "ok"
        await wait_until(lambda: len({h.body for h in hooks.answered("slow")}) == 3, 15)
    assert sorted(e["channel"] for e in hooks.events("fast")) == ["cache-0", "cache-1",
                                                                  "cache-2"]


DOOMED = """
import asyncio, json, sys
from btsguru.backoff import Backoff
from btsguru.clock import SystemClock
from btsguru.config import load_config
from btsguru.realtime.webhooks import PusherWebhooks
from btsguru.store.redis import open_redis

async def main():
    config = load_config(environ=json.loads(sys.argv[1]), env_file=None)
    stores = open_redis(config)
    service = PusherWebhooks(stores.reverb, stores.keys, config, SystemClock(),
                             consumer="doomed", backoff=Backoff(600.0, 600.0))
    async def nothing(channel):
        return 0
    service.start(nothing, nothing)
    service.cache_miss("cache-orders")
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_batch_held_by_a_killed_process_is_delivered_by_another(backend):
    hooks, config = backend
    hooks.modes["main"] = "fail"
    environ = {"REDIS_URL": config.redis_url, "REDIS_CACHE_PREFIX": config.redis_cache_prefix,
               "DATABASE_URL": config.database_url, "SECRET_KEY": config.secret_key.reveal(),
               "REVERB_APP_SECRET": config.reverb_app_secret.reveal(),
               "RAPIDAPI_KEY": "k", "PUSHER_WEBHOOK_URLS": hooks.url("main")}
    doomed = await asyncio.create_subprocess_exec(sys.executable, "-c", DOOMED,
                                                  json.dumps(environ), cwd=ROOT)
    try:
        # it queued the batch, took it and was refused; it would wait ten minutes now
        await wait_until(lambda: hooks.hits, 30, "the doomed process's first try")
    finally:
        doomed.kill()  # SIGKILL: no goodbye, its batch stays in its pending list
        await doomed.wait()
    hooks.modes["main"] = "ok"
    async with webhooks(config, (hooks.url("main"),), consumer="survivor",
                        claim_timeout_s=1.0) as (service, stores):
        await wait_until(lambda: hooks.answered("main"), 15, "the batch taken over")
        await wait_until(lambda: _zero(service.queue.depth()), 5, "the queue emptied")
        pending = await stores.reverb.xpending(
            stores.keys.tagged("webhooks", url_id(hooks.url("main")), "queue"), "btsguru")
        assert pending["pending"] == 0
    first, last = hooks.hits[0], hooks.answered("main")[-1]
    assert first.status == 500 and last.body == first.body  # the very batch it held
    assert await hooks.validate(last) == [{"name": "cache_miss", "channel": "cache-orders"}]
