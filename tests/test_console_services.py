"""The console's own services without HTTP: chart geometry, the `next` rule, login
throttling and sessions (on the real Redis, a prefix per test)."""

from __future__ import annotations

import pytest

from btsguru.clock import FakeClock
from btsguru.console.charts import compact, gauge, nice_ceiling, stacked_bars
from btsguru.console.sessions import SessionStore
from btsguru.console.throttle import LoginThrottle, ThrottleLimits
from btsguru.handlers.console_base import safe_next
from btsguru.store.redis import open_redis


@pytest.mark.parametrize(("value", "expected"), [
    (0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (10, 10), (11, 20), (420, 500), (5001, 10000)])
def test_nice_ceiling(value, expected):
    assert nice_ceiling(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (0, "0"), (12, "12"), (1200, "1.2k"), (12000, "12k"), (2_500_000, "2.5M"), (1000, "1k")])
def test_compact(value, expected):
    assert compact(value) == expected


def test_stacked_bars_are_proportional_and_stacked_in_kind_order():
    chart = stacked_bars([("a", {"live": 3, "raw": 1}), ("b", {}), ("c", {"raw": 2})],
                         ("live", "raw"), width=300, height=122)
    assert chart.max_value == 5 and chart.total == 6
    plot_height = chart.plot_bottom - 8
    live_a, raw_a, raw_c = chart.bars
    assert (live_a.kind, raw_a.kind, raw_c.kind) == ("live", "raw", "raw")
    assert live_a.height == pytest.approx(plot_height * 3 / 5, abs=0.01)
    assert live_a.y + live_a.height == pytest.approx(chart.plot_bottom, abs=0.01)
    assert raw_a.y + raw_a.height == pytest.approx(live_a.y, abs=0.01)  # on top of live
    assert raw_c.x > raw_a.x
    assert raw_a.title == "a: 1 raw of 4 requests"
    assert chart.summary == "6 requests in total; most on a (4)"
    assert [t.label for t in chart.y_ticks] == ["0", "1.25", "2.5", "3.75", "5"]


def test_an_empty_chart_has_no_bars():
    chart = stacked_bars([("x", {}), ("y", {})], ("live",))
    assert chart.bars == () and chart.total == 0 and chart.summary == "0 requests in total"


@pytest.mark.parametrize(("used", "limit", "level", "fill"), [
    (0, 100, "ok", 0.0), (79, 100, "ok", 237.0), (80, 100, "warn80", 240.0),
    (95, 100, "warn95", 285.0), (100, 100, "spent", 300.0), (150, 100, "spent", 300.0),
    (5, None, "unlimited", 0.0)])
def test_gauge_levels_follow_the_80_and_95_marks(used, limit, level, fill):
    g = gauge(used, limit)
    assert (g.level, g.fill_width) == (level, fill)
    assert [m.position for m in g.marks] == [240.0, 285.0]


@pytest.mark.parametrize(("raw", "expected"), [
    (None, "/console/keys"), ("", "/console/keys"), ("/console/usage", "/console/usage"),
    ("/console/users?q=ann&offset=50", "/console/users?q=ann&offset=50"),
    ("/console", "/console"), ("/v1/usage", "/console/keys"),
    ("https://evil.example/console", "/console/keys"), ("//evil.example", "/console/keys"),
    ("/console//evil.example", "/console/keys"), ("/\\evil.example", "/console/keys"),
    ("/console/keys\r\nSet-Cookie: x=1", "/console/keys"), ("/consolex", "/console/keys"),
    ("javascript:alert(1)", "/console/keys"), ("/console/../v1", "/console/keys"),
])
def test_safe_next_accepts_only_local_console_paths(raw, expected):
    assert safe_next(raw) == expected


async def test_throttle_counts_failures_per_account_and_per_address(test_config):
    stores = open_redis(test_config)
    try:
        throttle = LoginThrottle(stores, ThrottleLimits(account_max=2, ip_max=3, signup_max=1))
        assert await throttle.blocked("a@example.com", "1.1.1.1") is None
        await throttle.failed("A@example.com ", "1.1.1.1")
        await throttle.failed("a@example.com", "1.1.1.1")
        wait = await throttle.blocked("a@example.com", "9.9.9.9")
        assert wait is not None and 0 < wait <= 15 * 60
        await throttle.succeeded("a@example.com")
        assert await throttle.blocked("a@example.com", "9.9.9.9") is None
        await throttle.failed("b@example.com", "1.1.1.1")  # the address's third
        assert await throttle.blocked("c@example.com", "1.1.1.1") is not None
        assert await throttle.blocked("c@example.com", "2.2.2.2") is None
        assert await throttle.signup_allowed("5.5.5.5") is None
        assert (await throttle.signup_allowed("5.5.5.5") or 0) > 0
    finally:
        await stores.close()


async def test_sessions_expire_and_end_per_user(test_config):
    stores = open_redis(test_config)
    clock = FakeClock()
    try:
        store = SessionStore(stores, clock, idle_s=3600, max_age_s=7200)
        one, two = await store.create(7), await store.create(7)
        other = await store.create(8)
        assert one.id != two.id and len(one.id) >= 43
        got = await store.get(one.id)
        assert got is not None and got.user_id == 7
        assert await store.get("not-a-session") is None
        # nothing in Redis names the session id itself
        names = [k.decode() async for k in stores.data.scan_iter(
            match=test_config.redis_cache_prefix + "*")]
        assert names and not any(one.id in n for n in names)
        assert await store.delete_user_sessions(7, keep=two.id) == 1
        assert await store.get(one.id) is None and await store.get(two.id) is not None
        clock.advance(7201)  # past the absolute lifetime, however active
        assert await store.get(two.id) is None
        await store.delete(other.id)
        assert await store.get(other.id) is None
    finally:
        await stores.close()
