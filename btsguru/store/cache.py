"""The raw response cache: upstream JSON in Redis, with a TTL by kind of data and phase.

Sits beside the flow's "store" stage: the raw proxy (`upstream.proxy`) reads it before it
would call the upstream, and writes what the upstream answered. An entry stays in Redis
well past its freshness (`STALE_KEEP_S`) so that when the upstream fails or the quota is
spent, stale data can still be served — marked `STALE`, never passed off as fresh.

In front of Redis, an in-process copy of each fresh entry (`store.hot`, when given):
a hit is a dict lookup, not a round trip plus a decompression. `put` publishes the
change so that every process drops its copy at once; a copy never outlives the entry's
freshness, so what is stale is always read from Redis, as before.

Storage: the upstream's JSON compressed with zlib (level 1) behind a 18-byte header.
Measured on simulator answers (2026-11-28, this project's 2-core machine): zlib level 1
makes entries 5-13x smaller (live football fixtures 16 KB -> 2.7 KB, a day of basketball
games 83 KB -> 8.5 KB) for 30-370 us to compress once per upstream fetch and 10-170 us
to decompress per read; level 6 saves only 10-30% more for 2-3x the time, and msgpack
alone saves only ~25%, so plain compressed JSON it is.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.store.hot import HotCache
from btsguru.store.redis import RedisStores
from btsguru.store.series import SeriesRecorder

log = logging.getLogger(__name__)

# How long past its freshness an entry is kept to be served STALE during an outage. Six
# hours covers a long upstream incident without keeping yesterday's live data for ever.
STALE_KEEP_S = 6 * 3600

# Live data per sport: the contract's 30-60 s, shorter for the fast-scoring sports.
LIVE_TTL_S: Mapping[str, int] = {"basketball": 30, "hockey": 30, "football": 45,
                                 "american-football": 45, "baseball": 60}
SCHEDULE_TTL_S = 300  # today's and tomorrow's fixtures: the upstream re-checks them rarely
STANDINGS_TTL_S = 3600  # the upstream updates standings hourly at best
STATIC_TTL_S = 3600  # leagues, teams, countries, seasons change a few times a day at most
FINISHED_TTL_S = 24 * 3600  # a finished game's data is final (corrections aside)
STATUS_TTL_S = 60  # /status: the account's request counters
# Key names remembered per process; a client varying queries only makes it start over.
MAX_REMEMBERED_NAMES = 10_000

# Status codes after which a game's data no longer changes, and before which it is only a
# schedule; anything else in a response means something is live.
_FINAL_CODES = frozenset({"FT", "AET", "PEN", "AWD", "WO", "AOT", "AP", "AW", "CANC", "ABD"})
_NOT_STARTED_CODES = frozenset({"NS", "TBD", "PST", "POST"})

_HEADER = struct.Struct("!dII")  # fetched_at, ttl_s, uncompressed length
_FORMAT_V1 = b"B1"


class CacheState(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"


@dataclass(frozen=True)
class CachedResponse:
    body: bytes  # the upstream's JSON
    fetched_at: float
    ttl_s: int

    @cached_property
    def etag(self) -> str:
        """The body's ETag, as Tornado computes it, once per entry rather than per hit."""
        return f'"{hashlib.sha1(self.body).hexdigest()}"'  # noqa: S324 (not security)

    def age_s(self, now: float) -> int:
        return max(0, int(now - self.fetched_at))

    def is_fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.ttl_s


@dataclass
class CacheCounters:
    """In-process counts by result; exported as metrics later."""

    hits: int = 0
    misses: int = 0
    stale: int = 0
    by_result: dict[str, int] = field(default_factory=dict)
    # bound once: `labels()` costs a lookup under a lock, on every hit
    _exported: dict[CacheState, Any] = field(default_factory=lambda: {
        state: metrics.CACHE_REQUESTS.labels(state.value.lower()) for state in CacheState})
    series: SeriesRecorder | None = None  # the ops page's hit rate, cluster-wide

    def count(self, state: CacheState) -> None:
        self._exported[state].inc()
        if self.series is not None:
            self.series.cache_lookup(state is CacheState.HIT)
        if state is CacheState.HIT:
            self.hits += 1
        elif state is CacheState.MISS:
            self.misses += 1
        else:
            self.stale += 1


def canonical_query(params: Mapping[str, str]) -> str:
    return urlencode(sorted(params.items()))


def encode_entry(body: bytes, fetched_at: float, ttl_s: int) -> bytes:
    return _FORMAT_V1 + _HEADER.pack(fetched_at, ttl_s, len(body)) + zlib.compress(body, 1)


def decode_entry(blob: bytes) -> CachedResponse | None:
    if not blob.startswith(_FORMAT_V1) or len(blob) < 2 + _HEADER.size:
        return None
    fetched_at, ttl_s, length = _HEADER.unpack_from(blob, 2)
    try:
        body = zlib.decompress(blob[2 + _HEADER.size:])
    except zlib.error:
        return None
    if len(body) != length:
        return None
    return CachedResponse(body, fetched_at, ttl_s)


