"""The ops page's time series on real Redis: processes sum, a dead process's gauge drops
out, the rings stay bounded however long the clock runs, percentiles come from summed
bins, and the quarter-hour ring rolls the day up."""

from __future__ import annotations

import pytest

from btsguru.clock import FakeClock
from btsguru.store.redis import open_redis
from btsguru.store.series import (
    CACHE_ALL,
    CACHE_HIT,
    GAUGE_STALE_S,
    LATENCY_BINS,
    LATENCY_BOUNDS_MS,
    MAX_KEYS,
    MINUTES,
    QUARTERS,
    WINDOWS,
    SeriesRecorder,
    SeriesStore,
    latency_bin,
    max_fields,
    percentile,
)

# a whole quarter hour (and so a whole minute): steps start where the test expects
START = 1_699_999_200.0
HOUR, DAY = WINDOWS["1h"], WINDOWS["24h"]


@pytest.fixture
def stores(test_config, io_loop):
    stores = open_redis(test_config)
    yield stores
    io_loop.run_sync(stores.close)


def recorder(stores, clock, name, connections=None):
    rec = SeriesRecorder(SeriesStore(stores), clock, process_id=name)
    if connections is not None:
        rec.watch_connections(lambda: connections)
    return rec


async def test_two_processes_add_to_the_same_minute(stores):
    clock = FakeClock(START + 5)
    a = recorder(stores, clock, "host1:1:a", {"ws": 3, "sse": 1})
    b = recorder(stores, clock, "host2:7:b", {"ws": 2, "pusher": 4, "other": 9})
    for _ in range(3):
        a.upstream_request("football")
    for _ in range(4):
        b.upstream_request("football")
    b.upstream_request("hockey")
    a.events_published("football", 5)
    b.events_published("football", 2)
    a.poll_failed("hockey")
    for hit in (True, True, False):
        a.cache_lookup(hit)
    b.cache_lookup(True)
    assert a.pending() and b.pending()
    assert await a.flush() and await b.flush()
    assert not a.pending()

    now = (await SeriesStore(stores).read(HOUR, clock.time()))[-1]
    assert now.seen and now.start == START
    assert now.count("up:football") == 7 and now.count("up:hockey") == 1
    assert now.count("ev:football") == 7 and now.count("pf:hockey") == 1
    assert (now.count(CACHE_HIT), now.count(CACHE_ALL)) == (3, 4)
    assert now.hit_rate() == 0.75
    assert now.connections == {"ws": 5, "sse": 1, "pusher": 4}  # unknown kinds: not kept
    assert now.per_minute("up:football") == 7.0

    # flushing again adds only what is new, never the same counts twice
    a.upstream_request("football")
    assert await a.flush() and await b.flush()
    now = (await SeriesStore(stores).read(HOUR, clock.time()))[-1]
    assert now.count("up:football") == 8 and now.count("ev:football") == 7


async def test_a_minute_nobody_flushed_is_no_data_not_zero(stores):
    clock = FakeClock(START)
    a = recorder(stores, clock, "p1", {"ws": 1})
    await a.flush()
    clock.advance(180)
    a.upstream_request("football")
    await a.flush()
    buckets = await SeriesStore(stores).read(HOUR, clock.time())
    assert len(buckets) == HOUR.points
    assert [b.seen for b in buckets[-4:]] == [True, False, False, True]
    assert buckets[-2].per_minute("up:football") is None
    assert buckets[-2].connection_count("ws") is None
    assert buckets[-4].per_minute("up:football") == 0.0
    assert buckets[-1].per_minute("up:football") == 1.0
    assert buckets[-1].start - buckets[-4].start == 180


async def test_a_dead_process_drops_out_of_the_connections(stores):
    clock = FakeClock(START + 1)
    alive = {"ws": 3}
    a = recorder(stores, clock, "alive", alive)
    b = recorder(stores, clock, "dies", {"sse": 10})
    await a.flush()
    await b.flush()
    store = SeriesStore(stores)
    assert (await store.read(HOUR, clock.time()))[-1].connections == \
        {"ws": 3, "sse": 10, "pusher": 0}
    # b stops flushing (it died); a keeps sampling, within the same minute
    for _ in range(4):
        clock.advance(5)
        await a.flush()
    assert clock.time() - (START + 1) > GAUGE_STALE_S
    assert (await store.read(HOUR, clock.time()))[-1].connections == \
        {"ws": 3, "sse": 0, "pusher": 0}
    # the next minute never had it
    clock.advance(60)
    alive["ws"] = 1
    await a.flush()
    buckets = await store.read(HOUR, clock.time())
    assert buckets[-1].connections == {"ws": 1, "sse": 0, "pusher": 0}


async def test_a_gauge_keeps_each_process_peak_within_the_step(stores):
    clock = FakeClock(START + 1)
    seen = {"ws": 2}
    a = recorder(stores, clock, "p", seen)
    for value in (2, 9, 4):
        seen["ws"] = value
        await a.flush()
        clock.advance(5)
    store = SeriesStore(stores)
    assert (await store.read(HOUR, clock.time()))[-1].connection_count("ws") == 9
    assert (await store.read(DAY, clock.time()))[-1].connection_count("ws") == 9


