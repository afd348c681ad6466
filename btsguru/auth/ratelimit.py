"""Per-user REST rate limiting: a token bucket and a daily quota, shared by every process.

Beside the flow: `AccessService` asks `RateLimiter.check` once per authenticated `/v1`
request (after the key and scope checks); the answer decides 429 or not and fills the
`RateLimit*` headers. Limits apply per USER (all of a user's keys draw on one bucket),
with the parameters of the user's tier (contract section 5).

Correct across processes and hosts: the bucket and the day's counter live in one Redis
hash per user (`{prefix}rl:{user_id}`, no key material in the name) and one Lua script
refills, spends and counts atomically in a single round trip. The script is sent once
(`EVALSHA`; redis-py's `AsyncScript` reloads it on `NOSCRIPT`, e.g. after a Redis
restart or failover).

Time comes from Redis (`TIME` inside the script), not from the caller's clock: every
process and host then agrees on one clock, so a host whose clock runs ahead cannot mint
tokens and the UTC day (the daily quota's window) turns over at the same instant for
everyone. Redis 5+ replicates a script's effects rather than the script, so reading
`TIME` before writing is allowed (always so since Redis 7).

When Redis cannot be reached, the limiter fails open into an in-process bucket with the
same tier parameters (so each process still enforces the tier's rate on its own, at
worst N processes times the rate) for `FAIL_OPEN_MAX_S`; users see nothing of a Redis
restart or a Sentinel failover. While the circuit is open, requests do not wait on Redis
at all: one probe every `PROBE_INTERVAL_S` checks whether it is back. An outage longer
than that is not a blip: the cached data that the API serves lives in the same Redis,
`/readyz` already reports 503 so balancers drain the process, and daily quotas cannot be
enforced, so the limiter answers 503 `unavailable` with `Retry-After` (never a
traceback) until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from btsguru.auth.tiers import TierLimits
from btsguru.clock import Clock
from btsguru.errors import RateLimited, Unavailable
from btsguru.store.redis import Keys

log = logging.getLogger(__name__)

# A Redis blip (restart, failover) is over well within a minute; longer is an outage.
FAIL_OPEN_MAX_S = 60.0
# While Redis is unreachable, one request a second probes it; the rest use the local bucket.
PROBE_INTERVAL_S = 1.0
# The limiter is on every request's path: a slow Redis must not make every request slow.
REDIS_CALL_TIMEOUT_S = 1.0
UNAVAILABLE_RETRY_AFTER_S = 5
DAY_S = 86_400

# KEYS[1]: the user's bucket hash. ARGV: capacity, refill per second, cost, daily quota
# (-1: unlimited). Returns {allowed, tokens, seconds until full, retry after, used today,
# seconds until the UTC day ends, reason}. Numbers go back as strings: Redis would
# truncate Lua floats to integers.
_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])
local t = redis.call('TIME')
local secs = tonumber(t[1])
local now = secs + tonumber(t[2]) / 1000000
local day = math.floor(secs / 86400)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'day', 'used')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local used = 0
if tonumber(state[3]) == day then used = tonumber(state[4]) or 0 end
local day_left = (day + 1) * 86400 - now
local allowed = 0
local retry = 0
local reason = ''
if quota >= 0 and used + cost > quota then
  reason = 'daily'
  retry = day_left
elseif tokens < cost then
  reason = 'rate'
  retry = (cost - tokens) / rate
else
  allowed = 1
  tokens = tokens - cost
  used = used + cost
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now), 'day', day, 'used', used)
local full = (capacity - tokens) / rate
local ttl = math.ceil(full) + 1
if quota >= 0 and used > 0 and day_left + 1 > ttl then ttl = math.ceil(day_left) + 1 end
redis.call('EXPIRE', KEYS[1], ttl)
return {allowed, string.format('%.6f', tokens), string.format('%.6f', full),
        string.format('%.6f', retry), used, string.format('%.6f', day_left), reason}
"""


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
        policy = f'"default";q={p.burst};w={p.window_s}'
        current = f'"default";r={self.remaining};t={self.reset_s}'
        daily_remaining = self.daily_remaining
        if daily_remaining is not None:
            policy += f', "daily";q={p.daily_quota};w={DAY_S}'
            current += f', "daily";r={daily_remaining};t={self.daily_reset_s}'
            remaining = min(remaining, daily_remaining)
        return {
            "RateLimit-Policy": policy,
            "RateLimit": current,
            "RateLimit-Limit": str(p.burst),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(self.reset_s),
            "X-RateLimit-Limit": str(p.burst),
            "X-RateLimit-Remaining": str(remaining),
        }

    def error(self) -> RateLimited:
        """The 429 for a refused request."""
        if self.reason == "daily":
            message = (f"daily quota of {self.policy.daily_quota} requests used up; "
                       f"it resets at 00:00 UTC, in {self.retry_after_s} s")
        else:
            message = (f"rate limit of {self.policy.burst} requests "
                       f"(refilling {self.policy.refill_per_s:g} per second) exceeded; "
                       f"retry in {self.retry_after_s} s")
        return RateLimited(message, retry_after_s=self.retry_after_s)


