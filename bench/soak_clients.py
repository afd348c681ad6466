"""The soak's stream clients: WebSocket and SSE clients that come and go and must never
lose or repeat an event across their reconnects.

Each *follower* is one logical client: it keeps, across its connections, the last `seq`
it saw of every game and where to resume. Its connections are the lean asyncio protocols
of `bench/clients.py` (a raw socket each, many per process, so that the clients cost the
machine as little as they can); what they receive is checked per game:

- an event whose seq is the previous one's + 1 is in order; one at or below it is a
  duplicate; one further on is a gap (the skipped numbers were lost);
- `game.snapshot` sets the game's seq (the contract's resync); a snapshot of a game the
  follower had already seen that jumps its seq is counted apart ("skipped by snapshot"),
  since a client resuming inside the history window must be replayed, not resynced.

Resuming: a WebSocket follower sends `since` as a composite cursor
(`realtime.cursor.encode_cursor`) with the last event id of each of its sports; an SSE
follower sends the last `id:` it got as `Last-Event-ID`. For a sport it has had no event
of yet, a follower resumes from a time cut: the stream id of the moment its last complete
catch-up began, less a second of margin (no event after that moment can have reached it
unseen; events before it that are replayed are the first it sees of their games, so
they count as neither duplicates nor gaps).

Churn: while `churn` is set, each process closes a random share of its connected
followers every second (`churn_per_min` of them a minute); a follower whose connection
ends, by churn or by the server, reconnects after a short pause and resumes.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from bench.clients import SseClient, Tally, WsClient, sse_request, ws_request
from btsguru.realtime.cursor import NO_POSITION, encode_cursor

SNAPSHOT = "game.snapshot"
CONNECT_CONCURRENCY = 50  # per process: handshakes and catch-ups in flight at once
READY_TIMEOUT_S = 30.0  # a connection not subscribed by then is dropped and retried
RECONNECT_PAUSE_S = (0.1, 1.0)  # a reconnecting client waits a random time in this range
CUT_MARGIN_MS = 1000  # the time cut starts this much before its catch-up did
CHURN_TICK_S = 1.0
MAX_INCIDENTS = 5  # per follower


@dataclass
class Follower:
    """One logical client, across its connections."""

    kind: str  # "ws" or "sse"
    channels: tuple[str, ...]
    last_seq: dict[int, int] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)  # ws: sport -> last event id
    cursor: str | None = None  # sse: the last `id:`
    cut: str | None = None  # where a sport with no event yet resumes from
    started_at: float | None = None  # wall time its first catch-up was complete
    events: int = 0
    duplicates: int = 0
    gaps: int = 0  # events lost: the numbers skipped
    snapshots: int = 0
    skipped_by_snapshot: int = 0
    regressed_by_snapshot: int = 0
    resumes: int = 0  # connections that resumed (sent since / Last-Event-ID)
    unrecovered: int = 0  # ws: `subscribed` with recovered false on a resume...
    # ...for a sport it had an event of: its id was in the window, it must be replayed
    unrecovered_in_window: int = 0
    kicked: int = 0  # connections the churn closed
    dropped: int = 0  # connections that ended otherwise (the server closed them)
    failed: int = 0  # connection attempts refused or timed out
    errors: int = 0  # `{"op": "error"}` messages
    # the first few faults seen, with what the follower knew: for the report
    incidents: list[tuple[str, str, int, int | None, int, float]] = field(
        default_factory=list)

    @property
    def sports(self) -> set[str]:
        return {name.split(".")[1] for name in self.channels}

    def see(self, event: str, game_id: int, seq: int) -> None:
        """Check one event of a game against what this follower saw of it before."""
        prev = self.last_seq.get(game_id)
        if event == SNAPSHOT:
            self.snapshots += 1
            if prev is not None and seq > prev:
                self.skipped_by_snapshot += seq - prev
                self.incident("skipped by snapshot", event, game_id, prev, seq)
            elif prev is not None and seq < prev:
                self.regressed_by_snapshot += 1
                self.incident("regressed by snapshot", event, game_id, prev, seq)
            self.last_seq[game_id] = seq
            return
        self.events += 1
        if prev is None or seq == prev + 1:
            self.last_seq[game_id] = seq
        elif seq <= prev:
            self.duplicates += 1
            self.incident("duplicate", event, game_id, prev, seq)
        else:
            self.gaps += seq - prev - 1
            self.incident("gap", event, game_id, prev, seq)
            self.last_seq[game_id] = seq

    def incident(self, what: str, event: str, game_id: int, prev: int | None,
                 seq: int) -> None:
        if len(self.incidents) < MAX_INCIDENTS:
            self.incidents.append((what, event, game_id, prev, seq, time.time()))

    def resume_from(self) -> str | None:
        """The `since` (ws) or `Last-Event-ID` (sse) of the next connection."""
        if self.kind == "sse":
            return self.cursor or self.cut
        if not self.positions and self.cut is None:
            return None
        positions = {sport: self.positions.get(sport, self.cut) for sport in self.sports}
        return encode_cursor({s: p for s, p in positions.items() if p is not None})

    def caught_up(self, began_ms: int) -> None:
        """A connection's catch-up is complete: later cuts may start from it."""
        self.cut = f"{max(0, began_ms - CUT_MARGIN_MS)}-0"
        if self.started_at is None:
            self.started_at = time.time()

    def record(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in (
            "kind", "started_at", "events", "duplicates", "gaps", "snapshots",
            "skipped_by_snapshot", "regressed_by_snapshot", "resumes", "unrecovered",
            "unrecovered_in_window", "incidents",
            "kicked", "dropped", "failed", "errors")}
        out["sports"] = sorted(self.sports)
        out["last_seq"] = self.last_seq
        return out


