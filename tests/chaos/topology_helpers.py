"""What the topology chaos test (`test_topology_chaos.py`) needs beyond `redis_helpers`: a
Sentinel set or a Redis Cluster behind one interface (the env that selects it, the master
to kill, the wait for its replica's promotion), stream clients that keep the order of
what they saw (events, snapshots, `recovered: false`) so that a discontinuity can be
told explained or not, a Pusher client that reconnects as pusher-js does, and the
stack's second server.

The seq check here is `explained_gaps`, not `redis_helpers.gaps`: after a failover that
lost writes, the contract lets the relay send `game.snapshot` (or a native `subscribed`
with `recovered: false`) and continue from the snapshot's `seq`; every other jump or
repeat is still counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp
import redis
import tornado.websocket
from redis.crc import key_slot

from bench.harness import Processes, Stack, free_port, wait_http
from tests.chaos.background import Background
from tests.chaos.redis_helpers import RECONNECT_DELAY_S, SPORT, Resumer
from tests.pusher_helpers import PusherClient, realtime_auth
from tests.redis_cluster import ClusterNodes, redis_cluster
from tests.redis_topologies import SentinelSet, sentinel_set
from tests.redis_topologies import client as sentinel_node_client
from tests.waiting import wait_until_blocking

# The key families a sport's `{sport}` hash tag carries (store.games, store.history,
# upstream.quota): what the killed master must hold for the test to mean anything.
TAGGED_FAMILIES = ("game", "seq", "history", "quota")
LOGICAL_DBS = range(4)  # REDIS_DB, REDIS_CACHE_DB, REDIS_QUEUE_DB, REDIS_REVERB_DB defaults


# -- the topologies --

class TopologyUnderTest(Protocol):
    name: str

    def env(self) -> dict[str, str]: ...

    def ready(self) -> bool: ...

    def doomed_master(self) -> int:
        """The port of the master the test kills: the one serving the sport's keys."""
        ...

    def families_on(self, port: int, prefix: str) -> dict[str, int]:
        """How many keys of each `TAGGED_FAMILIES` family (under `prefix`) `port` holds."""
        ...

    def cut_replica(self, master: int) -> int:
        """Cut `master`'s replica off (its link dropped, its reconnects refused) so that
        what `master` takes from now on is lost when it dies; the replica's port."""
        ...

    def kill(self, port: int) -> None: ...

    def wait_promoted(self, old: int, timeout_s: float) -> int:
        """Until a replica of `old` serves its keys as master; its port."""
        ...


def cut_off(master: redis.Redis, replica: redis.Redis) -> None:
    """The replica will authenticate as a user the master does not know, so it cannot
    sync again; then the master drops its replication link. The replica stays up and
    answers (so Sentinel and Cluster still count it as a candidate for promotion) with
    the data it had; a promotion then loses what the master took meanwhile, as an
    asynchronous replica lagging behind does."""
    replica.config_set("masteruser", "btsguru-chaos-nobody")
    replica.config_set("masterauth", "btsguru-chaos-nothing")
    master.execute_command("CLIENT", "KILL", "TYPE", "replica")  # type: ignore[no-untyped-call]
    wait_until_blocking(lambda: replica.info("replication").get("master_link_status") == "down",
                        10, "the replica's link down", interval_s=0.05)


def restore(replica: redis.Redis) -> None:
    """Undo `cut_off`'s settings (the replica is the master by then, or about to be)."""
    replica.config_set("masteruser", "")
    replica.config_set("masterauth", "")


def _scan_families(node: redis.Redis, prefix: str, out: dict[str, int]) -> None:
    for key in node.scan_iter(match=prefix.replace("[", "\\[") + "*", count=1000):
        family = key.decode()[len(prefix):].split(":", 1)[0]
        if family in out:
            out[family] += 1


@dataclass
class SentinelTopology:
    group: SentinelSet
    name: str = "sentinel"
    replica: int | None = None  # cut off by `cut_replica`

    def env(self) -> dict[str, str]:
        return self.group.env()

    def ready(self) -> bool:
        return self.group.ready()

    def doomed_master(self) -> int:
        port = self.group.master_port()
        assert port is not None, "the sentinels name no master"
        return port

    def families_on(self, port: int, prefix: str) -> dict[str, int]:
        out = dict.fromkeys(TAGGED_FAMILIES, 0)
        for db in LOGICAL_DBS:
            with sentinel_node_client(port, db=db) as node:
                _scan_families(node, prefix, out)
        return out

    def cut_replica(self, master: int) -> int:
        replica = next(p for p in self.group.data_ports if p != master)
        with sentinel_node_client(master) as old, sentinel_node_client(replica) as new:
            cut_off(old, new)
        self.replica = replica
        return replica

    def kill(self, port: int) -> None:
        assert port == self.group.master_port()
        self.group.kill_master()
        if self.replica is not None:
            with sentinel_node_client(self.replica) as replica:
                restore(replica)

    def wait_promoted(self, old: int, timeout_s: float) -> int:
        return self.group.wait_promoted(old, timeout_s)


