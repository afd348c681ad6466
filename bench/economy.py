"""Upstream economy (issue 9, target 5), in two parts.

(a) Clients never cause upstream requests. Two identical stacks run side by side (the
simulator and `btsguru serve` with its pollers): one with one WebSocket client, the other
with N WebSocket clients (other processes, `bench/clients.py`, each subscribed to every
sport's channel) plus steady REST traffic on `/v1/football/live`, `/v1/football/games?date=` and
`/v1/football/raw/leagues`. Judged on the loaded stack, per sport, over the window: the
requests its simulator served (`/__sim/stats`) against the requests btsguru's pollers
made (the budget tokens they took, `btsguru_quota_tokens_taken_total{purpose="poller"}`
on `/metrics`), read at a moment when no request is in flight. The difference is what
the clients caused, and must be 0; a REST miss would also show as a token taken for a
user. The pollers' rate over the window, requests per minute, is shown beside the quiet
stack's (it follows the games in play, so the two differ by a request or two a window,
whatever the clients do: shown, not judged). CI size: 20 s window and 200 clients;
`--full`: 300 s and 5,000 clients.

(b) A Pro plan's day (7,500 requests per sport) in virtual time. The real pollers (every
task of every sport, the scheduler, the budget plan and the quota governor), over the
embedded Redis and a scratch SQLite database, poll an in-process simulator whose clock
is the pollers' `VirtualClock`: whenever every task is asleep on that clock, it jumps to
the next wake-up. The simulator's schedule is a harsh busy day: games of every sport
kick off every 15 to 30 minutes around the clock, so some are live all 24 hours (a real
busy day has 8 to 14 live hours). Counted per sport over one UTC day (after an hour's
warm-up on the day before): the simulator's requests, and the age of live data, i.e.
the time since the live poller's last successful poll, sampled uniformly over the time
games are in play and weighted by the number of games in play (the data of every game
in one poll is as old as that poll). The sports share nothing upstream, so each sport's
day runs in a process of its own, on its own clock: the day is CPU work (normalizing,
diffing and storing every poll; waiting on Redis, the database's thread or the loopback
HTTP is a few percent of it), which this spreads over the cores. CI size: 10 minutes
from 00:00 UTC after 3 minutes' warm-up, requests scaled to 24 h (indicative only: the
budget plan works over the whole day); `--full`: the whole day after an hour's warm-up.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import report

SPORTS = ("football", "basketball", "hockey", "baseball", "american-football")
PRO_DAY = 7_500  # API-Sports Pro: requests per day per sport
PRO_MINUTE = 300
AGE_TARGET_S = {"basketball": 10.0, "football": 15.0, "hockey": 15.0,
                "american-football": 15.0, "baseball": 45.0}
DAY_S = 86_400
DAY_START = 1_773_446_400  # 2026-03-14T00:00:00Z, a Saturday (any day: the schedule rolls)
# on the day before: the pollers start with games already in play, and the first runs'
# fetches of every league's teams and standings fall before the day counted
WARMUP_S = 3_600
# CI size: ten minutes from 00:00 UTC after three minutes' warm-up (a few seconds' work)
DAY_WINDOW_CI_S = 600
WARMUP_CI_S = 180


# -- (b): a day in virtual time ------------------------------------------------------

class VirtualClock:
    """The `Clock` of a simulated day: time stands still while anything runs, and jumps
    to the next sleeper's deadline when `advance_to_next` is called."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    def asleep(self) -> int:
        """Sleepers still waiting (a cancelled sleep no longer counts)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance_to_next(self, limit: float) -> None:
        """Move to the earliest pending deadline (at most `limit`) and wake its sleepers."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        target = min(self._sleepers[0][0], limit) if self._sleepers else limit
        self._now = max(self._now, target)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


@dataclass
class DayResult:
    requests: dict[str, int]  # the simulator's, per sport, in the window
    polls: dict[str, list[float]]  # successful live-list polls, per sport
    stretch: dict[str, str]
    window_s: float
    real_s: float
    refused: dict[str, int] = field(default_factory=dict)


async def _settle(clock: VirtualClock, tasks: int) -> None:
    """Let everything run until every poller task sleeps on the virtual clock."""
    spins = 0
    while clock.asleep() < tasks:
        spins += 1
        # real I/O (HTTP to the simulator, the database's threads) needs real time
        await asyncio.sleep(0 if spins < 50 else 0.001)


