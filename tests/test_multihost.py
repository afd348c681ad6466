"""Several hosts behind a real nginx, a rolling restart, nothing lost (issue 19, item 4).

Three `btsguru serve` "hosts" (separate processes on their own ports, pollers on in each:
the leases keep one poller per task fleet-wide), one simulator, one database, on a
Sentinel set or on a Redis Cluster (`tests.redis_topologies`, `tests.redis_cluster`),
behind Debian's nginx running `deploy/nginx.conf` itself (`tests.nginx_helpers`: only the
upstream servers, listen, TLS and log paths replaced; `least_conn`, no sticky sessions).
Stream clients, half native WebSocket and half SSE, all through nginx on
`sports.basketball`, each resuming from its last event id (`since`, `Last-Event-ID`)
whenever its stream ends (`tests.chaos.redis_helpers.Resumer`, all in this process: the
hosts, not the clients, are what the two cores spend most on, see `clients_cpu_s` and
`hosts_cpu_s`). Then a rolling restart: host 1 gets SIGTERM (it drains: WebSocket clients
get close 1012, SSE streams end, and they reconnect through nginx to the others), is
started again on the same port and waited for on `/readyz` and until every client
streams again; then host 2, then host 3.

Asserted per client: every game's `seq` gap-free and never repeated from its first event
to its last; no `game.snapshot` in a stream's catch-up (on `sports.basketball` the
contract sends one only instead of a replay that is no longer possible, and every resume
here is seconds old, well inside the window; one in mid-stream, the answer to a client
too slow to keep up on a loaded machine, is allowed, counted, and that game's check
starts again after it: `Client`); every WebSocket resume answered `recovered: true`; every
client moved at least once (every host restarted), WebSocket ones closed with 1012 and
SSE ones by the end of their stream; never refused as over the stream limit; events
after the last restart. Asserted per host: a clean exit (0) on SIGTERM, no traceback.

The stream limit: the user's `max_streams` is twice the clients (plus 100). A drained
host gives its slots back only as its connections close, in the background, and its
clients may be admitted elsewhere first, so for a moment a user counts up to a host's
share twice; slots that were never given back would pile up over three restarts and hit
the limit, which the test asserts never happens.

The upstream rate. One host's rate is measured in the same test, before the other two
hosts start: host 1 alone, after its start-up burst (schedule, leagues: once per fleet,
not a rate), over `BASELINE_S`, counting only the live poll's path (`/basketball/games`,
also the path of any schedule pass). That is the steady cost of one host; counting only
the periodic path makes it the stricter reference, and it costs only the seconds host 1
runs alone. The rolling restart's rate counts every request (any path) from the first
SIGTERM until every client has had events after the last restart and at least
`SETTLED_S` after the last host came back. Both are taken from the first request seen
in their window to the last, so the windows' edges do not round a rate up or down by a
whole poll. The restart's must not exceed the baseline by more than 10% (plus one
request over the window, for its edges: the baseline counts about a dozen): a second
host polling, or a new lease holder re-running work the fleet already did, would. (A
new lease holder no longer sweeps yesterday's date again: the live task keeps the day
it swept in its shared row. A host's own live cadence sets the rate: while basketball
games from yesterday's UTC date are still in play, in the first hours of a UTC day, each
live poll is two requests; such games only finish during a run, which lowers the rate.
A run across 00:00 UTC would not compare.) The simulator's `/__sim/stats` counter is
sampled every `SAMPLE_S` from the test.

CI sizes (`CLIENTS`): 500 clients on the Sentinel set (the Cluster runs in the long
variant only, as CI must fit 12 minutes);
`CHAOS_LONG=1` or `BTSGURU_LONG=1` runs 2,000 on both. Figures go through
`bench.harness.report` to `bench/results/multihost-<topology>.json` and are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.harness import Processes, Stack, free_port, processes, report, start_stack, wait_http
from tests.chaos.background import Background
from tests.chaos.redis_helpers import (
    LONG,
    SIMULATOR_SPEED,
    SPORT,
    STACK_SETTINGS,
    Resumer,
    gaps,
)
from tests.nginx_helpers import Nginx, check_config, nginx, nginx_binary
from tests.redis_cluster import redis_cluster
from tests.redis_topologies import sentinel_set
from tests.waiting import STACK_INTERVAL_S, wait_until

HOSTS = 3
CLIENTS = {"sentinel": 500, "cluster": 200}  # CI: the whole suite must fit 12 minutes
if LONG:
    CLIENTS = dict.fromkeys(CLIENTS, 2000)
SETTLE_S = 2.0  # host 1's start-up burst (schedule, leagues) before the baseline window
BASELINE_S = 12.0
SAMPLE_S = 0.05
RATE_MARGIN = 1.10  # the restart's upstream rate may exceed one host's by 10%
SUBSCRIBE_BOUND_S = 180.0  # every client streaming, from the start of the first one
RESUME_BOUND_S = 90.0  # every client streaming again, from a host's SIGTERM
DRAIN_BOUND_S = 20.0  # a host exits after SIGTERM (serve drains for at most 10 s)
READY_BOUND_S = 90.0  # a restarted host answers /readyz
EVENTS_AFTER_BOUND_S = 60.0  # every client has an event after the last restart
SETTLED_S = 10.0  # the restart window goes on this long after the last host is back
REFUSALS = ("ws close 4008", "sse status 429")  # over the tier's stream limit
GAMES_PATH = f"/{SPORT}/games"

pytestmark = [
    pytest.mark.timeout(900 if LONG else 420),
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/run)"),
]


def test_deploy_example_passes_nginx_t() -> None:
    """The production example as written (a throwaway certificate, a scratch log path)
    is accepted by this machine's nginx."""
    assert "test is successful" in check_config()