@dataclass
class ClusterTopology:
    nodes: ClusterNodes
    name: str = "cluster"
    replica: int | None = None  # of the killed master, found before the kill
    cut: bool = False  # the replica was cut off by `cut_replica`

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": "", "REDIS_CLUSTER_NODES": ",".join(self.nodes.addresses)}

    def ready(self) -> bool:
        return self.nodes.healthy() and self.nodes.replicas_in_sync()

    def master_of(self, slot: int, asking: int | None = None) -> int | None:
        """The port serving `slot` as the first answering node (or `asking`) sees it."""
        for port in [asking] if asking is not None else self.nodes.ports:
            try:
                with self.nodes.client(port) as node:
                    ranges = node.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            # [[start, end, [host, port, id], [replica...]...], ...]
            for start, end, primary, *_replicas in ranges:
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        return None

    def doomed_master(self) -> int:
        port = self.master_of(key_slot(SPORT.encode()))
        assert port is not None, "no node names the master of the sport's slot"
        return port

    def families_on(self, port: int, prefix: str) -> dict[str, int]:
        out = dict.fromkeys(TAGGED_FAMILIES, 0)
        with self.nodes.client(port) as node:
            _scan_families(node, prefix, out)
        return out

    def replica_of(self, master: int) -> int:
        for port in self.nodes.ports:
            with self.nodes.client(port) as node:
                info = node.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master:
                return port
        raise AssertionError(f"no replica of {master} in the cluster")

    def cut_replica(self, master: int) -> int:
        self.replica = self.replica_of(master)
        self.cut = True
        with self.nodes.client(master) as old, self.nodes.client(self.replica) as new:
            cut_off(old, new)
        return self.replica

    def kill(self, port: int) -> None:
        if self.replica is None:
            self.replica = self.replica_of(port)
        process = self.nodes.processes[port]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        if self.cut:
            with self.nodes.client(self.replica) as replica:
                restore(replica)

    def wait_promoted(self, old: int, timeout_s: float) -> int:
        replica = self.replica
        assert replica is not None
        slot = key_slot(SPORT.encode())

        def promoted() -> bool:
            return self.nodes.info(replica).get("cluster_state") == "ok" and \
                self.master_of(slot, asking=replica) == replica

        wait_until_blocking(promoted, timeout_s, lambda: f"{replica} to take over from {old}",
                            interval_s=0.05)
        return replica


@contextlib.contextmanager
def topology(name: str) -> Iterator[TopologyUnderTest]:
    """A fresh Sentinel set or Redis Cluster, every process killed on exit."""
    if name == "sentinel":
        with sentinel_set() as group:
            yield SentinelTopology(group)
    else:
        with redis_cluster() as nodes:
            yield ClusterTopology(nodes)


# -- the stack's second server --

def start_server(group: Processes, stack: Stack) -> str:
    """Another `btsguru serve` (with pollers) on the stack's Redis and database; its URL."""
    port = free_port()
    group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port)], env=stack.env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return url


# -- what a client saw, in order --

@dataclass(frozen=True, slots=True)
class Mark:
    """One thing a client saw: an event (`game`, `seq`), a `snapshot` (the full game: its
    `id` and `seq`) or a `reset` (a subscription that replays nothing: native
    `recovered: false`, or a Pusher public channel subscribed again)."""

    at: float  # time.monotonic() when it arrived
    kind: str  # "event", "snapshot" or "reset"
    game: int = 0
    seq: int = 0


@dataclass
class SeqCheck:
    events: int = 0
    missing: int = 0  # seq numbers skipped with nothing to explain it
    repeated: int = 0  # a seq not above the one before (repeat or out of order)
    snapshots: int = 0
    explained: int = 0  # a snapshot or a reset in the middle of a game the client had
    jumps: int = 0  # ...where the seq did not simply go on by one (reported)
    backwards: int = 0  # snapshots whose seq is below what the client had (reported)
    resets: int = 0


def explained_gaps(marks: list[Mark]) -> SeqCheck:
    """Per game, each event's seq must follow the one before by exactly one, except right
    after a snapshot of that game (then it follows the snapshot's seq) or a reset (then
    the game starts afresh)."""
    check = SeqCheck()
    last: dict[int, int] = {}
    before_reset: dict[int, int] = {}
    for mark in marks:
        if mark.kind == "reset":
            check.resets += 1
            before_reset.update(last)
            last.clear()
            continue
        before = last.get(mark.game)
        if mark.kind == "snapshot":
            check.snapshots += 1
            earlier = before if before is not None else before_reset.pop(mark.game, None)
            if earlier is not None:
                check.explained += 1
                check.jumps += mark.seq != earlier + 1
                check.backwards += mark.seq < earlier
            last[mark.game] = mark.seq
            continue
        check.events += 1
        if before is None:
            earlier = before_reset.pop(mark.game, None)
            if earlier is not None:
                check.explained += 1
                check.jumps += mark.seq != earlier + 1
        elif mark.seq <= before:
            check.repeated += 1
        elif mark.seq > before + 1:
            check.missing += mark.seq - before - 1
        last[mark.game] = mark.seq
    return check


