"""The Pusher endpoint across real `btsguru serve` processes on one Redis: presence
members seen cluster-wide (and reaped when a process is killed), and a stock pusher-js
client that drops, reconnects to the other process (through a TCP proxy standing in for
a load balancer) and gets the game events it missed, also after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from btsguru.app import open_services
from btsguru.store import pusher as pusher_store
from btsguru.store.redis import Keys
from tests import test_pusher_js
from tests.conftest import make_test_config, purge_redis_prefix
from tests.pusher_helpers import PusherClient, realtime_auth
from tests.pusher_node import NodeClient
from tests.realtime_helpers import TIMEOUT_S, make_users, migrate_file, servers
from tests.test_realtime import match
from tests.test_realtime_processes import Publisher

pusher_js = test_pusher_js.pusher_js  # the same fixture: pusher-js from npm under Node
PRESENCE = "presence-sports.football"
PRIVATE = "private-sports.football"
# A killed process's members go once its heartbeat key lapses and a live process's
# next heartbeat round notices: the bound of `store.pusher`.
REAP_BOUND_S = pusher_store.HEARTBEAT_TTL_S + pusher_store.HEARTBEAT_S + 5


def node(port: int, config: Any) -> Any:
    """What the client helpers need of a server: its port, config and HTTP URL."""
    return SimpleNamespace(port=port, config=config, http_url=f"http://127.0.0.1:{port}")


@pytest.fixture
def cluster_config(tmp_path, monkeypatch):
    """A config whose users exist, with the servers sharing its app secret."""
    config = make_test_config(tmp_path)
    monkeypatch.setenv("REVERB_APP_SECRET", config.reverb_app_secret.reveal())
    migrate_file(config)

    async def users() -> dict[str, str]:
        async with open_services(config) as services:
            keys = await make_users(services)
            await services.users.create_user("second@example.com", "password123", tier="pro")
            _info, keys["second"] = await services.keys.create_key("second@example.com")
            return keys

    keys = asyncio.run(users())
    try:
        yield config, keys
    finally:
        purge_redis_prefix(config)


async def join_presence(server: Any, api_key: str) -> PusherClient:
    client = await PusherClient.connect(server)
    status, body = await realtime_auth(server, api_key, client.socket_id, PRESENCE,
                                       path="/broadcasting/auth")
    assert status == 200, body
    await client.subscribe(PRESENCE, body["auth"], body["channel_data"])
    await client.expect("pusher_internal:subscription_succeeded", PRESENCE)
    return client


async def test_presence_across_processes_and_a_killed_process_is_reaped(cluster_config,
                                                                       pusher_js):
    config, keys = cluster_config
    with servers(config, 2) as started:
        (a, _process_a), (b, process_b) = started
        watcher = await join_presence(node(a, config), keys["pro"])
        me = json.loads(watcher.received[-1]["data"])["presence"]
        assert me["count"] == 1
        # pusher-js joins on B: A's client hears of it; its roster holds both
        second = await NodeClient.start(pusher_js, node(b, config), [PRESENCE], keys["second"])
        try:
            joined = await second.wait(lambda m: m["type"] == "subscribed")
            assert len(joined["members"]) == 2 and me["ids"][0] in joined["members"]
            added = await watcher.expect("pusher_internal:member_added", PRESENCE)
            other = json.loads(added["data"])
            assert other["user_id"] == joined["me"]["id"] != me["ids"][0]
            assert other["user_info"] == {"tier": "pro"}
            # a second socket of the same user on B: no second member_added; its leaving
            # is not the user's last: no member_removed
            extra = await join_presence(node(b, config), keys["second"])
            extra.close()
            await second.stop()  # the user's last socket: member_removed on A
            removed = await watcher.expect("pusher_internal:member_removed", PRESENCE)
            assert json.loads(removed["data"]) == {"user_id": other["user_id"]}
            assert [m["event"] for m in watcher.received].count(
                "pusher_internal:member_added") == 1
        finally:
            await second.stop()
        # the user comes back on B, and B dies without a word
        back = await join_presence(node(b, config), keys["second"])
        again = await watcher.expect("pusher_internal:member_added", PRESENCE)
        assert json.loads(again["data"])["user_id"] == other["user_id"]
        process_b.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process_b.wait, 10)
        killed_at = time.monotonic()
        reaped = await watcher.recv_until(
            lambda m: m.get("event") == "pusher_internal:member_removed", REAP_BOUND_S)
        assert json.loads(reaped[-1]["data"]) == {"user_id": other["user_id"]}
        assert time.monotonic() - killed_at <= REAP_BOUND_S
        # and the roster a newcomer on A gets no longer lists the dead process's member
        late = await join_presence(node(a, config), keys["pro"])
        roster = json.loads(late.received[-1]["data"])["presence"]
        assert roster["ids"] == [me["ids"][0]]
        back.close()
        late.close()
        watcher.close()


class Proxy:
    """A TCP proxy standing in for a load balancer: `target` is the server port new
    connections go to (None: they wait, as behind a balancer with no healthy backend);
    `cut()` drops every connection through it."""

    def __init__(self) -> None:
        self._target: int | None = None
        self._has_target = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def target(self) -> int | None:
        return self._target

    @target.setter
    def target(self, port: int | None) -> None:
        self._target = port
        if port is None:
            self._has_target.clear()
        else:
            self._has_target.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._has_target.wait(), 3 * TIMEOUT_S)
            if self._target is not None:
                upstream = await asyncio.open_connection("127.0.0.1", self._target)
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_pusher_js_resumes_on_the_other_process_after_a_drop_and_a_crash(
        cluster_config, pusher_js):
    config, keys = cluster_config
    states = match(3007)
    publisher = Publisher(config)
    store = aioredis.Redis(host="127.0.0.1", port=6379, db=config.redis_reverb_db)
    prefix = Keys(config.redis_cache_prefix)
    proxy = Proxy()
    await proxy.start()
    client = None
    try:
        with servers(config, 2) as started:
            (a, _process_a), (b, process_b) = started
            proxy.target = a
            client = await NodeClient.start(pusher_js, node(proxy.port, config),
                                            [PRIVATE, PRESENCE], keys["pro"])
            for name in (PRIVATE, PRESENCE):
                got = await client.wait(lambda m, n=name: m.get("channel") == n and
                                        m["type"] in ("subscribed", "subscription_error"))
                assert got["type"] == "subscribed", got
            user_id = next(m for m in client.lines if m.get("me"))["me"]["id"]

            def seqs(name: str) -> list[int]:
                return [m["data"]["seq"] for m in client.lines if m["type"] == "event" and
                        m["channel"] == name and m["event"] != "game.snapshot"]

            async def until_seq(seq: int) -> None:
                for name in (PRIVATE, PRESENCE):
                    await client.wait(lambda m, n=name: m["type"] == "event" and
                                      m["channel"] == n and m["data"].get("seq") == seq,
                                      timeout_s=3 * TIMEOUT_S)

            async def dropped(mark: int) -> None:
                """Until pusher-js reports it lost the connection, after line `mark`."""
                await client.wait(lambda m: m["type"] == "state" and
                                  m["state"] != "connected" and
                                  any(line is m for line in client.lines[mark:]))

            async def saved(name: str) -> str | None:
                raw = await store.get(prefix.key("pusher", "pos", user_id, name))
                return None if raw is None else raw.decode()

            async def saved_changes(from_value: str | None) -> str:
                deadline = time.monotonic() + TIMEOUT_S
                while (value := await saved(PRIVATE)) in (None, from_value):
                    assert time.monotonic() < deadline, "the position was not saved"
                    await asyncio.sleep(0.05)
                assert value is not None
                return value

            published = await publisher.play(states[:3])  # started, score, event: 1-3
            await until_seq(published)
            on_a = await saved_changes(None)
            # a drop while A lives: the balancer refuses for a while, then sends to B
            proxy.target = None
            mark = len(client.lines)
            proxy.cut()
            await dropped(mark)
            published += await publisher.play(states[3:5])  # half time: 4, missed
            proxy.target = b
            await until_seq(published)
            # a crash of B: only the batched position B saved as it delivered survives
            await saved_changes(on_a)
            proxy.target = None
            mark = len(client.lines)
            process_b.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process_b.wait, 10)
            await dropped(mark)
            published += await publisher.play(states[5:7])  # second half, goal: 5-7, missed
            proxy.target = a
            await until_seq(published)
            published += await publisher.play(states[7:])  # full time: 8, live
            await until_seq(published)
            assert published == 8
            for name in (PRIVATE, PRESENCE):
                assert seqs(name) == list(range(1, published + 1)), (name, seqs(name))
                assert not [m for m in client.lines if m.get("event") == "game.snapshot"]
    finally:
        if client is not None:
            await client.stop()
        await proxy.close()
        await store.aclose()
        await publisher.close()


async def test_a_drained_process_sends_pusher_js_to_another_at_once_with_no_gap(
        cluster_config, pusher_js):
    """SIGTERM (a deploy): the Pusher sockets are closed with 4200, which pusher-js takes
    as "reconnect now"; through the balancer it lands on the other process and its
    private and presence channels resume from where they were, nothing missed."""
    config, keys = cluster_config
    states = match(3011)
    publisher = Publisher(config)
    proxy = Proxy()
    await proxy.start()
    client = None
    try:
        with servers(config, 2) as started:
            (a, process_a), (b, _process_b) = started
            proxy.target = a
            client = await NodeClient.start(pusher_js, node(proxy.port, config),
                                            [PRIVATE, PRESENCE], keys["pro"])
            witness = await PusherClient.connect(node(a, config))  # sees the close code
            for name in (PRIVATE, PRESENCE):
                await client.wait(lambda m, n=name: m.get("channel") == n
                                  and m["type"] == "subscribed")

            async def until_seq(seq: int) -> None:
                for name in (PRIVATE, PRESENCE):
                    await client.wait(lambda m, n=name: m["type"] == "event" and
                                      m["channel"] == n and m["data"].get("seq") == seq,
                                      timeout_s=3 * TIMEOUT_S)

            published = await publisher.play(states[:3])
            await until_seq(published)
            proxy.target = b  # the balancer's next connections go to B
            mark = len(client.lines)
            process_a.send_signal(signal.SIGTERM)
            assert await witness.closed() == 4200  # Pusher's "reconnect immediately"
            dropped = await client.wait(lambda m: m["type"] == "state" and m["state"]
                                        != "connected" and any(
                                            line is m for line in client.lines[mark:]))
            back = await client.wait(lambda m: m["type"] == "connected" and any(
                line is m for line in client.lines[client.lines.index(dropped):]))
            reconnect_lines = client.lines[client.lines.index(dropped):
                                           client.lines.index(back)]
            # straight back, no "unavailable" wait
            assert "unavailable" not in [m.get("state") for m in reconnect_lines]
            published += await publisher.play(states[3:6])
            await until_seq(published)
            for name in (PRIVATE, PRESENCE):
                seqs = [m["data"]["seq"] for m in client.lines if m["type"] == "event"
                        and m["channel"] == name and m["event"] != "game.snapshot"]
                assert seqs == list(range(1, published + 1)), (name, seqs)
            assert not [m for m in client.lines if m.get("event") == "game.snapshot"]
    finally:
        if client is not None:
            await client.stop()
        await proxy.close()
        await publisher.close()
