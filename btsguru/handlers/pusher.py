"""The Pusher endpoint, `GET [/PREFIX]/app/{REVERB_APP_KEY}?protocol=7` (the contract's
section 4, `protocols/PUSHER.md`): a third transport on the hub, so that unmodified
pusher-js and Laravel Echo clients can use btsguru as their Reverb server.

- Game channels: `sports.*` (open to app-key clients unless `PUSHER_PUBLIC_CHANNELS` is
  false), `private-sports.*` and `presence-sports.*` (authorized by
  `POST /v1/realtime/auth`, which records which user the signature was made for). All
  three map onto the hub's game channel; a connection holds one hub subscription per
  game channel and renders each event under every Pusher name it subscribed with (the
  frame for a name is built once per event for every connection: `render`).
- Any other valid name is an app channel (a Laravel app's own); its private and presence
  forms are signed by the app's backend with the app secret. Their events, presence
  announcements and client events travel on the app bus (`store.pusher`).
- Limits: every connection counts against `PUSHER_PUBLIC_PER_IP` (a per-IP stream slot,
  cluster-wide); a private or presence game channel also takes a stream slot of the user
  it was authorized for (the tier's `max_streams`). Over either: `pusher:error` 4100 and
  close 4100, so clients retry after a second. Per connection: `PUSHER_MAX_SUBSCRIPTIONS`
  channels of any kind (more: `pusher:subscription_error` `LimitReached`), and
  `PUSHER_MESSAGES_PER_S` messages and `PUSHER_CLIENT_EVENTS_PER_S` client events per
  second (more: `pusher:error` 4301, in band, the socket stays open, as the protocol asks).
- Resume: the last event written on a user's private/presence game channel is remembered
  per user and channel in Redis (written as events are delivered, batched every
  `store.pusher.POSITION_FLUSH_S`, and on unsubscribe or close), so a client that drops
  and reconnects to any process, even after this one crashed, gets what it missed from
  the history (or `game.snapshot` when the window has passed). After a crash the saved
  position lags by at most `POSITION_FLUSH_S`: the client may see up to that much again
  (same `seq`), never a gap.
- Keepalive (PUSHER.md section 3): `pusher:ping` is answered with `pusher:pong`. Any
  incoming frame (WebSocket ping/pong control frames included) is activity; after
  `activity_timeout` of silence the server sends `pusher:ping`, and when nothing arrives
  within the pong timeout it sends error 4201 and closes with 4201 (the client
  reconnects at once). The Tornado settings `pusher_activity_timeout` and
  `pusher_pong_timeout` (seconds) override the protocol defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import tornado.websocket

from btsguru.auth.access import Principal
from btsguru.auth.tiers import TierLimits
from btsguru.config import Config
from btsguru.errors import BtsguruError
from btsguru.handlers.ws import (
    CLOSE_REASON_BYTES,
    WebSocketConnection,
    failing_protocol,
    shed_handshake,
)
from btsguru.realtime.channels import Channel, InvalidChannel, parse_channel
from btsguru.realtime.connection import (
    CLOSE_RESTARTING,
    CLOSE_TOO_SLOW,
    MAX_QUEUE_BYTES,
    EventFacts,
    TokenBucket,
)
from btsguru.realtime.cursor import Cursor
from btsguru.realtime.frames import ws_frame
from btsguru.realtime.hub import Hub
from btsguru.realtime.pusher_protocol import (
    ACTIVITY_TIMEOUT_S,
    APP_NOT_FOUND,
    CLIENT_EVENT_RATE,
    CLIENT_EVENTS_PER_S,
    EVENT_DATA_MAX_BYTES,
    EVENT_NAME_MAX_LENGTH,
    OVER_CAPACITY,
    PONG_NOT_RECEIVED,
    PONG_TIMEOUT_S,
    PRESENCE_MAX_MEMBERS,
    RECONNECT,
    UNAUTHORIZED,
    Member,
    PusherProtocolError,
    SubscribeRequest,
    channel_auth,
    check_version,
    error_frame,
    event_data_string,
    event_frame,
    frame,
    game_channel_of,
    is_encrypted,
    is_presence,
    is_private,
    is_user_channel,
    new_socket_id,
    parse_channel_data,
    parse_message,
    parse_subscribe,
    subscription_error,
    verify_auth,
)
from btsguru.store.bus import BusEvent
from btsguru.store.history import parse_stream_id
from btsguru.store.pusher import PusherState

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME_BYTES = 64 * 1024
# The native transport's close codes mean "give up" to a Pusher client (4001-4099);
# these become Pusher's "reconnect now".
_RECONNECT_CODES = {CLOSE_TOO_SLOW, CLOSE_RESTARTING}


def ip_identity(ip: str) -> int:
    """A negative stream-slot id for an IP address: never a real user's id."""
    return -(int.from_bytes(hashlib.sha256(ip.encode()).digest()[:7], "big") + 1)


