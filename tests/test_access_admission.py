"""One way in for every transport (issue 18): a burst of wrong API keys over the native
WebSocket, SSE and the Pusher protocol is recorded and alerted on exactly as the same
burst over REST, and a rate-limit refusal is counted on every transport. The real app
(`make_app` over `open_services`) on real Redis and SQLite, real sockets, and an
injected clock so that "the minute is over" for the alerter is a step, not a wait."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from tornado.httpclient import HTTPRequest
from tornado.httputil import HTTPHeaders

from btsguru import metrics
from btsguru.alerts import AUTH_FAILURE_BURST
from btsguru.app import Services
from btsguru.auth.access import request_key
from btsguru.auth.keys import generate_key
from btsguru.auth.watch import minute_of
from btsguru.clock import FakeClock
from tests.conftest import make_test_config
from tests.pusher_helpers import PusherClient
from tests.realtime_helpers import Relay, WsClient, relay

CLIENT = "127.0.0.1"  # every request of these tests comes from here
RATE_HEADERS = ("RateLimit-Policy", "RateLimit", "RateLimit-Limit", "RateLimit-Remaining",
                "RateLimit-Reset", "X-RateLimit-Limit", "X-RateLimit-Remaining")


def relay_on(clock: FakeClock, tmp_path: Path, *, free_daily_quota: int | None = None,
             ) -> contextlib.AbstractAsyncContextManager[Relay]:
    """The app in this process on `clock` (no pollers, no background loops: the test
    flushes the watch itself)."""
    async def prepare(services: Services) -> None:
        if free_daily_quota is not None:
            await services.tiers.update("free", daily_quota=free_daily_quota)

    return relay(tmp_path, make_test_config(tmp_path, BTSGURU_SPORTS="football"),
                 clock=clock, prepare=prepare)


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# -- one wrong key, tried once, on each transport; returns what the client saw --

async def rest_attempt(r: Relay, key: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(
            f"{r.http_url}/v1/sports", headers={"X-API-Key": key}) as resp:
        return resp.status, (await resp.json())["error"]["code"]


async def ws_attempt(r: Relay, key: str) -> object:
    client = await WsClient.connect(r.ws_url, key)
    return await client.closed()


async def sse_attempt(r: Relay, key: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(
            f"{r.http_url}/v1/stream",
            params={"channels": "sports.football", "api_key": key}) as resp:
        return resp.status, (await resp.json())["error"]["code"]


async def pusher_attempts(r: Relay, keys: list[str]) -> list[object]:
    """A Pusher client's way in with an API key: connected to the app, it asks the auth
    endpoints (Laravel Echo's `/broadcasting/auth`, and `/v1/realtime/auth`) to sign a
    private game channel for its socket, with the key in `X-API-Key`."""
    pusher = await PusherClient.connect(r)
    seen: list[object] = []
    try:
        async with aiohttp.ClientSession() as session:
            for n, key in enumerate(keys):
                path = "/broadcasting/auth" if n % 2 else "/v1/realtime/auth"
                async with session.post(
                        r.http_url + path, headers={"X-API-Key": key},
                        data={"socket_id": pusher.socket_id,
                              "channel_name": "private-sports.football"}) as resp:
                    seen.append((resp.status, (await resp.json())["error"]["code"]))
    finally:
        pusher.close()
    return seen


async def pusher_app_key_attempt(r: Relay, key: str) -> object:
    """A Pusher socket opened with a wrong app key (a guess at the app's key)."""
    client = await PusherClient.connect(r, key=key, established=False)
    refusal = await client.recv()
    assert refusal is not None and refusal["event"] == "pusher:error", refusal
    return await client.closed()


async def pusher_signature_attempts(r: Relay, keys: list[str]) -> list[object]:
    """One Pusher socket subscribing to a private channel with forged signatures, each
    made with a wrong secret (a guess at the app's secret)."""
    pusher = await PusherClient.connect(r)
    seen: list[object] = []
    try:
        for key in keys:
            forged = f"{r.config.reverb_app_key}:{hashlib.sha256(key.encode()).hexdigest()}"
            await pusher.subscribe("private-sports.football", auth=forged)
            error = await pusher.expect("pusher:subscription_error")
            seen.append(error["data"]["status"])
    finally:
        pusher.close()
    return seen


def one_by_one(attempt: Callable[[Relay, str], Awaitable[object]],
               ) -> Callable[[Relay, list[str]], Awaitable[list[object]]]:
    async def attempts(r: Relay, keys: list[str]) -> list[object]:
        return [await attempt(r, key) for key in keys]
    return attempts


TRANSPORTS = {
    "rest": (one_by_one(rest_attempt), (401, "unauthorized")),
    "ws": (one_by_one(ws_attempt), 4001),
    "sse": (one_by_one(sse_attempt), (401, "unauthorized")),
    "pusher": (pusher_attempts, (401, "unauthorized")),
    "pusher-app-key": (one_by_one(pusher_app_key_attempt), 4001),
    "pusher-signature": (pusher_signature_attempts, 401),
}


async def watched_failures(r: Relay) -> dict[str, int]:
    """The failed-auth counts the alerter will read, summed over the test's minutes."""
    watch = r.services.access.watch
    await watch.flush()
    minute = minute_of(r.services.clock.time())
    counts: dict[str, int] = {}
    for m in (minute - 1, minute):
        for name, count in (await watch.minute_counts(m)).items():
            counts[name] = counts.get(name, 0) + count
    return counts


async def auth_alerts(r: Relay) -> list[tuple[str, str]]:
    events = await r.services.alerts.check_once()
    return sorted((e.status, e.alert.id) for e in events
                  if e.alert.name == "auth_failure_burst")


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_burst_of_wrong_keys_alerts_on_every_transport_as_on_rest(tmp_path, transport):
    attempts, refusal = TRANSPORTS[transport]
    clock = FakeClock(start=time.time())  # frozen: the burst falls in one minute
    async with relay_on(clock, tmp_path) as r:
        before = counter("btsguru_auth_failures_total")
        wrong = [generate_key() for _ in range(AUTH_FAILURE_BURST)]
        assert await attempts(r, wrong) == [refusal] * AUTH_FAILURE_BURST
        assert counter("btsguru_auth_failures_total") - before == AUTH_FAILURE_BURST
        assert await watched_failures(r) == {f"authfail:{CLIENT}": AUTH_FAILURE_BURST}
        assert await auth_alerts(r) == []  # the alerter judges complete minutes only
        clock.advance(60)
        assert await auth_alerts(r) == [("firing", f"auth_failure_burst:{CLIENT}")]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_one_short_of_the_burst_raises_nothing(tmp_path, transport):
    attempts, refusal = TRANSPORTS[transport]
    clock = FakeClock(start=time.time())
    async with relay_on(clock, tmp_path) as r:
        wrong = [generate_key() for _ in range(AUTH_FAILURE_BURST - 1)]
        assert await attempts(r, wrong) == [refusal] * (AUTH_FAILURE_BURST - 1)
        assert await watched_failures(r) == {f"authfail:{CLIENT}": AUTH_FAILURE_BURST - 1}
        clock.advance(60)
        assert await auth_alerts(r) == []


async def test_a_good_key_is_not_a_failed_authentication_anywhere(tmp_path):
    clock = FakeClock(start=time.time())
    async with relay_on(clock, tmp_path) as r:
        key = r.keys["pro"]
        before = counter("btsguru_auth_failures_total")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{r.http_url}/v1/sports",
                                   headers={"X-API-Key": key}) as resp:
                assert resp.status == 200
            ws = await WsClient.connect(r.ws_url, key)
            await ws.send({"op": "ping"})
            assert await ws.recv() == {"op": "pong"}
            ws.close()
        assert counter("btsguru_auth_failures_total") == before
        assert await watched_failures(r) == {}


# -- rate-limit refusals: counted on every transport --

async def test_a_rate_limit_refusal_is_counted_on_ws_sse_and_rest(tmp_path):
    clock = FakeClock(start=time.time())
    async with relay_on(clock, tmp_path, free_daily_quota=1) as r:
        key = r.keys["free"]

        def rejected() -> float:
            return counter("btsguru_rate_limit_rejections_total", tier="free")

        before = rejected()
        first = await WsClient.connect(r.ws_url, key)  # the day's one request
        await first.send({"op": "ping"})
        assert await first.recv() == {"op": "pong"}
        first.close()
        assert rejected() == before

        refused = await WsClient.connect(r.ws_url, key)
        assert await refused.closed() == 4029
        assert rejected() - before == 1

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{r.http_url}/v1/stream",
                                   params={"channels": "sports.football",
                                           "api_key": key}) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"]["code"] == "rate_limited"
                assert int(resp.headers["Retry-After"]) > 0
                assert all(name in resp.headers for name in RATE_HEADERS)
            assert rejected() - before == 2
            async with session.get(f"{r.http_url}/v1/sports",
                                   headers={"X-API-Key": key}) as resp:
                assert resp.status == 429
                assert all(name in resp.headers for name in RATE_HEADERS)
            assert rejected() - before == 3
        # a refusal is no failed authentication
        assert await watched_failures(r) == {}


