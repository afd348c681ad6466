"""The authenticated hot path: API key -> principal -> scope and tier check -> rate limit
-> usage count, for every `/v1` request and stream connection.

Beside the flow: `handlers.api.ApiHandler` (and the stream transports) call
`AccessService`; it owns the `RateLimiter` and the `UsageService` and their background
work (usage flush and rollup, the invalidation listener).

A request costs no database query: `authenticate` keeps a short in-process cache from
the key's SHA-256 to its principal (key and user ids, tier limits, scopes, expiry), and
caches "no such key" as well so a flood of bad keys does not reach the database.
Concurrent misses for one key share one query. Only hashes and ids are kept, in memory
and in Redis; the key itself is hashed and dropped.

Revocation, a disabled user or a tier change reach every process within
`AUTH_CACHE_TTL_S` at worst, usually at once: whoever makes the change (the console, the
CLI) calls `invalidate_key`/`invalidate_user`/`invalidate_tier`, which drops the local
entries and publishes on `{prefix}bus:auth:invalidate`; every process listens and drops
its own. The TTL is the safety net for a lost message (pub/sub is at-most-once) or a
change made straight in the database; an entry's age counts from the start of the query
that produced it, so a read racing a revocation cannot outlive the bound. A listener that
reconnects clears its whole cache, since it may have missed messages meanwhile. Expiry
(`expires_at`) is checked on every request, not cached. Every invalidation, local or
heard, is also handed to the `on_invalidation` listeners: open streams make no further
requests, so `realtime.revocation` re-checks their keys and closes the revoked ones.

A database outage does not stop keys this process already knows (issue 10: the hot
paths keep working while the database is unreachable). When the query that would
refresh an entry fails with `Unavailable` (or takes longer than `STALE_WAIT_S`), the
last principal the database gave is served again for `STALE_RETRY_S` at a time, for at
most `AUTH_STALE_IF_ERROR_S` after that answer; the refresh is retried meanwhile.
Invalidations still apply at once, since they travel through Redis, not the database.
A key this process has not seen gets 503 until the database answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeVar

import orjson
from redis.exceptions import RedisError

from btsguru.auth.keys import AuthenticatedKey, KeyService, hash_key
from btsguru.auth.ratelimit import RETURN_INTERVAL_S, RateDecision, RateLimiter, RatePolicy
from btsguru.auth.tiers import TierLimits, TierService
from btsguru.auth.usage import FLUSH_INTERVAL_S, ROLLUP_INTERVAL_S, DayUsage, UsageService
from btsguru.auth.watch import AccessWatch
from btsguru.backoff import Backoff, every
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import (
    BtsguruError,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    store_unavailable,
)
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import listen
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

_V = TypeVar("_V")

# The contract: a revoked key stops working on every process within 5 s. Pub/sub makes
# it immediate; this TTL bounds it when a message is lost, with a second of margin for
# the query and the commit of the revocation itself.
AUTH_CACHE_TTL_S = 4.0
# Long enough that a client retrying a bad key in a loop costs one query per interval.
NEGATIVE_CACHE_TTL_S = 4.0
# Bounds memory when someone sprays random keys: the oldest entries go first.
MAX_CACHED_KEYS = 50_000
# Stale-if-error (see the module): a known key keeps working through a database outage
# this long after the database last vouched for it; an hour covers a failover or a
# restart with margin, while a process cut off for longer stops trusting old answers.
AUTH_STALE_IF_ERROR_S = 3600.0
# While the database is failing, a served-stale entry is retried this often (one
# query per key, in the background, as the refresh-ahead does).
STALE_RETRY_S = 2.0
# A database that hangs instead of refusing must not hold a request for its connect
# timeout: after this long the stale principal answers and the query goes on alone.
STALE_WAIT_S = 1.0
# last_used_at is for people ("used 2 minutes ago"): a write a minute is plenty.
LAST_USED_INTERVAL_S = 60.0
MAX_LOOP_BACKOFF_S = 60.0
STOP_FLUSH_TIMEOUT_S = 5.0
USAGE_RETRY_AFTER_S = 5
USAGE_DB_DOWN = ("usage is unavailable right now (the database does not answer); your "
                 "requests are still counted and will show when it is back")


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what their key and tier allow. Never the key itself."""

    key_id: int
    user_id: int
    key_prefix: str  # safe to log
    tier: TierLimits
    scopes: frozenset[str]
    expires_at: float | None  # epoch seconds
    policy: RatePolicy = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", RatePolicy.from_tier(self.tier))


