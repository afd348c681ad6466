"""Server-Sent Events, `GET /v1/stream?channels=C1,C2&api_key=KEY` (the contract's
section 4, `protocols/SSE.md`): a thin adapter between a chunked HTTP response and the hub.

The response: `text/event-stream`, `Cache-Control: no-cache, no-transform`,
`X-Accel-Buffering: no` (nginx must not buffer it), a `retry:` line first (jittered per
connection so that a restart's reconnects spread out), then events as
`id: CURSOR` / `event: NAME` / `data: JSON`, and a `: hb` comment whenever the stream has
been quiet for `SSE_HEARTBEAT_S`; a `: subscribed` comment marks the end of the
catch-up (replay or snapshots): live events follow it. Each event's id is the
connection's composite cursor (`realtime.cursor`), so `Last-Event-ID` (or
`last_event_id=` for the first request) resumes every channel at once. A cursor this
server cannot read is treated as one older than the window: the client gets
`game.snapshot` again rather than an error its `EventSource` could never recover from.

Errors before the stream starts are the `/v1` JSON errors (401, 403, 400, 429 for too
many connections); after it started, an `event: error` and the end of the response.
The stream ends on shutdown (the browser reconnects, to another process, and resumes)
and, for a client too slow to keep up, by closing the connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import orjson
from tornado.http1connection import HTTP1Connection

from btsguru.auth.access import AccessService, Principal
from btsguru.errors import BadRequest, BtsguruError
from btsguru.handlers.api import ApiHandler
from btsguru.realtime.channels import parse_channel
from btsguru.realtime.connection import CLOSE_TOO_SLOW, Connection, EventFacts
from btsguru.realtime.cursor import Cursor, InvalidCursor, encode_cursor, parse_cursor
from btsguru.realtime.frames import sse_event, sse_id_line
from btsguru.realtime.hub import Hub
from btsguru.realtime.sockets import chunk, send_now, stream_for_streaming
from btsguru.store.bus import BusEvent

log = logging.getLogger(__name__)

SSE_HEARTBEAT_S = 12.0  # the contract: at least every 15 s; checked every hub tick (1 s)
RETRY_MS = 3000  # browsers' own default, made explicit...
RETRY_JITTER_MS = 4000  # ...plus up to this much, per connection
MAX_CHANNELS = 1000
HEARTBEAT = b": hb\n\n"
READY = b": subscribed\n\n"


class SseConnection(Connection):
    kind = "sse"
    heartbeat_s = SSE_HEARTBEAT_S

    def __init__(self, handler: StreamHandler, principal: Principal, sports: set[str]) -> None:
        super().__init__(principal)
        self.handler = handler
        # one sport: the cursor is {sport: event id}, the same for every connection, so
        # the whole frame is shared; several: the id line is this connection's own
        self.multi_sport = len(sports) > 1
        # resolved when the stream ends (a future: an Event would cost a deque of its own
        # per connection)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _connection(self) -> HTTP1Connection:
        connection = self.handler.request.connection
        if not isinstance(connection, HTTP1Connection):
            raise RuntimeError("SSE needs an HTTP/1.1 connection")
        return connection

    def _transport_write(self, data: bytes) -> Any:
        if not data:
            return None  # an empty chunk would end the response
        connection = self._connection()
        # the response's headers are out (the `retry:` line was flushed before the hub
        # writes anything), so the body's framing is ours to apply: chunked on HTTP/1.1
        if connection._chunking_output:
            data = chunk(data)
        return send_now(connection.stream, data)

    def _transport_pending(self) -> bool:
        return bool(self._connection().stream.writing())

    def _transport_close(self, code: int, reason: str) -> None:
        if code == CLOSE_TOO_SLOW:
            # ending the response politely would queue more behind what it cannot read
            self._connection().stream.close()
        self._end()

    def gone(self) -> None:
        super().gone()
        self._end()

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        key = ("sse", self.multi_sport, sub_name)
        frame = shared.get(key)
        if frame is None:
            id_line = b"" if self.multi_sport else \
                sse_id_line(encode_cursor({facts.sport: event.id}))
            frame = shared[key] = sse_event(event.event, sub_name, event.data_json, id_line)
        return frame

    def prepare(self, frame: bytes, sport: str | None, id: str | None) -> bytes:
        if self.multi_sport and id is not None and sport is not None:
            positions = dict(self.positions)
            positions[sport] = id
            return sse_id_line(encode_cursor(positions)) + frame
        return frame

    def heartbeat(self) -> None:
        self.send_frame(HEARTBEAT)


class StreamHandler(ApiHandler):
    route_kind = "stream"
    required_scope = "stream"
    accepts_query_key = True

    def initialize(self, access: AccessService, hub: Hub) -> None:  # type: ignore[override]
        super().initialize(access)
        self.hub = hub
        self.conn: SseConnection | None = None

    async def get(self) -> None:
        principal = self.principal
        assert principal is not None  # prepare() authenticated
        names = [n.strip() for n in self.get_query_argument("channels", "").split(",")
                 if n.strip()]
        if not names:
            raise BadRequest("channels: a comma-separated list of channel names is required")
        if len(names) > MAX_CHANNELS:
            raise BadRequest(f"channels: at most {MAX_CHANNELS}")
        channels = [parse_channel(name, self.hub.sports) for name in names]
        cursor = self._cursor()
        conn = SseConnection(self, principal, {c.sport for c in channels})
        conn.check_subscription_room(len({c.name for c in channels}))
        await self.hub.register(conn)
        self.conn = conn
        try:
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache, no-transform")
            self.set_header("X-Accel-Buffering", "no")
            jitter_ms = random.randrange(RETRY_JITTER_MS)  # noqa: S311 -- spreading, not secrecy
            self.write(b"retry: %d\n\n" % (RETRY_MS + jitter_ms))
            await self.flush()
            # the headers are out and read: Tornado holds both sets for the response's life
            self.request.headers.clear()
            self._headers.clear()
            stream_for_streaming(conn._connection().stream)
            try:
                await self.hub.subscribe(conn, channels, cursor)
            except BtsguruError as exc:
                conn.send_frame(b"event: error\ndata: " + orjson.dumps(exc.to_json()["error"])
                                + b"\n\n")
                return
            # a comment (EventSource ignores it): the catch-up is done and live events
            # follow; tools and tests can wait for it before publishing
            conn.send_frame(READY)
            await conn.done
        finally:
            self.hub.unregister(conn)

    def _cursor(self) -> Cursor | None:
        raw = self.request.headers.get("Last-Event-ID") or \
            self.get_query_argument("last_event_id", None)
        if raw is None or not raw.strip():
            return None
        try:
            return parse_cursor(raw, self.hub.sports)
        except InvalidCursor:
            # unknown to us: as good as expired (SSE.md: say so with a snapshot)
            return Cursor({}, everywhere="0-0")

    def on_connection_close(self) -> None:
        if self.conn is not None:
            self.conn.gone()

