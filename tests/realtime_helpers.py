"""Helpers for the real-time tests: a relay in this process on real Redis and SQLite, WebSocket
and SSE clients over real sockets, a raw WebSocket client that can stop reading, and
`btsguru serve` subprocesses sharing one Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.app import Services, make_app, open_services
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from tests.cli_helpers import ROOT, cli_env, free_port
from tests.conftest import make_test_config, purge_redis_prefix

TIMEOUT_S = 10.0


def migrate_file(config: Config) -> None:
    database = connect_database(config.database_url)
    migrate(database)
    close_database(database)


@dataclass
class Relay:
    services: Services
    port: int
    keys: dict[str, str]  # tier -> an API key of a user on that tier
    config: Config

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def make_users(services: Services,
                     tiers: tuple[str, ...] = ("free", "pro")) -> dict[str, str]:
    keys = {}
    for tier in tiers:
        email = f"{tier}@example.com"
        await services.users.create_user(email, "password123", tier=tier)
        _info, keys[tier] = await services.keys.create_key(email)
    return keys


@contextlib.asynccontextmanager
async def relay(tmp_path: Path, config: Config | None = None, *, clock: Clock | None = None,
                prepare: Callable[[Services], Awaitable[Any]] | None = None,
                **settings: Any) -> AsyncIterator[Relay]:
    """The app in this process (no pollers): tests publish by ingesting into its store.
    `clock` is the services' clock; `prepare` runs on the services before the users
    are made."""
    config = config or make_test_config(tmp_path)
    migrate_file(config)
    try:
        async with open_services(config, clock) as services:
            if prepare is not None:
                await prepare(services)
            services.hub.start()
            keys = await make_users(services)
            server = HTTPServer(make_app(services, **settings))
            sockets = bind_sockets(0, "127.0.0.1")
            server.add_sockets(sockets)
            try:
                yield Relay(services, sockets[0].getsockname()[1], keys, config)
            finally:
                server.stop()
                await services.hub.drain()
    finally:
        purge_redis_prefix(config)


# -- the native WebSocket --

@dataclass
class WsClient:
    conn: tornado.websocket.WebSocketClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def connect(cls, url: str, key: str | None, *, connect_timeout_s: float = TIMEOUT_S,
                      **kwargs: Any) -> WsClient:
        full = url if key is None else f"{url}?api_key={key}"
        conn = await asyncio.wait_for(tornado.websocket.websocket_connect(full, **kwargs),
                                      connect_timeout_s)
        return cls(conn)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.conn.write_message(message if isinstance(message, str)
                                      else json.dumps(message))

    async def recv(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any] | None:
        """The next message, or None once the server closed the connection."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout_s)
        if raw is None:
            self.conn.close()  # closed by the server: release the client side too
            return None
        message = json.loads(raw)
        self.received.append(message)
        return message

    async def recv_until(self, done: Callable[[dict[str, Any]], bool],
                         timeout_s: float = TIMEOUT_S) -> list[dict[str, Any]]:
        """Messages up to and including the first for which `done` holds."""
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message is None:
                raise AssertionError(f"closed ({self.close_code}) before the condition; "
                                     f"got {out}")
            out.append(message)
            if done(message):
                return out

    async def closed(self, timeout_s: float = TIMEOUT_S) -> int | None:
        """Read until the server closes; its close code."""
        deadline = time.monotonic() + timeout_s
        while await self.recv(max(0.01, deadline - time.monotonic())) is not None:
            pass
        return self.close_code

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    async def subscribe(self, *channels: str, since: str | None = None) -> None:
        message: dict[str, Any] = {"op": "subscribe", "channels": list(channels)}
        if since is not None:
            message["since"] = since
        await self.send(message)

    def close(self) -> None:
        self.conn.close()


def events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "event" in m]


# -- SSE --

