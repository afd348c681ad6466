"""The test Cluster launcher, and the key families' scripts run on a real Redis Cluster:
each operation's tagged keys land on one node, and the scripts answer as on one Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from btsguru.alerts import Alert, AlertEvent, AlertStore
from btsguru.clock import FakeClock
from btsguru.pollers.lease import _TAKE_OR_RENEW, lease_key
from btsguru.realtime.slots import ALIVE_CACHE_S, StreamSlots
from btsguru.store.bus import game_channel
from btsguru.store.history import EventHistory, history_key
from btsguru.store.pusher import PusherState
from btsguru.store.redis import Keys, RedisStores
from btsguru.upstream.quota import QuotaGovernor
from tests.conftest import make_test_config
from tests.redis_cluster import ClusterNodes, redis_cluster
from tests.store_fixtures import NOW


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterNodes]:
    with redis_cluster() as nodes:
        yield nodes


def stores_on(client: RedisCluster, keys: Keys) -> RedisStores:
    # the cluster client in every role: this step checks the key layout, not the wiring
    return RedisStores(data=client, cache=client, queue=client, reverb=client,  # type: ignore[arg-type]
                       keys=keys, embedded=False, description="cluster")


def test_the_launcher_yields_a_healthy_three_by_three_cluster(cluster):
    assert len(cluster.ports) == 6 and cluster.healthy()
    roles = cluster.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    info = cluster.info(cluster.ports[0])
    assert info["cluster_slots_assigned"] == "16384" and info["cluster_known_nodes"] == "6"


async def test_quota_lease_and_history_scripts_run_on_the_cluster(cluster, tmp_path: Path):
    config = make_test_config(tmp_path)
    keys = Keys(f"btgtest:{uuid.uuid4().hex[:12]}:")
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        stores = stores_on(client, keys)
        # the quota: one sport's six keys, one slot, one node
        quota = QuotaGovernor(stores, config, FakeClock(NOW), minute_reserve_fraction=0)
        minute = quota.minute_limit("football")
        taken = [await quota.try_acquire("football", "poller") for _ in range(minute + 1)]
        assert [d.token.minute_seq for d in taken[:-1] if d.token] == \
            list(range(1, minute + 1))
        assert taken[-1].token is None and taken[-1].reason == "minute"
        assert (await quota.snapshot("football")).minute_used == minute
        quota_keys = [keys.tagged("quota", "football", part)
                      for part in ("day:x", "window", "seq", "minute_cap", "upstream")]
        assert len({client.get_node_from_key(k).name for k in quota_keys}) == 1

        # a poller lease: one key per task
        take = client.register_script(_TAKE_OR_RENEW)
        lease = lease_key(keys, "football:live")
        assert await take(keys=[lease], args=["host-a:1", 10_000]) == 1
        assert await take(keys=[lease], args=["host-a:1", 10_000]) == 1  # renewed
        assert await take(keys=[lease], args=["host-b:2", 10_000]) == 0

        # the history append: the sport's stream
        history = EventHistory(stores)
        first = await history.append("football", "note", game_channel("football", 39, 7),
                                     {"n": 1})
        second = await history.append("football", "note", game_channel("football", 39, 7),
                                      {"n": 2})
        assert await history.read_after("football", first.id) == [second]
        assert key_slot(history_key(keys, "football").encode()) == key_slot(b"football")

        # what the slot guard stands for: the cluster client and the servers themselves
        # refuse a script across slots (CROSSSLOT)
        with pytest.raises(RedisClusterException, match="same key slot"):
            await client.eval("return 1", 2, keys.key("a"), keys.key("b"))
        master = next(p for p, role in cluster.roles().items() if role == "master")
        with cluster.client(master) as node, pytest.raises(ResponseError, match="same slot"):
            node.eval("return 1", 2, keys.key("a"), keys.key("b"))
    finally:
        await client.aclose()


async def test_presence_stream_slot_and_alert_scripts_run_on_the_cluster(cluster,
                                                                         tmp_path: Path):
    keys = Keys(f"btgtest:{uuid.uuid4().hex[:12]}:")
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        # Pusher presence: two processes, one channel, a member each and a shared one
        one = PusherState(client, keys, process_id="proc-a")  # type: ignore[arg-type]
        two = PusherState(client, keys, process_id="proc-b")  # type: ignore[arg-type]
        for state in (one, two):
            await state.heartbeat()
        room = "presence-room"
        assert await one.join(room, "u1", b'{"n":1}', 100) == 1
        assert await two.join(room, "u1", b'{"n":1}', 100) == 2
        assert await two.join(room, "u2", b'{"n":2}', 2) == 1
        assert await one.join(room, "u3", b'{"n":3}', 2) == -1
        assert not await one.leave(room, "u1")  # proc-b still holds a socket of u1
        assert await one.members(room) == {"u1": {"n": 1}, "u2": {"n": 2}}
        # proc-b dies: proc-a reaps it, one script in the channel's slot
        await client.delete(keys.key("pusher", "proc", "proc-b"))
        await one.reap()
        assert await one.members(room) == {}
        assert len({client.get_node_from_key(k).name
                    for k in one._presence_keys(room)}) == 1
        await one.close()

        # stream slots: the per-user limit across two processes, a dead one's reaped
        clock = FakeClock(NOW)
        a = StreamSlots(client, keys, process_id="slots-a")  # type: ignore[arg-type]
        b = StreamSlots(client, keys, process_id="slots-b", clock=clock)  # type: ignore[arg-type]
        await a.heartbeat()
        await b.heartbeat()
        assert [await a.acquire(7, 3), await b.acquire(7, 3), await a.acquire(7, 3)] == \
            [1, 2, 3]
        assert await b.acquire(7, 3) is None
        await client.delete(keys.key("streams", "proc", "slots-a"))
        clock.advance(ALIVE_CACHE_S)
        assert await b.acquire(7, 3) == 2  # slots-a's two are gone
        assert await client.hgetall(keys.key("streams", "user", 7)) == {b"slots-b": b"2"}
        await b.close()

        # alerts: the firing set and the recent events in one MULTI
        store = AlertStore(stores_on(client, keys))
        alert = Alert("circuit_open:football", "circuit_open", "critical", "open")
        await store.record(AlertEvent("firing", alert, NOW))
        assert await store.firing() == {alert.id: alert}
        await store.record(AlertEvent("resolved", alert, NOW + 60))
        assert await store.firing() == {}
        assert [e["status"] for e in await store.recent()] == ["resolved", "firing"]
    finally:
        await client.aclose()
