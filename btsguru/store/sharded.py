"""Exact sharded pub/sub channels followed on Redis Cluster, for the listeners that
subscribe per channel on demand: the Pusher app channels (`store.pusher`).

Where it sits: Redis Cluster -> **ShardedChannels** -> a callback on the loop. The game
bus (`store.bus.RedisBus`) does the same on Cluster for its channels, and adds the gap
announcements its history needs; these channels have no history (delivery is at most
once), so a lost connection is only resubscribed.

`subscribe` sends SSUBSCRIBE (to the master of the channel's hash slot: redis-py's
`ClusterPubSub` keeps one connection per master that holds a subscribed channel) and
returns once Redis confirmed it, so a later SPUBLISH from any process reaches this one;
`unsubscribe` sends SUNSUBSCRIBE. Calls run one at a time, in the order they were made.
redis-py moves a subscription when its slot moves; when a read fails anyway (every
shard's connection failed, or a master died), the reader waits by the backoff, refreshes
the slot map (it still names the dead master until something refreshes it) and
subscribes every current channel again on a new pub/sub, as `RedisBus` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from btsguru.backoff import Backoff, Failures
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import read_shards
from btsguru.store.typed import aclose_pubsub

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0  # a master that does not confirm a subscription in 5 s is down
READ_TIMEOUT_S = 1.0  # how long one read waits, so the reader notices close() promptly
IDLE_WAIT_S = 0.05  # the reader's nap while nothing is subscribed

# (the Redis channel, the message's data)
ShardedCallback = Callable[[str, bytes], None]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def ssubscribe_again(redis: RedisCluster, pubsub: ClusterPubSub, channels: Iterable[str],
                           on_subscribed: Callable[[str], None] | None = None) -> None:
    """Subscribe `channels` on a fresh `pubsub` after a failed read: the slot map first
    (the read failed because a master went away, and the map still names it until
    something refreshes it), then one SSUBSCRIBE per channel, each to its shard's master,
    calling `on_subscribed(channel)` after each. Raises what Redis raises, or
    TimeoutError past `SUBSCRIBE_TIMEOUT_S` for one step."""
    await asyncio.wait_for(redis.nodes_manager.initialize(), SUBSCRIBE_TIMEOUT_S)
    for channel in channels:
        await asyncio.wait_for(pubsub.ssubscribe(channel), SUBSCRIBE_TIMEOUT_S)
        if on_subscribed is not None:
            on_subscribed(channel)


class ShardedChannels:
    """A set of exact channels followed with SSUBSCRIBE; see the module docstring."""

    def __init__(self, redis: RedisCluster, on_message: ShardedCallback, *, what: str,
                 backoff: Backoff) -> None:
        self._redis = redis
        self._on_message = on_message
        self._what = what
        self._backoff = backoff
        self._channels: set[str] = set()
        self._pubsub: ClusterPubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()  # subscribe/unsubscribe/resubscribe, one at a time
        self._closed = False

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    async def subscribe(self, channel: str) -> None:
        """Follow `channel` (no-op when followed); returns once Redis confirmed it."""
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._what}: closed")
            if channel in self._channels:
                return
            self._channels.add(channel)
            try:
                confirmed = self._expect(channel)
                pubsub = self._ensure_pubsub()
                await asyncio.wait_for(pubsub.ssubscribe(channel), SUBSCRIBE_TIMEOUT_S)
                await asyncio.wait_for(confirmed, SUBSCRIBE_TIMEOUT_S)
            except BaseException:
                self._channels.discard(channel)
                self._confirmations.pop(channel, None)
                raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop following `channel` (no-op when not followed)."""
        async with self._lock:
            if channel not in self._channels:
                return
            self._channels.discard(channel)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(self._pubsub.sunsubscribe(channel),
                                           SUBSCRIBE_TIMEOUT_S)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
            pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            await cancel_tasks([reader], owner=self._what)
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await aclose_pubsub(pubsub)
        self._channels.clear()

    # -- the reader --

    def _expect(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = future
        return future

    def _ensure_pubsub(self) -> ClusterPubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(),
                                               name="btsguru-sharded-reader")
        return self._pubsub

    async def _read_forever(self) -> None:
        failures = Failures(f"{self._what} (resubscribing)", self._backoff, logger=log)
        while not self._closed:
            pubsub = self._pubsub
            try:
                if pubsub is None or not pubsub.subscribed:
                    if self._channels and not self._lock.locked():
                        # a resubscribe that failed midway left nothing subscribed
                        raise RedisConnectionError("no subscription is active")
                    await asyncio.sleep(IDLE_WAIT_S)  # nothing subscribed (yet, or any more)
                    continue
                message = await read_shards(pubsub, READ_TIMEOUT_S)
                failures.succeeded()
                if message is not None:
                    self._deliver(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                await asyncio.sleep(failures.failed(exc))
                await self._resubscribe()
            except Exception:
                log.exception("%s: a message could not be handled", self._what)

    def _deliver(self, message: dict[str, object]) -> None:
        kind, channel = message.get("type"), _text(message.get("channel"))
        if kind == "ssubscribe":
            future = self._confirmations.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "smessage" and channel in self._channels:
            data = message.get("data")
            self._on_message(channel, data if isinstance(data, bytes) else
                             _text(data).encode())

    async def _resubscribe(self) -> None:
        """A fresh pub/sub with every current channel, after the slot map is refreshed."""
        async with self._lock:
            if self._closed:
                return
            old, self._pubsub = self._pubsub, self._redis.pubsub()
            if old is not None:
                with contextlib.suppress(RedisError, OSError):
                    await aclose_pubsub(old)
            try:
                await ssubscribe_again(self._redis, self._pubsub, sorted(self._channels))
                if self._channels:
                    log.info("%s: %d channels subscribed again", self._what,
                             len(self._channels))
            except (RedisError, OSError, TimeoutError) as exc:
                # still down: the reader's next read fails and we come back here
                log.debug("%s: resubscribe failed: %s", self._what, exc)
