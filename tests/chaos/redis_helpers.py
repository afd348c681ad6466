"""What the Redis and process chaos tests share: a private `redis-server` that can be
killed, restarted and frozen (the shared Redis of the other tests is never touched), a
live stack on it (the simulator sped up, `btsguru serve` with its pollers), stream
clients that reconnect and resume as the contract tells them to and check every game's
`seq`, a REST prober, and readers of the pollers' leases and of the server's processes.

The figures a test measures go through `bench.harness.report` into
`bench/results/<name>.json` (gitignored) and are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from bench.harness import ChildLog, Processes, Stack, free_port, start_stack
from btsguru.store.history import STREAM_ID_RE
from tests.chaos.background import Background
from tests.realtime_helpers import cursor_positions

REDIS_SERVER = "/usr/bin/redis-server"
# the longer variants: `CHAOS_LONG=1` (or the suite-wide `BTSGURU_LONG=1`)
LONG = "1" in (os.environ.get("CHAOS_LONG"), os.environ.get("BTSGURU_LONG"))
SPORT = "basketball"  # the sport whose simulated games change most often
CHANNEL = f"sports.{SPORT}"
# The simulator plays 5 s of game per second and the pollers poll live basketball every
# second: a steady stream of score and status events, whatever the hour.
SIMULATOR_SPEED = "5"
STACK_SETTINGS = {
    "BTSGURU_SPORTS": SPORT,
    "POLL_LIVE_INTERVAL_BASKETBALL_S": "1",
    "POLL_CRUCIAL_INTERVAL_BASKETBALL_S": "1",
    "UPSTREAM_DAILY_QUOTA": "150000",  # a Mega plan: the budget does not stretch cadences
    "UPSTREAM_MINUTE_QUOTA": "900",
    "REVERB_APP_SECRET": "chaos-app-secret",  # signs presence channel auth
}
RECONNECT_DELAY_S = 0.2  # a client's pause before it reconnects (client behaviour)
REST_TIMEOUT_S = 30.0  # a REST answer slower than this counts as a hang


# -- a private Redis --

class PrivateRedis:
    """`redis-server` on a free port with its data in `dir`; `persistent` turns on the
    append-only file synced on every write, so that a restart (even after SIGKILL) comes
    back with every key, as a production Redis with AOF does."""

    def __init__(self, dir: Path, *, persistent: bool) -> None:
        self.dir = dir
        self.persistent = persistent
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                 else ["--appendonly", "no"])
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def answers(self) -> bool:
        """True when the server answers PING (loading an AOF answers with an error)."""
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), 0.2) as s:
            s.settimeout(0.5)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what was already synced."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung or partitioned
        Redis), until `thaw`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def private_redis(dir: Path, *, persistent: bool) -> Iterator[PrivateRedis]:
    server = PrivateRedis(dir, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def live_stack(group: Processes, redis_url: str, *, processes_n: int = 1,
               max_streams: int | None = 10_000) -> Stack:
    """The simulator (sped up) and `btsguru serve` with its pollers on `redis_url`."""
    return start_stack(group, processes_n=processes_n, pollers=True, max_streams=max_streams,
                       settings={"REDIS_URL": redis_url, **STACK_SETTINGS},
                       simulator_args=["--speed", SIMULATOR_SPEED])


# -- processes --

def children(pid: int) -> list[int]:
    """The direct children of `pid` (the workers of `serve --processes N`)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(p) for p in text.split())
    return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


@contextlib.contextmanager
def captured(group: Processes) -> Iterator[list[ChildLog]]:
    """The standard error of every child started so far; on exit the children are
    stopped (before `processes()` would) so that the logs hold the end."""
    try:
        yield [group.log(child) for child in group.children]
    finally:
        group.stop_all()


# -- the pollers' leases --

async def lease_holders(stack: Stack) -> dict[str, tuple[str, int]]:
    """Every poller lease: task name -> (holder token `host:pid:uuid`, PTTL in ms)."""
    prefix = stack.env["REDIS_CACHE_PREFIX"] + "poll:lease:"
    parts = urlsplit(stack.env["REDIS_URL"])  # its path names another database
    client = aioredis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                            db=int(stack.env.get("REDIS_QUEUE_DB", "2")), socket_timeout=2,
                            socket_connect_timeout=2)
    try:
        out = {}
        async for key in client.scan_iter(match=prefix.replace("[", "\\[") + "*"):
            async with client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                value, pttl = await pipe.execute()
            if value is not None:
                out[key.decode()[len(prefix):]] = (value.decode(), int(pttl))
        return out
    finally:
        await client.aclose()


def holder_pid(token: str) -> int:
    return int(token.split(":")[-2])


# -- stream clients that resume --

