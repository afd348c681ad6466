"""A lease: one user's tokens held by this process, and the Lua script that hands them out
and takes them back atomically in Redis (see `auth.ratelimit` for why leases, and the
bound they keep).

Beside the flow, under `auth.ratelimit`: the limiter keeps one `Lease` per active user,
spends from it locally and calls `LEASE_LUA` when it runs low or expires.
"""

from __future__ import annotations

import asyncio
from collections import deque

from btsguru.auth.ratepolicy import DAY_S, RateDecision, RatePolicy, whole_s

# A refused user is refused locally until the bucket can have a token again, but for no
# longer than this: tokens another process gives back are seen within a second.
REFUSAL_MEMORY_S = 1.0

# KEYS[1]: the user's bucket hash. ARGV: capacity, refill per second, tokens wanted,
# daily quota (-1: unlimited), tokens needed at least, tokens given back, the UTC day they
# were counted on. Gives back first, then grants what it can of the wanted tokens, all or
# nothing below the needed count. Returns {granted, tokens left, seconds until full,
# retry after, used today, seconds until the UTC day ends, reason, day}. Numbers go back
# as strings: Redis would truncate Lua floats to integers.
LEASE_LUA = """
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



class Lease:
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
            reset_s=whole_s((p.burst - tokens) / p.refill_per_s),
            retry_after_s=0 if allowed else max(1, whole_s(self.retry_s - elapsed)),
            daily_used=max(0, self.used - self.held),
            daily_reset_s=whole_s(self.day_left_s - elapsed),
            reason="" if allowed else self.reason)
