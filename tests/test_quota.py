"""The quota governor on the real Redis: day and minute budgets, the poller reserve, the
upstream's headers, the walls, warnings, and two processes racing for the same budget."""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import pytest

from btsguru.clock import FakeClock
from btsguru.store.redis import open_redis
from btsguru.upstream import QuotaGovernor, RateLimitInfo, parse_rate_limits
from btsguru.upstream.quota import seconds_until_utc_midnight, utc_day
from tests.upstream_fixtures import redis_stores, with_quota
from tests.waiting import wait_until


def run(coro):
    return asyncio.run(coro)


async def take(governor, sport, purpose, n):
    return [await governor.acquire(sport, purpose) for _ in range(n)]


def test_day_budget_is_a_hard_limit_and_resets_at_utc_midnight(test_config):
    config = with_quota(test_config, day=5, minute=100)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, day_reserve_fraction=0)
            assert await take(governor, "football", "poller", 7) == [True] * 5 + [False] * 2
            decision = await governor.try_acquire("football", "poller")
            assert decision.token is None and decision.reason == "day"
            assert decision.retry_after_s == pytest.approx(seconds_until_utc_midnight(clock.time()))
            state = await governor.snapshot("football")
            assert (state.day_used, state.day_limit, state.day_remaining) == (5, 5, 0)
            assert state.level == "spent"
            # another sport's host has its own budget
            assert await governor.acquire("hockey", "poller")
            # the day key expires after its day (plus the grace)
            ttl = await stores.queue.ttl(stores.keys.key("quota", "{football}", "day",
                                                         utc_day(clock.time())))
            assert 0 < ttl <= seconds_until_utc_midnight(clock.time()) + 3600
            clock.advance(seconds_until_utc_midnight(clock.time()) + 1)
            assert await governor.acquire("football", "poller")
            assert (await governor.snapshot("football")).day_used == 1

    run(scenario())


def test_users_cannot_touch_the_pollers_reserve_of_the_day(test_config):
    config = with_quota(test_config, day=10, minute=100)

    async def scenario():
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, FakeClock(), day_reserve_fraction=0.2)
            assert await take(governor, "football", "user", 10) == [True] * 8 + [False] * 2
            decision = await governor.try_acquire("football", "user")
            assert decision.reason == "day_reserved" and decision.window == "day"
            assert await take(governor, "football", "poller", 3) == [True, True, False]
            state = await governor.snapshot("football")
            assert (state.day_used, state.day_reserve) == (10, 2)

    run(scenario())


def test_users_get_only_a_share_of_the_minute_window(test_config):
    config = with_quota(test_config, day=1000, minute=10)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, minute_reserve_fraction=0.3)
            assert await take(governor, "basketball", "user", 9) == [True] * 7 + [False] * 2
            decision = await governor.try_acquire("basketball", "user")
            assert decision.reason == "minute_reserved"
            assert decision.retry_after_s == pytest.approx(governor.window_s)
            assert await take(governor, "basketball", "poller", 4) == [True] * 3 + [False]
            decision = await governor.try_acquire("basketball", "poller")
            assert decision.reason == "minute"

    run(scenario())


def test_minute_window_slides(test_config):
    config = with_quota(test_config, day=1000, minute=3)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, minute_reserve_fraction=0)
            window = governor.window_s
            assert window >= 60
            assert await governor.acquire("hockey", "poller")        # t = 0
            clock.advance(20)
            assert await take(governor, "hockey", "poller", 2) == [True, True]  # t = 20
            clock.advance(10)                                       # t = 30
            decision = await governor.try_acquire("hockey", "poller")
            assert decision.token is None and decision.reason == "minute"
            assert decision.retry_after_s == pytest.approx(window - 30)
            clock.advance(window - 30 - 0.01)  # just before the first token leaves
            assert not await governor.acquire("hockey", "poller")
            clock.advance(0.01)                # the t=0 token has left the window
            assert await governor.acquire("hockey", "poller")
            assert not await governor.acquire("hockey", "poller")
            state = await governor.snapshot("hockey")
            assert (state.minute_used, state.minute_remaining) == (3, 0)
            clock.advance(20)                  # both t=20 tokens leave
            assert await take(governor, "hockey", "poller", 3) == [True, True, False]

    run(scenario())


