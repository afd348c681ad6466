"""One of two server processes killed with SIGKILL mid-match (issue 10, "Chaos: Processes").

Two `btsguru serve` processes with their pollers on two ports, sharing one (private)
Redis and one database, as two hosts behind a load balancer would; the simulator sped up
so the match is always under way. WebSocket and SSE clients on both, following
`sports.basketball` and reconnecting to the other server when theirs refuses (a
balancer's failover); a Pusher presence member on each; a free-tier user holding its
two stream slots on the doomed process. Then the process holding the pollers' leases is
killed with SIGKILL, and measured:

- its clients resume on the survivor: reconnect time, and every client's `seq` per game
  gap-free and in order from its first event to its last (no snapshot in place of a
  replay);
- its poller leases move to the survivor (bound: the lease TTL plus one renewal);
- its presence member is removed, as the survivor's member sees it (bound: the presence
  heartbeat TTL plus one round);
- its stream slots are reaped: the free user can hold its two streams again, on the
  survivor (bound: the slot heartbeat TTL plus a margin).

Figures go to `bench/results/chaos-process.json`. `CHAOS_LONG=1`: more clients, a longer
run after the kill.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from bench.harness import Stack, btsguru, free_port, processes, report, wait_http
from btsguru.pollers.lease import LEASE_RENEW_S, LEASE_TTL_S
from btsguru.realtime import slots
from btsguru.store import pusher as pusher_store
from tests.chaos.redis_helpers import (
    LONG,
    Resumer,
    alive,
    captured,
    gaps,
    holder_pid,
    lease_holders,
    live_stack,
    private_redis,
)
from tests.pusher_helpers import PusherClient, realtime_auth
from tests.waiting import STACK_INTERVAL_S, wait_until

WS_PER_SERVER, SSE_PER_SERVER = (30, 15) if LONG else (6, 3)
EVENTS_BEFORE = 5
EVENTS_AFTER = 20 if LONG else 5
PRESENCE = "presence-sports.basketball"
FREE_STREAMS = 2  # the free tier's max_streams (db.migrate)
LEASE_BOUND_S = LEASE_TTL_S + LEASE_RENEW_S + 3
PRESENCE_BOUND_S = pusher_store.HEARTBEAT_TTL_S + pusher_store.HEARTBEAT_S + 5
SLOT_BOUND_S = slots.HEARTBEAT_TTL_S + slots.HEARTBEAT_S + 5
RESUME_BOUND_S = 10.0

pytestmark = pytest.mark.timeout(600 if LONG else 120)  # the long variants take minutes


async def test_a_killed_server_process_loses_nothing(tmp_path: Path) -> None:
    with private_redis(tmp_path, persistent=False) as redis, processes() as group:
        stack = await asyncio.to_thread(live_stack, group, redis.url)
        first = group.children[-1]
        second = await asyncio.to_thread(start_second_server, group, stack)
        users = await asyncio.to_thread(make_users, stack)
        servers = {first.pid: (first, stack.base_url), second[0].pid: second}
        with captured(group) as logs:
            figures = await chaos(stack, servers, users)
        for log in logs[-2:]:
            assert not log.tracebacks(), "\n".join(log.tracebacks())
    report("chaos-process", [{k: v for k, v in figures.items() if not isinstance(v, list)}],
           {"long": LONG, **figures})


def start_second_server(group: Any, stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    """Another `btsguru serve` (with pollers) on the stack's Redis and database."""
    port = free_port()
    process = group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port)],
                          env=stack.env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    return process, url


def make_users(stack: Stack) -> dict[str, str]:
    """API keys: two pro users for presence, one free user for the stream-slot check."""
    keys = {}
    for name, tier in (("member", "pro"), ("watcher", "pro"), ("limited", "free")):
        email = f"{name}@example.com"
        btsguru("users", "create", email, "--password", "chaos-password", "--tier", tier,
                env=stack.env)
        keys[name] = btsguru("keys", "create", email, env=stack.env).strip().splitlines()[-1]
    return keys


def node(stack: Stack, url: str) -> Any:
    """What the Pusher client helpers need of a server."""
    return SimpleNamespace(port=int(url.rsplit(":", 1)[1]), http_url=url,
                           config=SimpleNamespace(reverb_app_key=stack.env.get(
                               "REVERB_APP_KEY", "btsguru-key")))


async def join_presence(server: Any, api_key: str) -> PusherClient:
    client = await PusherClient.connect(server)
    status, body = await realtime_auth(server, api_key, client.socket_id, PRESENCE)
    assert status == 200, body
    await client.subscribe(PRESENCE, body["auth"], body["channel_data"])
    await client.expect("pusher_internal:subscription_succeeded", PRESENCE)
    return client


async def hold_streams(session: aiohttp.ClientSession, url: str, api_key: str,
                       count: int) -> list[aiohttp.ClientWebSocketResponse] | None:
    """`count` WebSocket streams of one user, each admitted (it answers a ping); None
    (and nothing left open) when one is refused."""
    opened: list[aiohttp.ClientWebSocketResponse] = []
    ws_url = url.replace("http", "ws", 1) + f"/v1/ws?api_key={api_key}"
    for _ in range(count):
        try:
            ws = await session.ws_connect(ws_url, heartbeat=None)
            opened.append(ws)
            await ws.send_json({"op": "ping"})
            reply = await ws.receive(timeout=5)
            admitted = reply.type == aiohttp.WSMsgType.TEXT and \
                json.loads(reply.data).get("op") == "pong"
        except aiohttp.ClientError:
            admitted = False
        if not admitted:
            for each in opened:
                await each.close()
            return None
    return opened


