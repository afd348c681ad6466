"""The bus and the fan-out on each Redis topology: one Redis, Sentinel, a 3-master Cluster.

For each topology (issue 19, item 6):

- bus: btsguru's real write path, `GameStore.ingest` (the pollers' call: diff, one Lua
  script per game that numbers the change, appends it to the history and PUBLISHes it,
  SPUBLISH on Cluster; then the database upsert) in this process, one task per sport,
  each ingesting a batch of live games whose score moved, as fast as it can; a
  subscriber in another process (a `RedisBus`, the listener every `serve` process runs)
  subscribed to every `sports.{sport}` channel. Measured: events received per second
  (from the first ingest to the last receipt), and per event, from just before the
  `ingest` call that made it to its receipt, p50 and p99 (one clock: one machine). The
  same again paced, one event at a time (one game, a few ms apart): the latency of an
  unloaded bus. Five sports spread over the Cluster's three shards (football, baseball
  and American football's hash tags on one, hockey's and basketball's on the others).
  The publisher is one Python process: the figure is the write path's rate, the bus
  included, more than Redis's own.
- fan-out: `bench/fanout.py`'s measurement, unchanged, on that topology:
  `btsguru serve --processes 2` (two relay processes sharing the port), N WebSocket
  clients from other processes (`bench/clients.py`), spread over both by the kernel, on
  one game channel; each event appended and published as the Pusher HTTP API does
  (`EventHistory.append`); latency from just before the publish to the N-th client's
  receipt, p50 and p99 over the events, and every client's count and order checked.

On Cluster a `serve` process's bus reads its shards' connections in turn
(`ClusterPubSub.get_sharded_message`, the bus's 1 s read timeout shared among them), so
`--full` measures two more rows there: the paced run with the subscriber on football's
shard only (against the same with every sport's, over three shards), and the fan-out
with every client also subscribed to `sports.hockey` (another shard, where nothing is
published).

Sentinel (a master, a replica, three sentinels) and Cluster (3 masters, 1 replica each)
are started with the test suite's launchers, `tests/redis_topologies.py` and
`tests/redis_cluster.py` (imported from here, lazily and used as they are: the first
import of `tests` by `bench`, where the tests already import `bench`'s harness), on free
local ports, and
killed at the end; one Redis is the one on 127.0.0.1:6379, under key prefixes of the
run's own, purged at the end. At CI size the three are started together while the
fan-out's database is prepared (the idle ones run beside the measured one); with
`--full` each is started when its turn comes.

CI size: 100 clients, 8 fan-out events, 1 s of bus load and 30 paced events;
`--full`: 5,000 clients and 100 fan-out events, 15 s of bus load and 1,000 paced events
per topology. Results in `bench/results/topologies.json` (`topologies_full.json` with
`--full`, so that the CI-size test does not overwrite them). `TOPOLOGIES_ONLY=
single,cluster` runs some topologies only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fanout
from bench.harness import bench_user, purge_redis_prefix, report

TOPOLOGIES = ("single", "sentinel", "cluster")
SPORTS = ("football", "basketball", "hockey", "baseball", "american-football")
FIRST_GAME_ID = 990_000  # games no poller knows (nothing else writes them)
LEAGUE_ID = 999_999
PROGRESS_EVERY_S = 0.1  # how often the subscriber reports its count
DRAIN_STALL_S = 5.0  # the subscriber got nothing new for this long: it has all it will get


@dataclass(frozen=True)
class Size:
    bus_seconds: float  # the loaded run's length
    bus_batch: int  # games per ingest, per sport
    paced_events: int
    paced_spacing_s: float
    clients: int
    fanout_events: int
    per_process: int  # clients per client process
    idle_s: float
    # on Cluster, also: the paced run with the subscriber on one shard only, and the
    # fan-out with every client also subscribed to a quiet channel on another shard
    shards: bool


CI = Size(bus_seconds=1.0, bus_batch=4, paced_events=30, paced_spacing_s=0.005, clients=100,
          fanout_events=8, per_process=100, idle_s=0.5, shards=False)
FULL = Size(bus_seconds=15.0, bus_batch=10, paced_events=1000, paced_spacing_s=0.005,
            clients=5000, fanout_events=100, per_process=1250, idle_s=fanout.IDLE_S,
            shards=True)
# a channel whose hash tag is on another Cluster shard than football's (hockey's slot
# is on the second master of three, football's on the first), and nothing is published
QUIET_CHANNEL = "sports.hockey"


# -- the topologies --

@contextlib.contextmanager
def topology(name: str) -> Iterator[dict[str, str]]:
    """The Redis settings of a running `name` topology (started here unless `single`)."""
    if name == "single":
        yield {"REDIS_URL": "redis://127.0.0.1:6379/0"}
    elif name == "sentinel":
        from tests.redis_topologies import sentinel_set

        with sentinel_set() as group:
            yield group.env()
    elif name == "cluster":
        from tests.redis_cluster import redis_cluster

        with redis_cluster(masters=3, replicas=1) as nodes:
            yield {"REDIS_URL": "", "REDIS_CLUSTER_NODES": ",".join(nodes.addresses)}
    else:
        raise ValueError(f"unknown topology {name!r}")


def base_env(redis: dict[str, str], label: str, scratch: Path) -> dict[str, str]:
    """Settings for one use of a topology: a database of its own in `scratch`, a key
    prefix of its own."""
    return {
        "DATABASE_URL": f"sqlite:///{scratch / f'{label}.db'}",
        "REDIS_CACHE_PREFIX": f"btgbench:topo:{label}:{os.getpid()}:{time.monotonic_ns()}:",
        "RAPIDAPI_KEY": "bench", "SECRET_KEY": "bench-secret-key-0123456789",
        "LOG_LEVEL": "warning",
        **redis,
    }


# -- the bus --

def receiver_main(env: dict[str, str], channels: list[str], ready: Any, done: Any,
                  progress: Any, results: Any) -> None:
    """The subscriber process: a `RedisBus` on `channels`; reports its count as it goes
    (`progress`) and, once `done` is set, what it received: {"sport id": time}."""
    asyncio.run(_receive(env, channels, ready, done, progress, results))


async def _receive(env: dict[str, str], channels: list[str], ready: Any, done: Any,
                   progress: Any, results: Any) -> None:
    from btsguru.config import load_config
    from btsguru.store.bus import BusEvent, RedisBus
    from btsguru.store.redis import open_redis

    stores = open_redis(load_config(environ=env, env_file=None))
    bus = RedisBus(stores.reverb, stores.keys)
    got: dict[str, float] = {}
    repeated = 0

    def on_event(_subscribed: str, event: BusEvent) -> None:
        nonlocal repeated
        key = f"{event.channel.split('.')[1]} {event.id}"
        if key in got:
            repeated += 1
        else:
            got[key] = time.time()

    async def report_progress() -> None:
        while True:
            progress.value = len(got)
            await asyncio.sleep(PROGRESS_EVERY_S)

    reporter = asyncio.create_task(report_progress())
    try:
        for channel in channels:
            await bus.subscribe(channel, on_event)
        ready.put(True)
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
    finally:
        reporter.cancel()
        await bus.close()
        await stores.close()
    results.put((got, repeated))


def _game(sport: str, game_id: int, score: int) -> Any:
    from btsguru.sports.base import Game, League, Phase, Status, Team

    now = datetime.now(UTC)
    return Game(id=game_id, sport=sport,
                league=League(id=LEAGUE_ID, name="Bench League", country="Nowhere", season=2024),
                start_time=now.strftime("%Y-%m-%dT%H:00:00Z"),
                status=Status(phase=Phase.LIVE, code="1H", clock="10", period=1,
                              server_time=now.strftime("%Y-%m-%dT%H:%M:%SZ")),
                home=Team(id=1, name="Home", score=score), away=Team(id=2, name="Away", score=0))


async def publish_bus(env: dict[str, str], sports: tuple[str, ...], batch: int, *,
                      first_id: int, seconds: float, max_events: int,
                      spacing_s: float) -> dict[str, float]:
    """Ingest games whose score moves, per sport concurrently, through `GameStore.ingest`
    until `seconds` passed or `max_events` were made; {"sport id": time before the
    ingest that made it}."""
    from btsguru.clock import SystemClock
    from btsguru.config import load_config
    from btsguru.db import close_database, connect_database
    from btsguru.db.migrate import migrate
    from btsguru.db.runner import DatabaseRunner
    from btsguru.store.bus import RedisBus
    from btsguru.store.games import GameStore
    from btsguru.store.redis import open_redis

    config = load_config(environ=env, env_file=None)
    database = connect_database(config.database_url)
    migrate(database)
    runner = DatabaseRunner(database)
    stores = open_redis(config)
    bus = RedisBus(stores.reverb, stores.keys)
    store = GameStore(stores, runner, SystemClock(), bus)
    sent: dict[str, float] = {}
    try:
        games = {sport: [_game(sport, first_id + 1000 * k + i, 0) for i in range(batch)]
                 for k, sport in enumerate(sports)}
        for sport, first in games.items():
            await store.ingest(sport, first)  # first sighting: stored, no event
        deadline = time.monotonic() + seconds

        async def one_sport(sport: str) -> None:
            score = 0
            while time.monotonic() < deadline and len(sent) < max_events:
                score += 1
                moved = [replace(g, home=replace(g.home, score=score)) for g in games[sport]]
                started = time.time()
                result = await store.ingest(sport, moved)
                for change in result.changes:
                    sent[f"{sport} {change.id}"] = started
                if spacing_s:
                    await asyncio.sleep(spacing_s)

        await asyncio.gather(*(one_sport(sport) for sport in sports))
    finally:
        await store.close()
        await bus.close()
        await stores.close()
        runner.close()
        close_database(database)
    return sent


@dataclass(frozen=True)
class BusRun:
    label: str
    sports: tuple[str, ...]
    batch: int  # games per ingest, per sport
    seconds: float
    max_events: int
    spacing_s: float  # between one sport's ingests


def measure_bus(env: dict[str, str], runs: list[BusRun],
                subscribed: tuple[str, ...] = SPORTS) -> dict[str, dict[str, Any]]:
    """Each run in turn, with one subscriber process for all of them, subscribed to the
    channel of each sport in `subscribed` (a serve process whose clients follow every
    sport); per run, its figures."""
    ctx = mp.get_context("spawn")
    ready, results, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    progress = ctx.Value("i", 0)
    receiver = ctx.Process(target=receiver_main, args=(
        env, [f"sports.{sport}" for sport in subscribed], ready, done, progress, results))
    receiver.start()
    sent: list[tuple[dict[str, float], float]] = []
    try:
        ready.get(timeout=60)
        for n, bus_run in enumerate(runs):
            started = time.monotonic()
            one = asyncio.run(publish_bus(
                env, bus_run.sports, bus_run.batch, first_id=FIRST_GAME_ID + 100_000 * n,
                seconds=bus_run.seconds, max_events=bus_run.max_events,
                spacing_s=bus_run.spacing_s))
            sent.append((one, time.monotonic() - started))
            drain(progress, sum(len(s) for s, _ in sent))
        time.sleep(2 * PROGRESS_EVERY_S)  # anything repeated arrives with the rest
        done.set()
        got, repeated = results.get(timeout=60)
    finally:
        done.set()
        receiver.join(timeout=30)
        if receiver.is_alive():
            receiver.terminate()
            receiver.join()
    every = set().union(*(s for s, _ in sent))
    out = {}
    for bus_run, (one, publish_s) in zip(runs, sent, strict=True):
        latencies = sorted((got[key] - at) * 1000 for key, at in one.items() if key in got)
        first = min(one.values(), default=0.0)
        received = [got[key] for key in one if key in got]
        span = max(received, default=first) - first
        out[bus_run.label] = {
            "sent": len(one), "received": len(received),
            "events/s": len(received) / span if span > 0 else float("nan"),
            "published/s": len(one) / publish_s if publish_s > 0 else float("nan"),
            "p50 ms": statistics.median(latencies) if latencies else float("nan"),
            "p99 ms": fanout.percentile(latencies, 0.99),
            "max ms": latencies[-1] if latencies else float("nan"),
            # over every run of the subscriber: an event twice, or one nobody sent
            "repeated": repeated, "unexpected": len(set(got) - every),
        }
    return out


def drain(progress: Any, total: int) -> None:
    """Until the subscriber has `total` events, or has stopped getting any."""
    last, last_change = -1, time.monotonic()
    while progress.value < total and time.monotonic() - last_change < DRAIN_STALL_S:
        if progress.value != last:
            last, last_change = progress.value, time.monotonic()
        time.sleep(PROGRESS_EVERY_S / 2)


# -- the scenario --

def run_topology(name: str, size: Size, database: tuple[str, str],
                 redis: dict[str, str], scratch: Path) -> dict[str, Any]:
    """Both measurements on a running `name` topology (`redis`: its settings);
    `database`: the fan-out servers' database URL and its bench user's API key
    (prepared once for every topology); `scratch`: a directory for databases."""
    marks = [("start", time.monotonic())]
    out: dict[str, Any] = {"topology": name}
    env = base_env(redis, name, scratch)
    paced = BusRun("paced", SPORTS[:1], 1, 600.0, size.paced_events, size.paced_spacing_s)
    try:
        bus = measure_bus(env, [
            BusRun("loaded", SPORTS, size.bus_batch, size.bus_seconds, 10**9, 0.0), paced])
        out["bus"], out["bus_paced"] = bus["loaded"], bus["paced"]
        if name == "cluster" and size.shards:
            out["bus_paced_one_shard"] = measure_bus(
                env, [replace(paced, label="one shard")], SPORTS[:1])["one shard"]
    finally:
        if name == "single":
            purge_redis_prefix(env)
    marks.append(("bus", time.monotonic()))
    print(f"  {name} bus: {bus_line(out['bus'])}; one at a time: "
          f"{bus_line(out['bus_paced'])}", flush=True)
    if "bus_paced_one_shard" in out:
        print(f"  {name} bus, one at a time, subscriber on football's shard only: "
              f"{bus_line(out['bus_paced_one_shard'])}", flush=True)
    fan_env = {**base_env(redis, f"{name}-fanout", scratch), "DATABASE_URL": database[0]}
    case = fanout.Case(f"{name}: WebSocket x{size.clients}, 2 processes", "btsguru", "ws",
                       size.clients, processes=2, settings=tuple(sorted(fan_env.items())),
                       api_key=database[1])
    rows = [("fanout", fanout.CHANNEL)]
    if name == "cluster" and size.shards:
        rows.append(("fanout_quiet_shard", f"{fanout.CHANNEL},{QUIET_CHANNEL}"))
    try:
        for key, subscribe in rows:
            out[key] = fanout.measure(case, size.fanout_events, size.per_process,
                                      idle_s=size.idle_s, subscribe=subscribe)
            fan = out[key]
            print(f"  {name} fan-out ({subscribe}): {fan['delivered (min per event)']}/"
                  f"{size.clients} clients got every event, p50 {fan['p50 ms']:.1f} ms, "
                  f"p99 {fan['p99 ms']:.1f} ms", flush=True)
    finally:
        if name == "single":
            purge_redis_prefix(fan_env)
    marks.append(("fan-out", time.monotonic()))
    out["seconds"] = {what: round(at - marks[n][1], 1)
                      for n, (what, at) in enumerate(marks[1:])}
    print(f"  {name} took (s): {out['seconds']}", flush=True)
    return out


def bus_line(figures: dict[str, Any]) -> str:
    return (f"{figures['received']}/{figures['sent']} events, {figures['events/s']:,.0f} "
            f"events/s, p50 {figures['p50 ms']:.2f} ms, p99 {figures['p99 ms']:.2f} ms")


def run(full: bool) -> None:
    size = FULL if full else CI
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 32_768 if full else 4096
    if soft < wanted:  # the servers and the client processes inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    only = [o for o in os.environ.get("TOPOLOGIES_ONLY", "").split(",") if o]
    names = [name for name in TOPOLOGIES if not only or name in only]
    started, load_before = time.monotonic(), list(os.getloadavg())
    results = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="btsguru-topologies-")))
        # CI size: every topology started at once, while the database is prepared (the
        # idle ones then run beside the measured one); `--full`: each started when its
        # turn comes, alone on the machine
        together = {} if full else start_together(stack, names)
        database = prepare_database(scratch)
        for name in names:
            print(f"  {name}: starting", flush=True)
            with contextlib.ExitStack() as own:
                waited = time.monotonic()
                redis = together[name].result() if together else own.enter_context(
                    topology(name))
                waited = time.monotonic() - waited
                results.append(run_topology(name, size, database, redis, scratch))
            results[-1]["seconds"] = {"topology up": round(waited, 1),
                                      **results[-1]["seconds"]}
    rows = [{
        "topology": r["topology"],
        "bus events/s": round(r["bus"]["events/s"], 1),
        "bus p50 ms": round(r["bus"]["p50 ms"], 2),
        "bus p99 ms": round(r["bus"]["p99 ms"], 2),
        "bus events": f"{r['bus']['received']}/{r['bus']['sent']}",
        "paced p50 ms": round(r["bus_paced"]["p50 ms"], 2),
        "paced p99 ms": round(r["bus_paced"]["p99 ms"], 2),
        f"fan-out x{size.clients} p50 ms": round(r["fanout"]["p50 ms"], 1),
        f"fan-out x{size.clients} p99 ms": round(r["fanout"]["p99 ms"], 1),
        "fan-out delivered": f"{r['fanout']['delivered (min per event)']}/{size.clients}",
    } for r in results]
    # per topology, every measurement's figures (the fan-out's per-event latencies apart)
    measured: dict[str, dict[str, Any]] = {}
    latencies: dict[str, dict[str, list[float]]] = {}
    for r in results:
        measured[r["topology"]] = {key: {k: v for k, v in value.items() if k != "_latencies"}
                                   for key, value in r.items() if isinstance(value, dict)}
        latencies[r["topology"]] = {key: value["_latencies"] for key, value in r.items()
                                    if isinstance(value, dict) and "_latencies" in value}
    report("topologies_full" if full else "topologies", rows, {
        "full": full, "size": size.__dict__, "sports": list(SPORTS),
        "topologies": measured, "fanout_latencies_ms": latencies,
        "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
        "seconds": round(time.monotonic() - started, 1)})
    bad = [r["topology"] for r in results if incomplete(r, size.clients)]
    if bad:
        print(f"incomplete delivery on: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


def prepare_database(scratch: Path) -> tuple[str, str]:
    """One scratch database for every topology's fan-out servers, with the bench user:
    its URL and the user's API key."""
    env = base_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "users", scratch)
    try:
        return env["DATABASE_URL"], bench_user(env, "fanout@example.com", max_streams=10**6)
    finally:
        purge_redis_prefix(env)


def start_together(stack: contextlib.ExitStack, names: list[str],
                   ) -> dict[str, Future[dict[str, str]]]:
    """Start every topology in `names` at once, on threads; each stops when `stack`
    closes (once its start is over, whether it worked or not)."""
    pool = ThreadPoolExecutor(len(names), thread_name_prefix="topology")
    stack.callback(pool.shutdown)
    futures = {}
    for name in names:
        manager = topology(name)
        futures[name] = pool.submit(manager.__enter__)
        stack.callback(_stop_when_started, manager, futures[name])
    return futures


def _stop_when_started(manager: contextlib.AbstractContextManager[dict[str, str]],
                       future: Future[dict[str, str]]) -> None:
    if future.exception() is None:
        manager.__exit__(None, None, None)


def incomplete(result: dict[str, Any], clients: int) -> bool:
    """An event lost, repeated or out of order anywhere in a topology's measurements."""
    for key, value in result.items():
        if key.startswith("bus") and (value["received"] != value["sent"]
                                      or value["repeated"] or value["unexpected"]):
            return True
        if key.startswith("fanout") and (
                value["failed"] or value["out of order"]
                or value["delivered (min per event)"] != clients
                or not math.isfinite(value["p99 ms"])):
            return True
    return False