def test_wait_acquire_sleeps_on_the_clock_until_the_window_frees(test_config):
    config = with_quota(test_config, day=1000, minute=2)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, minute_reserve_fraction=0)
            assert await take(governor, "baseball", "poller", 2) == [True, True]
            started = clock.time()
            # a wait shorter than the time to the next free token gives up at once
            assert not await governor.wait_acquire("baseball", timeout_s=10)
            assert clock.time() == started

            async def acquired_at() -> tuple[bool, float]:
                took = await governor.wait_acquire("baseball", timeout_s=120)
                return took, clock.time()

            task = asyncio.create_task(acquired_at())
            for _ in range(200):
                # the waiter is asleep on the clock (or done): a second's step is seen
                # at once, and the clock tells exactly when it got its token
                await wait_until(lambda: task.done() or clock.sleeping(),
                                 what="the waiter asleep on the clock")
                if task.done():
                    break
                clock.advance(1)
            took, at = task.result()
            assert took is True
            assert at - started >= governor.window_s  # not before the window frees
            assert at - started <= governor.window_s + 2

    run(scenario())


def test_headers_tighten_the_budget(test_config):
    config = with_quota(test_config, day=100, minute=50)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, day_reserve_fraction=0,
                                     minute_reserve_fraction=0)
            first = (await governor.try_acquire("football", "poller")).token
            # two more requests go out before the first one's answer arrives
            assert await take(governor, "football", "poller", 2) == [True, True]
            # the first answer: 3 left after it, so only 1 beyond the two in flight
            await governor.note_limits("football", RateLimitInfo(day_limit=7500, day_remaining=3),
                                       first)
            assert await take(governor, "football", "poller", 2) == [True, False]
            state = await governor.snapshot("football")
            assert state.day_remaining == 0 and state.level == "spent"
            assert (state.upstream_day_limit, state.upstream_day_remaining) == (7500, 3)

    run(scenario())


def test_newest_upstream_report_wins_and_an_older_one_is_ignored(test_config):
    config = with_quota(test_config, day=100, minute=50)

    async def scenario():
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, FakeClock(), day_reserve_fraction=0,
                                     minute_reserve_fraction=0)
            tokens = [(await governor.try_acquire("hockey", "poller")).token for _ in range(3)]
            await governor.note_limits("hockey", RateLimitInfo(day_remaining=10), tokens[2])
            # a late answer to an earlier request says more was left: ignored
            await governor.note_limits("hockey", RateLimitInfo(day_remaining=50), tokens[0])
            assert (await governor.snapshot("hockey")).day_remaining == 10
            # without a token the report covers everything taken so far
            await governor.note_limits("hockey", RateLimitInfo(day_remaining=1))
            assert await take(governor, "hockey", "poller", 2) == [True, False]

    run(scenario())


def test_minute_headers_and_limits_tighten_for_one_window(test_config):
    config = with_quota(test_config, day=1000, minute=50)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock, minute_reserve_fraction=0)
            token = (await governor.try_acquire("football", "poller")).token
            await governor.note_limits("football", RateLimitInfo(minute_remaining=2), token)
            assert await take(governor, "football", "poller", 3) == [True, True, False]
            decision = await governor.try_acquire("football", "poller")
            assert decision.reason == "minute"
            assert 0 < decision.retry_after_s <= governor.window_s
            clock.advance(governor.window_s)
            assert await governor.acquire("football", "poller")
            # the upstream's own per-minute limit, when lower than ours, is the limit
            await governor.note_limits("football", RateLimitInfo(minute_limit=3))
            assert await take(governor, "football", "poller", 3) == [True, True, False]
            assert (await governor.snapshot("football")).minute_limit == 3

    run(scenario())


def test_walls_reported_by_the_upstream(test_config):
    config = with_quota(test_config, day=1000, minute=100)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, clock)
            await governor.mark_minute_spent("baseball")
            decision = await governor.try_acquire("baseball", "poller")
            assert decision.reason == "minute_spent"
            assert decision.retry_after_s == pytest.approx(governor.window_s, abs=0.1)
            assert (await governor.snapshot("baseball")).minute_remaining == 0
            await governor.mark_day_spent("baseball")
            assert not await governor.acquire("baseball", "poller")
            assert not await governor.acquire("baseball", "user")
            assert not await governor.wait_acquire("baseball", timeout_s=300)
            state = await governor.snapshot("baseball")
            assert state.day_spent and state.level == "spent" and state.day_remaining == 0
            clock.advance(seconds_until_utc_midnight(clock.time()) + 1)
            assert await governor.acquire("baseball", "poller")

    run(scenario())


