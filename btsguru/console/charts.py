"""Chart geometry for the console's server-rendered SVG: stacked bars, gauges and lines.

Beside the flow: `console.usage`, `console.ops` and `console.timeline` build these values
from their reports, and the macros of `templates/_macros.html` draw them. Geometry is
computed here (pure functions, easy to test) and drawing stays in the template, so every
label goes through Jinja's autoescaping. No inline styles: colours come from CSS classes
(`kind-live`, `series-0`, ...), which the console's Content-Security-Policy allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
LINE_CHART_WIDTH = 520  # two side by side in the console's 1100 px column
LINE_CHART_HEIGHT = 200
MARGIN_RIGHT = 8
DOT_PATH = "h0.1"  # a lone value: a zero-length stroke that round caps draw as a dot


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


@dataclass(frozen=True)
class Line:
    name: str
    style: str  # its CSS class (`series-0`, ...), shared with the legend's swatch
    path: str  # SVG path data, broken where a value is missing; "" when none is known
    points: int  # values drawn
    peak: float
    last: float | None  # the value of the newest step, when known
    title: str
    end: tuple[float, float] | None = None  # (x, y) of the newest known value: a marker


@dataclass(frozen=True)
class Rule:
    """A horizontal reference line: a limit such as a quota."""

    y: float
    value: float
    label: str
    style: str


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    lines: tuple[Line, ...]
    rules: tuple[Rule, ...]
    y_ticks: tuple[Tick, ...]
    x_labels: tuple[Tick, ...]
    top: float
    summary: str  # the chart in words, for screen readers and tooltips

    @property
    def points(self) -> int:
        return sum(line.points for line in self.lines)

    @property
    def peak(self) -> float:
        return max((line.peak for line in self.lines), default=0.0)


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


def nice_top(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k (k may be negative) that is >= `value`; 1 for
    nothing, so an empty chart still has an axis."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value * (1 - 1e-9):
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def nice_axis(value: float, *, whole: bool = False) -> tuple[float, float]:
    """(top, step) of a y axis over 0..`value`: a round step giving at most `Y_TICKS`
    intervals, whole numbers only when the values are (`whole`), and the first multiple
    of it at or above `value`."""
    if value <= 0:  # nothing yet: still an axis, 0 to 1
        return 1.0, 1.0 if whole else 1.0 / Y_TICKS
    step = nice_top(value / Y_TICKS)
    if whole:
        step = max(1.0, step)
    top = step * max(1, math.ceil(value / step * (1 - 1e-9)))
    return top, step


def axis_label(value: float, *, percent: bool = False) -> str:
    if percent:
        return f"{value:.0%}"
    return compact(value) if value >= 1000 else f"{value:.3g}"


def line_chart(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float | None]]],
               *, rules: Sequence[tuple[str, str, float]] = (), unit: str = "",
               percent: bool = False, whole: bool = False, label_every: int = 1,
               width: int = LINE_CHART_WIDTH, height: int = LINE_CHART_HEIGHT) -> LineChart:
    """One line per (name, CSS class, values) over the x `labels` (a value per label, None
    where unknown), and a dashed rule per (name, CSS class, value). The y axis runs from 0
    to a round number above every value and rule (to 100 % with `percent`; in whole
    steps with `whole`)."""
    plot_left, plot_right = float(MARGIN_LEFT), float(width - MARGIN_RIGHT)
    plot_top, plot_bottom = float(MARGIN_TOP), float(height - MARGIN_BOTTOM)
    plot_width, plot_height = plot_right - plot_left, plot_bottom - plot_top
    known = [v for _, _, values in series for v in values if v is not None]
    highest = max([*known, *(r[2] for r in rules)], default=0.0)
    top, tick_step = (1.0, 0.25) if percent else nice_axis(highest, whole=whole)
    x_step = plot_width / max(1, len(labels) - 1)

    def x_at(index: int) -> float:
        return round(plot_left + index * x_step if len(labels) > 1
                     else plot_left + plot_width / 2, 2)

    def y_at(value: float) -> float:
        return round(plot_bottom - plot_height * min(max(value, 0.0), top) / top, 2)

    def shown(value: float) -> str:
        return axis_label(value, percent=percent) + ("" if percent or not unit else f" {unit}")

    lines = tuple(_line(name, style, values, x_at, y_at, shown)
                  for name, style, values in series)
    drawn_rules = tuple(Rule(y_at(value), value, f"{name} {shown(value)}", style)
                        for name, style, value in rules)
    ticks = tuple(Tick(y_at(tick_step * n), axis_label(tick_step * n, percent=percent))
                  for n in range(round(top / tick_step) + 1))
    x_labels = tuple(Tick(x_at(index), label) for index, label in enumerate(labels)
                     if index % max(1, label_every) == 0 or index == len(labels) - 1)
    summary = "; ".join(line.title for line in lines) or "no data"
    return LineChart(width=width, height=height, plot_left=plot_left, plot_right=plot_right,
                     plot_top=plot_top, plot_bottom=plot_bottom, lines=lines,
                     rules=drawn_rules, y_ticks=ticks, x_labels=x_labels, top=top,
                     summary=summary)


def _line(name: str, style: str, values: Sequence[float | None],
          x_at: Callable[[int], float], y_at: Callable[[float], float],
          shown: Callable[[float], str]) -> Line:
    parts: list[str] = []
    end: tuple[float, float] | None = None
    for index, value in enumerate(values):
        if value is None:
            continue
        joined = index > 0 and values[index - 1] is not None
        x, y = x_at(index), y_at(value)
        parts.append(f"{'L' if joined else 'M'}{x},{y}")
        if not joined and (index + 1 >= len(values) or values[index + 1] is None):
            parts.append(DOT_PATH)  # a lone value
        end = (x, y)
    known = [v for v in values if v is not None]
    peak = max(known, default=0.0)
    last = values[-1] if values else None
    if not known:
        title = f"{name}: no data"
    else:
        title = f"{name}: highest {shown(peak)}" + ("" if last is None else
                                                   f", now {shown(last)}")
    return Line(name, style, " ".join(parts), len(known), peak, last, title, end)
