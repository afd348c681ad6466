"""In-process copies of hot answers, kept coherent across processes through Redis pub/sub.

Beside the flow's "store" stage: readers (`store.cache.RawCache` for upstream answers,
`handlers.rest.SportsView` for the live lists) look here before Redis, so a cached hit is
a dict lookup; writers (the raw proxy and the pollers through `RawCache.put`, the games
store after an ingest, the pollers' state) call `invalidate`, which drops the names here
and PUBLISHes them on `{prefix}bus:hot:invalidate`; every process listens and drops its
own copies at once.

Guarantees:
- Coherent within one pub/sub delivery (sub-millisecond on a local Redis): a write in
  one process is not served from another process's copy after its invalidation arrives.
- Never stale beyond `HOT_TTL_S`, the safety net for a message lost (pub/sub is
  at-most-once) or a change made behind the writers' back; an entry may carry an
  earlier expiry of its own (a cached upstream answer is never kept past its freshness,
  so stale-while-revalidate still happens in `upstream.proxy`, as before).
- Only used while subscribed: until the listener has confirmed its subscription, and
  after it loses it, `get` misses and `put` stores nothing, so every read goes to Redis.
  A (re)subscription clears everything, since messages may have been missed meanwhile.
- A read racing a write cannot install the old value: `put` takes the `generation` read
  before the Redis read and stores nothing if any invalidation arrived since.

The writer's own process drops its copy synchronously, so a process always reads its own
writes. Messages carry the writer's id, and a process ignores its own (it applied them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from redis.exceptions import RedisError

from btsguru.backoff import Backoff
from btsguru.clock import Clock
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import listen, publish
from btsguru.store.redis import Keys, RedisStores

log = logging.getLogger(__name__)

V = TypeVar("V")

# The safety net for a lost invalidation. Losing one needs a dropped pub/sub connection,
# and a reconnect clears the cache anyway; 5 s keeps the worst case well under the
# shortest live freshness (30 s) at the cost of one Redis read per entry per 5 s.
HOT_TTL_S = 5.0
# Bounds memory: raw answers are keyed by query, and a client can vary queries freely.
MAX_HOT_ENTRIES = 2_000
RECONNECT_BACKOFF = (0.1, 5.0)  # seconds: first retry soon, then at most every 5 s


def hot_channel(keys: Keys) -> str:
    """The pub/sub channel of invalidations (writers outside this module PUBLISH here,
    e.g. inside a pipeline with their own write)."""
    return keys.channel("hot", "invalidate")


def encode_invalidation(names: Iterable[str], origin: str = "") -> bytes:
    return orjson.dumps({"origin": origin, "names": list(names)})


def live_list_name(sport: str) -> str:
    """The hot entry of `/v1/{sport}/live` (written by the games store and the pollers'
    state, read by the REST view)."""
    return f"live:{sport}"


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    expires_at: float  # monotonic


class HotCache:
    """Named values in this process, dropped everywhere when any process invalidates
    them. Values are whatever the reader stores (already-rendered bytes, typically)."""

    def __init__(self, redis: RedisStores, clock: Clock, *, ttl_s: float = HOT_TTL_S,
                 max_entries: int = MAX_HOT_ENTRIES) -> None:
        self._redis = redis.reverb
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self.channel = hot_channel(redis.keys)
        self.origin = secrets.token_hex(6)
        self._entries: dict[str, _Entry[Any]] = {}
        self._loading: dict[str, asyncio.Task[Any]] = {}  # single flight per name
        self.generation = 0  # bumped by every invalidation and (re)subscription
        self.listening = asyncio.Event()  # set while subscribed: the cache is in use
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(*RECONNECT_BACKOFF)

    # -- the hot path --

    def get(self, name: str) -> Any | None:
        """The value stored under `name`, or None (absent, expired or not listening)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.expires_at <= self._clock.monotonic():
            del self._entries[name]
            return None
        return entry.value

    def put(self, name: str, value: Any, generation: int, *,
            max_age_s: float | None = None) -> bool:
        """Store `value` for at most `max_age_s` (and `HOT_TTL_S`), unless an
        invalidation came after `generation` was read, or the cache is not in use.
        Returns whether it was stored."""
        if generation != self.generation or not self.listening.is_set():
            return False
        ttl_s = self._ttl_s if max_age_s is None else min(self._ttl_s, max_age_s)
        if ttl_s <= 0:
            return False
        if len(self._entries) >= self._max_entries and name not in self._entries:
            self._evict()
        self._entries[name] = _Entry(value, self._clock.monotonic() + ttl_s)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, name: str,
                   loader: Callable[[], Awaitable[tuple[V | None, float | None]]]) -> V | None:
        """The value under `name`: this process's copy, else `loader()`'s (value, max
        age in seconds), stored (see `put`). Concurrent callers share one load, so an
        entry that expires under load costs one Redis read, not one per request; a load
        that an invalidation overtakes is not shared with later callers."""
        found = self.get(name)
        if found is not None:
            return found  # type: ignore[no-any-return]
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._fill(name, loader))
            self._loading[name] = task
            task.add_done_callback(lambda done: self._loaded(name, done))
        return await asyncio.shield(task)

    async def _fill(self, name: str,
                    loader: Callable[[], Awaitable[tuple[Any, float | None]]]) -> Any:
        generation = self.generation
        value, max_age_s = await loader()
        if value is not None:
            self.put(name, value, generation, max_age_s=max_age_s)
        return value

    def _loaded(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._loading.get(name) is task:
            del self._loading[name]
        if not task.cancelled():
            task.exception()  # retrieved: the callers that awaited it got it

    # -- writers --

    async def invalidate(self, *names: str) -> None:
        """Drop `names` here at once and in every other process (one PUBLISH). A failed
        publish is logged: the others catch up within `HOT_TTL_S`."""
        self.drop(*names)
        try:
            await publish(self._redis, self.channel, encode_invalidation(names, self.origin))
        except (RedisError, OSError) as exc:
            log.warning("hot-cache invalidation of %s not published (%s); other processes "
                        "catch up within %g s", ", ".join(names), exc, self._ttl_s)

    def drop(self, *names: str) -> None:
        """Drop `names` in this process only."""
        self.generation += 1
        for name in names:
            self._entries.pop(name, None)
            self._loading.pop(name, None)  # a load under way may hold the old value

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._loading.clear()

    def _evict(self) -> None:
        now = self._clock.monotonic()
        for name in [n for n, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[name]
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest insertion

    # -- the listener --

    def start(self) -> None:
        """Subscribe in the background; the cache is used once `listening` is set."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="btsguru-hot-cache")

    async def stop(self) -> None:
        task, self._task = self._task, None
        loading, self._loading = list(self._loading.values()), {}
        await cancel_tasks([*loading, *([task] if task is not None else [])], owner="hot cache")
        self.listening.clear()
        self.clear()

    def _on_message(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            names = message["names"]
            origin = message.get("origin")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed hot-cache invalidation")
            return
        if origin == self.origin or not isinstance(names, list):
            return  # our own: applied when published
        self.drop(*(n for n in names if isinstance(n, str)))

    async def _listen(self) -> None:
        await listen(self._redis, what="hot-cache listener", channel=self.channel,
                     on_message=lambda m: self._on_message(m["data"]), on_reset=self.clear,
                     listening=self.listening, backoff=self._backoff,
                     sleep=self._clock.sleep)
