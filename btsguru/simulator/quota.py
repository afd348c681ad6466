"""The simulated upstream's request budget and injected faults.

Where it sits: consulted by `server` for every upstream request, after authentication
and before the answer is computed. Quota follows API-Sports: each sport host counts
separately, a daily budget resets at 00:00 UTC and a per-minute budget covers any
60-second window. Faults are a FIFO of "the next N requests fail this way", pushed by
`POST /__sim/fault`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY_S = 86400
MINUTE_S = 60

FAULT_MODES = ("500", "429", "timeout", "garbage", "errors200", "slow")
DEFAULT_DELAY_S = {"timeout": 30.0, "slow": 3.0}


class SportQuota:
    """One sport host's daily and per-minute counters."""

    def __init__(self, day_limit: int, minute_limit: int) -> None:
        self.day_limit = day_limit
        self.minute_limit = minute_limit
        self._day = ""
        self.day_used = 0
        self._minute_log: deque[float] = deque()
        # what the upstream saw, for tests that check a client kept to the budget: every
        # request the quota was asked about (served or refused), in the last 60 s...
        self._asked_log: deque[float] = deque()
        self.peak_minute = 0  # ...the most of them in any 60-second window...
        self.refused = 0  # ...and how many were refused because a budget was spent

    def _roll(self, now: float) -> None:
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        if day != self._day:
            self._day = day
            self.day_used = 0
        log = self._minute_log
        while log and log[0] <= now - MINUTE_S:
            log.popleft()

    def take(self, now: float) -> str | None:
        """Count one request; or say which budget is spent ("day", "minute") and count nothing."""
        self._roll(now)
        self._asked(now)
        if self.day_used >= self.day_limit:
            self.refused += 1
            return "day"
        if len(self._minute_log) >= self.minute_limit:
            self.refused += 1
            return "minute"
        self.day_used += 1
        self._minute_log.append(now)
        return None

    def _asked(self, now: float) -> None:
        """One more request asked of the budget: the busiest 60-second window so far (a
        window holding the most requests ends on one of them, so checking at each one
        finds it; the window is (t - 60 s, t], as the minute budget's)."""
        log = self._asked_log
        while log and log[0] <= now - MINUTE_S:
            log.popleft()
        log.append(now)
        self.peak_minute = max(self.peak_minute, len(log))

    def stats(self) -> dict[str, int]:
        """`max_per_60s`: the most requests asked of the budget in any 60-second window
        (refused ones included: the client sent them); `refused_quota`: how many were
        refused because the day's or the minute's budget was spent."""
        return {"max_per_60s": self.peak_minute, "refused_quota": self.refused}

    def used_today(self, now: float) -> int:
        self._roll(now)
        return self.day_used

    def headers(self, now: float) -> dict[str, str]:
        """Both header families: with "requests" the day, without it the minute."""
        self._roll(now)
        return {
            "x-ratelimit-requests-limit": str(self.day_limit),
            "x-ratelimit-requests-remaining": str(max(0, self.day_limit - self.day_used)),
            "X-RateLimit-Limit": str(self.minute_limit),
            "X-RateLimit-Remaining": str(max(0, self.minute_limit - len(self._minute_log))),
        }

    def resets(self, now: float) -> dict[str, str]:
        """RapidAPI's proxy adds when each window resets, in seconds."""
        self._roll(now)
        day_reset = DAY_S - int(now) % DAY_S
        minute_reset = int(self._minute_log[0] + MINUTE_S - now) + 1 if self._minute_log else 0
        return {"x-ratelimit-requests-reset": str(day_reset),
                "X-RateLimit-Reset": str(max(0, minute_reset))}


@dataclass(slots=True)
class Fault:
    mode: str
    remaining: int
    delay_s: float
    errors: dict[str, Any] | None = None


class FaultQueue:
    """Faults waiting for the next requests, served in the order they were injected."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def push(self, fault: Fault) -> None:
        self._queue.append(fault)

    def take(self) -> Fault | None:
        if not self._queue:
            return None
        fault = self._queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._queue.popleft()
        return fault

    def pending(self) -> int:
        return sum(f.remaining for f in self._queue)

    def clear(self) -> None:
        self._queue.clear()


def parse_fault(body: Any) -> Fault:
    """A fault from the control API's JSON, or ValueError naming what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    mode = body.get("mode")
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError("count must be a positive integer")
    delay = body.get("delay_s", DEFAULT_DELAY_S.get(mode, 0.0))
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 3600:
        raise ValueError("delay_s must be a number of seconds between 0 and 3600")
    errors = body.get("errors")
    if errors is not None and (not isinstance(errors, dict) or not errors):
        raise ValueError("errors must be a non-empty JSON object")
    return Fault(mode, count, float(delay), errors)
