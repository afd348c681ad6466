"""What the upstream chaos tests share: the simulated upstream in the test's own process
(so that a fault can be held for a stretch and lifted at an exact moment), `btsguru
serve` with its pollers in front of it, a REST prober, an SSE listener that keeps the
whole story, and the checks of that story against the simulator's truth.

The simulator runs in-process on the test's event loop: faults are injected through its
control API (`POST /__sim/fault`, as any client would) and lifted by clearing its fault
queue, which the control API cannot do (a fault there lasts "the next N requests"). Its
request counter is wrapped to keep when each request came, which `/__sim/stats` does not
say, for the per-minute quota check and the recovery time.

Recovery: the issue asks the pollers to be fresh "within one cadence of the upstream
returning". After a host failure (5xx, garbage, errors in a 200, a timeout) a poller runs
again exactly one cadence later, and that run may probe the host even while the circuit
breaker keeps users' misses off it (`upstream/breaker.py`), so the first run after the
return is fresh: one cadence, plus the in-flight request's timeout when the fault held
requests. A 429 is the exception the quota imposes: the minute window is waited out, and
the poll that follows is at most a cadence after it clears. `recovery_bound_s` is that
bound, which the tests hold the relay to (the pollers' own backoff settings are left at
their defaults: they must not matter to a host failure).

Figures are printed and written to `bench/results/chaos-upstream.json` (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness import ChildLog, Processes, Stack, start_stack
from btsguru.upstream.client import REQUEST_TIMEOUT_S
from btsguru.upstream.quota import MINUTE_WINDOW_S, SEND_MARGIN_S
from tests.chaos.background import Background
from tests.upstream_fixtures import simulator

LONG = os.environ.get("CHAOS_LONG") == "1"
SPORT = "football"  # live=all with events: goals arrive as `game.event`s too
CADENCE_S = 2  # the live poll interval these stacks run with
# A simulated minute per real second: a fault held 10 s hides 10 minutes of play.
SIM_SPEED = 60.0
HOLD_S = 60.0 if LONG else 8.0  # how long each fault is held
USER_WAIT_S = 10.0  # the contract's bound on a user's wait on the upstream
# What the client measures beyond the server's own wait: the loopback, the server's
# work around the upstream call, this busy 2-core machine.
ANSWER_SLACK_S = 1.0
# On top of a recovery bound: the scheduler's wake-up, one poll's own time (request,
# normalize, store) on this busy 2-core machine, and the prober's tick.
RECOVERY_SLACK_S = 1.5
PROBE_EVERY_S = 0.25
# A per-minute wall (a 429) holds the relay's calls until the window it enforces clears.
MINUTE_WALL_S = MINUTE_WINDOW_S + SEND_MARGIN_S
# A timeout fault holds the request longer than the client's own per-attempt timeout.
TIMEOUT_FAULT_DELAY_S = 10.0
USER_ONLY = "countries"  # an endpoint the pollers never ask: the prober's misses
MODES = ("500", "429", "timeout", "garbage", "errors200", "slow")


# -- the simulated upstream, in-process --

@dataclass
class UpstreamLog:
    """Every request the simulator counted: (monotonic time, path, faulted)."""

    requests: list[tuple[float, str, bool]] = field(default_factory=list)

    def watch(self, server: Any) -> None:
        sim = server.simulator
        count = sim.count

        def counting(path: str) -> None:
            self.requests.append((time.monotonic(), path, sim.faults.pending() > 0))
            count(path)

        sim.count = counting

    def sent(self, *, after: float = 0.0) -> list[float]:
        """When the requests to SPORT that count against its quota (all but `/status`)
        were sent."""
        return [t for t, path, _ in self.requests
                if t >= after and path.startswith(f"/{SPORT}/") and path != f"/{SPORT}/status"]

    def polls(self, after: float, before: float) -> int:
        """The pollers' requests between two instants (the prober's misses aside)."""
        return sum(1 for t, path, _ in self.requests if after <= t < before
                   and path.startswith(f"/{SPORT}/") and path != f"/{SPORT}/{USER_ONLY}")

    def first_clean(self, after: float) -> float | None:
        """When the pollers' first request after `after` that no fault answered came."""
        return next((t for t, path, faulted in self.requests
                     if t >= after and not faulted and path == f"/{SPORT}/fixtures"), None)

    def busiest_minute(self) -> int:
        """The most quota-counted requests in any 60-second window."""
        window: deque[float] = deque()
        most = 0
        for t in self.sent():
            window.append(t)
            while window[0] <= t - 60:
                window.popleft()
            most = max(most, len(window))
        return most


