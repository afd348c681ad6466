"""The ops page's charts over time: line geometry (gaps, lone points, the quota rule), and
the charts fragment over HTTP drawing the series that the processes recorded."""

from __future__ import annotations

import re
from html import unescape

import pytest

from btsguru.clock import FakeClock
from btsguru.console.charts import DOT_PATH, line_chart, nice_axis, nice_top
from btsguru.store.cache import CacheState
from btsguru.store.series import SeriesRecorder, SeriesStore
from tests.console_fixtures import console_app

HX = {"HX-Request": "true"}


def test_lines_break_where_values_are_missing_and_lone_values_are_dots():
    chart = line_chart(["a", "b", "c", "d", "e"],
                       [("one", "series-0", [1.0, 2.0, None, 4.0, None]),
                        ("none", "series-1", [None] * 5)],
                       rules=[("quota", "limit", 10.0)])
    one, none = chart.lines
    assert one.path.count("M") == 2 and one.path.count("L") == 1
    assert one.path.endswith(DOT_PATH) and one.points == 3 and one.peak == 4.0
    assert one.last is None and "highest 4" in one.title
    assert none.path == "" and none.points == 0 and none.title == "none: no data"
    assert chart.top == 10.0  # the quota is above every value: the axis reaches it
    (rule,) = chart.rules
    assert rule.y == chart.plot_top and rule.label == "quota 10"
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]
    xs = [float(p.split(",")[0][1:]) for p in one.path.split() if p[0] in "ML"]
    labels = {t.label: t.position for t in chart.x_labels}
    assert xs == [chart.plot_left, labels["b"], labels["d"]]
    assert labels["a"] == chart.plot_left and labels["e"] == chart.plot_right
    assert one.end is not None and one.end[0] == labels["d"]  # the newest known value
    assert none.end is None


def test_percent_charts_run_to_one_hundred_percent_and_tops_are_round():
    chart = line_chart(["a", "b"], [("hit rate", "series-1", [0.5, 0.25])], percent=True)
    assert chart.top == 1.0 and chart.y_ticks[-1].label == "100%"
    assert "highest 50%" in chart.lines[0].title
    assert [nice_top(v) for v in (0, 0.3, 1, 3, 7, 11, 0.02)] == [1, 0.5, 1, 5, 10, 20, 0.02]


@pytest.mark.parametrize(("value", "whole", "axis"), [
    (0, False, (1.0, 0.25)), (0, True, (1.0, 1.0)), (1, True, (1.0, 1.0)),
    (5, True, (6.0, 2.0)), (7, False, (8.0, 2.0)), (60, False, (60.0, 20.0)),
    (100, False, (100.0, 50.0)), (0.3, False, (0.3, 0.1)), (0.3, True, (1.0, 1.0)),
])
def test_axes_step_in_round_numbers_and_whole_ones_for_counts(value, whole, axis):
    top, step = nice_axis(value, whole=whole)
    assert (round(top, 9), round(step, 9)) == axis


def _chart(text: str, chart_id: str) -> str:
    match = re.search(rf'<figure class="chart line-chart" id="{chart_id}".*?</figure>', text,
                      re.S)
    assert match, f"no {chart_id} in:\n{text[:2000]}"
    return match.group(0)


def _peaks(figure: str) -> dict[str, float]:
    return {unescape(name): float(peak) for name, peak in re.findall(
        r'<path class="line [^"]*" d="[^"]*" data-series="([^"]+)" data-points="\d+" '
        r'data-peak="([\d.]+)"', figure)}


async def test_the_charts_fragment_draws_what_the_processes_recorded(tmp_path):
    async with console_app(tmp_path, BTSGURU_SPORTS="football,hockey",
                           UPSTREAM_MINUTE_QUOTA="40") as c:
        admin = await c.admin()
        # two processes, on one fake clock so that their flushes share a minute for sure
        clock = FakeClock(c.services.clock.time())
        one, two = (SeriesRecorder(SeriesStore(c.services.redis), clock, process_id=name)
                    for name in ("host1:1:a", "host2:1:b"))
        one.watch_connections(lambda: {"ws": 2, "sse": 1})
        two.watch_connections(lambda: {"pusher": 5})
        for _ in range(6):
            one.upstream_request("football")
        for _ in range(3):
            two.upstream_request("football")
        two.upstream_request("hockey")
        one.events_published("football", 4)
        two.poll_failed("hockey")
        for _ in range(9):
            one.delivered(3.0)
        two.delivered(400.0)
        assert await one.flush() and await two.flush()
        # and this server's own recorder, through the raw proxy's cache hook
        for state in (CacheState.HIT, CacheState.HIT, CacheState.MISS, CacheState.HIT):
            c.services.cache.counters.count(state)
        assert await c.services.series.flush()

        page = await admin.get("/console/ops/charts?window=1h", headers=HX)
        assert page.status == 200
        assert page.text.lstrip().startswith('<section id="ops-charts"')
        assert 'hx-trigger="every 10s"' in page.text and 'data-window="1h"' in page.text
        assert 'id="ops-panel"' not in page.text  # the fragment alone

        upstream = _chart(page.text, "chart-upstream")
        assert 'role="img"' in upstream and 'aria-label="Upstream requests per minute' in upstream
        assert _peaks(upstream) == {"football": 9.0, "hockey": 1.0}
        assert re.search(r'<line class="rule limit"[^>]*data-value="40.0"', upstream)
        assert "quota 40" in upstream  # in the legend
        assert _peaks(_chart(page.text, "chart-connections")) == \
            {"WebSocket": 2.0, "SSE": 1.0, "Pusher": 5.0}
        assert _peaks(_chart(page.text, "chart-events")) == {"football": 4.0, "hockey": 0.0}
        assert _peaks(_chart(page.text, "chart-poll-failures")) == \
            {"football": 0.0, "hockey": 1.0}
        assert _peaks(_chart(page.text, "chart-cache")) == {"hit rate": 0.75}
        latency = _peaks(_chart(page.text, "chart-latency"))
        assert 2.5 < latency["p50"] <= 5 and 250 < latency["p99"] <= 500
        for figure in re.findall(r'<figure class="chart line-chart".*?</figure>', page.text,
                                 re.S):
            assert "<title>" in figure and '<ul class="legend">' in figure
            assert int(re.search(r'data-points="(\d+)"', figure).group(1)) >= 1

        day = await admin.get("/console/ops/charts?window=24h", headers=HX)
        assert 'data-window="24h"' in day.text and "Last 24 hours" in day.text
        assert _peaks(_chart(day.text, "chart-upstream"))["football"] > 0

        # without htmx: the whole page for that window; the panel's refresh: no charts
        whole = await admin.get("/console/ops/charts?window=24h")
        assert whole.url.endswith("/console/ops?window=24h")
        assert 'id="ops-charts"' in whole.text and 'id="ops-panel"' in whole.text
        assert 'aria-current="true">Last 24 hours' in whole.text
        panel = await admin.get("/console/ops", headers=HX)
        assert 'id="ops-panel"' in panel.text and 'id="ops-charts"' not in panel.text
        odd = await admin.get("/console/ops?window=1y")
        assert odd.status == 200 and 'data-window="1h"' in odd.text


async def test_the_charts_are_for_operators_only(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("plain@example.com")
        page = await client.get("/console/ops/charts", headers=HX)
        assert page.status == 403 and "ops-charts" not in page.text
