"""The usage page's report: a user's requests per day (30 days) and per hour (today) by
route kind, their cache-hit share, their open stream connections against the tier's
limit, and the tier's limits.

Beside the flow: reads what `auth.usage` keeps (the per-day totals through
`AccessService.usage_for_user`; the per-hour totals from the same Redis hashes and
`UsageHourly` rows, merged the same way, `max` per key, hour and kind) and what the
real-time hub keeps about connections (through `StreamCounts`, when the hub provides
one). It writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from redis.exceptions import RedisError

from btsguru.auth.access import AccessService
from btsguru.auth.tiers import TierLimits, TierService
from btsguru.auth.usage import DayUsage
from btsguru.auth.users import UserInfo
from btsguru.clock import Clock
from btsguru.console.charts import BarChart, Gauge, gauge, stacked_bars
from btsguru.db.models import ROUTE_KINDS, ApiKey, UsageHourly, to_db_time
from btsguru.db.runner import DatabaseRunner
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

USAGE_DAYS = 30  # the issue: requests per day for 30 days
HOURS_PER_DAY = 24


class StreamCounts(Protocol):
    """What the real-time hub can tell about a user's open stream connections."""

    async def user_connections(self, user_id: int) -> int: ...


@dataclass(frozen=True)
class HourUsage:
    hour: datetime  # aware UTC, the start of the hour
    requests: int
    cache_hits: int
    by_kind: Mapping[str, int]


@dataclass(frozen=True)
class UsageReport:
    days: list[DayUsage]
    hours: list[HourUsage]
    tier: TierLimits
    streams: int | None  # None: the hub keeps no count (yet)
    daily_chart: BarChart
    hourly_chart: BarChart
    quota_gauge: Gauge  # today's requests against the tier's daily quota
    streams_gauge: Gauge | None
    generated_at: datetime

    @property
    def today(self) -> DayUsage:
        return self.days[-1]

    @property
    def month_requests(self) -> int:
        return sum(d.requests for d in self.days)

    @property
    def month_cache_hits(self) -> int:
        return sum(d.cache_hits for d in self.days)

    @property
    def today_cache_share(self) -> float | None:
        return _share(self.today.cache_hits, self.today.requests)

    @property
    def month_cache_share(self) -> float | None:
        return _share(self.month_cache_hits, self.month_requests)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class UsageReporter:
    def __init__(self, access: AccessService, tiers: TierService, redis: RedisStores,
                 runner: DatabaseRunner, clock: Clock,
                 streams: StreamCounts | None = None) -> None:
        self._access = access
        self._tiers = tiers
        self._redis = redis.data
        self._runner = runner
        self._clock = clock
        self._streams = streams

    async def report(self, user: UserInfo) -> UsageReport:
        """The report for `user`; `Unavailable` when Redis or the database is down."""
        days = await self._access.usage_for_user(user.id, USAGE_DAYS)
        hours = await self.hours_today(user.id)
        tier = await self._tiers.get(user.tier)
        streams = await self._stream_count(user.id)
        daily = stacked_bars([(d.day.strftime("%b %d"), d.by_kind) for d in days],
                             ROUTE_KINDS, label_every=5)
        hourly = stacked_bars([(f"{h.hour:%H}:00", h.by_kind) for h in hours], ROUTE_KINDS,
                              label_every=3)
        return UsageReport(
            days=days, hours=hours, tier=tier, streams=streams, daily_chart=daily,
            hourly_chart=hourly, quota_gauge=gauge(days[-1].requests, tier.daily_quota),
            streams_gauge=None if streams is None else gauge(streams, tier.max_streams),
            generated_at=datetime.fromtimestamp(self._clock.time(), UTC))

    async def hours_today(self, user_id: int) -> list[HourUsage]:
        """Today's 24 UTC hours, by route kind (future hours are zero)."""
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        hours = [midnight + timedelta(hours=n) for n in range(HOURS_PER_DAY)]
        # (key_id, hour index, kind) -> (requests, hits); the database copy first, then
        # the Redis totals, each counter the larger of the two (see auth.usage)
        totals = await self._runner.read(_hour_rows, user_id, to_db_time(midnight),
                                         to_db_time(midnight + timedelta(days=1)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for hour in hours[:now.hour + 1]:
                pipe.hgetall(self._access.usage.hour_hash(hour.strftime("%Y%m%d%H"), user_id))
            replies = await pipe.execute()
        for index, fields in enumerate(replies):
            for (key_id, kind), (requests, hits) in _parse_fields(fields).items():
                old = totals.get((key_id, index, kind), (0, 0))
                totals[(key_id, index, kind)] = (max(old[0], requests), max(old[1], hits))
        per_hour: list[dict[str, list[int]]] = [{} for _ in hours]
        for (_key_id, index, kind), (requests, hits) in totals.items():
            counts = per_hour[index].setdefault(kind, [0, 0])
            counts[0] += requests
            counts[1] += hits
        return [HourUsage(hour=hour, requests=sum(c[0] for c in kinds.values()),
                          cache_hits=sum(c[1] for c in kinds.values()),
                          by_kind={k: kinds.get(k, [0, 0])[0] for k in ROUTE_KINDS})
                for hour, kinds in zip(hours, per_hour, strict=True)]

    async def _stream_count(self, user_id: int) -> int | None:
        if self._streams is None:
            return None
        try:
            return await self._streams.user_connections(user_id)
        except (RedisError, OSError) as exc:
            log.warning("stream connection count unavailable: %s", exc)
            return None


def _parse_fields(fields: Mapping[bytes, bytes]) -> dict[tuple[int, str], tuple[int, int]]:
    """A usage hash (`{key_id}:{kind}:r|c` fields, see auth.usage) as counts per key and
    kind; other fields (`v`) are skipped."""
    counts: dict[tuple[int, str], list[int]] = {}
    for raw_name, raw_value in fields.items():
        parts = raw_name.decode().split(":")
        if len(parts) != 3 or parts[2] not in ("r", "c") or not parts[0].isdigit():
            continue
        entry = counts.setdefault((int(parts[0]), parts[1]), [0, 0])
        entry[0 if parts[2] == "r" else 1] = int(raw_value)
    return {key: (c[0], c[1]) for key, c in counts.items()}


# -- in the database threads --

def _hour_rows(user_id: int, start: datetime,
               end: datetime) -> dict[tuple[int, int, str], tuple[int, int]]:
    query = (UsageHourly.select(UsageHourly.key, UsageHourly.hour, UsageHourly.kind,
                                UsageHourly.requests, UsageHourly.cache_hits)
             .join(ApiKey)
             .where(ApiKey.user == user_id, UsageHourly.hour >= start, UsageHourly.hour < end))
    out: dict[tuple[int, int, str], tuple[int, int]] = {}
    for row in query:
        hour = row.hour if isinstance(row.hour, datetime) else datetime.fromisoformat(
            str(row.hour))
        key_id = int(getattr(row, UsageHourly.key.object_id_name))
        out[(key_id, hour.hour, row.kind)] = (int(row.requests), int(row.cache_hits))
    return out