def _whole_s(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-6))


class _LocalBuckets:
    """The same bucket and day counter, in this process only: the fallback while Redis
    is unreachable."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._state: dict[int, tuple[float, float, int, int]] = {}

    def check(self, user_id: int, policy: RatePolicy, cost: int) -> RateDecision:
        now = self._clock.time()
        day = int(now // DAY_S)
        tokens, ts, state_day, used = self._state.get(user_id, (policy.burst, now, day, 0))
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
            reset_s=_whole_s((policy.burst - tokens) / policy.refill_per_s),
            retry_after_s=max(1, _whole_s(retry)) if reason else 0, daily_used=used,
            daily_reset_s=_whole_s(day_left), reason=reason, degraded=True)

    def clear(self) -> None:
        self._state.clear()


class RateLimiter:
    """Token bucket plus daily quota per user, with Redis as the authority.

    Guarantees: with Redis reachable, the requests allowed for one user across all
    processes never exceed `burst + refill_per_s * elapsed`, nor `daily_quota` per UTC
    day; a refused request spends nothing."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, clock: Clock, *,
                 fail_open_max_s: float = FAIL_OPEN_MAX_S,
                 call_timeout_s: float = REDIS_CALL_TIMEOUT_S) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._script = redis.register_script(_BUCKET_LUA)
        self._local = _LocalBuckets(clock)
        self._fail_open_max_s = fail_open_max_s
        self._call_timeout_s = call_timeout_s
        self._down_since: float | None = None
        self._next_probe = 0.0

    def bucket_key(self, user_id: int) -> str:
        return self._keys.key("rl", user_id)

    async def check(self, user_id: int, policy: RatePolicy, cost: int = 1) -> RateDecision:
        """Spend `cost` tokens of the user's bucket and day if both allow it.

        Raises `Unavailable` only when Redis has been unreachable for longer than the
        fail-open window."""
        now = self._clock.monotonic()
        if self._down_since is not None and now < self._next_probe:
            return self._fallback(user_id, policy, cost, now)
        try:
            reply = await asyncio.wait_for(
                self._script(keys=[self.bucket_key(user_id)],
                             args=[policy.burst, repr(policy.refill_per_s), cost,
                                   -1 if policy.daily_quota is None else policy.daily_quota]),
                self._call_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            if self._down_since is None:
                self._down_since = now
                log.warning("rate limiter: Redis unreachable (%s); limiting in-process "
                            "for up to %g s", exc or type(exc).__name__,
                            self._fail_open_max_s)
            self._next_probe = now + PROBE_INTERVAL_S
            return self._fallback(user_id, policy, cost, now)
        if self._down_since is not None:
            log.info("rate limiter: Redis is back after %.1f s", now - self._down_since)
            self._down_since = None
            self._local.clear()
        return _decision(reply, policy)

    def _fallback(self, user_id: int, policy: RatePolicy, cost: int,
                  now: float) -> RateDecision:
        assert self._down_since is not None
        if now - self._down_since > self._fail_open_max_s:
            raise Unavailable("rate limiting is unavailable (Redis unreachable); retry shortly",
                              retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
        return self._local.check(user_id, policy, cost)

    async def reset(self, user_id: int) -> None:
        """Refill a user's bucket and forget today's count (operators, tests)."""
        await self._redis.delete(self.bucket_key(user_id))


def _decision(reply: list[bytes | int], policy: RatePolicy) -> RateDecision:
    allowed, tokens, full_s, retry_s, used, day_left_s, reason = reply
    reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
    return RateDecision(
        allowed=int(allowed) == 1, policy=policy, remaining=int(float(tokens)),
        reset_s=_whole_s(float(full_s)),
        retry_after_s=max(1, _whole_s(float(retry_s))) if reason_text else 0,
        daily_used=int(used), daily_reset_s=_whole_s(float(day_left_s)), reason=reason_text)
