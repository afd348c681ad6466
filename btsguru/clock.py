"""An injectable clock (as Centrifuge's `Node` takes one), so cadence, TTLs, backoff and
rate limits are tested without sleeping.

`SystemClock` is the real one; `FakeClock` moves only when a test advances it, and its
`sleep` returns once the fake time has reached the deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (wall clock, UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock for tests: `advance` moves both readings and wakes due sleepers."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._monotonic = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._monotonic + seconds, future))
        await future

    def sleeping(self) -> list[float]:
        """Seconds left of each sleep in progress, soonest first (a cancelled one no
        longer counts): a test waits until the code under test is asleep before it
        advances the clock or checks what that code did."""
        return sorted(t - self._monotonic for t, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._monotonic += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self._monotonic]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._monotonic]
        for _t, future in sorted(due, key=lambda item: item[0]):
            if not future.done():
                future.set_result(None)