@contextlib.asynccontextmanager
async def upstream(**options: Any) -> AsyncIterator[tuple[Any, UpstreamLog]]:
    """The simulator (SIM_SPEED unless given), its request log."""
    options.setdefault("speed", SIM_SPEED)
    async with simulator(**options) as server:
        log = UpstreamLog()
        log.watch(server)
        yield server, log


async def hold(server: Any, *modes: str, each: int = 3, total: int = 600) -> None:
    """From now on upstream requests fail as `modes` say: one mode, every request until
    `lift`; several, mixed, `each` requests of one, then `each` of the next, in turn, for
    `total` requests (more than a held stretch uses, until `lift`)."""
    if len(modes) == 1:
        plan = [(modes[0], 100_000)]
    else:
        plan = [(mode, each) for mode in itertools.islice(itertools.cycle(modes), total // each)]
    async with aiohttp.ClientSession() as session:
        for mode, count in plan:
            body: dict[str, Any] = {"mode": mode, "count": count}
            if mode == "timeout":
                body["delay_s"] = TIMEOUT_FAULT_DELAY_S
            async with session.post(f"{server.url}/__sim/fault", json=body) as resp:
                assert resp.status == 200, await resp.text()


def recovery_bound_s(modes: tuple[str, ...]) -> float:
    """The longest the relay may take to serve fresh data again once the upstream
    returns from `modes`: one cadence after the last failed poll ends, which is at once
    for an answer (5xx, garbage, errors in a 200), or the client's timeout for a request
    held when the fault lifted; after a 429, one cadence after the minute window clears."""
    wait_s = 0.0
    if "timeout" in modes:
        wait_s = max(wait_s, REQUEST_TIMEOUT_S)
    if "429" in modes:
        wait_s = max(wait_s, MINUTE_WALL_S)
    return wait_s + CADENCE_S + RECOVERY_SLACK_S


def lift(server: Any) -> float:
    """The upstream is healthy again from this instant (returned, monotonic)."""
    server.simulator.faults.clear()
    return time.monotonic()


@dataclass(frozen=True)
class Truth:
    """The simulator's truth for a game once played out."""

    final: tuple[int, int]
    goals: int  # goals that count (a shoot-out's kicks are events but not goals)
    shootout: bool
    # every goal event, shoot-out kicks and missed penalties included, as (team id,
    # player, detail): a multiset, since one player may score twice, even in a shoot-out
    goal_events: Counter[tuple[Any, ...]]


def true_final(server: Any, game_id: int) -> Truth:
    game = server.simulator.schedule.game_by_id(SPORT, game_id, time.time())
    assert game is not None, f"the simulator does not know game {game_id}"
    final = game.state_at(10**9)
    goals = [e for e in final.happened() if e.points > 0 and e.period != "PEN" and e.stat is None]
    teams = (game.home.id, game.away.id)
    told = Counter((teams[e.side], e.player.name if e.player else None, e.detail)
                   for e in game.events if e.kind == "Goal")
    return Truth(final.totals(), len(goals), any(e.period == "PEN" for e in game.events), told)


# -- the relay in front of it --

@dataclass
class Relay:
    stack: Stack
    process: subprocess.Popen[bytes]
    stderr: ChildLog


def start_relay(group: Processes, upstream_url: str, **settings: str) -> Relay:
    """`btsguru serve` with its pollers (SPORT only, live every CADENCE_S) in front of the
    upstream at `upstream_url`, on a scratch SQLite file and Redis prefix: the benchmarks'
    launcher (`bench.harness.start_stack`) with the chaos tests' settings. Blocking: call
    it through `asyncio.to_thread` while the upstream runs on the loop."""
    stack = start_stack(group, pollers=True, upstream_url=upstream_url,
                        email="chaos@example.com", settings={
                            "BTSGURU_SPORTS": SPORT,
                            f"POLL_LIVE_INTERVAL_{SPORT.upper()}_S": str(CADENCE_S),
                            f"POLL_CRUCIAL_INTERVAL_{SPORT.upper()}_S": str(CADENCE_S),
                            **settings})
    assert stack.server is not None
    return Relay(stack, stack.server, group.log(stack.server))


# -- what clients see --

@dataclass
class Answer:
    at: float  # monotonic, when the request was sent
    path: str
    status: int
    seconds: float
    json_body: bool
    retry_after: bool
    stale: bool | None  # /live: meta.stale; raw: X-Cache is STALE
    items: int  # /live: games; raw: the envelope's results


@dataclass
class Prober(Background):
    """REST traffic the whole time, every answer kept: the live list, the raw proxy on
    a query the pollers keep cached, and on one that was never fetched."""

    base_url: str
    api_key: str
    uncached: str = "Atlantis"  # a `countries` search no poller makes: always a miss
    fresh_misses: bool = False  # a new search every time: users spending the quota
    answers: list[Answer] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        """Let every request in flight finish and keep its answer: a request cancelled
        on the way would be counted by the server and missing here."""
        self.stopping.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 2 * USER_WAIT_S + 5)

    def paths(self) -> tuple[str, ...]:
        return (f"/v1/{SPORT}/live", f"/v1/{SPORT}/raw/fixtures?live=all",
                f"/v1/{SPORT}/raw/{USER_ONLY}?search={self.uncached}")

    async def _run(self, session: aiohttp.ClientSession) -> None:
        # one loop per path: a miss waiting on a hung upstream holds up no other probe
        await asyncio.gather(*(self._loop(session, index)
                               for index in range(len(self.paths()))))

    async def _loop(self, session: aiohttp.ClientSession, index: int) -> None:
        for n in itertools.count():
            if self.stopping.is_set():
                return
            if self.fresh_misses and USER_ONLY in self.paths()[index]:
                self.uncached = f"Atlantis{n}"
            await self.ask(session, self.paths()[index])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), PROBE_EVERY_S)

    async def ask(self, session: aiohttp.ClientSession, path: str) -> Answer:
        started = time.monotonic()
        try:
            async with session.get(self.base_url + path, headers={"X-API-Key": self.api_key},
                                   timeout=aiohttp.ClientTimeout(total=2 * USER_WAIT_S)) as r:
                raw = await r.read()
                answer = _answer(path, started, r.status, r.headers, raw)
        except (aiohttp.ClientError, TimeoutError):
            answer = Answer(started, path, 0, time.monotonic() - started, False, False, None, 0)
        self.answers.append(answer)
        return answer

    def since(self, after: float) -> list[Answer]:
        return [a for a in self.answers if a.at >= after]


