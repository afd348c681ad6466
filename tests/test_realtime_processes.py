"""Real-time delivery across server processes: real `btsguru serve` subprocesses on one Redis
and one database; the test publishes by ingesting into a store of its own (as a poller in
yet another process would)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from btsguru.app import open_services
from btsguru.db import connect_database
from btsguru.db.runner import DatabaseRunner
from btsguru.realtime.slots import StreamSlots
from btsguru.store.redis import Keys, open_redis
from tests.conftest import make_test_config, purge_redis_prefix
from tests.realtime_helpers import SseClient, WsClient, events, make_users, migrate_file, servers
from tests.store_fixtures import open_store
from tests.test_realtime import finished, match
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two server processes, their config and the API keys of a free and a pro user."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = make_test_config(tmp)
    migrate_file(config)

    async def users():
        async with open_services(config) as services:
            return await make_users(services)

    keys = asyncio.run(users())
    try:
        with servers(config, 2) as started:
            yield config, [port for port, _process in started], keys
    finally:
        purge_redis_prefix(config)


class Publisher:
    """A store in the test process: what it ingests reaches every server via Redis."""

    def __init__(self, config) -> None:
        self.runner = DatabaseRunner(connect_database(config.database_url))
        self.node = open_store(config, self.runner)

    async def play(self, games, sport: str = "football") -> int:
        return sum([(await self.node.games.ingest(sport, [g])).events for g in games])

    async def close(self) -> None:
        await self.node.close()
        self.runner.close()


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


def http_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def test_a_client_on_one_process_gets_what_is_published_anywhere(cluster):
    config, (a, b), keys = cluster
    publisher = Publisher(config)
    try:
        on_b = await WsClient.connect(ws_url(b), keys["pro"])
        await on_b.subscribe("sports.football.39")
        await on_b.recv()
        on_a = await SseClient.connect(http_url(a), keys["pro"], "sports.football")
        published = await publisher.play(match(3001))
        got_b = events(await on_b.recv_until(finished))
        got_a = await on_a.events_until(finished)
        for got in (got_b, got_a):
            assert [e["data"]["seq"] for e in got] == list(range(1, published + 1))
        on_b.close()
        await on_a.close()
    finally:
        await publisher.close()


async def test_resume_on_the_other_process_over_ws_and_sse(cluster):
    config, (a, b), keys = cluster
    publisher = Publisher(config)
    states = match(3002)
    try:
        ws = await WsClient.connect(ws_url(a), keys["pro"])
        await ws.subscribe("sports.football.39.3002")
        await ws.recv_until(lambda m: m.get("op") == "subscribed")
        sse = await SseClient.connect(http_url(a), keys["pro"], "sports.football.39.3002")
        await publisher.play(states[:3])
        ws_before = events(await ws.recv_until(lambda m: m.get("event") == "game.event"))
        sse_before = await sse.events_until(lambda e: e["event"] == "game.event")
        ws.close()
        await sse.close()
        await publisher.play(states[3:6])  # missed by both
        ws = await WsClient.connect(ws_url(b), keys["pro"])
        await ws.subscribe("sports.football.39.3002", since=ws_before[-1]["id"])
        assert (await ws.recv())["recovered"] is True
        sse = await SseClient.connect(http_url(b), keys["pro"], "sports.football.39.3002",
                                      last_event_id=sse_before[-1]["id"])
        await publisher.play(states[6:])
        ws_after = events(await ws.recv_until(finished))
        sse_after = await sse.events_until(finished)
        for before, after in ((ws_before, ws_after), (sse_before, sse_after)):
            seqs = [e["data"]["seq"] for e in before + after
                    if e["event"] != "game.snapshot"]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
            assert not [e for e in after if e["event"] == "game.snapshot"]
        ws.close()
        await sse.close()
    finally:
        await publisher.close()


async def test_connection_limits_hold_across_processes(cluster):
    _config, (a, b), keys = cluster
    free = keys["free"]  # 2 concurrent streams
    first = await WsClient.connect(ws_url(a), free)
    await first.send({"op": "ping"})
    assert await first.recv() == {"op": "pong"}
    second = await SseClient.connect(http_url(b), free, "sports.football")
    assert second.response.status == 200
    third = await WsClient.connect(ws_url(b), free)
    assert await third.closed() == 4008
    fourth = await SseClient.connect(http_url(a), free, "sports.football")
    assert fourth.response.status == 429
    await fourth.close()
    first.close()  # its slot is released on A; then B admits one more

    async def admitted() -> bool:
        client = await WsClient.connect(ws_url(b), free)
        await client.send({"op": "ping"})
        reply = await client.recv()
        client.close()
        return reply == {"op": "pong"}

    await wait_until(admitted, timeout_s=5, interval_s=0.1)
    await second.close()


async def test_a_dead_process_slots_are_reaped(tmp_path):
    config = make_test_config(tmp_path)
    stores = open_redis(config)
    keys = Keys(config.redis_cache_prefix)
    try:
        dying = StreamSlots(stores.reverb, keys, heartbeat_ttl_s=1, process_id="dying")
        alive = StreamSlots(stores.reverb, keys, heartbeat_ttl_s=1, process_id="alive")
        await dying.heartbeat()
        await alive.heartbeat()
        assert await dying.acquire(7, 2) == 1
        assert await alive.acquire(7, 2) == 2
        assert await alive.acquire(7, 2) is None
        await alive.release(7)
        assert await alive.acquire(7, 2) == 2
        # "dying" stops its heartbeat without releasing anything; within the TTL its
        # count is reaped and the user's slot is usable again
        deadline = time.monotonic() + 5
        while (total := await alive.acquire(7, 2)) is None:
            assert time.monotonic() < deadline, "the dead process's slot was not reaped"
            await alive.heartbeat()
            await asyncio.sleep(0.1)
        assert total == 2
        assert await stores.reverb.hkeys(keys.key("streams", "user", 7)) == [b"alive"]
        # a lapsed heartbeat re-asserts this process's counts
        await stores.reverb.delete(keys.key("streams", "user", 7),
                                   keys.key("streams", "proc", "alive"))
        await alive.heartbeat()
        assert await stores.reverb.hget(keys.key("streams", "user", 7), "alive") == b"2"
        await alive.close()
        assert await stores.reverb.exists(keys.key("streams", "user", 7)) == 0
    finally:
        await stores.close()
        purge_redis_prefix(config)


async def test_sigterm_closes_streams_1012_and_clients_resume_elsewhere(tmp_path):
    config = make_test_config(tmp_path, REDIS_CACHE_PREFIX=f"btgtest:{uuid.uuid4().hex[:12]}:")
    migrate_file(config)
    async with open_services(config) as services:
        keys = await make_users(services)
        free = await services.users.get_by_email("free@example.com")
        assert free is not None
    publisher = Publisher(config)
    slots = aioredis.Redis(host="127.0.0.1", port=6379, db=config.redis_reverb_db)
    slot_key = Keys(config.redis_cache_prefix).key("streams", "user", free.id)
    try:
        with servers(config, 2) as started:
            (a, process_a), (b, _process_b) = started
            # the free tier's two streams, both on A: the user is at its limit
            ws = await WsClient.connect(ws_url(a), keys["free"])
            await ws.subscribe("sports.football")
            await ws.recv()
            sse = await SseClient.connect(http_url(a), keys["free"], "sports.football")
            states = match(3005)
            await publisher.play(states[:3])
            got = events(await ws.recv_until(lambda m: m.get("event") == "game.event"))
            sse_got = await sse.events_until(lambda e: e["event"] == "game.event")
            process_a.send_signal(signal.SIGTERM)
            assert await ws.closed(timeout_s=15) == 1012
            # A gave the user's slots back before it told the clients to go: they find
            # them free on B at once, not refused as over the tier's limit
            assert await slots.hgetall(slot_key) == {}
            assert await sse.next_event(timeout_s=15) is None
            await sse.close()
            ws = await WsClient.connect(ws_url(b), keys["free"])
            await ws.subscribe("sports.football", since=got[-1]["id"])
            sse = await SseClient.connect(http_url(b), keys["free"], "sports.football",
                                          last_event_id=sse_got[-1]["id"])
            assert await asyncio.to_thread(process_a.wait, 30) == 0
            await publisher.play(states[3:])
            got += events(await ws.recv_until(finished))
            sse_got += await sse.events_until(finished)
            for seen in (got, sse_got):
                seqs = [e["data"]["seq"] for e in seen]
                assert seqs == list(range(1, len(seqs) + 1))
            ws.close()
            await sse.close()
    finally:
        await slots.aclose()
        await publisher.close()
        purge_redis_prefix(config)


def test_nginx_example_proxies_websocket_and_sse():
    text = (Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf").read_text()
    for needle in ("proxy_http_version 1.1", "Upgrade $http_upgrade",
                   "location /v1/stream", "proxy_buffering off", "location /v1/ws",
                   "proxy_read_timeout", "upstream btsguru"):
        assert needle in text, needle
    assert text.count("server 10.") >= 2  # several hosts