@dataclass(frozen=True)
class Invalidation:
    """What one invalidation covers (a key by its hash, a user, a tier, or everything),
    for whoever holds principals beyond one request."""

    key_hash: str | None = None
    user_id: int | None = None
    tier: str | None = None
    everything: bool = False


class _Entry(NamedTuple):
    expires_at: float  # monotonic; the entry is served until then
    principal: Principal
    vouched_at: float  # monotonic start of the last query that found it


@dataclass(frozen=True)
class Admission:
    principal: Principal
    decision: RateDecision


class AccessService:
    """Authentication, authorization, rate limiting and usage for API keys."""

    def __init__(self, redis: RedisStores, keys: KeyService, tiers: TierService,
                 config: Config, clock: Clock, runner: DatabaseRunner, *,
                 cache_ttl_s: float = AUTH_CACHE_TTL_S,
                 negative_ttl_s: float = NEGATIVE_CACHE_TTL_S,
                 max_cached_keys: int = MAX_CACHED_KEYS,
                 stale_if_error_s: float = AUTH_STALE_IF_ERROR_S) -> None:
        self._redis = redis
        self._keys = keys
        self._tiers = tiers
        self._config = config
        self._clock = clock
        self._cache_ttl_s = cache_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_cached = max_cached_keys
        self._stale_if_error_s = stale_if_error_s
        self.limiter = RateLimiter(redis.data, redis.keys, clock)
        self.usage = UsageService(redis.data, redis.keys, runner, clock)
        self.watch = AccessWatch(redis.data, redis.keys, clock)  # for the alerter
        self.invalidation_channel = redis.keys.channel("auth", "invalidate")
        self._principals: OrderedDict[str, _Entry] = OrderedDict()  # key hash -> entry
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key hash -> expires at
        self._tier_cache: dict[str, tuple[float, TierLimits]] = {}
        self._loading: dict[str, asyncio.Task[Principal | None]] = {}
        self._generation = 0  # bumped by every invalidation
        self._serving_stale = False  # the database failed; known keys are served stale
        self._used_key_ids: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # set while subscribed to invalidations
        self._listeners: list[Callable[[Invalidation], None]] = []

    # -- the hot path --

    def cached_principal(self, key: str) -> Principal | None:
        """The principal of `key` if this process has it cached and valid (not expired),
        without waiting; None otherwise (then `authenticate` decides)."""
        digest = hash_key(key)
        cached = self._principals.get(digest)
        now = self._clock.monotonic()
        if cached is None or cached[0] <= now:
            return None
        self._refresh_ahead(digest, key, cached[0], now)
        principal = cached[1]
        if principal.expires_at is not None and principal.expires_at <= self._clock.time():
            return None
        return principal

    async def authenticate(self, key: str | None) -> Principal:
        """The principal of `key`; `Unauthorized` for a missing, unknown, revoked or
        expired key or a disabled user; `Unavailable` when the database is down and the
        key is not cached."""
        if not key:
            raise Unauthorized("missing API key: send it in the X-API-Key header "
                               "or as Authorization: Bearer KEY")
        digest = hash_key(key)
        now = self._clock.monotonic()
        cached = self._principals.get(digest)
        if cached is not None and cached[0] > now:
            principal: Principal | None = cached[1]
            self._refresh_ahead(digest, key, cached[0], now)
        elif self._unknown.get(digest, 0.0) > now:
            principal = None
        elif cached is not None and self._may_serve_stale(cached, now):
            principal = await self._load_or_stale(digest, key, cached)
        else:
            principal = await self._load(digest, key)
        if principal is None:
            raise Unauthorized("invalid API key (unknown, revoked or expired)")
        if principal.expires_at is not None and principal.expires_at <= self._clock.time():
            self._principals.pop(digest, None)
            raise Unauthorized("API key expired")
        return principal

    def authorize(self, principal: Principal, scope: str, *, raw: bool = False) -> None:
        """`Forbidden` unless the key has `scope` and (for the raw proxy) the tier
        includes raw access."""
        if scope not in principal.scopes:
            raise Forbidden(f"this API key does not have the {scope!r} scope")
        if raw and not principal.tier.raw_proxy:
            raise Forbidden(f"the {principal.tier.name} tier does not include the raw proxy")

    async def limit(self, principal: Principal, cost: int = 1) -> RateDecision:
        """Spend from the user's bucket and daily quota (see `RateLimiter.check`)."""
        decision = await self.limiter.check(principal.user_id, principal.policy, cost)
        self.watch.quota_used(principal.user_id, principal.tier.name, decision.daily_used,
                              principal.tier.daily_quota)
        return decision

    def limit_local(self, principal: Principal, cost: int = 1) -> RateDecision | None:
        """`limit` when this process holds the user's tokens (an allowed decision);
        None when it needs Redis (call `limit`; nothing was spent)."""
        decision = self.limiter.check_local(principal.user_id, principal.policy, cost)
        if decision is not None:
            self.watch.quota_used(principal.user_id, principal.tier.name,
                                  decision.daily_used, principal.tier.daily_quota)
        return decision

    def record(self, principal: Principal, kind: str, *, cache_hit: bool = False) -> None:
        """Count one request or stream connection (no I/O)."""
        self.usage.record(principal.user_id, principal.key_id, kind, cache_hit=cache_hit)
        self._used_key_ids.add(principal.key_id)

    async def admit(self, key: str | None, *, scope: str, raw: bool = False) -> Admission:
        """All three checks at once, for transports without a request handler: raises
        `Unauthorized`, `Forbidden` or `RateLimited` (with `retry_after_s`)."""
        principal = await self.authenticate(key)
        self.authorize(principal, scope, raw=raw)
        decision = await self.limit(principal)
        if not decision.allowed:
            raise decision.error()
        return Admission(principal, decision)

    # -- usage, for /v1/usage and the console --

    async def usage_for_user(self, user_id: int, days: int = 30) -> list[DayUsage]:
        """The user's usage per UTC day, oldest first, today last (see `UsageService`);
        `Unavailable` when Redis or the database cannot answer."""
        return await self._usage(lambda: self.usage.usage_for_user(user_id, days))

    async def usage_for_key(self, key_id: int, days: int = 30) -> list[DayUsage]:
        """One key's usage, like `usage_for_user`."""
        return await self._usage(lambda: self.usage.usage_for_key(key_id, days))

    async def _usage(self, query: Callable[[], Awaitable[list[DayUsage]]]) -> list[DayUsage]:
        await self._flush_quietly()
        try:
            return await query()
        except (RedisError, OSError) as exc:
            raise store_unavailable("usage", exc, retry_after_s=USAGE_RETRY_AFTER_S) from None
        except Unavailable:  # the database: say when to come back, not what failed
            raise Unavailable(USAGE_DB_DOWN, retry_after_s=USAGE_RETRY_AFTER_S) from None

    async def _flush_quietly(self) -> None:
        # This process's own latest requests show at once; others' within a flush.
        try:
            await self.usage.flush()
        except (RedisError, OSError) as exc:
            log.warning("usage flush before a read failed: %s", exc)

    # -- the cache --

    def _refresh_ahead(self, digest: str, key: str, expires_at: float, now: float) -> None:
        """Past half its life, a cached principal is reloaded in the background while it
        is still served: a busy key never makes its requests wait for the database (the
        bound on revocation stays the entry's own expiry)."""
        if expires_at - now < self._cache_ttl_s / 2 and digest not in self._loading:
            self._start_load(digest, key)

    def _start_load(self, digest: str, key: str) -> asyncio.Task[Principal | None]:
        task = asyncio.create_task(self._query(digest, key))
        self._loading[digest] = task
        task.add_done_callback(lambda done: self._loaded(digest, done))
        return task

    async def _load(self, digest: str, key: str) -> Principal | None:
        # Concurrent misses for one key share one query, run as its own task so that a
        # client hanging up does not cancel it for the others.
        task = self._loading.get(digest)
        if task is None:
            task = self._start_load(digest, key)
        return await asyncio.shield(task)

    async def _load_or_stale(self, digest: str, key: str, cached: _Entry) -> Principal | None:
        """`_load`, but a database slower than `STALE_WAIT_S` is not waited for: the
        stale principal answers, for `STALE_RETRY_S`, and the query goes on alone."""
        try:
            return await asyncio.wait_for(self._load(digest, key), STALE_WAIT_S)
        except TimeoutError:
            self._serve_stale(digest, cached, "the database is slow to answer")
            return cached.principal

    def _may_serve_stale(self, entry: _Entry, now: float) -> bool:
        return entry.vouched_at + self._stale_if_error_s > now

    def _serve_stale(self, digest: str, entry: _Entry, why: str) -> None:
        """Serve `entry` again for `STALE_RETRY_S` (then a query is tried again)."""
        if self._principals.get(digest) is not entry:
            return  # invalidated or replaced meanwhile
        if not self._serving_stale:
            self._serving_stale = True
            log.warning("auth: %s; keys known to this process are served from its cache "
                        "(up to %g s old) until it answers", why, self._stale_if_error_s)
        _put(self._principals, digest,
             entry._replace(expires_at=self._clock.monotonic() + STALE_RETRY_S),
             self._max_cached)

    def _loaded(self, digest: str, task: asyncio.Task[Principal | None]) -> None:
        self._loading.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged twice

    async def _query(self, digest: str, key: str) -> Principal | None:
        started = self._clock.monotonic()
        generation = self._generation
        try:
            found = await self._keys.authenticate(key)
            principal = None if found is None else await self._principal(found, started)
        except Unavailable as exc:
            known = self._principals.get(digest)
            if generation != self._generation or known is None \
                    or not self._may_serve_stale(known, self._clock.monotonic()):
                raise
            self._serve_stale(digest, known, exc.message)
            return known.principal
        if self._serving_stale:
            self._serving_stale = False
            log.info("auth: the database answers again; key lookups are fresh")
        if generation == self._generation:  # no invalidation raced the query
            if principal is None:
                self._principals.pop(digest, None)  # a refresh found it revoked
                _put(self._unknown, digest, started + self._negative_ttl_s, self._max_cached)
            else:
                _put(self._principals, digest,
                     _Entry(started + self._cache_ttl_s, principal, started),
                     self._max_cached)
        return principal

    async def _principal(self, found: AuthenticatedKey, started: float) -> Principal:
        return Principal(
            key_id=found.key_id, user_id=found.user_id, key_prefix=found.prefix,
            tier=await self._tier(found.tier, started), scopes=frozenset(found.scopes),
            expires_at=_epoch(found.expires_at))

    async def _tier(self, name: str, started: float) -> TierLimits:
        cached = self._tier_cache.get(name)
        if cached is not None and cached[0] > self._clock.monotonic():
            return cached[1]
        try:
            tier = await self._tiers.get(name)
        except NotFound:
            # Cannot happen while the foreign key holds; if it does, the free tier's
            # configured limits are the safe reading.
            log.error("user tier %r does not exist; applying the free tier's limits", name)
            tier = self._fallback_tier(name)
        self._tier_cache[name] = (started + self._cache_ttl_s, tier)
        return tier

    def _fallback_tier(self, name: str) -> TierLimits:
        c = self._config
        return TierLimits(
            name=name, rest_rate=c.api_rate_limit, rest_period_s=c.api_rate_limit_duration,
            rest_burst=c.api_rate_limit,
            rest_refill_per_s=c.api_rate_limit / c.api_rate_limit_duration,
            daily_quota=1_000, max_streams=2, max_subscriptions=10, client_messages_per_s=5,
            raw_proxy=False, private_channels=False, client_events=False,
            updated_at=datetime.fromtimestamp(0).astimezone())

    # -- invalidation --

    async def invalidate_key(self, key_hash: str) -> None:
        """Forget one key everywhere (after a revocation); `key_hash` is `hash_key(key)`."""
        self._drop(key_hash=key_hash)
        await self._publish({"key_hash": key_hash})

    async def invalidate_user(self, user_id: int) -> None:
        """Forget every key of a user everywhere (disabled, tier changed, keys revoked)."""
        self._drop(user_id=user_id)
        await self._publish({"user_id": user_id})

    async def invalidate_tier(self, name: str) -> None:
        """Forget every principal on tier `name` everywhere (its limits changed)."""
        self._drop(tier=name)
        await self._publish({"tier": name})

    async def invalidate_all(self) -> None:
        self._drop(everything=True)
        await self._publish({"all": True})

    def on_invalidation(self, listener: Callable[[Invalidation], None]) -> None:
        """Call `listener` (synchronously, so it must not block) after every invalidation
        this process applies, its own or one heard from another process."""
        self._listeners.append(listener)

    async def active_key_ids(self, key_ids: Iterable[int]) -> set[int]:
        """Which of `key_ids` still authenticate, asked of the database (not the cache)."""
        return await self._keys.active_key_ids(key_ids)

    async def _publish(self, message: dict[str, object]) -> None:
        try:
            await self._redis.reverb.publish(self.invalidation_channel, orjson.dumps(message))
        except (RedisError, OSError) as exc:
            log.warning("auth invalidation not published (%s); other processes catch up "
                        "within %g s", exc, self._cache_ttl_s)

    def _drop(self, *, key_hash: str | None = None, user_id: int | None = None,
              tier: str | None = None, everything: bool = False) -> None:
        self._forget(key_hash=key_hash, user_id=user_id, tier=tier, everything=everything)
        what = Invalidation(key_hash, user_id, tier, everything)
        for listener in self._listeners:
            try:
                listener(what)
            except Exception:
                log.exception("an auth invalidation listener failed")

    def _forget(self, *, key_hash: str | None, user_id: int | None, tier: str | None,
                everything: bool) -> None:
        self._generation += 1
        if everything:
            self._principals.clear()
            self._unknown.clear()
            self._tier_cache.clear()
            return
        if key_hash is not None:
            self._principals.pop(key_hash, None)
            self._unknown.pop(key_hash, None)
        if user_id is not None or tier is not None:
            # A re-enabled user's keys may sit in the negative cache: clear it too.
            self._unknown.clear()
            for digest, entry in list(self._principals.items()):
                if entry.principal.user_id == user_id or entry.principal.tier.name == tier:
                    del self._principals[digest]
        if tier is not None:
            self._tier_cache.pop(tier, None)

    def _on_message(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed auth invalidation message")
            return
        if not isinstance(message, dict):
            return
        key_hash, user_id, tier = message.get("key_hash"), message.get("user_id"), \
            message.get("tier")
        self._drop(key_hash=key_hash if isinstance(key_hash, str) else None,
                   user_id=user_id if isinstance(user_id, int) else None,
                   tier=tier if isinstance(tier, str) else None,
                   everything=message.get("all") is True)

    async def _listen(self) -> None:
        """Subscribe and apply invalidations until cancelled, resubscribing on errors;
        everything cached is dropped whenever a message may have been missed."""
        await listen(self._redis.reverb, what="auth invalidation listener",
                     channel=self.invalidation_channel,
                     on_message=lambda m: self._on_message(m["data"]),
                     on_reset=lambda: self._drop(everything=True), listening=self.listening,
                     backoff=Backoff(1.0, MAX_LOOP_BACKOFF_S),
                     sleep=self._clock.sleep)

    # -- background work --

    async def _flush(self) -> None:
        await self.usage.flush()
        await self.watch.flush()

    async def _touch_last_used(self) -> None:
        ids, self._used_key_ids = self._used_key_ids, set()
        try:
            await self._keys.touch_last_used(ids)
        except BaseException:
            self._used_key_ids |= ids
            raise

    async def _rollup(self) -> None:
        applied = await self.usage.rollup()
        if applied:
            log.debug("usage rollup: %d counters applied", applied)

    def start(self) -> None:
        """Start the flush, rollup, last-used and invalidation tasks (idempotent)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._every("usage flush", FLUSH_INTERVAL_S, self._flush)),
            asyncio.create_task(self._every("usage rollup", ROLLUP_INTERVAL_S, self._rollup)),
            asyncio.create_task(self._every("last-used update", LAST_USED_INTERVAL_S,
                                            self._touch_last_used)),
            asyncio.create_task(self._every("rate-limit lease return", RETURN_INTERVAL_S,
                                            self._return_leases)),
            asyncio.create_task(self._listen()),
        ]

    async def _return_leases(self) -> None:
        await self.limiter.return_expired()

    async def stop(self) -> None:
        """Cancel the tasks, then flush what is buffered (best effort, bounded)."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks([*tasks, *self._loading.values()], owner="access")
        for name, final in (("usage flush", self._flush),
                            ("last-used update", self._touch_last_used),
                            ("rate-limit lease return", self.limiter.close)):
            try:
                await asyncio.wait_for(final(), STOP_FLUSH_TIMEOUT_S)
            except (BtsguruError, RedisError, OSError, TimeoutError) as exc:
                log.warning("%s at shutdown failed: %s", name, exc)

    async def _every(self, name: str, interval_s: float,
                     work: Callable[[], Awaitable[None]]) -> None:
        await every(name, interval_s, work, backoff=Backoff(interval_s, MAX_LOOP_BACKOFF_S),
                    sleep=self._clock.sleep, logger=log)


def _put(cache: OrderedDict[str, _V], digest: str, value: _V, limit: int) -> None:
    cache[digest] = value
    cache.move_to_end(digest)
    while len(cache) > limit:
        cache.popitem(last=False)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()
