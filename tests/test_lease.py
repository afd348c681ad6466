"""Leases and the scheduler: one process runs each task; another takes over when it stops
or dies; a loop survives bad iterations and backs off; the schedule is shared."""

from __future__ import annotations

import time

import pytest

from btsguru.backoff import Backoff
from btsguru.clock import FakeClock, SystemClock
from btsguru.errors import Unavailable
from btsguru.pollers.lease import Leases, lease_key
from btsguru.pollers.scheduler import RunReport, Scheduler
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.upstream.errors import UpstreamFailure
from tests.upstream_fixtures import redis_stores
from tests.waiting import wait_asleep, wait_until


def host_500():
    return UpstreamFailure("football /fixtures: the upstream answered HTTP 500",
                           kind="server", transient=True)


def store_away():
    return Unavailable("the store is unreachable (Redis: connection refused)")


class CountingTask:
    """A task that records who ran it (and fails with `error()` while `failing` > 0)."""

    def __init__(self, runs, who, *, sport="football", task="live", interval_s=0.05,
                 failing=0, error=host_500):
        self.sport, self.task, self.lease = sport, task, f"{sport}:{task}"
        self.runs, self.who, self.interval_s, self.failing = runs, who, interval_s, failing
        self.error = error

    async def run_once(self):
        self.runs.append(self.who)
        if self.failing:
            self.failing -= 1
            raise self.error()
        return RunReport(requests=1, live_games=3)

    def next_delay_s(self):
        return self.interval_s, "test cadence"

    def cadence_s(self):
        return self.interval_s


async def test_a_lease_has_one_holder_until_released(test_config):
    clock = SystemClock()
    async with redis_stores(test_config) as stores:
        a = Leases(stores, clock, ttl_s=5, renew_s=1, token="host-a:1:aaaa")
        b = Leases(stores, clock, ttl_s=5, renew_s=1, token="host-b:2:bbbb")
        assert await a.refresh(["football:games"]) == {"football:games": True}
        assert await b.refresh(["football:games"]) == {"football:games": False}
        assert a.held("football:games") and not b.held("football:games")
        assert await a.holder("football:games") == "host-a:1:aaaa"
        # renewing is a compare-and-pexpire: the TTL is restored, the holder unchanged
        await stores.queue.pexpire(a.key("football:games"), 500)
        assert await a.refresh(["football:games"]) == {"football:games": True}
        assert await stores.queue.pttl(a.key("football:games")) > 4000
        await b.release(["football:games"])  # not b's: a no-op
        assert await b.holder("football:games") == "host-a:1:aaaa"
        await a.release(["football:games"])
        assert not a.held("football:games")
        assert await b.refresh(["football:games"]) == {"football:games": True}
        assert await a.holder("football:games") == "host-b:2:bbbb"


async def test_a_held_lease_lapses_in_memory_without_renewal(test_config):
    clock = FakeClock(time.time())
    async with redis_stores(test_config) as stores:
        leases = Leases(stores, clock, ttl_s=10, renew_s=3)
        await leases.refresh(["hockey:static"])
        clock.advance(9)
        assert leases.held("hockey:static")
        clock.advance(2)  # no renewal for a whole TTL: someone else may hold it now
        assert not leases.held("hockey:static")


