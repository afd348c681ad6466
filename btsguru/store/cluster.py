"""Redis Cluster: one client for the whole cluster, and what this process knows of it.

Where it sits: under `store.redis.open_redis`, which calls `open_cluster_client` when
`REDIS_CLUSTER_NODES` is set. Everything above sees the same four fields of
`RedisStores` as on one server (data, cache, queue, reverb); on Cluster they are one
`redis.asyncio.cluster.RedisCluster` (Cluster has no logical databases: the families
keep apart by the first part of their key names, see `store.redis`), which routes each
command by its key's hash slot, follows MOVED/ASK redirections and refreshes its slot
map after a failover. Every multi-key script and MULTI stays in one slot (the hash tags
of `Keys.tagged`), and pub/sub is sharded (`store.bus`, `store.pubsub`).

Nothing is ever read from a replica (no `load_balancing_strategy`): replication is
asynchronous, and the seq, history, quota and rate limits must read what was last written.

Start-up and failures: redis-py raises `RedisClusterException`, which is not a
`RedisError`, when no startup node answers as a cluster; `ClusterClient` turns it into
`ClusterUnavailable` (a redis `ConnectionError`), so handlers answer JSON 503 and the CLI
one line, as for any Redis outage. `ClusterView.describe_failure` asks each configured
node itself, so the line says which case it is: nobody answers, the nodes are not a
cluster, or the cluster is in `fail` state.

Failovers: `SlotMasters` is what this process knows of the masters, and how many times a
slot range's master moved to its promoted replica (`btsguru_redis_failovers_total`, the
ops page, `/readyz` and the `redis_failover` alert read it). It is told by the client
itself: redis-py dispatches `AsyncAfterSlotsCacheRefreshEvent` after every change of its
slot map (a full refresh after a connection error or a failed node, and the in-place
update after a MOVED), and the listener compares the new map with the last one. So a
failover counts once per process, when the process's own client learns of it, with no
I/O of its own and no polling: a failover no command of this process has met yet
(nothing routed to that master's slots) is not seen, as on Sentinel before the
announcement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.event import (
    AsyncAfterSlotsCacheRefreshEvent,
    AsyncEventListenerInterface,
    EventDispatcher,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from btsguru import metrics
from btsguru.config import Config
from btsguru.setting import format_addresses
from btsguru.store.nodes import as_text, node_failure, one_line
from btsguru.store.sentinel import MasterMove

log = logging.getLogger(__name__)

# Asking one node about itself when something failed: a node that does not answer in 2 s
# is down for this purpose; with the usual 3-6 configured nodes the whole diagnosis stays
# well inside the 30 s a CLI command has to report a failure (the nodes are asked at once).
NODE_PROBE_TIMEOUT_S = 2.0


class ClusterUnavailable(RedisConnectionError):
    """No configured node answers as a healthy cluster (a `RedisError`, so every caller
    that handles a Redis outage handles this one too)."""


class ClusterClient(RedisCluster):
    """`RedisCluster` whose discovery failures are `ClusterUnavailable`."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(one_line(exc)) from None


class SlotMasters:
    """The slot map's masters as this process last saw them, and the failovers it saw.

    A failover is a master that no longer serves any slot, its slots now served by a node
    that was not a master before (its replica, promoted: `CLUSTER SLOTS` need not list
    replicas, so the map cannot say more). It counts once per old master, however the
    client learnt it: a full refresh moves every slot at once, while a MOVED moves one
    slot to a node redis-py did not know as a master, which becomes that master's heir
    (`_heirs`) until the rest follows. Slots moved between masters (resharding) are not
    a failover: the old master keeps serving slots, or the new one was a master already."""

    def __init__(self) -> None:
        self.owners: dict[int, str] = {}  # slot -> its master's host:port
        self.failovers = 0
        self.last_move: MasterMove | None = None
        self._heirs: dict[str, str] = {}  # new master -> the master whose slots it took

    def observe(self, slots: Mapping[int, Sequence[ClusterNode]]) -> list[MasterMove]:
        """Compare the client's slot map with the last one; the failovers it shows."""
        now = {slot: nodes[0].name for slot, nodes in slots.items() if nodes}
        if not now:
            return []
        before, self.owners = self.owners, now
        masters_before, masters = set(before.values()), set(now.values())
        if not before:
            log.info("Redis Cluster masters: %s", ", ".join(sorted(masters)))
            return []
        promoted: dict[str, str] = {}
        for slot, old in before.items():
            new = now.get(slot, old)
            if new == old:
                continue
            if new not in masters_before:
                self._heirs.setdefault(new, old)
            if old not in masters and self._heirs.get(new) == old:
                promoted.setdefault(old, new)
        self._heirs = {new: old for new, old in self._heirs.items()
                       if new in masters and old in masters}  # the moves still under way
        moves = [MasterMove(old, new, time.time()) for old, new in sorted(promoted.items())]
        for move in moves:
            self.failovers += 1
            self.last_move = move
            metrics.REDIS_FAILOVERS.inc()
            log.warning("Redis Cluster master %s failed over to %s (failover %d seen by "
                        "this process)", move.old, move.new, self.failovers)
        return moves


