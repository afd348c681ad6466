"""Redis behind Sentinel: clients that find the master through the sentinels and follow it.

Where it sits: under `store.redis.open_redis`, which calls `open_sentinel_clients` when
`REDIS_SENTINELS` is set; everything above sees the same four `redis.asyncio.Redis`
clients as on one server (data, cache, queue, reverb), so pub/sub listeners, leases and
scripts follow a failover with no code of their own.

How a client follows the master (redis-py's `redis.asyncio.sentinel`): each pool asks
the sentinels for the master's address whenever it opens a connection; a connection to
a master that died fails, and one to a master demoted to a replica answers READONLY,
which redis-py turns into a disconnect, so the next command reconnects to the address
the sentinels now give. That alone is not enough: after a failover the sentinels demote
the old master only when they next look at it (up to 10 s later), and until then it
still takes writes — lost when it becomes a replica — and still holds the pub/sub
listeners, to which nothing is published any more. So `MasterWatch` also follows the
sentinels' own `+switch-master` announcements (rotating between sentinels when one goes
away) and, on a move, drops every connection of the process to the old address at once:
the next command, and the bus's resubscription, go to the new master.

Nothing is ever read from a replica: every client is `master_for`, never `slave_for`
(replication is asynchronous, and the seq, history, quota and rate limits must read what
was last written).

`MasterWatch` is what this process knows of the master: the address it last saw and how
many times it moved (`btsguru_redis_failovers_total`, the ops page, `/readyz` and the
`redis_failover` alert read it). `describe_failure` turns redis-py's "No master found"
into the one line an operator can act on: no sentinel answers, no master by that name,
or the master down while the sentinels have not yet promoted a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.backoff import Backoff
from btsguru.config import Config
from btsguru.lifecycle import cancel_tasks
from btsguru.setting import format_addresses
from btsguru.store.nodes import as_text, node_failure, one_line
from btsguru.store.typed import aclose_pubsub

log = logging.getLogger(__name__)

# A sentinel is a small process next to the data nodes: one that does not accept a
# connection in 2 s is down, and discovery moves on to the next. With three sentinels a
# lookup takes at most 3 x 2 s, inside the 30 s a CLI command has to report a failure.
SENTINEL_CONNECT_TIMEOUT_S = 2.0
SENTINEL_SOCKET_TIMEOUT_S = 2.0
SWITCH_CHANNEL = "+switch-master"  # what a sentinel publishes when it promoted a replica
SWITCH_READ_S = 1.0  # the follower's read wakes this often (to notice cancellation)


@dataclass(frozen=True)
class MasterMove:
    """One change of the master's address seen by this process."""

    old: str
    new: str
    at: float  # epoch seconds


