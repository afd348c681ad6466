"""End to end (issue 9, target 7): from the simulator's change to the last of N clients,
p99 <= the sport's live cadence + 150 ms.

The simulator and `btsguru serve` with its pollers start as a user starts them
(`harness.start_stack`); N WebSocket clients in other processes (`bench/clients.py`, kind
`ws-seq`) subscribe to the sport channels `sports.football`, `sports.basketball` and
`sports.hockey` (every game of those sports) and note when each `(game_id, seq)` reaches
them; each client process reports, per event, how many of its clients got it and when
the last one did. This process follows the same events on the bus (a Redis subscriber,
like any other process of the relay), so each latency splits into change -> bus event
(the poll: up to a cadence by design, since the change can land just after a poll) and
bus event -> last client (the fan-out).

When the simulator made a change is known exactly: it runs at real speed, and its games
are a pure function of its seed and the clock, so this process rebuilds the same
schedule (`Schedule(Catalog(seed))`) and finds, for each score or status event, the
moment the simulator started showing what the event says (as `bench/pollers.py` does).
Counted: the changes made inside the window whose event reached the bus (the bus is
followed for a cadence longer than the window, so late polls are not cut off).

CI size: 200 clients, 25 s window; `--full`: 5,000 clients, 180 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.clients import Tally, client_main, merge, stop_all
from bench.harness import processes, report, start_stack

SPORTS = ("football", "basketball", "hockey")  # the ones whose live games change often
CHANNELS = ",".join(f"sports.{sport}" for sport in SPORTS)
MEGA_DAILY_QUOTA = 150_000  # API-Sports' Mega plan, per sport...
MEGA_MINUTE_QUOTA = 900  # ...and per minute
SIMULATOR_SEED = 1  # `btsguru simulate`'s default, which `start_stack` uses
MEASURED = ("game.score", "game.status", "game.started", "game.finished")
FAN_OUT_BUDGET_S = 0.150  # the bound: the sport's cadence + 150 ms
SETTLE_S = 5.0  # after the clients connect: the first polls' burst is over


def run(full: bool) -> None:
    clients = 5000 if full else 200
    window_s = 180.0 if full else 25.0
    # the simulator's games are quiet for minutes at times: a CI-size run follows on
    # (up to this long) until it has seen a change to measure
    longest_s = window_s if full else 120.0
    per_process = 1250 if full else 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 32_768 if full else 4096
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    rows, extra = measure(clients, window_s, per_process, longest_s)
    for row in rows:
        print(f"  {row['sport']}: {row['changes']} changes, p99 {row['p99 s']} s "
              f"(bound {row['bound s']} s): {row['pass']}")
    report("e2e_full" if full else "e2e", rows, extra)


def measure(clients: int, window_s: float, per_process: int, longest_s: float
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from btsguru.config import load_config
    from btsguru.pollers.cadence import CadenceSettings

    ctx = mp.get_context("spawn")
    began = time.monotonic()
    with processes() as group:
        # the simulator has every sport live around the clock, which would stretch a
        # Pro plan's cadences to fit the day (the `economy` scenario's subject): a Mega
        # plan's quota keeps the configured live cadences, this scenario's bound
        stack = start_stack(group, pollers=True, max_streams=10**6,
                            settings={"UPSTREAM_DAILY_QUOTA": str(MEGA_DAILY_QUOTA),
                                      "UPSTREAM_MINUTE_QUOTA": str(MEGA_MINUTE_QUOTA)})
        print(f"  stack up in {time.monotonic() - began:.1f} s", flush=True)
        settings = CadenceSettings.from_config(load_config(environ=stack.env, env_file=None))
        cadence_s = {sport: settings.live[sport].live_s for sport in SPORTS}
        url = f"{stack.base_url.replace('http', 'ws', 1)}/v1/ws?api_key={stack.api_key}"
        ready, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [min(per_process, clients - at) for at in range(0, clients, per_process)]
        workers = [ctx.Process(target=client_main, args=(
            "ws-seq", url, CHANNELS, n, False, ready, done, results)) for n in shares]
        tallies: list[Tally] = []
        try:
            for worker in workers:
                worker.start()
            connected, deadline = 0, time.monotonic() + 60 + clients / 50
            while connected < clients:
                connected += ready.get(timeout=max(0.1, deadline - time.monotonic()))
            print(f"  {clients} clients subscribed at {time.monotonic() - began:.1f} s",
                  flush=True)
            time.sleep(SETTLE_S)
            since = time.time()
            margin_s = max(cadence_s.values()) + 2.0  # a change near the end is polled
            received = asyncio.run(follow_bus(stack.env, window_s + margin_s,
                                              longest_s + margin_s))
            window_s = max(window_s, (received[-1][0] if received else since) - since)
            time.sleep(1.0)  # the last event's fan-out
            done.set()
            tallies = [results.get(timeout=60) for _ in workers]
            print(f"  measured at {time.monotonic() - began:.1f} s", flush=True)
        finally:
            stop_all(workers, done)
    merged = merge(tallies)
    samples = match(received, merged, since, since + window_s)
    rows = [_row(sport, samples.get(sport, []), cadence_s[sport], clients)
            for sport in SPORTS]
    extra = {"clients": clients, "window_s": window_s, "channels": CHANNELS,
             "clients_per_process": per_process, "failed": sum(t.failed for t in tallies),
             "out_of_order": sum(t.out_of_order for t in tallies),
             "bus_events": len(received),
             "samples": {sport: [list(s) for s in values] for sport, values in samples.items()}}
    return rows, extra


async def follow_bus(env: dict[str, str], seconds: float, longest_s: float
                     ) -> list[tuple[float, Any]]:
    """Every event of the measured sports' channels, with the moment the bus gave it:
    for `seconds`, or on until a measured kind of event came (at most `longest_s`). This
    process follows the bus as another process of the relay would: the pollers' stack
    over the served stack's Redis, on a scratch database of its own, its pollers idle."""
    from btsguru.config import load_config
    from btsguru.pollers.stack import open_poller_stack
    from btsguru.store.bus import BusEvent

    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-e2e-"))
    config = load_config(environ={**env, "DATABASE_URL": f"sqlite:///{scratch / 'follow.db'}"},
                         env_file=None)
    received: list[tuple[float, BusEvent]] = []
    measured = asyncio.Event()

    def collect(_channel: str, event: BusEvent) -> None:
        received.append((time.time(), event))
        if event.event in MEASURED:
            measured.set()

    async with open_poller_stack(config, bus="redis") as stack:
        for sport in SPORTS:
            await stack.bus.subscribe(f"sports.{sport}", collect)
        await asyncio.sleep(seconds)
        if longest_s > seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(measured.wait(), longest_s - seconds)
    return received