async def test_two_schedulers_one_runs_each_task_and_the_other_takes_over(test_config):
    clock = SystemClock()
    runs: list[str] = []
    async with redis_stores(test_config) as stores:
        nodes = {}
        for who in ("a", "b"):
            leases = Leases(stores, clock, ttl_s=1.0, renew_s=0.2, token=f"host:{who}")
            scheduler = Scheduler(clock, PollerState(stores, clock), leases,
                                  backoff=Backoff(0.01, 0.05), wake_check_s=0.05)
            scheduler.add(CountingTask(runs, who))
            nodes[who] = scheduler
        await nodes["a"].start()
        await nodes["b"].start()
        await wait_until(lambda: len(runs) >= 5, 5, "five runs")
        first = runs[0]
        other = "b" if first == "a" else "a"
        assert set(runs) == {first}, runs
        reader = PollerStateReader(stores, clock)
        [row] = await reader.tasks("football")
        assert row.holder == f"host:{first}" and row.live_games == 3

        # a clean stop gives the lease back: the other takes over at its next renewal
        stopped_at = time.monotonic()
        await nodes[first].stop()
        count = len(runs)
        await wait_until(lambda: other in runs[count:], 5, "the takeover")
        assert time.monotonic() - stopped_at < 1.0  # a renewal tick or two, not a TTL
        assert set(runs[count:]) == {other}

        # a holder that dies (no release) is replaced once its lease expires
        await nodes[other].stop(release=False)
        died_at = time.monotonic()
        runs.clear()  # from its death on: a run it was making as it stopped is not after it
        # what is left of the dead holder's lease (a loaded machine may take a while to
        # stop it): the new holder must wait all of that out
        left_ms = await stores.queue.pttl(lease_key(stores.keys, "football:live"))
        assert left_ms > 0, "the dead holder's lease is already gone"
        nodes[first] = Scheduler(clock, PollerState(stores, clock),
                                 Leases(stores, clock, ttl_s=1.0, renew_s=0.2,
                                        token=f"host:{first}-again"),
                                 backoff=Backoff(0.01, 0.05), wake_check_s=0.05)
        nodes[first].add(CountingTask(runs, first))
        await nodes[first].start()
        # the new holder's own run, and no other: the dead holder never runs again
        await wait_until(lambda: first in runs, 5, "the takeover after expiry")
        # it had to wait out the dead lease (less a renewal tick of clock slack)
        assert time.monotonic() - died_at >= left_ms / 1000 - 0.2, left_ms
        assert set(runs) == {first}
        await nodes[first].stop()


async def test_a_loop_survives_failures_and_backs_off(test_config):
    clock = FakeClock(time.time())
    runs: list[str] = []
    async with redis_stores(test_config) as stores:
        state = PollerState(stores, clock)
        scheduler = Scheduler(clock, state, None,
                              backoff=Backoff(10, 300, random_source=lambda: 0.5))
        scheduler.add(CountingTask(runs, "a", interval_s=15, failing=2, error=store_away))
        await scheduler.start()
        try:
            name = "football:live"

            async def ran(n):
                return scheduler.iterations[name] >= n

            await wait_until(lambda: ran(1), what="the first run")
            await wait_asleep(clock, what="the loop, until its next run")
            row = await state.load("football", "live")
            assert row["failures"] == "1" and float(row["backoff_s"]) == 5.0  # 0.5 x 10
            assert "unreachable" in row["last_error"] and row["reason"].startswith("backoff")
            assert float(row["next_run"]) == pytest.approx(clock.time() + 20.0, abs=0.01)
            clock.advance(19.9)
            # the loop wakes at its wake check (15 s), reads next_run and sleeps again: a
            # loop that ignored its backoff would have run before going back to sleep
            await wait_asleep(clock, what="the loop, after its wake check")
            assert scheduler.iterations[name] == 1  # not before its backoff
            assert clock.sleeping() == [pytest.approx(0.1, abs=0.01)]
            clock.advance(0.2)
            await wait_until(lambda: ran(2), what="the second run")
            row = await state.load("football", "live")
            assert row["failures"] == "2" and float(row["backoff_s"]) == 10.0  # 0.5 x 20
            clock.advance(25.1)
            await wait_until(lambda: ran(3), what="the third run")
            row = await state.load("football", "live")
            assert row["failures"] == "0" and "last_error" not in row
            assert float(row["interval_s"]) == 15 and row["reason"] == "test cadence"
            assert int(row["requests"]) == 1
            summary = await PollerStateReader(stores, clock).state("football")
            assert summary.live_games == 3 and summary.poll_interval_s == 15
            assert summary.data_age_s == 0 and not summary.failing
        finally:
            await scheduler.stop()


