"""`Pollers`: the service that keeps the relay's data fresh (`serve`, `poll`, `refresh`,
`record`).

Where it sits: built once by the composition root (`app.open_services`) over the upstream
client, the raw cache, the quota governor and the GameStore; `serve` and `poll` call
`start()` and `stop()`, `refresh` calls `refresh()` (one pass, no leases), `record`
builds one with `namespace=` of its own and an observer on `fetcher`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.pollers.book import DueBook, ScheduleBook
from btsguru.pollers.budget import SportBudget
from btsguru.pollers.cadence import CadenceSettings
from btsguru.pollers.context import QUERIES, GameSink, SportContext, StandingsSink
from btsguru.pollers.fetch import Fetcher
from btsguru.pollers.lease import Leases
from btsguru.pollers.scheduler import IterationFailed, RunReport, Scheduler, Task
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.pollers.tasks import LiveTask, ScheduleTask, StandingsTask, StaticTask
from btsguru.store.cache import RawCache
from btsguru.store.redis import RedisStores
from btsguru.store.series import SeriesRecorder
from btsguru.upstream.client import UpstreamClient
from btsguru.upstream.quota import QuotaGovernor

log = logging.getLogger(__name__)

SCOPES = ("live", "today", "static", "all")
TASK_KINDS = ("live", "schedule", "static", "standings")


@dataclass
class RefreshSummary:
    """What `refresh` did, for its summary line and exit status."""

    requests: int = 0
    games: int = 0
    events: int = 0  # change events published
    game_events: int = 0  # in-game events among them
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0


class Pollers:
    """Every poller task of the configured sports, under one scheduler."""

    def __init__(self, config: Config, clock: Clock, redis: RedisStores,
                 upstream: UpstreamClient, cache: RawCache, quota: QuotaGovernor,
                 games: GameSink, standings: StandingsSink | None = None, *,
                 sports: Sequence[str] | None = None, kinds: Sequence[str] = TASK_KINDS,
                 use_leases: bool = True, namespace: str = "poll",
                 leases: Leases | None = None, series: SeriesRecorder | None = None) -> None:
        self.config = config
        self.clock = clock
        self.sports = tuple(sports if sports is not None else config.sports)
        self.settings = CadenceSettings.from_config(config)
        self.fetcher = Fetcher(upstream, cache)
        self.state = PollerState(redis, clock, namespace=namespace)
        self.reader = PollerStateReader(redis, clock)
        self.leases = (leases or Leases(redis, clock)) if use_leases else None
        book = ScheduleBook(redis, namespace=namespace)
        due = DueBook(redis, namespace=namespace)
        self.contexts: dict[str, SportContext] = {}
        for sport in self.sports:
            queries = QUERIES[sport]
            self.contexts[sport] = SportContext(
                sport=sport, queries=queries, settings=self.settings, clock=clock,
                fetcher=self.fetcher, games=games, standings=standings, book=book, due=due,
                budget=SportBudget(sport, queries.shape(self.settings), quota, book,
                                   self.settings, clock),
                state=self.state, lock=asyncio.Lock())
        self.scheduler = Scheduler(clock, self.state, self.leases,
                                   backoff=self.settings.backoff(), series=series)
        builders: dict[str, Callable[[SportContext], Task]] = {
            "live": LiveTask, "schedule": ScheduleTask, "static": StaticTask,
            "standings": StandingsTask}
        for ctx in self.contexts.values():
            for kind in kinds:
                if kind == "standings" and standings is None:
                    continue
                self.scheduler.add(builders[kind](ctx))

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    async def refresh(self, scope: str = "all", *, sports: Sequence[str] | None = None,
                      progress: Callable[[str], None] | None = None) -> RefreshSummary:
        """One pass of fetching into the cache and the database, without leases (an
        operator asked for it). Each task's line goes to `progress`."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        summary = RefreshSummary()
        for sport in sports or self.sports:
            ctx = self.contexts[sport]
            steps: list[Task] = []
            if scope in ("today", "all"):
                steps.append(ScheduleTask(ctx, include_today=True))
            if scope in ("live", "today", "all"):
                # today's games in play come from the live query, with their events
                steps.append(LiveTask(ctx))
            if scope in ("static", "all"):
                steps.append(StaticTask(ctx, force=True))
                if ctx.standings is not None:
                    steps.append(StandingsTask(ctx, force=True))
            for step in steps:
                started = time.monotonic()
                try:
                    report = await step.run_once()
                except IterationFailed as exc:
                    report = exc.report
                ms = (time.monotonic() - started) * 1000
                summary.requests += report.requests
                summary.games += report.games
                summary.events += report.changes
                summary.game_events += report.game_events
                summary.failures += report.failures
                summary.errors.extend(report.errors)
                if progress is not None:
                    progress(_line(sport, step.task, report, ms))
        return summary


def _line(sport: str, task: str, report: RunReport, ms: float) -> str:
    text = (f"{sport} {task}: {report.requests} request{'s' if report.requests != 1 else ''}, "
            f"{report.games} games, {report.changes} events")
    if report.live_games is not None:
        text += f", {report.live_games} live"
    for name, value in report.extra.items():
        if name != "details_calls":
            text += f", {value} {name.replace('_', ' ')}"
    text += f" ({ms:.0f} ms)"
    if report.failures:
        text += f" - {report.failures} FAILED: {report.errors[0]}"
    return text
