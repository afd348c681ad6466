"""Load clients for the fan-out scenarios: many WebSocket or SSE connections per process,
each an asyncio `Protocol` over a raw socket, so that the clients cost as little CPU as
they can and the figures measure the server (the clients share the machine with it).

A client connects, subscribes to one channel and counts the events it receives by their
`n` (the publisher numbers them); each client process reports, per event, how many of
its clients got it and when the last one did, and per client the events it got out of
order or twice (the seq check). The same clients are used against btsguru and against
the reference servers.

Kind `ws-seq` (the end-to-end scenario): WebSocket clients on real game events, counted
by their `(game_id, seq)` instead of a publisher's `n`; a `seq` not above the client's
previous one for that game counts as out of order. `channel` may name several channels,
comma-separated.

WebSocket: RFC 6455 by hand; client frames are masked with a zero key (valid, and the
XOR is then the identity), pings are answered, permessage-deflate is offered on request
(the server's messages are inflated one by one: btsguru compresses each message on its
own, with no context taken over). SSE: a plain GET whose body (chunked or not) is
scanned for the `n` of each `data:` line.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

CONNECT_CONCURRENCY = 100  # per client process: handshakes in flight at once
N_RE = re.compile(rb'"n":(\d+)[,}]')
GAME_ID_RE = re.compile(rb'"game_id":(\d+)[,}]')
SEQ_RE = re.compile(rb'"seq":(\d+)[,}]')
SUBSCRIBED_WS = b'"op":"subscribed"'
SUBSCRIBED_SSE = b": subscribed"
DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass
class Tally:
    """What one client process saw."""

    # n (or (game_id, seq)) -> [count, last at]
    events: dict[Any, list[float]] = field(default_factory=dict)
    out_of_order: int = 0  # an event whose n was not above the client's previous one
    ready: int = 0
    failed: int = 0
    bytes_received: int = 0

    def got(self, n: Any, now: float) -> None:
        entry = self.events.get(n)
        if entry is None:
            self.events[n] = [1, now]
        else:
            entry[0] += 1
            if now > entry[1]:
                entry[1] = now


class _Client(asyncio.Protocol):
    def __init__(self, tally: Tally, request: bytes, on_ready: Any) -> None:
        self.tally = tally
        self.request = request
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.last_n = -1
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def event(self, n: int) -> None:
        if n <= self.last_n:
            self.tally.out_of_order += 1
        self.last_n = n
        self.tally.got(n, time.time())

    def data_received(self, data: bytes) -> None:
        self.tally.bytes_received += len(data)
        if not self.upgraded:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer.split(b" ", 2)[1]
            if status not in (b"101", b"200"):
                self.tally.failed += 1
                self.on_ready()
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            data, self.buffer = self.buffer[end + 4:], b""
            self.start()
            if not data:
                return
        self.body(data)

    def start(self) -> None: ...

    def body(self, data: bytes) -> None: ...


class WsClient(_Client):
    def __init__(self, tally: Tally, request: bytes, on_ready: Any, subscribe: bytes,
                 deflate: bool) -> None:
        super().__init__(tally, request, on_ready)
        self.subscribe = subscribe
        self.deflate = deflate
        self.subscribed = False

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(masked(0x1, self.subscribe))

    def body(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        at, size = 0, len(buf)
        while size - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - at < 4:
                    break
                length, head = struct.unpack_from("!H", buf, at + 2)[0], 4
            elif length == 127:
                if size - at < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, at + 2)[0], 10
            if size - at < head + length:
                break
            payload = buf[at + head:at + head + length]
            at += head + length
            opcode = b0 & 0x0F
            if opcode == 0x9:
                assert self.transport is not None
                self.transport.write(masked(0xA, payload))
            elif opcode == 0x1:
                if b0 & 0x40:
                    payload = zlib.decompressobj(-15).decompress(payload + DEFLATE_TAIL)
                self.message(payload)
        self.buffer = buf[at:]

    def message(self, payload: bytes) -> None:
        if not self.subscribed and SUBSCRIBED_WS in payload:
            self.subscribed = True
            self.on_ready()
            return
        match = N_RE.search(payload)
        if match is not None:
            self.event(int(match.group(1)))


class WsSeqClient(WsClient):
    """Counts game events by `(game_id, seq)`, checking each game's order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seq: dict[int, int] = {}

    def message(self, payload: bytes) -> None:
        if not self.subscribed and SUBSCRIBED_WS in payload:
            self.subscribed = True
            self.on_ready()
            return
        game = GAME_ID_RE.search(payload)
        seq = SEQ_RE.search(payload)
        if game is None or seq is None:
            return
        game_id, n = int(game.group(1)), int(seq.group(1))
        if n <= self.last_seq.get(game_id, -1):
            self.tally.out_of_order += 1
        self.last_seq[game_id] = n
        self.tally.got((game_id, n), time.time())


