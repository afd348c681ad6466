"""The raw proxy: answers `/v1/{sport}/raw/{endpoint}` from the cache, calling the upstream
as little as possible.

Guarantees:
- A fresh entry is served as `HIT` with no upstream call.
- Past its freshness, an entry is served at once as `STALE` while one background refresh
  runs (stale-while-revalidate); when the upstream fails or the budget is spent, stale data
  is served as long as it exists.
- Concurrent misses for the same (sport, endpoint, normalized params) make one upstream
  call: within a process they share one future; across processes one short Redis lock
  elects the caller and the others wait for the cached result (or the shared error).
- A user's request never waits more than `USER_WAIT_S` and never waits for quota: the
  client refuses at once without a token (`QuotaExhausted`, a 503 with `Retry-After`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.errors import BtsguruError, Unavailable, UpstreamError
from btsguru.lifecycle import cancel_tasks
from btsguru.store.cache import CachedResponse, CacheState, RawCache
from btsguru.store.redis import RedisStores
from btsguru.upstream.client import UpstreamClient
from btsguru.upstream.endpoints import Endpoint

log = logging.getLogger(__name__)

# The contract's bound on a user's wait for the upstream is 10 s; keep a margin for the
# rest of the request.
USER_WAIT_S = 9.0
# The election lock outlives the slowest single fetch the client allows, so a second
# caller is never elected while the first is still fetching.
LOCK_TTL_MS = 12_000
# Waiters look for the elected caller's result this often: cheap GETs on a local Redis,
# and well under the upstream's own latency.
WAIT_POLL_S = 0.025
# A failure is shared with the waiters for this long, so one outage is not N calls.
SHARED_ERROR_TTL_MS = 3_000

_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class ProxyAnswer:
    body: bytes
    state: CacheState
    age_s: int
    max_age_s: int  # remaining freshness, for Cache-Control
    etag: str  # computed once per cached entry, not per hit


class RawProxy:
    def __init__(self, cache: RawCache, client: UpstreamClient, redis: RedisStores,
                 clock: Clock) -> None:
        self._cache = cache
        self._client = client
        self._redis = redis.cache
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[CachedResponse]] = {}
        self._refreshes: set[asyncio.Task[None]] = set()

    async def get(self, sport: str, endpoint: Endpoint, params: Mapping[str, str]) -> ProxyAnswer:
        now = self._clock.time()
        cached = await self._cache.get(sport, endpoint.name, params)
        if cached is not None and cached.is_fresh(now):
            return self._answer(cached, CacheState.HIT, now)
        if cached is not None:
            self._refresh_in_background(sport, endpoint, params, cached.fetched_at)
            return self._answer(cached, CacheState.STALE, now)
        fresh = await self._fetch_once(sport, endpoint, params, newer_than=0.0)
        return self._answer(fresh, CacheState.MISS, self._clock.time())

    def peek(self, sport: str, endpoint: Endpoint, params: Mapping[str, str]) -> ProxyAnswer | None:
        """A `HIT` from this process's copy, without waiting, not yet counted (the caller
        calls `count_hit` if it serves it); None when `get` must decide."""
        cached = self._cache.peek(sport, endpoint.name, params)
        if cached is None:
            return None
        now = self._clock.time()
        if not cached.is_fresh(now):
            return None
        return self._answer(cached, CacheState.HIT, now, counted=False)

    def count_hit(self) -> None:
        self._cache.counters.count(CacheState.HIT)

    async def close(self) -> None:
        await cancel_tasks(self._refreshes, owner="raw proxy")

    def _answer(self, entry: CachedResponse, state: CacheState, now: float, *,
                counted: bool = True) -> ProxyAnswer:
        if counted:
            self._cache.counters.count(state)
        age = entry.age_s(now)
        max_age = 0 if state is CacheState.STALE else max(0, entry.ttl_s - age)
        return ProxyAnswer(entry.body, state, age, max_age, entry.etag)

    def _refresh_in_background(self, sport: str, endpoint: Endpoint,
                               params: Mapping[str, str], stale_fetched_at: float) -> None:
        if self._cache.key_for(sport, endpoint.name, params) in self._inflight:
            return

        async def refresh() -> None:
            try:
                await self._fetch_once(sport, endpoint, params, newer_than=stale_fetched_at)
            except BtsguruError as exc:
                log.info("background refresh of %s %s failed; serving stale: %s", sport,
                         endpoint.name, exc.message)

        task = asyncio.create_task(refresh())
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _fetch_once(self, sport: str, endpoint: Endpoint, params: Mapping[str, str], *,
                          newer_than: float) -> CachedResponse:
        """One upstream call per key in this process, whoever else asks meanwhile."""
        key = self._cache.key_for(sport, endpoint.name, params)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._fetch_cluster_once(key, sport, endpoint, params, newer_than)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a future nobody else awaited is quiet
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _fetch_cluster_once(self, key: str, sport: str, endpoint: Endpoint,
                                  params: Mapping[str, str], newer_than: float) -> CachedResponse:
        """One upstream call per key across processes: a Redis lock elects the caller."""
        if not self._cache.enabled:  # nothing to share the answer through
            return await self._call_upstream(sport, endpoint, params)
        lock_key, error_key = key + ":lock", key + ":error"
        token = secrets.token_hex(8)
        started = self._clock.time()
        deadline = time.monotonic() + USER_WAIT_S
        while True:
            try:
                elected = await self._redis.set(lock_key, token, nx=True, px=LOCK_TTL_MS)
            except RedisError as exc:
                log.warning("single-flight lock unavailable (%s); calling the upstream", exc)
                return await self._call_upstream(sport, endpoint, params)
            if elected:
                try:
                    # another process may have filled the cache while we waited for the lock
                    cached = await self._cache.get(sport, endpoint.name, params)
                    if cached is not None and cached.fetched_at > newer_than and \
                            cached.is_fresh(self._clock.time()):
                        return cached
                    try:
                        return await self._call_upstream(sport, endpoint, params)
                    except BtsguruError as exc:
                        await self._share_error(error_key, exc)
                        raise
                finally:
                    await self._release(lock_key, token)
            await asyncio.sleep(WAIT_POLL_S)
            cached = await self._cache.get(sport, endpoint.name, params)
            if cached is not None and cached.fetched_at > max(newer_than, started - 1):
                return cached
            shared = await self._shared_error(error_key, started)
            if shared is not None:
                raise shared
            if time.monotonic() > deadline:
                raise Unavailable("the upstream has not answered yet; try again shortly",
                                  retry_after_s=2)

    async def _call_upstream(self, sport: str, endpoint: Endpoint,
                             params: Mapping[str, str]) -> CachedResponse:
        response = await self._client.fetch(sport, endpoint.name, params, purpose="user")
        body = orjson.dumps(response.body)
        ttl_s = self._cache.ttl_for(sport, endpoint.name, endpoint.kind, params, response.body)
        await self._cache.put(sport, endpoint.name, params, body, ttl_s, response.fetched_at)
        return CachedResponse(body, response.fetched_at, ttl_s)

    async def _release(self, lock_key: str, token: str) -> None:
        try:
            await self._redis.eval(_RELEASE_LOCK, 1, lock_key, token)
        except RedisError as exc:  # the lock expires by itself
            log.debug("releasing %s failed: %s", lock_key, exc)

    async def _share_error(self, error_key: str, exc: BtsguruError) -> None:
        payload = {"status": exc.status, "code": exc.code, "message": exc.message,
                   "retry_after_s": exc.retry_after_s, "at": self._clock.time()}
        with contextlib.suppress(RedisError):  # if not shared, the waiters time out instead
            await self._redis.set(error_key, orjson.dumps(payload), px=SHARED_ERROR_TTL_MS)

    async def _shared_error(self, error_key: str, since: float) -> BtsguruError | None:
        try:
            raw = await self._redis.get(error_key)
        except RedisError:
            return None
        if not raw:
            return None
        payload = orjson.loads(raw)
        if payload.get("at", 0) < since:
            return None
        cls = Unavailable if payload.get("status") == 503 else UpstreamError
        error = cls(str(payload.get("message", "upstream error")),
                    retry_after_s=payload.get("retry_after_s"))
        error.code = str(payload.get("code") or error.code)  # as the elected caller saw it
        return error
