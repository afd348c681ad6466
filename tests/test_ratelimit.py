"""The per-user token bucket and daily quota, on real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from btsguru.auth.ratelimit import RateDecision, RateLimiter, RatePolicy
from btsguru.clock import FakeClock, SystemClock
from btsguru.errors import Unavailable
from btsguru.store.redis import open_redis
from tests.conftest import make_test_config
from tests.waiting import wait_until

FREE = RatePolicy(burst=60, refill_per_s=1.0, daily_quota=1000)  # 60 per 60 s


def seconds_to_utc_midnight() -> float:
    now = time.time()
    return 86_400 - now % 86_400


async def test_burst_is_exhausted_exactly_at_capacity_and_remaining_counts_down(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    try:
        decisions = [await limiter.check(7, FREE) for _ in range(60)]
        assert all(d.allowed for d in decisions)
        assert [d.remaining for d in decisions] == list(range(59, -1, -1))
        refused = await limiter.check(7, FREE)
        assert not refused.allowed and refused.reason == "rate"
        assert refused.remaining == 0
        assert refused.retry_after_s == 1  # one token at one per second
        assert 59 <= refused.reset_s <= 60  # seconds until the bucket is full
        # A refused request spends nothing: the day counts only the 60.
        assert refused.daily_used == 60
        # Another user has a bucket of their own.
        assert (await limiter.check(8, FREE)).remaining == 59
    finally:
        await stores.close()


async def test_tokens_refill_with_time(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    fast = RatePolicy(burst=3, refill_per_s=20.0, daily_quota=None)
    try:
        # timed from before the first token is taken: the refill runs from then on, so a
        # slow machine between the checks cannot make the refill look early
        started = time.monotonic()
        assert [(await limiter.check(1, fast)).allowed for _ in range(4)] == \
            [True, True, True, False]

        async def allowed_again() -> bool:
            return (await limiter.check(1, fast)).allowed

        await wait_until(allowed_again, timeout_s=2.0, interval_s=0.005)
        # One token takes 50 ms at 20 per second; polling costs nothing while refused.
        assert time.monotonic() - started >= 0.03
        assert not (await limiter.check(1, fast)).allowed  # that token was the only one
    finally:
        await stores.close()


async def test_two_processes_never_exceed_one_users_bucket_together(test_config):
    a, b = open_redis(test_config), open_redis(test_config)
    limiter_a = RateLimiter(a.data, a.keys, SystemClock())
    limiter_b = RateLimiter(b.data, b.keys, SystemClock())
    policy = RatePolicy(burst=30, refill_per_s=0.001, daily_quota=None)
    try:
        results = await asyncio.gather(*(
            (limiter_a if i % 2 else limiter_b).check(42, policy) for i in range(100)))
        assert sum(r.allowed for r in results) == 30
        assert sum(r.allowed for r in results[1::2]) > 0  # both sides took part
        assert sum(r.allowed for r in results[0::2]) > 0
    finally:
        await a.close()
        await b.close()


async def test_daily_quota_counts_per_user_per_utc_day(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    policy = RatePolicy(burst=100, refill_per_s=100.0, daily_quota=5)
    try:
        allowed = [await limiter.check(3, policy) for _ in range(5)]
        assert [d.daily_remaining for d in allowed] == [4, 3, 2, 1, 0]
        refused = await limiter.check(3, policy)
        assert not refused.allowed and refused.reason == "daily"
        assert abs(refused.retry_after_s - seconds_to_utc_midnight()) <= 2
        assert refused.remaining >= 94  # the bucket was not spent by the refusal
        headers = refused.headers()
        assert headers["RateLimit-Remaining"] == "0"  # the tighter of bucket and day
        assert '"daily";q=5;w=86400' in headers["RateLimit-Policy"]
        assert '"daily";r=0;' in headers["RateLimit"]
        assert "daily quota of 5" in refused.error().message
        assert refused.error().retry_after_s == refused.retry_after_s
    finally:
        await stores.close()


def test_headers_use_the_drafts_structured_fields():
    decision = RateDecision(allowed=True, policy=RatePolicy(100, 10.0, None), remaining=42,
                            reset_s=6, retry_after_s=0, daily_used=58, daily_reset_s=1000)
    assert decision.headers() == {
        "RateLimit-Policy": '"default";q=100;w=10',
        "RateLimit": '"default";r=42;t=6',
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "42",
        "RateLimit-Reset": "6",
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "42",
    }
    free = RateDecision(allowed=True, policy=FREE, remaining=59, reset_s=1, retry_after_s=0,
                        daily_used=1, daily_reset_s=3600)
    assert free.headers()["RateLimit-Policy"] == \
        '"default";q=60;w=60, "daily";q=1000;w=86400'
    assert free.headers()["RateLimit"] == '"default";r=59;t=1, "daily";r=999;t=3600'


async def test_a_flushed_script_cache_is_reloaded(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    one_at_a_time = RatePolicy(burst=20, refill_per_s=1.0, daily_quota=None)  # leases of 1
    try:
        assert (await limiter.check(5, one_at_a_time)).remaining == 19
        await stores.data.script_flush()  # as after a Redis restart: EVALSHA says NOSCRIPT
        assert (await limiter.check(5, one_at_a_time)).remaining == 18
    finally:
        await stores.close()


async def test_bucket_names_carry_ids_only_and_expire(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    try:
        await limiter.check(11, RatePolicy(burst=10, refill_per_s=10.0, daily_quota=None))
        name = stores.keys.key("rl", 11)
        assert await stores.data.exists(name) == 1
        assert 0 < await stores.data.ttl(name) <= 2  # full again within a second
        await limiter.check(11, FREE)
        assert await stores.data.ttl(name) >= seconds_to_utc_midnight() - 2  # day counted
    finally:
        await stores.close()


async def test_unreachable_redis_fails_open_briefly_then_answers_503(tmp_path):
    # Nothing listens on port 1: every call is refused at once.
    config = make_test_config(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    stores = open_redis(config)
    clock = FakeClock(start=time.time())
    limiter = RateLimiter(stores.data, stores.keys, clock, fail_open_max_s=30)
    policy = RatePolicy(burst=3, refill_per_s=0.1, daily_quota=None)
    try:
        decisions = [await limiter.check(1, policy) for _ in range(4)]
        # the in-process bucket still limits, and starts with one second's refill (at
        # least one token), not a burst: every process fails open at once
        assert [d.allowed for d in decisions] == [True, False, False, False]
        assert all(d.degraded for d in decisions)
        clock.advance(10)  # one token every ten seconds
        assert [(await limiter.check(1, policy)).allowed for _ in range(2)] == [True, False]
        assert decisions[-1].retry_after_s >= 1
        clock.advance(31)
        with pytest.raises(Unavailable) as info:
            await limiter.check(1, policy)
        assert info.value.status == 503 and info.value.retry_after_s
    finally:
        await stores.close()


async def test_recovery_after_an_outage_uses_redis_again(test_config):
    stores = open_redis(test_config)
    clock = FakeClock(start=time.time())
    limiter = RateLimiter(stores.data, stores.keys, clock)
    broken = open_redis(make_test_config_like(test_config, "redis://127.0.0.1:1/0"))
    try:
        limiter._redis = broken.data  # the same limiter loses its Redis ...
        limiter._script = broken.data.register_script(limiter._script.script)
        assert (await limiter.check(9, FREE)).degraded
        limiter._redis = stores.data  # ... and gets it back
        limiter._script = stores.data.register_script(limiter._script.script)
        clock.advance(1.5)  # past the probe interval
        decision = await limiter.check(9, FREE)
        assert not decision.degraded and decision.remaining == 59
    finally:
        await stores.close()
        await broken.close()


def make_test_config_like(config, redis_url):
    return config.replace(redis_url=redis_url)


async def hammer(limiters, user_id, policy, seconds, workers_each=8):
    """Every limiter's workers ask as fast as they can for `seconds`; returns the number
    admitted by each limiter and the time it took."""
    admitted = [0] * len(limiters)
    deadline = time.monotonic() + seconds

    async def worker(index):
        while time.monotonic() < deadline:
            if (await limiters[index].check(user_id, policy)).allowed:
                admitted[index] += 1
            await asyncio.sleep(0)  # a refusal remembered locally does not yield

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(len(limiters))
                           for _ in range(workers_each)))
    return admitted, time.monotonic() - started


async def test_two_limiters_on_one_key_stay_within_5_percent_of_its_limit(test_config):
    a, b = open_redis(test_config), open_redis(test_config)
    limiters = [RateLimiter(a.data, a.keys, SystemClock()),
                RateLimiter(b.data, b.keys, SystemClock())]
    policy = RatePolicy(burst=200, refill_per_s=400.0, daily_quota=None)
    assert policy.max_lease > 1  # leases of several tokens, spent locally
    try:
        admitted, elapsed_s = await hammer(limiters, 77, policy, seconds=1.5)
        limit = policy.burst + policy.refill_per_s * elapsed_s
        total = sum(admitted)
        assert total <= limit * 1.05, (admitted, limit)
        assert total >= limit * 0.85, (admitted, limit)  # leases held elsewhere cost little
        assert min(admitted) > 0.2 * total  # both processes were served
    finally:
        for limiter in limiters:
            await limiter.close()
        await a.close()
        await b.close()


async def test_two_limiters_never_exceed_the_daily_quota(test_config):
    a, b = open_redis(test_config), open_redis(test_config)
    limiters = [RateLimiter(a.data, a.keys, SystemClock()),
                RateLimiter(b.data, b.keys, SystemClock())]
    policy = RatePolicy(burst=5_000, refill_per_s=5_000.0, daily_quota=600)
    try:
        # long enough to reach the quota on a loaded machine; past it, all refused
        admitted, _ = await hammer(limiters, 78, policy, seconds=4.0)
        assert sum(admitted) <= 600
        assert sum(admitted) >= 600 * 0.95, admitted
        # the leases still held went back: the day counts what was admitted, exactly
        for limiter in limiters:
            await limiter.return_expired(everything=True)
        used = await a.data.hget(a.keys.key("rl", 78), "used")
        assert int(used) == sum(admitted)
    finally:
        for limiter in limiters:
            await limiter.close()
        await a.close()
        await b.close()


async def test_leases_cost_far_fewer_calls_than_requests(test_config):
    stores = open_redis(test_config)
    limiter = RateLimiter(stores.data, stores.keys, SystemClock())
    policy = RatePolicy(burst=100_000, refill_per_s=100_000.0, daily_quota=None)
    calls = 0
    script = limiter._script

    async def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await script(*args, **kwargs)

    limiter._script = counting
    try:
        decisions = [await limiter.check(5, policy) for _ in range(2_000)]
        assert all(d.allowed for d in decisions)
        assert calls <= 2_000 / 20, calls  # a Redis call per many requests, not per request
        # remaining is this process's view: the bucket as last seen plus what it holds
        assert 0 < decisions[-1].remaining <= policy.burst
    finally:
        await limiter.close()
        await stores.close()
