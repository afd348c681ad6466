"""The pollers' stack on its own: the database, Redis, the GameStore and the bus, the raw
cache, the quota governor, the upstream client and the `Pollers` over them, opened in
one `async with` and closed in reverse order.

Where it sits: beside the composition root, for the programs that run the pollers
without serving (the benchmarks, the pollers' tests, a follower of the bus): upstream
client -> **pollers** -> normalize -> GameStore -> bus. `app.open_services` builds the
same pieces for `serve` and the CLI, with the HTTP side's services around them. The
pollers are built, not started: the caller starts them (or only follows the bus).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from btsguru.backoff import Backoff
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from btsguru.db.runner import DatabaseRunner
from btsguru.pollers.service import TASK_KINDS, Pollers
from btsguru.store.bus import Bus, InMemoryBus, RedisBus
from btsguru.store.cache import RawCache
from btsguru.store.games import GameStore
from btsguru.store.redis import RedisStores, open_redis
from btsguru.store.standings import StandingsStore
from btsguru.upstream.client import UpstreamClient
from btsguru.upstream.quota import QuotaGovernor


@dataclass(frozen=True)
class PollerStack:
    """The open pieces, for the caller to start the pollers, follow the bus or read the
    store."""

    config: Config
    clock: Clock
    redis: RedisStores
    bus: Bus
    games: GameStore
    cache: RawCache
    quota: QuotaGovernor
    upstream: UpstreamClient
    pollers: Pollers


@contextlib.asynccontextmanager
async def open_poller_stack(config: Config, *, clock: Clock | None = None,
                            bus: Literal["redis", "memory"] = "redis",
                            sports: Sequence[str] | None = None,
                            kinds: Sequence[str] = TASK_KINDS, use_leases: bool = True,
                            backoff: Backoff | None = None) -> AsyncIterator[PollerStack]:
    """The stack over `config`'s database (migrated first: safe to repeat) and Redis.

    `clock`: the one every piece shares (a test's `FakeClock`, a benchmark's virtual
    day); `bus`: `"redis"` reaches every process, `"memory"` only this one (its events
    are delivered before `publish` returns); `sports`, `kinds`, `use_leases`: which
    poller tasks, and whether they run under the cluster's leases; `backoff`: the
    upstream client's retry backoff (the client's default when None)."""
    clock = clock or SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        database = connect_database(config.database_url)
        stack.callback(close_database, database)
        migrate(database)
        runner = DatabaseRunner(database)
        stack.callback(runner.close)
        redis = open_redis(config)
        stack.push_async_callback(redis.close)
        events: Bus = RedisBus(redis.reverb, redis.keys) if bus == "redis" else InMemoryBus()
        stack.push_async_callback(events.close)
        games = GameStore(redis, runner, clock, events)
        stack.push_async_callback(games.close)  # its last save runs before the runner closes
        quota = QuotaGovernor(redis, config, clock)
        upstream = UpstreamClient(config, redis, clock=clock, quota=quota, backoff=backoff)
        stack.push_async_callback(upstream.close)
        cache = RawCache(redis, config, clock)
        pollers = Pollers(config, clock, redis, upstream, cache, quota, games,
                          StandingsStore(redis), sports=sports, kinds=kinds,
                          use_leases=use_leases)
        stack.push_async_callback(pollers.stop)  # a no-op when never started
        yield PollerStack(config, clock, redis, events, games, cache, quota, upstream, pollers)