class SoakWs(WsClient):
    def __init__(self, follower: Follower, tally: Tally, url: str, ready: Any,
                 since: str | None) -> None:
        request: dict[str, Any] = {"op": "subscribe", "channels": list(follower.channels)}
        if since is not None:
            request["since"] = since
        super().__init__(tally, ws_request(url, False), ready, orjson.dumps(request), False)
        self.follower = follower
        self.resuming = since is not None
        # sports it resumes from an event of (a snapshot sent while a sport's history was
        # empty carries the id "0-0": not a place in the window)
        self.had_events_of = {s for s, id in follower.positions.items() if id != NO_POSITION}
        self.acks = 0

    def message(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        op = msg.get("op")
        if op is not None:
            if op == "subscribed":
                self.acks += 1
                if self.resuming and not msg.get("recovered"):
                    self.follower.unrecovered += 1
                    if msg["channel"].split(".")[1] in self.had_events_of:
                        self.follower.unrecovered_in_window += 1
                if self.acks == len(self.follower.channels):
                    self.on_ready()
            elif op == "error":
                self.follower.errors += 1
            return
        data = msg["data"]
        sport = msg["channel"].split(".")[1]
        if msg["event"] == SNAPSHOT:
            self.follower.see(SNAPSHOT, data["id"], data["seq"])
        else:
            self.follower.see(msg["event"], data["game_id"], data["seq"])
        self.follower.positions[sport] = msg["id"]


class SoakSse(SseClient):
    """An SSE client over HTTP/1.1 chunked responses, parsing each event."""

    def __init__(self, follower: Follower, tally: Tally, url: str, ready: Any,
                 since: str | None) -> None:
        request = sse_request(url)
        if since is not None:
            request = request[:-2] + f"Last-Event-ID: {since}\r\n\r\n".encode()
        super().__init__(tally, request, ready)
        self.follower = follower
        self.chunk_left = 0  # bytes left in the current chunk (0: a size line is next)
        self.raw = b""
        self.text = b""

    def body(self, data: bytes) -> None:
        self.raw += data
        while self.raw:
            if self.chunk_left == 0:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    return
                line, self.raw = self.raw[:end], self.raw[end + 2:]
                if not line:
                    continue  # the CRLF that ends a chunk's data
                self.chunk_left = int(line.split(b";")[0], 16)
                if self.chunk_left == 0:
                    return  # the last chunk: the response ended
                continue
            take = self.raw[:self.chunk_left]
            self.raw = self.raw[len(take):]
            self.chunk_left -= len(take)
            self.text += take
        self.events()

    def events(self) -> None:
        while True:
            end = self.text.find(b"\n\n")
            if end < 0:
                return
            block, self.text = self.text[:end], self.text[end + 2:]
            self.block(block)

    def block(self, block: bytes) -> None:
        fields: dict[bytes, bytes] = {}
        for line in block.split(b"\n"):
            if line == b": subscribed":
                self.on_ready()
                return
            name, _, value = line.partition(b": ")
            fields[name] = value
        if b"data" not in fields or b"event" not in fields:
            return  # `retry:`, a heartbeat
        event = fields[b"event"].decode()
        data = orjson.loads(fields[b"data"])
        if event == "error":
            self.follower.errors += 1
            return
        if event == SNAPSHOT:
            self.follower.see(SNAPSHOT, data["id"], data["seq"])
        else:
            self.follower.see(event, data["game_id"], data["seq"])
        if b"id" in fields:
            self.follower.cursor = fields[b"id"].decode()


@dataclass(frozen=True)
class ProcessPlan:
    """What one client process runs: followers of one kind on channel sets in turn."""

    kind: str
    base_url: str
    api_key: str
    count: int
    channel_sets: tuple[tuple[str, ...], ...]
    churn_per_min: float  # share of the followers closed a minute while churning


def soak_client_main(plan: ProcessPlan, slot: int, connected: Any, churn: Any, done: Any,
                     results: Any) -> None:
    """One client process: keeps `connected[slot]` at its number of subscribed
    followers, churns while `churn` is set, and puts its followers' records on `results`
    once `done` is set."""
    asyncio.run(_run(plan, slot, connected, churn, done, results))


class _Process:
    def __init__(self, plan: ProcessPlan) -> None:
        self.plan = plan
        self.tally = Tally()
        parts = urlsplit(plan.base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.followers = [Follower(plan.kind, plan.channel_sets[i % len(plan.channel_sets)])
                          for i in range(plan.count)]
        self.live: dict[int, Any] = {}  # follower index -> its subscribed connection
        self.stopping = False

    def url(self, follower: Follower) -> str:
        base = self.plan.base_url
        if follower.kind == "ws":
            return f"{base.replace('http', 'ws', 1)}/v1/ws?api_key={self.plan.api_key}"
        channels = quote(",".join(follower.channels), safe=",")
        return f"{base}/v1/stream?channels={channels}&api_key={self.plan.api_key}"

    async def life(self, index: int) -> None:
        """Connect, follow until the connection ends, pause, resume; until stopped."""
        follower = self.followers[index]
        while not self.stopping:
            since = follower.resume_from()
            async with self.gate:
                began_ms = int(time.time() * 1000)
                client = await self.connect(follower, since)
            if client is None:
                follower.failed += 1
            else:
                if since is not None:
                    follower.resumes += 1
                follower.caught_up(began_ms)
                self.live[index] = client
                await client.closed
                self.live.pop(index, None)
                if getattr(client, "kicked", False):
                    follower.kicked += 1
                elif not self.stopping:
                    follower.dropped += 1
            await asyncio.sleep(random.uniform(*RECONNECT_PAUSE_S))

    async def connect(self, follower: Follower, since: str | None) -> Any:
        """A connection whose catch-up is complete, or None (refused, timed out)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        cls = SoakWs if follower.kind == "ws" else SoakSse
        client: Any = None
        try:
            _, client = await loop.create_connection(
                lambda: cls(follower, self.tally, self.url(follower), on_ready, since),
                self.host, self.port)
            await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT_S)
        except (OSError, TimeoutError):
            pass
        if client is None or not client.upgraded or client.closed.done():
            if client is not None and client.transport is not None:
                client.transport.close()
            return None
        return client

    def kick(self, share: float) -> None:
        """Close `share` of the followers (those connected), as a network drop would."""
        expected = share * len(self.followers)
        n = int(expected) + (1 if random.random() < expected % 1 else 0)
        for index in random.sample(list(self.live), min(n, len(self.live))):
            client = self.live[index]
            client.kicked = True
            client.transport.close()

    async def churn(self, churn: Any) -> None:
        share = self.plan.churn_per_min * CHURN_TICK_S / 60
        while True:
            await asyncio.sleep(CHURN_TICK_S)
            if churn.is_set():
                self.kick(share)

    async def report(self, slot: int, connected: Any) -> None:
        while True:
            connected[slot] = len(self.live)
            await asyncio.sleep(0.05)


async def _run(plan: ProcessPlan, slot: int, connected: Any, churn: Any, done: Any,
               results: Any) -> None:
    proc = _Process(plan)
    lives = [asyncio.create_task(proc.life(i)) for i in range(plan.count)]
    helpers = [asyncio.create_task(proc.churn(churn)),
               asyncio.create_task(proc.report(slot, connected))]
    await asyncio.get_running_loop().run_in_executor(None, done.wait)
    proc.stopping = True
    records = [f.record() for f in proc.followers]  # first: what arrives after is not judged
    for task in (*helpers, *lives):
        task.cancel()
    await asyncio.gather(*helpers, *lives, return_exceptions=True)
    for client in list(proc.live.values()):
        client.transport.close()
    results.put(records)
