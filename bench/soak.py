"""Soak (issue 10): thousands of stream clients and REST traffic through a whole
simulated match day, with reconnect churn, judged on what must not drift.

The simulator runs fast (`--speed`: a day of play in the run, `--full`; CI size covers
some hours) and `btsguru serve` relays it with its pollers, on a Mega plan's quota (as
`e2e` does: the subject is the relay, not the budget plan). WebSocket and SSE followers
(`bench/soak_clients.py`, other processes) each follow one to five sport channels; while
the churn is on, a share of them is closed every second and resumes (`since`,
`Last-Event-ID`) after a short pause. A REST process asks for live lists, games, single
games and raw upstream data at a steady rate. Judged (the scenario exits non-zero when
one fails):

- events: per follower and game, every seq once and in order across its reconnects (no
  gap, no duplicate, no resync by snapshot), and at the end every event published after
  the follower started (the sport's history stream, read as it grows) is there;
- memory: the server's resident set (`/proc/PID/status`, sampled all along) grows less
  than 5% over the second half of the measured period (the warm-up is not measured);
- leaks: with every follower connected again, the server's open file descriptors
  (`/proc/PID/fd`) and its event loop's tasks (`btsguru_event_loop_tasks` on `/metrics`)
  are where they were at the start of the measured period, give or take a few (the
  scrape's own connection, a poll in flight): a leak per connection would show as
  hundreds;
- upstream: over the measured period the simulator served exactly the requests the
  pollers made (`economy.count`: their budget tokens, read while nothing is in flight),
  and no REST request took one;
- REST: every answer a 200.

CI size: 200 WebSocket and 100 SSE followers, 36 s measured after 10 s of warm-up, the
simulator at 600x (about 12 hours of play), 60% of the followers closed a minute.
`--full`: 3,000 and 1,000, 810 s after 90 s, at 96x (a whole day: 24 hours of play),
10% a minute.
"""

from __future__ import annotations

import asyncio
import bisect
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.economy import Count, count
from bench.harness import Stack, metrics_text, processes, report, start_stack
from bench.soak_clients import ProcessPlan, soak_client_main

SPORTS = ("football", "basketball", "hockey", "baseball", "american-football")
# Followers take these channel sets in turn: one sport, two, five (composite cursors).
ALL_SPORTS = tuple(f"sports.{s}" for s in SPORTS)
CHANNEL_SETS: tuple[tuple[str, ...], ...] = (
    ("sports.football",), ("sports.basketball",), ("sports.hockey", "sports.baseball"),
    ("sports.american-football", "sports.football"), ALL_SPORTS)
# Full size: most followers on one sport, as most people follow one (and 4,000 clients
# parsing every event of every sport would measure the client processes on two cores)
FULL_CHANNEL_SETS: tuple[tuple[str, ...], ...] = (
    *((f"sports.{s}",) for s in SPORTS), ("sports.hockey", "sports.baseball"),
    ("sports.american-football", "sports.football"), ALL_SPORTS)
MEGA_DAILY_QUOTA = 150_000  # as `e2e`: the configured cadences, never stretched
MEGA_MINUTE_QUOTA = 900
# Baseball's live cadence (45 s by default) as the other sports': every sport's history
# has events within seconds, so no follower starts on an empty one (a snapshot sent then
# carries the id "0-0", and resuming from it resends every recent game: the start of a
# fresh Redis, not the steady state this scenario judges)
SETTINGS = {"UPSTREAM_DAILY_QUOTA": str(MEGA_DAILY_QUOTA),
            "UPSTREAM_MINUTE_QUOTA": str(MEGA_MINUTE_QUOTA),
            "POLL_LIVE_INTERVAL_BASEBALL_S": "15", "METRICS_TOKEN": "soak-metrics-0123456789"}
HISTORY_WAIT_S = 90.0  # at most this long for the first events of every sport
RSS_GROWTH_MAX = 0.05  # the bound on the second half
# At the same number of connections, these many fds or tasks more are noise (a poll or
# a scrape in flight), not a leak; each figure is the least of a few reads.
FD_SLACK = 8
TASK_SLACK = 8
STEADY_READS = 5
TRUTH_MARGIN_S = 1.0  # events this close to a follower's start or the end are not judged
END_MARGIN_S = 3.0


