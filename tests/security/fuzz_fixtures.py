"""What the fuzz tests share: one relay per test module, served from a background thread's
event loop, blocking clients (HTTP, raw RFC 6455 frames, a bystander that keeps reading
in a thread of its own), and the strategies both WebSocket fuzzers draw from (random
JSON, frames with every header bit random).

Why a thread: hypothesis runs plain functions, not coroutines, and a fresh event loop per
example would restart the relay. With the relay on its own loop the examples use blocking
sockets, and the test talks to the relay's services (publishing game events) through
`FuzzServer.run`. The relay is the real thing: `make_app` over real Redis and SQLite,
with the simulator as the upstream.

How much to fuzz: `FUZZ_EXAMPLES` (an integer) replaces every test's CI example count,
and turns the fixed CI seed off, so that a longer run explores new inputs:
`FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/security -k fuzz`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.app import Services, make_app, open_services
from btsguru.config import Config
from btsguru.sports.base import Game, Phase
from tests.conftest import purge_redis_prefix
from tests.realtime_helpers import RawWsClient, make_users, migrate_file
from tests.store_fixtures import make_game
from tests.test_raw_proxy import relay_config
from tests.upstream_fixtures import simulator

TIMEOUT_S = 10.0
MAX_FRAME = 64 * 1024  # the contract: larger client frames close with 1009
ANSWER_TIMEOUT_S = 5.0  # an answer slower than this to one small message counts as a hang
GAME_ID, LEAGUE_ID = 7001, 39  # the game the bystanders follow


def long_run_examples() -> int | None:
    """`FUZZ_EXAMPLES`, when a longer run asks for it."""
    wanted = os.environ.get("FUZZ_EXAMPLES", "").strip()
    return int(wanted) if wanted else None


def fuzz_settings(ci_examples: int) -> settings:
    """Bounded for CI (`ci_examples`, a fixed seed, no example database in the tree);
    `FUZZ_EXAMPLES` asks for a longer, randomised run."""
    wanted = long_run_examples()
    return settings(max_examples=wanted or ci_examples, derandomize=wanted is None,
                    database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def fuzz_timeout() -> pytest.MarkDecorator:
    """pytest-timeout's bound for a fuzz test: the suite's (setup.cfg) in CI, an hour
    for a long run."""
    return pytest.mark.timeout(120 if long_run_examples() is None else 3600)


# -- the relay on a thread of its own --

class _ErrorLog(logging.Handler):
    """Every record at error level or above: an uncaught exception in a handler or a task
    logs one, so the tests can tell that nothing failed inside the server."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class FuzzServer:
    loop: asyncio.AbstractEventLoop
    services: Services
    port: int
    keys: dict[str, str]  # tier -> an API key of a user on that tier
    config: Config
    stop: asyncio.Event
    error_log: _ErrorLog = field(default_factory=_ErrorLog)
    published: int = 0  # events broadcast for the bystanders' game so far
    _game: Game | None = None

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = TIMEOUT_S) -> Any:
        """Run `coro` on the relay's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def server_errors(self) -> list[str]:
        """What the server logged at error level since the last call (and forget it)."""
        records, self.error_log.records = self.error_log.records, []
        return [f"{r.name}: {r.getMessage()}" for r in records]

    def publish_goal(self) -> int:
        """Score a goal in the bystanders' game through the store, as a poller would;
        the number of events the bus broadcast for it."""
        game = self._game or make_game(GAME_ID, league=LEAGUE_ID, phase=Phase.LIVE,
                                       code="1H", home=0, away=0, clock="1", period=1)
        home = (game.home.score or 0) + 1
        game = replace(game, home=replace(game.home, score=home),
                       status=replace(game.status, clock=str(home)))
        self._game = game
        count = int(self.run(self.services.games.ingest("football", [game])).events)
        self.published += count
        return count

    def healthy(self) -> bool:
        status, _headers, _body = http_request(self.port, "GET", "/healthz", timeout_s=2.0)
        return status == 200


async def _serve(tmp_path: Path, ready: queue.Queue[Any], env: dict[str, str]) -> None:
    async with simulator() as sim:
        config = relay_config(tmp_path, sim, **env)
        migrate_file(config)
        try:
            async with open_services(config) as services:
                services.hub.start()
                # the fuzzers send hundreds of requests a second: the enterprise tier's
                # limits are lifted so that they reach the handlers, not the rate limiter
                await services.tiers.update("enterprise", rest_rate=10**9, rest_period_s=1,
                                            rest_burst=10**9, daily_quota=None,
                                            client_messages_per_s=10**6)
                keys = await make_users(services, ("free", "pro", "enterprise"))
                server = HTTPServer(make_app(services))
                sockets = bind_sockets(0, "127.0.0.1")
                server.add_sockets(sockets)
                stop = asyncio.Event()
                ready.put(FuzzServer(asyncio.get_running_loop(), services,
                                     sockets[0].getsockname()[1], keys, config, stop))
                await stop.wait()
                server.stop()
                await services.hub.drain()
        finally:
            purge_redis_prefix(config)


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[FuzzServer]:
    """The relay on a background thread for the duration of the block; `env`: settings."""
    ready: queue.Queue[Any] = queue.Queue()

    def main() -> None:
        try:
            asyncio.run(_serve(tmp_path, ready, env))
        except BaseException as exc:  # reported to the test, not left to the thread
            ready.put(exc)

    thread = threading.Thread(target=main, name="fuzz-relay", daemon=True)
    thread.start()
    started = ready.get(timeout=60)
    if isinstance(started, BaseException):
        raise started
    server: FuzzServer = started
    logging.getLogger().addHandler(server.error_log)
    try:
        yield server
    finally:
        logging.getLogger().removeHandler(server.error_log)
        server.loop.call_soon_threadsafe(server.stop.set)
        thread.join(30)
        with contextlib.suppress(queue.Empty):
            crashed = ready.get_nowait()
            raise AssertionError(f"the relay failed while stopping: {crashed!r}")


# -- HTTP --

def http_request(port: int, method: str, target: str, headers: dict[str, bytes | str] | None
                 = None, body: bytes | None = None, timeout_s: float = TIMEOUT_S,
                 ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection; the body is not read for a stream (SSE)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        streaming = response.getheader("Content-Type", "").startswith("text/event-stream")
        data = b"" if streaming or method == "HEAD" else response.read()
        return response.status, response.headers, data
    finally:
        conn.close()


# -- WebSocket frames by hand (RFC 6455, section 5.2) --

def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, declared: int | None = None) -> bytes:
    """A client frame with every bit under the caller's control: `rsv` the three
    reserved bits (0-7), `declared` a payload length other than the real one (the
    header alone is sent then, as a client that lies about its size would)."""
    size = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if declared is not None:
        return header
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text_frame(text: str | bytes) -> bytes:
    return encode_frame(0x1, text.encode() if isinstance(text, str) else text)


# -- what fuzzers send --

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(), st.text(max_size=20))
json_values = st.recursive(json_leaves, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=10)
@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """One to three frames with every header bit random (a payload length over 64 KiB
    is declared, not sent: the server must refuse it on the header)."""
    frames = []
    for _ in range(draw(st.integers(1, 3))):
        opcode = draw(st.sampled_from([0x1, 0x2, 0x0, 0x9, 0xA, 0x8, 0x3, 0x7, 0xB, 0xF]))
        payload = draw(st.one_of(st.binary(max_size=200), st.just(b'{"op":"ping"}'),
                                 st.text(max_size=60).map(str.encode)))
        declared = draw(st.sampled_from([None] * 6 + [MAX_FRAME + 1, 1 << 20, (1 << 63) - 1]))
        frames.append(encode_frame(opcode, payload, fin=draw(st.booleans()),
                                   rsv=draw(st.sampled_from([0, 0, 0, 1, 2, 4, 7])),
                                   masked=draw(st.sampled_from([True, True, False])),
                                   declared=declared))
        if declared is not None:
            break  # nothing can follow a frame whose payload never comes
    return b"".join(frames)


def sends_close(data: bytes) -> bool:
    """Whether `data` (as `raw_frames` builds it) holds a close frame (opcode 8)."""
    at = 0
    while at + 2 <= len(data):
        opcode, size, masked = data[at] & 0x0F, data[at + 1] & 0x7F, data[at + 1] & 0x80
        if opcode == 0x8:
            return True
        head = 2 + (2 if size == 126 else 8 if size == 127 else 0)
        if size >= 126:
            size = int.from_bytes(data[at + 2:at + head], "big")
        at += head + (4 if masked else 0) + size
    return False


@dataclass
class Outcome:
    """What a server did after a fuzzed frame and a sentinel message: answered the
    sentinel (`answered`), closed with a close frame (`close_code`, None when the frame
    had no code), or dropped the TCP connection without a close frame (`dropped`)."""

    messages: list[Any]
    answered: bool = False
    close_code: int | None = None
    closed: bool = False
    dropped: bool = False


class FuzzClient(RawWsClient):
    """A raw client that sends any bytes and reports what came back."""

    def __init__(self, port: int, path: str) -> None:
        # RawWsClient's handshake, with a timeout: a server that never answers fails
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send_bytes(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server may have closed already
            self.sock.sendall(data)

    def outcome(self, is_answer: Callable[[Any], bool],
                timeout_s: float = ANSWER_TIMEOUT_S) -> Outcome:
        """Read until the sentinel's answer, a close or the end of the connection;
        `AssertionError` when none comes within `timeout_s` (the server hung)."""
        out = Outcome([])
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                opcode, payload = self.read_frame(max(0.01, deadline - time.monotonic()))
            except (EOFError, ConnectionError):
                out.dropped = True
                return out
            except TimeoutError:
                raise AssertionError(f"no answer within {timeout_s} s; got {out.messages}"
                                     ) from None
            if opcode == 0x8:
                out.closed = True
                out.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 \
                    else None
                return out
            if opcode == 0x9:
                self.send_bytes(encode_frame(0xA, payload))
            elif opcode in (0x1, 0x2):
                message = json.loads(payload)  # anything not JSON fails the test here
                out.messages.append(message)
                if is_answer(message):
                    out.answered = True
                    return out


class Bystander:
    """A well-behaved client on another connection: reads in a thread (answering the
    server's pings, and with `pong` the protocol's own pings), so that it stays
    connected however long the fuzzing lasts, and collects every JSON message."""

    def __init__(self, client: FuzzClient,
                 pong: Callable[[Any], bytes | None] = lambda _m: None) -> None:
        self.client = client
        self.pong = pong
        self.messages: list[Any] = []
        self.close_code: int | None = None
        self.ended = False
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bystander", daemon=True)
        self._thread.start()

    def send(self, data: bytes) -> None:
        self.client.sock.sendall(data)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                opcode, payload = self.client.read_frame(0.2)
            except TimeoutError:
                continue
            except (EOFError, OSError):
                break
            if opcode == 0x9:
                self.send(encode_frame(0xA, payload))
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else None
                break
            elif opcode == 0x1:
                message = json.loads(payload)
                reply = self.pong(message)
                if reply is not None:
                    self.send(reply)
                with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[Any]], bool], timeout_s: float = TIMEOUT_S,
                 ) -> list[Any]:
        """The messages so far, once `done(messages)` holds; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self.messages):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    raise AssertionError(
                        f"bystander: condition not met (closed: {self.ended}, code "
                        f"{self.close_code}); last messages {self.messages[-5:]}")
                self._changed.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def game_seqs(messages: list[Any], data_of: Callable[[Any], Any]) -> list[int]:
    """The `seq` of each event of the bystanders' game, in arrival order (snapshots are
    the state, not an event, and are left out)."""
    seqs = []
    for message in messages:
        if not isinstance(message, dict) or message.get("event", "") in ("", "game.snapshot"):
            continue
        data = data_of(message)
        if isinstance(data, dict) and data.get("game_id") == GAME_ID and "seq" in data:
            seqs.append(int(data["seq"]))
    return seqs


@contextlib.contextmanager
def publishing_while(server: FuzzServer, interval_s: float = 0.25) -> Iterator[None]:
    """Goals in the bystanders' game every `interval_s` while the block runs: events
    flow through the bus during the fuzzing, not only after it."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            while not stop.wait(interval_s):
                server.publish_goal()
        except BaseException as exc:  # reported by the test, not left to the thread
            failures.append(exc)

    thread = threading.Thread(target=publish, name="publisher", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
    if failures:
        raise AssertionError(f"publishing failed: {failures[0]!r}") from failures[0]