# -- one key, one precedence --

@pytest.mark.parametrize(("headers", "query", "expected"), [
    ({"X-API-Key": "header"}, None, "header"),
    ({"Authorization": "Bearer token"}, None, "token"),
    ({"Authorization": "bearer  token "}, None, "token"),
    ({"X-API-Key": "header", "Authorization": "Bearer token"}, "query", "header"),
    ({"Authorization": "Bearer token"}, "query", "token"),
    ({"Authorization": "Basic token"}, None, None),
    ({"Authorization": "Basic token"}, "query", "query"),
    ({"X-API-Key": "  "}, " query ", "query"),
    ({}, "", None),
    ({}, None, None),
])
def test_request_key_takes_a_header_first(headers, query, expected):
    assert request_key(HTTPHeaders(headers), query) == expected


async def test_the_websocket_takes_the_header_before_the_query(tmp_path):
    clock = FakeClock(start=time.time())
    async with relay_on(clock, tmp_path) as r:
        good, bad = r.keys["pro"], generate_key()
        request = HTTPRequest(f"{r.ws_url}?api_key={bad}", headers={"X-API-Key": good})
        ws = await WsClient.connect(request, None)  # type: ignore[arg-type]
        await ws.send({"op": "ping"})
        assert await ws.recv() == {"op": "pong"}
        ws.close()
        request = HTTPRequest(f"{r.ws_url}?api_key={good}", headers={"X-API-Key": bad})
        refused = await WsClient.connect(request, None)  # type: ignore[arg-type]
        assert await refused.closed() == 4001
        assert await watched_failures(r) == {f"authfail:{CLIENT}": 1}