@dataclass(frozen=True)
class Size:
    ws: int
    sse: int
    per_process: int
    speed: float
    warmup_s: float
    measure_s: float
    churn_per_min: float
    rest_per_s: float
    sample_s: float
    channel_sets: tuple[tuple[str, ...], ...] = CHANNEL_SETS


CI = Size(ws=200, sse=100, per_process=150, speed=600, warmup_s=10, measure_s=36,
          churn_per_min=0.6, rest_per_s=30, sample_s=1.0)
FULL = Size(ws=3000, sse=1000, per_process=500, speed=96, warmup_s=90, measure_s=810,
            churn_per_min=0.1, rest_per_s=50, sample_s=3.0, channel_sets=FULL_CHANNEL_SETS)


def run(full: bool) -> None:
    size = FULL if full else CI
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    rows, extra = measure(size)
    path = report("soak_full" if full else "soak", rows, extra)
    failed = [row["criterion"] for row in rows if row["pass"] != "yes"]
    print(f"  soak: {'FAILED: ' + ', '.join(failed) if failed else 'every criterion met'} "
          f"({path.name})")
    if failed:
        raise SystemExit(1)


# -- the server process, from /proc ---------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def gauges(stack: Stack) -> tuple[int, int]:
    """(event loop tasks, open stream connections) from the server's `/metrics`."""
    from prometheus_client.parser import text_string_to_metric_families

    tasks = conns = 0
    for family in text_string_to_metric_families(metrics_text(stack)):
        for sample in family.samples:
            if sample.name == "btsguru_event_loop_tasks":
                tasks = int(sample.value)
            elif sample.name == "btsguru_stream_connections":
                conns += int(sample.value)
    return tasks, conns


@dataclass
class Steady:
    """The server at a steady number of connections: the least of a few reads."""

    fds: int
    tasks: int
    connections: int
    upstream: Count


def steady(stack: Stack, pid: int) -> Steady:
    reads = []
    for _ in range(STEADY_READS):
        tasks, conns = gauges(stack)
        reads.append((open_fds(pid), tasks, conns))
        time.sleep(0.2)
    return Steady(min(r[0] for r in reads), min(r[1] for r in reads), reads[-1][2],
                  count(stack))


# -- what was published: the history streams ------------------------------------------

@dataclass
class Truth:
    """Every event the relay numbered: game -> [(published at, seq)], game -> sport."""

    events: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    sport_of: dict[int, str] = field(default_factory=dict)
    sports: set[str] = field(default_factory=set)  # the sports with events (len() is safe
    # to read from another thread while this one grows)

    def add(self, sport: str, stream_id: str, game_id: int, seq: int) -> None:
        at = int(stream_id.split("-", maxsplit=1)[0]) / 1000
        self.events.setdefault(game_id, []).append((at, seq))
        self.sport_of[game_id] = sport
        self.sports.add(sport)


async def follow_history(env: dict[str, str], stop: threading.Event, truth: Truth) -> None:
    """Read each sport's history stream as it grows (every entry, from the first: the
    stack's Redis prefix is new) until `stop`, then once more."""
    from btsguru.config import load_config
    from btsguru.store.history import history_key
    from btsguru.store.redis import open_redis

    stores = open_redis(load_config(environ=env, env_file=None))
    last: dict[str, str | None] = dict.fromkeys(SPORTS)
    try:
        while True:
            final = stop.is_set()
            for sport in SPORTS:
                key = history_key(stores.keys, sport)
                while True:
                    start = "-" if last[sport] is None else f"({last[sport]}"
                    batch = await stores.reverb.xrange(key, start, "+", count=5000) or []
                    for raw_id, fields in batch:
                        entry = {_text(k): _text(v) for k, v in (fields or {}).items()
                                 if _text(k) in ("game", "seq")}
                        if entry.get("game") and entry.get("seq"):
                            truth.add(sport, _text(raw_id), int(entry["game"]),
                                      int(entry["seq"]))
                    if batch:
                        last[sport] = _text(batch[-1][0])
                    if len(batch) < 5000:
                        break
            if final:
                return
            await asyncio.sleep(0.5)
    finally:
        await stores.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def missing_at_end(record: dict[str, Any], truth: Truth, cutoff: float,
                   sorted_times: dict[int, list[float]]) -> int:
    """Events published after the follower started (and before `cutoff`) of its sports
    that it never got, nor got past by a snapshot."""
    started = record["started_at"]
    if started is None:
        return 0
    sports = set(record["sports"])
    missing = 0
    for game_id, events in truth.events.items():
        if truth.sport_of[game_id] not in sports:
            continue
        times = sorted_times[game_id]
        lo = bisect.bisect_left(times, started + TRUTH_MARGIN_S)
        hi = bisect.bisect_right(times, cutoff)
        if lo >= hi:
            continue
        last = record["last_seq"].get(game_id, 0)
        missing += sum(1 for _at, seq in events[lo:hi] if seq > last)
    return missing