# CI: the Sentinel set (the chaos tests kill masters on both topologies in CI); the
# long run adds the Cluster
@pytest.mark.parametrize("topology", ["sentinel", "cluster"] if LONG else ["sentinel"])
async def test_rolling_restart_behind_nginx_loses_nothing(topology: str) -> None:
    clients_n = CLIENTS[topology]
    raise_file_limit(clients_n)
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    with redis_topology(topology) as redis_env, processes() as group:
        run = await asyncio.to_thread(start_host_one, group, redis_env, clients_n)
        sampler = Sampler(run.stack.simulator_url)
        async with aiohttp.ClientSession() as probe:
            sampler.start(probe)
            try:
                baseline = await measure_baseline(sampler, run)
                await asyncio.to_thread(start_other_hosts, group, run)
                with nginx([f"127.0.0.1:{host.port}" for host in run.hosts]) as proxy:
                    figures, rows = await stream_through_restarts(group, run, proxy, sampler,
                                                                  clients_n)
            finally:
                await sampler.stop()
        figures["hosts_cpu_s"] = round(run.hosts_cpu_s + sum(cpu_s(h.process.pid)
                                                             for h in run.hosts), 1)
        for host in run.all_processes:
            log = group.log(host)
            assert not log.tracebacks(), "\n".join(log.tracebacks())
    figures.update(baseline)
    figures["upstream_ratio"] = round(figures["upstream_rate"] / baseline["baseline_rate"], 3)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    figures["clients_cpu_s"] = round(cpu_after.ru_utime + cpu_after.ru_stime
                                     - cpu_before.ru_utime - cpu_before.ru_stime, 1)
    print(f"\nmultihost {topology}: {figures}")
    report(f"multihost-{topology}", rows, {"topology": topology, "long": LONG, **figures})
    # one request of slack for the windows' edges: the baseline counts about a dozen
    assert figures["upstream_rate"] <= RATE_MARGIN * baseline["baseline_rate"] \
        + 1 / figures["restart_window_s"], figures


# -- the stack --

@contextlib.contextmanager
def redis_topology(name: str) -> Iterator[dict[str, str]]:
    """The settings that point btsguru at a throwaway Sentinel set or Cluster."""
    if name == "sentinel":
        with sentinel_set() as sentinels:
            yield sentinels.env()
    else:
        with redis_cluster() as nodes:
            yield {"REDIS_URL": "", "REDIS_CLUSTER_NODES": ",".join(nodes.addresses[:3])}