def match(received: list[tuple[float, Any]], delivered: dict[Any, list[float]],
          start: float, end: float) -> dict[str, list[tuple[float, float, float, int]]]:
    """Per sport: (change -> bus, bus -> last client, change -> last client, clients that
    got it) for every change the simulator made in [start, end) that reached the bus."""
    from bench.pollers import _changed_at
    from btsguru.simulator.catalog import Catalog
    from btsguru.simulator.games import Schedule

    schedule = Schedule(Catalog(SIMULATOR_SEED))
    out: dict[str, list[tuple[float, float, float, int]]] = {}
    for at, event in received:
        if event.event not in MEASURED:
            continue
        sport = event.channel.split(".")[1]
        data = event.data
        game = schedule.game_by_id(sport, int(data["game_id"]), at)
        if game is None:
            continue
        changed_at = _changed_at(game, event.event, data["changes"], at)
        if changed_at is None or not start <= changed_at < end:
            continue
        got, last = delivered.get((int(data["game_id"]), int(data["seq"])), (0, 0.0))
        if not got:
            continue  # counted apart: `delivered` in the row shows the share that arrived
        out.setdefault(sport, []).append((at - changed_at, last - at, last - changed_at,
                                          int(got)))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(sport: str, samples: list[tuple[float, float, float, int]], cadence_s: float,
         clients: int) -> dict[str, Any]:
    bound_s = cadence_s + FAN_OUT_BUDGET_S
    if not samples:
        return {"sport": sport, "changes": 0, "delivered to all": "-", "p50 s": None,
                "p99 s": None, "change->bus p50 s": None, "change->bus p99 s": None,
                "bus->last p50 ms": None, "bus->last p99 ms": None, "cadence s": cadence_s,
                "bound s": round(bound_s, 3), "pass": "no changes"}
    poll = [s[0] for s in samples]
    fan = [s[1] * 1000 for s in samples]
    total = [s[2] for s in samples]
    complete = sum(1 for s in samples if s[3] == clients)
    p99 = percentile(total, 0.99)
    return {
        "sport": sport, "changes": len(samples),
        "delivered to all": f"{complete}/{len(samples)}",
        "p50 s": round(statistics.median(total), 3), "p99 s": round(p99, 3),
        "change->bus p50 s": round(statistics.median(poll), 3),
        "change->bus p99 s": round(percentile(poll, 0.99), 3),
        "bus->last p50 ms": round(statistics.median(fan), 1),
        "bus->last p99 ms": round(percentile(fan, 0.99), 1),
        "cadence s": cadence_s, "bound s": round(bound_s, 3),
        "pass": "yes" if p99 <= bound_s and complete == len(samples) else "NO",
    }
