"""What a rate limit is and what it answered: a tier's `RatePolicy`, the limiter's
`RateDecision` (with the contract's `RateLimit*` headers and the 429), and the
in-process buckets the limiter falls back to while Redis is unreachable.

Beside the flow, under `auth.ratelimit` (the limiter that makes decisions) and
`auth.access` (which turns a tier into a policy and a refusal into a 429).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from btsguru.auth.tiers import TierLimits
from btsguru.clock import Clock
from btsguru.errors import RateLimited

DAY_S = 86_400
# A lease lives this share of the bucket's fill time (burst / refill), so the tokens held
# across processes add at most 4% of the burst to the bucket: the issue allows 5%.
LEASE_SHARE = 0.04
# ... and never longer than this: unspent tokens go back within 2 s of their lease.
MAX_LEASE_S = 2.0
# The largest lease: past a few hundred requests per call, Redis's share of the cost is
# already negligible.
MAX_LEASE_TOKENS = 1_000


@dataclass(frozen=True)
class RatePolicy:
    """A tier's REST limits, as the limiter applies them."""

    burst: int  # the bucket's capacity
    refill_per_s: float
    daily_quota: int | None  # None: unlimited

    @classmethod
    def from_tier(cls, tier: TierLimits) -> RatePolicy:
        return cls(burst=max(1, tier.rest_burst),
                   refill_per_s=tier.rest_refill_per_s if tier.rest_refill_per_s > 0
                   else tier.rest_rate / max(1, tier.rest_period_s),
                   daily_quota=tier.daily_quota)

    @property
    def window_s(self) -> int:
        """Seconds for an empty bucket to fill: the window a token bucket advertises."""
        return max(1, math.ceil(self.burst / self.refill_per_s))

    @cached_property
    def policy_header(self) -> str:
        """`RateLimit-Policy`, the same for every answer under this policy."""
        text = f'"default";q={self.burst};w={self.window_s}'
        if self.daily_quota is not None:
            text += f', "daily";q={self.daily_quota};w={DAY_S}'
        return text

    @cached_property
    def limit_header(self) -> str:
        return str(self.burst)

    @property
    def lease_s(self) -> float:
        """How long a process may hold leased tokens (see the module's bound)."""
        return min(MAX_LEASE_S, LEASE_SHARE * self.burst / self.refill_per_s)

    @property
    def max_lease(self) -> int:
        """The most tokens one lease carries."""
        return max(1, min(MAX_LEASE_TOKENS, int(LEASE_SHARE * self.burst)))


@dataclass(frozen=True)
class RateDecision:
    """The limiter's answer for one request."""

    allowed: bool
    policy: RatePolicy
    remaining: int  # whole tokens left in the bucket
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # 0 when allowed
    daily_used: int
    daily_reset_s: int  # seconds until the UTC day (and the daily quota) turns over
    reason: str = ""  # "rate" or "daily" when refused
    degraded: bool = False  # decided by the in-process fallback

    @property
    def daily_remaining(self) -> int | None:
        quota = self.policy.daily_quota
        return None if quota is None else max(0, quota - self.daily_used)

    def headers(self) -> dict[str, str]:
        """The contract's rate-limit headers: the IETF draft's structured fields
        (draft-ietf-httpapi-ratelimit-headers-10: a token bucket is advertised as
        `q` = capacity per `w` = time to fill from empty), the draft-06 trio and the
        common `X-RateLimit-*` pair. `Remaining` is the tighter of bucket and day."""
        p = self.policy
        remaining = self.remaining
        current = f'"default";r={remaining};t={self.reset_s}'
        daily_remaining = self.daily_remaining
        if daily_remaining is not None:
            current += f', "daily";r={daily_remaining};t={self.daily_reset_s}'
            remaining = min(remaining, daily_remaining)
        remaining_text = str(remaining)
        return {
            "RateLimit-Policy": p.policy_header,
            "RateLimit": current,
            "RateLimit-Limit": p.limit_header,
            "RateLimit-Remaining": remaining_text,
            "RateLimit-Reset": str(self.reset_s),
            "X-RateLimit-Limit": p.limit_header,
            "X-RateLimit-Remaining": remaining_text,
        }

    def error(self) -> RateLimited:
        """The 429 for a refused request, carrying the rate-limit headers."""
        if self.reason == "daily":
            message = (f"daily quota of {self.policy.daily_quota} requests used up; "
                       f"it resets at 00:00 UTC, in {self.retry_after_s} s")
        else:
            message = (f"rate limit of {self.policy.burst} requests "
                       f"(refilling {self.policy.refill_per_s:g} per second) exceeded; "
                       f"retry in {self.retry_after_s} s")
        return RateLimited(message, retry_after_s=self.retry_after_s,
                           headers=self.headers())


def whole_s(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-6))


# The in-process fallback bucket starts with this many seconds of refill (at least one
# token), not a full burst: every process of the fleet fails open at once when Redis
# fails over, and N full bursts would let a user through N times over.
FALLBACK_START_S = 1.0


class LocalBuckets:
    """The same bucket and day counter, in this process only: the fallback while Redis
    is unreachable. A bucket starts nearly empty (`FALLBACK_START_S`) and refills at the
    tier's rate, and the day counts on from what Redis last said, so that while Redis
    fails over, N processes together admit at most N x the tier's rate for those
    seconds: within a minute of a failover that is well under twice the tier's limit."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._state: dict[int, tuple[float, float, int, int]] = {}

    def check(self, user_id: int, policy: RatePolicy, cost: int,
              used_today: int = 0) -> RateDecision:
        now = self._clock.time()
        day = int(now // DAY_S)
        start = min(float(policy.burst), max(1.0, policy.refill_per_s * FALLBACK_START_S))
        tokens, ts, state_day, used = self._state.get(user_id, (start, now, day, used_today))
        tokens = min(policy.burst, tokens + max(0.0, now - ts) * policy.refill_per_s)
        used = used if state_day == day else 0
        day_left = (day + 1) * DAY_S - now
        reason, retry = "", 0.0
        if policy.daily_quota is not None and used + cost > policy.daily_quota:
            reason, retry = "daily", day_left
        elif tokens < cost:
            reason, retry = "rate", (cost - tokens) / policy.refill_per_s
        else:
            tokens -= cost
            used += cost
        self._state[user_id] = (tokens, now, day, used)
        return RateDecision(
            allowed=not reason, policy=policy, remaining=int(tokens),
            reset_s=whole_s((policy.burst - tokens) / policy.refill_per_s),
            retry_after_s=max(1, whole_s(retry)) if reason else 0, daily_used=used,
            daily_reset_s=whole_s(day_left), reason=reason, degraded=True)

    def clear(self) -> None:
        self._state.clear()
