"""The hot path answers cached hits exactly as the handlers do (status, headers, body),
counts them the same way, and leaves everything else to the handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.app import Services, make_app, open_services
from btsguru.db.models import ROUTE_KINDS
from tests.access_fixtures import make_tier
from tests.conftest import make_test_config, purge_redis_prefix
from tests.realtime_helpers import migrate_file
from tests.store_fixtures import live, make_game

# the values that differ between any two answers, whoever gives them
VARYING = {"Date", "X-Request-Id", "Ratelimit", "Ratelimit-Remaining", "X-Ratelimit-Remaining",
           "Ratelimit-Reset", "Age"}


@contextlib.asynccontextmanager
async def server(tmp_path) -> AsyncIterator[tuple[Services, str]]:
    config = make_test_config(tmp_path)
    migrate_file(config)
    try:
        async with open_services(config) as s:
            http = HTTPServer(make_app(s))
            sockets = bind_sockets(0, "127.0.0.1")
            http.add_sockets(sockets)
            try:
                yield s, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
            finally:
                http.stop()
    finally:
        purge_redis_prefix(config)


async def fetch(url: str, key: str, **headers: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, headers={"X-API-Key": key, **headers},
                                         raise_error=False)


def comparable(response: HTTPResponse) -> dict[str, str]:
    return {k: v for k, v in response.headers.get_all() if k not in VARYING}


async def test_hits_are_the_same_answer_either_way_and_counted_alike(tmp_path):
    async with server(tmp_path) as (s, url):
        await s.users.create_user("fan@example.com", "password123", tier="pro")
        _info, key = await s.keys.create_key("fan@example.com")
        await s.cache.put("football", "leagues", {}, b'{"response": [1]}', 3600)
        await s.cache.put("football", "teams", {"league": "39", "season": "2024"},
                          b'{"response": [2]}', 3600)
        await s.games.ingest("football", [live(make_game(1), 1, 0, 10)])
        paths = ["/v1/football/raw/leagues", "/v1/football/raw/teams?league=39&season=2024",
                 "/v1/football/live"]
        # the handlers: the hot cache is not in use until it listens
        by_handlers = [await fetch(url + path, key) for path in paths]
        s.hot.start()
        await asyncio.wait_for(s.hot.listening.wait(), 5)
        for path in paths:
            await fetch(url + path, key)  # fills this process's copies and the key's lease
        served_before = s.cache.counters.hits
        by_hot_path = [await fetch(url + path, key) for path in paths]
        assert s.cache.counters.hits == served_before + 2  # the raw hits were counted
        for handler, hot in zip(by_handlers, by_hot_path, strict=True):
            assert (hot.code, hot.body) == (handler.code, handler.body) == (200, hot.body)
            assert comparable(hot) == comparable(handler)
            assert list(hot.headers) == list(handler.headers)  # and in the same order
        assert [h.headers["X-Cache"] for h in by_hot_path[:2]] == ["HIT", "HIT"]
        assert orjson.loads(by_hot_path[2].body)["data"][0]["home"]["score"] == 1
        assert int(by_hot_path[2].headers["RateLimit-Remaining"]) < \
            int(by_handlers[2].headers["RateLimit-Remaining"])  # the same bucket, spent
        # every request counted in usage, hits as cache hits, whoever answered
        await s.access.usage.flush()
        [today] = await s.access.usage_for_user(
            (await s.access.authenticate(key)).user_id, days=1)
        assert today.by_kind["raw"] == 3 * 2 and today.by_kind["live"] == 3
        assert set(today.by_kind) == set(ROUTE_KINDS)


async def test_everything_but_a_200_goes_to_the_handlers(tmp_path):
    async with server(tmp_path) as (s, url):
        s.hot.start()
        await asyncio.wait_for(s.hot.listening.wait(), 5)
        await make_tier(s.db, "tiny", burst=3, refill_per_s=0.01, daily_quota=None)
        await s.users.create_user("tiny@example.com", "password123", tier="tiny")
        _info, tiny = await s.keys.create_key("tiny@example.com")
        await s.users.create_user("free@example.com", "password123", tier="free")
        _info, free = await s.keys.create_key("free@example.com")
        await s.cache.put("football", "leagues", {}, b'{"response": [1]}', 3600)
        raw = url + "/v1/football/raw/leagues"
        assert (await fetch(raw, "bt_not_a_key")).code == 401
        assert (await fetch(raw, free)).code == 403  # the free tier has no raw proxy
        # a bad parameter is the handler's 400 (which spends a token, as before)
        assert (await fetch(url + "/v1/football/raw/leagues?bogus=1", tiny)).code == 400
        codes = [(await fetch(raw, tiny)).code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = await fetch(raw, tiny)
        assert refused.code == 429 and refused.headers["Retry-After"]
        assert refused.headers["RateLimit-Remaining"] == "0"
        # a client's own request id is echoed, as the handlers do
        echoed = await fetch(url + "/v1/football/live", free, **{"X-Request-Id": "abc-123"})
        assert echoed.code == 200 and echoed.headers["X-Request-Id"] == "abc-123"
