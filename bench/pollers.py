"""The pollers against the simulator with every sport live, at the real cadences: upstream
requests per hour per sport, and the time from the simulator's change to its event on
the bus (median and p99).

Everything runs in this process: the simulator (its game model is the truth the latency
is measured against), and the pollers with the real upstream client, GameStore and
Redis bus on a scratch SQLite database and Redis prefix. The simulator runs at real
speed, so its clock and the relay's agree: a change the simulator shows from time T
(a score, a status code) is measured from T to the moment a bus subscriber receives the
event. Requests per hour are counted by the simulator after a warm-up (the first runs
of the slow tasks fetch the schedule, leagues, teams and standings at once), then
extrapolated; the slow tasks' steady hourly cost is added from their cadences.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import report

SPORTS = ("football", "basketball", "hockey", "baseball", "american-football")


def run(full: bool) -> None:
    asyncio.run(_run(window_s=600 if full else 60, warmup_s=20))


async def _run(window_s: float, warmup_s: float) -> None:
    from btsguru.config import load_config
    from btsguru.pollers.stack import open_poller_stack
    from btsguru.simulator import SimulatorOptions, start_simulator
    from btsguru.store.bus import BusEvent

    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-pollers-"))
    server = await start_simulator(SimulatorOptions(port=0, seed=1))
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0",
           "REDIS_CACHE_PREFIX": f"btgbench:pollers:{os.getpid()}:",
           "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}", "RAPIDAPI_KEY": "bench",
           "LOG_LEVEL": "warning"}
    for sport in SPORTS:
        env[f"RAPIDAPI_BASE_URL_{sport.upper().replace('-', '_')}"] = f"{server.url}/{sport}"
    config = load_config(environ=env, env_file=None)
    received: list[tuple[float, BusEvent]] = []

    def collect(_channel: str, event: BusEvent) -> None:
        received.append((time.time(), event))

    try:
        async with open_poller_stack(config, bus="redis") as stack:
            pollers = stack.pollers
            for sport in SPORTS:
                await stack.bus.subscribe(f"sports.{sport}", collect)
            started = time.time()
            await pollers.start()
            await asyncio.sleep(warmup_s)
            before = server.simulator.stats()["by_path"]
            await asyncio.sleep(window_s)
            after = server.simulator.stats()["by_path"]
            await pollers.stop()
            plans = {sport: ctx.budget.plan.describe()
                     for sport, ctx in pollers.contexts.items()}
    finally:
        await server.stop()

    latencies = _latencies(server, received, since=started + warmup_s)
    rows = []
    for sport in SPORTS:
        measured = sum(n - before.get(path, 0) for path, n in after.items()
                       if path.startswith(f"/{sport}/")) * 3600 / window_s
        slow = _slow_per_hour(pollers, sport)
        lat = latencies.get(sport, [])
        rows.append({
            "sport": sport, "live req/h": round(measured), "slow req/h": round(slow, 1),
            "total req/h": round(measured + slow),
            "changes": len(lat),
            "latency p50 s": round(statistics.median(lat), 2) if lat else None,
            "latency p99 s": round(_percentile(lat, 0.99), 2) if lat else None,
        })
    every = [x for values in latencies.values() for x in values]
    rows.append({"sport": "all", "live req/h": sum(r["live req/h"] for r in rows),
                 "slow req/h": round(sum(r["slow req/h"] for r in rows), 1),
                 "total req/h": sum(r["total req/h"] for r in rows), "changes": len(every),
                 "latency p50 s": round(statistics.median(every), 2) if every else None,
                 "latency p99 s": round(_percentile(every, 0.99), 2) if every else None})
    report("pollers", rows, {"window_s": window_s, "warmup_s": warmup_s,
                             "budget_stretch": plans,
                             "cadences_s": {s: [c.live_s, c.crucial_s]
                                            for s, c in pollers.settings.live.items()}})


def _slow_per_hour(pollers: Any, sport: str) -> float:
    """The schedule's, standings' and static data's steady cost per hour (their first
    runs fall in the warm-up): from their cadences and the leagues of the simulator."""
    settings = pollers.settings
    queries = pollers.contexts[sport].queries
    leagues = {"football": 3, "basketball": 3, "hockey": 3, "baseball": 2,
               "american-football": 2}[sport]
    schedule = (3 if queries.live_all else 2) * 3600 / settings.schedule_s
    standings = leagues * 3600 / settings.standings_live_s  # every league has a game live
    static = (1 + leagues) * 3600 / settings.static_s
    return schedule + standings + static


def _latencies(server: Any, received: list[tuple[float, Any]],
               since: float) -> dict[str, list[float]]:
    """Per sport: seconds from the simulator showing a change to the bus delivering it,
    for score and status changes the simulator made after `since`."""
    schedule = server.simulator.schedule
    out: dict[str, list[float]] = {}
    for at, event in received:
        if event.event not in ("game.score", "game.status", "game.started", "game.finished"):
            continue
        sport = event.channel.split(".")[1]
        data = event.data
        game = schedule.game_by_id(sport, int(data["game_id"]), at)
        if game is None:
            continue
        changed_at = _changed_at(game, event.event, data["changes"], at)
        if changed_at is None or changed_at < since:
            continue
        out.setdefault(sport, []).append(at - changed_at)
    return out


def _changed_at(game: Any, name: str, changes: dict[str, Any], seen_at: float) -> float | None:
    """When the simulator started showing what the event says (epoch seconds)."""
    elapsed = int(seen_at) - game.start_ts
    if name == "game.score":
        score = (changes["home.score"], changes["away.score"])
        home = away = 0
        found = None
        for e in game.events:
            if e.t_s > elapsed:
                break
            if e.points and e.stat is None and e.period != "PEN":
                if e.side == 0:
                    home += e.points
                else:
                    away += e.points
                if (home, away) == score:
                    found = e.t_s
        return None if found is None else game.start_ts + found
    code = changes.get("status.code")
    starts = [s.start_s for s in game.segments if s.code == code and s.start_s <= elapsed]
    return game.start_ts + max(starts) if starts else None


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
