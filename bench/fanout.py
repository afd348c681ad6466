"""Fan-out: many connected stream clients, one event at a time, against a reference.

Each row starts a fresh server — btsguru (`serve --no-pollers`, one or more processes)
or the reference, a minimal Node `ws` broadcast server (`bench/node/ws_reference.js`)
following the same Redis channel — connects N clients from other processes
(`bench/clients.py`: raw asyncio protocols, the same for every server), subscribes them
to one game channel, and publishes events into the history and the bus exactly as the
Pusher HTTP API does (`EventHistory.append`: XADD + PUBLISH in one script). Measured:

- latency: from just before the publish (the event reaches the bus within a Redis round
  trip of it) to the moment the *last* of the N clients has it, by one clock (one
  machine); median and p99 over the events. It includes the clients' own scheduling: on
  a small machine the clients share the CPU with the server, for every server alike.
- memory: the server's resident set (all its processes) after all clients are connected
  and subscribed, minus before, divided by N.
- server CPU per event: the server's CPU time while the events are published, divided
  by their number: the fan-out's own cost, free of the clients' scheduling.
- delivery: every client gets every event once and in order (the seq check).

The targets (issue 9): WebSocket at 5,000 clients p50 <= 1.2x and p99 <= 1.0x the
reference's; 10,000 clients over 2 processes p99 <= the reference's p99 at 5,000; SSE
p99 <= 1.5x WebSocket at 2,000; memory per connection <= 16 KiB (WebSocket, at 10,000),
<= 20 KiB (SSE), <= 24 KiB (WebSocket with permessage-deflate).

CI size runs every row with a few hundred clients; `--full` at the targets' sizes.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import Tally, client_main, merge, stop_all
from bench.harness import (
    RESULTS,
    ROOT,
    Processes,
    bench_user,
    free_port,
    node_packages,
    processes,
    report,
    wait_http,
)

CHANNEL = "sports.football.999999.1"  # a game no poller knows: only our events flow on it
EVENT = "game.updated"
IDLE_S = 4.0  # connected, subscribed and quiet: memory and CPU at rest
NODE_DIR = ROOT / "bench" / "node"


@dataclass(frozen=True)
class Case:
    label: str
    server: str  # "btsguru" or "node-ws"
    kind: str  # "ws" or "sse"
    clients: int
    processes: int = 1
    deflate: bool = False
    # btsguru settings over the row's own (environment variables; `bench.topologies`
    # points the server at a Sentinel set or a Cluster this way)
    settings: tuple[tuple[str, str], ...] = ()
    # with a DATABASE_URL in `settings`: the key of a user `bench_user` made there already
    # (rows that share one database skip making it again)
    api_key: str = ""


# -- servers --

@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]


def _btsguru_env() -> dict[str, str]:
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-fanout-"))
    return {
        "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_CACHE_PREFIX": f"btgbench:fanout:{os.getpid()}:{time.monotonic_ns()}:",
        "RAPIDAPI_KEY": "bench", "SECRET_KEY": "bench-secret-key-0123456789",
        "LOG_LEVEL": "warning",
    }


def start_btsguru(group: Processes, case: Case) -> Server:
    env = {**_btsguru_env(), **dict(case.settings)}
    key = case.api_key or bench_user(env, "fanout@example.com", max_streams=10**6)
    port = free_port()
    process = group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port),
                           "--processes", str(case.processes), "--no-pollers"], env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    if case.kind == "ws":
        url = f"ws://127.0.0.1:{port}/v1/ws?api_key={key}"
    else:
        url = f"http://127.0.0.1:{port}/v1/stream?channels={CHANNEL}&api_key={key}"
    return Server(process, url, env)


def node_modules() -> Path:
    """`ws` for the reference, installed on first use (git ignores node_modules)."""
    return node_packages(NODE_DIR, "ws")


def start_node_ws(group: Processes, case: Case) -> Server:
    import redis.asyncio as aioredis

    from btsguru.config import load_config
    from btsguru.store.bus import RedisBus
    from btsguru.store.redis import Keys

    node = node_modules()
    env = _btsguru_env()
    keys = Keys(load_config(environ=env, env_file=None).redis_cache_prefix)
    # the channel btsguru's bus publishes this game's events on (no connection is made)
    channel = RedisBus(aioredis.Redis(), keys).redis_channel(CHANNEL)
    port = free_port()
    process = group.start([str(node), str(NODE_DIR / "ws_reference.js"), str(port), "6379",
                           str(channel)])
    wait_http(f"http://127.0.0.1:{port}/")
    return Server(process, f"ws://127.0.0.1:{port}/v1/ws", env)


STARTERS: dict[str, Callable[[Processes, Case], Server]] = {
    "btsguru": start_btsguru, "node-ws": start_node_ws}


# -- measuring --

def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a forked server's workers)."""
    pids, at = [pid], 0
    while at < len(pids):
        for task in Path(f"/proc/{pids[at]}/task").glob("*"):
            try:
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        at += 1
    return pids


def cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU time of the process and its descendants."""
    user = system = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, system


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


async def publish(env: dict[str, str], events: int, spacing_s: float) -> dict[int, float]:
    from btsguru.config import load_config
    from btsguru.store.bus import RedisBus
    from btsguru.store.history import EventHistory
    from btsguru.store.redis import open_redis

    stores = open_redis(load_config(environ=env, env_file=None))
    bus = RedisBus(stores.reverb, stores.keys)
    history = EventHistory(stores, bus)
    sent: dict[int, float] = {}
    try:
        for n in range(events):
            sent[n] = time.time()
            await history.append("football", EVENT, CHANNEL,
                                 {"sport": "football", "league_id": 999999, "game_id": 1,
                                  "n": n, "changes": {"home.score": n}})
            await asyncio.sleep(spacing_s)
    finally:
        await bus.close()
        await stores.close()
    return sent


def measure(case: Case, events: int, per_process: int, idle_s: float = IDLE_S,
            subscribe: str = CHANNEL) -> dict[str, Any]:
    """`subscribe`: the channels each WebSocket client subscribes to (comma-separated;
    an SSE client's are in its URL); the events are published on `CHANNEL`."""
    ctx = mp.get_context("spawn")
    with processes() as group:
        server = STARTERS[case.server](group, case)
        time.sleep(1.0)  # let the server settle before the baseline
        before = rss_bytes(server.process.pid)
        ready, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [min(per_process, case.clients - at)
                  for at in range(0, case.clients, per_process)]
        workers = [ctx.Process(target=client_main, args=(
            case.kind, server.url, subscribe, n, case.deflate, ready, done, results))
            for n in shares]
        for worker in workers:
            worker.start()
        tallies: list[Tally] = []
        try:
            connected, deadline = 0, time.monotonic() + 60 + case.clients / 50
            while connected < case.clients:
                connected += ready.get(timeout=max(0.1, deadline - time.monotonic()))
            idle_before = cpu_s(server.process.pid)
            time.sleep(idle_s)  # idle: what the connections cost at rest
            idle_after = cpu_s(server.process.pid)
            after = rss_bytes(server.process.pid)
            # far enough apart that each fan-out (and the clients' reading of it) is over
            # before the next event: this measures latency, not throughput
            spacing_s = max(0.25, case.clients / 10_000)
            cpu_before = cpu_s(server.process.pid)
            profiler = profile(group, server, case)
            sent = asyncio.run(publish(server.env, events, spacing_s))
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
            time.sleep(max(1.0, 2 * spacing_s))
            cpu_after = cpu_s(server.process.pid)
            user_ms, system_ms = ((b - a) * 1000 / events for a, b in zip(cpu_before, cpu_after,
                                                                           strict=True))
            done.set()
            tallies = [results.get(timeout=60) for _ in workers]
        finally:
            stop_all(workers, done)
    merged = merge(tallies)
    in_order = [round((merged[n][1] - sent[n]) * 1000, 1) for n in sent if n in merged]
    latencies = sorted(in_order)
    delivered = min((merged.get(n, [0, 0.0])[0] for n in sent), default=0)
    return {
        "case": case.label, "server": case.server, "clients": case.clients,
        "processes": case.processes, "events": len(sent),
        "delivered (min per event)": int(delivered),
        "failed": sum(t.failed for t in tallies),
        "out of order": sum(t.out_of_order for t in tallies),
        "p50 ms": statistics.median(latencies) if latencies else float("nan"),
        "p99 ms": percentile(latencies, 0.99),
        "max ms": latencies[-1] if latencies else float("nan"),
        "KiB/conn": (after - before) / case.clients / 1024,
        "idle CPU %": (sum(idle_after) - sum(idle_before)) / idle_s * 100,
        "CPU ms/event": user_ms + system_ms,
        "_latencies": in_order,
        "of which system": system_ms,
    }


def profile(group: Processes, server: Server, case: Case) -> subprocess.Popen[bytes] | None:
    """With FANOUT_PROFILE set, py-spy samples btsguru while the events are published
    (collapsed stacks in bench/results/, for `py-spy`'s or any flame graph viewer)."""
    if not os.environ.get("FANOUT_PROFILE") or case.server != "btsguru":
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"fanout-{case.kind}-{case.clients}.collapsed"
    pids = tree(server.process.pid)
    return group.start([spy, "record", "--pid", str(pids[-1]), "--format", "raw",
                        "--rate", "500", "--nonblocking", "-o", str(out)])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# -- the scenario --

def cases(full: bool) -> list[Case]:
    big, mid, huge = (5000, 2000, 10_000) if full else (200, 100, 300)
    return [
        Case(f"node ws x{big} (reference)", "node-ws", "ws", big),
        Case(f"WebSocket x{big}", "btsguru", "ws", big),
        Case(f"WebSocket x{huge}, 2 processes", "btsguru", "ws", huge, processes=2),
        Case(f"WebSocket x{huge}", "btsguru", "ws", huge),
        Case(f"WebSocket+deflate x{big}", "btsguru", "ws", big, deflate=True),
        Case(f"WebSocket x{mid}", "btsguru", "ws", mid),
        Case(f"SSE x{mid}", "btsguru", "sse", mid),
    ]


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each next to its reference and the measured figure."""
    by = {row["case"]: row for row in rows}
    ref, ws_big, ws_2p, ws_huge, deflate, ws_mid, sse = (by[c.label] for c in CASES)

    def target(name: str, measured: float, limit: float, reference: str) -> dict[str, Any]:
        return {"target": name, "reference": reference, "limit": limit, "measured": measured,
                "met": bool(measured <= limit)}

    return [
        target(f"WS p50 x{ws_big['clients']} (ms)", ws_big["p50 ms"], 1.2 * ref["p50 ms"],
               f"1.2 x node ws p50 {ref['p50 ms']:.1f}"),
        target(f"WS p99 x{ws_big['clients']} (ms)", ws_big["p99 ms"], ref["p99 ms"],
               f"node ws p99 {ref['p99 ms']:.1f}"),
        target(f"WS p99 x{ws_2p['clients']} over 2 processes (ms)", ws_2p["p99 ms"],
               ref["p99 ms"], f"node ws p99 at {ref['clients']} {ref['p99 ms']:.1f}"),
        target(f"SSE p99 x{sse['clients']} (ms)", sse["p99 ms"], 1.5 * ws_mid["p99 ms"],
               f"1.5 x WS p99 {ws_mid['p99 ms']:.1f}"),
        target(f"WS memory at {ws_huge['clients']} (KiB/conn)", ws_huge["KiB/conn"], 16.0,
               "16 KiB (Centrifugo: 27)"),
        target(f"SSE memory at {sse['clients']} (KiB/conn)", sse["KiB/conn"], 20.0, "20 KiB"),
        target(f"WS+deflate memory at {deflate['clients']} (KiB/conn)", deflate["KiB/conn"],
               24.0, "24 KiB"),
    ]


CASES: list[Case] = []


def run(full: bool) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 32_768 if full else 4096
    if soft < wanted:  # the servers and the client processes inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    CASES[:] = cases(full)
    events = 40 if full else 15
    per_process = 1250 if full else 100
    # FANOUT_ONLY: comma-separated substrings of labels, to rerun some rows
    only = [o for o in os.environ.get("FANOUT_ONLY", "").split(",") if o]
    rows = []
    for case in CASES:
        if only and not any(o in case.label for o in only):
            continue
        row = measure(case, events, per_process)
        print(f"  {case.label}: p50 {row['p50 ms']:.1f} ms, p99 {row['p99 ms']:.1f} ms, "
              f"{row['KiB/conn']:.1f} KiB/conn, {row['CPU ms/event']:.1f} CPU ms/event",
              flush=True)
        rows.append(row)
    extra: dict[str, Any] = {"clients_per_process": per_process, "channel": CHANNEL,
                             "full": full}
    if len(rows) == len(CASES):
        extra["targets"] = judge(rows)
        print()
        for t in extra["targets"]:
            print(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {t['measured']:.1f} "
                  f"(limit {t['limit']:.1f}; {t['reference']})")
    # full runs keep their own file, so that the CI-size test does not overwrite them
    # each event's latency, in publish order, beside the table rather than in it
    extra["latencies_ms"] = {row["case"]: row.pop("_latencies") for row in rows}
    report("fanout_full" if full else "fanout", rows, extra)
