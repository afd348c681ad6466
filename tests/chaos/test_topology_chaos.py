"""The Redis master SIGKILLed under a live match, on Sentinel and on Redis Cluster (issue
19, item 5; the contract's "Scale-out guarantees (v2)").

Per topology, a fresh Sentinel set (master, replica, three sentinels) or Redis Cluster
(three masters, three replicas) from `redis-server`; the simulator sped up with a tight
per-minute quota, and two `btsguru serve` processes with their pollers on it, the
relay's minute quota equal to the simulator's. Clients on both servers: native
WebSocket and SSE streams that resume from their last id (on the other server when
theirs refuses), Pusher clients on `sports.basketball` and one on
`private-sports.basketball` (authorised with an API key), REST traffic on both.

Once the pollers have spent most of the minute's budget, the master serving the
`{basketball}` hash tag (the sport's games, seqs, history, bus channels and upstream
quota: on Cluster one slot, so one master) is killed with SIGKILL. In the "lost" case
(the default run) its replica is first cut off (`topology_helpers.cut_off`: still up,
no longer syncing) until every client has been shown events and the pollers have taken
upstream tokens that only the master holds: the promotion loses them, as a lagging
asynchronous replica does, and the relay must notice. The "kept" case (a plain kill,
`CHAOS_LONG=1` only) loses nothing but what was in flight. Asserted:

- the killed master held the sport's history and quota keys (else the test proves
  nothing); its replica is promoted (the time is reported);
- per client and game, `seq` is gap-free and without repeats, except where a
  `game.snapshot` (or a native `subscribed` with `recovered: false`) explains the jump:
  the game continues from the snapshot's seq (`topology_helpers.explained_gaps`);
- every client gets new events within 15 s of the promotion;
- REST answers are JSON 200, or JSON 503 only between the kill and 15 s after the
  promotion (the window of 503s is reported);
- the simulator never saw more than its minute quota of basketball requests in any
  60-second window, and refused none for quota: the run goes on after the promotion
  long enough for a budget that forgot the lost tokens to run past it;
- no traceback in either server's log.

Figures go to `bench/results/chaos-topology-<topology>[-kept].json`. `CHAOS_LONG=1`:
more clients, both cases, and the match runs on for over a minute after the promotion.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.harness import Stack, processes, report, start_stack
from btsguru.upstream.quota import CAREFUL_SHARE
from tests.chaos.redis_helpers import (
    CHANNEL,
    LONG,
    SIMULATOR_SPEED,
    SPORT,
    STACK_SETTINGS,
    RestProbe,
    captured,
)
from tests.chaos.topology_helpers import (
    MarkedResumer,
    PusherResumer,
    SeqCheck,
    TopologyUnderTest,
    explained_gaps,
    first_new_event_s,
    start_server,
    topology,
)
from tests.waiting import STACK_INTERVAL_S, wait_until

WS_PER_SERVER, SSE_PER_SERVER, PUSHER_PER_SERVER = (10, 5, 3) if LONG else (2, 1, 1)
EVENTS_BEFORE = 3  # per client, before the kill: the match is under way
EVENTS_AFTER = 20 if LONG else 3  # per client, after events flow again
MINUTE_QUOTA = 40  # the simulator's and the relay's: basketball requests per 60 s
# The replica is cut off for this many upstream requests (tokens that only the master
# holds), at most CUT_MAX_S: more than the share of the minute the budget keeps unused
# after a failover (`quota.CAREFUL_SHARE`), so that forgetting them would show.
CUT_REQUESTS = math.ceil(MINUTE_QUOTA * CAREFUL_SHARE) + 2
CUT_MAX_S = 7.0
QUOTA_LEFT = 16  # the minute budget left when the replica is cut off
# The run goes on this long after the promotion (the long run: past a whole quota window).
RUN_AFTER_S = 75.0 if LONG else 15.0
RECOVERY_LIMIT_S = 15.0  # the bound: events again after the promotion
PROMOTION_BOUND_S = 30.0  # a replica promoted after the kill (sentinel/cluster timings)
pytestmark = pytest.mark.timeout(600 if LONG else 150)


@pytest.mark.parametrize("writes", ["lost", "kept"] if LONG else ["lost"])
@pytest.mark.parametrize("name", ["sentinel", "cluster"])
async def test_a_killed_redis_master_loses_nothing_silently(tmp_path: Path, name: str,
                                                           writes: str) -> None:
    started = time.monotonic()
    with topology(name) as topo, processes() as group:
        settings = {**STACK_SETTINGS, "UPSTREAM_MINUTE_QUOTA": str(MINUTE_QUOTA), **topo.env()}
        stack = await asyncio.to_thread(
            start_stack, group, pollers=True, max_streams=10_000, settings=settings,
            simulator_args=["--speed", SIMULATOR_SPEED, "--quota-minute", str(MINUTE_QUOTA)])
        second = await asyncio.to_thread(start_server, group, stack)
        setup_s = time.monotonic() - started
        with captured(group) as logs:
            try:
                figures = await chaos(topo, stack, [stack.base_url, second],
                                      cut=writes == "lost")
            except BaseException:
                for log in logs[1:]:
                    print(f"server log (last lines):\n{log.tail()}")
                raise
        tracebacks = sorted({t for log in logs[1:] for t in log.tracebacks()})
    figures.update(writes=writes, setup_s=round(setup_s, 1),
                   total_s=round(time.monotonic() - started, 1), tracebacks=tracebacks)
    report(f"chaos-topology-{name}" + ("" if writes == "lost" else "-kept"),
           [{k: v for k, v in figures.items() if not isinstance(v, dict | list)}],
           {"long": LONG, **figures})
    check(figures)


async def chaos(topo: TopologyUnderTest, stack: Stack, urls: list[str], *,
                cut: bool) -> dict[str, Any]:
    """The clients, the kill, the waits; the figures (asserted by `check`)."""
    app_key = stack.env.get("REVERB_APP_KEY", "btsguru-key")
    pairs = [(urls[0], urls[1]), (urls[1], urls[0])]
    streams = [MarkedResumer(kind, [url, other], stack.api_key) for url, other in pairs
               for kind in ["ws"] * WS_PER_SERVER + ["sse"] * SSE_PER_SERVER]
    pushers = [PusherResumer([url, other], CHANNEL, app_key) for url, other in pairs
               for _ in range(PUSHER_PER_SERVER)]
    pushers.append(PusherResumer(list(urls), f"private-{CHANNEL}", app_key, stack.api_key,
                                 kind="pusher-private"))
    clients: list[MarkedResumer | PusherResumer] = [*streams, *pushers]
    probes = [RestProbe(url, stack.api_key, concurrency=1) for url in urls]
    async with aiohttp.ClientSession() as session:
        for client in clients:
            client.start(session)
        try:
            await wait_until(lambda: all(c.subscribed.is_set() for c in clients), 30,
                             "every client subscribed", interval_s=STACK_INTERVAL_S)
            await wait_until(lambda: asyncio.to_thread(topo.ready), 30,
                             "the topology ready, every replica in sync",
                             interval_s=STACK_INTERVAL_S)
            for probe in probes:
                probe.start(session)
            await wait_until(lambda: all(c.events >= EVENTS_BEFORE for c in clients), 60,
                             lambda: "events before the kill: " + counts(clients),
                             interval_s=STACK_INTERVAL_S)
            # the pollers have spent most of the minute's budget: the tokens they take
            # while the replica is cut off are rolled back with the master, and they reach
            # the quota soon after the promotion, so a budget that forgot those tokens
            # shows as requests over it on the simulator's counters
            spent = await wait_until(
                lambda: upstream_peak_at_least(session, stack, MINUTE_QUOTA - QUOTA_LEFT), 90,
                "the pollers near the minute quota", interval_s=0.5)
            doomed = await asyncio.to_thread(topo.doomed_master)
            held = await asyncio.to_thread(topo.families_on, doomed,
                                           stack.env["REDIS_CACHE_PREFIX"])
            lost = tokens_lost = 0
            if cut:
                # the replica is cut off; the kill waits until every client has been
                # shown writes that only the master has, and the pollers took more tokens
                # than the budget keeps unused after a failover, so the promotion loses
                # them (the cut stays short: Sentinel will not promote a replica whose
                # link has been down ten times its down-after period)
                await asyncio.to_thread(topo.cut_replica, doomed)
                cut_at = time.monotonic()
                shown = {id(c): c.events for c in clients}
                asked = upstream_asked(await simulator_stats(session, stack))

                async def lost_enough() -> bool:
                    taken = upstream_asked(await simulator_stats(session, stack)) - asked
                    return all(c.events > shown[id(c)] for c in clients) and (
                        taken >= CUT_REQUESTS or time.monotonic() - cut_at >= CUT_MAX_S)

                await wait_until(lost_enough, 30,
                                 lambda: "events the replica misses: " + counts(clients),
                                 interval_s=STACK_INTERVAL_S)
                lost = sum(c.events - shown[id(c)] for c in clients)
                tokens_lost = upstream_asked(await simulator_stats(session, stack)) - asked
            kill_at, kill_wall = time.monotonic(), time.time()
            await asyncio.to_thread(topo.kill, doomed)
            promoted = await asyncio.to_thread(topo.wait_promoted, doomed, PROMOTION_BOUND_S)
            promoted_at, promoted_wall = time.monotonic(), time.time()

            def waiting_for() -> str:
                late = [c.kind for c in clients
                        if first_new_event_s(c.marks, kill_at, promoted_at) is None]
                return f"new events on every client after the promotion; none yet on {late}"

            # waited for past the bound, so that a slow recovery is a figure, not a timeout
            await wait_until(lambda: all(first_new_event_s(c.marks, kill_at, promoted_at)
                                         is not None for c in clients),
                             RECOVERY_LIMIT_S + 30, waiting_for, interval_s=STACK_INTERVAL_S)
            # then the match runs on: more events, and long enough after the promotion for
            # a budget that forgot the lost tokens to run past the quota
            before = {id(c): c.events for c in clients}
            await wait_until(lambda: time.monotonic() - promoted_at >= RUN_AFTER_S and all(
                c.events >= before[id(c)] + EVENTS_AFTER for c in clients), 60 + RUN_AFTER_S,
                lambda: "events after the recovery: " + counts(clients),
                interval_s=STACK_INTERVAL_S)
        finally:
            for client in clients:
                await client.stop()
            for probe in probes:
                await probe.stop()
        stats = await simulator_stats(session, stack)
        simulator = {**stats["by_sport"][SPORT], "by_path": {
            path: n for path, n in stats["by_path"].items() if path.startswith(f"/{SPORT}/")}}
    figures = figures_of(topo.name, clients, probes, simulator, held=held, killed=doomed, lost=lost,
                      promoted=promoted, kill=(kill_at, kill_wall),
                         promotion=(promoted_at, promoted_wall))
    figures.update(near_quota_after_s=round(spent, 2), upstream_requests_lost=tokens_lost)
    return figures


async def simulator_stats(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with session.get(f"{stack.simulator_url}/__sim/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


def upstream_asked(stats: dict[str, Any]) -> int:
    """The sport's requests that counted against the simulator's quota (not `/status`)."""
    return sum(n for path, n in stats["by_path"].items()
               if path.startswith(f"/{SPORT}/") and path != f"/{SPORT}/status")


async def upstream_peak_at_least(session: aiohttp.ClientSession, stack: Stack,
                                 requests: int) -> bool:
    """The simulator saw at least `requests` of the sport in some 60-second window."""
    return bool((await simulator_stats(session, stack))["by_sport"][SPORT]["max_per_60s"]
                >= requests)


def counts(clients: list[MarkedResumer | PusherResumer]) -> str:
    return ", ".join(f"{c.kind}={c.events}" for c in clients)


def figures_of(name: str, clients: list[MarkedResumer | PusherResumer],
               probes: list[RestProbe], simulator: dict[str, Any], *, held: dict[str, int],
               killed: int, lost: int, promoted: int, kill: tuple[float, float],
               promotion: tuple[float, float]) -> dict[str, Any]:
    (kill_at, kill_wall), (promoted_at, promoted_wall) = kill, promotion
    total = SeqCheck()
    for client in clients:
        seen = explained_gaps(client.marks)
        for attr in vars(total):
            setattr(total, attr, getattr(total, attr) + getattr(seen, attr))
    again: dict[str, float | None] = {}  # per transport, the slowest client (None: never)
    for client in clients:
        took = first_new_event_s(client.marks, kill_at, promoted_at)
        so_far = again.get(client.kind, 0.0)
        again[client.kind] = None if took is None or so_far is None else \
            round(max(so_far, took), 2)
    answers = [a for probe in probes for a in probe.answers]
    unavailable = sorted(at for at, status, *_ in answers if status == 503)
    bad = [b for probe in probes for b in probe.bad()]
    return {
        "topology": name,
        "killed_master": killed, "promoted": promoted,
        "killed_master_held": held,
        "events_shown_then_lost": lost,
        "promotion_s": round(promoted_at - kill_at, 2),
        **{f"events_again_{kind}_s": took for kind, took in sorted(again.items())},
        "events_again_max_s": None if None in again.values() else max(
            t for t in again.values() if t is not None),
        "clients": len(clients),
        "events_checked": total.events, "gaps": total.missing, "repeats": total.repeated,
        "snapshots": total.snapshots, "gaps_explained": total.explained,
        "explained_seq_jumps": total.jumps, "snapshots_backwards": total.backwards,
        "resets": total.resets,
        "malformed_snapshots": [m for c in clients for m in c.malformed][:5],
        "rest_requests": len(answers), "rest_503": len(unavailable),
        "rest_503_from_s": round(unavailable[0] - kill_wall, 2) if unavailable else None,
        "rest_503_to_s": round(unavailable[-1] - kill_wall, 2) if unavailable else None,
        "rest_503_outside_window": [round(at - kill_wall, 2) for at in unavailable
                                    if not kill_wall <= at <= promoted_wall + RECOVERY_LIMIT_S],
        "rest_bad": bad[:5],
        "rest_slowest_s": round(max((a[3] for a in answers), default=0.0), 2),
        "upstream_max_per_60s": simulator["max_per_60s"], "minute_quota": MINUTE_QUOTA,
        "upstream_refused_quota": simulator["refused_quota"],
        "upstream_requests": sum(simulator["by_path"].values()),
        "upstream_by_path": simulator["by_path"],
        "stream_ends": sorted({why for c in clients for why in c.ends}),
        "ws_errors": sorted({e for c in clients for e in c.errors}),
    }


def check(figures: dict[str, Any]) -> None:
    print(f"\nchaos topology {figures['topology']}: {figures}")
    held = figures["killed_master_held"]
    assert held["history"] > 0 and held["quota"] > 0, \
        f"the killed master did not hold the sport's history and quota: {held}"
    assert figures["gaps"] == 0 and figures["repeats"] == 0, figures
    assert not figures["malformed_snapshots"], figures
    assert figures["events_again_max_s"] is not None, figures
    assert figures["events_again_max_s"] <= RECOVERY_LIMIT_S, figures
    assert not figures["rest_bad"], figures
    assert not figures["rest_503_outside_window"], figures
    assert figures["upstream_max_per_60s"] <= MINUTE_QUOTA, figures
    assert figures["upstream_refused_quota"] == 0, figures
    assert not figures["tracebacks"], "\n".join(figures["tracebacks"])
