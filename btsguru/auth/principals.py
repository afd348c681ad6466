"""The principal cache: an API key's SHA-256 -> who is calling and what their key and tier
allow, kept in this process so that a request costs no database query.

Where it sits: under `auth.access` (the admission), over `auth.keys` and `auth.tiers`
(the database). "No such key" is cached as well, so a flood of bad keys does not reach
the database, and concurrent misses for one key share one query. Only hashes and ids
are kept; the key itself is hashed and dropped.

An entry lives `AUTH_CACHE_TTL_S` (the bound on revocation when an invalidation message
is lost, see `auth.access`), counted from the start of the query that produced it, so a
read racing a revocation cannot outlive the bound; past half its life a busy key is
reloaded in the background while it is still served. Expiry (`expires_at`) is checked on
every request, not cached.

A database outage does not stop keys this process already knows (issue 10): when the
query that would refresh an entry fails with `Unavailable` (or takes longer than
`STALE_WAIT_S`), the last principal the database gave is served again for
`STALE_RETRY_S` at a time, for at most `AUTH_STALE_IF_ERROR_S` after that answer; the
refresh is retried meanwhile. A key this process has not seen gets 503 until the
database answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeVar

from btsguru.auth.keys import AuthenticatedKey, KeyService, hash_key
from btsguru.auth.ratepolicy import RatePolicy
from btsguru.auth.tiers import TierLimits, TierService
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.errors import NotFound, Unauthorized, Unavailable

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


class PrincipalCache:
    """Key hash -> `Principal`, positive and negative, with refresh-ahead, single-flight
    loads and stale-if-error (see the module)."""

    def __init__(self, keys: KeyService, tiers: TierService, config: Config, clock: Clock, *,
                 cache_ttl_s: float = AUTH_CACHE_TTL_S,
                 negative_ttl_s: float = NEGATIVE_CACHE_TTL_S,
                 max_cached_keys: int = MAX_CACHED_KEYS,
                 stale_if_error_s: float = AUTH_STALE_IF_ERROR_S) -> None:
        self._keys = keys
        self._tiers = tiers
        self._config = config
        self._clock = clock
        self.cache_ttl_s = cache_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_cached = max_cached_keys
        self._stale_if_error_s = stale_if_error_s
        self._principals: OrderedDict[str, _Entry] = OrderedDict()  # key hash -> entry
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key hash -> expires at
        self._tier_cache: dict[str, tuple[float, TierLimits]] = {}
        self._loading: dict[str, asyncio.Task[Principal | None]] = {}
        self._generation = 0  # bumped by every invalidation
        self._serving_stale = False  # the database failed; known keys are served stale

    def loads(self) -> list[asyncio.Task[Principal | None]]:
        """The queries under way (for shutdown)."""
        return list(self._loading.values())

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

    def _refresh_ahead(self, digest: str, key: str, expires_at: float, now: float) -> None:
        """Past half its life, a cached principal is reloaded in the background while it
        is still served: a busy key never makes its requests wait for the database (the
        bound on revocation stays the entry's own expiry)."""
        if expires_at - now < self.cache_ttl_s / 2 and digest not in self._loading:
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
                     _Entry(started + self.cache_ttl_s, principal, started),
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
        self._tier_cache[name] = (started + self.cache_ttl_s, tier)
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

    def forget(self, *, key_hash: str | None, user_id: int | None, tier: str | None,
               everything: bool) -> None:
        """Drop what an invalidation covers; a query under way is not cached after it."""
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


def _put(cache: OrderedDict[str, _V], digest: str, value: _V, limit: int) -> None:
    cache[digest] = value
    cache.move_to_end(digest)
    while len(cache) > limit:
        cache.popitem(last=False)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()