async def _day(window_s: float, warmup_s: float, sports: tuple[str, ...]) -> DayResult:
    import time

    import tornado.httpserver
    import tornado.netutil

    from btsguru.config import load_config
    from btsguru.pollers.stack import open_poller_stack
    from btsguru.simulator import Simulator, SimulatorOptions
    from btsguru.upstream.client import UpstreamResponse

    clock = VirtualClock(DAY_START - warmup_s)
    simulator = Simulator(SimulatorOptions(port=0, seed=1, quota_day=PRO_DAY,
                                           quota_minute=PRO_MINUTE), clock=clock.time)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http = tornado.httpserver.HTTPServer(simulator.make_app())
    http.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-economy-"))
    # a real Redis (the embedded one's Lua is ten times slower), on a prefix of its own;
    # every expiry the pollers rely on is kept in values on the injected clock
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0",
           "REDIS_CACHE_PREFIX": f"btgbench:economy:{os.getpid()}:",
           "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}",
           "RAPIDAPI_KEY": "bench", "LOG_LEVEL": "warning",
           "UPSTREAM_DAILY_QUOTA": str(PRO_DAY), "UPSTREAM_MINUTE_QUOTA": str(PRO_MINUTE)}
    for sport in sports:
        env[f"RAPIDAPI_BASE_URL_{sport.upper().replace('-', '_')}"] = f"{url}/{sport}"
    config = load_config(environ=env, env_file=None)
    polls: dict[str, list[float]] = {sport: [] for sport in sports}

    def seen(response: UpstreamResponse) -> None:
        if _is_live_list(response.sport, response.endpoint, response.params, clock.time()):
            polls[response.sport].append(clock.time())

    logging.getLogger("btsguru").setLevel(logging.ERROR)  # the budget's plan changes are info
    try:
        async with open_poller_stack(config, clock=clock, bus="memory", sports=sports,
                                     use_leases=False) as stack:
            pollers = stack.pollers
            pollers.fetcher.observers.append(seen)
            tasks = len(pollers.scheduler.tasks)
            started = time.monotonic()
            await pollers.start()
            before = await _run_until(clock, tasks, DAY_START, simulator)
            after = await _run_until(clock, tasks, DAY_START + window_s, simulator)
            stretch = {sport: ctx.budget.plan.describe()
                       for sport, ctx in pollers.contexts.items()}
    finally:
        http.stop()
        await http.close_all_connections()
    requests = {sport: sum(n - before.get(path, 0) for path, n in after.items()
                           if path.startswith(f"/{sport}/")) for sport in sports}
    refused = {sport: max(0, simulator.quotas[sport].used_today(DAY_START + window_s - 1)
                          - PRO_DAY) for sport in sports}
    return DayResult(requests, {s: [t for t in p if t >= DAY_START - 600]
                                for s, p in polls.items()}, stretch, window_s,
                     time.monotonic() - started, refused)


async def _run_until(clock: VirtualClock, tasks: int, until: float,
                     simulator: Any) -> dict[str, int]:
    while clock.time() < until:
        await _settle(clock, tasks)
        clock.advance_to_next(until)
    await _settle(clock, tasks)
    return dict(simulator.stats()["by_path"])


def _is_live_list(sport: str, endpoint: str, params: Any, now: float) -> bool:
    """The live task's main query: `live=all`, or the sweep of today's date."""
    from btsguru.pollers.context import QUERIES, utc_day

    queries = QUERIES[sport]
    if endpoint.strip("/") != queries.list_endpoint:
        return False
    if queries.live_all:
        return bool(params.get("live") == "all")
    return bool(params.get("date") == utc_day(now))


def _live_games(schedule: Any, sport: str) -> Callable[[float], int]:
    """The number of the simulator's games of `sport` in play at a moment."""
    from btsguru.simulator.games import SCHEDULES
    from btsguru.sports.normalize import PHASES

    phases = PHASES[sport]
    longest = SCHEDULES[sport].longest_s

    def count(at: float) -> int:
        n = 0
        for game in schedule.games_between(sport, int(at) - longest, int(at) + 1):
            phase = phases.get(game.state_at(int(at) - game.start_ts).code)
            if phase is not None and phase.in_play:
                n += 1
        return n

    return count


