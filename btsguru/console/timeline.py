"""The operators' page over time: the last hour by minute or the last day by quarter hour,
as line charts, cluster-wide.

Beside the flow: reads what every process flushed to `store.series` and each sport's
per-minute quota from the quota governor, and builds `console.charts` line charts for
`templates/ops.html`; writes nothing. A rate is per minute at either resolution (a
quarter hour's count over its 15 minutes, the current step's over the part that has
passed), so the quota line means the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.console.charts import LineChart, line_chart
from btsguru.store.series import TRANSPORTS, WINDOWS, Bucket, SeriesStore, Window
from btsguru.upstream.quota import QuotaGovernor

log = logging.getLogger(__name__)

DEFAULT_WINDOW = "1h"
# an x-axis label every 10 minutes (1 h) or every 3 hours (24 h)
_LABEL_EVERY = {"1h": 10, "24h": 12}
_TRANSPORT_NAMES = {"ws": "WebSocket", "sse": "SSE", "pusher": "Pusher"}
_PERCENTILES = (("p50", "series-0", 0.50), ("p99", "series-4", 0.99))


@dataclass(frozen=True)
class TimelineChart:
    id: str
    title: str
    note: str  # what the chart shows, under its title
    chart: LineChart


@dataclass(frozen=True)
class Timeline:
    window: Window
    windows: tuple[Window, ...]
    charts: tuple[TimelineChart, ...]
    error: str | None
    generated_at: datetime


def window_named(name: str | None) -> Window:
    """The window of that name; the last hour for anything else."""
    return WINDOWS.get(name or DEFAULT_WINDOW) or WINDOWS[DEFAULT_WINDOW]


class OpsTimeline:
    def __init__(self, series: SeriesStore, quota: QuotaGovernor, sports: Sequence[str],
                 clock: Clock) -> None:
        self._series = series
        self._quota = quota
        self._sports = tuple(sports)
        self._clock = clock

    async def view(self, window_name: str | None) -> Timeline:
        window = window_named(window_name)
        now = self._clock.time()
        generated_at = datetime.fromtimestamp(now, UTC)
        try:
            buckets = await self._series.read(window, now)
            limits = {sport: (await self._quota.snapshot(sport)).minute_limit
                      for sport in self._sports}
        except (RedisError, OSError) as exc:
            log.warning("ops view: time series unreadable: %s", exc)
            return Timeline(window, tuple(WINDOWS.values()), (), str(exc), generated_at)
        return Timeline(window, tuple(WINDOWS.values()),
                        self._charts(window, buckets, limits), None, generated_at)

    def _charts(self, window: Window, buckets: Sequence[Bucket],
                limits: dict[str, int]) -> tuple[TimelineChart, ...]:
        labels = [datetime.fromtimestamp(b.start, UTC).strftime("%H:%M") for b in buckets]
        every = _LABEL_EVERY.get(window.name, 10)
        step = "minute" if window.resolution.step_s == 60 else "15 minutes"

        def chart(series: Sequence[tuple[str, str, Sequence[float | None]]], *,
                  rules: Sequence[tuple[str, str, float]] = (), unit: str = "",
                  percent: bool = False, whole: bool = False) -> LineChart:
            return line_chart(labels, series, rules=rules, unit=unit, percent=percent,
                              whole=whole, label_every=every)

        def per_sport(metric: str) -> list[tuple[str, str, list[float | None]]]:
            return [(sport, f"series-{index}",
                     [b.per_minute(f"{metric}:{sport}") for b in buckets])
                    for index, sport in enumerate(self._sports)]

        return (
            TimelineChart(
                "chart-upstream", "Upstream requests per minute",
                "Requests sent to the upstream, by sport, against the per-minute quota "
                "(dashed).", chart(per_sport("up"), rules=self._quota_rules(limits))),
            TimelineChart(
                "chart-connections", "Stream connections",
                f"Open connections by transport, the peak of each {step}.",
                chart([(_TRANSPORT_NAMES[t], f"series-{i}",
                        [b.connection_count(t) for b in buckets])
                       for i, t in enumerate(TRANSPORTS)], whole=True)),
            TimelineChart(
                "chart-events", "Events published per minute",
                "Change events stored and sent to subscribers, by sport.",
                chart(per_sport("ev"))),
            TimelineChart(
                "chart-latency", "Change → client latency (ms)",
                "From an event's storing to its hand-over to the clients' connections: "
                "p50 and p99, in milliseconds.",
                chart([(name, style, [b.latency_ms(q) for b in buckets])
                       for name, style, q in _PERCENTILES], unit="ms")),
            TimelineChart(
                "chart-cache", "Cache hit rate",
                "Raw proxy answers served from the cache, of all its lookups.",
                chart([("hit rate", "series-1", [b.hit_rate() for b in buckets])],
                      percent=True)),
            TimelineChart(
                "chart-poll-failures", "Poll failures per minute",
                "Failed poller runs, by sport.", chart(per_sport("pf"))),
        )

    def _quota_rules(self, limits: dict[str, int]) -> list[tuple[str, str, float]]:
        """One dashed line when every sport has the same per-minute quota, else one per
        sport in its own colour."""
        if not limits:
            return []
        if len(set(limits.values())) == 1:
            return [("quota", "limit", float(next(iter(limits.values()))))]
        return [(f"{sport} quota", f"series-{index}", float(limits[sport]))
                for index, sport in enumerate(self._sports) if sport in limits]