def _answer(path: str, started: float, status: int, headers: Any, raw: bytes) -> Answer:
    seconds = time.monotonic() - started
    try:
        body = json.loads(raw)
        is_json = headers.get("Content-Type", "").startswith("application/json")
    except ValueError:
        body, is_json = None, False
    stale: bool | None = None
    items = 0
    if status == 200 and isinstance(body, dict):
        if "/raw/" in path:
            stale = headers.get("X-Cache") == "STALE"
            items = int(body.get("results") or 0)
        else:
            stale = bool(body.get("meta", {}).get("stale"))
            items = len(body.get("data") or [])
    return Answer(started, path, status, seconds, is_json, "Retry-After" in headers, stale,
                  items)


def misbehaviour(answers: list[Answer]) -> list[str]:
    """What no client may ever see: an answer that is not JSON, a 5xx other than a JSON
    502/503 with Retry-After, a 4xx, a hang past the contract's 10 s, a dropped request."""
    bad = []
    for a in answers:
        if a.status == 0:
            bad.append(f"{a.path}: no answer after {a.seconds:.1f} s")
        elif a.seconds > USER_WAIT_S + ANSWER_SLACK_S:
            bad.append(f"{a.path}: {a.status} after {a.seconds:.1f} s")
        elif not a.json_body:
            bad.append(f"{a.path}: {a.status} not JSON")
        elif a.status in (502, 503) and not a.retry_after:
            bad.append(f"{a.path}: {a.status} without Retry-After")
        elif a.status not in (200, 502, 503):
            bad.append(f"{a.path}: {a.status}")
    return bad


