"""Per-user REST rate limiting: a token bucket and a daily quota, shared by every process,
without a Redis round trip per request.

Beside the flow: `AccessService` asks `RateLimiter.check` once per authenticated `/v1`
request (after the key and scope checks); the answer decides 429 or not and fills the
`RateLimit*` headers. Limits apply per USER (all of a user's keys draw on one bucket),
with the parameters of the user's tier (contract section 5). What a policy and a
decision are lives in `auth.ratepolicy`; one user's lease and the script behind it in
`auth.ratelease`; this module is the limiter that spends, refills and falls back.

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
worst N processes times the rate) for `FAIL_OPEN_MAX_S`; users at the tier's pace see
nothing of a Redis restart or a failover. That bucket starts with one second's refill,
not a full burst, and the day counts on from Redis's last word: N processes failing
open together cannot hand out N bursts. With a failover's rollback (a replica that
missed the last leases hands those tokens out again, at most one burst) a user's limit
loosens, for the minute of the failover only, by one burst plus N x the rate for the
seconds Redis was away: under twice the tier's minute as long as N x (those seconds + 1)
stays under 60 (three processes and a 5-second failover: 18). While the circuit is
open, requests do not wait on Redis at all: one probe every `PROBE_INTERVAL_S` checks
whether it is back. An outage longer than that is not a blip: the cached data that the
API serves lives in the same Redis, `/readyz` already reports 503 so balancers drain
the process, and daily quotas cannot be enforced, so the limiter answers 503
`unavailable` with `Retry-After` (never a traceback) until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from btsguru.auth.ratelease import LEASE_LUA, Lease
from btsguru.auth.ratepolicy import LocalBuckets, RateDecision, RatePolicy
from btsguru.clock import Clock
from btsguru.errors import Unavailable
from btsguru.lifecycle import cancel_tasks
from btsguru.store.redis import Keys, RedisClient
from btsguru.store.typed import queue_script, reset_pipeline

__all__ = ["RETURN_INTERVAL_S", "RateDecision", "RateLimiter", "RatePolicy"]

log = logging.getLogger(__name__)

# A Redis blip (restart, failover) is over well within a minute; longer is an outage.
FAIL_OPEN_MAX_S = 60.0
# While Redis is unreachable, one request a second probes it; the rest use the local bucket.
PROBE_INTERVAL_S = 1.0
# The limiter is on every request's path: a slow Redis must not make every request slow.
REDIS_CALL_TIMEOUT_S = 1.0
UNAVAILABLE_RETRY_AFTER_S = 5
# Leases are taken ahead of need once demand has doubled them this far: a light user
# (one request now and then) costs no speculative call.
PREFETCH_MIN_TOKENS = 4
# Expired leases go back to Redis this often (the background sweep).
RETURN_INTERVAL_S = 0.5
# A user's lease state is forgotten this long after its last use.
IDLE_FORGET_S = 300.0

class _RedisDown(Exception):
    """The lease call failed: the caller falls back to the in-process bucket."""


class RateLimiter:
    """Token bucket plus daily quota per user, with Redis as the authority and leases
    spent locally (see the module for the bound they keep).

    Guarantees: with Redis reachable, the requests allowed for one user across all
    processes never exceed `burst + refill_per_s * (elapsed + lease_s)`, nor
    `daily_quota` per UTC day; a refused request spends nothing."""

    def __init__(self, redis: RedisClient, keys: Keys, clock: Clock, *,
                 fail_open_max_s: float = FAIL_OPEN_MAX_S,
                 call_timeout_s: float = REDIS_CALL_TIMEOUT_S) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._script = redis.register_script(LEASE_LUA)
        self._local = LocalBuckets(clock)
        self._fail_open_max_s = fail_open_max_s
        self._call_timeout_s = call_timeout_s
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._leases: dict[int, Lease] = {}
        self._orphans: dict[int, list[Lease]] = {}  # replaced leases with tokens to give back
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
            lease = self._leases[user_id] = Lease(policy)
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

    def _spent(self, user_id: int, lease: Lease, now: float) -> RateDecision:
        if lease.size >= PREFETCH_MIN_TOKENS and lease.held * 2 <= lease.size \
                and lease.pending is None \
                and now >= lease.refused_until and self._down_since is None:
            # running low: the next lease, ahead of need
            self._start_call(user_id, lease, want=lease.size, need=1, reserve=0)
        return lease.decision(True, now)

    def _start_call(self, user_id: int, lease: Lease, *, want: int, need: int,
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

    async def _call(self, user_id: int, lease: Lease, want: int, need: int,
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

    def _retire(self, user_id: int, lease: Lease, now: float) -> None:
        lease.expire(float("inf"))  # everything it holds goes back
        if lease.returning:
            self._orphans.setdefault(user_id, []).append(lease)

    def _fallback(self, user_id: int, policy: RatePolicy, cost: int,
                  now: float) -> RateDecision:
        assert self._down_since is not None
        if now - self._down_since > self._fail_open_max_s:
            raise Unavailable("rate limiting is unavailable (Redis unreachable); retry shortly",
                              retry_after_s=UNAVAILABLE_RETRY_AFTER_S)
        lease = self._leases.get(user_id)
        return self._local.check(user_id, policy, cost,
                                 lease.used if lease is not None else 0)

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
            await queue_script(self._script, pipe, keys=[self.bucket_key(user_id)],
                               args=[p.burst, repr(p.refill_per_s), 0,
                                     -1 if p.daily_quota is None else p.daily_quota, 0,
                                     back, lease.day])
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