def raise_file_limit(clients_n: int) -> None:
    """Every client holds a socket in this process (and a host may briefly hold them
    all): the soft limit raised to the hard one, which must be enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = clients_n + 1000
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"{clients_n} clients need {needed} open files; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else needed * 2, hard))


@dataclass
class Host:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Run:
    stack: Stack
    hosts: list[Host]
    ready_at: float  # host 1 answered /readyz (monotonic)
    all_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hosts_cpu_s: float = 0.0  # CPU time of the host processes that exited


def start_host_one(group: Processes, redis_env: dict[str, str], clients_n: int) -> Run:
    """The simulator (sped up) and host 1 with its pollers, on the topology."""
    stack = start_stack(group, pollers=True, max_streams=2 * clients_n + 100,
                        settings={**STACK_SETTINGS, **redis_env},
                        simulator_args=["--speed", SIMULATOR_SPEED])
    assert stack.server is not None
    host = Host(int(stack.base_url.rsplit(":", 1)[1]), stack.server)
    wait_ready(group, host)
    return Run(stack, [host], time.monotonic(), [stack.server])


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a running process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(group: Processes, host: Host) -> None:
    """Until the host answers /readyz with 200; its log's tail when it does not."""
    try:
        wait_http(f"{host.url}/readyz", READY_BOUND_S)
    except RuntimeError as exc:
        raise AssertionError(f"{exc} (exit code {host.process.poll()}):\n"
                             f"{group.log(host.process).tail()}") from None


def serve(group: Processes, run: Run, port: int) -> subprocess.Popen[bytes]:
    process = group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port)],
                          env=run.stack.env)
    run.all_processes.append(process)
    return process


def start_other_hosts(group: Processes, run: Run) -> None:
    for _ in range(HOSTS - 1):
        port = free_port()
        run.hosts.append(Host(port, serve(group, run, port)))
    for host in run.hosts[1:]:
        wait_ready(group, host)


# -- the upstream's request counter --

@dataclass
class Sampler(Background):
    """`/__sim/stats` every `SAMPLE_S`: (monotonic time, every request, the live path's)."""

    simulator_url: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.simulator_url}/__sim/stats",
                                       timeout=aiohttp.ClientTimeout(total=5)) as r:
                    stats = await r.json()
                self.samples.append((time.monotonic(), int(stats["requests"]),
                                     int(stats["by_path"].get(GAMES_PATH, 0))))
            await asyncio.sleep(SAMPLE_S)

    def since(self, at: float) -> bool:
        return bool(self.samples) and self.samples[-1][0] >= at

    def rate(self, start: float, end: float, *, live_path: bool) -> tuple[float, int, float]:
        """Requests per second in [start, end] (every request, or the live path's only),
        from the first request seen in the window to the last; how many requests that
        counts, and the longest time without one."""
        window = [(t, path if live_path else total) for t, total, path in self.samples
                  if start <= t <= end]
        steps = [(t, n) for (_t0, n0), (t, n) in itertools.pairwise(window) if n > n0]
        if len(steps) < 2:
            raise AssertionError(f"under 2 upstream requests in [{start}, {end}]: {window}")
        (t1, n1), (t2, n2) = steps[0], steps[-1]
        gap = max(b - a for (a, _m), (b, _n) in itertools.pairwise(steps))
        return (n2 - n1) / (t2 - t1), n2 - n1, gap


async def measure_baseline(sampler: Sampler, run: Run) -> dict[str, Any]:
    """One host's upstream rate: host 1 alone (see the module)."""
    start = run.ready_at + SETTLE_S
    end = start + BASELINE_S
    await wait_until(lambda: sampler.since(end), BASELINE_S + SETTLE_S + 30,
                     "the baseline window's samples", interval_s=STACK_INTERVAL_S)
    rate, requests, _gap = sampler.rate(start, end, live_path=True)
    return {"baseline_rate": round(rate, 3), "baseline_requests": requests}


# -- clients and the rolling restart --

