"""One client connection as the hub sees it: its subscriptions, a bounded send queue and
the slow-consumer policy. Transports (`handlers.ws`, `handlers.sse`, and through
`realtime.pusher_socket` `handlers.pusher`) subclass `Connection` and supply the socket
writes and the wire format.

Where it sits: hub -> **connection** -> the socket.

Sending: a frame is written to the socket at once while the socket keeps up; once the
kernel stops taking bytes, frames wait in this connection's queue, and the queue is
handed to the socket in one batch each time the previous batch has drained. So at most
one batch sits in the transport's buffer and at most `MAX_QUEUE_BYTES` in the queue.

Slow consumers (the contract: no event is dropped or merged; a subscriber that cannot
keep up gets `game.snapshot` and continues from there, or is closed to reconnect and
resume):
- the queue overflowing makes the connection *lag*: the queued events are dropped and
  the games they were about are remembered, as are the games of every event that
  arrives while it lags; once the socket has drained, the hub sends a fresh
  `game.snapshot` of each of those games (`CatchUp.recover`) and the connection continues
  live. A client sees the snapshot's `seq` and the next event's `seq + 1`: no gap.
- a *hopeless* one is closed with 4010 (reconnect and resume from the history): one
  that lagged `MAX_LAGS` times within `LAG_WINDOW_S`, one whose socket took no bytes
  for `STALL_TIMEOUT_S`, or one that must drop an event no snapshot can stand for (an
  event published through the Pusher HTTP API).

Client messages are rate limited per connection with a token bucket (the tier's
`client_messages_per_s`, a burst of `BURST_SECONDS` of it).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from btsguru import metrics
from btsguru.auth.access import Principal
from btsguru.errors import BtsguruError, Forbidden, RateLimited
from btsguru.realtime.channels import Channel
from btsguru.realtime.cursor import StreamPos
from btsguru.store.bus import BusEvent, parse_channel
from btsguru.store.history import parse_stream_id

if TYPE_CHECKING:
    from asyncio import Future

log = logging.getLogger(__name__)

# Per connection, beyond what the socket holds: about a thousand typical events, or a
# minute of a busy sport channel, before the client is considered behind.
MAX_QUEUE_BYTES = 256 * 1024
MAX_LAGS = 3  # snapshots in LAG_WINDOW_S before a client is hopeless
LAG_WINDOW_S = 60.0
STALL_TIMEOUT_S = 30.0  # bytes waiting and none taken for this long: the peer is gone
MAX_LAGGED_GAMES = 500  # more games to re-snapshot than this: cheaper to reconnect
BURST_SECONDS = 2  # client message bucket: two seconds' worth of the tier's rate
MAX_SYNC_BUFFER = 10_000  # live events held during one replay before it re-reads instead

CLOSE_TOO_SLOW = 4010
CLOSE_RESTARTING = 1012
CLOSE_UNAUTHORIZED = 4001  # the contract's bad-key code: a key revoked while connected


class TooManyConnections(RateLimited):
    code = "too_many_connections"
    ws_close_code = 4008
    pusher_code = 4100  # Pusher's "over capacity": clients retry


class TooManySubscriptions(Forbidden):
    code = "too_many_subscriptions"
    ws_close_code = 4009


class TooSlow(BtsguruError):
    status = 503
    code = "too_slow"
    ws_close_code = CLOSE_TOO_SLOW
    pusher_code = 4200


_ids = itertools.count(1)
_NO_GAMES: set[int] = frozenset()  # type: ignore[assignment]  # never added to: see lag()


class Sync:
    """A replay in progress for some subscriptions: live events wait here, in arrival
    order, until the history (or snapshot) before them has been sent."""

    __slots__ = ("buffer", "overflowed")

    def __init__(self) -> None:
        self.buffer: list[tuple[Subscription, BusEvent]] = []
        self.overflowed = False

    def hold(self, sub: Subscription, event: BusEvent) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= MAX_SYNC_BUFFER:
            self.overflowed = True  # the history has them all: re-read it afterwards
            self.buffer.clear()
            return
        self.buffer.append((sub, event))


class Subscription:
    """One channel of one connection."""

    __slots__ = ("after", "channel", "conn", "lagged", "name", "seq_floor", "sync")

    def __init__(self, conn: Connection, channel: Channel) -> None:
        self.conn = conn
        self.channel = channel
        self.name = channel.name
        # the id of the last event delivered (or consumed by a snapshot); events at or
        # before it are not sent again: exactly once across replays and reconnects
        self.after: StreamPos | None = None
        # game id -> the seq of the snapshot sent: that game's events up to it are in it
        self.seq_floor: dict[int, int] = {}
        self.sync: Sync | None = None
        # games to re-snapshot once the socket drains; empty for nearly every
        # subscription, so the set is made when first needed (memory per connection)
        self.lagged: set[int] = _NO_GAMES


    def lag(self, game_id: int) -> None:
        if self.lagged is _NO_GAMES:
            self.lagged = set()
        self.lagged.add(game_id)


@dataclass(frozen=True)
class EventFacts:
    """What the hub works out once per event for every subscriber."""

    pos: StreamPos
    sport: str
    game_id: int | None

    def seq(self, event: BusEvent) -> int | None:
        data = event.data
        seq = data.get("seq") if isinstance(data, dict) else None
        return seq if isinstance(seq, int) else None


def event_facts(event: BusEvent) -> EventFacts | None:
    """The facts of a bus event, or None (logged) for one whose id or channel is not
    the bus's: it is delivered to nobody."""
    try:
        sport, _league, game_id = parse_channel(event.channel)
        return EventFacts(parse_stream_id(event.id), sport, game_id)
    except ValueError:
        log.warning("hub: ignoring event %r on channel %r", event.id, event.channel)
        return None


