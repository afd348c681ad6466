"""The scheduler: runs each poller task as a loop on the IOLoop, in one process of the cluster.

Where it sits: owned by `Pollers` (the service `serve` and `poll` start). It keeps the
reference of every task it starts, cancels them on `stop()`, and logs a crash instead of
losing it (STYLE.md: no `create_task` that nobody holds). Each task's loop:

1. waits until this process holds the task's lease (`lease.py`; a keeper coroutine takes
   and renews leases every `renew_s`);
2. waits until the task's `next_run`, kept in Redis (`state.py`) so that the cluster
   shares one schedule, and so that another task can move it sooner (`wake`);
3. runs one iteration; a bad iteration is logged and counted, never the end of the loop;
4. sleeps on the injected clock for the task's cadence, or after a failure for what
   `cadence.delay_after_failure` says (the cadence itself when the upstream host failed,
   a budget wall's wait, or the cadence plus backoff), recording both in Redis.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.backoff import Backoff, every
from btsguru.clock import Clock
from btsguru.errors import BtsguruError
from btsguru.lifecycle import cancel_tasks
from btsguru.pollers.cadence import delay_after_failure
from btsguru.pollers.lease import Leases
from btsguru.pollers.state import PollerState
from btsguru.store.series import SeriesRecorder
from btsguru.upstream.errors import FetchError

log = logging.getLogger(__name__)

# A task waiting for its next run re-reads `next_run` this often, so a wake from another
# process (a schedule poll that found an earlier start) is seen within this time.
WAKE_CHECK_S = 15.0
# How long `stop()` lets a task finish its iteration before cancelling it.
STOP_GRACE_S = 5.0


@dataclass
class RunReport:
    """What one iteration did: for the logs, the state row and `refresh`'s summary."""

    requests: int = 0
    failures: int = 0
    games: int = 0
    changes: int = 0  # change events published on the bus
    game_events: int = 0  # in-game events (goals, cards...) among them
    live_games: int | None = None
    errors: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    def add(self, other: RunReport) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.games += other.games
        self.changes += other.changes
        self.game_events += other.game_events
        self.errors.extend(other.errors)


class Task(Protocol):
    """One poller task: the scheduler's view of it."""

    @property
    def sport(self) -> str: ...

    @property
    def task(self) -> str:
        """Its name within the sport: live, schedule, standings, static."""

    @property
    def lease(self) -> str:
        """The lease it runs under (tasks writing the same games share one)."""

    async def run_once(self) -> RunReport:
        """One iteration; raises when any of its upstream calls failed (after doing
        what it could with the others)."""

    def next_delay_s(self) -> tuple[float, str]:
        """After a successful run: seconds until the next, and why."""

    def cadence_s(self) -> float:
        """The interval a failed run is retried after (any backoff is added to it)."""


class IterationFailed(BtsguruError):
    """Some of an iteration's upstream calls failed; the first error is the cause."""

    def __init__(self, report: RunReport, first: BaseException) -> None:
        super().__init__(f"{report.failures} of {report.requests} upstream calls failed: "
                         f"{report.errors[0] if report.errors else first}")
        self.report = report
        self.first = first