async def test_after_a_host_failure_the_next_run_is_one_cadence_later(test_config):
    """No backoff on top, however many failures in a row: the next run is the probe that
    finds the upstream back, and a failing task asks no more often than a healthy one."""
    clock = FakeClock(time.time())
    runs: list[str] = []
    async with redis_stores(test_config) as stores:
        state = PollerState(stores, clock)
        scheduler = Scheduler(clock, state, None,
                              backoff=Backoff(10, 300, random_source=lambda: 0.999))
        scheduler.add(CountingTask(runs, "a", interval_s=15, failing=3))
        await scheduler.start()
        try:
            name = "football:live"
            for n in (1, 2, 3):
                await wait_until(lambda n=n: scheduler.iterations[name] >= n,
                                 what=f"run {n}")
                await wait_asleep(clock, what=f"the loop after run {n}")
                row = await state.load("football", "live")
                assert row["failures"] == str(n) and float(row["backoff_s"]) == 0.0
                assert float(row["next_run"]) == pytest.approx(clock.time() + 15, abs=0.01)
                assert row["reason"] == f"retry after {n} failure{'s' if n > 1 else ''}"
                clock.advance(14.9)
                # asleep still (or again: a loop retrying sooner would have run first)
                await wait_asleep(clock, what=f"the loop before run {n + 1}")
                assert scheduler.iterations[name] == n  # not sooner than its cadence
                assert clock.sleeping() == [pytest.approx(0.1, abs=0.01)]
                clock.advance(0.2)
            await wait_until(lambda: scheduler.iterations[name] >= 4, what="recovery")
            row = await state.load("football", "live")
            assert row["failures"] == "0" and float(row["interval_s"]) == 15
        finally:
            await scheduler.stop()


async def test_the_schedule_is_shared_across_a_takeover(test_config):
    clock = FakeClock(time.time())
    runs: list[str] = []
    async with redis_stores(test_config) as stores:
        def node(who):
            scheduler = Scheduler(clock, PollerState(stores, clock),
                                  Leases(stores, clock, token=f"host:{who}"),
                                  backoff=Backoff(1, 2), wake_check_s=5)
            scheduler.add(CountingTask(runs, who, task="static", interval_s=6 * 3600))
            return scheduler

        first = node("a")
        await first.start()
        await wait_until(lambda: runs == ["a"], what="the first run")
        await first.stop()
        second = node("b")
        await second.start()
        try:
            # b's lease keeper and its loop, each asleep on the clock: whatever b did
            # after a step is over before the next
            await wait_asleep(clock, 2, what="b's keeper and loop")
            for _ in range(12):  # an hour, in steps the keeper and the loop follow
                clock.advance(300)
                await wait_asleep(clock, 2, what="b's keeper and loop")
            assert runs == ["a"]  # b honours a's next run, 6 h after a's
            clock.advance(5 * 3600 + 1)
            await wait_until(lambda: runs == ["a", "b"], what="b's first run")
        finally:
            await second.stop()


async def test_wake_moves_a_sleeping_task(test_config):
    clock = FakeClock(time.time())
    runs: list[str] = []
    async with redis_stores(test_config) as stores:
        state = PollerState(stores, clock)
        scheduler = Scheduler(clock, state, None, backoff=Backoff(1, 2), wake_check_s=60)
        scheduler.add(CountingTask(runs, "a", interval_s=900))
        await scheduler.start()
        try:
            await wait_until(lambda: len(runs) == 1, what="the first run")
            # another process moves next_run sooner: seen at the next check (60 s)
            assert await state.wake("football", "live", clock.time() + 30)
            assert not await state.wake("football", "live", clock.time() + 600)
            clock.advance(61)
            await wait_until(lambda: len(runs) == 2, what="the woken run")
            # in-process: at once
            scheduler.wake("football", "live")
            await wait_until(lambda: len(runs) == 3, what="the nudged run")
        finally:
            await scheduler.stop()

