"""How long the upstream client waits before retrying a transient failure.

Sits inside `UpstreamClient.fetch` (between attempts) and is available to the pollers
for their own failure cadence. Like redis-py's `backoff.py`: exponential growth, capped,
with "full jitter" (a uniform draw between 0 and the exponential ceiling), so that many
processes failing together do not retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable

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