class Scheduler:
    """Runs tasks as loops under leases (see the module docstring)."""

    def __init__(self, clock: Clock, state: PollerState, leases: Leases | None, *,
                 backoff: Backoff, wake_check_s: float = WAKE_CHECK_S,
                 series: SeriesRecorder | None = None) -> None:
        self._clock = clock
        self._series = series  # the ops page's failures per minute, cluster-wide
        self._state = state
        self._leases = leases
        self._backoff = backoff
        self._wake_check_s = wake_check_s
        self._tasks: dict[str, Task] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        self.iterations: dict[str, int] = {}  # completed iterations per task, this process

    @staticmethod
    def name(task: Task) -> str:
        return f"{task.sport}:{task.task}"

    def add(self, task: Task) -> None:
        name = self.name(task)
        if name in self._tasks:
            raise ValueError(f"task {name} added twice")
        self._tasks[name] = task
        self._wakeups[name] = asyncio.Event()
        self.iterations[name] = 0

    @property
    def tasks(self) -> dict[str, Task]:
        return dict(self._tasks)

    @property
    def started(self) -> bool:
        return bool(self._running)

    async def start(self) -> None:
        if self._running:
            return
        if self._leases is not None:
            leases = self._leases
            await leases.refresh(self._lease_names())  # take what is free before looping
            self._keeper = self._spawn("lease keeper", self._keep_leases(leases))
        for name, task in self._tasks.items():
            self._running[name] = self._spawn(name, self._loop(name, task))
        log.info("pollers started: %d tasks (%s)%s", len(self._tasks), ", ".join(self._tasks),
                 f", lease holder {self._leases.token}" if self._leases else ", no leases")

    async def stop(self, *, release: bool = True) -> None:
        """Cancel every loop, then give the leases back so others take over at once
        (`release=False` leaves them to expire, as a process that died would). A no-op
        when not started."""
        if not self._running and self._keeper is None:
            return
        running = list(self._running.values())
        if self._keeper is not None:
            running.append(self._keeper)
        await cancel_tasks(running, timeout_s=STOP_GRACE_S, owner="pollers")
        self._running.clear()
        self._keeper = None
        if self._leases is not None and release:
            await self._leases.release(self._lease_names())
        log.info("pollers stopped")

    def wake(self, sport: str, task: str) -> None:
        """Run a task of this process now (another process sees `PollerState.wake`)."""
        event = self._wakeups.get(f"{sport}:{task}")
        if event is not None:
            event.set()

    # -- internals --

    def _lease_names(self) -> list[str]:
        return sorted({task.lease for task in self._tasks.values()})

    def _spawn(self, name: str, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"poller {name}")  # type: ignore[arg-type]
        task.add_done_callback(self._log_exit)
        return task

    @staticmethod
    def _log_exit(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s crashed: %s", task.get_name(), exc, exc_info=exc)

    async def _keep_leases(self, leases: Leases) -> None:
        names = self._lease_names()
        # a failed refresh is tried again sooner than the next renewal, never later
        await every("lease keeper", leases.renew_s, lambda: leases.refresh(names),
                    backoff=Backoff(leases.renew_s / 4, leases.renew_s),
                    sleep=self._clock.sleep, logger=log)

    async def _loop(self, name: str, task: Task) -> None:
        failures = await self._initial_failures(task)
        while True:
            if self._leases is not None and not self._leases.held(task.lease):
                await self._leases.wait_held(task.lease)
                continue
            if not await self._wait_due(name, task):
                continue  # the lease went away while waiting
            failures = await self._iterate(name, task, failures)

    async def _initial_failures(self, task: Task) -> int:
        try:
            row = await self._state.load(task.sport, task.task)
            return int(float(row.get("failures") or 0))
        except Exception as exc:
            log.warning("%s:%s: cannot read its state (%s); starting fresh", task.sport,
                        task.task, exc)
            return 0

    async def _wait_due(self, name: str, task: Task) -> bool:
        """Sleep until the task's shared `next_run`; False if the lease was lost."""
        wakeup = self._wakeups[name]
        while True:
            if wakeup.is_set():
                wakeup.clear()
                return True
            try:
                next_run = await self._state.next_run(task.sport, task.task)
            except Exception as exc:  # Redis away: run on our own timing
                log.warning("%s: cannot read next_run: %s", name, exc)
                next_run = None
            left = 0.0 if next_run is None else next_run - self._clock.time()
            if left <= 0:
                return True
            await self._sleep_or_wake(min(left, self._wake_check_s), wakeup)
            if self._leases is not None and not self._leases.held(task.lease):
                return False

    async def _sleep_or_wake(self, seconds: float, wakeup: asyncio.Event) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waiter = asyncio.ensure_future(wakeup.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (sleeper, waiter):
                pending.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)

    async def _iterate(self, name: str, task: Task, failures: int) -> int:
        """One run and its bookkeeping; returns the failures in a row after it."""
        started = self._clock.time()
        watch = metrics.Stopwatch()
        report: RunReport | None = None
        error: BaseException | None = None
        try:
            report = await task.run_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
            report = exc.report if isinstance(exc, IterationFailed) else None
        self.iterations[name] += 1
        metrics.POLL_RUNS.labels(task.sport, task.task, "ok" if error is None else "failed").inc()
        metrics.POLL_DURATION.labels(task.sport, task.task).observe(watch.elapsed_s())
        fields: dict[str, object | None] = {"last_run": started, "lease": task.lease}
        if error is None:
            failures = 0
            delay_s, reason = task.next_delay_s()
            fields.update(last_success=self._clock.time(), failures=0, backoff_s=0.0,
                          last_error=None)
        else:
            failures += 1
            if self._series is not None:
                self._series.poll_failed(task.sport)
            cadence_s = task.cadence_s()
            cause = error.first if isinstance(error, IterationFailed) else error
            delay_s = delay_after_failure(cause, cadence_s, failures, self._backoff)
            what = "retry" if delay_s <= cadence_s else "backoff"
            reason = f"{what} after {failures} failure{'s' if failures > 1 else ''}"
            message = error.message if isinstance(error, BtsguruError) else str(error)
            fields.update(failures=failures, backoff_s=max(0.0, delay_s - cadence_s),
                          last_error=message[:300])
            # an upstream failure or a Redis outage is degraded service (logged where it
            # happened too); anything else is a bug, with its traceback
            expected = isinstance(cause, FetchError | BtsguruError | RedisError)
            log.warning("%s failed (%d in a row), next try in %.0f s: %s", name, failures,
                        delay_s, message, exc_info=None if expected else error)
        if report is not None:
            if report.live_games is not None:
                fields["live_games"] = report.live_games
            fields.update(report.extra)
        fields.update(interval_s=delay_s, reason=reason,
                      next_run=self._clock.time() + delay_s)
        try:
            await self._state.update(task.sport, task.task, fields,
                                     count_requests=report.requests if report else 0)
        except Exception as exc:
            log.warning("%s: cannot record its state: %s", name, exc)
            # without Redis the shared schedule is gone; keep our own timing meanwhile
            await self._sleep_or_wake(delay_s, self._wakeups[name])
        return failures