def _ages(polls: list[float], start: float, end: float,
          live: Callable[[float], int]) -> tuple[float, float, float]:
    """(median, p90) age of live data, and the live share of the window.

    Between two polls the age grows from 0 to the gap, uniformly; each gap weighs the
    games in play in it (counted at its middle), so the distribution is a mixture of
    uniforms whose quantiles are found by bisection on the exact CDF."""
    times = sorted(t for t in polls if t < end)
    first = bisect.bisect_left(times, start)
    edges = [*times[max(0, first - 1):], end]
    spans: list[tuple[float, float, float]] = []  # (from, length, weight)
    for lo, hi in itertools.pairwise(edges):
        lo_c = max(lo, start)
        if hi <= lo_c:
            continue
        weight = live((lo_c + hi) / 2)
        if weight:
            spans.append((lo_c - lo, hi - lo_c, weight))
    total = sum(length * w for _, length, w in spans)
    if not total:
        return math.nan, math.nan, 0.0

    def cdf(age: float) -> float:
        # a span that starts `off` after its poll holds ages off..off+length
        return sum(w * max(0.0, min(age, off + length) - off)
                   for off, length, w in spans) / total

    def quantile(q: float) -> float:
        lo, hi = 0.0, max(off + length for off, length, _ in spans)
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
        return hi

    live_share = sum(length for _, length, _ in spans) / (end - start)
    return quantile(0.5), quantile(0.9), live_share


def day_main(sport: str, window_s: float, warmup_s: float) -> DayResult:
    """One sport's day, in a process of its own."""
    return asyncio.run(_day(window_s, warmup_s, (sport,)))


def _merge(parts: list[DayResult], window_s: float, real_s: float) -> DayResult:
    merged = DayResult({}, {}, {}, window_s, real_s, {})
    for part in parts:
        merged.requests.update(part.requests)
        merged.polls.update(part.polls)
        merged.stretch.update(part.stretch)
        merged.refused.update(part.refused)
    return merged


