"""The authenticated hot path end to end: a real Tornado app over real Redis and SQLite."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import orjson
import pytest
import redis
import tornado.web

from btsguru.auth.keys import KeyService, generate_key
from btsguru.auth.users import UserService
from btsguru.clock import FakeClock
from btsguru.errors import NotFound, Unauthorized
from btsguru.handlers.api import ApiHandler, api_routes
from btsguru.handlers.base import NotFoundHandler
from tests.access_fixtures import (
    add_key,
    expire_key,
    make_account,
    make_tier,
    migrated_sqlite,
    open_node,
)
from tests.waiting import wait_until

RATE_HEADERS = ("RateLimit-Policy", "RateLimit", "RateLimit-Limit", "RateLimit-Remaining",
                "RateLimit-Reset", "X-RateLimit-Limit", "X-RateLimit-Remaining")


class LiveProbe(ApiHandler):
    route_kind = "live"

    async def get(self) -> None:
        self.cache_hit = self.get_query_argument("hit", "") == "1"
        self.write_json({"data": []})


class RawProbe(ApiHandler):
    route_kind = "raw"
    required_scope = "raw"
    requires_raw = True

    async def get(self) -> None:
        self.write_json({"response": []})


class StreamProbe(ApiHandler):
    route_kind = "stream"
    required_scope = "stream"
    accepts_query_key: ClassVar[bool] = True

    async def get(self) -> None:
        self.write_json({"ok": True})


class LongStream(ApiHandler):
    """Stays open until the client goes away, like an SSE stream."""

    route_kind = "stream"
    required_scope = "stream"
    accepts_query_key: ClassVar[bool] = True

    async def get(self) -> None:
        self.closed = asyncio.Event()
        self.set_header("Content-Type", "text/event-stream")
        self.write(": open\n\n")
        await self.flush()
        await self.closed.wait()

    def on_connection_close(self) -> None:
        self.closed.set()


class MissingGame(ApiHandler):
    route_kind = "games"

    async def get(self) -> None:
        raise NotFound("no game 123")


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def node(test_config, runner, io_loop):
    node = open_node(test_config, runner)
    yield node
    io_loop.run_sync(node.close)


@pytest.fixture
def app(node):
    class Services:
        access = node.access

    routes = [*api_routes(Services()),
              (r"/v1/probe/live", LiveProbe, {"access": node.access}),
              (r"/v1/probe/raw", RawProbe, {"access": node.access}),
              (r"/v1/probe/stream", StreamProbe, {"access": node.access}),
              (r"/v1/probe/missing", MissingGame, {"access": node.access}),
              (r"/v1/probe/long", LongStream, {"access": node.access})]
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler,
                                   xsrf_cookies=True)


async def get(client, path, key=None, *, header="X-API-Key"):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {header: key}
    response = await client.fetch(path, headers=headers, raise_error=False)
    body = orjson.loads(response.body) if response.body else None
    return response, body


def assert_error(response, body, status, code):
    assert response.code == status, (response.code, body)
    assert response.headers["Content-Type"] == "application/json"
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


# -- authentication --

async def test_missing_unknown_or_malformed_keys_are_401(http_server_client, runner):
    account = await make_account(runner, "a@example.com")
    for key, header in ((None, "X-API-Key"), (generate_key(), "X-API-Key"),
                        ("not-a-key", "X-API-Key"), (account.key, "X-Api-Token"),
                        (generate_key(), "bearer")):
        response, body = await get(http_server_client, "/v1/probe/live", key, header=header)
        assert_error(response, body, 401, "unauthorized")
        assert "RateLimit" not in response.headers  # not authenticated: no limits to show
    response = await http_server_client.fetch(
        "/v1/probe/live", headers={"Authorization": f"Basic {account.key}"}, raise_error=False)
    assert response.code == 401


async def test_both_headers_work_and_the_query_key_only_on_streams(http_server_client, runner):
    account = await make_account(runner, "a@example.com")
    for header in ("X-API-Key", "bearer"):
        response, body = await get(http_server_client, "/v1/probe/live", account.key,
                                   header=header)
        assert response.code == 200 and body == {"data": []}
    response, body = await get(http_server_client, f"/v1/probe/live?api_key={account.key}")
    assert_error(response, body, 401, "unauthorized")
    response, body = await get(http_server_client, f"/v1/probe/stream?api_key={account.key}")
    assert response.code == 200 and body == {"ok": True}


async def test_an_expired_key_is_401_even_while_cached(test_config, runner):
    account = await make_account(runner, "exp@example.com", expires_days=1)
    clock = FakeClock(start=time.time())
    node = open_node(test_config, runner, clock)
    try:
        principal = await node.access.authenticate(account.key)
        assert principal.user_id == account.user_id
        clock.advance(2 * 86_400)  # the cached principal is past its expiry
        with pytest.raises(Unauthorized, match="expired"):
            await node.access.authenticate(account.key)
        other = await make_account(runner, "exp2@example.com", expires_days=30)
        await expire_key(runner, other.key_id)  # expired in the database: never admitted
        with pytest.raises(Unauthorized):
            await node.access.authenticate(other.key)
    finally:
        await node.close()


async def test_expired_key_over_http_is_401(http_server_client, runner):
    account = await make_account(runner, "exp@example.com", expires_days=10)
    await expire_key(runner, account.key_id)
    response, body = await get(http_server_client, "/v1/probe/live", account.key)
    assert_error(response, body, 401, "unauthorized")


# -- authorization --

async def test_scope_and_tier_are_403(http_server_client, runner):
    stream_only = await make_account(runner, "s@example.com", scopes="stream")
    response, body = await get(http_server_client, "/v1/probe/live", stream_only.key)
    assert_error(response, body, 403, "forbidden")
    assert "'rest' scope" in body["error"]["message"]
    assert response.headers.get("RateLimit") is None  # refused before spending a token

    free = await make_account(runner, "free@example.com")  # every scope, free tier
    response, body = await get(http_server_client, "/v1/probe/raw", free.key)
    assert_error(response, body, 403, "forbidden")
    assert "free tier" in body["error"]["message"]

    pro = await make_account(runner, "pro@example.com", tier="pro")
    response, body = await get(http_server_client, "/v1/probe/raw", pro.key)
    assert response.code == 200
    pro_no_raw = await make_account(runner, "pro2@example.com", tier="pro", scopes="rest")
    response, body = await get(http_server_client, "/v1/probe/raw", pro_no_raw.key)
    assert_error(response, body, 403, "forbidden")


# -- rate limits over HTTP --

async def test_headers_on_every_authenticated_response_and_429(http_server_client, runner):
    await make_tier(runner, "tiny", burst=3, refill_per_s=0.01, daily_quota=None)
    account = await make_account(runner, "t@example.com", tier="tiny")
    remaining = []
    for _ in range(3):
        response, _body = await get(http_server_client, "/v1/probe/live", account.key)
        assert response.code == 200
        assert all(name in response.headers for name in RATE_HEADERS)
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    assert response.headers["RateLimit-Policy"] == '"default";q=3;w=300'
    assert response.headers["RateLimit"].startswith('"default";r=0;t=')
    assert response.headers["X-RateLimit-Limit"] == "3"

    response, body = await get(http_server_client, "/v1/probe/live", account.key)
    assert_error(response, body, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 100  # one token at 0.01 per second
    assert all(name in response.headers for name in RATE_HEADERS)
    assert response.headers["RateLimit-Remaining"] == "0"


async def test_errors_after_authentication_still_carry_the_headers(http_server_client, runner):
    account = await make_account(runner, "m@example.com")
    response, body = await get(http_server_client, "/v1/probe/missing", account.key)
    assert_error(response, body, 404, "not_found")
    assert response.headers["RateLimit-Limit"] == "60"
    assert response.headers["RateLimit-Policy"] == '"default";q=60;w=60, "daily";q=1000;w=86400'


async def test_all_of_a_users_keys_share_one_bucket(http_server_client, runner):
    await make_tier(runner, "tiny", burst=4, refill_per_s=0.01, daily_quota=None)
    first = await make_account(runner, "two@example.com", tier="tiny")
    second = await add_key(runner, "two@example.com")
    codes = [(await get(http_server_client, "/v1/probe/live", key))[0].code
             for key in (first.key, second.key) * 3]
    assert codes == [200, 200, 200, 200, 429, 429]


async def test_daily_quota_over_http(http_server_client, runner):
    await make_tier(runner, "daily3", burst=50, refill_per_s=50.0, daily_quota=3)
    account = await make_account(runner, "d@example.com", tier="daily3")
    codes = [(await get(http_server_client, "/v1/probe/live", account.key))[0].code
             for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response, body = await get(http_server_client, "/v1/probe/live", account.key)
    assert "daily quota" in body["error"]["message"]
    assert int(response.headers["Retry-After"]) > 0


async def test_two_nodes_never_exceed_a_users_bucket(test_config, runner):
    await make_tier(runner, "twenty", burst=20, refill_per_s=0.001, daily_quota=None)
    account = await make_account(runner, "n@example.com", tier="twenty")
    a, b = open_node(test_config, runner), open_node(test_config, runner)
    try:
        pa = await a.access.authenticate(account.key)
        pb = await b.access.authenticate(account.key)
        decisions = await asyncio.gather(*(
            (a.access if i % 2 else b.access).limit(pa if i % 2 else pb) for i in range(60)))
        assert sum(d.allowed for d in decisions) == 20
    finally:
        await a.close()
        await b.close()


# -- the cache and invalidation --

async def test_a_revoked_key_fails_on_another_node_within_5_s(test_config, runner):
    account = await make_account(runner, "rev@example.com")
    a, b = open_node(test_config, runner), open_node(test_config, runner)
    a.access.start()
    b.access.start()
    try:
        await asyncio.wait_for(b.access.listening.wait(), 5)
        await a.access.authenticate(account.key)
        await b.access.authenticate(account.key)  # cached on both
        info = await KeyService(runner).revoke(account.key[:12])
        assert info.revoked_at is not None
        await a.access.invalidate_key(account.key_hash)
        with pytest.raises(Unauthorized):
            await a.access.authenticate(account.key)

        async def refused_on_b() -> bool:
            try:
                await b.access.authenticate(account.key)
            except Unauthorized:
                return True
            return False

        took_s = await wait_until(refused_on_b, timeout_s=5.0)
        assert took_s < 1.0  # the message, not the TTL
    finally:
        await a.close()
        await b.close()


async def test_without_the_message_the_ttl_bounds_revocation(test_config, runner):
    account = await make_account(runner, "ttl@example.com")
    clock = FakeClock(start=time.time())
    node = open_node(test_config, runner, clock)  # not started: hears no invalidations
    try:
        await node.access.authenticate(account.key)
        await KeyService(runner).revoke(account.key[:12])
        await node.access.authenticate(account.key)  # still cached ...
        clock.advance(4.0)  # ... but never past 5 s
        with pytest.raises(Unauthorized):
            await node.access.authenticate(account.key)
    finally:
        await node.close()


async def test_disabled_user_and_tier_change_reach_other_nodes(test_config, runner):
    account = await make_account(runner, "dis@example.com")
    a, b = open_node(test_config, runner), open_node(test_config, runner)
    b.access.start()
    try:
        await asyncio.wait_for(b.access.listening.wait(), 5)
        assert (await b.access.authenticate(account.key)).tier.name == "free"
        await UserService(runner).set_tier("dis@example.com", "pro")
        await a.access.invalidate_user(account.user_id)

        async def on_pro() -> bool:
            return (await b.access.authenticate(account.key)).tier.name == "pro"

        await wait_until(on_pro, timeout_s=5.0)
        await UserService(runner).set_disabled("dis@example.com", True)
        await a.access.invalidate_user(account.user_id)

        async def refused() -> bool:
            try:
                await b.access.authenticate(account.key)
            except Unauthorized:
                return True
            return False

        await wait_until(refused, timeout_s=5.0)
    finally:
        await a.close()
        await b.close()


async def test_cached_lookups_cost_no_query_and_bad_keys_are_cached_too(test_config, runner):
    account = await make_account(runner, "c@example.com")
    node = open_node(test_config, runner)
    try:
        await asyncio.gather(*(node.access.authenticate(account.key) for _ in range(50)))
        assert node.keys.lookups == 1  # concurrent misses share one query
        for _ in range(50):
            await node.access.authenticate(account.key)
        assert node.keys.lookups == 1
        bad = generate_key()
        results = await asyncio.gather(*(node.access.authenticate(bad) for _ in range(50)),
                                       return_exceptions=True)
        assert all(isinstance(r, Unauthorized) for r in results)
        for _ in range(50):
            with pytest.raises(Unauthorized):
                await node.access.authenticate(bad)
        assert node.keys.lookups == 2
    finally:
        await node.close()


# -- usage --

async def test_usage_counts_exactly_and_shows_within_10_s(http_server_client, runner, node):
    node.access.start()
    mine = await make_account(runner, "u@example.com", tier="pro")
    second_key = await add_key(runner, "u@example.com")
    other = await make_account(runner, "other@example.com")
    for _ in range(5):
        assert (await get(http_server_client, "/v1/probe/live?hit=1", mine.key))[0].code == 200
    for _ in range(2):
        assert (await get(http_server_client, "/v1/probe/raw", second_key.key))[0].code == 200
    assert (await get(http_server_client, f"/v1/probe/stream?api_key={mine.key}"))[0].code \
        == 200
    assert (await get(http_server_client, "/v1/probe/missing", mine.key))[0].code == 404
    assert (await get(http_server_client, "/v1/probe/live", other.key))[0].code == 200

    async def shows_all() -> bool:
        response, body = await get(http_server_client, "/v1/usage", mine.key)
        assert response.code == 200
        return body["data"]["today"]["live"] == 5

    await wait_until(shows_all, timeout_s=10.0, interval_s=0.2)
    response, body = await get(http_server_client, "/v1/usage", mine.key)
    assert all(name in response.headers for name in RATE_HEADERS)
    data = body["data"]
    assert data["today"]["live"] == 5
    assert data["today"]["raw"] == 2
    assert data["today"]["stream"] == 1
    assert data["today"]["games"] == 1  # a 404 after authentication still counts
    assert data["today"]["standings"] == 0
    assert data["today"]["other"] >= 1  # the earlier /v1/usage calls (not this one)
    assert len(data["days"]) == 30
    today = data["days"][-1]
    assert today["by_kind"] == data["today"]
    assert today["requests"] == sum(data["today"].values())
    assert today["cache_hits"] == 5
    assert all(day["requests"] == 0 for day in data["days"][:-1])

    _response, theirs = await get(http_server_client, "/v1/usage", other.key)
    assert theirs["data"]["today"]["live"] == 1  # never another user's requests
    assert theirs["data"]["today"]["raw"] == 0

    response, body = await get(http_server_client, "/v1/usage?days=abc", mine.key)
    assert_error(response, body, 400, "bad_request")
    response, body = await get(http_server_client, "/v1/usage?days=7", mine.key)
    assert len(body["data"]["days"]) == 7


async def test_refused_requests_are_not_counted(http_server_client, runner, node):
    await make_tier(runner, "two", burst=2, refill_per_s=0.01, daily_quota=None)
    account = await make_account(runner, "r@example.com", tier="two")
    codes = [(await get(http_server_client, "/v1/probe/live", account.key))[0].code
             for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    # /v1/usage itself is refused now too; read through the service.
    usage = await node.access.usage_for_user(account.user_id)
    assert usage[-1].by_kind["live"] == 2


async def test_no_plaintext_key_anywhere_in_redis(http_server_client, runner, node,
                                                  test_config):
    node.access.start()
    account = await make_account(runner, "p@example.com", tier="pro")
    for path in ("/v1/probe/live", "/v1/probe/raw", "/v1/usage"):
        assert (await get(http_server_client, path, account.key))[0].code == 200
    await node.access.usage.flush()
    await node.access.usage.rollup()
    await node.access.invalidate_key(account.key_hash)
    secret = account.key.encode()
    random_part = secret[4:]
    seen = 0
    for db in {test_config.redis_db, test_config.redis_cache_db, test_config.redis_queue_db,
               test_config.redis_reverb_db}:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            for name in client.scan_iter(match=test_config.redis_cache_prefix + "*"):
                seen += 1
                kind = client.type(name)
                if kind == b"string":
                    values = [client.get(name)]
                elif kind == b"hash":
                    values = [part for item in client.hgetall(name).items() for part in item]
                elif kind == b"set":
                    values = list(client.smembers(name))
                elif kind == b"list":
                    values = client.lrange(name, 0, -1)
                elif kind == b"zset":
                    values = [m for m, _score in client.zrange(name, 0, -1, withscores=True)]
                else:
                    values = []
                for blob in (name, *values):
                    assert random_part not in blob, name
                    assert secret not in blob, name
        finally:
            client.close()
    assert seen >= 3  # the bucket and the usage hashes were examined


async def test_a_stream_counts_while_it_is_still_open(http_server_client, runner, node):
    account = await make_account(runner, "long@example.com")
    port = http_server_client.get_http_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /v1/probe/long?api_key={account.key} HTTP/1.1\r\n"
                     "Host: localhost\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b": open"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"ratelimit-policy:" in head.lower()  # header names are case-insensitive

        async def counted() -> bool:
            usage = await node.access.usage_for_user(account.user_id)
            return usage[-1].by_kind["stream"] == 1

        await wait_until(counted, timeout_s=10.0)
    finally:
        writer.close()
        await writer.wait_closed()
    usage = await node.access.usage_for_user(account.user_id)
    assert usage[-1].by_kind["stream"] == 1  # once, not again when it closes