def test_day_warnings_log_once_per_level_across_processes(test_config, caplog):
    config = with_quota(test_config, day=20, minute=1000)

    async def scenario():
        clock = FakeClock()
        async with redis_stores(config) as one, redis_stores(config) as two:
            first = QuotaGovernor(one, config, clock, day_reserve_fraction=0)
            second = QuotaGovernor(two, config, clock, day_reserve_fraction=0)
            with caplog.at_level(logging.WARNING, logger="btsguru.upstream.quota"):
                await take(first, "football", "poller", 15)
                assert not caplog.records
                assert (await first.snapshot("football")).level == "ok"
                await take(second, "football", "poller", 1)  # 16 of 20: 80 %
                assert (await first.snapshot("football")).level == "warn80"
                await take(first, "football", "poller", 3)   # 19 of 20: 95 %
                assert (await first.snapshot("football")).level == "warn95"
                await take(second, "football", "poller", 3)
            messages = [r.getMessage() for r in caplog.records]
            assert sum("80% of the day's quota" in m for m in messages) == 1, messages
            assert sum("95% of the day's quota" in m for m in messages) == 1, messages
            assert all("football" in m for m in messages)

    run(scenario())


def test_warning_counts_what_the_upstream_reports(test_config, caplog):
    config = with_quota(test_config, day=100, minute=1000)

    async def scenario():
        async with redis_stores(config) as stores:
            governor = QuotaGovernor(stores, config, FakeClock())
            token = (await governor.try_acquire("hockey", "poller")).token
            # another user of the same key spent most of the day already
            await governor.note_limits("hockey", RateLimitInfo(day_remaining=10), token)
            with caplog.at_level(logging.WARNING, logger="btsguru.upstream.quota"):
                assert await governor.acquire("hockey", "poller")
            messages = [r.getMessage() for r in caplog.records]
            assert any("80% of the day's quota used (91 of 100, 9 left)" in m for m in messages)
            assert not any("95%" in m for m in messages)

    run(scenario())


def _race(config, purpose_for, attempts_per_worker, workers, seed):
    """Workers in threads, each with its own event loop, Redis clients and governor (as
    separate processes would be), all taking from one sport's budget at once."""
    barrier = threading.Barrier(workers)
    results: list[list[tuple[str, bool]]] = [[] for _ in range(workers)]

    def worker(index):
        rng = random.Random(seed * 100 + index)

        async def go():
            stores = open_redis(config)
            try:
                governor = QuotaGovernor(stores, config, FakeClock())
                await stores.queue.ping()
                barrier.wait(timeout=10)

                async def one():
                    purpose = purpose_for(rng)
                    results[index].append((purpose, await governor.acquire("football", purpose)))

                await asyncio.gather(*(one() for _ in range(attempts_per_worker)))
            finally:
                await stores.close()

        asyncio.run(go())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return [item for per_worker in results for item in per_worker]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_processes_never_exceed_the_minute_limit(tmp_path, seed):
    from tests.conftest import make_test_config, purge_redis_prefix

    rng = random.Random(seed)
    minute = rng.randint(5, 40)
    config = make_test_config(tmp_path, UPSTREAM_MINUTE_QUOTA=str(minute),
                              UPSTREAM_DAILY_QUOTA="100000")
    try:
        outcomes = _race(config, lambda r: "poller", attempts_per_worker=3 * minute,
                         workers=2, seed=seed)
        assert len(outcomes) == 6 * minute
        # pollers alone: exactly the limit is granted, never more
        assert sum(ok for _, ok in outcomes) == minute
    finally:
        purge_redis_prefix(config)


@pytest.mark.parametrize("seed", [4, 5])
def test_concurrent_mixed_purposes_respect_limit_and_reserve(tmp_path, seed):
    from tests.conftest import make_test_config, purge_redis_prefix

    rng = random.Random(seed)
    day = rng.randint(10, 60)
    config = make_test_config(tmp_path, UPSTREAM_MINUTE_QUOTA="100000",
                              UPSTREAM_DAILY_QUOTA=str(day))
    try:
        outcomes = _race(config, lambda r: r.choice(["user", "poller"]),
                         attempts_per_worker=2 * day, workers=3, seed=seed)
        granted_users = sum(ok for purpose, ok in outcomes if purpose == "user")
        granted = sum(ok for _, ok in outcomes)
        assert granted <= day
        assert granted_users <= day - int(day * 0.2)
    finally:
        purge_redis_prefix(config)


def test_parse_rate_limits_reads_both_families():
    limits = parse_rate_limits({"x-ratelimit-requests-limit": "7500",
                                "x-ratelimit-requests-remaining": "7012",
                                "x-ratelimit-limit": "300", "x-ratelimit-remaining": "299"})
    assert limits == RateLimitInfo(day_limit=7500, day_remaining=7012, minute_limit=300,
                                   minute_remaining=299)
    assert parse_rate_limits({}).empty
    assert parse_rate_limits({"x-ratelimit-remaining": "soon"}).minute_remaining is None
