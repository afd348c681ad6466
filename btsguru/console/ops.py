"""The operators' report: where Redis is (the topology and, with Sentinel, the current
master and the failovers seen; with Cluster, the masters), pollers per sport and task,
the upstream quota per sport as day and minute gauges, the raw cache's hit rate, stream
connections per transport and process, and recent alerts.

Beside the flow: reads what the services keep (the pollers' state rows and leases, the
quota governor's counters, the cache's counters, the hub's connection registry, the
alerter's log) and writes nothing. A source whose service has not been built into this
deployment is `None` in the report and shows as "not available" rather than as made-up
numbers; a source that fails to answer shows its error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.console.charts import Gauge, gauge
from btsguru.store.alert_store import AlertRow
from btsguru.store.cache import CacheCounters
from btsguru.store.redis import RedisStatus
from btsguru.upstream.quota import QuotaGovernor, QuotaState

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class TaskRows(Protocol):
    """The pollers' state reader (`pollers.state.PollerStateReader`)."""

    async def tasks(self, sport: str) -> Sequence[object]: ...


@dataclass(frozen=True)
class StreamRow:
    process: str
    transport: str
    connections: int


@dataclass(frozen=True)
class QuotaView:
    state: QuotaState
    day: Gauge
    minute: Gauge


@dataclass(frozen=True)
class CacheView:
    hits: int
    misses: int
    stale: int

    @property
    def lookups(self) -> int:
        return self.hits + self.misses + self.stale

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None


@dataclass(frozen=True)
class Section(Generic[_T]):
    """One panel's data: `rows` when the source answered, `missing` when this deployment
    has no such source yet, `error` when it failed to answer."""

    rows: list[_T]
    missing: bool = False
    error: str | None = None


@dataclass(frozen=True)
class OpsReport:
    pollers: Section[object]
    quotas: Section[QuotaView]
    cache: CacheView
    streams: Section[StreamRow]
    alerts: Section[AlertRow]
    generated_at: datetime
    redis: RedisStatus | None = None

    @property
    def stream_total(self) -> int:
        return sum(row.connections for row in self.streams.rows)


class OpsReporter:
    def __init__(self, sports: Sequence[str], quota: QuotaGovernor, cache: CacheCounters,
                 clock: Clock, *, pollers: TaskRows | None = None,
                 streams: Callable[[], Awaitable[list[StreamRow]]] | None = None,
                 alerts: Callable[[], Awaitable[list[AlertRow]]] | None = None,
                 redis: Callable[[], Awaitable[RedisStatus]] | None = None) -> None:
        self._sports = tuple(sports)
        self._quota = quota
        self._cache = cache
        self._clock = clock
        self._pollers = pollers
        self._streams = streams
        self._alerts = alerts
        self._redis = redis

    async def report(self) -> OpsReport:
        return OpsReport(
            pollers=await self._poller_rows(), quotas=await self._quota_rows(),
            cache=CacheView(self._cache.hits, self._cache.misses, self._cache.stale),
            streams=await _section(self._streams, "stream connections"),
            alerts=await _section(self._alerts, "alerts"),
            generated_at=datetime.fromtimestamp(self._clock.time(), UTC),
            redis=await self._redis() if self._redis is not None else None)

    async def _poller_rows(self) -> Section[object]:
        if self._pollers is None:
            return Section([], missing=True)
        rows: list[object] = []
        try:
            for sport in self._sports:
                rows.extend(await self._pollers.tasks(sport))
        except (RedisError, OSError) as exc:
            log.warning("ops view: poller state unreadable: %s", exc)
            return Section(rows, error=str(exc))
        return Section(rows)

    async def _quota_rows(self) -> Section[QuotaView]:
        rows = []
        try:
            for sport in self._sports:
                state = await self._quota.snapshot(sport)
                rows.append(QuotaView(state, gauge(state.day_used, state.day_limit),
                                      gauge(state.minute_used, state.minute_limit)))
        except (RedisError, OSError) as exc:
            log.warning("ops view: quota unreadable: %s", exc)
            return Section(rows, error=str(exc))
        return Section(rows)


async def _section(source: Callable[[], Awaitable[list[_T]]] | None,
                   what: str) -> Section[_T]:
    if source is None:
        return Section([], missing=True)
    try:
        return Section(await source())
    except (RedisError, OSError) as exc:
        log.warning("ops view: %s unreadable: %s", what, exc)
        return Section([], error=str(exc))