@dataclass
class Client(Resumer):
    """A `Resumer` that tells the snapshots apart. One that opens a stream, before its
    first other event (a catch-up's place), is never allowed here: every resume is well
    inside the window and `sports.basketball` gets none on subscribing. One in the middle
    of a stream is the contract's answer to a consumer too slow to keep up (a loaded
    machine): allowed, and that game's `seq` check starts again after it."""

    fresh: bool = False  # a stream opened and nothing but its catch-up marker since
    catchup_snapshots: int = 0
    lag_snapshots: int = 0
    earlier: list[list[int]] = field(default_factory=list)  # seqs before a lag snapshot

    async def _ws(self, session: aiohttp.ClientSession) -> str:
        self.fresh = True
        return await super()._ws(session)

    async def _sse(self, session: aiohttp.ClientSession) -> str:
        self.fresh = True
        return await super()._sse(session)

    def _on_event(self, id: str, event: str, data: dict[str, Any]) -> None:
        if event == "game.snapshot":
            if self.fresh:
                self.catchup_snapshots += 1
            else:
                self.lag_snapshots += 1
                game = data.get("game_id", data.get("id"))
                if isinstance(game, int) and game in self.seqs:
                    self.earlier.append(self.seqs.pop(game))
        self.fresh = False
        super()._on_event(id, event, data)

    def all_seqs(self) -> dict[int, list[int]]:
        """Each run of a game's `seq` (cut at a lag snapshot), for `gaps`."""
        return {**{-1 - at: seqs for at, seqs in enumerate(self.earlier)}, **self.seqs}

async def connections_of(session: aiohttp.ClientSession, host: Host) -> int:
    """Open stream connections on one host (`btsguru_stream_connections`), read directly."""
    async with session.get(f"{host.url}/metrics") as r:
        text = await r.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("btsguru_stream_connections{")))