class _SlotMapListener(AsyncEventListenerInterface):
    """Hands each change of the client's slot map to `SlotMasters`."""

    def __init__(self, client: RedisCluster, masters: SlotMasters) -> None:
        self._client = client
        self._masters = masters

    async def listen(self, event: object) -> None:
        self._masters.observe(self._client.nodes_manager.slots_cache)


@dataclass(frozen=True)
class ClusterView:
    """The configured nodes and the live client: the masters now and, when something
    fails, a one-line reason."""

    client: ClusterClient
    nodes: tuple[tuple[str, int], ...]
    password: str | None
    watch: SlotMasters = field(default_factory=SlotMasters)  # the masters' failovers

    @property
    def addresses(self) -> str:
        return format_addresses(self.nodes)

    async def check(self) -> None:
        """Raise unless the cluster answers and says `cluster_state:ok`."""
        await self.client.initialize()
        info = await self.client.cluster_info(target_nodes=RedisCluster.RANDOM)
        state = str(info.get("cluster_state", "?"))
        if state != "ok":
            raise ClusterUnavailable(f"cluster state is {state}")

    def masters(self) -> list[str]:
        """`host:port` of each master in the client's slot map (sorted), [] before the
        first successful discovery."""
        try:
            primaries = self.client.get_primaries()
        except (RedisClusterException, AttributeError):
            return []
        return sorted(node.name for node in primaries)

    async def describe_failure(self, exc: BaseException) -> str:
        """One line saying why the cluster cannot be used, from each node's own answer."""
        answers = await asyncio.gather(*(self._probe(h, p) for h, p in self.nodes))
        states = [a for a in answers if a.state is not None]
        if not states:
            disabled = [a for a in answers if a.why == "cluster mode is not enabled"]
            if disabled:
                return (f"the nodes at {self.addresses} are not a Redis Cluster "
                        f"(REDIS_CLUSTER_NODES): cluster mode is not enabled on "
                        + ", ".join(a.address for a in disabled))
            return (f"no node answers at {self.addresses} (REDIS_CLUSTER_NODES): "
                    + "; ".join(f"{a.address} {a.why}" for a in answers))
        failing = [a for a in states if a.state != "ok"]
        if failing:
            return ("the cluster is in fail state: " + "; ".join(
                f"{a.address} says cluster_state:{a.state}" for a in failing))
        return f"the cluster does not answer: {one_line(exc)}"

    async def _probe(self, host: str, port: int) -> _NodeAnswer:
        address = format_addresses(((host, port),))
        client = aioredis.Redis(host=host, port=port, password=self.password,
                                socket_connect_timeout=NODE_PROBE_TIMEOUT_S,
                                socket_timeout=NODE_PROBE_TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0))  # one answer is the answer
        try:
            raw = await asyncio.wait_for(client.cluster("INFO"), NODE_PROBE_TIMEOUT_S + 1)
        except (RedisError, OSError, TimeoutError) as exc:
            return _NodeAnswer(address, None, _reason(exc))
        finally:
            await client.aclose()
        if isinstance(raw, dict):  # redis-py parses CLUSTER INFO
            return _NodeAnswer(address, as_text(raw.get("cluster_state", "?")), "")
        text = as_text(raw)
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return _NodeAnswer(address, fields.get("cluster_state", "?"), "")

    async def close(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True)
class _NodeAnswer:
    address: str
    state: str | None  # cluster_state, None when the node gave none
    why: str  # why not, in a few words


def open_cluster_client(config: Config, *, max_connections: int,
                        **common: Any) -> tuple[ClusterClient, ClusterView, str]:
    """The cluster client (no I/O yet: it discovers the cluster on first use), the view
    for status and errors, and a description."""
    password = config.redis_password.reveal() or None
    dispatcher = EventDispatcher()  # the client's own, told of every slot-map change
    client = ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in config.redis_cluster_nodes],
        password=password, max_connections=max_connections, event_dispatcher=dispatcher,
        **common)  # no load_balancing_strategy: every command goes to the slot's master
    view = ClusterView(client, config.redis_cluster_nodes, password)
    dispatcher.register_listeners(
        {AsyncAfterSlotsCacheRefreshEvent: [_SlotMapListener(client, view.watch)]})
    return client, view, f"cluster via {view.addresses}"


def _reason(exc: BaseException) -> str:
    if "cluster support disabled" in one_line(exc):
        return "cluster mode is not enabled"
    return node_failure(exc, NODE_PROBE_TIMEOUT_S)
