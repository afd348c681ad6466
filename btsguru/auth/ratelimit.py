"""Per-user REST rate limiting: a token bucket and a daily quota, shared by every process,
without a Redis round trip per request.

Beside the flow: `AccessService` asks `RateLimiter.check` once per authenticated `/v1`
request (after the key and scope checks); the answer decides 429 or not and fills the
`RateLimit*` headers. Limits apply per USER (all of a user's keys draw on one bucket),
with the parameters of the user's tier (contract section 5).

The authority is Redis: the bucket and the day's counter live in one hash per user
(`{prefix}rl:{user_id}`, no key material in the name) and one Lua script refills and
spends atomically, with Redis's own clock (`TIME` inside the script), so every process
and host agrees on one clock and the UTC day turns over at the same instant for everyone
(Redis 5+ replicates a script's effects, so reading `TIME` before writing is allowed).
The script is sent once (`EVALSHA`; redis-py's `AsyncScript` reloads it on `NOSCRIPT`).

Leases: a process does not ask Redis per request. It takes a small *lease* of the
user's tokens in one script call (the tokens leave the bucket and count on the day at
once) and spends them locally; when the lease runs low it takes the next one in the
background, ahead of need. A lease may only be spent for `lease_s` after it was asked
for (`LEASE_SHARE` of the bucket's fill time, at most `MAX_LEASE_S`); what is left then
goes back to the bucket and the day with the next call (or the background sweep). Hence
the bound, whatever the number of processes: tokens in the bucket plus tokens held in
leases never exceed `burst + refill_per_s * lease_s` = 1.04 x burst, so over any
interval T the requests admitted across all processes stay under
`burst + refill_per_s * (T + lease_s)`, within 4% of the bucket's own limit; the daily
quota is never exceeded at all (a lease is cut to what is left of it). The price is on
the other side: tokens one process holds are not available to another until spent or
given back (at most `lease_s` later), so a user hammering two processes at the limit
may be admitted slightly less than the limit. The lease size adapts to demand (doubling
while leases run dry, halving when one expires unspent) up to `LEASE_SHARE` of the
burst, so a light user takes one token at a time, exactly as without leases, and a
heavy one costs a Redis call per hundreds of requests. A refusal is remembered until
the bucket can next have a token (at most `REFUSAL_MEMORY_S`), so a client hammering
while refused costs no round trip either.

The headers are honest about what this process knows: `remaining` is the bucket as
Redis reported it at this process's last call plus the tokens this process still
holds (other processes' spending since then is not seen); `daily_used` likewise.

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
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from btsguru.auth.tiers import TierLimits
from btsguru.clock import Clock
from btsguru.errors import RateLimited, Unavailable
from btsguru.lifecycle import cancel_tasks
from btsguru.store.redis import Keys
from btsguru.store.typed import reset_pipeline

log = logging.getLogger(__name__)

# A Redis blip (restart, failover) is over well within a minute; longer is an outage.
FAIL_OPEN_MAX_S = 60.0
# While Redis is unreachable, one request a second probes it; the rest use the local bucket.
PROBE_INTERVAL_S = 1.0
# The limiter is on every request's path: a slow Redis must not make every request slow.
REDIS_CALL_TIMEOUT_S = 1.0
UNAVAILABLE_RETRY_AFTER_S = 5
DAY_S = 86_400
# A lease lives this share of the bucket's fill time (burst / refill), so the tokens held
# across processes add at most 4% of the burst to the bucket: the issue allows 5%.
LEASE_SHARE = 0.04
# ... and never longer than this: unspent tokens go back within 2 s of their lease.
MAX_LEASE_S = 2.0
# The largest lease: past a few hundred requests per call, Redis's share of the cost is
# already negligible.
MAX_LEASE_TOKENS = 1_000
# A refused user is refused locally until the bucket can have a token again, but for no
# longer than this: tokens another process gives back are seen within a second.
REFUSAL_MEMORY_S = 1.0
# Leases are taken ahead of need once demand has doubled them this far: a light user
# (one request now and then) costs no speculative call.
PREFETCH_MIN_TOKENS = 4
# Expired leases go back to Redis this often (the background sweep).
RETURN_INTERVAL_S = 0.5
# A user's lease state is forgotten this long after its last use.
IDLE_FORGET_S = 300.0

# KEYS[1]: the user's bucket hash. ARGV: capacity, refill per second, tokens wanted,
# daily quota (-1: unlimited), tokens needed at least, tokens given back, the UTC day they
# were counted on. Gives back first, then grants what it can of the wanted tokens, all or
# nothing below the needed count. Returns {granted, tokens left, seconds until full,
# retry after, used today, seconds until the UTC day ends, reason, day}. Numbers go back
# as strings: Redis would truncate Lua floats to integers.
_LEASE_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local back = tonumber(ARGV[6])
local back_day = tonumber(ARGV[7])
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
if back > 0 then
  tokens = math.min(capacity, tokens + back)
  if back_day == day then used = math.max(0, used - back) end
end
local day_left = (day + 1) * 86400 - now
local grant = math.min(want, math.floor(tokens))
if quota >= 0 then grant = math.min(grant, quota - used) end
local retry = 0
local reason = ''
if need > 0 and grant < need then
  grant = 0
  if quota >= 0 and used + need > quota then
    reason = 'daily'
    retry = day_left
  else
    reason = 'rate'
    retry = (need - tokens) / rate
  end
elseif grant < 0 then
  grant = 0
end
tokens = tokens - grant
used = used + grant
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now), 'day', day, 'used', used)
local full = (capacity - tokens) / rate
local ttl = math.ceil(full) + 1
if quota >= 0 and used > 0 and day_left + 1 > ttl then ttl = math.ceil(day_left) + 1 end
redis.call('EXPIRE', KEYS[1], ttl)
return {grant, string.format('%.6f', tokens), string.format('%.6f', full),
        string.format('%.6f', retry), used, string.format('%.6f', day_left), reason, day}
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


class _Lease:
    """One user's tokens held by this process, and what Redis said at the last call.

    `parts` are the leases not yet spent, oldest first: [deadline (monotonic), tokens
    left, tokens granted].
    Tokens are spent oldest first and only before their deadline; expired ones are
    queued in `returning` and given back with the next call."""

    def __init__(self, policy: RatePolicy) -> None:
        self.policy = policy
        self.size = 1  # tokens wanted by the next lease, adapted to demand
        self.parts: deque[list[float]] = deque()
        self.held = 0
        self.returning = 0
        self.day = -1  # the UTC day (Redis's clock) the held tokens count on
        self.bucket_left = float(policy.burst)  # Redis's tokens after our last call
        self.used = 0  # Redis's day count after our last call (our held tokens included)
        self.day_left_s = float(DAY_S)
        self.seen_at = 0.0  # monotonic time our last call was sent
        self.refused_until = 0.0
        self.reason = ""
        self.retry_s = 0.0
        self.pending: asyncio.Task[int] | None = None

    def expire(self, now: float) -> None:
        parts = self.parts
        while parts and parts[0][0] <= now:
            _deadline, tokens, granted = (int(x) for x in parts.popleft())
            self.held -= tokens
            self.returning += tokens
            # more than we needed: next time, what was used of it
            self.size = max(1, min(self.size, granted - tokens))

    def take(self, cost: int, now: float) -> bool:
        if self.parts:
            self.expire(now)
        if self.held < cost:
            return False
        self.held -= cost
        left = cost
        parts = self.parts
        while left:
            part = parts[0]
            spent = min(left, int(part[1]))
            part[1] -= spent
            left -= spent
            if not part[1]:
                parts.popleft()
                if part[0] - now > self.policy.lease_s / 2:  # spent in under half its life
                    self.size = min(self.policy.max_lease, self.size * 2)
        return True

    def apply(self, reply: list[bytes | int], sent: float, reserve: int) -> int:
        """Take in Redis's answer; the granted tokens but `reserve` (handed straight to
        the request that asked) become a part. Returns the tokens granted."""
        granted, tokens, _full_s, retry_s, used, day_left_s, reason, day = reply
        granted = int(granted)
        self.bucket_left = float(tokens)
        self.used = int(used)
        self.day_left_s = float(day_left_s)
        self.seen_at = sent
        self.day = int(day)
        if granted:
            self.refused_until = 0.0
            self.reason = ""
            extra = granted - min(reserve, granted)
            if extra:
                deadline = sent + min(self.policy.lease_s, self.day_left_s)
                self.parts.append([deadline, extra, extra])
                self.held += extra
        elif reason:
            self.reason = reason.decode() if isinstance(reason, bytes) else str(reason)
            self.retry_s = float(retry_s)
            self.refused_until = sent + min(self.retry_s, REFUSAL_MEMORY_S)
        return granted

    def decision(self, allowed: bool, now: float) -> RateDecision:
        p = self.policy
        tokens = min(float(p.burst), self.bucket_left + self.held)
        elapsed = now - self.seen_at
        return RateDecision(
            allowed=allowed, policy=p, remaining=int(tokens),
            reset_s=_whole_s((p.burst - tokens) / p.refill_per_s),
            retry_after_s=0 if allowed else max(1, _whole_s(self.retry_s - elapsed)),
            daily_used=max(0, self.used - self.held),
            daily_reset_s=_whole_s(self.day_left_s - elapsed),
            reason="" if allowed else self.reason)


class _RedisDown(Exception):
    """The lease call failed: the caller falls back to the in-process bucket."""


class RateLimiter:
    """Token bucket plus daily quota per user, with Redis as the authority and leases
    spent locally (see the module for the bound they keep).

    Guarantees: with Redis reachable, the requests allowed for one user across all
    processes never exceed `burst + refill_per_s * (elapsed + lease_s)`, nor
    `daily_quota` per UTC day; a refused request spends nothing."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, clock: Clock, *,
                 fail_open_max_s: float = FAIL_OPEN_MAX_S,
                 call_timeout_s: float = REDIS_CALL_TIMEOUT_S) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._script = redis.register_script(_LEASE_LUA)
        self._local = _LocalBuckets(clock)
        self._fail_open_max_s = fail_open_max_s
        self._call_timeout_s = call_timeout_s
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._leases: dict[int, _Lease] = {}
        self._orphans: dict[int, list[_Lease]] = {}  # replaced leases with tokens to give back
        self._calls: set[asyncio.Task[int]] = set()

    def bucket_key(self, user_id: int) -> str:
        return self._keys.key("rl", user_id)

    async def check(self, user_id: int, policy: RatePolicy, cost: int = 1) -> RateDecision:
        """Spend `cost` tokens of the user's bucket and day if both allow it.

        Raises `Unavailable` only when Redis has been unreachable for longer than the
        fail-open window."""
        now = self._clock.monotonic()
        lease = self._leases.get(user_id)
        if lease is None or lease.policy != policy:  # first use, or the tier changed
            if lease is not None:
                self._retire(user_id, lease, now)
            lease = self._leases[user_id] = _Lease(policy)
        while True:
            if lease.take(cost, now):
                return self._spent(user_id, lease, now)
            if self._down_since is not None and now < self._next_probe:
                return self._fallback(user_id, policy, cost, now)
            if now < lease.refused_until:
                return lease.decision(False, now)
            lease.size = min(policy.max_lease, max(cost, lease.size * 2))  # ran dry
            try:
                if lease.pending is not None:  # someone's call is under way: share it
                    await asyncio.shield(lease.pending)
                else:
                    task = self._start_call(user_id, lease, want=lease.size, need=cost,
                                            reserve=cost)
                    if await asyncio.shield(task) >= cost:
                        return lease.decision(True, self._clock.monotonic())
            except _RedisDown:
                return self._fallback(user_id, policy, cost, self._clock.monotonic())
            now = self._clock.monotonic()

    def check_local(self, user_id: int, policy: RatePolicy, cost: int = 1) -> RateDecision | None:
        """`check` when this process holds the tokens: the allowed decision, without
        waiting; None when the answer needs Redis (call `check`; nothing was spent)."""
        lease = self._leases.get(user_id)
        if lease is None or lease.policy != policy:
            return None
        now = self._clock.monotonic()
        if not lease.take(cost, now):
            return None
        return self._spent(user_id, lease, now)

    def _spent(self, user_id: int, lease: _Lease, now: float) -> RateDecision:
        if lease.size >= PREFETCH_MIN_TOKENS and lease.held * 2 <= lease.size \
                and lease.pending is None \
                and now >= lease.refused_until and self._down_since is None:
            # running low: the next lease, ahead of need
            self._start_call(user_id, lease, want=lease.size, need=1, reserve=0)
        return lease.decision(True, now)

    def _start_call(self, user_id: int, lease: _Lease, *, want: int, need: int,
                    reserve: int) -> asyncio.Task[int]:
        task = asyncio.create_task(self._call(user_id, lease, want, need, reserve))
        lease.pending = task
        self._calls.add(task)
        task.add_done_callback(self._call_done)
        return task

    def _call_done(self, task: asyncio.Task[int]) -> None:
        self._calls.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a prefetch's failure is the next caller's news

    async def _call(self, user_id: int, lease: _Lease, want: int, need: int,
                    reserve: int) -> int:
        """One script call: give back what expired, lease `want` tokens (at least `need`
        or none). Returns the tokens granted; raises `_RedisDown` on a Redis failure."""
        sent = self._clock.monotonic()
        lease.expire(sent)
        back = lease.returning + sum(old.returning for old in self._orphans.pop(user_id, []))
        lease.returning = 0
        p = lease.policy
        try:
            reply = await asyncio.wait_for(
                self._script(keys=[self.bucket_key(user_id)],
                             args=[p.burst, repr(p.refill_per_s), want,
                                   -1 if p.daily_quota is None else p.daily_quota, need,
                                   back, lease.day]),
                self._call_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            lease.returning += back  # given back with a later call
            if self._down_since is None:
                self._down_since = sent
                log.warning("rate limiter: Redis unreachable (%s); limiting in-process "
                            "for up to %g s", exc or type(exc).__name__,
                            self._fail_open_max_s)
            self._next_probe = sent + PROBE_INTERVAL_S
            raise _RedisDown from exc
        finally:
            lease.pending = None
        if self._down_since is not None:
            log.info("rate limiter: Redis is back after %.1f s", sent - self._down_since)
            self._down_since = None
            self._local.clear()
        return lease.apply(reply, sent, reserve)

    def _retire(self, user_id: int, lease: _Lease, now: float) -> None:
        lease.expire(float("inf"))  # everything it holds goes back
        if lease.returning:
            self._orphans.setdefault(user_id, []).append(lease)

    def _fallback(self, user_id: int, policy: RatePolicy, cost: int,
                  now: float) -> RateDecision:
        assert self._down_since is not None
        if now - self._down_since > self._fail_open_max_s:
            raise Unavailable("rate limiting is unavailable (Redis unreachable); retry shortly",
                              retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
        return self._local.check(user_id, policy, cost)

    async def return_expired(self, *, everything: bool = False) -> int:
        """Give back to Redis the tokens of expired leases (all held ones when
        `everything`, at shutdown), in one pipelined round trip; forget idle users.
        Returns the tokens given back."""
        now = self._clock.monotonic()
        for user_id, lease in list(self._leases.items()):
            if everything:
                self._retire(user_id, lease, now)
                del self._leases[user_id]
                continue
            lease.expire(now)
            if lease.returning and lease.pending is None:
                self._orphans.setdefault(user_id, []).append(lease)
            elif not lease.held and lease.pending is None and \
                    now - lease.seen_at > IDLE_FORGET_S:
                del self._leases[user_id]
        orphans, self._orphans = self._orphans, {}
        work = [(user_id, lease, lease.returning) for user_id, leases in orphans.items()
                for lease in {id(x): x for x in leases}.values() if lease.returning]
        if not work:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for user_id, lease, back in work:
            lease.returning = 0
            p = lease.policy
            await self._script(keys=[self.bucket_key(user_id)],
                               args=[p.burst, repr(p.refill_per_s), 0,
                                     -1 if p.daily_quota is None else p.daily_quota, 0,
                                     back, lease.day], client=pipe)
        try:
            await asyncio.wait_for(pipe.execute(), self._call_timeout_s)
        except BaseException:
            for user_id, lease, back in work:
                lease.returning += back
                self._orphans.setdefault(user_id, []).append(lease)
            raise
        finally:
            # gives its connection back, also when execute was cut short (a timeout)
            await reset_pipeline(pipe)
        return sum(back for _, _, back in work)

    async def close(self) -> None:
        """Stop the calls under way and give back every token held (best effort)."""
        await cancel_tasks(self._calls, owner="rate limiter")
        try:
            await self.return_expired(everything=True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter: leased tokens not given back at shutdown: %s", exc)

    async def reset(self, user_id: int) -> None:
        """Refill a user's bucket and forget today's count (operators, tests)."""
        self._leases.pop(user_id, None)
        self._orphans.pop(user_id, None)
        await self._redis.delete(self.bucket_key(user_id))
