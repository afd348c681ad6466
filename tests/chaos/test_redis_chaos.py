"""Redis restarted, and Redis unreachable, under load (issue 10, "Chaos: Redis").

A private `redis-server` (its append-only file synced on every write, as a production
Redis that is meant to survive a restart), the simulator sped up, `btsguru serve
--processes 2` with its pollers, WebSocket and SSE clients on `sports.basketball` that
resume from their last event id whenever their stream ends, and REST traffic. Then:

- restart: Redis is killed (SIGKILL), stays down `DOWN_S`, and starts again on the same
  port from its files;
- unreachable: Redis is frozen (SIGSTOP: connections open, nothing answers) for
  `FREEZE_S`, longer than the relay's Redis socket timeout, then thawed.

Asserted: no server process exits; every REST answer is JSON 200 (in-process cache or
Redis) or JSON 503, none slower than the Redis socket timeout plus 5 s; streams stay
open or end with a reconnect code and are resumed; events flow again after Redis
returns, and the pollers' leases are held (and renewed) by a live worker; every
client's `seq` per game is gap-free and in order from its first event to its last, with
no snapshot standing in for a replay; no traceback in the server's log. Figures go to
`bench/results/chaos-redis.json`. `CHAOS_LONG=1`: longer outages and more clients.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.harness import ChildLog, Stack, processes, report
from btsguru.pollers.lease import LEASE_RENEW_S, LEASE_TTL_S
from btsguru.store.history import EventHistory, HistoryEvent
from btsguru.store.redis import REDIS_SOCKET_TIMEOUT_S
from tests.chaos.redis_helpers import (
    LONG,
    REST_TIMEOUT_S,
    PrivateRedis,
    RestProbe,
    Resumer,
    alive,
    captured,
    children,
    gaps,
    holder_pid,
    id_ms,
    lease_holders,
    live_stack,
    private_redis,
)
from tests.conftest import make_test_config
from tests.realtime_helpers import WsClient, relay
from tests.waiting import STACK_INTERVAL_S, wait_until

DOWN_S = 15.0 if LONG else 3.0  # restart: how long Redis stays dead
FREEZE_S = 25.0 if LONG else 12.0  # unreachable: over the 10 s Redis socket timeout
WS_CLIENTS, SSE_CLIENTS = (40, 20) if LONG else (8, 4)
EVENTS_BEFORE = 5  # per client, before the fault: the match is under way
EVENTS_AFTER = 15 if LONG else 5  # per client, after recovery
RECONNECT_CODES = {"ws close 1012", "ws close 4010", "sse end"}  # the contract's "resume"
RECOVERY_BOUND_S = 30.0  # Redis back -> events flow and leases are held again
# The slowest REST answer: a Redis that does not answer holds a request until the Redis
# socket timeout, then it is the JSON 503.
REST_BOUND_S = REDIS_SOCKET_TIMEOUT_S + 5
pytestmark = pytest.mark.timeout(600 if LONG else 120)  # the long variants take minutes

RESULTS: dict[str, dict[str, Any]] = {}


async def test_redis_restart_under_load(tmp_path: Path) -> None:
    figures = await scenario(tmp_path, "restart")
    RESULTS["restart"] = figures
    write_results()


async def test_redis_unreachable_under_load(tmp_path: Path) -> None:
    figures = await scenario(tmp_path, "unreachable")
    RESULTS["unreachable"] = figures
    write_results()


async def scenario(tmp_path: Path, fault: str) -> dict[str, Any]:
    with private_redis(tmp_path, persistent=True) as redis, processes() as group:
        stack = await asyncio.to_thread(live_stack, group, redis.url, processes_n=2)
        server = group.children[-1]
        with captured(group) as logs:
            figures = await run_clients(redis, fault, stack, server, logs)
        assert not logs[-1].tracebacks(), "\n".join(logs[-1].tracebacks())
    return figures


async def run_clients(redis: PrivateRedis, fault: str, stack: Stack,
                      server: subprocess.Popen[bytes], logs: list[ChildLog]) -> dict[str, Any]:
    """Clients and REST traffic, the fault, the checks; the server survives it all."""
    workers = children(server.pid)
    assert len(workers) == 2, workers
    async with aiohttp.ClientSession() as session:
        clients = [Resumer(kind, [stack.base_url], stack.api_key)
                   for kind in ["ws"] * WS_CLIENTS + ["sse"] * SSE_CLIENTS]
        probe = RestProbe(stack.base_url, stack.api_key)
        for client in clients:
            client.start(session)
        try:
            await wait_until(lambda: all(c.subscribed.is_set() for c in clients), 30,
                             "every client subscribed", interval_s=STACK_INTERVAL_S)
            probe.start(session)
            await wait_until(lambda: all(c.events >= EVENTS_BEFORE for c in clients), 60,
                             "events before the fault", interval_s=STACK_INTERVAL_S)
            figures = await inject(redis, fault, clients, probe, stack, workers)
        except BaseException:
            print(f"server log (last lines):\n{logs[-1].tail()}")
            raise
        finally:
            for client in clients:
                await client.stop()
            await probe.stop()
    assert server.poll() is None, "the server exited"
    assert children(server.pid) == workers and all(alive(p) for p in workers), \
        f"a worker died: {workers} -> {children(server.pid)}"
    return figures


async def inject(redis: PrivateRedis, fault: str, clients: list[Resumer], probe: RestProbe,
                 stack: Stack, workers: list[int]) -> dict[str, Any]:
    """The fault, then the recovery checks; the figures."""
    poller_leases = {name for name in await lease_holders(stack) if name != "alerter"}
    assert poller_leases, "the pollers hold no lease before the fault"
    fault_at = time.time()
    if fault == "restart":
        redis.kill()
        await asyncio.sleep(DOWN_S)  # the outage itself, not a synchronisation
        redis.start()
    else:
        redis.freeze()
        await asyncio.sleep(FREEZE_S)
        redis.thaw()
    back_at = time.time()

    async def leases_held() -> bool:
        held = await lease_holders(stack)
        return all(name in held and holder_pid(held[name][0]) in workers and held[name][1] > 0
                   for name in poller_leases)

    # both measured from the moment Redis is back
    flow_s, lease_s = await asyncio.gather(
        wait_until(lambda: all(id_ms(c.last_id) > back_at * 1000 for c in clients),
                   RECOVERY_BOUND_S, "every client gets events published after Redis is back",
                   interval_s=STACK_INTERVAL_S),
        wait_until(leases_held, RECOVERY_BOUND_S, "the pollers' leases held again",
                   interval_s=STACK_INTERVAL_S))
    await leases_kept(stack, poller_leases, workers)
    counts = {id(c): c.events for c in clients}
    await wait_until(lambda: all(c.events >= counts[id(c)] + EVENTS_AFTER for c in clients),
                     60, "events after recovery", interval_s=STACK_INTERVAL_S)
    return check(fault, clients, probe, fault_at, back_at, flow_s, lease_s)


async def leases_kept(stack: Stack, names: set[str], workers: list[int]) -> None:
    """Each lease is held by a live worker at every look for longer than its TTL: so it
    was renewed (by its holder, or taken afresh by the other worker), not left to run
    out. (Comparing TTLs between two looks instead fails whenever the first look came
    right after a renewal.) The alerter's lease is left out: it changes hands by design."""
    deadline = time.monotonic() + LEASE_TTL_S + LEASE_RENEW_S
    while time.monotonic() < deadline:
        held = await lease_holders(stack)
        for name in names:
            assert name in held and holder_pid(held[name][0]) in workers \
                and held[name][1] > 0, f"lease {name} lapsed after Redis came back: {held}"
        await asyncio.sleep(0.25)  # sampling over the window, not a synchronisation


