"""The one place that opens Redis clients.

The specification keeps data apart in logical databases: `REDIS_DB` for keys, rate limits
and usage, `REDIS_CACHE_DB` for cached upstream responses, `REDIS_QUEUE_DB` for poller
leases and schedules, `REDIS_REVERB_DB` for real-time state. Redis pub/sub ignores the
database number, so every channel name carries the key prefix instead (`Keys.channel`).

`memory://` selects the embedded store: fakeredis' asyncio client over one in-process
`FakeServer`, so the same code runs with no Redis server (the demo). `REDIS_SENTINELS`
selects a Sentinel-managed master (`store.sentinel`): the same four clients, each finding
the master through the sentinels and following it across a failover.

`REDIS_CLUSTER_NODES` selects Redis Cluster (`store.cluster`): one cluster client serves
all four fields. Cluster has no logical databases, so the families are kept apart by the
first part of their key names under the prefix, which no two families share (data:
`rl`, `usage`, `watch`, `series`, `console`, `alerts`; cache: `raw`; queue: `quota`,
`poll`, `record:*`; reverb: `game`, `seq`, `live`, `day`, `ingested`, `history`,
`standings`, `streams`, `pusher`; a new family must take a name of its own), so the
call sites use one `Keys` on every topology. Pub/sub is sharded there (`store.pubsub.sharded`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from btsguru.config import Config, mask_url
from btsguru.errors import Unavailable
from btsguru.store.cluster import ClusterView, open_cluster_client
from btsguru.store.sentinel import MasterWatch, open_sentinel_clients

log = logging.getLogger(__name__)

# A client of one logical database: a server's (one server, Sentinel, embedded) or the
# cluster's (Redis Cluster); both speak the commands this code base uses.
RedisClient = aioredis.Redis | RedisCluster

# A command that cannot reach Redis fails within this time rather than hanging a request;
# the contract allows 30 s for a CLI command to report an unreachable Redis.
REDIS_CONNECT_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 10.0
# Connections per logical database per process: plenty for pipelined hot paths, and a
# bound so a burst cannot open thousands of sockets to Redis; past it, callers wait.
REDIS_MAX_CONNECTIONS = 200
REDIS_POOL_WAIT_S = 5.0
# `/readyz` answers within 2 s (a load balancer's probe); the master lookup gets that long.
REDIS_STATUS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Keys:
    """Key and channel names under the configured prefix."""

    prefix: str

    def key(self, *parts: str | int) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def tagged(self, family: str, tag: str | int, *parts: str | int) -> str:
        """`{prefix}{family}:{<tag>}:{parts...}`: the braces make `tag` the Redis Cluster
        hash tag, so every key of one family sharing `tag` lands in one hash slot and one
        script or MULTI may touch them all (the tags of each family are in the README,
        "Scaling out"). Redis hashes the first `{...}` of a name, so neither the prefix
        nor the tag may contain a brace."""
        text = str(tag)
        if not text or "{" in text or "}" in text:
            raise ValueError(f"not a hash tag: {text!r}")
        return self.key(family, "{" + text + "}", *parts)

    def channel(self, *parts: str | int) -> str:
        # pub/sub is server-wide, whatever database a client selected
        return self.prefix + "bus:" + ":".join(str(p) for p in parts)


@dataclass(frozen=True)
class RedisStatus:
    """Where Redis is, for `/readyz` and the ops page: the topology, its description and,
    with Sentinel, the master the sentinels name now (None when they name none) and the
    failovers this process has seen; with Cluster, the masters in the slot map and the
    failovers (a replica promoted) this process has seen."""

    topology: str
    description: str
    master: str | None = None
    failovers: int | None = None
    masters: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        view: dict[str, Any] = {"topology": self.topology, "description": self.description}
        if self.topology == "sentinel":
            view.update(master=self.master, failovers=self.failovers)
        elif self.topology == "cluster":
            view.update(masters=list(self.masters), failovers=self.failovers)
        return view


@dataclass(frozen=True)
class RedisStores:
    """The clients of one process, one per logical database (on Cluster, one client in
    all four fields)."""

    data: RedisClient
    cache: RedisClient
    queue: RedisClient
    reverb: RedisClient
    keys: Keys
    embedded: bool
    description: str
    topology: str = "single"  # "single", "embedded", "sentinel" or "cluster"
    master: MasterWatch | None = None  # with Sentinel: where the master is, and its moves
    cluster: ClusterView | None = None  # with Cluster: the nodes and the masters

    def all(self) -> tuple[RedisClient, ...]:
        return (self.data, self.cache, self.queue, self.reverb)

    def failovers_seen(self) -> int:
        """The failovers this process has seen (0 on one server): what was written just
        before each may have been lost, so counters kept in Redis check themselves when
        this number moves (`upstream.quota`)."""
        if self.master is not None:
            return self.master.failovers
        if self.cluster is not None:
            return self.cluster.watch.failovers
        return 0

    async def ping(self) -> None:
        """Raise `Unavailable` unless Redis answers (with Sentinel: the master it names;
        with Cluster: the cluster, in state ok)."""
        try:
            if self.cluster is not None:
                await self.cluster.check()
            else:
                await self.data.ping()
        except (RedisError, OSError) as exc:
            if self.cluster is not None:
                why = await self.cluster.describe_failure(exc)
                raise Unavailable(f"Redis {self.description}: {why}") from None
            if self.master is not None:
                why = await self.master.describe_failure(exc)
                raise Unavailable(f"Redis {self.description}: {why}") from None
            raise Unavailable(f"Redis at {self.description} is unreachable: {exc}") from None

    async def master_address(self) -> str | None:
        """The master's `host:port` as the sentinels name it now (None on one server);
        raises `Unavailable` when they name none."""
        if self.master is None:
            return None
        try:
            return await self.master.discover()
        except (RedisError, OSError) as exc:
            why = await self.master.describe_failure(exc)
            raise Unavailable(f"Redis {self.description}: {why}") from None

    async def status(self) -> RedisStatus:
        """The topology and, with Sentinel, the current master (asked within
        `REDIS_STATUS_TIMEOUT_S`; None when the sentinels name none by then); with
        Cluster, the masters of the client's slot map (none before a discovery worked)
        and the failovers seen."""
        if self.cluster is not None:
            return RedisStatus(self.topology, self.description,
                               failovers=self.cluster.watch.failovers,
                               masters=tuple(self.cluster.masters()))
        if self.master is None:
            return RedisStatus(self.topology, self.description)
        try:
            master: str | None = await asyncio.wait_for(self.master.discover(),
                                                        REDIS_STATUS_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError):
            master = None
        return RedisStatus(self.topology, self.description, master, self.master.failovers)

    async def close(self) -> None:
        for client in dict.fromkeys(self.all()):  # on Cluster, one client in all four
            await client.aclose()
        if self.master is not None:
            await self.master.close()


def open_redis(config: Config) -> RedisStores:
    """Build the clients (no I/O yet: redis-py connects lazily)."""
    keys = Keys(config.redis_cache_prefix)
    dbs = (config.redis_db, config.redis_cache_db, config.redis_queue_db, config.redis_reverb_db)
    url = config.redis_url
    if url.startswith("memory://"):
        import fakeredis

        server = fakeredis.FakeServer()
        fakes: list[aioredis.Redis] = [fakeredis.FakeAsyncRedis(server=server, db=db)
                                       for db in dbs]
        return _stores(fakes, keys, embedded=True, description="memory://")
    clients: list[aioredis.Redis]
    common: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "health_check_interval": 30,
    }
    if config.redis_cluster_nodes:
        cluster, view, description = open_cluster_client(
            config, max_connections=REDIS_MAX_CONNECTIONS, **common)
        return RedisStores(data=cluster, cache=cluster, queue=cluster, reverb=cluster,
                           keys=keys, embedded=False, description=description,
                           topology="cluster", cluster=view)
    if config.redis_sentinels:
        clients, watch, description = open_sentinel_clients(
            config, dbs, max_connections=REDIS_MAX_CONNECTIONS, pool_wait_s=REDIS_POOL_WAIT_S,
            **common)
        data, cache, queue, reverb = clients
        return RedisStores(data=data, cache=cache, queue=queue, reverb=reverb, keys=keys,
                           embedded=False, description=description, topology="sentinel",
                           master=watch)
    if not url:
        password = config.redis_password.reveal() or None
        description = f"{config.redis_host}:{config.redis_port}"
        clients = [_pooled(host=config.redis_host, port=config.redis_port, password=password,
                           db=db, **common) for db in dbs]
    elif url.startswith(("redis://", "rediss://")):
        parts = urlsplit(url)
        # the URL's path names REDIS_DB; the other databases keep their own settings
        path = parts.path.strip("/")
        dbs = (int(path) if path else config.redis_db, *dbs[1:])
        description = mask_url(url)
        clients = [_pooled(
            host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password
            else (config.redis_password.reveal() or None),
            ssl=parts.scheme == "rediss", db=db, **common) for db in dbs]
    else:  # unix://
        description = url
        clients = [aioredis.Redis.from_url(url, db=db, **common) for db in dbs]
    return _stores(clients, keys, embedded=False, description=description)


def _pooled(*, ssl: bool = False, **kwargs: Any) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing with "Too many
    connections" when a burst (thousands of streams connecting at once) needs more."""
    connection_class = aioredis.SSLConnection if ssl else aioredis.Connection
    pool = aioredis.BlockingConnectionPool(max_connections=REDIS_MAX_CONNECTIONS,
                                           timeout=REDIS_POOL_WAIT_S,
                                           connection_class=connection_class, **kwargs)
    return aioredis.Redis.from_pool(pool)


def _stores(clients: list[aioredis.Redis], keys: Keys, *, embedded: bool,
            description: str) -> RedisStores:
    data, cache, queue, reverb = clients
    return RedisStores(data=data, cache=cache, queue=queue, reverb=reverb, keys=keys,
                       embedded=embedded, description=description,
                       topology="embedded" if embedded else "single")
