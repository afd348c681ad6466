"""Fan-out: many connected stream clients, one event at a time.

For each row a fresh `btsguru serve --no-pollers` (one process) is started, N clients
connect from other processes (`CLIENTS_PER_PROCESS` asyncio clients each, aiohttp) and
subscribe to one game channel, then events are published into the history and the bus
exactly as the Pusher HTTP API publishes them (`EventHistory.append`: XADD + PUBLISH in
one script). Measured:

- latency: from just before the publish (the event reaches the bus within a Redis round
  trip of it) to the moment the *last* of the N clients has it, read by each client
  process's clock (one machine, one clock); median and p99 over the events. It includes
  the clients' own scheduling: on a small machine the clients share the CPU with the
  server.
- memory: the server's resident set after all clients are connected and subscribed,
  minus before, divided by N.
- server CPU per event: the server process's CPU time while the events are published,
  divided by their number: the fan-out's own cost, free of the clients' scheduling.

CI size: 200 WebSocket and 100 SSE clients. `--full`: 1,000 and 5,000 WebSocket clients
and 1,000 SSE clients.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Processes, btsguru, free_port, processes, report, wait_http

CLIENTS_PER_PROCESS = 250
CHANNEL = "sports.football.999999.1"  # a game no poller knows: only our events flow on it
EVENT = "game.updated"
CONNECT_CONCURRENCY = 50  # per client process: connection attempts in flight at once


# -- the client processes --

def client_main(kind: str, url: str, count: int, ready: Any, done: Any, results: Any) -> None:
    asyncio.run(_clients(kind, url, count, ready, done, results))


async def _clients(kind: str, url: str, count: int, ready: Any, done: Any,
                   results: Any) -> None:
    import aiohttp

    seen: dict[int, list[float]] = {}  # event n -> [received, last receive time]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    stop = asyncio.Event()

    def got(n: int) -> None:
        now = time.time()
        entry = seen.setdefault(n, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], now)

    async def ws_client(session: aiohttp.ClientSession) -> None:
        async with gate:
            ws = await session.ws_connect(url, autoping=True, max_msg_size=0)
            await ws.send_str(json.dumps({"op": "subscribe", "channels": [CHANNEL]}))
        try:
            async for message in ws:
                data = json.loads(message.data)
                if data.get("op") == "subscribed":
                    ready.put(1)
                elif data.get("event") == EVENT:
                    got(data["data"]["n"])
        finally:
            await ws.close()

    async def sse_client(session: aiohttp.ClientSession) -> None:
        async with gate:
            response = await session.get(url, timeout=aiohttp.ClientTimeout(total=None))
        try:
            async for line in response.content:
                if line.startswith(b": subscribed"):
                    ready.put(1)
                elif line.startswith(b"data: "):
                    got(json.loads(line[6:])["n"])
        finally:
            response.close()

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = ws_client if kind == "ws" else sse_client
        tasks = [asyncio.create_task(client(session)) for _ in range(count)]
        loop = asyncio.get_running_loop()
        waiter = loop.run_in_executor(None, done.wait)
        waiter.add_done_callback(lambda _f: stop.set())
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    results.put(seen)


# -- the server --

def start_server(group: Processes) -> tuple[dict[str, str], int, subprocess.Popen[bytes], str]:
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-fanout-"))
    env = {
        "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_CACHE_PREFIX": f"btgbench:fanout:{os.getpid()}:{time.monotonic_ns()}:",
        "RAPIDAPI_KEY": "bench", "SECRET_KEY": "bench-secret-key-0123456789",
        "LOG_LEVEL": "warning",
    }
    btsguru("migrate", env=env)
    btsguru("users", "create", "fanout@example.com", "--password", "bench-password",
            "--tier", "enterprise", env=env)
    # measure the server, not the tier: lift enterprise's stream and rate limits
    subprocess.run([sys.executable, "-c", (
        "import asyncio;from btsguru.db import connect_database;from btsguru.db.runner import "
        "DatabaseRunner;from btsguru.auth.tiers import TierService;"
        f"r=DatabaseRunner(connect_database('{env['DATABASE_URL']}'));"
        "asyncio.run(TierService(r).update('enterprise', rest_rate=10**9, rest_period_s=1, "
        "rest_burst=10**9, daily_quota=None, max_streams=10**6));r.close()")],
        check=True, env={**os.environ, **env})
    key = btsguru("keys", "create", "fanout@example.com", env=env).strip().splitlines()[-1]
    port = free_port()
    server = group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port),
                          "--no-pollers"], env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return env, port, server, key


def cpu_s(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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


def measure(kind: str, total: int, events: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with processes() as group:
        env, port, server, key = start_server(group)
        time.sleep(1.0)  # let the server settle before the baseline
        before = rss_bytes(server.pid)
        if kind == "ws":
            url = f"ws://127.0.0.1:{port}/v1/ws?api_key={key}"
        else:
            url = f"http://127.0.0.1:{port}/v1/stream?channels={CHANNEL}&api_key={key}"
        ready, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [min(CLIENTS_PER_PROCESS, total - at)
                  for at in range(0, total, CLIENTS_PER_PROCESS)]
        workers = [ctx.Process(target=client_main, args=(kind, url, n, ready, done, results))
                   for n in shares]
        for worker in workers:
            worker.start()
        try:
            connected, deadline = 0, time.monotonic() + 60 + total / 20
            while connected < total:
                connected += ready.get(timeout=max(0.1, deadline - time.monotonic()))
            time.sleep(2.0)  # idle: what the connections cost at rest
            after = rss_bytes(server.pid)
            # far enough apart that each fan-out (and the clients' reading of it) is over
            # before the next event: this measures latency, not throughput
            spacing_s = max(0.2, total / 2000)
            cpu_before = cpu_s(server.pid)
            sent = asyncio.run(publish(env, events, spacing_s))
            time.sleep(max(2.0, 4 * spacing_s))
            server_cpu_ms = (cpu_s(server.pid) - cpu_before) * 1000 / events
            done.set()
            merged: dict[int, list[float]] = {}
            for _ in workers:
                for n, (count, last) in results.get(timeout=60).items():
                    entry = merged.setdefault(n, [0, 0.0])
                    entry[0] += count
                    entry[1] = max(entry[1], last)
        finally:
            done.set()
            for worker in workers:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.terminate()
    latencies = sorted((merged[n][1] - sent[n]) * 1000 for n in sent if n in merged)
    delivered = min((merged.get(n, [0, 0.0])[0] for n in sent), default=0)
    return {
        "transport": "WebSocket" if kind == "ws" else "SSE",
        "clients": total, "events": len(sent),
        "delivered (min per event)": int(delivered),
        "last client p50 ms": statistics.median(latencies),
        "last client p99 ms": latencies[min(len(latencies) - 1,
                                            round(0.99 * (len(latencies) - 1)))],
        "RSS per idle conn KiB": (after - before) / total / 1024,
        "server CPU ms/event": server_cpu_ms,
    }


def run(full: bool) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16_384 if full else 4096
    if soft < wanted:  # the server and the client processes inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    sizes = [("ws", 1000), ("ws", 5000), ("sse", 1000)] if full else [("ws", 200), ("sse", 100)]
    events = 25 if full else 20
    rows = []
    for kind, total in sizes:
        row = measure(kind, total, events)
        print(f"  {row['transport']} x{total}: p50 {row['last client p50 ms']:.1f} ms, "
              f"p99 {row['last client p99 ms']:.1f} ms, "
              f"{row['RSS per idle conn KiB']:.1f} KiB/conn", flush=True)
        rows.append(row)
    # full runs keep their own file, so that the CI-size test does not overwrite them
    report("fanout_full" if full else "fanout", rows,
           {"clients_per_process": CLIENTS_PER_PROCESS, "channel": CHANNEL, "full": full})
