"""The Redis side of Pusher webhooks (PUSHER.md section 13): the durable queue of batches
per URL, the held decisions of the debounce, the subscription-count turns and each URL's
health, all in the `reverb` database under the `webhooks` family.

Where it sits: `realtime.webhooks` decides what to send and batches it, then hands each
batch here; `realtime.webhook_delivery` reads batches back, POSTs them and acknowledges
them; the alerter reads the health rows. Nothing here speaks HTTP.

- The queue: one stream per URL (`webhooks:{<url id>}:queue`, the id a hash of the URL,
  which may hold a token and never appears in a key or a log), with one consumer group.
  A batch is one entry (`body`, the exact bytes to sign and POST, and `at`, when it was
  queued), XADDed to every URL's stream: each URL is delivered and retried on its own.
  A process reads with XREADGROUP (its consumer name is its process id), so an entry it
  holds is in its pending list until it acknowledges it (XACK, then XDEL: the stream
  holds only what is undelivered, so XLEN is the queue's depth). While it retries an
  entry it touches it (XCLAIM to itself, resetting the idle time); an entry idle longer
  than the claim timeout belongs to a process that died, and XAUTOCLAIM moves it to a
  live one. A process that stops gives its entries back at once (XCLAIM with a large
  IDLE). Delivery is at least once: a process that dies after a POST succeeded and
  before the XACK has its batch sent again by another.
- Held decisions (`webhooks:{held}:due`, one sorted set, event JSON -> when it is due):
  `channel_vacated` and `member_removed` wait there for the debounce; whoever removes a
  member (ZREM returns 1) owns it: the channel's next occupant cancels it (and its own
  `channel_occupied` with it), or any process's sweep sends it once due.
- Subscription-count turns (`webhooks:{<channel>}:count`, SET NX PX): at most one
  `subscription_count` per channel per interval across the cluster.
- Health (`webhooks:{<url id>}:health`): since when the URL has been failing, the last
  failure and how many batches were dropped, cleared by a delivery.

Every key carries a hash tag and every command or transaction touches one key, so all
of it runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.exceptions import ResponseError

from btsguru.store.redis import Keys, RedisClient

GROUP = "btsguru"  # the one consumer group of every URL's stream
# A safety bound on a URL's stream: with a dead receiver, ten minutes of batches stay;
# past this many (a flood, or an outage far longer) the oldest go unsent.
STREAM_MAX_ENTRIES = 100_000


class WebhookSink(Protocol):
    """What `store.pusher` tells the webhooks about (implemented by `realtime.webhooks`):
    cluster-wide transitions decided by its scripts."""

    tracks_occupancy: bool  # whether to count each channel's subscribers cluster-wide

    async def occupancy_changed(self, channel: str, before: int, after: int) -> None: ...

    async def member_added(self, channel: str, user_id: str) -> None: ...

    async def member_removed(self, channel: str, user_id: str) -> None: ...


@dataclass(frozen=True)
class Batch:
    """One queued batch as read back: its stream id, the body to POST, when it was queued
    (epoch ms)."""

    id: str
    body: bytes
    at_ms: int


@dataclass(frozen=True)
class UrlHealth:
    """One URL's row for the alerter."""

    url_id: str
    where: str  # scheme://host:port, never the path or query (they may hold a token)
    failing_since: float | None
    last_error: str
    dropped: int
    queued: int