def run_day(full: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sports share nothing upstream (each has its own quota, budget and tasks), so
    each runs its day in a process of its own, on its own virtual clock: the day is CPU
    work (normalizing, diffing, storing every poll), not waiting, and this spreads it
    over the cores."""
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor

    from btsguru.simulator.catalog import Catalog
    from btsguru.simulator.games import Schedule

    window_s = DAY_S if full else DAY_WINDOW_CI_S
    warmup_s = WARMUP_S if full else WARMUP_CI_S
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=len(SPORTS),
                             mp_context=mp.get_context("spawn")) as pool:
        parts = list(pool.map(day_main, SPORTS, [window_s] * len(SPORTS),
                              [warmup_s] * len(SPORTS)))
    result = _merge(parts, window_s, time.monotonic() - started)
    schedule = Schedule(Catalog(1))
    rows = []
    for sport in SPORTS:
        per_day = result.requests[sport] * DAY_S / window_s
        median, p90, live_share = _ages(result.polls[sport], DAY_START,
                                        DAY_START + window_s, _live_games(schedule, sport))
        target = AGE_TARGET_S[sport]
        rows.append({
            "sport": sport, "requests/day": round(per_day), "quota": PRO_DAY,
            "refused": result.refused[sport], "live share": round(live_share, 3),
            "age p50 s": round(median, 1), "age p90 s": round(p90, 1),
            "age target s": target,
            "pass": "yes" if per_day <= PRO_DAY and not result.refused[sport]
            and median <= target else "NO",
            "stretch at end": result.stretch[sport],
        })
    extra = {"window_s": window_s, "scaled_to_day": window_s != DAY_S,
             "day_start": datetime.fromtimestamp(DAY_START, UTC).isoformat(),
             "warmup_s": warmup_s, "real_s": round(result.real_s, 1),
             "real_s_by_sport": {sport: round(part.real_s, 1)
                                 for sport, part in zip(SPORTS, parts, strict=True)},
             "requests_in_window": result.requests}
    return rows, extra


def run(full: bool) -> None:
    suffix = "_full" if full else ""
    print("-- (a) upstream requests: 1 client vs many clients and REST traffic")
    rows, extra = run_clients(full)
    print(f"  REST: {extra['rest_requests']} requests ({extra['rest_per_s']}/s) "
          f"{extra['rest_by_status']}; {extra['ws_messages_delivered']} WebSocket messages; "
          f"counters read while idle: {extra['settled_reads']}")
    report(f"economy_clients{suffix}", rows, extra)
    print("-- (b) a Pro plan's day in virtual time")
    rows, extra = run_day(full)
    report(f"economy_day{suffix}", rows, extra)


# -- (a): clients cause no upstream requests ------------------------------------------

CLIENTS_PER_PROCESS = 250
REST_CONNECTIONS = 16  # the REST loop's requests in flight


def rest_main(base_url: str, key: str, seconds: float, results: Any) -> None:
    asyncio.run(_rest(base_url, key, seconds, results))


def rest_paths() -> list[str]:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    return ["/v1/football/live", f"/v1/football/games?date={today}",
            "/v1/football/raw/leagues"]


async def _rest(base_url: str, key: str, seconds: float, results: Any) -> None:
    """Steady REST traffic: `REST_CONNECTIONS` loops over `rest_paths()` for `seconds`."""
    import time

    import aiohttp

    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    paths = rest_paths()

    async def loop(n: int, session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            path = paths[n % len(paths)]
            n += 1
            async with session.get(base_url + path, headers={"X-API-Key": key}) as resp:
                await resp.read()
                label = f"{resp.status} {resp.headers.get('X-Cache', '')}".strip()
                counts[label] = counts.get(label, 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(loop(n, session) for n in range(REST_CONNECTIONS)))
    results.put(counts)


def _sim_stats(url: str) -> dict[str, int]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/__sim/stats", timeout=10) as resp:
        return dict(json.loads(resp.read())["by_path"])


def _per_sport(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {sport: sum(n - before.get(path, 0) for path, n in after.items()
                       if path.startswith(f"/{sport}/")) for sport in SPORTS}


METRIC_RE = re.compile(r'^(btsguru_quota_tokens_taken_total|btsguru_upstream_requests_total)'
                       r'\{([^}]*)\} ([0-9.e+]+)$', re.MULTILINE)
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Count:
    """One stack's upstream requests per sport, all read at one quiet moment: the
    simulator's (what it served) and btsguru's own (`/metrics`: budget tokens taken by
    purpose, and requests answered). Every upstream request takes a token first."""

    simulator: dict[str, int]
    poller: dict[str, int]  # tokens taken by the pollers
    user: dict[str, int]  # tokens taken for users (REST misses)
    answered: dict[str, int]
    at: float
    settled: bool  # no request was in flight while the simulator was read


def _tokens(stack: Any) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    from bench.harness import metrics_text

    text = metrics_text(stack)
    poller = dict.fromkeys(SPORTS, 0)
    user = dict.fromkeys(SPORTS, 0)
    answered = dict.fromkeys(SPORTS, 0)
    for name, labels_text, value in METRIC_RE.findall(text):
        labels = dict(LABEL_RE.findall(labels_text))
        sport = labels.get("sport", "")
        if sport not in poller:
            continue
        if name == "btsguru_upstream_requests_total":
            answered[sport] += int(float(value))
        else:
            target = poller if labels.get("purpose") == "poller" else user
            target[sport] += int(float(value))
    return poller, user, answered


def count(stack: Any, tries: int = 200) -> Count:
    """A token is taken before a request is sent, and the request is counted as answered
    after the simulator served it: if btsguru's figures are the same just before and just
    after the simulator is read, and every token's request was answered, nothing was in
    flight and the three counts are of the same requests."""
    import time

    for _ in range(tries):
        first = _tokens(stack)
        served = _per_sport({}, _sim_stats(stack.simulator_url))
        at = time.monotonic()
        second = _tokens(stack)
        poller, user, answered = second
        quiet = all(poller[s] + user[s] == answered[s] for s in SPORTS)
        if first == second and quiet:
            return Count(served, poller, user, answered, at, True)
        time.sleep(0.02)  # a poll is in flight: read again when it is over
    return Count(served, poller, user, answered, at, False)


def run_clients(full: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Two identical stacks at once (each simulator a pure function of its seed and the
    real clock: the same games in the same phases), one with a single client, the other
    with N clients and REST traffic. Judged on the loaded stack over the window: the
    requests the simulator served minus those btsguru's pollers made must be 0 (a
    request caused by a client, a REST miss included, would be the difference); the
    quiet stack's rate over the same window is shown beside it."""
    import multiprocessing as mp
    import resource
    import time
    import urllib.request

    from bench.clients import client_main, stop_all
    from bench.harness import processes, start_stack

    clients = 5000 if full else 200
    window_s = 300.0 if full else 20.0
    warmup_s = 60.0 if full else 15.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 16_384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(16_384, hard), hard))
    ctx = mp.get_context("spawn")
    with processes() as group:
        quiet = start_stack(group, pollers=True)
        loaded = start_stack(group, pollers=True, max_streams=10**6)
        ready, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        # the lean clients of the fan-out scenarios (`bench/clients.py`), each on every
        # sport's channel: a failed connection is counted, not waited for
        channels = ",".join(f"sports.{sport}" for sport in SPORTS)
        plan = [(quiet, 1)] + [(loaded, min(CLIENTS_PER_PROCESS, clients - at))
                               for at in range(0, clients, CLIENTS_PER_PROCESS)]
        workers = [ctx.Process(target=client_main, args=(
            "ws-seq", f"{stack.base_url.replace('http', 'ws', 1)}/v1/ws?api_key={stack.api_key}",
            channels, n, False, ready, done, results)) for stack, n in plan]
        started = time.monotonic()
        try:
            for worker in workers:
                worker.start()
            connected, deadline = 0, time.monotonic() + 60 + clients / 20
            while connected < clients + 1:
                connected += ready.get(timeout=max(0.1, deadline - time.monotonic()))
            for path in rest_paths():  # steady traffic finds the cache warm: warm it
                request = urllib.request.Request(loaded.base_url + path,
                                                 headers={"X-API-Key": loaded.api_key})
                urllib.request.urlopen(request, timeout=30).close()
            time.sleep(max(0.0, warmup_s - (time.monotonic() - started)))
            rest_results = ctx.Queue()
            rest = ctx.Process(target=rest_main, args=(loaded.base_url, loaded.api_key,
                                                       window_s, rest_results))
            before = (count(quiet), count(loaded))
            rest.start()
            time.sleep(window_s)
            rest_counts = rest_results.get(timeout=60)
            rest.join(timeout=30)
            after = (count(quiet), count(loaded))
            done.set()
            tallies = [results.get(timeout=60) for _ in workers]
        finally:
            stop_all(workers, done)
    rows = _clients_rows(before, after, clients)
    rest_total = sum(rest_counts.values())
    measured_s = after[1].at - before[1].at
    extra = {"clients": clients, "window_s": round(measured_s, 1), "warmup_s": warmup_s,
             "rest_requests": rest_total, "rest_by_status": rest_counts,
             "rest_per_s": round(rest_total / window_s, 1),
             "ws_messages_delivered": int(sum(got for t in tallies
                                              for got, _last in t.events.values())),
             "ws_failed": sum(t.failed for t in tallies),
             "settled_reads": all(c.settled for c in (*before, *after)),
             "quiet_extra": {s: (after[0].simulator[s] - before[0].simulator[s])
                             - (after[0].poller[s] - before[0].poller[s]) for s in SPORTS}}
    return rows, extra


