"""The one way in: API key -> principal -> scope and tier check -> rate limit -> usage
count, for every `/v1` request, raw-proxy request, SSE stream, native WebSocket and
Pusher channel authorization (`/v1/realtime/auth`, `/broadcasting/auth`).

Where it sits: under the transports (`handlers.*`), which take the key with
`request_key` (one precedence for all of them: `X-API-Key`, then `Authorization:
Bearer`, then, on the stream endpoints only, the `api_key` query parameter; a header
first, since proxies log URLs but not headers), call `AccessService.admit` and only
translate its outcome: an HTTP status and JSON error (`handlers.base.render_error`), a
WebSocket close code or a `pusher:error` (each `BtsguruError` carries all three).
`admit` authenticates (`auth.principals`), checks scope and tier, spends from the
rate limit (`auth.ratelimit`), and on the way out records what failed: a refused key
as a failed authentication from the client's address (`auth.watch`, which feeds the
alerter's failed-auth alert, and `btsguru_auth_failures_total`), a refusal by the rate
limit in `btsguru_rate_limit_rejections_total`. The transport counts the admission as
usage (`record`) when it has answered or its stream is open. `admit_local` is the same
decision for the hot path (`handlers.hot`), when this process can say yes at once.

Beside the flow: the usage reads for `/v1/usage` and the console, and invalidation.
Revocation, a disabled user or a tier change reach every process within
`AUTH_CACHE_TTL_S` at worst, usually at once: whoever makes the change (the console, the
CLI) calls `invalidate_key`/`invalidate_user`/`invalidate_tier`, which drops the local
entries and publishes on `{prefix}bus:auth:invalidate`; every process listens
(`auth.upkeep`) and drops its own. The TTL is the safety net for a lost message (pub/sub
is at-most-once) or a change made straight in the database. A listener that reconnects
clears its whole cache, since it may have missed messages meanwhile. Invalidations still
apply while the database is down, since they travel through Redis. Every invalidation,
local or heard, is also handed to the `on_invalidation` listeners: open streams make no
further requests, so `realtime.revocation` re-checks their keys and closes the revoked
ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.auth.keys import KeyService
from btsguru.auth.principals import (
    AUTH_CACHE_TTL_S,
    AUTH_STALE_IF_ERROR_S,
    MAX_CACHED_KEYS,
    NEGATIVE_CACHE_TTL_S,
    STALE_RETRY_S,
    STALE_WAIT_S,
    Invalidation,
    Principal,
    PrincipalCache,
)
from btsguru.auth.ratelimit import RateDecision, RateLimiter
from btsguru.auth.tiers import TierService
from btsguru.auth.upkeep import AccessUpkeep
from btsguru.auth.usage import DayUsage, UsageService
from btsguru.auth.watch import AccessWatch
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import Forbidden, Unauthorized, Unavailable, store_unavailable
from btsguru.store.pubsub import publish
from btsguru.store.redis import RedisStores

__all__ = ["AUTH_CACHE_TTL_S", "AUTH_STALE_IF_ERROR_S", "STALE_RETRY_S", "STALE_WAIT_S",
           "AccessService", "Admission", "Invalidation", "Principal", "request_key"]

log = logging.getLogger(__name__)

USAGE_RETRY_AFTER_S = 5
USAGE_DB_DOWN = ("usage is unavailable right now (the database does not answer); your "
                 "requests are still counted and will show when it is back")
UNKNOWN_CLIENT = "unknown"  # the address recorded when a transport has none


def request_key(headers: Mapping[str, str], query_key: str | None = None) -> str | None:
    """The API key a request carries, in the one precedence every transport uses:
    `X-API-Key`, then `Authorization: Bearer KEY`, then `query_key` (the `api_key` query
    parameter, passed only by the stream endpoints, which browsers open without
    headers). A header wins: proxies and access logs record URLs, not headers."""
    header = headers.get("X-API-Key", "").strip()
    if header:
        return header
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if query_key is not None and query_key.strip():
        return query_key.strip()
    return None


@dataclass(frozen=True)
class Admission:
    """An admitted caller: who it is and the rate limiter's answer (for the headers)."""

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
        self._cache = PrincipalCache(keys, tiers, config, clock, cache_ttl_s=cache_ttl_s,
                                     negative_ttl_s=negative_ttl_s,
                                     max_cached_keys=max_cached_keys,
                                     stale_if_error_s=stale_if_error_s)
        self.limiter = RateLimiter(redis.data, redis.keys, clock)
        self.usage = UsageService(redis.data, redis.keys, runner, clock)
        self.watch = AccessWatch(redis.data, redis.keys, clock)  # for the alerter
        self.invalidation_channel = redis.keys.channel("auth", "invalidate")
        self._listeners: list[Callable[[Invalidation], None]] = []
        self._upkeep = AccessUpkeep(
            redis, keys, self.limiter, self.usage, self.watch, clock,
            invalidation_channel=self.invalidation_channel, on_invalidation=self._on_message,
            on_listener_reset=lambda: self._drop(everything=True))

    # -- the way in --

    async def admit(self, key: str | None, *, scope: str, client: str | None,
                    raw: bool = False) -> Admission:
        """Admit the caller presenting `key` (from `request_key`) from address `client`
        to something needing `scope` (and the raw proxy when `raw`), spending one
        request of its user's rate limit. Raises, for the transport to translate:
        `Unauthorized` (missing, unknown, revoked or expired key: recorded as a failed
        authentication), `Forbidden` (scope or tier), `RateLimited` (counted; carries
        `Retry-After` and the rate-limit headers) or `Unavailable`."""
        try:
            principal = await self._cache.authenticate(key)
        except Unauthorized:
            self.failed_authentication(client)
            raise
        self.authorize(principal, scope, raw=raw)
        decision = await self.limit(principal)
        if not decision.allowed:
            metrics.RATE_LIMIT_REJECTIONS.labels(principal.tier.name).inc()
            raise decision.error()
        return Admission(principal, decision)

    def failed_authentication(self, client: str | None) -> None:
        """Record one failed authentication from address `client`: a bad API key here, a
        wrong Pusher app key or channel signature on the Pusher socket. It feeds the
        failed-auth alert (through the watch) and `btsguru_auth_failures_total`."""
        self.watch.auth_failed(client or UNKNOWN_CLIENT)
        metrics.AUTH_FAILURES.inc()

    def admit_local(self, key: str | None, *, scope: str, raw: bool = False,
                    ) -> Admission | None:
        """`admit` when this process can say yes without waiting (the key cached, its
        scope and tier allowing, a token leased here); None otherwise, with nothing
        spent or recorded: then `admit` decides."""
        principal = self._cache.cached_principal(key) if key else None
        if principal is None or scope not in principal.scopes or \
                (raw and not principal.tier.raw_proxy):
            return None
        decision = self.limit_local(principal)
        return None if decision is None else Admission(principal, decision)

    async def authenticate(self, key: str | None) -> Principal:
        """The principal of `key`; `Unauthorized` for a missing, unknown, revoked or
        expired key or a disabled user; `Unavailable` when the database is down and the
        key is not cached. Records nothing: transports call `admit`."""
        return await self._cache.authenticate(key)

    def cached_principal(self, key: str) -> Principal | None:
        """The principal of `key` if this process has it cached and valid, without
        waiting; None otherwise."""
        return self._cache.cached_principal(key)

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
        """Count one admitted request or stream connection as usage (no I/O)."""
        self.usage.record(principal.user_id, principal.key_id, kind, cache_hit=cache_hit)
        self._upkeep.key_used(principal.key_id)

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
            await publish(self._redis.reverb, self.invalidation_channel, orjson.dumps(message))
        except (RedisError, OSError) as exc:
            log.warning("auth invalidation not published (%s); other processes catch up "
                        "within %g s", exc, self._cache.cache_ttl_s)

    def _drop(self, *, key_hash: str | None = None, user_id: int | None = None,
              tier: str | None = None, everything: bool = False) -> None:
        self._cache.forget(key_hash=key_hash, user_id=user_id, tier=tier,
                           everything=everything)
        what = Invalidation(key_hash, user_id, tier, everything)
        for listener in self._listeners:
            try:
                listener(what)
            except Exception:
                log.exception("an auth invalidation listener failed")

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

    # -- background work (`auth.upkeep`) --

    @property
    def listening(self) -> asyncio.Event:
        """Set while this process is subscribed to invalidations."""
        return self._upkeep.listening

    def start(self) -> None:
        """Start the flush, rollup, last-used, lease-return and invalidation tasks
        (idempotent)."""
        self._upkeep.start()

    async def stop(self) -> None:
        """Cancel the tasks and the key lookups under way, then flush what is buffered
        (best effort, bounded)."""
        await self._upkeep.stop(self._cache.loads())