@dataclass(slots=True)
class _Queued:
    frame: bytes
    sub: Subscription | None = None  # None: a control message
    game_id: int | None = None
    sport: str | None = None
    id: str | None = None  # the event's id (positions advance when it is written)


@dataclass
class TokenBucket:
    rate_per_s: float
    capacity: float
    tokens: float = field(init=False)
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Connection:
    """Base of the transports' connections. Subclasses implement the `_transport_*`
    methods and `render`."""

    kind: ClassVar[str] = "stream"
    heartbeat_s: ClassVar[float | None] = None  # idle time after which `heartbeat()` runs

    def __init__(self, principal: Principal) -> None:
        self.id = next(_ids)
        self.principal = principal
        self.user_id = principal.user_id
        self.max_subscriptions = principal.tier.max_subscriptions
        rate = max(1, principal.tier.client_messages_per_s)
        self.bucket = TokenBucket(rate, rate * BURST_SECONDS)
        self.subs: dict[str, Subscription] = {}
        self.positions: dict[str, str] = {}  # sport -> id of the last event written
        self.closed = False
        self.lagging = False
        self.on_drained: Callable[[Connection], None] | None = None  # set by the hub
        # lists, not deques: an empty deque costs a 64-slot block, and tens of thousands
        # of idle connections each have an empty queue
        self._queue: list[_Queued] = []
        self._queued_bytes = 0
        self._flushing = False
        self._lags: list[float] = []
        self.last_write_at = time.monotonic()
        self.stalled_since: float | None = None  # bytes waiting in the transport since

    # -- the transport's part --

    def _transport_write(self, data: bytes) -> Future[None] | None:
        """Hand `data` to the socket; a future that resolves when it is flushed."""
        raise NotImplementedError

    def _transport_pending(self) -> bool:
        """Whether bytes written are still waiting in the transport's buffer."""
        raise NotImplementedError

    def _transport_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        """The frame of `event` for a subscriber of `sub_name`; `shared` caches what is the
        same for every connection of this transport (one dict per event and channel)."""
        raise NotImplementedError

    def control(self, message: dict[str, Any]) -> None:
        """Send a protocol message (`subscribed`, `pong`, `error`); SSE has none."""

    def heartbeat(self) -> None:
        """Keep an idle connection open through proxies (SSE's comment line)."""

    def tick(self, now: float) -> None:
        """Called by the hub once a tick (the native WebSocket's pings)."""

    def prepare(self, frame: bytes, sport: str | None, id: str | None) -> bytes:
        """The bytes of a frame at the moment it is written (SSE adds the cursor of a
        multi-sport stream here, so that it reflects what was actually sent)."""
        return frame

    # -- limits --

    def allow_message(self) -> bool:
        return self.bucket.take(time.monotonic())

    def check_subscription_room(self, extra: int) -> None:
        if len(self.subs) + extra > self.max_subscriptions:
            raise TooManySubscriptions(
                f"the {self.principal.tier.name} tier allows {self.max_subscriptions} "
                f"subscriptions per connection")

    # -- delivery (called by the hub, on the loop) --

    def offer(self, sub: Subscription, event: BusEvent, facts: EventFacts,
              shared: dict[Any, bytes]) -> None:
        """A live event for `sub`: held while `sub` replays, otherwise delivered."""
        if sub.sync is not None:
            sub.sync.hold(sub, event)
        else:
            self.deliver(sub, event, facts, shared)

    def deliver(self, sub: Subscription, event: BusEvent, facts: EventFacts,
                shared: dict[Any, bytes]) -> None:
        """Send `event` to `sub` unless it has had it (by id, or by a snapshot's seq)."""
        if self.closed or (sub.after is not None and facts.pos <= sub.after):
            return
        game_id = facts.game_id
        if sub.seq_floor and game_id is not None and game_id in sub.seq_floor:
            seq = facts.seq(event)
            if seq is not None and seq <= sub.seq_floor[game_id]:
                sub.after = facts.pos  # already in the snapshot the client has
                return
            del sub.seq_floor[game_id]
        sub.after = facts.pos
        if self.lagging:
            self._skip(sub, game_id)
            return
        frame = self.render(sub.name, event, facts, shared)
        if self._flushing or self._queue:
            self._enqueue(_Queued(frame, sub, game_id, facts.sport, event.id))
        else:  # the common case, once per subscriber per event: straight to the socket
            self._write(self.prepare(frame, facts.sport, event.id), 1, facts.sport, event.id)

    def send_frame(self, frame: bytes, sub: Subscription | None = None,
                   game_id: int | None = None, sport: str | None = None,
                   id: str | None = None) -> None:
        """Queue an already rendered frame (snapshots, control messages)."""
        if not self.closed:
            self._enqueue(_Queued(frame, sub, game_id, sport, id))

    # -- the queue --

    def _enqueue(self, item: _Queued) -> None:
        if not self._flushing and not self._queue:
            self._write_batch([item])
            return
        self._queue.append(item)
        self._queued_bytes += len(item.frame)
        if self._queued_bytes > MAX_QUEUE_BYTES:
            self._overflow()

    def _write_batch(self, items: list[_Queued]) -> None:
        """Write `items` as one piece (one system call while the socket keeps up)."""
        parts = []
        for item in items:
            parts.append(self.prepare(item.frame, item.sport, item.id))
            if item.id is not None and item.sport is not None:
                self.positions[item.sport] = item.id
        self._write(b"".join(parts) if len(parts) > 1 else parts[0], len(parts))

    def _write(self, data: bytes, frames: int, sport: str | None = None,
               id: str | None = None) -> None:
        """Hand `data` to the transport; from the flush on, queue behind it."""
        try:
            future = self._transport_write(data)
        except Exception as exc:  # the socket is gone: the transport reports the close
            log.debug("connection %d: write failed: %s", self.id, exc)
            self.closed = True
            return
        if id is not None and sport is not None:
            self.positions[sport] = id
        metrics.SENT.add(self.kind, frames, len(data))
        self.last_write_at = time.monotonic()
        if future is not None and self._transport_pending():
            self._flushing = True
            if self.stalled_since is None:
                self.stalled_since = self.last_write_at
            future.add_done_callback(self._flushed)
        else:
            self.stalled_since = None

    def _flushed(self, future: Future[None]) -> None:
        self._flushing = False
        self.stalled_since = None
        if future.cancelled() or future.exception() is not None or self.closed:
            return
        if self._queue:
            batch = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._write_batch(batch)
        elif self.lagging and self.on_drained is not None:
            self.on_drained(self)

    def _overflow(self) -> None:
        kept: list[_Queued] = []
        for item in self._queue:
            if item.sub is None:
                kept.append(item)  # control messages are small and must arrive
            elif item.game_id is None:
                self.close_too_slow("fell behind on an event no snapshot can replace")
                return
            else:
                item.sub.lag(item.game_id)
        self._queue = kept
        self._queued_bytes = sum(len(i.frame) for i in kept)
        now = time.monotonic()
        self._lags.append(now)
        self._lags = [at for at in self._lags if at >= now - LAG_WINDOW_S]
        if len(self._lags) > MAX_LAGS:
            self.close_too_slow(f"fell behind {len(self._lags)} times in {LAG_WINDOW_S:g} s")
            return
        log.info("connection %d (user %d) fell behind: snapshot once it drains",
                 self.id, self.user_id)
        self.lagging = True

    def _skip(self, sub: Subscription, game_id: int | None) -> None:
        if game_id is None:
            self.close_too_slow("fell behind on an event no snapshot can replace")
            return
        sub.lag(game_id)
        if sum(len(s.lagged) for s in self.subs.values()) > MAX_LAGGED_GAMES:
            self.close_too_slow("fell behind on too many games")

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting in the transport."""
        return not self._queue and not self._flushing

    # -- rights (re-checked by `realtime.revocation` when keys or users change) --

    def key_ids(self) -> set[int]:
        """The API keys this connection's rights rest on (none for an app-key or a
        console-session connection)."""
        return {self.principal.key_id} if self.principal.key_id > 0 else set()

    def user_ids(self) -> set[int]:
        """The users whose keys `key_ids` are."""
        return {self.principal.user_id} if self.principal.key_id > 0 else set()

    def revoked(self) -> None:
        """A key of `key_ids` no longer authenticates (revoked, expired, user disabled)."""
        self.close(CLOSE_UNAUTHORIZED, "API key revoked or expired, or user disabled")

    # -- closing --

    def close_too_slow(self, why: str) -> None:
        log.info("connection %d (user %d) closed as too slow: %s", self.id, self.user_id, why)
        self.close(CLOSE_TOO_SLOW, "too slow: reconnect and resume", flush=False)

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close with `code`; what is queued (an error message, say) goes first unless
        `flush` is False."""
        if self.closed:
            return
        pending = list(self._queue) if flush else []
        self._queue.clear()
        self._queued_bytes = 0
        try:
            for item in pending:
                self._transport_write(self.prepare(item.frame, item.sport, item.id))
        except Exception as exc:
            log.debug("connection %d: final write failed: %s", self.id, exc)
        self.closed = True
        metrics.STREAM_DISCONNECTS.labels(self.kind, metrics.disconnect_reason(code)).inc()
        try:
            self._transport_close(code, reason)
        except Exception as exc:
            log.debug("connection %d: close failed: %s", self.id, exc)

    def gone(self) -> None:
        """The peer went away (the transport noticed)."""
        if not self.closed:  # a close we started was counted with its code
            metrics.STREAM_DISCONNECTS.labels(self.kind, metrics.disconnect_reason(None)).inc()
        self.closed = True
        self._queue.clear()
        self._queued_bytes = 0
