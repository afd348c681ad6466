"""The in-process hot cache and its coherence across processes, on real Redis: a write in
one "process" (its own Redis clients and services) is served by the others within a
pub/sub delivery, a copy never outlives its entry's freshness, and the authenticated
hot path (revocation, 429) behaves as before with the copies in use."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from btsguru.app import open_services
from btsguru.auth.keys import hash_key
from btsguru.clock import FakeClock, SystemClock
from btsguru.handlers.rest import SportsView
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.store.cache import RawCache, encode_entry
from btsguru.store.hot import HotCache, live_list_name
from btsguru.store.redis import open_redis
from tests.access_fixtures import make_tier, migrated_sqlite
from tests.conftest import make_test_config, purge_redis_prefix
from tests.realtime_helpers import migrate_file, servers
from tests.store_fixtures import NOW, live, make_game, open_store
from tests.waiting import wait_until

COHERENCE_BOUND_S = 1.0  # a pub/sub delivery on a local Redis takes well under a millisecond


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@contextlib.asynccontextmanager
async def hot_caches(config, n=2, clock=None) -> AsyncIterator[list[HotCache]]:
    stores = [open_redis(config) for _ in range(n)]
    caches = [HotCache(s, clock or SystemClock()) for s in stores]
    try:
        for cache in caches:
            cache.start()
        for cache in caches:
            await asyncio.wait_for(cache.listening.wait(), 5)
        yield caches
    finally:
        for cache in caches:
            await cache.stop()
        for s in stores:
            await s.close()


# -- the cache itself --

async def test_an_invalidation_reaches_every_process_and_only_there(test_config):
    async with hot_caches(test_config) as (a, b):
        for cache in (a, b):
            assert cache.put("x", b"one", cache.generation)
            assert cache.put("y", b"kept", cache.generation)
        await a.invalidate("x")
        assert a.get("x") is None  # the writer's own copy goes at once

        async def dropped_on_b() -> bool:
            return b.get("x") is None

        assert await wait_until(dropped_on_b, timeout_s=COHERENCE_BOUND_S, interval_s=0.002) \
            < COHERENCE_BOUND_S
        assert a.get("y") == b.get("y") == b"kept"


async def test_a_read_that_raced_an_invalidation_is_not_kept(test_config):
    async with hot_caches(test_config, n=1) as (cache,):
        generation = cache.generation  # read before the (slow) Redis read ...
        await cache.invalidate("x")  # ... while a writer changed the value
        assert not cache.put("x", b"old", generation)
        assert cache.get("x") is None
        assert cache.put("x", b"new", cache.generation)


async def test_nothing_is_kept_while_not_listening_and_entries_expire(test_config):
    stores = open_redis(test_config)
    clock = FakeClock()
    cache = HotCache(stores, clock, ttl_s=5.0)
    try:
        assert not cache.put("x", b"v", cache.generation)  # not subscribed: Redis only
        cache.start()
        await asyncio.wait_for(cache.listening.wait(), 5)
        assert cache.put("x", b"v", cache.generation, max_age_s=2.0)
        assert cache.put("y", b"v", cache.generation)
        clock.advance(2.0)
        assert cache.get("x") is None  # its own, shorter bound
        assert cache.get("y") == b"v"
        clock.advance(3.0)
        assert cache.get("y") is None  # the safety net
    finally:
        await cache.stop()
        await stores.close()


# -- cached upstream answers --

async def test_a_new_raw_answer_in_one_process_is_served_by_the_other(test_config):
    async with hot_caches(test_config) as (hot_a, hot_b):
        clock = SystemClock()
        a_stores, b_stores = open_redis(test_config), open_redis(test_config)
        a = RawCache(a_stores, test_config, clock, hot=hot_a)
        b = RawCache(b_stores, test_config, clock, hot=hot_b)
        try:
            seen = hot_b.generation
            await a.put("football", "leagues", {}, b'{"v": 1}', 3600)

            async def heard_on_b() -> bool:  # else B's copy could go when the news arrives
                return hot_b.generation > seen

            await wait_until(heard_on_b, timeout_s=COHERENCE_BOUND_S, interval_s=0.002)
            assert (await b.get("football", "leagues", {})).body == b'{"v": 1}'
            # B answers from its copy: a change behind the writers' back is not seen ...
            name = b.key_for("football", "leagues", {})
            await b_stores.cache.set(name, encode_entry(b'{"v": "behind"}', clock.time(), 3600))
            assert (await b.get("football", "leagues", {})).body == b'{"v": 1}'
            # ... but a write through the cache reaches it at once
            await a.put("football", "leagues", {}, b'{"v": 2}', 3600)

            async def new_on_b() -> bool:
                return (await b.get("football", "leagues", {})).body == b'{"v": 2}'

            await wait_until(new_on_b, timeout_s=COHERENCE_BOUND_S, interval_s=0.002)
        finally:
            await a_stores.close()
            await b_stores.close()


async def test_a_copy_never_outlives_the_entrys_freshness(test_config):
    clock = FakeClock(NOW)
    async with hot_caches(test_config, n=1, clock=clock) as (hot,):
        stores = open_redis(test_config)
        cache = RawCache(stores, test_config, clock, hot=hot)
        try:
            await cache.put("football", "status", {}, b'{"s": 1}', 3, fetched_at=NOW - 1)
            name = cache.key_for("football", "status", {})
            assert hot.get(name) is not None
            clock.advance(2.5)  # fresh until NOW + 2
            assert hot.get(name) is None
            entry = await cache.get("football", "status", {})  # from Redis: stale, as before
            assert entry is not None and not entry.is_fresh(clock.time())
            assert hot.get(name) is None  # and not copied: stale answers are the proxy's
        finally:
            await stores.close()


# -- the live list --

@dataclass
class LiveNode:
    store: object
    hot: HotCache
    view: SportsView


async def test_an_ingest_in_one_process_changes_the_live_list_in_the_other(test_config,
                                                                           runner):
    clock = SystemClock()
    nodes = []
    async with hot_caches(test_config) as hots:
        for hot in hots:
            store = open_store(test_config, runner, clock=clock)
            store.games._hot = hot  # as the composition root wires it
            view = SportsView(store.games, PollerStateReader(store.redis, clock), clock, hot)
            nodes.append(LiveNode(store, hot, view))
        a, b = nodes
        try:
            game = make_game(1, league=39)
            await a.store.games.ingest("football", [live(game, 0, 0, 10)])
            body, _etag = await b.view.live_rendered("football")
            assert [g["score"] for g in _homes(body)] == [0]
            assert b.hot.get(live_list_name("football")) is not None  # B keeps a copy
            await a.store.games.ingest("football", [live(game, 1, 0, 11)])

            async def goal_on_b() -> bool:
                body, _ = await b.view.live_rendered("football")
                return [g["score"] for g in _homes(body)] == [1]

            await wait_until(goal_on_b, timeout_s=COHERENCE_BOUND_S, interval_s=0.002)
            # the pollers' state (meta.stale) invalidates it too
            await b.view.live_rendered("football")
            assert b.hot.get(live_list_name("football")) is not None
            await PollerState(a.store.redis, clock).update("football", "live", {
                "interval_s": 15.0, "last_success": clock.time(), "failures": 3})

            async def failing_on_b() -> bool:
                body, _ = await b.view.live_rendered("football")
                return orjson.loads(body)["meta"]["stale"] is True

            await wait_until(failing_on_b, timeout_s=COHERENCE_BOUND_S, interval_s=0.002)
        finally:
            for node in nodes:
                await node.store.close()


def _homes(body: bytes) -> list[dict]:
    return [game["home"] for game in orjson.loads(body)["data"]]


# -- the whole hot path, two server processes --

async def fetch(url: str, key: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, headers={"X-API-Key": key}, raise_error=False)


async def test_two_servers_serve_a_write_revocation_and_429_within_bounds(tmp_path):
    config = make_test_config(tmp_path)
    migrate_file(config)
    path = "/v1/football/raw/leagues"
    try:
        async with open_services(config) as s:  # this process writes, as a poller would
            await s.users.create_user("fan@example.com", "password123", tier="pro")
            _info, key = await s.keys.create_key("fan@example.com")
            await make_tier(s.db, "tiny", burst=3, refill_per_s=0.01, daily_quota=None)
            await s.users.create_user("tiny@example.com", "password123", tier="tiny")
            _info, tiny = await s.keys.create_key("tiny@example.com")
            await s.cache.put("football", "leagues", {}, b'{"response": [1]}', 3600)
            with servers(config, 2) as started:
                urls = [f"http://127.0.0.1:{port}{path}" for port, _process in started]

                async def both_listening() -> bool:
                    [(_name, count)] = await s.redis.reverb.pubsub_numsub(s.hot.channel)
                    return int(count) >= 2

                await wait_until(both_listening, timeout_s=10.0)
                for url in urls:
                    response = await fetch(url, key)
                    assert (response.code, response.headers["X-Cache"]) == (200, "HIT")
                    assert orjson.loads(response.body) == {"response": [1]}
                    assert response.headers["Etag"].startswith('"')
                    assert response.headers["RateLimit-Remaining"]
                # a change behind the writers' back is not seen: the servers use copies ...
                name = s.cache.key_for("football", "leagues", {})
                await s.redis.cache.set(name, encode_entry(b'{"response": ["behind"]}',
                                                           time.time(), 3600))
                for url in urls:
                    assert orjson.loads((await fetch(url, key)).body) == {"response": [1]}
                # ... and a write through the cache reaches both at once
                await s.cache.put("football", "leagues", {}, b'{"response": [2]}', 3600)
                for url in urls:
                    async def new_there(url: str = url) -> bool:
                        return orjson.loads((await fetch(url, key)).body) == {"response": [2]}

                    await wait_until(new_there, timeout_s=COHERENCE_BOUND_S, interval_s=0.005)

                # a revoked key stops on every server within the contract's 5 s (at once)
                info = await s.keys.revoke(key[:12])
                assert info.revoked_at is not None
                await s.access.invalidate_key(hash_key(key))
                for url in urls:
                    async def refused_there(url: str = url) -> bool:
                        return (await fetch(url, key)).code == 401

                    assert await wait_until(refused_there, timeout_s=5.0) < COHERENCE_BOUND_S

                # a rate-limited user still gets 429 with the headers, whichever server
                codes = [(await fetch(url, tiny)).code for url in (*urls, *urls)]
                assert codes == [200, 200, 200, 429]
                refused = await fetch(urls[0], tiny)
                assert refused.code == 429
                assert orjson.loads(refused.body)["error"]["code"] == "rate_limited"
                assert int(refused.headers["Retry-After"]) >= 1
                assert refused.headers["RateLimit-Remaining"] == "0"
                assert refused.headers["RateLimit-Policy"] == '"default";q=3;w=300'
    finally:
        purge_redis_prefix(config)
