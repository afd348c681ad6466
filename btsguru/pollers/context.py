"""What every poller task of one sport shares: how the sport's upstream is asked
(`QUERIES`), the context a task runs in (`SportContext`: fetcher, store, books, budget,
state, lock), and the upstream calls of one run (`RunCalls`).

Where it sits: upstream client -> **pollers** -> normalize -> GameStore. `Pollers`
(`service.py`) builds one `SportContext` per sport; the tasks (`tasks.py`) run on it;
`RunCalls` turns the upstream's failures into the run's report and the scheduler's
`IterationFailed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

from btsguru.clock import Clock
from btsguru.diff import GAME_EVENT
from btsguru.errors import BtsguruError
from btsguru.pollers.book import DueBook, ScheduleBook
from btsguru.pollers.budget import SportBudget
from btsguru.pollers.cadence import CadenceSettings, PollShape, is_host_failure
from btsguru.pollers.fetch import Fetcher
from btsguru.pollers.scheduler import IterationFailed, RunReport
from btsguru.pollers.state import PollerState
from btsguru.sports.base import Game, Phase
from btsguru.sports.normalize import SPORTS_WITH_EVENTS, carry_events
from btsguru.sports.static import LeagueInfo, TeamInfo
from btsguru.store.games import IngestResult

# Roughly how often a game in play scores (hockey: ~6 goals in ~90 min of play): each
# goal costs one event fetch, for the budget's estimate.
GOAL_EVERY_S = 900.0


@dataclass(frozen=True)
class SportQueries:
    """How a sport's upstream is asked (API-SPORTS.md sections 4 and 5)."""

    list_endpoint: str
    live_all: bool  # has `live=all`
    finals_by_ids: bool  # `ids=` (football): finals and missing events, 20 a call
    events_endpoint: str | None  # a per-game event feed, and its parameter
    events_param: str | None
    league_params: Mapping[str, str]

    def shape(self, settings: CadenceSettings) -> PollShape:
        details_per_game_s = 0.0
        if self.events_endpoint is not None:
            # the periodic refresh, plus one fetch per goal (hockey: ~1 per 15 min of play)
            details_per_game_s = 1 / settings.details_s + 1 / GOAL_EVERY_S
        return PollShape(live_calls=1.0, schedule_calls=3.0 if self.live_all else 2.0,
                         details_per_game_s=details_per_game_s,
                         details_per_finish=1.0 if self.live_all else 0.0)


QUERIES: Mapping[str, SportQueries] = MappingProxyType({
    "football": SportQueries("fixtures", True, True, None, None, {"current": "true"}),
    "basketball": SportQueries("games", False, False, None, None, {}),
    "hockey": SportQueries("games", False, False, "games/events", "game", {}),
    "baseball": SportQueries("games", False, False, None, None, {}),
    "american-football": SportQueries("games", True, False, None, None, {"current": "true"}),
})


class GameSink(Protocol):
    """What the pollers need of the GameStore."""

    async def ingest(self, sport: str, games: Sequence[Game]) -> IngestResult: ...

    async def live(self, sport: str) -> Sequence[Game]: ...

    async def list(self, sport: str, *, date: date | None = None) -> Sequence[Game]: ...

    async def save_leagues(self, sport: str, leagues: Sequence[LeagueInfo]) -> Any: ...

    async def save_teams(self, sport: str, teams: Sequence[TeamInfo]) -> Any: ...


class StandingsSink(Protocol):
    async def fetched(self, sport: str, league_id: int, season: str | None,
                      response_items: Any, fetched_at: float) -> int:
        """Store one `/standings` answer; returns the rows stored."""


@dataclass
class SportContext:
    """What every task of one sport shares."""

    sport: str
    queries: SportQueries
    settings: CadenceSettings
    clock: Clock
    fetcher: Fetcher
    games: GameSink
    standings: StandingsSink | None
    book: ScheduleBook
    due: DueBook
    budget: SportBudget
    state: PollerState
    lock: asyncio.Lock  # the game-writing tasks of the sport, one at a time

    @property
    def games_lease(self) -> str:
        return f"{self.sport}:games"


def utc_day(epoch_s: float, offset_days: int = 0) -> str:
    return (datetime.fromtimestamp(epoch_s, UTC) + timedelta(days=offset_days)).strftime(
        "%Y-%m-%d")


def game_day(game: Game) -> str:
    return game.start_time[:10]  # "2024-08-16T19:00:00Z": its UTC day


def tally(result: IngestResult, report: RunReport) -> None:
    """Count what `GameStore.ingest` published."""
    report.changes += len(result.changes)
    report.game_events += sum(1 for c in result.changes if c.change.event == GAME_EVENT)


async def carry_stored(ctx: SportContext, games: Sequence[Game],
                       known: Mapping[int, Game]) -> list[Game]:
    """`games`, each keeping the events the store holds when its query carried none.

    A date sweep has no events (football's `date=`, every hockey `/games`): stored as
    they are, they would read as "every event removed". `known` holds the stored games
    already read (the live set); the others that may have events are read here.
    """
    if ctx.sport not in SPORTS_WITH_EVENTS:
        return list(games)
    unknown = [g for g in games
               if g.events is None and g.id not in known and g.status.phase is not Phase.SCHEDULED]
    found: dict[int, Game] = dict(known)
    # one read per day (the store's day index), not one per game
    for day in sorted({game_day(g) for g in unknown if g.start_time}):
        stored = await ctx.games.list(ctx.sport, date=date.fromisoformat(day))
        found.update((g.id, g) for g in stored)
    return [carry_events(found.get(g.id), g) for g in games]


class RunCalls:
    """The upstream calls of one run: failures are collected, not raised, so a run does
    what it can with the answers it got; `finish` raises the first failure after (the
    host's, when the host failed: the scheduler's next delay follows it).

    Once the host itself has failed (`is_host_failure`), the run's remaining calls are
    not made: they would most likely fail too, each spending a token, and the next run,
    one cadence later, asks again. A run is then one probe of the host."""

    def __init__(self, ctx: SportContext, report: RunReport) -> None:
        self._ctx = ctx
        self.report = report
        self.first: BaseException | None = None
        self.host_failed = False

    async def get(self, endpoint: str, params: Mapping[str, str]) -> list[Any] | None:
        """The envelope's `response` list, or None when the call failed or was skipped."""
        if self.host_failed:
            return None
        self.report.requests += 1
        try:
            body = await self._ctx.fetcher.get(self._ctx.sport, endpoint, params)
        except BtsguruError as exc:
            self.report.failures += 1
            self.report.errors.append(exc.message)
            if self.first is None or is_host_failure(exc):
                # the cause the scheduler's next delay follows: the host's failure wins
                self.first = exc
                self.host_failed = is_host_failure(exc)
            return None
        items = body.get("response")
        return items if isinstance(items, list) else []

    def finish(self) -> RunReport:
        if self.first is not None:
            raise IterationFailed(self.report, self.first)
        return self.report