def _clients_rows(before: tuple[Count, Count], after: tuple[Count, Count],
                  clients: int) -> list[dict[str, Any]]:
    """Judged over the window (N clients connected, REST traffic running): the reads are
    taken while nothing is in flight, so the window's counts have no edge noise. The
    bench's own cache warm-up before it (one `/raw/leagues` miss: the pollers never ask
    for that query) shows in `before window`."""
    quiet_min = (after[0].at - before[0].at) / 60
    loaded_min = (after[1].at - before[1].at) / 60
    rows = []
    for sport in (*SPORTS, "all"):
        sports = SPORTS if sport == "all" else (sport,)

        def total(values: dict[str, int], sports: tuple[str, ...] = sports) -> int:
            return sum(values[s] for s in sports)

        def window(n: int, field: str, sports: tuple[str, ...] = sports) -> int:
            return total(getattr(after[n], field), sports) - total(
                getattr(before[n], field), sports)

        served, polled, users = (window(1, "simulator"), window(1, "poller"),
                                 window(1, "user"))
        extra = served - polled
        rows.append({
            "sport": sport, "simulator requests": served, "pollers' requests": polled,
            "user (REST miss)": users, "extra by clients": extra,
            "of schedule": round(served / polled, 4) if polled else math.nan,
            "before window: user": total(before[1].user),
            "1 client req/min": round(window(0, "poller") / quiet_min, 2),
            f"{clients} clients + REST req/min": round(polled / loaded_min, 2),
            "target": "extra 0, within 2%",
            "pass": "yes" if extra == 0 and users == 0
            and (not polled or abs(served / polled - 1) <= 0.02) else "NO",
        })
    return rows