@dataclass
class SseClient:
    response: aiohttp.ClientResponse
    session: aiohttp.ClientSession
    retry_ms: int | None = None
    comments: list[str] = field(default_factory=list)
    early: list[dict[str, Any]] = field(default_factory=list)  # read while awaiting readiness

    @classmethod
    async def connect(cls, base_url: str, key: str, channels: str, *,
                      last_event_id: str | None = None, query_cursor: str | None = None,
                      ready: bool = True) -> SseClient:
        session = aiohttp.ClientSession()
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        params = {"channels": channels, "api_key": key}
        if query_cursor:
            params["last_event_id"] = query_cursor
        response = await session.get(f"{base_url}/v1/stream", params=params, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=None))
        client = cls(response, session)
        if response.status == 200 and ready:
            while True:  # until the comment that ends the catch-up
                event = await client._read_event(stop_at_ready=True)
                if event is None:
                    raise AssertionError("the stream ended before it was ready")
                if event.get("ready"):
                    break
                client.early.append(event)
        return client

    async def next_event(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any] | None:
        """The next event (`id`, `event`, `data` parsed), or None when the stream ends."""
        if self.early:
            return self.early.pop(0)
        return await self._read_event(timeout_s)

    async def _read_event(self, timeout_s: float = TIMEOUT_S, *,
                          stop_at_ready: bool = False) -> dict[str, Any] | None:
        fields: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            line = await asyncio.wait_for(self.response.content.readline(),
                                          max(0.01, deadline - time.monotonic()))
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if text == "":
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    return fields
                fields = {}
                continue
            if text.startswith(":"):
                self.comments.append(text[1:].strip())
                if stop_at_ready and text[1:].strip() == "subscribed":
                    return {"ready": True}
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry_ms = int(value)
            else:
                fields[name] = value

    async def events_until(self, done: Callable[[dict[str, Any]], bool],
                           timeout_s: float = TIMEOUT_S) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            event = await self.next_event(max(0.01, deadline - time.monotonic()))
            if event is None:
                raise AssertionError(f"stream ended before the condition; got {out}")
            out.append(event)
            if done(event):
                return out

    async def close(self) -> None:
        self.response.close()
        await self.session.close()


def cursor_positions(cursor: str) -> dict[str, str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    return dict(part.split("=", 1) for part in raw.split(","))


# -- a WebSocket client that can stop reading --

class RawWsClient:
    """A blocking-socket WebSocket client with a tiny receive buffer: while it does not
    read, the server's writes back up after a few kilobytes."""

    def __init__(self, port: int, path: str, rcvbuf: int = 4096) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | size) if size < 126 else \
            struct.pack("!BBH", 0x81, 0x80 | 126, size)
        self.sock.sendall(header + mask + masked)

    def _need(self, n: int, deadline: float) -> None:
        while len(self.buffer) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def read_frame(self, timeout_s: float = TIMEOUT_S) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame."""
        deadline = time.monotonic() + timeout_s
        self._need(2, deadline)
        first, second = self.buffer[0], self.buffer[1]
        size, at = second & 0x7F, 2
        if size == 126:
            self._need(4, deadline)
            size, at = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif size == 127:
            self._need(10, deadline)
            size, at = struct.unpack("!Q", self.buffer[2:10])[0], 10
        self._need(at + size, deadline)
        payload, self.buffer = self.buffer[at:at + size], self.buffer[at + size:]
        return first & 0x0F, payload

    def read_messages(self, until: Callable[[dict[str, Any]], bool],
                      timeout_s: float = TIMEOUT_S) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            opcode, payload = self.read_frame(max(0.01, deadline - time.monotonic()))
            if opcode == 0x8:
                raise EOFError(struct.unpack("!H", payload[:2])[0] if payload else None)
            if opcode == 0x1:
                out.append(json.loads(payload))
                if until(out[-1]):
                    return out

    def close(self) -> None:
        self.sock.close()


# -- `btsguru serve` subprocesses --

def server_env(config: Config) -> dict[str, str]:
    return cli_env({"REDIS_URL": config.redis_url,
                    "REDIS_CACHE_PREFIX": config.redis_cache_prefix,
                    "DATABASE_URL": config.database_url, "RAPIDAPI_KEY": "k",
                    "SECRET_KEY": config.secret_key.reveal(), "LOG_LEVEL": "warning"})


@contextlib.contextmanager
def servers(config: Config, count: int = 2) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """`count` `btsguru serve --no-pollers` processes on one Redis; stopped with SIGTERM,
    and each must exit 0."""
    started = []
    for _ in range(count):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "btsguru", "serve", "--port", str(port), "--no-pollers"],
            cwd=ROOT, env=server_env(config), stderr=subprocess.PIPE,
            start_new_session=True)
        started.append((port, process))
    try:
        for port, process in started:
            wait_healthy(port, process)
        yield started
    finally:
        outcomes = []
        for _port, process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _port, process in started:
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
            err = b""
            if process.stderr is not None:
                err = process.stderr.read()
                process.stderr.close()
            outcomes.append((code, err.decode()))
        assert all(code in (0, -signal.SIGKILL) for code, _ in outcomes), outcomes


def wait_healthy(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            if b"200" in s.recv(64):
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not become healthy")