@pytest.mark.parametrize(("bins", "q", "expected"), [
    ([], 0.5, None),
    ([0] * LATENCY_BINS, 0.99, None),
    ([4] + [0] * (LATENCY_BINS - 1), 0.5, 0.5),  # half way into (0, 1] ms
    ([0, 0, 10] + [0] * (LATENCY_BINS - 3), 0.5, 3.75),  # (2.5, 5]: 2.5 + 2.5 * 5/10
    ([0, 0, 99, 1] + [0] * (LATENCY_BINS - 4), 0.99, 5.0),
    ([0, 0, 99, 1] + [0] * (LATENCY_BINS - 4), 1.0, 10.0),
    ([1] + [0] * (LATENCY_BINS - 2) + [1], 0.99, 10_000.0),  # the overflow bin
])
def test_percentiles_come_from_the_bins(bins, q, expected):
    assert percentile(bins, q) == expected


def test_latencies_fall_in_the_bins_upper_bounds_included():
    assert latency_bin(-3) == 0 and latency_bin(1) == 0 and latency_bin(1.01) == 1
    assert latency_bin(LATENCY_BOUNDS_MS[-1]) == LATENCY_BINS - 2
    assert latency_bin(60_000) == LATENCY_BINS - 1


async def test_latency_percentiles_sum_the_bins_of_every_process(stores):
    clock = FakeClock(START)
    a, b = recorder(stores, clock, "a"), recorder(stores, clock, "b")
    for _ in range(98):
        a.delivered(3.0)  # (2.5, 5]
    b.delivered(40.0)  # (25, 50]
    b.delivered(40.0)
    await a.flush()
    await b.flush()
    now = (await SeriesStore(stores).read(HOUR, clock.time()))[-1]
    assert sum(now.latency) == 100
    assert now.latency[latency_bin(3.0)] == 98 and now.latency[latency_bin(40.0)] == 2
    assert 2.5 < (now.latency_ms(0.5) or 0) <= 5.0
    assert 25 < (now.latency_ms(0.99) or 0) <= 50
    assert (await SeriesStore(stores).read(HOUR, clock.time()))[-2].latency_ms(0.5) is None


async def test_the_day_rolls_minutes_up_into_quarter_hours(stores):
    clock = FakeClock(START)
    a = recorder(stores, clock, "a", {"ws": 1})
    # 20 minutes: 2 requests a minute, plus one failure every 10 minutes
    for minute in range(20):
        a.upstream_request("football")
        a.upstream_request("football")
        if minute % 10 == 0:
            a.poll_failed("football")
        await a.flush()
        clock.advance(60)
    store = SeriesStore(stores)
    hour = await store.read(HOUR, clock.time())
    assert [b.count("up:football") for b in hour[-21:]] == [2] * 20 + [0]
    day = await store.read(DAY, clock.time())
    assert len(day) == DAY.points
    first, second = day[-2], day[-1]
    assert first.start == START and second.start == START + 900
    assert first.count("up:football") == 30 and second.count("up:football") == 10
    assert first.count("pf:football") == 2 and second.count("pf:football") == 0
    assert first.per_minute("up:football") == 2.0  # 30 over 15 minutes
    assert second.covered_s == 300 and second.per_minute("up:football") == 2.0
    assert not day[-3].seen


async def test_memory_stays_bounded_however_long_it_runs(stores):
    """26 hours of two processes flushing every minute: never more than the rings' keys,
    each with no more fields than the documented bound."""
    clock = FakeClock(START)
    sports = ("football", "basketball", "hockey", "baseball", "american-football")
    recorders = [recorder(stores, clock, f"host:{n}", {"ws": n, "sse": 1, "pusher": 2})
                 for n in (1, 2)]
    for minute in range(26 * 60):
        for rec in recorders:
            for sport in sports:
                rec.upstream_request(sport)
                rec.events_published(sport, 2)
                rec.poll_failed(sport)
            rec.cache_lookup(minute % 2 == 0)
            rec.delivered(minute % 12_000)
            await rec.flush()
        clock.advance(60)
    store = SeriesStore(stores)
    keys = [k async for k in stores.data.scan_iter(match=store.pattern(), count=1000)]
    assert len(keys) == MAX_KEYS == MINUTES.slots + QUARTERS.slots
    bound = max_fields(len(sports), len(recorders))
    for key in keys:
        assert await stores.data.hlen(key) <= bound, key
        assert 0 < await stores.data.ttl(key) <= QUARTERS.ttl_s
    # and what is read is still right: the last full minute and quarter hour
    hour = await store.read(HOUR, clock.time())
    assert hour[-2].count("up:football") == 2 and hour[-2].connections["ws"] == 3
    day = await store.read(DAY, clock.time())
    assert day[-2].count("up:hockey") == 2 * 15 and all(b.seen for b in day[:-1])


async def test_a_write_older_than_its_ring_slot_is_dropped(stores):
    """A process whose clock is a whole ring behind must not wipe newer data."""
    clock = FakeClock(START + MINUTES.slots * 60)
    late_clock = FakeClock(START)  # the same minute slot, 64 minutes earlier
    a = recorder(stores, clock, "on-time")
    late = recorder(stores, late_clock, "late")
    a.upstream_request("football")
    await a.flush()
    late.upstream_request("football")
    late.upstream_request("football")
    await late.flush()
    now = (await SeriesStore(stores).read(HOUR, clock.time()))[-1]
    assert now.count("up:football") == 1


async def test_a_failed_flush_keeps_its_counts(tmp_path, io_loop):
    from tests.conftest import make_test_config

    down = open_redis(make_test_config(tmp_path, REDIS_URL="redis://127.0.0.1:1/0"))
    try:
        rec = SeriesRecorder(SeriesStore(down), FakeClock(START), process_id="p")
        rec.upstream_request("football")
        assert not await rec.flush()
        assert rec.pending()
        rec.upstream_request("football")
        assert not await rec.flush()
        assert rec._take() == {"up:football": 2}
    finally:
        await down.close()
