"""The native WebSocket, `GET /v1/ws?api_key=KEY` (the contract's section 4): a thin
adapter between a Tornado WebSocket and the hub.

Client -> server (JSON text frames): `{"op": "subscribe", "channels": [...], "since": ID}`,
`{"op": "unsubscribe", "channels": [...]}`, `{"op": "ping"}`.
Server -> client: `{"op": "subscribed", "channel", "recovered"}`, `{"op": "pong"}`,
`{"op": "error", "code", "message"}` and events `{"id", "channel", "event", "data"}`.

Admission is the one every transport passes (`AccessService.admit`, with the key taken
by `request_key`: a header first, then `?api_key=`), so a refused key is recorded as a
failed authentication and a rate-limit refusal counted, as on REST. Errors become close
codes in one place (`BtsguruError.ws_close_code`): 4001 bad key,
4003 invalid or forbidden channel, 4008 too many connections, 4009 too many
subscriptions, 4029 too many client messages, 4010 too slow, 1012 restarting; Tornado
itself closes with 1009 a client frame over `MAX_CLIENT_FRAME_BYTES`. Invalid JSON and
unknown ops get an `error` and the connection stays open.

Frames are written to the socket as the hub built them (`realtime.frames`), bypassing
`write_message`, so a frame is encoded, and compressed, once for every subscriber.
Tornado still negotiates permessage-deflate (and inflates what clients compress), but
the per-connection compressor it makes is never used, so it is dropped once the
handshake is done: a deflate state costs tens of kilobytes of memory per connection.
(Announcing `server_no_context_takeover`, which would let clients free theirs too, is
not possible: Tornado 6.6 drops extension parameters that have no value.)

Keepalive: the hub's tick pings a connection that has been quiet both ways for
`PING_INTERVAL_S` (a prebuilt frame written like any other, the first at a random
point of the interval so that a reconnect storm's connections do not ping in step),
which keeps proxies from timing it out, and drops a peer that has not answered within
`PING_TIMEOUT_S`, without a close handshake it would not answer either. While events
flow, a peer that stops acknowledging them is found by the kernel (the TCP user
timeout, `realtime.sockets.USER_TIMEOUT_S`) and one that acknowledges but does not read
by the stall check (`realtime.connection.STALL_TIMEOUT_S`); pinging every busy
connection too would cost a pong to read per connection per interval. Tornado's own
pinging is off: it keeps a task, a timer and a future per connection.
Memory per idle connection is the other budget here: once admitted, the request's
headers are cleared (Tornado's handshake coroutine holds them for the connection's
life).
"""

from __future__ import annotations

import contextlib
import logging
import random
import struct
import time
from typing import Any

import orjson
import tornado.web
import tornado.websocket
from tornado.iostream import StreamClosedError

from btsguru.auth.access import AccessService, Principal, request_key
from btsguru.errors import BadRequest, BtsguruError, RateLimited
from btsguru.handlers.base import render_error
from btsguru.realtime.channels import Channel, parse_channel
from btsguru.realtime.connection import Connection, EventFacts
from btsguru.realtime.cursor import Cursor, parse_cursor
from btsguru.realtime.frames import event_json, ws_frame
from btsguru.realtime.hub import Hub
from btsguru.realtime.sockets import send_now, stream_for_streaming
from btsguru.store.bus import BusEvent

log = logging.getLogger(__name__)

MAX_CLIENT_FRAME_BYTES = 64 * 1024  # the contract: larger client frames close with 1009
PING_INTERVAL_S = 20.0  # under common 60 s proxy idle timeouts
PING_FRAME = b"\x89\x00"  # FIN + ping, no payload
PING_TIMEOUT_S = 15.0  # no pong by then: the peer is gone, free its resources
MAX_CHANNELS_PER_MESSAGE = 1000
CLOSE_REASON_BYTES = 120  # a close frame's reason must fit in 123 bytes