def check(fault: str, clients: list[Resumer], probe: RestProbe,
          fault_at: float, back_at: float, flow_s: float, lease_s: float) -> dict[str, Any]:
    missing = disorder = 0
    for client in clients:
        m, d = gaps(client.seqs)
        missing += m
        disorder += d
    ends = [why for c in clients for why in c.ends]
    during = [a for a in probe.answers if fault_at <= a[0] <= back_at]  # answered meanwhile
    figures: dict[str, Any] = {
        "fault": fault,
        "outage_s": round(back_at - fault_at, 2),
        "clients": len(clients),
        "events_checked": sum(c.events for c in clients),
        "gaps": missing, "out_of_order": disorder,
        "snapshots": sum(c.snapshots for c in clients),
        "stream_ends": sorted(set(ends)), "reconnects": len(ends),
        "ws_errors": sorted({code for c in clients for code in c.errors}),
        "resume_s_max": round(max((s for c in clients for s in c.resume_s), default=0.0), 2),
        "not_recovered": sum(1 for c in clients for r in c.recovered if not r),
        "events_again_after_s": round(flow_s, 2),
        "leases_held_after_s": round(lease_s, 2),
        "rest": probe.summary(),
        "rest_during_outage": RestProbe(probe.base_url, probe.api_key,
                                        answers=during).summary(),
    }
    print(f"\nchaos redis {fault}: {figures}")
    assert not probe.bad(), probe.bad()[:5]
    assert figures["rest"]["slowest_s"] <= REST_BOUND_S, figures
    assert missing == 0 and disorder == 0, figures
    assert figures["snapshots"] == 0 and figures["not_recovered"] == 0, figures
    assert set(ends) <= RECONNECT_CODES, figures
    assert set(figures["ws_errors"]) <= {"unavailable"}, figures  # never internal_error
    return figures


