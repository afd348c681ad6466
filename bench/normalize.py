"""Normalize and diff cost: 100 simulator-shaped games per sport, as one live poll brings.

The pollers' work per poll is O(games); this keeps that constant small (target: well
under 5 ms per 100 games, so a poll's CPU is negligible next to its network time).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp

from bench.harness import report
from btsguru.diff import diff_games
from btsguru.simulator import SimulatorOptions, start_simulator
from btsguru.sports import SPORTS
from btsguru.sports.normalize import normalize_games

LIST = {"football": "fixtures?live=all", "american-football": "games?live=all"}


async def _responses() -> dict[str, tuple[list[Any], list[Any]]]:
    server = await start_simulator(SimulatorOptions(port=0, seed=3))
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    try:
        async with aiohttp.ClientSession(headers={"x-apisports-key": "bench"}) as session:
            for sport in SPORTS:
                day = time.strftime("%Y-%m-%d", time.gmtime())
                path = LIST.get(sport, f"games?date={day}")
                async with session.get(f"{server.url}/{sport}/{path}") as resp:
                    before = (await resp.json())["response"]
                async with session.post(f"{server.url}/__sim/advance", json={"seconds": 600}):
                    pass
                async with session.get(f"{server.url}/{sport}/{path}") as resp:
                    after = (await resp.json())["response"]
                out[sport] = (before, after)
    finally:
        await server.stop()
    return out


def _per_100(items: list[Any]) -> list[Any]:
    """The response's items repeated up to 100 games (the same games: a cost, not a story)."""
    return [items[n % len(items)] for n in range(100)] if items else []


def run(full: bool) -> None:
    rounds = 200 if full else 20
    rows = []
    for sport, (before, after) in asyncio.run(_responses()).items():
        a_items, b_items = _per_100(before), _per_100(after)
        if not a_items:
            continue
        normalize_ms, diff_ms = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            old = normalize_games(sport, a_items, observed_at="2026-01-01T00:00:00Z")
            normalize_ms.append((time.perf_counter() - started) * 1000)
            new = normalize_games(sport, b_items, observed_at="2026-01-01T00:10:00Z")
            previous = {g.id: g for g in old}
            pairs = [(previous.get(g.id), g) for g in new]
            started = time.perf_counter()
            for x, y in pairs:
                diff_games(x, y)
            diff_ms.append((time.perf_counter() - started) * 1000)
        rows.append({"sport": sport, "games": len(a_items),
                     "normalize ms (median)": statistics.median(normalize_ms),
                     "normalize ms (p99)": sorted(normalize_ms)[int(len(normalize_ms) * .99) - 1],
                     "diff ms (median)": statistics.median(diff_ms)})
    report("normalize", rows, {"rounds": rounds})
