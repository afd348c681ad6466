"""Redis Cluster (issue 19, item 2): the configuration, the app's services on a real
3-master, 3-replica cluster (`tests.redis_cluster`, one per module), two processes'
services sharing it through sharded pub/sub, and bad input — a plain Redis, unreachable
nodes, a cluster in `fail` state — as one line at start-up and a JSON 503 while running.
A failover under the bus is `test_cluster_failover.py`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from btsguru.sports.base import Phase
from btsguru.store.bus import BusEvent, RedisBus
from btsguru.store.redis import open_redis
from tests.cli_helpers import free_port, run_cli
from tests.conftest import make_test_config
from tests.pusher_helpers import PusherClient, api
from tests.realtime_helpers import WsClient, events, relay
from tests.redis_cluster import REDIS_SERVER, ClusterNodes, redis_cluster
from tests.store_fixtures import make_game
from tests.test_cli import assert_one_line_error
from tests.topology_checks import events_on_every_transport, fetch_json
from tests.waiting import wait_until, wait_until_blocking

STARTUP_LIMIT_S = 30.0  # the contract's bound for a command to report an unreachable Redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterNodes]:
    with redis_cluster() as nodes:
        yield nodes


def cluster_env(nodes: ClusterNodes) -> dict[str, str]:
    return {"REDIS_URL": "", "REDIS_CLUSTER_NODES": ",".join(nodes.addresses[:2])}


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"RAPIDAPI_KEY": "k", "SECRET_KEY": "s" * 32, "REDIS_URL": "",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **extra}


@contextlib.contextmanager
def slotless_node() -> Iterator[str]:
    """One cluster-enabled `redis-server` that was never given slots: a cluster in
    `fail` state (cluster_state:fail, nothing served)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="btsguru-fail-") as tmp:
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(Path(tmp) / "nodes.conf"), "--dir", tmp,
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            nodes = ClusterNodes(ports=[port], directory=Path(tmp))
            wait_until_blocking(lambda: nodes.info(port).get("cluster_state") == "fail", 30,
                                what="a cluster-enabled node without slots")
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- configuration --

