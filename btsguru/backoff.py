"""How long to wait before trying again, and the one loop that survives a bad iteration.

A shared piece at the bottom of the layers: the upstream client waits by `Backoff`
between attempts, the pollers for their failure cadence, and every background loop
(usage flushes, lease keepers, heartbeats, pub/sub listeners) through `Failures` or
`every`. Like redis-py's `backoff.py`: exponential growth, capped, with "full jitter" (a
uniform draw between 0 and the exponential ceiling), so that many processes failing
together do not retry together.

A loop survives a bad iteration, as python-socketio's listener does: `Failures` counts
the failures in a row, logs each one once (a traceback only for what is not an expected
outage: Redis, the network, the database) and says how long to wait; `every` is the
periodic loop built on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from redis.exceptions import RedisError

from btsguru.errors import BtsguruError

log = logging.getLogger(__name__)

# A failure of one of these is an outage to wait out, logged without a traceback;
# anything else is a bug, logged with one.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError,
                                                      BtsguruError)

# 2 ** 64 already dwarfs any sensible cap; bounding the exponent keeps the float finite
# however many failures a long outage piles up.
_MAX_EXPONENT = 64


class Backoff:
    """Exponential backoff with full jitter, capped.

    `compute(n)` for the n-th consecutive failure (n >= 1) returns a delay drawn uniformly
    from [0, min(cap_s, base_s * 2 ** (n - 1))]; `compute(0)` is 0.
    `random` returns a float in [0, 1); tests inject a fixed or seeded source.
    """

    def __init__(self, base_s: float = 0.25, cap_s: float = 4.0, *,
                 random_source: Callable[[], float] | None = None) -> None:
        if base_s <= 0 or cap_s <= 0:
            raise ValueError("backoff base_s and cap_s must be positive")
        self.base_s = base_s
        self.cap_s = cap_s
        # an instance of its own, not the module-level generator: jitter needs no secrecy,
        # and tests can seed it
        self._random = random_source or random.Random().random  # noqa: S311

    def ceiling_s(self, failures: int) -> float:
        """The largest delay `compute(failures)` can return."""
        if failures <= 0:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, _MAX_EXPONENT))

    def compute(self, failures: int) -> float:
        return self._random() * self.ceiling_s(failures)


class Failures:
    """Consecutive failures of one loop: `failed(exc)` counts, logs and returns the wait
    before the next try; `succeeded()` starts the count again."""

    def __init__(self, what: str, backoff: Backoff, *,
                 logger: logging.Logger | None = None) -> None:
        self.what = what
        self.backoff = backoff
        self.count = 0
        self._log = logger or log

    def succeeded(self) -> None:
        self.count = 0

    def failed(self, exc: BaseException) -> float:
        self.count += 1
        delay_s = self.backoff.compute(self.count)
        self._log.warning("%s failed (%d in a row): %s; again in %.1f s", self.what,
                          self.count, exc, delay_s,
                          exc_info=not isinstance(exc, EXPECTED_FAILURES))
        return delay_s


async def every(what: str, interval_s: float, work: Callable[[], Awaitable[Any]], *,
                backoff: Backoff, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                first_wait_s: float | None = None,
                logger: logging.Logger | None = None) -> NoReturn:
    """Run `work` every `interval_s` until cancelled (the first run after `first_wait_s`,
    by default `interval_s`); after a failure the next run comes by `backoff` instead."""
    failures = Failures(what, backoff, logger=logger)
    wait_s = interval_s if first_wait_s is None else first_wait_s
    while True:
        await sleep(wait_s)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            wait_s = failures.failed(exc)
        else:
            failures.succeeded()
            wait_s = interval_s
