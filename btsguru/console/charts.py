"""Chart geometry for the console's server-rendered SVG: stacked bars and gauges.

Beside the flow: `console.usage` and `console.ops` build these values from their reports,
and `templates/_charts.html` draws them. Geometry is computed here (pure functions, easy
to test) and drawing stays in the template, so every label goes through Jinja's
autoescaping. No inline styles: colours come from CSS classes (`kind-live`, ...), which
the console's Content-Security-Policy allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CHART_WIDTH = 720
CHART_HEIGHT = 180
MARGIN_LEFT = 44  # room for the y-axis labels
MARGIN_BOTTOM = 22  # room for the x-axis labels
MARGIN_TOP = 8
BAR_GAP_FRACTION = 0.2
Y_TICKS = 4
GAUGE_WIDTH = 300
GAUGE_HEIGHT = 18
GAUGE_MARKS = (0.80, 0.95)  # the quota warnings' thresholds (upstream.quota.WARN_LEVELS)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    title: str


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    plot_left: float
    plot_bottom: float
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_labels: tuple[Tick, ...]
    max_value: int
    total: int
    summary: str  # the chart in words, for screen readers and tooltips


@dataclass(frozen=True)
class Gauge:
    width: int
    height: int
    used: int
    limit: int | None
    share: float | None  # used / limit, None when unlimited or unknown
    fill_width: float
    marks: tuple[Tick, ...]
    level: str  # ok, warn80, warn95, spent, unlimited


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k that is >= `value` (at least 1), so the y axis
    reads in round numbers."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return int(10 * magnitude)  # pragma: no cover - the loop always returns


def compact(value: float) -> str:
    """12, 1.2k, 12k, 1.2M: short axis labels."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            number = value / size
            text = f"{number:.1f}" if number < 10 else f"{number:.0f}"
            return text.removesuffix(".0") + suffix
    return f"{value:g}"


def stacked_bars(series: Sequence[tuple[str, Mapping[str, int]]], kinds: Sequence[str], *,
                 width: int = CHART_WIDTH, height: int = CHART_HEIGHT,
                 label_every: int = 1, unit: str = "requests") -> BarChart:
    """One stacked bar per (label, counts by kind), kinds stacked in `kinds` order from
    the bottom. Every `label_every`-th label is drawn on the x axis."""
    plot_left, plot_bottom = float(MARGIN_LEFT), float(height - MARGIN_BOTTOM)
    plot_width = width - MARGIN_LEFT - 4
    plot_height = plot_bottom - MARGIN_TOP
    totals = [sum(counts.get(k, 0) for k in kinds) for _, counts in series]
    top = nice_ceiling(max(totals, default=0))
    slot = plot_width / max(1, len(series))
    bar_width = slot * (1 - BAR_GAP_FRACTION)
    bars: list[Bar] = []
    labels: list[Tick] = []
    for index, ((label, counts), total) in enumerate(zip(series, totals, strict=True)):
        x = plot_left + index * slot + (slot - bar_width) / 2
        y = plot_bottom
        for kind in kinds:
            count = counts.get(kind, 0)
            if count <= 0:
                continue
            h = plot_height * count / top
            y -= h
            bars.append(Bar(round(x, 2), round(y, 2), round(bar_width, 2), round(h, 2), kind,
                            f"{label}: {count} {kind} of {total} {unit}"))
        if index % max(1, label_every) == 0:
            labels.append(Tick(round(x + bar_width / 2, 2), label))
    ticks = tuple(Tick(round(plot_bottom - plot_height * n / Y_TICKS, 2),
                       compact(top * n / Y_TICKS)) for n in range(Y_TICKS + 1))
    grand = sum(totals)
    busiest = max(range(len(totals)), key=totals.__getitem__) if totals else None
    summary = f"{grand} {unit} in total"
    if busiest is not None and totals[busiest]:
        summary += f"; most on {series[busiest][0]} ({totals[busiest]})"
    return BarChart(width=width, height=height, plot_left=plot_left, plot_bottom=plot_bottom,
                    bars=tuple(bars), y_ticks=ticks, x_labels=tuple(labels), max_value=top,
                    total=grand, summary=summary)


def gauge(used: int, limit: int | None, *, width: int = GAUGE_WIDTH,
          height: int = GAUGE_HEIGHT) -> Gauge:
    """A horizontal gauge of `used` against `limit` (None: unlimited), with marks at the
    80 % and 95 % warnings."""
    marks = tuple(Tick(round(width * share, 2), f"{share:.0%}") for share in GAUGE_MARKS)
    if limit is None or limit <= 0:
        return Gauge(width, height, used, limit, None, 0.0, marks,
                     "unlimited" if limit is None else "spent")
    share = used / limit
    level = "ok"
    if share >= 1:
        level = "spent"
    elif share >= GAUGE_MARKS[1]:
        level = "warn95"
    elif share >= GAUGE_MARKS[0]:
        level = "warn80"
    return Gauge(width, height, used, limit, share, round(width * min(1.0, share), 2), marks,
                 level)