def test_cluster_nodes_make_one_cluster_client(tmp_path):
    config = make_test_config(tmp_path, REDIS_URL="",
                              REDIS_CLUSTER_NODES="10.0.0.1:7000, 10.0.0.2:7001",
                              REDIS_PASSWORD="pw")
    stores = open_redis(config)
    assert stores.topology == "cluster"
    assert stores.description == "cluster via 10.0.0.1:7000,10.0.0.2:7001"
    # one client for the four families (no logical databases on Cluster)
    assert stores.data is stores.cache is stores.queue is stores.reverb
    assert (stores.data.read_from_replicas, stores.data.load_balancing_strategy) == \
        (False, None)  # masters only
    assert [(n.host, n.port) for n in stores.data.startup_nodes] == \
        [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert stores.data.connection_kwargs["password"] == "pw"
    assert stores.data.connection_kwargs["socket_timeout"] == 10.0


def test_bus_channels_carry_the_sport_tag_on_cluster(tmp_path, cluster):
    stores = open_redis(make_test_config(tmp_path, **cluster_env(cluster)))
    bus = RedisBus(stores.reverb, stores.keys)
    prefix = stores.keys.prefix
    game = "sports.football.39.1001"
    assert bus.redis_channel(game) == prefix + "bus:games:{football}:39:1001"
    # an event goes to its channel and each parent's, all in the sport's slot
    command, *channels = bus.redis_targets(game).split("\n")
    assert command == "SPUBLISH"
    assert channels == [prefix + "bus:games:{football}:39:1001",
                        prefix + "bus:games:{football}:39", prefix + "bus:games:{football}"]
    assert {key_slot(c.encode()) for c in channels} == {key_slot(b"football")}


# -- bad input at start-up: one line, non-zero, within the bound --

@pytest.mark.parametrize("case", ["not-a-cluster", "unreachable", "fail-state"])
def test_bad_cluster_nodes_are_one_line_at_start_up(tmp_path, case):
    with contextlib.ExitStack() as stack:
        if case == "not-a-cluster":
            nodes = "127.0.0.1:6379"  # the plain test Redis
            expected = (f"the nodes at {nodes} are not a Redis Cluster (REDIS_CLUSTER_NODES): "
                        f"cluster mode is not enabled on {nodes}")
        elif case == "unreachable":
            nodes = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
            expected = (f"no node answers at {nodes} (REDIS_CLUSTER_NODES): " + "; ".join(
                f"{a} connection refused" for a in nodes.split(",")))
        else:
            nodes = stack.enter_context(slotless_node())
            expected = f"the cluster is in fail state: {nodes} says cluster_state:fail"
        started = time.monotonic()
        result = run_cli("serve", "--port", "0",
                         env=serve_env(tmp_path, REDIS_CLUSTER_NODES=nodes),
                         timeout_s=STARTUP_LIMIT_S + 10)
        took_s = time.monotonic() - started
    line = assert_one_line_error(result, 1)
    assert line == f"btsguru: error: Redis cluster via {nodes}: {expected}"
    assert took_s < STARTUP_LIMIT_S


async def test_requests_get_json_503_when_no_node_answers(tmp_path):
    nodes = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    config = make_test_config(tmp_path, REDIS_URL="", REDIS_CLUSTER_NODES=nodes)
    async with relay(tmp_path, config) as r:
        started = time.monotonic()
        status, body = await fetch_json(f"{r.http_url}/v1/football/games/1001",
                                        **{"X-API-Key": r.keys["pro"]})
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        status, ready = await fetch_json(f"{r.http_url}/readyz")
        assert time.monotonic() - started < 10  # refused: no waiting
        assert status == 503 and ready["failed"] == ["redis"], ready
        assert ready["redis"] == {"topology": "cluster",
                                  "description": f"cluster via {nodes}", "masters": [],
                                  "failovers": 0}
        assert ready["checks"]["redis"].startswith(f"Redis cluster via {nodes}: no node "
                                                   "answers"), ready


# -- the services on Cluster --

def keys_on(nodes: ClusterNodes, prefix: str) -> list[bytes]:
    found: list[bytes] = []
    for port in nodes.ports:
        with nodes.client(port) as c:
            found += c.scan_iter(match=prefix + "*", count=1000)
    return found


async def test_rest_and_streams_work_on_the_cluster(tmp_path, cluster):
    config = make_test_config(tmp_path, **cluster_env(cluster))
    async with relay(tmp_path, config) as r:
        status, ready = await fetch_json(f"{r.http_url}/readyz")
        assert status == 200, ready
        masters = sorted(f"127.0.0.1:{p}" for p, role in cluster.roles().items()
                         if role == "master")
        assert ready["redis"] == {"topology": "cluster",
                                  "description": f"cluster via {config_nodes(config)}",
                                  "masters": masters, "failovers": 0}
        got = await events_on_every_transport(r, goals=2)
        assert {e["channel"] for e in got} == {"sports.football"}
        # the game, its seq and history are on the cluster, in the sport's slot
        prefix = config.redis_cache_prefix
        stored = {k.decode() for k in keys_on(cluster, prefix)}
        assert {prefix + "game:{football}:1001", prefix + "seq:{football}:1001",
                prefix + "history:{football}"} <= stored
        ops = await r.services.redis.status()
        assert (ops.topology, ops.masters) == ("cluster", tuple(masters))


def config_nodes(config) -> str:
    return ",".join(f"{h}:{p}" for h, p in config.redis_cluster_nodes)


async def test_an_event_ingested_in_one_process_reaches_the_other(tmp_path, cluster):
    """Two processes' services on one cluster (each its own clients, bus and hub): what
    one ingests reaches a subscriber of the other through sharded pub/sub, in order; the
    Pusher HTTP API's events too (published by `EventHistory.append`'s script)."""
    config = make_test_config(tmp_path, **cluster_env(cluster))
    (tmp_path / "b").mkdir()
    other = make_test_config(tmp_path / "b", **{**cluster_env(cluster),
                                                "REDIS_CACHE_PREFIX": config.redis_cache_prefix})
    async with relay(tmp_path, config) as a, relay(tmp_path / "b", other) as b:
        ws = await WsClient.connect(b.ws_url, b.keys["pro"])
        await ws.subscribe("sports.basketball.12")
        assert (await ws.recv())["op"] == "subscribed"
        try:
            game = make_game(77, sport="basketball", league=12)
            await a.services.games.ingest("basketball", [game])
            started = make_game(77, sport="basketball", league=12, phase=Phase.LIVE,
                                code="Q1", home=2, away=0, clock="3", period=1)
            published = (await a.services.games.ingest("basketball", [started])).events
            assert published >= 1
            got = events(await ws.recv_until(lambda e: e.get("data", {}).get("seq")
                                             == published))
            assert [e["data"]["seq"] for e in got] == list(range(1, published + 1))
            assert {e["channel"] for e in got} == {"sports.basketball.12"}
            note = await a.services.history.append("basketball", "app.note",
                                                   "sports.basketball.12.77", {"n": 1})
            got = events(await ws.recv_until(lambda e: e.get("event") == "app.note"))
            assert [(e["id"], e["data"]) for e in got] == [(note.id, {"n": 1})]
        finally:
            ws.close()


async def test_a_bus_subscribes_only_to_the_channels_its_clients_use(tmp_path, cluster):
    stores = open_redis(make_test_config(tmp_path, **cluster_env(cluster)))
    bus = RedisBus(stores.reverb, stores.keys)
    got: list[tuple[str, str]] = []
    try:
        await bus.subscribe("sports.football.39", lambda ch, ev: got.append((ch, ev.id)))
        owner = stores.reverb.get_node_from_key(bus.redis_channel("sports.football"))
        with cluster.client(owner.port) as c:
            assert sorted(ch.decode() for ch in c.execute_command("PUBSUB", "SHARDCHANNELS")
                          if ch.decode().startswith(stores.keys.prefix)) == \
                [bus.redis_channel("sports.football.39")]
        await bus.publish(BusEvent.create("1-0", "game.score", "sports.football.39.1001", {}))
        await bus.publish(BusEvent.create("2-0", "game.score", "sports.football.40.1002", {}))
        await bus.publish(BusEvent.create("3-0", "game.score", "sports.football.39.1003", {}))
        await wait_until(lambda: len(got) >= 2, what=lambda: f"two events, got {got}")
        assert got == [("sports.football.39", "1-0"), ("sports.football.39", "3-0")]
    finally:
        await bus.close()
        await stores.close()


def shard_channels(nodes: ClusterNodes, prefix: str) -> list[tuple[int, str]]:
    """(node port, channel) of every sharded subscription under `prefix` in the cluster."""
    found = []
    for port in nodes.ports:
        with nodes.client(port) as c:
            found += [(port, ch.decode()) for ch in c.execute_command("PUBSUB", "SHARDCHANNELS")
                      if ch.decode().startswith(prefix)]
    return found


async def test_pusher_app_channels_are_sharded_and_subscribed_on_demand(tmp_path, cluster):
    """A Pusher app channel on Cluster: the process of a socket that joins it SSUBSCRIBEs
    to that one channel (in its own slot), an event published through the other
    process's HTTP API (SPUBLISH) reaches the socket, and the subscription goes when the
    last local socket leaves. No classic pattern subscription is left anywhere."""
    config = make_test_config(tmp_path, **cluster_env(cluster))
    (tmp_path / "b").mkdir()
    other = make_test_config(tmp_path / "b", **{**cluster_env(cluster),
                                                "REDIS_CACHE_PREFIX": config.redis_cache_prefix})
    prefix = config.redis_cache_prefix + "bus:app:"
    async with relay(tmp_path, config) as a, relay(tmp_path / "b", other) as b:
        redis_channel = b.services.pusher.redis_channel("orders")
        assert redis_channel == prefix + "{orders}"
        owner = b.services.redis.reverb.get_node_from_key(redis_channel)
        assert shard_channels(cluster, prefix) == []
        client = await PusherClient.connect(b)
        second = await PusherClient.connect(b)
        try:
            for c in (client, second):
                await c.subscribe("orders")
                await c.expect("pusher_internal:subscription_succeeded", "orders")
            # one subscription per process and channel, on the channel's master only
            assert shard_channels(cluster, prefix) == [(owner.port, redis_channel)]
            for port in cluster.ports:
                with cluster.client(port) as node:
                    assert node.execute_command("PUBSUB", "NUMPAT") == 0
            status, body = await api(a, "POST", f"/apps/{a.config.reverb_app_id}/events", {
                "name": "order.shipped", "channels": ["orders"], "data": '{"id":7}'})
            assert (status, body) == (200, {})
            for c in (client, second):
                assert await c.expect("order.shipped") == {
                    "event": "order.shipped", "channel": "orders", "data": '{"id":7}'}
            second.close()
            await wait_until(lambda: "orders" in b.services.pusher.local_counts
                             and b.services.pusher.local_counts["orders"] == 1,
                             what="the second socket's leave")
            # another socket of this process still listens: still subscribed
            assert shard_channels(cluster, prefix) == [(owner.port, redis_channel)]
        finally:
            client.close()
            second.close()
        await wait_until(lambda: shard_channels(cluster, prefix) == [],
                         what=lambda: f"no app channel, got {shard_channels(cluster, prefix)}")
