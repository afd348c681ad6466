"""A Redis Cluster failover under the bus (issue 19, item 2): the master of the slot of a
subscribed channel is killed (SIGKILL) and its replica promoted; the same bus, not
restarted, follows its sharded subscription to the new master, tells its listeners that
events may have been missed (so the hub replays the history), and delivers again.

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

from btsguru.store.bus import BusEvent, RedisBus
from btsguru.store.redis import open_redis
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


async def test_the_bus_resubscribes_after_the_channels_master_is_killed(tmp_path, cluster):
    config = make_test_config(tmp_path, REDIS_URL="",
                              REDIS_CLUSTER_NODES=",".join(cluster.addresses))
    subscriber = open_redis(config)
    publisher = open_redis(config)
    bus = RedisBus(subscriber.reverb, subscriber.keys)
    sender = RedisBus(publisher.reverb, publisher.keys)
    got: list[str] = []
    gaps: list[float] = []
    bus.on_reconnect(lambda: gaps.append(time.monotonic()))
    try:
        await bus.subscribe("sports.football", lambda ch, ev: got.append(ev.id))
        await sender.publish(BusEvent.create("1-0", "game.score", "sports.football.39.1", {}))
        await wait_until(lambda: got == ["1-0"], what=lambda: f"the first event, got {got}")

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
    finally:
        await bus.close()
        await sender.close()
        await subscriber.close()
        await publisher.close()


def _role(cluster: ClusterNodes, port: int) -> str:
    with cluster.client(port) as client:
        role = client.execute_command("ROLE")[0]
    return role.decode() if isinstance(role, bytes) else str(role)
