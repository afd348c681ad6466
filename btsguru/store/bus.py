"""The bus: how an event stored by one process reaches the hub of every process.

Where it sits: store + **bus** -> hub. The store numbers an event, appends it to the
history (`store.history`) and publishes it here; each process's hub subscribes to the
channels its clients use. Like Centrifuge's `Broker` and python-socketio's pub/sub
managers, it has a Redis implementation (`RedisBus`, for many processes) and an
in-memory one (`InMemoryBus`, for one process and tests).

Channels are the contract's public names (`sports.{sport}`, `sports.{sport}.{league}`,
`sports.{sport}.{league}.{game}`), and a subscription to a channel receives the events
of every channel below it (the contract's hierarchy). `RedisBus` maps a subscription
to a pattern subscription (`PSUBSCRIBE {prefix}bus:games:{sport}:*`) plus the exact
channel, so a process receives only what its clients subscribed to.

On Redis Cluster the bus is sharded pub/sub (SPUBLISH/SSUBSCRIBE), which has no
patterns: an event is published to its own channel and to each parent's
(`{prefix}bus:games:{<sport>}:{league}:{game}`, `...:{<sport>}:{league}`,
`...:{<sport>}`), and a subscription is one exact SSUBSCRIBE. The braces make the sport
the hash tag, the same as the history's and the game keys' (`store.games`): the ingest
script's SPUBLISHes stay in its slot, and a sport's events are handled by one shard's
nodes. redis-py's `ClusterPubSub` keeps one connection per master that holds a
subscribed channel and moves a subscription when its slot moves (a failover); a new
connection or a reconnect counts as a gap, announced like a reconnect here.

Guarantees:
- Per subscription, events arrive in publish order; the store publishes a game's events
  inside the Lua script that numbers them (`redis_targets`), so publish order is `seq`
  order across every process.
- Delivery is at most once: Redis pub/sub drops what is published while a subscriber is
  disconnected. After a reconnect the bus resubscribes and calls the `on_reconnect`
  listeners, so the hub can fill the gap from the history (every event is there first).
- Callbacks run on the loop, in order, one at a time: they must not block (queue and
  return). An exception in one is logged and does not stop the others.

Wire format (Redis): `{id}\\n{event}\\n{channel}\\n{data JSON}`. The data is encoded once,
with orjson, at publish; a receiver keeps those bytes (`BusEvent.data_json`) to build
frames without encoding again, and decodes them only when asked (`BusEvent.data`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import orjson
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from btsguru.backoff import Backoff, Failures
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import read_shards
from btsguru.store.redis import Keys, RedisClient
from btsguru.store.sharded import ssubscribe_again
from btsguru.store.typed import aclose_pubsub

log = logging.getLogger(__name__)

# A public game channel: sports.{sport}[.{league}[.{game}]] (the contract's names).
CHANNEL_RE = re.compile(r"^sports\.([a-z][a-z-]*)(?:\.(\d+)(?:\.(\d+))?)?$")
SUBSCRIBE_TIMEOUT_S = 5.0  # a Redis that does not confirm a subscription in 5 s is down
READ_TIMEOUT_S = 1.0  # how long one read waits, so the reader notices close() promptly
IDLE_WAIT_S = 0.05  # the reader's nap while nothing is subscribed
RECONNECT_BACKOFF = (0.1, 5.0)  # seconds: first retry soon, then at most every 5 s


@dataclass(frozen=True)
class BusEvent:
    """One event on the bus: its history id, contract event name, the public channel of
    its game (or of the sport/league for events published to those), and its data."""

    id: str
    event: str
    channel: str
    data_json: bytes  # the data, encoded once at publish

    @classmethod
    def create(cls, id: str, event: str, channel: str, data: Any) -> BusEvent:
        return cls(id=id, event=event, channel=channel, data_json=orjson.dumps(data))

    @cached_property
    def data(self) -> Any:
        return orjson.loads(self.data_json)


# A subscriber's callback: (the channel it subscribed to, the event).
BusCallback = Callable[[str, BusEvent], None]


class Bus(Protocol):
    async def publish(self, event: BusEvent) -> None:
        """Deliver `event` to the subscribers of its channel and of every parent."""

    async def subscribe(self, channel: str, callback: BusCallback) -> None:
        """Call `callback(channel, event)` for every event on `channel` or below it.
        Returns once the subscription is active (events published later reach it)."""

    async def unsubscribe(self, channel: str, callback: BusCallback) -> None:
        """Stop one subscription (no-op when it is not there)."""

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after the bus lost its connection and resubscribed: events
        published in between were not delivered (read them from the history)."""

    def redis_targets(self, channel: str) -> str | None:
        """Where a Lua script publishes `encode_message` for public `channel`,
        atomically with its writes (`publish_targets` in `store.history`'s Lua): the
        command (PUBLISH, or SPUBLISH on Cluster) and the Redis channels, one a line;
        None when this bus is not Redis pub/sub (the caller then calls `publish` after
        its writes)."""

    async def close(self) -> None: ...