def url_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def url_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookQueue:
    """The webhooks' keys; see the module docstring."""

    def __init__(self, redis: RedisClient, keys: Keys, urls: tuple[str, ...]) -> None:
        self._redis = redis
        self._keys = keys
        self.urls = urls
        self._held = keys.tagged("webhooks", "held", "due")

    def _stream(self, url: str) -> str:
        return self._keys.tagged("webhooks", url_id(url), "queue")

    def _health(self, url: str) -> str:
        return self._keys.tagged("webhooks", url_id(url), "health")

    # -- the queue --

    async def ensure_group(self, url: str) -> None:
        try:
            await self._redis.xgroup_create(self._stream(url), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, body: bytes, at_ms: int) -> None:
        """One batch onto every URL's stream (one XADD each: different slots)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for url in self.urls:
                pipe.xadd(self._stream(url), {"body": body, "at": at_ms},
                          maxlen=STREAM_MAX_ENTRIES, approximate=True)
            await pipe.execute()

    async def read(self, url: str, consumer: str, count: int, block_ms: int) -> list[Batch]:
        """New batches for `consumer`, waiting up to `block_ms` for one."""
        found = await self._redis.xreadgroup(GROUP, consumer, {self._stream(url): ">"},
                                             count=count, block=block_ms)
        answer: Any = found or []
        return [batch for _stream, entries in answer for batch in _batches(entries)]

    async def claim_stale(self, url: str, consumer: str, min_idle_ms: int,
                          count: int) -> list[Batch]:
        """Batches whose holder has not touched them for `min_idle_ms` (it died)."""
        answer = await self._redis.xautoclaim(self._stream(url), GROUP, consumer,
                                              min_idle_time=min_idle_ms, start_id="0-0",
                                              count=count)
        return list(_batches(answer[1]))

    async def touch(self, url: str, consumer: str, ids: list[str]) -> None:
        """Reset the idle time of the batches `consumer` is still retrying."""
        if ids:
            await self._redis.xclaim(self._stream(url), GROUP, consumer, 0, _ids(ids),
                                     justid=True)

    async def release(self, url: str, consumer: str, ids: list[str], idle_ms: int) -> None:
        """Give batches back: idle for `idle_ms` already, the next sweep anywhere takes
        them."""
        if ids:
            await self._redis.xclaim(self._stream(url), GROUP, consumer, 0, _ids(ids),
                                     idle=idle_ms, justid=True)

    async def done(self, url: str, id: str) -> None:
        """Delivered or given up: out of the pending list and the stream."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream(url), GROUP, id)
            pipe.xdel(self._stream(url), id)
            await pipe.execute()

    async def depth(self) -> int:
        """Batches not yet delivered, over every URL."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for url in self.urls:
                pipe.xlen(self._stream(url))
            return sum(int(n) for n in await pipe.execute())

    # -- health --

    async def failed(self, url: str, why: str, now: float, *, dropped: bool = False) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._health(url), "since", now)
            pipe.hset(self._health(url), "error", why)
            if dropped:
                pipe.hincrby(self._health(url), "dropped", 1)
            await pipe.execute()

    async def delivered(self, url: str) -> None:
        await self._redis.hdel(self._health(url), "since", "error", "dropped")

    async def health(self) -> list[UrlHealth]:
        rows = []
        for url in self.urls:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._health(url))
                pipe.xlen(self._stream(url))
                raw, queued = await pipe.execute()
            fields = {_text(k): _text(v) for k, v in raw.items()}
            rows.append(UrlHealth(url_id(url), url_origin(url),
                                  float(fields["since"]) if "since" in fields else None,
                                  fields.get("error", ""), int(fields.get("dropped", 0)),
                                  int(queued)))
        return rows

    # -- held decisions --

    async def hold(self, member: bytes, due: float) -> None:
        await self._redis.zadd(self._held, {member: due})

    async def take(self, member: bytes) -> bool:
        """Own a held decision (to cancel or to send it): True for exactly one caller."""
        return bool(await self._redis.zrem(self._held, member))

    async def due(self, now: float, limit: int) -> list[bytes]:
        found = await self._redis.zrangebyscore(self._held, "-inf", now, start=0, num=limit)
        return [m if isinstance(m, bytes) else str(m).encode() for m in found]

    # -- subscription-count turns --

    async def count_turn(self, channel: str, interval_ms: int) -> int:
        """0 when this caller may send `channel`'s count now (and holds the turn for
        `interval_ms`), else the milliseconds until it may try again."""
        key = self._keys.tagged("webhooks", channel, "count")
        if await self._redis.set(key, "1", nx=True, px=interval_ms):
            return 0
        return max(1, int(await self._redis.pttl(key)))


def _batches(entries: Any) -> Any:
    for id, fields in entries or []:
        if not fields:  # deleted while pending (XAUTOCLAIM reports those as empty)
            continue
        yield Batch(_text(id), bytes(fields[b"body"]), int(fields[b"at"]))


def _ids(ids: list[str]) -> list[Any]:
    return list(ids)