# -- REST traffic ----------------------------------------------------------------------

def rest_main(base_url: str, key: str, per_s: float, stop: Any, results: Any) -> None:
    asyncio.run(_rest(base_url, key, per_s, stop, results))


async def _rest(base_url: str, key: str, per_s: float, stop: Any, results: Any) -> None:
    """Live lists, today's games, single games (ids from the live lists) and raw data,
    every sport in turn, at `per_s` requests a second until `stop`."""
    import aiohttp

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    counts: dict[str, int] = {}
    game_ids: dict[str, list[int]] = {sport: [] for sport in SPORTS}
    paths = [p for sport in SPORTS for p in (
        f"/v1/{sport}/live", f"/v1/{sport}/games?date={today}", f"/v1/{sport}/raw/leagues",
        f"/v1/{sport}/games/")]
    paths.append("/v1/football/raw/fixtures?live=all")  # the live poller's own query
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as session:
        n = 0
        next_at = loop.time()
        while not stop.is_set():
            path = paths[n % len(paths)]
            n += 1
            sport = path.split("/")[2]
            if path.endswith("/games/"):
                if not game_ids[sport]:
                    continue
                path += str(game_ids[sport][n % len(game_ids[sport])])
            async with session.get(base_url + path) as resp:
                body = await resp.read()
                label = f"{resp.status} {resp.headers.get('X-Cache', '')}".strip()
                counts[label] = counts.get(label, 0) + 1
                if path.endswith("/live") and resp.status == 200:
                    game_ids[sport] = [g["id"] for g in orjson.loads(body)["data"]] or \
                        game_ids[sport]
            next_at += 1 / per_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    results.put(counts)


# -- the run ----------------------------------------------------------------------------

def _plans(stack: Stack, size: Size) -> list[ProcessPlan]:
    plans = []
    for kind, total in (("ws", size.ws), ("sse", size.sse)):
        for at in range(0, total, size.per_process):
            plans.append(ProcessPlan(kind, stack.base_url, stack.api_key,
                                     min(size.per_process, total - at), size.channel_sets,
                                     size.churn_per_min))
    return plans