def parse_channel(channel: str) -> tuple[str, int | None, int | None]:
    """(sport, league id, game id) of a public game channel; ValueError otherwise."""
    match = CHANNEL_RE.match(channel)
    if match is None:
        raise ValueError(f"not a game channel: {channel!r}")
    sport, league, game = match.groups()
    return sport, int(league) if league else None, int(game) if game else None


def game_channel(sport: str, league_id: int, game_id: int) -> str:
    return f"sports.{sport}.{league_id}.{game_id}"


def covers(subscribed: str, channel: str) -> bool:
    """True when a subscriber of `subscribed` receives events of `channel`."""
    return channel == subscribed or channel.startswith(subscribed + ".")


def encode_message(id: str, event: str, channel: str, data_json: bytes) -> bytes:
    return b"\n".join((id.encode(), event.encode(), channel.encode(), data_json))


def decode_message(message: bytes) -> BusEvent:
    id, event, channel, data_json = message.split(b"\n", 3)
    return BusEvent(id=id.decode(), event=event.decode(), channel=channel.decode(),
                    data_json=data_json)


class InMemoryBus:
    """One process's bus: `publish` calls the matching callbacks before it returns."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, list[BusCallback]] = {}

    async def publish(self, event: BusEvent) -> None:
        for subscribed, callbacks in list(self._subscriptions.items()):
            if covers(subscribed, event.channel):
                _dispatch(subscribed, list(callbacks), event)

    async def subscribe(self, channel: str, callback: BusCallback) -> None:
        parse_channel(channel)
        self._subscriptions.setdefault(channel, []).append(callback)

    async def unsubscribe(self, channel: str, callback: BusCallback) -> None:
        callbacks = self._subscriptions.get(channel, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._subscriptions.pop(channel, None)

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Never called: an in-process bus does not disconnect."""

    def redis_targets(self, channel: str) -> str | None:
        return None

    async def close(self) -> None:
        self._subscriptions.clear()


@dataclass
class _Subscription:
    channel: str  # public
    exact: str  # Redis channel
    pattern: str | None  # Redis pattern for the channels below (None for a game)
    callbacks: list[BusCallback] = field(default_factory=list)