@dataclass
class Story:
    """Every event an SSE client of `sports.SPORT` received, in order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
        self.task = asyncio.create_task(self._run(session, base_url, api_key))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, session: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
        # One connection, never resumed: a chaos run must not need the client's help.
        async with session.get(f"{base_url}/v1/stream",
                               params={"channels": f"sports.{SPORT}", "api_key": api_key},
                               timeout=aiohttp.ClientTimeout(total=None)) as r:
            assert r.status == 200, await r.text()
            fields: dict[str, str] = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\r\n")
                if line == ": subscribed":
                    self.connected.set()
                elif line == "":
                    if "data" in fields:
                        self.events.append({"id": fields.get("id"), "event": fields.get("event"),
                                            "data": json.loads(fields["data"])})
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        raise AssertionError("the server ended the stream")

    def of_game(self, game_id: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["data"].get("game_id") == game_id]

    def game_ids(self) -> set[int]:
        return {e["data"]["game_id"] for e in self.events
                if isinstance(e["data"].get("game_id"), int)}


def score_steps(events: list[dict[str, Any]]) -> list[tuple[int | None, int | None]]:
    """The scores a client following `events` of one game saw, change after change."""
    home = away = None
    steps = []
    for e in events:
        changes = e["data"].get("changes") or {}
        if "home.score" in changes or "away.score" in changes:
            home = changes.get("home.score", home)
            away = changes.get("away.score", away)
            steps.append((home, away))
    return steps


def goal_events(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["data"]["event"].get("clock"), e["data"]["event"].get("team_id"),
             e["data"]["event"].get("player"), e["data"]["event"].get("detail"))
            for e in events if e["event"] == "game.event"
            and e["data"].get("event", {}).get("type") == "goal"]


@dataclass
class StoryCheck:
    games: int = 0
    finished: int = 0  # finished at the relay: their final score checked
    whole_games: int = 0  # followed from kick-off
    goals_told: int = 0
    goals_true: int = 0
    problems: list[str] = field(default_factory=list)


def check_story(story: Story, server: Any, finished: Callable[[int], bool]) -> StoryCheck:
    """The story a client was told against the simulator's truth. For every game it
    heard of: consecutive seqs, scores that never go back nor past the true final, each
    goal told once. For a game finished at the relay: the true final score. For one
    also followed from kick-off: exactly its true goals as `game.event`s."""
    result = StoryCheck()
    for game_id in sorted(story.game_ids()):
        events = story.of_game(game_id)
        result.games += 1
        seqs = [e["data"]["seq"] for e in events]
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            result.problems.append(f"game {game_id}: seqs not consecutive: {seqs}")
        truth = true_final(server, game_id)
        (home, away), true_goals, shootout = truth.final, truth.goals, truth.shootout
        steps = score_steps(events)
        for before, after in itertools.pairwise(steps):
            if any(a is not None and b is not None and a < b
                   for a, b in zip(after, before, strict=True)):
                result.problems.append(f"game {game_id}: score went back {before} -> {after}")
        if any((h or 0) > home or (a or 0) > away for h, a in steps):
            result.problems.append(f"game {game_id}: a phantom goal in {steps}")
        told = goal_events(events)
        # (clock, team, player, detail) -> (team, player, detail): the truth's own key
        excess = Counter(key[1:] for key in told) - truth.goal_events
        if excess:
            result.problems.append(f"game {game_id}: goals told more often than they "
                                   f"happened: {dict(excess)} in {told}")
        if not finished(game_id):
            continue
        result.finished += 1
        if steps and steps[-1] != (home, away):
            result.problems.append(f"game {game_id}: told {steps[-1]}, true {home}-{away}")
        # followed from kick-off: every goal is then a `game.event` (a game first seen
        # in play has the goals before that sighting in its snapshot instead)
        if any(e["event"] == "game.started" for e in events) and not shootout:
            result.whole_games += 1
            result.goals_told += len(told)
            result.goals_true += true_goals
            if len(told) != true_goals:
                result.problems.append(f"game {game_id}: {len(told)} goals told, "
                                       f"{true_goals} true")
    return result