def _wait_connected(stack: Stack, connected: Any, total: int, timeout_s: float) -> None:
    """Until every follower is subscribed and the server holds exactly that many streams
    (the connections that closed are gone from its books)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(connected[:]) == total and gauges(stack)[1] == total:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{sum(connected[:])} of {total} followers connected, server holds "
                       f"{gauges(stack)[1]} streams after {timeout_s:.0f} s")


def measure(size: Size) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    ctx = mp.get_context("spawn")
    total = size.ws + size.sse
    began = time.monotonic()
    truth = Truth()
    stop_truth = threading.Event()
    with processes() as group:
        stack = start_stack(group, pollers=True, max_streams=10**6,
                            simulator_args=["--speed", str(size.speed)],
                            settings=SETTINGS)
        server = next(p for p in group.children if "serve" in p.args)  # type: ignore[operator]
        print(f"  stack up in {time.monotonic() - began:.1f} s (simulator at {size.speed:g}x)",
              flush=True)
        follower = threading.Thread(target=asyncio.run, args=(
            follow_history(stack.env, stop_truth, truth),), daemon=True)
        follower.start()
        _wait_history(truth, time.monotonic() + HISTORY_WAIT_S)
        print(f"  every sport's history has events at {time.monotonic() - began:.1f} s",
              flush=True)
        plans = _plans(stack, size)
        connected = ctx.Array("i", len(plans))
        churn, done, rest_stop = ctx.Event(), ctx.Event(), ctx.Event()
        results, rest_results = ctx.Queue(), ctx.Queue()
        workers = [ctx.Process(target=soak_client_main,
                               args=(plan, slot, connected, churn, done, results))
                   for slot, plan in enumerate(plans)]
        rest = ctx.Process(target=rest_main, args=(stack.base_url, stack.api_key,
                                                   size.rest_per_s, rest_stop, rest_results))
        samples: list[tuple[float, int]] = []
        records: list[dict[str, Any]] = []
        try:
            for worker in workers:
                worker.start()
            _wait_connected(stack, connected, total, 60 + total / 50)
            print(f"  {total} followers subscribed at {time.monotonic() - began:.1f} s",
                  flush=True)
            rest.start()
            churn.set()
            t0 = time.monotonic()
            _sample_until(server.pid, samples, t0 + size.warmup_s, size.sample_s)
            churn.clear()
            _wait_connected(stack, connected, total, 60 + total / 50)
            start = steady(stack, server.pid)
            churn.set()
            measured_from = time.monotonic()
            print(f"  warm-up over at {measured_from - began:.1f} s: {start.fds} fds, "
                  f"{start.tasks} tasks, {rss_kib(server.pid) // 1024} MiB", flush=True)
            _sample_until(server.pid, samples, measured_from + size.measure_s, size.sample_s)
            measured_to = time.monotonic()
            churn.clear()
            rest_stop.set()
            rest_counts = rest_results.get(timeout=60)
            _wait_connected(stack, connected, total, 60 + total / 50)
            end = steady(stack, server.pid)
            cutoff = time.time() - END_MARGIN_S
            done.set()
            for _ in workers:
                records += results.get(timeout=120)
            print(f"  measured at {time.monotonic() - began:.1f} s", flush=True)
        finally:
            done.set()
            rest_stop.set()
            for worker in (*workers, rest):
                if worker.pid is not None:
                    worker.join(timeout=30)
                    if worker.is_alive():
                        worker.terminate()
            stop_truth.set()
            follower.join(timeout=60)
    return judge(size, records, truth, cutoff, samples, (measured_from, measured_to),
                 start, end, rest_counts, began)


def _wait_history(truth: Truth, deadline: float) -> None:
    while len(truth.sports) < len(SPORTS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(truth.sports)} of {len(SPORTS)} sports had events")
        time.sleep(0.2)


def _sample_until(pid: int, samples: list[tuple[float, int]], until: float,
                  every_s: float) -> None:
    while time.monotonic() < until:
        samples.append((time.monotonic(), rss_kib(pid)))
        time.sleep(min(every_s, max(0.0, until - time.monotonic())))


# -- judging ----------------------------------------------------------------------------

def rss_growth(samples: list[tuple[float, int]], period: tuple[float, float]
               ) -> tuple[float, int, int]:
    """(growth, KiB at the middle, KiB at the end) over the second half of `period`: the
    median of the samples around its middle against that of its last tenth."""
    lo, hi = period
    mid = (lo + hi) / 2
    width = (hi - lo) / 10
    middle = [kib for at, kib in samples if mid - width / 2 <= at <= mid + width / 2]
    last = [kib for at, kib in samples if hi - width <= at <= hi]
    at_mid, at_end = int(statistics.median(middle)), int(statistics.median(last))
    return at_end / at_mid - 1, at_mid, at_end


def _criterion(name: str, measured: Any, bound: str, ok: bool) -> dict[str, Any]:
    return {"criterion": name, "measured": measured, "bound": bound,
            "pass": "yes" if ok else "NO"}


def judge(size: Size, records: list[dict[str, Any]], truth: Truth, cutoff: float,
          samples: list[tuple[float, int]], period: tuple[float, float], start: Steady,
          end: Steady, rest_counts: dict[str, int], began: float,
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    for events in truth.events.values():
        events.sort()
    sorted_times = {g: [at for at, _ in events] for g, events in truth.events.items()}

    def total(name: str) -> int:
        return sum(int(r[name]) for r in records)

    missing = sum(missing_at_end(r, truth, cutoff, sorted_times) for r in records)
    gaps, duplicates, skipped = total("gaps"), total("duplicates"), total("skipped_by_snapshot")
    unreplayed = total("unrecovered_in_window")
    growth, at_mid, at_end = rss_growth(samples, period)
    served = sum(end.upstream.simulator.values()) - sum(start.upstream.simulator.values())
    polled = sum(end.upstream.poller.values()) - sum(start.upstream.poller.values())
    by_users = sum(end.upstream.user.values()) - sum(start.upstream.user.values())
    settled = start.upstream.settled and end.upstream.settled
    rest_bad = sum(n for label, n in rest_counts.items() if not label.startswith("200"))
    rows = [
        _criterion("events lost (gaps + missing at end)", gaps + missing, "0",
                   gaps + missing == 0),
        _criterion("events duplicated", duplicates, "0", duplicates == 0),
        _criterion("events skipped by a snapshot", skipped, "0", skipped == 0),
        _criterion("ws resumes not replayed (id in window)", unreplayed, "0",
                   unreplayed == 0),
        _criterion("server RSS growth, 2nd half", f"{growth:+.2%} ({at_mid // 1024} -> "
                   f"{at_end // 1024} MiB)", f"< {RSS_GROWTH_MAX:.0%}",
                   growth < RSS_GROWTH_MAX),
        _criterion("open fds, start -> end", f"{start.fds} -> {end.fds}",
                   f"+{FD_SLACK} at most", end.fds - start.fds <= FD_SLACK),
        _criterion("event loop tasks, start -> end", f"{start.tasks} -> {end.tasks}",
                   f"+{TASK_SLACK} at most", end.tasks - start.tasks <= TASK_SLACK),
        _criterion("upstream: served - pollers' (REST's)", f"{served - polled} ({by_users})",
                   "0 (0)", settled and served == polled and by_users == 0 and polled > 0),
        _criterion("REST answers not 200", rest_bad, "0", rest_bad == 0 and bool(rest_counts)),
    ]
    measured_s = period[1] - period[0]
    extra = {
        "size": size.__dict__, "followers": len(records),
        "ws": size.ws, "sse": size.sse,
        "simulated_hours": round((time.monotonic() - began) * size.speed / 3600, 1),
        "measured_s": round(measured_s, 1),
        "events_published": sum(len(e) for e in truth.events.values()),
        "games_with_events": len(truth.events),
        "events_received": total("events"), "gaps": gaps, "missing_at_end": missing,
        "duplicates": duplicates, "snapshots": total("snapshots"),
        "skipped_by_snapshot": skipped, "regressed_by_snapshot": total("regressed_by_snapshot"),
        "by_kind": {kind: {name: sum(int(r[name]) for r in records if r["kind"] == kind)
                           for name in ("events", "resumes", "kicked", "snapshots")}
                    for kind in ("ws", "sse")},
        "resumes": total("resumes"), "unrecovered_resumes": total("unrecovered"),
        "unrecovered_in_window": unreplayed,
        "kicked": total("kicked"), "dropped_by_server": total("dropped"),
        "connect_failures": total("failed"), "error_messages": total("errors"),
        "rss_kib": {"mid": at_mid, "end": at_end, "growth": round(growth, 4),
                    "samples": [[round(at - began, 1), kib] for at, kib in samples]},
        "fds": {"start": start.fds, "end": end.fds},
        "tasks": {"start": start.tasks, "end": end.tasks},
        "connections": {"start": start.connections, "end": end.connections},
        "upstream": {"simulator": served, "pollers": polled, "rest": by_users,
                     "settled_reads": settled,
                     "pollers_per_min": round(polled / (measured_s / 60), 1),
                     "by_sport": {s: end.upstream.simulator[s] - start.upstream.simulator[s]
                                  for s in SPORTS}},
        "rest_by_status": rest_counts, "rest_requests": sum(rest_counts.values()),
        "incidents": [[r["kind"], ",".join(r["sports"]), *incident, r["resumes"]]
                      for r in records for incident in r["incidents"]][:50],
    }
    return rows, extra