class RedisBus:
    """Redis pub/sub on the `reverb` client: one connection (on Cluster, one per master
    holding a subscribed channel) and one reader task per process, whatever the number
    of subscriptions."""

    def __init__(self, redis: RedisClient, keys: Keys, *,
                 backoff: Backoff | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._sharded = isinstance(redis, RedisCluster)
        # on Cluster: the per-master connections already known (a new one is a gap)
        self._known: weakref.WeakSet[Any] = weakref.WeakSet()
        self._backoff = backoff or Backoff(*RECONNECT_BACKOFF)
        self._subscriptions: dict[str, _Subscription] = {}
        self._by_redis: dict[str, _Subscription] = {}  # exact channel or pattern -> sub
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()  # subscribe/unsubscribe/reconnect, one at a time
        self._closed = False
        self._gap = False  # the connection was lost: announce once reads work again

    def redis_channel(self, channel: str) -> str:
        """The Redis channel a subscriber of public `channel` listens to."""
        sport, league, game = parse_channel(channel)
        tag = "{" + sport + "}" if self._sharded else sport  # Cluster: the sport's slot
        return self._keys.channel("games", *(p for p in (tag, league, game) if p is not None))

    def _published_on(self, channel: str) -> list[str]:
        """The Redis channels an event of public `channel` goes to: its own, and on
        Cluster each parent's too (no patterns there)."""
        if not self._sharded:
            return [self.redis_channel(channel)]
        parts = channel.split(".")
        return [self.redis_channel(".".join(parts[:n])) for n in range(len(parts), 1, -1)]

    def redis_targets(self, channel: str) -> str | None:
        command = "SPUBLISH" if self._sharded else "PUBLISH"
        return "\n".join((command, *self._published_on(channel)))

    async def publish(self, event: BusEvent) -> None:
        message = encode_message(event.id, event.event, event.channel, event.data_json)
        for target in self._published_on(event.channel):
            if isinstance(self._redis, RedisCluster):
                await self._redis.spublish(target, message)
            else:
                await self._redis.publish(target, message)

    async def subscribe(self, channel: str, callback: BusCallback) -> None:
        exact = self.redis_channel(channel)
        assert exact is not None
        async with self._lock:
            if self._closed:
                raise RuntimeError("bus closed")
            sub = self._subscriptions.get(channel)
            if sub is None:
                _sport, _league, game = parse_channel(channel)
                pattern = None if game is not None or self._sharded \
                    else _glob_escape(exact) + ":*"
                sub = _Subscription(channel, exact, pattern)
                self._subscriptions[channel] = sub
                self._by_redis[exact] = sub
                if pattern is not None:
                    self._by_redis[pattern] = sub
                try:
                    confirmed = [self._expect(exact)]
                    pubsub = await self._ensure_pubsub()
                    if isinstance(pubsub, ClusterPubSub):
                        await pubsub.ssubscribe(exact)
                    else:
                        await pubsub.subscribe(exact)
                    self._watch(pubsub, exact)
                    if pattern is not None:
                        confirmed.append(self._expect(pattern))
                        await pubsub.psubscribe(pattern)
                    # the server has processed the (P)SUBSCRIBE once it confirms it: from
                    # then on every PUBLISH, from any connection, reaches this process
                    await asyncio.wait_for(asyncio.gather(*confirmed), SUBSCRIBE_TIMEOUT_S)
                except BaseException:
                    self._forget(sub)
                    raise
            sub.callbacks.append(callback)

    async def unsubscribe(self, channel: str, callback: BusCallback) -> None:
        async with self._lock:
            sub = self._subscriptions.get(channel)
            if sub is None or callback not in sub.callbacks:
                return
            sub.callbacks.remove(callback)
            if sub.callbacks:
                return
            self._forget(sub)
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    if isinstance(self._pubsub, ClusterPubSub):
                        await self._pubsub.sunsubscribe(sub.exact)
                        return
                    await self._pubsub.unsubscribe(sub.exact)
                    if sub.pattern is not None:
                        await self._pubsub.punsubscribe(sub.pattern)

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _forget(self, sub: _Subscription) -> None:
        self._subscriptions.pop(sub.channel, None)
        self._by_redis.pop(sub.exact, None)
        if sub.pattern is not None:
            self._by_redis.pop(sub.pattern, None)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
            pubsub, self._pubsub = self._pubsub, None
        if reader is not None:
            await cancel_tasks([reader], owner="bus")
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await aclose_pubsub(pubsub)
        self._subscriptions.clear()
        self._by_redis.clear()

    # -- the reader --

    def _expect(self, name: str) -> asyncio.Future[None]:
        future = self._confirmations.get(name)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._confirmations[name] = future
        return future

    async def _ensure_pubsub(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(), name="btsguru-bus-reader")
        return self._pubsub

    async def _read_forever(self) -> None:
        failures = Failures("bus: Redis pub/sub connection (resubscribing)", self._backoff,
                            logger=log)
        while not self._closed:
            pubsub = self._pubsub
            try:
                if pubsub is None or not pubsub.subscribed:
                    if self._subscriptions and not self._lock.locked():
                        # a resubscribe that failed midway left nothing subscribed
                        raise RedisConnectionError("no subscription is active")
                    await asyncio.sleep(IDLE_WAIT_S)  # nothing subscribed yet (or any more)
                    continue
                if isinstance(pubsub, ClusterPubSub):
                    # a failure is raised only when every shard read fails; a shard
                    # whose subscriptions moved shows as a new connection (a gap)
                    message = await read_shards(pubsub, READ_TIMEOUT_S)
                    self._note_new_connections(pubsub)
                else:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT_S)
                failures.succeeded()
                if self._gap:
                    self._gap = False
                    self._announce_reconnect()
                if message is not None:
                    self._deliver(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._gap = True
                await asyncio.sleep(failures.failed(exc))
                await self._resubscribe()
            except Exception:
                log.exception("bus: a message could not be delivered")

    async def _resubscribe(self) -> None:
        """A fresh connection with every current subscription (the old one is gone:
        after a Redis restart the server remembers no subscriptions)."""
        async with self._lock:
            if self._closed:
                return
            old, self._pubsub = self._pubsub, self._redis.pubsub()
            if old is not None:
                with contextlib.suppress(RedisError, OSError):
                    await aclose_pubsub(old)
            exact = [s.exact for s in self._subscriptions.values()]
            patterns = [s.pattern for s in self._subscriptions.values() if s.pattern]
            try:
                if isinstance(self._pubsub, ClusterPubSub):
                    assert isinstance(self._redis, RedisCluster)
                    pubsub = self._pubsub
                    await ssubscribe_again(self._redis, pubsub, exact,
                                           lambda name: self._watch(pubsub, name))
                    return
                if exact:
                    await self._pubsub.subscribe(*exact)
                if patterns:
                    await self._pubsub.psubscribe(*patterns)
                self._watch(self._pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                # still down: the reader's next read fails and we come back here
                log.debug("bus: resubscribe failed: %s", exc)

    def _watch(self, pubsub: PubSub, channel: str | None = None) -> None:
        """Hear of redis-py's own reconnects: its retry reconnects the pub/sub connection
        and resubscribes inside a read, so the reader sees no error, yet messages
        published meanwhile were lost and the listeners must know. On Cluster, the
        connection to the shard of `channel`."""
        connection: Any = pubsub.connection  # typed None in redis-py until it connects
        if isinstance(pubsub, ClusterPubSub) and channel is not None:
            assert isinstance(self._redis, RedisCluster)
            node = self._redis.get_node_from_key(channel)
            shard = pubsub.node_pubsub_mapping.get(node.name) if node else None
            connection = shard.connection if shard is not None else None
        if connection is not None:
            connection.register_connect_callback(self._connection_made)
            self._known.add(connection)

    def _note_new_connections(self, pubsub: ClusterPubSub) -> None:
        """A shard connection this bus did not open (redis-py moved subscriptions to a
        new master after a failover or a slot move): what was published in between
        was lost."""
        for shard in list(pubsub.node_pubsub_mapping.values()):
            connection: Any = shard.connection
            if connection is None or connection in self._known:
                continue
            connection.register_connect_callback(self._connection_made)
            self._known.add(connection)
            if not self._lock.locked():  # not one that a subscribe is opening now
                log.info("bus: sharded subscriptions moved to %s:%s", connection.host,
                         connection.port)
                self._gap = True

    def _connection_made(self, connection: Any) -> None:
        self._gap = True

    def _announce_reconnect(self) -> None:
        log.info("bus: Redis pub/sub reconnected, %d subscriptions restored",
                 len(self._subscriptions))
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("bus: a reconnect listener failed")

    def _deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        key = message.get("pattern") or message.get("channel")
        if isinstance(key, bytes):
            key = key.decode()
        if not isinstance(key, str):
            return
        if kind in ("subscribe", "psubscribe", "ssubscribe"):
            future = self._confirmations.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        sub = self._by_redis.get(key)
        if sub is None or kind not in ("message", "pmessage", "smessage"):
            return
        event = decode_message(message["data"])
        _dispatch(sub.channel, list(sub.callbacks), event)


def _dispatch(subscribed: str, callbacks: list[BusCallback], event: BusEvent) -> None:
    for callback in callbacks:
        try:
            callback(subscribed, event)
        except Exception:
            log.exception("bus: subscriber of %s failed on event %s", subscribed, event.id)


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob pattern (the prefix may hold `*?[]\\`)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