def write_results() -> None:
    rows = [{"fault": name, **{k: v for k, v in f.items()
                               if not isinstance(v, dict | list)}}
            for name, f in RESULTS.items()]
    report("chaos-redis", rows, {"runs": RESULTS, "long": LONG})


async def test_rest_and_streams_answer_json_while_redis_is_down(tmp_path: Path) -> None:
    """The quick form (one process, no load): with Redis dead, REST that needs Redis is
    the JSON 503 with `Retry-After`, never a 500 or a page, and a new stream is told to
    come back (1012), not left hanging; once Redis is back both work again."""
    with private_redis(tmp_path, persistent=True) as redis:
        config = make_test_config(tmp_path, REDIS_URL=redis.url)
        async with relay(tmp_path, config) as r, aiohttp.ClientSession() as session:
            headers = {"X-API-Key": r.keys["pro"]}
            paths = ("/v1/football/games", "/v1/football/games/1", "/v1/usage")
            before = [await json_get(session, r.http_url + path, headers) for path in paths]
            redis.kill()
            down = [await json_get(session, r.http_url + path, headers) for path in paths]
            ws = await WsClient.connect(r.ws_url, r.keys["pro"])
            await ws.subscribe("sports.football")
            code = await ws.closed(timeout_s=15)
            redis.start()

            async def answers() -> bool:
                return (await json_get(session, r.http_url + paths[0], headers))[0] == 200

            await wait_until(answers, 30, "REST answers 200 again once Redis is back",
                             interval_s=STACK_INTERVAL_S)
    assert [status for status, _body, _retry in before] == [200, 404, 200], before
    for status, body, retry_after in down:
        assert status == 503 and body["error"]["code"] == "unavailable", down
        assert retry_after is not None and int(retry_after) > 0, down
        assert "Traceback" not in str(body), body
        # the driver's text ("Error 111 connecting to 127.0.0.1:PORT") names hosts and ports
        assert str(redis.port) not in body["error"]["message"], body
        assert "connect" not in body["error"]["message"].lower(), body
    assert code == 1012


async def json_get(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   ) -> tuple[int, Any, str | None]:
    """(status, JSON body, Retry-After); fails on an answer that is not JSON."""
    async with session.get(url, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_S)) as response:
        assert "json" in response.headers.get("Content-Type", ""), await response.text()
        return response.status, await response.json(), response.headers.get("Retry-After")


async def test_what_the_bus_missed_comes_before_the_next_live_event(tmp_path: Path) -> None:
    """The order that lost events under load (CHAOS_LONG restart): after a reconnect the
    bus announces it, then at once delivers what the new connection already read. The
    hub must hold that event until the history has filled the gap before it, or the
    subscription's position jumps past the missed events and the replay skips them."""
    async with relay(tmp_path) as r:
        unpublished = EventHistory(r.services.redis)  # appends that the bus never carries
        channel = "sports.football.39.1001"

        async def event(seq: int) -> HistoryEvent:
            return await unpublished.append("football", "game.updated", channel,
                                            {"game_id": 1001, "seq": seq})

        await event(0)  # the history the subscription starts from
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football")
        await ws.recv()  # subscribed
        missed = [await event(1), await event(2)]
        live = await event(3)
        r.services.hub._on_bus_reconnect()  # what `RedisBus` does, in this order
        r.services.hub._on_bus_event("sports.football", live.to_bus_event())
        got = [await ws.recv() for _ in range(3)]
        ws.close()
    assert [m and m["id"] for m in got] == [e.id for e in (*missed, live)], got