def public_principal(ip: str, config: Config) -> Principal:
    """The principal of an app-key connection: its IP address, `PUSHER_PUBLIC_PER_IP`
    streams; messages (subscribes, pings and client events together) per second and game
    channels per connection as configured."""
    tier = TierLimits(
        name="pusher-public", rest_rate=0, rest_period_s=1, rest_burst=0, rest_refill_per_s=0.0,
        daily_quota=None, max_streams=config.pusher_public_per_ip,
        max_subscriptions=config.pusher_max_subscriptions,
        client_messages_per_s=config.pusher_messages_per_s, raw_proxy=False,
        private_channels=False,
        client_events=False, updated_at=datetime.fromtimestamp(0, UTC))
    return Principal(key_id=0, user_id=ip_identity(ip), key_prefix="pusher", tier=tier,
                     scopes=frozenset({"stream"}), expires_at=None)


@dataclass
class PusherSub:
    """One Pusher channel of one connection."""

    name: str
    game: str | None  # the hub's game channel behind it
    user_id: int | None  # the user a private/presence game channel was authorized for
    member: Member | None
    client_events: bool
    sport: str | None = None  # of the game channel: its key in `Connection.positions`
    key_id: int | None = None  # the API key that authorized it (through its grant)
    # events up to this history position were already written under this name (a second
    # name of a game channel resubscribed the hub channel to replay for itself)
    floor: tuple[int, int] | None = None
    ready: bool = False  # subscription_succeeded sent: app-bus messages may follow
    held: list[bytes] = field(default_factory=list)


class PusherConnection(WebSocketConnection):
    kind = "pusher"
    handler: PusherHandler

    def __init__(self, handler: PusherHandler, principal: Principal, socket_id: str,
                 client_events_per_s: int = CLIENT_EVENTS_PER_S) -> None:
        super().__init__(principal)
        self.handler = handler
        self.socket_id = socket_id
        self.channels: dict[str, PusherSub] = {}
        self.aliases: dict[str, set[str]] = {}  # hub channel -> Pusher names
        self.pending: dict[str, list[tuple[str, bytes]]] = {}  # hub channel -> successes
        self.user_slots: set[int] = set()
        self.client_bucket = TokenBucket(client_events_per_s, client_events_per_s)
        self.listeners: dict[str, Any] = {}

    def resume_positions(self) -> dict[tuple[int, str], str]:
        """(user, Pusher channel) -> the last event id written, for the private/presence
        game channels of this connection (`PusherState` saves them in batches)."""
        out = {}
        for sub in self.channels.values():
            if sub.user_id is not None and sub.game is not None:
                position = self.positions.get(sub.sport or "")
                if position is not None:
                    out[(sub.user_id, sub.name)] = position
        return out

    def key_ids(self) -> set[int]:
        """The keys that authorized this socket's private and presence game channels."""
        return {sub.key_id for sub in self.channels.values() if sub.key_id}

    def user_ids(self) -> set[int]:
        return {sub.user_id for sub in self.channels.values()
                if sub.key_id and sub.user_id is not None}

    def revoked(self) -> None:
        """As Pusher ends a terminated user's connections: error, then close, 4009."""
        message = "Connection unauthorized: the API key that authorized a channel was " \
                  "revoked or its user disabled"
        self.send(error_frame(UNAUTHORIZED, message))
        self.close(UNAUTHORIZED, message)

    def _transport_close(self, code: int, reason: str) -> None:
        # the hub's close codes, in the Pusher meaning that makes clients come back
        super()._transport_close(RECONNECT if code in _RECONNECT_CODES else code, reason)

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        data = shared.get("pusher-data")
        if data is None:
            data = shared["pusher-data"] = event_data_string(event.data_json)
        parts = []
        pos = None
        for name in sorted(self.aliases.get(sub_name, ())):
            floor = self.channels[name].floor if name in self.channels else None
            if floor is not None:
                if pos is None:
                    with contextlib.suppress(ValueError):  # a snapshot's: not a position
                        pos = parse_stream_id(event.id)
                if pos is not None and pos <= floor:
                    continue
            key = ("pusher", name)
            wire = shared.get(key)
            if wire is None:
                wire = shared[key] = ws_frame(event_frame(event.event, name, data))
            parts.append(wire)
        return b"".join(parts)

    def control(self, message: dict[str, Any]) -> None:
        if message.get("op") != "subscribed":
            return
        for name, success in self.pending.pop(str(message.get("channel")), []):
            self.send_frame(ws_frame(success))
            sub = self.channels.get(name)
            if sub is not None:
                self.mark_ready(sub)

    def send(self, payload: bytes) -> None:
        self.send_frame(ws_frame(payload))

    def mark_ready(self, sub: PusherSub) -> None:
        sub.ready = True
        held, sub.held = sub.held, []
        for payload in held:
            self.send_frame(payload)

    def on_app_message(self, name: str, message: dict[str, Any]) -> None:
        """An app-bus message for channel `name` (see `store.pusher`)."""
        if self.closed or message.get("except") == self.socket_id:
            return
        sub = self.channels.get(name)
        if sub is None:
            return
        wire = message.get("\x00wire")  # the message dict is shared by local subscribers
        if not isinstance(wire, bytes):
            body = {k: message[k] for k in ("event", "channel", "data", "user_id")
                    if k in message}
            wire = message["\x00wire"] = ws_frame(orjson.dumps(body))
        if not sub.ready:
            sub.held.append(wire)
        elif self._queued_bytes > MAX_QUEUE_BYTES:
            self.close_too_slow("fell behind on an app channel")
        else:
            self.send_frame(wire)


class PusherHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, hub: Hub, state: PusherState, config: Config) -> None:
        self.hub = hub
        self.state = state
        self.config = config
        self.conn: PusherConnection | None = None
        self._heard_at = time.monotonic()
        self._pinged_at: float | None = None
        self._keepalive: asyncio.TimerHandle | None = None

    @property
    def max_message_size(self) -> int:
        return MAX_CLIENT_FRAME_BYTES

    @property
    def ping_interval(self) -> float | None:
        return None  # no control-frame pings: `pusher:ping` below, which closes with 4201

    @property
    def activity_timeout_s(self) -> float:
        return float(self.settings.get("pusher_activity_timeout", ACTIVITY_TIMEOUT_S))

    @property
    def pong_timeout_s(self) -> float:
        return float(self.settings.get("pusher_pong_timeout", PONG_TIMEOUT_S))

    # -- keepalive --

    def _heard(self) -> None:
        self._heard_at = time.monotonic()  # the timer looks at it lazily: no rescheduling

    def on_ping(self, data: bytes) -> None:
        self._heard()

    def on_pong(self, data: bytes) -> None:
        self._heard()

    def _keepalive_in(self, delay_s: float) -> None:
        self._keepalive = asyncio.get_running_loop().call_later(
            max(0.01, delay_s), self._check_keepalive)

    def _check_keepalive(self) -> None:
        self._keepalive = None
        conn = self.conn
        if conn is None or conn.closed:
            return
        now = time.monotonic()
        pinged_at = self._pinged_at
        if pinged_at is not None and self._heard_at < pinged_at:
            if now - pinged_at >= self.pong_timeout_s:
                log.debug("pusher: %s sent no pong; closing 4201", conn.socket_id)
                conn.send(error_frame(PONG_NOT_RECEIVED, "Pong reply not received"))
                conn.close(PONG_NOT_RECEIVED, "Pong reply not received")
                return
            self._keepalive_in(pinged_at + self.pong_timeout_s - now)
            return
        self._pinged_at = None
        silent_s = now - self._heard_at
        if silent_s >= self.activity_timeout_s:
            self._pinged_at = now
            conn.send(frame("pusher:ping", {}, data_is_json_string=False))
            self._keepalive_in(self.pong_timeout_s)
        else:
            self._keepalive_in(self.activity_timeout_s - silent_s)

    def get_compression_options(self) -> None:
        return None  # frames are shared between connections, so sent uncompressed

    def check_origin(self, origin: str) -> bool:
        return True  # like Reverb's default allowed_origins ["*"]: the app key is public

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        return failing_protocol(self)  # a bad frame is closed with 1002/1007, not dropped

    def _refuse(self, code: int, message: str) -> None:
        self.write_message(error_frame(code, message).decode())
        self.close(code, message[:CLOSE_REASON_BYTES])

    async def open(self, *args: str, **kwargs: str) -> None:
        self.state.start()  # idempotent: the app bus listener and the heartbeat
        key = kwargs.get("key", args[-1] if args else "")
        query = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        problem = check_version(query)
        if key != self.config.reverb_app_key:
            problem = APP_NOT_FOUND, f"Application does not exist: {key[:40]}"
        if problem is not None:
            self._refuse(*problem)
            return
        ip = self.request.remote_ip or "unknown"
        conn = PusherConnection(self, public_principal(ip, self.config), new_socket_id(),
                                self.config.pusher_client_events_per_s)
        try:
            await self.hub.register(conn)
        except BtsguruError as exc:
            log.debug("pusher: refused %s: %s", ip, exc.message)
            self._refuse(OVER_CAPACITY, f"Over capacity: {exc.message}")
            return
        self.conn = conn
        if self.ws_connection is None:  # gone while we were admitting it
            self.on_close()
            return
        shed_handshake(self, conn)
        # a whole number of seconds, as clients require
        conn.send(frame("pusher:connection_established",
                        {"socket_id": conn.socket_id,
                         "activity_timeout": max(1, round(self.activity_timeout_s))}))
        self._heard()
        self._keepalive_in(self.activity_timeout_s)

    async def on_message(self, message: str | bytes) -> None:
        self._heard()
        conn = self.conn
        if conn is None or conn.closed:
            return
        if not conn.allow_message():
            conn.send(error_frame(CLIENT_EVENT_RATE, "Too many messages: slow down"))
            return
        try:
            request = parse_message(message)
            event = request.event
            if event == "pusher:ping":
                conn.send(frame("pusher:pong", {}, data_is_json_string=False))
            elif event == "pusher:pong":
                pass
            elif event == "pusher:subscribe":
                await self._subscribe(conn, parse_subscribe(request.data))
            elif event == "pusher:unsubscribe":
                data = request.data
                if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
                    raise PusherProtocolError('pusher:unsubscribe needs data {"channel"}')
                await self._unsubscribe(conn, data["channel"])
            elif event.startswith("client-"):
                await self._client_event(conn, event, request.channel, request.data)
            else:
                raise PusherProtocolError(f"Unsupported event {event[:60]!r}")
        except PusherProtocolError as exc:
            conn.send(error_frame(exc.code, exc.message))

    # -- subscribe --

    async def _subscribe(self, conn: PusherConnection, req: SubscribeRequest) -> None:
        name = req.channel
        if name in conn.channels:  # idempotent: success again, nothing added
            await self._succeed_again(conn, conn.channels[name])
            return
        limit = self.config.pusher_max_subscriptions
        if len(conn.channels) >= limit:  # app channels too: each holds a listener and a count
            conn.send(subscription_error(name, f"at most {limit} channels per connection",
                                         403, "LimitReached"))
            return
        if is_user_channel(name):
            # reserved for the signed-in user it names (PUSHER.md section 11); without
            # pusher:signin (not offered) any client could read another user's events
            conn.send(subscription_error(name, "#server-to-user- channels need "
                                         "pusher:signin, which this server does not offer",
                                         403))
            return
        if is_private(name) and not self._signed(conn, req):
            conn.send(subscription_error(name, "Invalid signature", 401))
            return
        game = game_channel_of(name)
        client_events = is_private(name) and not is_encrypted(name)
        channel = None
        user_id: int | None = None
        key_id: int | None = None
        if game is not None:
            authorized = await self._authorize_game(conn, name, game)
            if authorized is None:
                return
            channel, user_id, events_allowed, key_id = authorized
            client_events = client_events and events_allowed
        member = None
        if is_presence(name):
            try:
                member = parse_channel_data(req.channel_data or "")
            except PusherProtocolError as exc:
                conn.send(subscription_error(name, exc.message, 400, "InvalidChannelData"))
                return
            if user_id is not None and member.user_id != str(user_id):
                conn.send(subscription_error(name, "channel_data is not this user's", 403))
                return
        sub = PusherSub(name, game, user_id, member, client_events,
                        channel.sport if channel is not None else None, key_id=key_id)
        if not await self._attach(conn, sub):
            return
        if channel is None or game is None:
            conn.send(await self._success(sub))
            conn.mark_ready(sub)
            return
        success = await self._success(sub)
        cursor = await self._resume_cursor(conn, sub, channel) if user_id is not None else None
        conn.pending.setdefault(game, []).append((name, success))
        conn.aliases.setdefault(game, set()).add(name)
        try:
            await self.hub.subscribe(conn, [channel], cursor)
        except BtsguruError as exc:
            conn.pending.pop(game, None)
            await self._unsubscribe(conn, name)
            conn.send(subscription_error(name, exc.message, exc.status, "LimitReached"))

    async def _resume_cursor(self, conn: PusherConnection, sub: PusherSub,
                             channel: Channel) -> Cursor | None:
        """Where the hub subscription of `sub`'s game channel must start so that `sub`
        gets what its user missed. When another name of this connection already holds
        that hub subscription (pusher-js resubscribes `private-` and `presence-` forms one
        after the other), the hub channel is subscribed again from the older position;
        the names that had the newer events skip them (`floor`)."""
        assert sub.user_id is not None and sub.game is not None
        position = await self.state.position(sub.user_id, sub.name)
        if position is None:
            return None
        others = [conn.channels[name] for name in conn.aliases.get(sub.game, ())
                  if name in conn.channels]
        delivered = conn.positions.get(channel.sport)
        if others and delivered is not None:
            try:
                mine, theirs = parse_stream_id(position), parse_stream_id(delivered)
            except ValueError:
                return None
            if mine >= theirs:
                return None  # nothing this name missed that the others have not had
            for other in others:
                other.floor = max(other.floor or theirs, theirs)
            await self.hub.unsubscribe(conn, [sub.game])
        elif others:
            return None  # the others are not past a snapshot: resubscribing would repeat it
        return Cursor({channel.sport: position})

    def _signed(self, conn: PusherConnection, req: SubscribeRequest) -> bool:
        channel_data = req.channel_data if is_presence(req.channel) else None
        expected = channel_auth(self.config.reverb_app_key,
                                self.config.reverb_app_secret.reveal(), conn.socket_id,
                                req.channel, channel_data)
        return verify_auth(req.auth, expected)

    async def _authorize_game(self, conn: PusherConnection, name: str, game: str,
                              ) -> tuple[Channel, int | None, bool, int | None] | None:
        """The game channel, the user it was authorized for, whether client events are
        allowed and the API key behind the grant; None when refused (the client was
        told)."""
        try:
            channel = parse_channel(game, self.hub.sports)
        except InvalidChannel as exc:
            conn.send(subscription_error(name, exc.message, 400, "InvalidChannel"))
            return None
        if not is_private(name):
            if not self.config.pusher_public_channels:
                conn.send(subscription_error(
                    name, "public game channels are closed: subscribe to private-" + name +
                    " authorized by POST /v1/realtime/auth with an API key", 403))
                return None
            return channel, None, False, None
        grant = await self.state.granted(conn.socket_id, name)
        if grant is None:
            conn.send(subscription_error(
                name, "game channels are authorized by POST /v1/realtime/auth "
                "with an API key", 403))
            return None
        user_id = int(grant["user_id"])
        if user_id not in conn.user_slots:
            if await self.hub.slots.acquire(user_id, int(grant["max_streams"])) is None:
                conn.send(error_frame(OVER_CAPACITY, "Over capacity: the tier's "
                                      "concurrent connections are in use"))
                conn.close(OVER_CAPACITY, "over capacity")
                return None
            conn.user_slots.add(user_id)
        key_id = grant.get("key_id")
        return channel, user_id, bool(grant.get("client_events")), \
            int(key_id) if key_id is not None else None

    async def _attach(self, conn: PusherConnection, sub: PusherSub) -> bool:
        """Join the presence roster, listen on the app bus, count the subscriber."""
        name = sub.name
        if sub.member is not None:
            joined = await self.state.join(name, sub.member.user_id, sub.member.info_json,
                                           PRESENCE_MAX_MEMBERS)
            if joined < 0:
                conn.send(subscription_error(name, f"presence channel full "
                                             f"({PRESENCE_MAX_MEMBERS} members)", 403,
                                             "LimitReached"))
                return False
            if joined == 1:
                await self.state.publish(name, {
                    "event": "pusher_internal:member_added", "channel": name,
                    "except": conn.socket_id,
                    "data": orjson.dumps({"user_id": sub.member.user_id,
                                          "user_info": sub.member.user_info}).decode()})
        conn.channels[name] = sub

        def listener(message: dict[str, Any]) -> None:
            conn.on_app_message(name, message)

        conn.listeners[name] = listener
        self.state.add_listener(name, listener)
        if sub.user_id is not None:
            self.state.track_positions(conn.resume_positions)
        await self.state.count(name, 1)
        return True

    async def _success(self, sub: PusherSub) -> bytes:
        data: dict[str, Any] = {}
        if sub.member is not None:
            roster = await self.state.members(sub.name)
            data = {"presence": {"ids": list(roster), "hash": roster, "count": len(roster)}}
        return frame("pusher_internal:subscription_succeeded", data, sub.name)

    async def _succeed_again(self, conn: PusherConnection, sub: PusherSub) -> None:
        conn.send(await self._success(sub))

    async def _unsubscribe(self, conn: PusherConnection, name: str) -> None:
        sub = conn.channels.pop(name, None)
        if sub is None:
            return
        if sub.game is not None:
            aliases = conn.aliases.get(sub.game, set())
            aliases.discard(name)
            if not aliases:
                conn.aliases.pop(sub.game, None)
                await self.hub.unsubscribe(conn, [sub.game])
        await self._detach(conn, sub)

    async def _detach(self, conn: PusherConnection, sub: PusherSub) -> None:
        listener = conn.listeners.pop(sub.name, None)
        if listener is not None:
            self.state.remove_listener(sub.name, listener)
        if sub.user_id is not None and sub.game is not None:
            channel = parse_channel(sub.game, self.hub.sports)
            position = conn.positions.get(channel.sport)
            if position is not None:
                await self.state.save_positions(sub.user_id, {sub.name: position})
        await self.state.count(sub.name, -1)
        if sub.member is not None and await self.state.leave(sub.name, sub.member.user_id):
            await self.state.publish(sub.name, {
                "event": "pusher_internal:member_removed", "channel": sub.name,
                "data": orjson.dumps({"user_id": sub.member.user_id}).decode()})

    # -- client events --

    async def _client_event(self, conn: PusherConnection, event: str, channel: str | None,
                            data: Any) -> None:
        sub = conn.channels.get(channel or "")
        if channel is None or sub is None:
            raise PusherProtocolError("Client event rejected: not subscribed to the channel")
        if not is_private(channel) or is_encrypted(channel):
            raise PusherProtocolError("Client event rejected: only private and presence "
                                      "channels accept client events")
        if not sub.client_events:
            raise PusherProtocolError("Client event rejected: client events are not "
                                      "enabled for this channel")
        if len(event) > EVENT_NAME_MAX_LENGTH:
            raise PusherProtocolError(f"Client event rejected: name longer than "
                                      f"{EVENT_NAME_MAX_LENGTH} characters")
        if len(orjson.dumps(data)) > EVENT_DATA_MAX_BYTES:
            raise PusherProtocolError("Client event rejected: data over 10 KB")
        if not conn.client_bucket.take(time.monotonic()):
            raise PusherProtocolError("Client event rate limit exceeded", CLIENT_EVENT_RATE)
        message: dict[str, Any] = {"event": event, "channel": channel, "data": data,
                                   "except": conn.socket_id}
        if sub.member is not None:
            message["user_id"] = sub.member.user_id
        await self.state.publish(channel, message)

    # -- closing --

    def on_close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self.hub.unregister(conn)
        self.state.spawn(self._cleanup(conn), f"cleanup of pusher socket {conn.socket_id}")

    async def _cleanup(self, conn: PusherConnection) -> None:
        self.state.untrack_positions(conn.resume_positions)
        for sub in list(conn.channels.values()):
            await self._detach(conn, sub)
        conn.channels.clear()
        for user_id in conn.user_slots:
            await self.hub.slots.release(user_id)
        conn.user_slots.clear()
