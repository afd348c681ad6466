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
  close 4100, so clients retry after a second.
- Resume: the last event written on a user's private/presence game channel is remembered
  per user and channel; resubscribing after a reconnect replays what was missed from the
  history (or sends `game.snapshot` when the window has passed).
- Keepalive: `pusher:ping` is answered; the server also pings with WebSocket control
  frames every `ACTIVITY_TIMEOUT_S` and drops a peer that does not answer (Tornado's
  `ping_timeout`), which counts any frame as activity.
"""

from __future__ import annotations

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
from btsguru.realtime.channels import Channel, InvalidChannel, parse_channel
from btsguru.realtime.connection import (
    CLOSE_RESTARTING,
    CLOSE_TOO_SLOW,
    MAX_QUEUE_BYTES,
    Connection,
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
    PONG_TIMEOUT_S,
    PRESENCE_MAX_MEMBERS,
    RECONNECT,
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
    new_socket_id,
    parse_channel_data,
    parse_message,
    parse_subscribe,
    subscription_error,
    verify_auth,
)
from btsguru.store.bus import BusEvent
from btsguru.store.pusher import PusherState

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME_BYTES = 64 * 1024
PUBLIC_MAX_SUBSCRIPTIONS = 200  # per connection; a Laravel page rarely uses more than a few
PUBLIC_MESSAGES_PER_S = 20  # subscribes, pings and client events together, per connection
CLOSE_REASON_BYTES = 120
# The native transport's close codes mean "give up" to a Pusher client (4001-4099);
# these become Pusher's "reconnect now".
_RECONNECT_CODES = {CLOSE_TOO_SLOW, CLOSE_RESTARTING}


def ip_identity(ip: str) -> int:
    """A negative stream-slot id for an IP address: never a real user's id."""
    return -(int.from_bytes(hashlib.sha256(ip.encode()).digest()[:7], "big") + 1)


def public_principal(ip: str, per_ip: int) -> Principal:
    """The principal of an app-key connection: its IP address, `per_ip` streams."""
    tier = TierLimits(
        name="pusher-public", rest_rate=0, rest_period_s=1, rest_burst=0, rest_refill_per_s=0.0,
        daily_quota=None, max_streams=per_ip, max_subscriptions=PUBLIC_MAX_SUBSCRIPTIONS,
        client_messages_per_s=PUBLIC_MESSAGES_PER_S, raw_proxy=False, private_channels=False,
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
    ready: bool = False  # subscription_succeeded sent: app-bus messages may follow
    held: list[bytes] = field(default_factory=list)


class PusherConnection(Connection):
    kind = "pusher"

    def __init__(self, handler: PusherHandler, principal: Principal, socket_id: str) -> None:
        super().__init__(principal)
        self.handler = handler
        self.socket_id = socket_id
        self.channels: dict[str, PusherSub] = {}
        self.aliases: dict[str, set[str]] = {}  # hub channel -> Pusher names
        self.pending: dict[str, list[tuple[str, bytes]]] = {}  # hub channel -> successes
        self.user_slots: set[int] = set()
        self.client_bucket = TokenBucket(CLIENT_EVENTS_PER_S, CLIENT_EVENTS_PER_S)
        self.listeners: dict[str, Any] = {}

    def _stream(self) -> Any:
        protocol = self.handler.ws_connection
        if protocol is None or protocol.stream is None:
            raise tornado.websocket.WebSocketClosedError()
        return protocol.stream

    def _transport_write(self, data: bytes) -> Any:
        return self._stream().write(data)

    def _transport_pending(self) -> bool:
        return bool(self._stream().writing())

    def _transport_close(self, code: int, reason: str) -> None:
        if code in _RECONNECT_CODES:
            code = RECONNECT
        self.handler.close(code, reason.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore"))

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        data = shared.get("pusher-data")
        if data is None:
            data = shared["pusher-data"] = event_data_string(event.data_json)
        parts = []
        for name in sorted(self.aliases.get(sub_name, ())):
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

    @property
    def max_message_size(self) -> int:
        return MAX_CLIENT_FRAME_BYTES

    @property
    def ping_interval(self) -> float:
        return float(self.settings.get("pusher_ping_interval", ACTIVITY_TIMEOUT_S))

    @property
    def ping_timeout(self) -> float:
        return float(self.settings.get("pusher_ping_timeout", PONG_TIMEOUT_S))

    def get_compression_options(self) -> None:
        return None  # frames are shared between connections, so sent uncompressed

    def check_origin(self, origin: str) -> bool:
        return True  # like Reverb's default allowed_origins ["*"]: the app key is public

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
        conn = PusherConnection(self, public_principal(ip, self.config.pusher_public_per_ip),
                                new_socket_id())
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
        conn.send(frame("pusher:connection_established",
                        {"socket_id": conn.socket_id, "activity_timeout": ACTIVITY_TIMEOUT_S}))

    async def on_message(self, message: str | bytes) -> None:
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
        if is_private(name) and not self._signed(conn, req):
            conn.send(subscription_error(name, "Invalid signature", 401))
            return
        game = game_channel_of(name)
        client_events = is_private(name) and not is_encrypted(name)
        channel = None
        user_id: int | None = None
        if game is not None:
            authorized = await self._authorize_game(conn, name, game)
            if authorized is None:
                return
            channel, user_id, events_allowed = authorized
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
        sub = PusherSub(name, game, user_id, member, client_events)
        if not await self._attach(conn, sub):
            return
        if channel is None or game is None:
            conn.send(await self._success(sub))
            conn.mark_ready(sub)
            return
        success = await self._success(sub)
        cursor = None
        if user_id is not None:
            position = await self.state.position(user_id, name)
            if position is not None:
                cursor = Cursor({channel.sport: position})
        conn.pending.setdefault(game, []).append((name, success))
        conn.aliases.setdefault(game, set()).add(name)
        try:
            await self.hub.subscribe(conn, [channel], cursor)
        except BtsguruError as exc:
            conn.pending.pop(game, None)
            await self._unsubscribe(conn, name)
            conn.send(subscription_error(name, exc.message, exc.status, "LimitReached"))

    def _signed(self, conn: PusherConnection, req: SubscribeRequest) -> bool:
        channel_data = req.channel_data if is_presence(req.channel) else None
        expected = channel_auth(self.config.reverb_app_key,
                                self.config.reverb_app_secret.reveal(), conn.socket_id,
                                req.channel, channel_data)
        return verify_auth(req.auth, expected)

    async def _authorize_game(self, conn: PusherConnection, name: str, game: str,
                              ) -> tuple[Channel, int | None, bool] | None:
        """The game channel, the user it was authorized for and whether client events are
        allowed; None when refused (the client was told)."""
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
            return channel, None, False
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
        return channel, user_id, bool(grant.get("client_events"))

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
        self.hub.unregister(conn)
        self.state.spawn(self._cleanup(conn), f"cleanup of pusher socket {conn.socket_id}")

    async def _cleanup(self, conn: PusherConnection) -> None:
        for sub in list(conn.channels.values()):
            await self._detach(conn, sub)
        conn.channels.clear()
        for user_id in conn.user_slots:
            await self.hub.slots.release(user_id)
        conn.user_slots.clear()