def first_new_event_s(marks: list[Mark], kill_at: float, promoted_at: float) -> float | None:
    """Seconds from the promotion to the first event (not a snapshot) that arrived after
    it and is newer than anything the client had of that game when the master died:
    events flowing again, not a replay of old ones."""
    had: dict[int, int] = {}
    for mark in marks:
        if mark.at <= kill_at and mark.kind == "event":
            had[mark.game] = max(had.get(mark.game, -1), mark.seq)
        elif mark.at >= promoted_at and mark.kind == "event" \
                and mark.seq > had.get(mark.game, -1):
            return mark.at - promoted_at
    return None


class Marked(Protocol):
    marks: list[Mark]
    events: int
    kind: str


@dataclass
class MarkedResumer(Resumer):
    """`Resumer` (native WebSocket or SSE) that also keeps `marks`."""

    marks: list[Mark] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # snapshots without id or seq

    def _on_subscribed(self, recovered: bool | None) -> None:
        if recovered is False and self.last_id is not None:
            self.marks.append(Mark(time.monotonic(), "reset"))
        super()._on_subscribed(recovered)

    def _on_event(self, id: str, event: str, data: dict[str, Any]) -> None:
        mark_event(self.marks, self.malformed, event, data)
        super()._on_event(id, event, data)


def mark_event(marks: list[Mark], malformed: list[str], event: str,
               data: dict[str, Any]) -> bool:
    """Append what `event` says of its game's seq; True for a game event."""
    now = time.monotonic()
    if event == "game.snapshot":
        game, seq = data.get("id"), data.get("seq")
        if isinstance(game, int) and isinstance(seq, int) and data.get("sport") == SPORT:
            marks.append(Mark(now, "snapshot", game, seq))
        else:
            malformed.append(json.dumps(data)[:200])
        return False
    game, seq = data.get("game_id"), data.get("seq")
    if isinstance(game, int) and isinstance(seq, int):
        marks.append(Mark(now, "event", game, seq))
        return True
    return False


@dataclass
class PusherResumer(Background):
    """A Pusher (protocol 7) client on `channel`, to the first server of `urls` that
    accepts it, as pusher-js behaves: answers pings, and when its connection ends
    connects again (to the next server when refused) and subscribes again. A private
    channel is authorised with `api_key` through `/v1/realtime/auth` each time (the
    relay resumes it from the user's last event); a public one starts afresh (a reset)."""

    urls: list[str]
    channel: str
    app_key: str
    api_key: str = ""
    kind: str = "pusher"
    marks: list[Mark] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    events: int = 0
    subscribes: int = 0
    ends: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def private(self) -> bool:
        return self.channel.startswith("private-")

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                why = await self._once()
            except ConnectionRefusedError:
                why = "refused"
                self.urls.append(self.urls.pop(0))
            except (OSError, TimeoutError, aiohttp.ClientError,
                    tornado.websocket.WebSocketError) as exc:
                why = f"error {type(exc).__name__}"
            self.ends.append(why)
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _once(self) -> str:
        url = self.urls[0]
        node = SimpleNamespace(port=int(url.rsplit(":", 1)[1]), http_url=url,
                               config=SimpleNamespace(reverb_app_key=self.app_key))
        client = await PusherClient.connect(node)  # type: ignore[arg-type]
        try:
            auth = ""
            if self.private:
                status, body = await realtime_auth(node, self.api_key,  # type: ignore[arg-type]
                                                   client.socket_id, self.channel)
                if status != 200:
                    return f"auth {status}"
                auth = body["auth"]
            await client.subscribe(self.channel, auth)
            while True:
                message = await client.recv(timeout_s=60)
                client.received.clear()
                if message is None:
                    return f"pusher close {client.close_code}"
                self._on_message(message)
                if message.get("event") == "pusher:ping":
                    await client.send("pusher:pong")
        finally:
            client.close()

    def _on_message(self, message: dict[str, Any]) -> None:
        event = str(message.get("event", ""))
        if event == "pusher_internal:subscription_succeeded":
            self.subscribes += 1
            if self.subscribes > 1 and not self.private:
                self.marks.append(Mark(time.monotonic(), "reset"))
            self.subscribed.set()
        elif event == "pusher:error":
            self.errors.append(json.dumps(message.get("data"))[:200])
        elif event.startswith("game.") and message.get("channel") == self.channel:
            data = message.get("data")
            parsed = json.loads(data) if isinstance(data, str) else data
            if isinstance(parsed, dict) and mark_event(self.marks, self.malformed, event,
                                                       parsed):
                self.events += 1