class WebSocketConnection(Connection):
    """A connection whose pre-built frames go straight to a Tornado WebSocket's stream:
    the native and the Pusher transports share this and differ in `render`."""

    handler: tornado.websocket.WebSocketHandler

    def _stream(self) -> Any:
        protocol = self.handler.ws_connection
        if protocol is None or protocol.stream is None:
            raise tornado.websocket.WebSocketClosedError()
        return protocol.stream

    def _transport_write(self, data: bytes) -> Any:
        return send_now(self._stream(), data)

    def _transport_pending(self) -> bool:
        return bool(self._stream().writing())

    def _transport_close(self, code: int, reason: str) -> None:
        self.handler.close(code, reason.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore"))


class FailingProtocol(tornado.websocket.WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, except that a connection it fails for a protocol
    violation (reserved bits, an unknown opcode, a fragmented or oversized control frame,
    a stray continuation) is told why before the socket closes: a close frame with 1002,
    or 1007 for a text message that is not UTF-8, as RFC 6455 section 7.1.7 asks. Tornado
    closes the socket alone, so the peer sees 1006 and cannot tell a bad frame of its own
    from a network failure. A close after the handshake only: before it there is no
    WebSocket to close (`stream` is set once the handshake is done)."""

    _fail_code = 1002

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        # the only failure left inside a text message is invalid UTF-8 (an oversized
        # inflated message is closed with 1009 before it fails)
        self._fail_code = 1007 if opcode == 0x1 else 1002
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._fail_code = 1002

    def _abort(self) -> None:
        stream = self.stream
        if not self.server_terminated and stream is not None and not stream.closed():
            with contextlib.suppress(StreamClosedError):
                self._write_frame(True, 0x8, struct.pack("!H", self._fail_code))
        super()._abort()


def failing_protocol(handler: tornado.websocket.WebSocketHandler,
                     ) -> tornado.websocket.WebSocketProtocol | None:
    """`WebSocketHandler.get_websocket_protocol` with `FailingProtocol`."""
    if handler.request.headers.get("Sec-WebSocket-Version") != "13":
        return None
    params = tornado.websocket._WebSocketParams(
        ping_interval=handler.ping_interval, ping_timeout=handler.ping_timeout,
        max_message_size=handler.max_message_size,
        compression_options=handler.get_compression_options())
    return FailingProtocol(handler, False, params)


def handshake_problem(headers: Any) -> str | None:
    """Why a request to a WebSocket endpoint is not a handshake Tornado can accept (the
    checks Tornado makes, which it answers with a text page), or None."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return 'a WebSocket endpoint: send "Upgrade: websocket"'
    if "upgrade" not in [part.strip().lower() for part in headers.get("Connection", "")
                         .split(",")]:
        return 'a WebSocket endpoint: send "Connection: Upgrade"'
    if headers.get("Sec-WebSocket-Version") != "13":
        return "unsupported WebSocket version: send Sec-WebSocket-Version: 13"
    if not headers.get("Sec-WebSocket-Key") or not headers.get("Host"):
        return "a WebSocket handshake needs Host and Sec-WebSocket-Key"
    return None


def shed_handshake(handler: tornado.websocket.WebSocketHandler,
                   conn: WebSocketConnection) -> None:
    """Set an admitted connection up for streaming (`realtime.sockets.
    stream_for_streaming`) and free the request's and response's headers (read by now;
    Tornado's handshake coroutine holds them for the connection's life)."""
    handler.request.headers.clear()
    handler._headers.clear()
    with contextlib.suppress(tornado.websocket.WebSocketClosedError):
        stream_for_streaming(conn._stream())


class WsConnection(WebSocketConnection):
    kind = "ws"

    def __init__(self, handler: WebSocketHandler, principal: Principal,
                 deflate_wbits: int, ping_interval_s: float = PING_INTERVAL_S,
                 ping_timeout_s: float = PING_TIMEOUT_S) -> None:
        super().__init__(principal)
        self.handler = handler
        self.deflate_wbits = deflate_wbits
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        # as if last heard from at a random point of the past interval: pings spread out
        self.heard_at = time.monotonic() - random.uniform(0, ping_interval_s)  # noqa: S311
        self.ping_sent_at: float | None = None

    def heard(self) -> None:
        """The peer answered a ping or sent a message: it is there."""
        self.heard_at = time.monotonic()
        self.ping_sent_at = None

    def tick(self, now: float) -> None:
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at >= self.ping_timeout_s:
                log.debug("ws: connection %d did not answer a ping", self.id)
                with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                    self._stream().close()  # no handshake: it would not answer that either
                self.gone()
        elif now - max(self.heard_at, self.last_write_at) >= self.ping_interval_s:
            self.ping_sent_at = now
            self.send_frame(PING_FRAME)

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        key = ("ws", self.deflate_wbits, sub_name)
        frame = shared.get(key)
        if frame is None:
            payload = shared.get(("json", sub_name))
            if payload is None:
                payload = event_json(event.id, sub_name, event.event, event.data_json)
                shared[("json", sub_name)] = payload
            frame = shared[key] = ws_frame(payload, self.deflate_wbits)
        return frame

    def control(self, message: dict[str, Any]) -> None:
        self.send_frame(ws_frame(orjson.dumps(message)))

    def error(self, exc: BtsguruError) -> None:
        self.control({"op": "error", "code": exc.code, "message": exc.message})


def deflate_wbits(header: str) -> int:
    """The window bits our frames may use under the first permessage-deflate offer of a
    `Sec-WebSocket-Extensions` header (the one Tornado accepts); 0: no compression."""
    for offer in header.split(","):
        parts = [p.strip() for p in offer.split(";")]
        if parts[0] != "permessage-deflate":
            continue
        wbits = 15
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "server_max_window_bits":
                value = value.strip().strip('"')
                wbits = int(value) if value.isdigit() else 15
        # raw deflate needs 9 bits at least; a client that allows less gets plain frames
        return wbits if 9 <= wbits <= 15 else 0
    return 0


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, hub: Hub, access: AccessService) -> None:
        self.hub = hub
        self.access = access
        self.conn: WsConnection | None = None
        self.deflate_wbits = 0

    # -- Tornado's knobs --

    @property
    def max_message_size(self) -> int:
        return MAX_CLIENT_FRAME_BYTES

    @property
    def ping_interval(self) -> float:
        return 0.0  # Tornado's pinging is off: the hub pings (see the module docstring)

    def get_compression_options(self) -> dict[str, Any]:
        return {}  # offered; our frames are compressed by `realtime.frames`

    def check_origin(self, origin: str) -> bool:
        return True  # authenticated by API key, not by cookie: any page may connect

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        return failing_protocol(self)

    # -- a request that is no handshake: a JSON error, as everywhere under /v1 --

    def check_xsrf_cookie(self) -> None:
        """Authenticated by API key, no cookie: another method gets 405, not an XSRF page."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        problem = handshake_problem(self.request.headers)
        if problem is not None:
            self.set_header("Sec-WebSocket-Version", "13")  # RFC 6455 4.2.2
            raise tornado.web.HTTPError(400, problem)
        await super().get(*args, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        answer = render_error(status_code, kwargs.get("exc_info", (None, None, None))[1],
                              reason=self._reason)
        for name, value in answer.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(answer.body)

    # -- the connection --

    async def open(self, *args: str, **kwargs: str) -> None:
        if self.ws_connection is not None and hasattr(self.ws_connection, "_compressor"):
            self.ws_connection._compressor = None  # never used: see the module docstring
        self.deflate_wbits = deflate_wbits(self.request.headers.get("Sec-WebSocket-Extensions",
                                                                    ""))
        try:
            admission = await self.access.admit(
                request_key(self.request.headers, self.get_query_argument("api_key", None)),
                scope="stream", client=self.request.remote_ip)
            conn = WsConnection(
                self, admission.principal, self.deflate_wbits,
                float(self.settings.get("websocket_ping_interval", PING_INTERVAL_S)),
                float(self.settings.get("websocket_ping_timeout", PING_TIMEOUT_S)))
            await self.hub.register(conn)
        except BtsguruError as exc:
            log.debug("ws: refused: %s %s", exc.code, exc.message)
            self.close(exc.ws_close_code, exc.message.encode()[:CLOSE_REASON_BYTES].decode(
                errors="ignore"))
            return
        self.conn = conn
        shed_handshake(self, conn)
        self.access.record(admission.principal, "stream")
        if self.ws_connection is None:  # gone while we were admitting it
            self.hub.unregister(conn)

    def on_pong(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.heard()

    async def on_message(self, message: str | bytes) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        conn.heard()
        if not conn.allow_message():
            conn.error(RateLimited("too many messages: at most "
                                   f"{conn.principal.tier.client_messages_per_s} per second"))
            conn.close(RateLimited.ws_close_code, "rate limited")
            return
        try:
            await self._handle(conn, message)
        except BtsguruError as exc:
            conn.error(exc)
            if not isinstance(exc, BadRequest) or exc.ws_close_code != BadRequest.ws_close_code:
                # invalid/forbidden channel, too many subscriptions: the contract's codes
                conn.close(exc.ws_close_code, exc.message)

    async def _handle(self, conn: WsConnection, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            raise _Invalid("invalid JSON", code="invalid_json") from None
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise BadRequest('expected an object with an "op": subscribe, unsubscribe or ping')
        op = request["op"]
        if op == "ping":
            conn.control({"op": "pong"})
        elif op == "subscribe":
            channels = self._channels(request)
            since = request.get("since")
            cursor: Cursor | None = None
            if since is not None:
                if not isinstance(since, str):
                    raise _Invalid('"since" must be an event id (a string)')
                cursor = parse_cursor(since, self.hub.sports)
            await self.hub.subscribe(conn, channels, cursor)
        elif op == "unsubscribe":
            await self.hub.unsubscribe(conn, [c.name for c in self._channels(request)])
        else:
            raise _Invalid(f"unknown op {op[:40]!r}: expected subscribe, unsubscribe or ping",
                           code="unknown_op")

    def _channels(self, request: dict[str, Any]) -> list[Channel]:
        names = request.get("channels")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _Invalid('"channels" must be a non-empty list of channel names')
        if len(names) > MAX_CHANNELS_PER_MESSAGE:
            raise _Invalid(f"at most {MAX_CHANNELS_PER_MESSAGE} channels per message")
        return [parse_channel(name, self.hub.sports) for name in names]

    def on_close(self) -> None:
        if self.conn is not None:
            self.hub.unregister(self.conn)


class _Invalid(BadRequest):
    """A malformed message: answered with an error, the connection stays open."""

    def __init__(self, message: str, *, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.code = code