class SseClient(_Client):
    def start(self) -> None:
        self.subscribed = False

    def body(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        if not self.subscribed and SUBSCRIBED_SSE in buf:
            self.subscribed = True
            self.on_ready()
        end = 0
        for match in N_RE.finditer(buf):
            self.event(int(match.group(1)))
            end = match.end()
        self.buffer = buf[max(end, len(buf) - 64):]


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame masked with the zero key (so the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    return header + b"\x00\x00\x00\x00" + payload


def ws_request(url: str, deflate: bool) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sse_request(url: str) -> bytes:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
            "\r\n").encode()


def client_main(kind: str, url: str, channel: str, count: int, deflate: bool, ready: Any,
                done: Any, results: Any) -> None:
    """One client process: `count` clients; puts how many are ready on `ready` as they
    subscribe, and its `Tally` on `results` once `done` is set."""
    asyncio.run(_run(kind, url, channel, count, deflate, ready, done, results))


async def _run(kind: str, url: str, channel: str, count: int, deflate: bool, ready: Any,
               done: Any, results: Any) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    names = b'","'.join(name.encode() for name in channel.split(","))
    subscribe = b'{"op":"subscribe","channels":["' + names + b'"]}'
    pending_ready = [0]

    def flush_ready() -> None:
        if pending_ready[0]:
            ready.put(pending_ready[0])
            pending_ready[0] = 0

    async def one() -> _Client | None:
        released = asyncio.Event()

        def on_ready() -> None:
            tally.ready += 1
            pending_ready[0] += 1
            released.set()

        async with gate:
            if kind in ("ws", "ws-seq"):
                cls = WsSeqClient if kind == "ws-seq" else WsClient
                factory: Any = lambda: cls(tally, ws_request(url, deflate), on_ready,  # noqa: E731
                                           subscribe, deflate)
            else:
                factory = lambda: SseClient(tally, sse_request(url), on_ready)  # noqa: E731
            try:
                _transport, client = await loop.create_connection(factory, host, port)
                await asyncio.wait_for(released.wait(), 60)
            except (OSError, TimeoutError):
                tally.failed += 1
                pending_ready[0] += 1
                return None
            return client  # type: ignore[no-any-return]

    async def report_ready() -> None:
        while True:
            flush_ready()
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(report_ready())
    clients = await asyncio.gather(*(one() for _ in range(count)))
    reporter.cancel()
    flush_ready()
    await loop.run_in_executor(None, done.wait)
    for client in clients:
        if client is not None and client.transport is not None:
            client.transport.close()
    results.put(tally)


def stop_all(workers: list[Any], done: Any) -> None:
    """Tell the client processes to report and end (`done`), and make sure they do."""
    done.set()
    for worker in workers:
        worker.join(timeout=30)
        if worker.is_alive():
            worker.terminate()


def merge(tallies: list[Tally]) -> dict[Any, list[float]]:
    """Per event, over every client process: how many clients got it, and when the last
    one did."""
    merged: dict[Any, list[float]] = {}
    for tally in tallies:
        for key, (count, last) in tally.events.items():
            entry = merged.setdefault(key, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], last)
    return merged
