"""A Redis Cluster failover under the bus (issue 19, item 2): the master of the slot of a
subscribed channel is killed (SIGKILL) and its replica promoted; the same bus, not
restarted, follows its sharded subscription to the new master, tells its listeners that
events may have been missed (so the hub replays the history), and delivers again. The
process counts the failover once (`btsguru_redis_failovers_total`), names the promoted
replica among the masters (`RedisStatus`, what `/readyz` and the ops page show) and its
alerter raises `redis_failover` with the old and new addresses (item 7).

The publisher stands for another process: a cluster client of its own, outside the
process under test (`open_redis` here would count the failover a second time).

The case has a cluster of its own (`tests.redis_cluster`): a killed master leaves its
slots without a replica for another failover."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError

from btsguru.alerts import Alerter
from btsguru.clock import SystemClock
from btsguru.metrics import REGISTRY
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerStateReader
from btsguru.store.bus import BusEvent, RedisBus
from btsguru.store.cluster import ClusterClient
from btsguru.store.pusher import PusherState
from btsguru.store.redis import RedisStores, open_redis
from btsguru.upstream.quota import QuotaGovernor
from tests.conftest import make_test_config
from tests.redis_cluster import ClusterNodes, redis_cluster
from tests.waiting import wait_until, wait_until_blocking

# The bound for events to flow again after a promotion.
RECOVERY_LIMIT_S = 15.0
log = logging.getLogger(__name__)


@pytest.fixture
def cluster() -> Iterator[ClusterNodes]:
    with redis_cluster() as nodes:
        wait_until_blocking(nodes.replicas_in_sync, 15, what="every replica in sync")
        yield nodes


def failovers_counted() -> float:
    return REGISTRY.get_sample_value("btsguru_redis_failovers_total") or 0.0


def alerter_over(redis: RedisStores, config) -> Alerter:
    clock = SystemClock()
    return Alerter(config.sports, clock, redis, quota=QuotaGovernor(redis, config, clock),
                   tasks=PollerStateReader(redis, clock), leases=Leases(redis, clock))


async def test_the_bus_resubscribes_after_the_channels_master_is_killed(tmp_path, cluster):
    config = make_test_config(tmp_path, REDIS_URL="",
                              REDIS_CLUSTER_NODES=",".join(cluster.addresses))
    subscriber = open_redis(config)
    publisher = ClusterClient(host="127.0.0.1", port=cluster.ports[0])
    bus = RedisBus(subscriber.reverb, subscriber.keys)
    sender = RedisBus(publisher, subscriber.keys)
    alerter = alerter_over(subscriber, config)
    got: list[str] = []
    gaps: list[float] = []
    bus.on_reconnect(lambda: gaps.append(time.monotonic()))
    try:
        await bus.subscribe("sports.football", lambda ch, ev: got.append(ev.id))
        await sender.publish(BusEvent.create("1-0", "game.score", "sports.football.39.1", {}))
        await wait_until(lambda: got == ["1-0"], what=lambda: f"the first event, got {got}")
        assert [e for e in await alerter.check_once() if e.alert.name == "redis_failover"] == []
        status = await subscriber.status()
        assert status.failovers == 0 and len(status.masters) == 3, status
        counted = failovers_counted()

        owner = subscriber.reverb.get_node_from_key(bus.redis_channel("sports.football"))
        replicas = {p for p, role in cluster.roles().items() if role == "slave"}
        killed_at = time.monotonic()
        os.killpg(cluster.processes[owner.port].pid, signal.SIGKILL)

        def promoted() -> bool:
            return any(cluster.info(p).get("cluster_state") == "ok"
                       and _role(cluster, p) == "master" for p in replicas)

        wait_until_blocking(promoted, RECOVERY_LIMIT_S, what="a replica promoted")
        promoted_s = time.monotonic() - killed_at

        sent: list[str] = []

        async def delivered() -> bool:
            # publish until one arrives: what is published before the subscription moved
            # is lost (pub/sub), which the reconnect listeners are told of
            event_id = f"{2 + len(sent)}-0"
            try:
                await sender.publish(BusEvent.create(event_id, "game.score",
                                                     "sports.football.39.1", {}))
                sent.append(event_id)
            except RedisError as exc:
                log.info("publish during the failover: %s", exc)
            return any(i in got for i in sent)

        await wait_until(delivered, timeout_s=RECOVERY_LIMIT_S, interval_s=0.1,
                         what=lambda: f"an event on the new master; sent {sent}, got {got}")
        flowing_s = time.monotonic() - killed_at
        await wait_until(lambda: gaps, what="the reconnect listeners told of the gap")
        new_owner = subscriber.reverb.get_node_from_key(bus.redis_channel("sports.football"))
        assert new_owner.port != owner.port
        assert got[0] == "1-0" and set(got[1:]) <= set(sent)
        assert got[1:] == sorted(got[1:], key=lambda i: int(i.split("-")[0]))  # in order
        log.info("cluster failover: promoted after %.1f s, events again after %.1f s",
                 promoted_s, flowing_s)
        assert flowing_s < RECOVERY_LIMIT_S + promoted_s

        # the process saw one failover: counted, shown and alerted with both addresses
        old, new = f"127.0.0.1:{owner.port}", f"127.0.0.1:{new_owner.port}"
        assert new_owner.port in replicas
        assert failovers_counted() == counted + 1
        status = await subscriber.status()
        assert new in status.masters and old not in status.masters, status
        assert status.to_json()["failovers"] == 1
        raised: list = []

        async def alerted() -> bool:
            try:
                raised.extend(e for e in await alerter.check_once()
                              if e.alert.name == "redis_failover")
            except RedisError as exc:  # the alerter's own keys may sit on the killed master
                log.info("alerter check during the failover: %s", exc)
            return bool(raised)

        await wait_until(alerted, timeout_s=RECOVERY_LIMIT_S, interval_s=0.1,
                         what="the redis_failover alert")
        assert [(e.status, e.alert.id, e.alert.severity) for e in raised] == \
            [("firing", f"redis_failover:{new}", "warning")]
        assert f"moved from {old} to {new}" in raised[0].alert.message
        assert failovers_counted() == counted + 1  # the checks counted nothing more
    finally:
        await alerter.stop()
        await bus.close()
        await sender.close()
        await subscriber.close()
        await publisher.aclose()


async def test_pusher_app_channels_resubscribe_after_their_master_is_killed(tmp_path,
                                                                            cluster):
    """A Pusher app channel's SSUBSCRIBE follows its slot to the promoted replica: what
    is published (SPUBLISH, from another client) after the move arrives again."""
    config = make_test_config(tmp_path, REDIS_URL="",
                              REDIS_CLUSTER_NODES=",".join(cluster.addresses))
    subscriber = open_redis(config)
    publisher = ClusterClient(host="127.0.0.1", port=cluster.ports[0])
    state = PusherState(subscriber.reverb, subscriber.keys)
    sender = PusherState(publisher, subscriber.keys)
    got: list[int] = []
    try:
        await state.add_listener("orders", lambda m: got.append(int(m["data"])))
        await sender.publish("orders", {"event": "e", "channel": "orders", "data": "0"})
        await wait_until(lambda: got == [0], what=lambda: f"the first message, got {got}")
        channel = state.redis_channel("orders")
        owner = subscriber.reverb.get_node_from_key(channel)
        replicas = {p for p, role in cluster.roles().items() if role == "slave"}
        os.killpg(cluster.processes[owner.port].pid, signal.SIGKILL)
        wait_until_blocking(lambda: any(cluster.info(p).get("cluster_state") == "ok"
                                        and _role(cluster, p) == "master" for p in replicas),
                            RECOVERY_LIMIT_S, what="a replica promoted")
        sent: list[int] = []

        async def delivered() -> bool:
            n = 1 + len(sent)
            try:
                await sender.publish("orders", {"event": "e", "channel": "orders",
                                                "data": str(n)})
                sent.append(n)
            except RedisError as exc:
                log.info("publish during the failover: %s", exc)
            return any(n in got for n in sent)

        await wait_until(delivered, timeout_s=RECOVERY_LIMIT_S, interval_s=0.1,
                         what=lambda: f"a message on the new master; sent {sent}, got {got}")
        new_owner = subscriber.reverb.get_node_from_key(channel)
        assert new_owner.port != owner.port and new_owner.port in replicas
        with cluster.client(new_owner.port) as node:
            assert channel.encode() in node.execute_command("PUBSUB", "SHARDCHANNELS")
        assert got[0] == 0 and set(got[1:]) <= set(sent)
    finally:
        await state.close()
        await subscriber.close()
        await publisher.aclose()


def _role(cluster: ClusterNodes, port: int) -> str:
    with cluster.client(port) as client:
        role = client.execute_command("ROLE")[0]
    return role.decode() if isinstance(role, bytes) else str(role)