class RawCache:
    """Upstream answers by (sport, endpoint, normalized params)."""

    def __init__(self, redis: RedisStores, config: Config, clock: Clock, *,
                 hot: HotCache | None = None, series: SeriesRecorder | None = None) -> None:
        self._client = redis.cache
        self._keys = redis.keys
        self._config = config
        self._clock = clock
        self._hot = hot
        self.enabled = config.api_cache_enabled
        self.counters = CacheCounters(series=series)
        self._names: dict[tuple[Any, ...], str] = {}  # (sport, endpoint, *params) -> key

    def key_for(self, sport: str, endpoint: str, params: Mapping[str, str]) -> str:
        # remembered: every hit needs its name, and encoding plus hashing costs more than
        # the rest of a hot hit's lookup
        memo_key = (sport, endpoint, *sorted(params.items()))
        name = self._names.get(memo_key)
        if name is None:
            # a digest keeps key names short and bounded whatever the query
            digest = hashlib.sha256(canonical_query(params).encode()).hexdigest()[:32]
            name = self._keys.key("raw", sport, endpoint, digest)
            if len(self._names) >= MAX_REMEMBERED_NAMES:
                self._names.clear()
            self._names[memo_key] = name
        return name

    def peek(self, sport: str, endpoint: str, params: Mapping[str, str]) -> CachedResponse | None:
        """This process's copy of a fresh entry, without waiting; None when only Redis
        can answer (call `get`)."""
        if not self.enabled or self._hot is None:
            return None
        found: CachedResponse | None = self._hot.get(self.key_for(sport, endpoint, params))
        return found

    async def get(self, sport: str, endpoint: str,
                  params: Mapping[str, str]) -> CachedResponse | None:
        if not self.enabled:
            return None
        name = self.key_for(sport, endpoint, params)
        if self._hot is None:
            entry, _max_age_s = await self._read(name)
            return entry
        found: CachedResponse | None = await self._hot.load(name, lambda: self._read(name))
        return found

    async def _read(self, name: str) -> tuple[CachedResponse | None, float | None]:
        """The entry in Redis and how long a copy of it may be kept: while it is fresh
        (past that, the proxy's stale-while-revalidate reads Redis)."""
        try:
            blob = await self._client.get(name)
        except RedisError as exc:
            log.warning("cache read failed for %s: %s", name, exc)
            return None, None
        entry = decode_entry(blob) if isinstance(blob, bytes) else None
        if entry is None:
            return None, None
        return entry, entry.fetched_at + entry.ttl_s - self._clock.time()

    async def put(self, sport: str, endpoint: str, params: Mapping[str, str], body: bytes,
                  ttl_s: int, fetched_at: float | None = None) -> None:
        if not self.enabled:
            return
        fetched_at = self._clock.time() if fetched_at is None else fetched_at
        name = self.key_for(sport, endpoint, params)
        try:
            await self._client.set(name, encode_entry(body, fetched_at, ttl_s),
                                   ex=ttl_s + STALE_KEEP_S)
        except RedisError as exc:
            log.warning("cache write failed for %s %s: %s", sport, endpoint, exc)
            return
        if self._hot is not None:  # every process drops its copy; this one keeps the new
            await self._hot.invalidate(name)
            self._hot.put(name, CachedResponse(body, fetched_at, ttl_s), self._hot.generation,
                          max_age_s=fetched_at + ttl_s - self._clock.time())

    def ttl_for(self, sport: str, endpoint: str, kind: str, params: Mapping[str, str],
                body: Mapping[str, Any]) -> int:
        """Freshness of an answer, by the kind of data and the phase of the games in it."""
        if endpoint == "status":
            return STATUS_TTL_S
        if kind == "static":
            return max(STATIC_TTL_S, self._config.api_default_cache_duration)
        if kind == "standings":
            return STANDINGS_TTL_S
        if kind not in ("games", "events"):
            return self._config.api_default_cache_duration
        live_ttl = LIVE_TTL_S.get(sport, 45)
        if "live" in params:
            return live_ttl
        codes = set(_status_codes(body.get("response")))
        if codes - _FINAL_CODES - _NOT_STARTED_CODES:
            return live_ttl
        if codes and codes <= _FINAL_CODES:
            return FINISHED_TTL_S
        day = params.get("date")
        today = datetime.fromtimestamp(self._clock.time(), UTC).date().isoformat()
        if day and day < today and not codes - _FINAL_CODES:
            return FINISHED_TTL_S
        return SCHEDULE_TTL_S  # today's or a later schedule, or events of a game not begun


def _status_codes(items: Any) -> list[str]:
    """The `status.short` of every game in a response, whatever the sport's shape."""
    if not isinstance(items, list):
        return []
    codes = []
    for item in items:
        if not isinstance(item, dict):
            continue
        holder = item.get("fixture") or item.get("game") or item
        status = holder.get("status") if isinstance(holder, dict) else None
        if isinstance(status, dict) and isinstance(status.get("short"), str):
            codes.append(status["short"])
    return codes
