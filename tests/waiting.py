"""Waiting on a condition with a deadline, never a bare sleep (STYLE.md, "Tests").

`wait_until` is for async tests; `wait_until_blocking` is its twin for code on threads or
driving subprocesses, with the same arguments, result and failure message. Both poll a
condition every `interval_s` until it holds and return the seconds it took; past
`timeout_s` they raise AssertionError naming what was awaited (`what`, or what a
callable `what` says at that moment: the state that was still missing).

`wait_asleep` waits until the code under test has gone to sleep on a `FakeClock`: the
point at which advancing the clock is seen at once, and at which what the code did
since the last advance is over (the way to prove that something did not happen).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

from btsguru.clock import FakeClock

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 0.02
# For a condition that asks a whole stack under test (HTTP, Redis) while it is being
# broken on purpose: ten times a second is enough and adds little load of its own.
STACK_INTERVAL_S = 0.1

Condition = Callable[[], object]  # returns a truth value, or an awaitable of one
What = str | Callable[[], str]


def _timed_out(what: What, timeout_s: float) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout_s:g} s waiting for {said}")


async def wait_until(condition: Condition, timeout_s: float = DEFAULT_TIMEOUT_S,
                     what: What = "condition", interval_s: float = DEFAULT_INTERVAL_S) -> float:
    """Poll `condition()` (sync or async) until it is true; the seconds it took."""
    started = time.monotonic()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise _timed_out(what, timeout_s)
        await asyncio.sleep(interval_s)


def wait_until_blocking(condition: Callable[[], object], timeout_s: float = DEFAULT_TIMEOUT_S,
                        what: What = "condition",
                        interval_s: float = DEFAULT_INTERVAL_S) -> float:
    """`wait_until` for threads and subprocesses: `condition` is sync, the wait blocks."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise _timed_out(what, timeout_s)
        time.sleep(interval_s)
    return time.monotonic() - started


async def wait_asleep(clock: FakeClock, sleepers: int = 1,
                      timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "") -> float:
    """Until at least `sleepers` sleeps are in progress on `clock` (after an `advance`,
    the ones it woke no longer count: these are new ones)."""
    return await wait_until(lambda: len(clock.sleeping()) >= sleepers, timeout_s,
                            lambda: f"{what or 'the code under test'} to sleep on the clock "
                                    f"({len(clock.sleeping())} of {sleepers} asleep)")

