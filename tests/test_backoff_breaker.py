"""Backoff (bounds, cap, jitter) and the per-sport circuit breaker, on a FakeClock."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from btsguru.backoff import Backoff
from btsguru.clock import FakeClock
from btsguru.errors import Unavailable
from btsguru.upstream import CircuitBreaker, CircuitOpen

# -- backoff --


def test_backoff_grows_exponentially_up_to_the_cap():
    backoff = Backoff(base_s=0.5, cap_s=5.0, random_source=lambda: 0.999999)
    ceilings = [backoff.ceiling_s(n) for n in range(0, 7)]
    assert ceilings == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    delays = [backoff.compute(n) for n in range(1, 7)]
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 5.0, 5.0], rel=1e-5)


def test_backoff_is_full_jitter_from_zero():
    assert Backoff(base_s=1.0, cap_s=8.0, random_source=lambda: 0.0).compute(3) == 0.0
    assert Backoff(base_s=1.0, cap_s=8.0, random_source=lambda: 0.5).compute(3) == 2.0


@given(failures=st.integers(min_value=-5, max_value=10_000),
       base_s=st.floats(min_value=0.001, max_value=10),
       cap_s=st.floats(min_value=0.01, max_value=600),
       draw=st.floats(min_value=0, max_value=0.999999))
def test_backoff_never_leaves_its_bounds(failures, base_s, cap_s, draw):
    delay = Backoff(base_s=base_s, cap_s=cap_s, random_source=lambda: draw).compute(failures)
    assert 0.0 <= delay <= cap_s
    if failures <= 0:
        assert delay == 0.0


def test_backoff_jitter_is_uniform_over_the_ceiling():
    seeded = random.Random(42)
    backoff = Backoff(base_s=1.0, cap_s=4.0, random_source=seeded.random)
    samples = [backoff.compute(5) for _ in range(20_000)]  # ceiling: the 4 s cap
    assert min(samples) >= 0.0
    assert max(samples) <= 4.0
    assert statistics.mean(samples) == pytest.approx(2.0, abs=0.05)
    # a uniform distribution puts about a quarter in each quarter of the range
    quarters = [sum(1 for s in samples if q <= s < q + 1) for q in range(4)]
    assert all(abs(n - 5_000) < 300 for n in quarters), quarters


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(base_s=0)
    with pytest.raises(ValueError):
        Backoff(cap_s=-1)


# -- breaker --


def test_breaker_opens_after_consecutive_failures_only():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=3, cooldown_s=10)
    breaker.record_failure("football")
    breaker.record_failure("football")
    breaker.record_success("football")  # resets the run
    breaker.record_failure("football")
    breaker.record_failure("football")
    assert breaker.state("football") == "closed"
    breaker.before_call("football")
    breaker.record_failure("football")
    assert breaker.state("football") == "open"
    assert breaker.state("hockey") == "closed"  # per sport
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call("football")
    assert isinstance(info.value, Unavailable)
    assert info.value.status == 503
    assert info.value.retry_after_s == 10
    assert info.value.transient and info.value.kind == "circuit_open"
    breaker.before_call("hockey")  # other sports are unaffected


def test_breaker_half_open_lets_one_probe_and_success_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=10)
    breaker.record_failure("football")
    clock.advance(9.5)
    assert breaker.state("football") == "open"
    assert breaker.retry_after_s("football") == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.state("football") == "half_open"
    breaker.before_call("football")  # the probe
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call("football")  # a second caller while the probe is out
    assert info.value.retry_after_s == 1
    breaker.record_success("football")
    assert breaker.state("football") == "closed"
    for _ in range(3):
        breaker.before_call("football")


def test_breaker_failed_probe_reopens_with_longer_cooldown_capped():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=2, cooldown_s=10, max_cooldown_s=35)
    breaker.record_failure("football")
    breaker.record_failure("football")
    expected = [20, 35, 35]
    for cooldown in expected:
        clock.advance(breaker.retry_after_s("football"))
        breaker.before_call("football")
        breaker.record_failure("football")
        assert breaker.state("football") == "open"
        assert breaker.retry_after_s("football") == pytest.approx(cooldown)
    clock.advance(35)
    breaker.before_call("football")
    breaker.record_success("football")
    # after closing, the next opening starts from the base cool-down again
    breaker.record_failure("football")
    breaker.record_failure("football")
    assert breaker.retry_after_s("football") == pytest.approx(10)


def test_breaker_release_gives_the_probe_back():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=5)
    breaker.record_failure("baseball")
    clock.advance(5)
    breaker.before_call("baseball")
    breaker.release("baseball")  # e.g. no quota token: the probe never went out
    assert breaker.state("baseball") == "half_open"
    breaker.before_call("baseball")  # another caller may probe now
    breaker.record_failure("baseball")
    assert breaker.state("baseball") == "open"


def test_breaker_ignores_late_failures_while_open():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=5)
    breaker.record_failure("hockey")
    breaker.record_failure("hockey")  # a call let through earlier, failing late
    assert breaker.retry_after_s("hockey") == pytest.approx(5)


def test_a_scheduled_call_probes_during_the_cool_down_one_at_a_time():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=15)
    breaker.record_failure("football")
    clock.advance(2)  # one live cadence into a 15 s cool-down
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call("football")  # a user's miss: refused at once
    assert info.value.retry_after_s == 13
    breaker.before_call("football", scheduled=True)  # the poller's run: the probe
    assert breaker.state("football") == "half_open"
    for scheduled in (True, False):  # nobody else while it is out
        with pytest.raises(CircuitOpen):
            breaker.before_call("football", scheduled=scheduled)
    breaker.record_success("football")  # the host is back: closed for everyone
    assert breaker.state("football") == "closed"
    breaker.before_call("football")


def test_a_failed_scheduled_probe_reopens_without_doubling():
    """The pollers' probes are spaced by their cadence, not by the cool-down: failing,
    they keep the breaker open for users for the cool-down in force, no longer."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=15, max_cooldown_s=300)
    breaker.record_failure("football")
    for _ in range(20):  # 40 s of a failing host, polled every 2 s
        clock.advance(2)
        breaker.before_call("football", scheduled=True)
        breaker.record_failure("football")
        assert breaker.state("football") == "open"
        assert breaker.retry_after_s("football") == pytest.approx(15)
    # a probe after a cool-down that ran out for nothing (no poll came) still doubles it
    clock.advance(15)
    breaker.before_call("football")
    breaker.record_failure("football")
    assert breaker.retry_after_s("football") == pytest.approx(30)
    clock.advance(1)
    breaker.before_call("football", scheduled=True)
    breaker.record_failure("football")
    assert breaker.retry_after_s("football") == pytest.approx(30)


def test_a_scheduled_probe_given_back_frees_the_slot():
    clock = FakeClock()
    breaker = CircuitBreaker(clock, failure_threshold=1, cooldown_s=15)
    breaker.record_failure("hockey")
    breaker.before_call("hockey", scheduled=True)
    breaker.release("hockey")  # no quota token: nothing went out
    assert breaker.state("hockey") == "open"
    with pytest.raises(CircuitOpen):
        breaker.before_call("hockey")  # still the cool-down for users
    breaker.before_call("hockey", scheduled=True)  # the next poll may probe
