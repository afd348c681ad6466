"""The Pusher endpoint, `GET [/PREFIX]/app/{REVERB_APP_KEY}?protocol=7` (the contract's
section 4, `protocols/PUSHER.md`): a third transport on the hub, so that unmodified
pusher-js and Laravel Echo clients can use btsguru as their Reverb server.

Where it sits: hub -> `realtime.pusher_channels` (the channel and presence rules) and
`realtime.pusher_socket` (a socket's channels, rendering) -> **this handler** -> the
WebSocket. The handler is the adapter: it admits the connection, parses client frames,
calls the channel rules, writes the replies, and renders every refusal of the rules in
one place (`on_message`).

- Admission: the key in the path must be the app key (else 4001); every connection
  counts against `PUSHER_PUBLIC_PER_IP` (a per-IP stream slot, cluster-wide; over it:
  `pusher:error` 4100 and close 4100, so clients retry after a second), and
  `PUSHER_MESSAGES_PER_S` messages per second (more: `pusher:error` 4301, in band, the
  socket stays open, as the protocol asks). Channel limits: `realtime.pusher_channels`.
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
import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

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
from btsguru.realtime.hub import Hub
from btsguru.realtime.pusher_channels import (
    ConnectionRefused,
    PusherChannels,
    SubscriptionRefused,
)
from btsguru.realtime.pusher_protocol import (
    ACTIVITY_TIMEOUT_S,
    APP_NOT_FOUND,
    CLIENT_EVENT_RATE,
    CLIENT_EVENTS_PER_S,
    OVER_CAPACITY,
    PONG_NOT_RECEIVED,
    PONG_TIMEOUT_S,
    PusherProtocolError,
    check_version,
    error_frame,
    frame,
    new_socket_id,
    parse_message,
    parse_subscribe,
    subscription_error,
)
from btsguru.realtime.pusher_socket import PusherSocket
from btsguru.realtime.pusher_users import PusherUsers
from btsguru.store.pusher import PusherState

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME_BYTES = 64 * 1024


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


class PusherConnection(PusherSocket, WebSocketConnection):
    """A `PusherSocket` whose frames go to this handler's WebSocket."""

    handler: PusherHandler

    def __init__(self, handler: PusherHandler, principal: Principal, socket_id: str,
                 client_events_per_s: int = CLIENT_EVENTS_PER_S) -> None:
        super().__init__(principal, socket_id, client_events_per_s)
        self.handler = handler


class PusherHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, hub: Hub, state: PusherState, config: Config,
                   auth_failed: Callable[[str | None], None]) -> None:
        self.hub = hub
        self.state = state
        self.config = config
        # `AccessService.failed_authentication`: a wrong app key or a forged channel
        # signature counts towards the failed-auth alert as a wrong API key does
        self.auth_failed = auth_failed
        # the rules hold no state of their own (a socket's is in its connection): built
        # per handler from the services the route passes, like the handler itself
        self.channels = PusherChannels(hub, state, config)
        self.users = PusherUsers(state, config)
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
            self.auth_failed(self.request.remote_ip)
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
            await self._dispatch(conn, message)
        # every refusal of the channel rules becomes its frame here, and only here
        except PusherProtocolError as exc:  # in band: the socket stays open
            conn.send(error_frame(exc.code, exc.message))
        except SubscriptionRefused as exc:
            if exc.status == 401:  # no or a forged signature: a failed authentication
                self.auth_failed(self.request.remote_ip)
            conn.send(subscription_error(exc.channel, exc.message, exc.status, exc.type))
        except ConnectionRefused as exc:
            conn.send(error_frame(exc.code, exc.message))
            conn.close(exc.code, exc.reason)

    async def _dispatch(self, conn: PusherConnection, message: str | bytes) -> None:
        request = parse_message(message)
        event = request.event
        if event == "pusher:ping":
            conn.send(frame("pusher:pong", {}, data_is_json_string=False))
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            await self.channels.subscribe(conn, parse_subscribe(request.data))
        elif event == "pusher:unsubscribe":
            data = request.data
            if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
                raise PusherProtocolError('pusher:unsubscribe needs data {"channel"}')
            await self.channels.unsubscribe(conn, data["channel"])
        elif event.startswith("client-"):
            await self.channels.client_event(conn, event, request.channel, request.data)
        elif event == "pusher:signin":
            await self.users.signin(conn, request.data)
        else:
            raise PusherProtocolError(f"Unsupported event {event[:60]!r}")

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
        self.channels.closed(conn)
        if conn.signed_in is not None:
            self.state.spawn(self.users.closed(conn), f"sign-out of {conn.socket_id}")