class MasterWatch:
    """The master's address as this process last saw it, and the moves it saw.

    Every pool reports each address the sentinels gave it (`observed`); the first sets the
    address, each different one after it is a failover: counted once per process, however
    many pools notice it."""

    def __init__(self, sentinel: Sentinel, service: str, sentinels: str, *,
                 backoff: Backoff | None = None) -> None:
        self.sentinel = sentinel
        self.service = service
        self.sentinels = sentinels  # "host:port,host:port", for messages
        self.address: str | None = None
        self.failovers = 0
        self.last_move: MasterMove | None = None
        self.pools: list[FollowingPool] = []
        self._backoff = backoff or Backoff(0.25, 4.0)
        self._follower: asyncio.Task[None] | None = None

    async def moved(self, host: Any, port: Any) -> None:
        """The sentinels gave this address: when it is new, drop every connection of the
        process to another one (the pub/sub listeners' too: they resubscribe there)."""
        self.start()
        if not self.observed(host, port):
            return
        target = (host.decode() if isinstance(host, bytes) else str(host), int(port))
        dropped = 0
        for pool in self.pools:
            pool.master_address = target  # a connection to another address is not reused
            # redis-py's pool keeps its connections in these two collections
            connections: list[Any] = [*pool._available_connections, *pool._in_use_connections]
            for connection in connections:
                if connection.host is not None and (connection.host, connection.port) != target:
                    await connection.disconnect()
                    dropped += 1
        log.info("Redis master %s: %d connections to the old master dropped", self.service,
                 dropped)

    def observed(self, host: Any, port: Any) -> bool:
        """Record an address the sentinels gave; True when the master moved to it."""
        address = _address(host, port)
        if address == self.address:
            return False
        old, self.address = self.address, address
        if old is None:
            log.info("Redis master %s is at %s (via sentinels %s)", self.service, address,
                     self.sentinels)
            return False
        self.failovers += 1
        self.last_move = MasterMove(old, address, time.time())
        metrics.REDIS_FAILOVERS.inc()
        log.warning("Redis master %s moved from %s to %s (failover %d seen by this process)",
                    self.service, old, address, self.failovers)
        return True

    def start(self) -> None:
        """Follow the sentinels' announcements (from the first use on a running loop)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(), name=f"sentinel follower {self.service}")

    async def _follow(self) -> None:
        failures = 0
        while True:
            sentinel = self.sentinel.sentinels[failures % len(self.sentinel.sentinels)]
            pubsub = sentinel.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(SWITCH_CHANNEL),
                                       SENTINEL_SOCKET_TIMEOUT_S)
                await self.discover()  # a move announced while nobody listened
                failures = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=SWITCH_READ_S)
                    if message is None or message.get("type") != "message":
                        continue
                    # "<name> <old ip> <old port> <new ip> <new port>"
                    fields = as_text(message["data"]).split()
                    if len(fields) == 5 and fields[0] == self.service:
                        await self.moved(fields[3], int(fields[4]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.debug("sentinel follower %s: %s (try %d)", self.service, exc, failures)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(aclose_pubsub(pubsub), SENTINEL_SOCKET_TIMEOUT_S)
            await asyncio.sleep(self._backoff.compute(failures))

    async def discover(self) -> str:
        """Ask the sentinels now; the master's `host:port`. Raises `MasterNotFoundError`
        (a redis `ConnectionError`) when they name none."""
        try:
            host, port = await self.sentinel.discover_master(self.service)
        except MasterNotFoundError:
            metrics.REDIS_MASTER_LOOKUP_FAILURES.inc()
            raise
        await self.moved(host, port)
        return _address(host, port)

    async def describe_failure(self, exc: BaseException) -> str:
        """One line saying why the master cannot be reached, for `Unavailable` and the
        CLI: the sentinels' own answers tell an unknown name from a master that is down."""
        if not isinstance(exc, MasterNotFoundError):
            where = f" at {self.address}" if self.address else ""
            return f"the master{where} does not answer: {one_line(exc)}"
        known: set[str] = set()
        states: list[str] = []
        errors: list[str] = []
        for client in self.sentinel.sentinels:
            kwargs = client.connection_pool.connection_kwargs
            name = _address(kwargs.get("host"), kwargs.get("port"))
            try:
                answer = await asyncio.wait_for(client.sentinel_masters(),
                                                SENTINEL_SOCKET_TIMEOUT_S)
            except (RedisError, OSError, TimeoutError) as err:
                errors.append(f"{name} {node_failure(err, SENTINEL_SOCKET_TIMEOUT_S)}")
                continue
            masters: dict[str, Any] = answer if isinstance(answer, dict) else {}
            known.update(str(m) for m in masters)
            state = masters.get(self.service)
            if state:
                flags = [f for f in ("is_sdown", "is_odown") if state.get(f)]
                states.append(f"{name} sees it at {_address(state.get('ip'), state.get('port'))}"
                              + (f" ({', '.join(f[3:] for f in flags)})" if flags else ""))
        if not known and errors:
            return (f"no sentinel answers at {self.sentinels} (REDIS_SENTINELS): "
                    + "; ".join(errors))
        if self.service not in known:
            names = ", ".join(sorted(known)) or "none"
            return (f"the sentinels at {self.sentinels} know no master named "
                    f"{self.service!r} (REDIS_SENTINEL_MASTER); they know: {names}")
        return (f"master {self.service!r} is down and no replica is promoted yet: "
                + "; ".join(states))

    async def close(self) -> None:
        if self._follower is not None:
            await cancel_tasks([self._follower], owner="sentinel follower")
            self._follower = None
        await self.sentinel.aclose()


class FollowingPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool with the single-server path's bound: at most `max_connections`
    sockets, and a caller waits `timeout` seconds for a free one rather than failing; each
    master address it is given is reported to the process's `MasterWatch`."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, *,
                 watch: MasterWatch, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager,  # type: ignore[no-untyped-call]
                         **kwargs)
        self.watch = watch
        watch.pools.append(self)

    async def get_master_address(self) -> Any:
        try:
            address = await super().get_master_address()  # type: ignore[no-untyped-call]
        except MasterNotFoundError:
            metrics.REDIS_MASTER_LOOKUP_FAILURES.inc()
            raise
        await self.watch.moved(*address)
        return address


def open_sentinel_clients(config: Config, dbs: tuple[int, ...], *, max_connections: int,
                          pool_wait_s: float, **common: Any,
                          ) -> tuple[list[aioredis.Redis], MasterWatch, str]:
    """One master client per database (no I/O yet), the watch and a description."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_CONNECT_TIMEOUT_S,
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
    }
    if config.redis_sentinel_password:
        sentinel_kwargs["password"] = config.redis_sentinel_password.reveal()
    sentinel = Sentinel(list(config.redis_sentinels), sentinel_kwargs=sentinel_kwargs)
    sentinels = format_addresses(config.redis_sentinels)
    service = config.redis_sentinel_master
    watch = MasterWatch(sentinel, service, sentinels)
    password = config.redis_password.reveal() or None
    clients = [sentinel.master_for(service, connection_pool_class=_pool_class(watch),
                                   password=password, db=db, max_connections=max_connections,
                                   timeout=pool_wait_s, **common)
               for db in dbs]
    return clients, watch, f"sentinel {service} via {sentinels}"


def _pool_class(watch: MasterWatch) -> Any:
    """`master_for` builds the pool itself from a class: bind the watch to it."""
    class Pool(FollowingPool):
        def __init__(self, service_name: str, sentinel_manager: Sentinel,
                     **kwargs: Any) -> None:
            super().__init__(service_name, sentinel_manager, watch=watch, **kwargs)

    return Pool


def _address(host: Any, port: Any) -> str:
    host = as_text(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