async def chaos(stack: Stack, servers: dict[int, tuple[Any, str]],
                users: dict[str, str]) -> dict[str, Any]:
    (pid_a, (_proc_a, url_a)), (pid_b, (_proc_b, url_b)) = servers.items()
    async with aiohttp.ClientSession() as session:
        clients = [Resumer(kind, [url, other], stack.api_key)
                   for url, other in ((url_a, url_b), (url_b, url_a))
                   for kind in ["ws"] * WS_PER_SERVER + ["sse"] * SSE_PER_SERVER]
        for client in clients:
            client.start(session)
        pusher: list[PusherClient] = []
        held: list[aiohttp.ClientWebSocketResponse] = []
        try:
            await wait_until(lambda: all(c.subscribed.is_set() for c in clients), 30,
                             "every client subscribed", interval_s=STACK_INTERVAL_S)
            # the leases' holder is the process to kill (the other has no task to move)
            holders = await lease_holders(stack)
            poller_leases = {name for name in holders if name != "alerter"}
            assert poller_leases, holders
            doomed = holder_pid(holders[min(poller_leases)][0])
            assert {holder_pid(holders[n][0]) for n in poller_leases} == {doomed}, holders
            survivor = pid_b if doomed == pid_a else pid_a
            doomed_proc, doomed_url = servers[doomed]
            survivor_url = servers[survivor][1]
            member = await join_presence(node(stack, doomed_url), users["member"])
            watcher = await join_presence(node(stack, survivor_url), users["watcher"])
            pusher += [member, watcher]
            slots_held = await hold_streams(session, doomed_url, users["limited"],
                                            FREE_STREAMS)
            assert slots_held is not None, "the free user's streams were refused"
            held += slots_held
            refused = await hold_streams(session, survivor_url, users["limited"], 1)
            assert refused is None, "a stream over the tier limit was admitted"
            await wait_until(lambda: all(c.events >= EVENTS_BEFORE for c in clients), 60,
                             "events before the kill", interval_s=STACK_INTERVAL_S)

            moved = [c for c in clients if c.urls[0] == doomed_url]
            doomed_proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(doomed_proc.wait, 10)
            killed_at = time.monotonic()
            # each measured from the kill, all at once
            lease_s, presence_s, slot_s, resume_s = await asyncio.gather(
                wait_until(lambda: leases_on(stack, survivor, poller_leases), LEASE_BOUND_S,
                           "the leases moved to the survivor", interval_s=STACK_INTERVAL_S),
                member_removed(watcher, killed_at),
                wait_until(lambda: streams_admitted(session, survivor_url, users["limited"],
                                                    held), SLOT_BOUND_S,
                           "the dead process's stream slots reaped", interval_s=0.5),
                wait_until(lambda: all(c.urls[0] == survivor_url and c.dropped_at is None
                                       and c.resume_s for c in moved),
                           RESUME_BOUND_S, "the dead server's clients resumed elsewhere",
                           interval_s=STACK_INTERVAL_S))
            counts = {id(c): c.events for c in clients}
            await wait_until(lambda: all(c.events >= counts[id(c)] + EVENTS_AFTER
                                         for c in clients), 60, "events after the kill",
                             interval_s=STACK_INTERVAL_S)
        finally:
            for client in clients:
                await client.stop()
            for socket in pusher:
                socket.close()
            for ws in held:
                await ws.close()
    assert alive(survivor) and servers[survivor][0].poll() is None, "the survivor died"
    return check(clients, moved, lease_s, presence_s, slot_s, resume_s)


async def leases_on(stack: Stack, pid: int, names: set[str]) -> bool:
    holders = await lease_holders(stack)
    return all(name in holders and holder_pid(holders[name][0]) == pid for name in names)


async def member_removed(watcher: PusherClient, killed_at: float) -> float:
    """Seconds from the kill to the survivor's member hearing `member_removed`."""
    await watcher.recv_until(lambda m: m.get("event") == "pusher_internal:member_removed",
                             PRESENCE_BOUND_S)
    return time.monotonic() - killed_at


async def streams_admitted(session: aiohttp.ClientSession, url: str, api_key: str,
                           held: list[aiohttp.ClientWebSocketResponse]) -> bool:
    """The free user holds its whole allowance on the survivor (kept open in `held`)."""
    opened = await hold_streams(session, url, api_key, FREE_STREAMS)
    if opened is None:
        return False
    held += opened
    return True


def check(clients: list[Resumer], moved: list[Resumer], lease_s: float, presence_s: float,
          slot_s: float, resume_s: float) -> dict[str, Any]:
    missing = disorder = 0
    for client in clients:
        m, d = gaps(client.seqs)
        missing += m
        disorder += d
    figures: dict[str, Any] = {
        "clients": len(clients), "moved": len(moved),
        "events_checked": sum(c.events for c in clients),
        "gaps": missing, "out_of_order": disorder,
        "snapshots": sum(c.snapshots for c in clients),
        "not_recovered": sum(1 for c in clients for r in c.recovered if not r),
        "resume_s_max": round(max((s for c in moved for s in c.resume_s), default=0.0), 2),
        "all_resumed_after_s": round(resume_s, 2),
        "lease_move_s": round(lease_s, 2), "lease_bound_s": LEASE_BOUND_S,
        "presence_reap_s": round(presence_s, 2), "presence_bound_s": PRESENCE_BOUND_S,
        "slot_reap_s": round(slot_s, 2), "slot_bound_s": SLOT_BOUND_S,
        "stream_ends": sorted({why for c in clients for why in c.ends}),
    }
    print(f"\nchaos process: {figures}")
    assert missing == 0 and disorder == 0, figures
    assert figures["snapshots"] == 0 and figures["not_recovered"] == 0, figures
    assert all(c.resume_s for c in moved), "a client of the dead server never resumed"
    return figures