@dataclass
class Resumer(Background):
    """One stream client (`kind` "ws" or "sse") on `channel` that, whenever its stream
    ends or fails, reconnects after `RECONNECT_DELAY_S` and resumes from the last event id
    it got (native `since`, SSE `Last-Event-ID`), to the first server of `urls` that
    accepts connections."""

    kind: str
    urls: list[str]
    api_key: str
    channel: str = CHANNEL
    seqs: dict[int, list[int]] = field(default_factory=dict)  # game -> seqs as received
    last_id: str | None = None
    last_event_at: float = 0.0
    events: int = 0
    subscribes: int = 0
    recovered: list[bool] = field(default_factory=list)  # ws: per resume
    snapshots: int = 0
    ends: list[str] = field(default_factory=list)  # why each stream ended
    errors: list[str] = field(default_factory=list)  # ws: the codes of `error` messages
    dropped_at: float | None = None
    resume_s: list[float] = field(default_factory=list)  # drop -> subscribed again
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                if self.kind == "ws":
                    why = await self._ws(session)
                else:
                    why = await self._sse(session)
            except aiohttp.ClientConnectorError:
                # nobody listens there (a dead server): try the next one, as a load
                # balancer would send the reconnect elsewhere
                why = "refused"
                self.urls.append(self.urls.pop(0))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                why = f"error {type(exc).__name__}"
            self.ends.append(why)
            if self.dropped_at is None:
                self.dropped_at = time.monotonic()
            await asyncio.sleep(RECONNECT_DELAY_S)

    def _on_subscribed(self, recovered: bool | None) -> None:
        self.subscribes += 1
        if self.dropped_at is not None:
            self.resume_s.append(time.monotonic() - self.dropped_at)
            self.dropped_at = None
            if recovered is not None:
                self.recovered.append(recovered)
        self.subscribed.set()

    def _on_event(self, id: str, event: str, data: dict[str, Any]) -> None:
        self.last_id = id
        self.last_event_at = time.time()
        if event == "game.snapshot":
            self.snapshots += 1
            return
        game_id, seq = data.get("game_id"), data.get("seq")
        if isinstance(game_id, int) and isinstance(seq, int):
            self.seqs.setdefault(game_id, []).append(seq)
            self.events += 1

    async def _ws(self, session: aiohttp.ClientSession) -> str:
        url = self.urls[0].replace("http", "ws", 1) + f"/v1/ws?api_key={self.api_key}"
        async with session.ws_connect(url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(
                ws_close=5)) as ws:
            message: dict[str, Any] = {"op": "subscribe", "channels": [self.channel]}
            if self.last_id is not None:
                message["since"] = self.last_id
            await ws.send_json(message)
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                body = json.loads(frame.data)
                if body.get("op") == "subscribed":
                    self._on_subscribed(bool(body.get("recovered")))
                elif body.get("op") == "error":  # the close that follows says what to do
                    self.errors.append(str(body.get("code")))
                elif "event" in body:
                    self._on_event(body["id"], body["event"], body["data"])
            return f"ws close {ws.close_code}"

    async def _sse(self, session: aiohttp.ClientSession) -> str:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with session.get(f"{self.urls[0]}/v1/stream", headers=headers,
                               params={"channels": self.channel, "api_key": self.api_key},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as r:
            if r.status != 200:
                return f"sse status {r.status}"
            fields: dict[str, str] = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line == ": subscribed":
                    self._on_subscribed(None)
                elif line == "":
                    if "data" in fields:
                        self._on_event(fields.get("id", ""), fields.get("event", ""),
                                       json.loads(fields["data"]))
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
            return "sse end"


def gaps(seqs: dict[int, list[int]]) -> tuple[int, int]:
    """(missing, out of order or repeated) over every game: from its first seq to its
    last, each must follow the one before by exactly one."""
    missing = disorder = 0
    for values in seqs.values():
        for before, after in itertools.pairwise(values):
            if after <= before:
                disorder += 1
            elif after > before + 1:
                missing += after - before - 1
    return missing, disorder


def id_ms(id: str | None) -> int:
    """The milliseconds part of an event id: a stream id (WebSocket) or a composite
    cursor (SSE) of `SPORT`."""
    if not id:
        return 0
    if not STREAM_ID_RE.match(id):
        id = cursor_positions(id)[SPORT]
    return int(id.split("-")[0])


# -- REST --

@dataclass
class RestProbe(Background):
    """REST traffic the whole time: every answer's status, type, body and duration."""

    base_url: str
    api_key: str
    paths: tuple[str, ...] = (f"/v1/{SPORT}/live", f"/v1/{SPORT}/games")
    answers: list[tuple[float, int, str, float, str]] = field(default_factory=list)
    concurrency: int = 4
    task: asyncio.Task[None] | None = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        async def loop(at: int) -> None:
            while True:
                await self._one(session, self.paths[at % len(self.paths)])
                at += 1
                await asyncio.sleep(0.02)

        await asyncio.gather(*(loop(i) for i in range(self.concurrency)))

    async def _one(self, session: aiohttp.ClientSession, path: str) -> None:
        started = time.monotonic()
        try:
            async with session.get(self.base_url + path, headers={"X-API-Key": self.api_key},
                                   timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_S)) as r:
                body = await r.text()
                status, ctype = r.status, r.headers.get("Content-Type", "")
        except TimeoutError:
            status, ctype, body = -1, "", "timeout"
        except aiohttp.ClientError as exc:
            status, ctype, body = -2, "", repr(exc)
        self.answers.append((time.time(), status, ctype, time.monotonic() - started, body))


    def bad(self) -> list[tuple[int, str, str]]:
        """Answers that break the promise: not 200 or 503, not JSON, a traceback, a
        hang or a broken connection."""
        return [(status, ctype, body[:200]) for _at, status, ctype, _s, body in self.answers
                if status not in (200, 503) or "json" not in ctype or "Traceback" in body]

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for _at, status, *_rest in self.answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {"requests": len(self.answers), "statuses": statuses,
                "slowest_s": round(max((a[3] for a in self.answers), default=0.0), 3)}