async def stream_through_restarts(group: Processes, run: Run, proxy: Nginx, sampler: Sampler,
                                  clients_n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kinds = ["ws", "sse"] * (clients_n // 2) + ["ws"] * (clients_n % 2)
    clients = [Client(kind, [proxy.url], run.stack.api_key) for kind in kinds]
    connector = aiohttp.TCPConnector(limit=0)
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for client in clients:
            client.start(session)
        try:
            subscribe_s = await wait_until(
                lambda: all(c.subscribed.is_set() for c in clients), SUBSCRIBE_BOUND_S,
                lambda: f"every client subscribed "
                        f"({sum(c.subscribed.is_set() for c in clients)} of {clients_n}): "
                        f"{away(clients)}; nginx: {proxy.error_log()[-1500:]}",
                interval_s=STACK_INTERVAL_S)
            # a resume needs an event id to resume from: every client has had one
            first_event_s = await wait_until(
                lambda: all(c.last_id is not None for c in clients), 60,
                lambda: f"an event for every client "
                        f"({sum(c.last_id is not None for c in clients)} of {clients_n})",
                interval_s=STACK_INTERVAL_S)
            ends_before = Counter(why for c in clients for why in c.ends)
            restart_started = time.monotonic()
            for number, host in enumerate(run.hosts, 1):
                rows.append(await restart(group, run, host, number, clients, session, proxy))
            last_back = time.time()
            settled = time.monotonic() + SETTLED_S
            after_s = await wait_until(
                lambda: all(c.last_event_at > last_back for c in clients),
                EVENTS_AFTER_BOUND_S,
                lambda: f"events after the last restart for every client "
                        f"({sum(c.last_event_at > last_back for c in clients)} of {clients_n})",
                interval_s=STACK_INTERVAL_S)
            await wait_until(lambda: sampler.since(settled), SETTLED_S + 30,
                             "the restart window's last samples", interval_s=STACK_INTERVAL_S)
            restart_ended = time.monotonic()
        finally:
            for client in clients:
                await client.stop()
    access = proxy.access_counts()
    rate, requests, gap = sampler.rate(restart_started, restart_ended, live_path=False)
    figures = check(clients, rows)
    figures.update({
        "ends_before_restarts": dict(ends_before),
        "subscribe_s": round(subscribe_s, 1), "first_event_s": round(first_event_s, 1),
        "events_after_last_restart_s": round(after_s, 1),
        "restart_window_s": round(restart_ended - restart_started, 1),
        "upstream_requests": requests, "upstream_rate": round(rate, 3),
        "upstream_longest_pause_s": round(gap, 2),
        "nginx_statuses": {f"{path} {status}": n for (path, status), n in
                           sorted(access.items())},
    })
    return figures, rows


async def restart(group: Processes, run: Run, host: Host, number: int, clients: list[Client],
                  session: aiohttp.ClientSession, proxy: Nginx) -> dict[str, Any]:
    """SIGTERM one host, start it again on its port, wait for /readyz and for every
    client to stream again; the figures of that restart."""
    held = await connections_of(session, host)
    run.hosts_cpu_s += cpu_s(host.process.pid)
    ends_before = {id(c): len(c.ends) for c in clients}
    resumes_before = {id(c): len(c.resume_s) for c in clients}
    signalled = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(host.process.wait, DRAIN_BOUND_S)
    drained_s = time.monotonic() - signalled
    assert code == 0, f"host {number} exited with {code}: {group.log(host.process).tail()}"
    host.process = serve(group, run, host.port)
    await asyncio.to_thread(wait_ready, group, host)
    back_s = time.monotonic() - signalled
    moved = [c for c in clients if len(c.ends) > ends_before[id(c)]]
    await wait_until(lambda: all(c.dropped_at is None for c in clients), RESUME_BOUND_S,
                     lambda: f"every client streaming again after host {number}'s restart: "
                             f"{away(clients)}; nginx: {proxy.error_log()[-1500:]}",
                     interval_s=STACK_INTERVAL_S)
    resumed_s = time.monotonic() - signalled
    moved = [c for c in clients if len(c.ends) > ends_before[id(c)]]
    times = [s for c in moved for s in c.resume_s[resumes_before[id(c)]:]]
    assert moved and times, f"host {number} held {held} streams; none moved"
    return {"host": number, "streams_held": held, "moved": len(moved),
            "drain_s": round(drained_s, 2), "back_s": round(back_s, 2),
            "all_resumed_s": round(resumed_s, 2),
            "resume_p50_s": round(statistics.median(times), 2),
            "resume_max_s": round(max(times), 2)}


def away(clients: list[Client]) -> str:
    """The clients not streaming, by why their last stream ended."""
    gone = [c for c in clients if c.dropped_at is not None]
    return f"{len(gone)} away, last ends {dict(Counter(c.ends[-1] for c in gone if c.ends))}"


def check(clients: list[Client], rows: list[dict[str, Any]]) -> dict[str, Any]:
    missing = disorder = 0
    for client in clients:
        m, d = gaps(client.all_seqs())
        missing += m
        disorder += d
    ws = [c for c in clients if c.kind == "ws"]
    resume_times = sorted(s for c in clients for s in c.resume_s)
    ends = Counter(why for c in clients for why in c.ends)
    figures: dict[str, Any] = {
        "clients": len(clients), "ws": len(ws), "sse": len(clients) - len(ws),
        "events_delivered": sum(c.events for c in clients),
        "events_per_client_min": min(c.events for c in clients),
        "resumes": len(resume_times),
        "resume_p50_s": round(statistics.median(resume_times), 2) if resume_times else None,
        "resume_max_s": round(resume_times[-1], 2) if resume_times else None,
        "ws_recovered": sum(r for c in ws for r in c.recovered),
        "ws_not_recovered": sum(1 for c in ws for r in c.recovered if not r),
        "gaps": missing, "out_of_order": disorder,
        "catchup_snapshots": sum(c.catchup_snapshots for c in clients),
        "lag_snapshots": sum(c.lag_snapshots for c in clients),
        "ws_errors": sorted({e for c in ws for e in c.errors}),
        "stream_ends": dict(ends.most_common()),
        "restarts_s": [row["all_resumed_s"] for row in rows],
    }
    assert missing == 0 and disorder == 0, figures
    assert figures["catchup_snapshots"] == 0, figures
    assert figures["ws_not_recovered"] == 0 and not figures["ws_errors"], figures
    never_moved = [c for c in clients if not c.resume_s]
    assert not never_moved, f"{len(never_moved)} clients never moved, yet every host restarted"
    assert all(any(why == "ws close 1012" for why in c.ends) for c in ws), figures
    # the stream limit is twice the clients (see the module): only slots never given back
    # by a drained host would reach it
    assert not any(ends[why] for why in REFUSALS), figures
    assert all(any(why == "sse end" for why in c.ends) for c in clients if c.kind == "sse"), \
        figures
    return figures
