"""The poller tasks of one sport: live scores, the schedule, static data and standings.

Where it sits: upstream client -> **pollers** -> normalize -> GameStore.ingest (diff, seq,
history, bus). Each task is run in a loop by the `Scheduler`; one `run_once` fetches
(through `Fetcher`, which also fills the raw cache), normalizes and stores, then says how
long to sleep (`cadence.py`). What the tasks of a sport share (how its upstream is
asked, the `SportContext`, one run's `RunCalls`) is in `context.py`.

The work grows with live games; the requests grow much more slowly:
- live (`LiveTask`): football and American football ask `live=all` (one call, every game
  in play, football's with their events); basketball, hockey and baseball have no live
  query and sweep `games?date=<today UTC>` (one call; also the day of a game still in
  play from before midnight, and yesterday once a day), filtered locally. Details come
  batched and only when needed: games that left football's live list get their final
  state through `fixtures?ids=` (up to 20 a call, events included; also any live game
  whose events were missing); American football's through the date of their day; hockey
  fetches `games/events?game=ID` for a game in play when its score changed since its
  events were last fetched, or when they are older than `POLL_DETAILS_INTERVAL_S`, at
  most `MAX_DETAIL_CALLS_PER_RUN` a run (spread over runs).
- schedule (`ScheduleTask`): yesterday, today and tomorrow by date, a few times an hour
  (the date-sweeping sports leave today to the live task); it stores the games not in
  play (those are the live task's, except a date-sweeping sport's game in play that the
  live task is not chasing: it is handed over), fills the schedule book, and wakes the
  live task when a game starts before its next run.
- static (`StaticTask`): the leagues, then the teams of each league of interest (with
  games yesterday to tomorrow), every `POLL_STATIC_INTERVAL_S`.
- standings (`StandingsTask`): each league of interest hourly while it has a game in
  play, daily otherwise.

The live and schedule tasks of a sport write the same games, so they share one lease
(`<sport>:games`: they always run in the same process) and one lock: two writers of a
game could otherwise store an older answer after a newer one, and a goal would be sent
twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from btsguru.pollers.book import (
    BookEntry,
    entry_of,
    leagues_of_interest,
    next_start,
)
from btsguru.pollers.cadence import (
    Kind,
    LiveDecision,
    live_decision,
    standings_interval_s,
)
from btsguru.pollers.context import (
    RunCalls,
    SportContext,
    carry_stored,
    game_day,
    tally,
    utc_day,
)
from btsguru.pollers.scheduler import RunReport
from btsguru.pollers.state import iso_utc
from btsguru.sports.base import Game
from btsguru.sports.normalize import (
    normalize_events,
    normalize_games,
    with_events,
)
from btsguru.sports.static import leagues_from_upstream, teams_from_upstream

log = logging.getLogger(__name__)

MAX_IDS = 20  # the upstream's cap on football's `ids=`
# Hockey event fetches per live run: with 15 s runs, 4 a run covers 16 games a minute,
# and a busy evening's goals still get their events within a run or two.
MAX_DETAIL_CALLS_PER_RUN = 4
# Teams or standings fetched per run of the slow tasks: a new day's leagues are spread
# over a few runs instead of a burst against the minute quota.
MAX_SLOW_CALLS_PER_RUN = 10
# The slow tasks look for due work this often (no upstream call when nothing is due).
STANDINGS_CHECK_S = 300.0


def _moved(entry: BookEntry | None, game: Game) -> bool:
    """The game is new to the book, or its phase or start time changed since."""
    if entry is None or entry.phase is not game.status.phase:
        return True
    return bool(game.start_time) and entry.start_ts != entry_of(game).start_ts


def _handed_over(ctx: SportContext, entry: BookEntry | None, game: Game) -> bool:
    """A date-sweeping sport's game in play on another day's list that the live task is
    not chasing: one of yesterday's that resumed or kicked off late after midnight (the
    live task sweeps only today and the days of the games it has in play). Stored, it is
    in play in the store, and the live task sweeps its day from then on. Not a game the
    book knows to be over: a list cached upstream must not bring a final back to life."""
    return not ctx.queries.live_all and (entry is None or not entry.finished)


def _chunks(ids: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


class LiveTask:
    """Scores and statuses of the games in play (see the module docstring)."""

    task = "live"

    def __init__(self, ctx: SportContext) -> None:
        self._ctx = ctx
        self.sport = ctx.sport
        self.lease = ctx.games_lease
        self._decision = LiveDecision(ctx.settings.live[ctx.sport].live_s, "first run")
        # hockey: game id -> (when its events were fetched, the score then)
        self._events_seen: dict[int, tuple[float, tuple[int | None, int | None]]] = {}
        self.details_calls = 0
        # the date-sweeping sports: the last "yesterday" swept (see `_fetch`)
        self._yesterday_swept: str | None = None

    def next_delay_s(self) -> tuple[float, str]:
        return self._decision.interval_s, self._decision.reason

    async def _swept_before(self) -> str | None:
        """The "yesterday" the task last swept, whichever process ran it."""
        try:
            row = await self._ctx.state.load(self.sport, self.task)
        except (RedisError, OSError):
            return None
        return row.get("yesterday_swept")

    def cadence_s(self) -> float:
        return self._decision.interval_s

    async def run_once(self) -> RunReport:
        ctx = self._ctx
        report = RunReport()
        calls = RunCalls(ctx, report)
        plan = await ctx.budget.current()
        async with ctx.lock:
            now = ctx.clock.time()
            stored = {g.id: g for g in await ctx.games.live(ctx.sport)}
            fetched = await self._fetch(calls, stored, now)
            if fetched is None:  # the main query failed: nothing to store
                calls.finish()
            games = list((fetched or {}).values())
            if ctx.queries.events_endpoint is not None:
                games = await self._with_details(calls, games, stored, now,
                                                 ctx.settings.details_s * plan.factor(
                                                     Kind.DETAILS))
            entries = {e.game_id: e for e in await ctx.book.entries(ctx.sport)}
            # store what is or was in play, and any game whose phase moved on (a date
            # sweep repeats the day's other games unchanged: the schedule task has them)
            changed = [g for g in games if g.status.phase.in_play or g.id in stored
                       or _moved(entries.get(g.id), g)]
            if changed:
                changed = await carry_stored(ctx, changed, stored)
                tally(await ctx.games.ingest(ctx.sport, changed), report)
                await ctx.book.note(ctx.sport, changed, now)
        in_play = [g for g in games if g.status.phase.in_play]
        report.games = len(changed)
        report.live_games = len(in_play)
        upcoming = next_start(entries.values(), now)
        self._decision = live_decision(ctx.sport, in_play, now, upcoming, ctx.settings,
                                       plan.factor(Kind.LIVE))
        report.extra = {"details_calls": str(self.details_calls)}
        log.debug("%s live: %d in play, %d stored, %d changes, %d requests; next in %.0f s "
                  "(%s)", ctx.sport, len(in_play), len(changed), report.changes,
                  report.requests, self._decision.interval_s, self._decision.reason)
        return calls.finish()

    async def _sweep_days(self, calls: RunCalls, stored: Mapping[int, Game], now: float,
                          keep: Callable[[list[Any]], None]) -> bool:
        """The date-sweeping sports' live query: the days that may hold games in play,
        each answer handed to `keep`; False when no day was answered."""
        ctx, q = self._ctx, self._ctx.queries
        # Today, the day of each game in play (one that started before midnight is
        # on yesterday's list), and yesterday once a day: just after midnight a store
        # that never saw yesterday's games in play (a fresh deployment, `refresh`)
        # would otherwise miss them until they finish.
        yesterday = utc_day(now, -1)
        days = {utc_day(now)} | {game_day(g) for g in stored.values()}
        if self._yesterday_swept != yesterday:
            # kept in the task's row too: a process that takes the lease over (a
            # rolling restart moves it three times) does not sweep yesterday again
            self._yesterday_swept = await self._swept_before()
        if self._yesterday_swept != yesterday:
            days.add(yesterday)
        answered = False
        for day in sorted(days):
            items = await calls.get(q.list_endpoint, {"date": day})
            if items is not None:
                answered = True
                keep(items)
                if day == yesterday:
                    self._yesterday_swept = yesterday
                    with contextlib.suppress(RedisError, OSError):
                        await ctx.state.update(ctx.sport, self.task,
                                               {"yesterday_swept": yesterday})
        return answered

    async def _fetch(self, calls: RunCalls, stored: Mapping[int, Game],
                     now: float) -> dict[int, Game] | None:
        """The sport's live games (and the finals of those that left the live list)."""
        ctx, q = self._ctx, self._ctx.queries
        observed = iso_utc(now) or ""
        fetched: dict[int, Game] = {}

        def keep(items: list[Any], only: set[int] | None = None) -> None:
            for game in normalize_games(ctx.sport, items, observed_at=observed):
                if only is None or game.id in only:
                    fetched[game.id] = game

        if not q.live_all:
            return fetched if await self._sweep_days(calls, stored, now, keep) else None
        items = await calls.get(q.list_endpoint, {"live": "all"})
        if items is None:
            return None
        keep(items)
        departed = [gid for gid in stored if gid not in fetched]
        if q.finals_by_ids:
            wanted = departed + [g.id for g in fetched.values()
                                 if g.status.phase.in_play and g.events is None]
            for chunk in _chunks(wanted, MAX_IDS):
                items = await calls.get(q.list_endpoint, {"ids": "-".join(map(str, chunk))})
                if items is not None:
                    keep(items)
                    self.details_calls += 1
        elif departed:
            gone = set(departed)
            for day in sorted({game_day(stored[gid]) for gid in departed}):
                items = await calls.get(q.list_endpoint, {"date": day})
                if items is not None:
                    keep(items, only=gone)
                    self.details_calls += 1
        return fetched

    async def _with_details(self, calls: RunCalls, games: list[Game], stored: Mapping[int, Game],
                            now: float, refresh_s: float) -> list[Game]:
        """Games with the events of those due for a fetch (hockey's `/games/events`)."""
        ctx, q = self._ctx, self._ctx.queries
        assert q.events_endpoint is not None and q.events_param is not None
        due: list[tuple[int, float, Game]] = []
        for game in games:
            ended = game.id in stored and not game.status.phase.in_play
            if not (game.status.phase.in_play or ended):
                continue
            score = (game.home.score, game.away.score)
            seen = self._events_seen.get(game.id)
            if seen is None or seen[1] != score or ended:
                due.append((0, seen[0] if seen else 0.0, game))  # a goal: first
            elif now - seen[0] >= refresh_s:
                due.append((1, seen[0], game))
        due.sort(key=lambda entry: (entry[0], entry[1]))
        updated: dict[int, Game] = {}
        for _, _, game in due[:MAX_DETAIL_CALLS_PER_RUN]:
            items = await calls.get(q.events_endpoint, {q.events_param: str(game.id)})
            if items is None:
                continue
            self.details_calls += 1
            updated[game.id] = with_events(game, normalize_events(ctx.sport, items))
            if game.status.phase.in_play:
                self._events_seen[game.id] = (now, (game.home.score, game.away.score))
            else:
                self._events_seen.pop(game.id, None)
        live_ids = {g.id for g in games if g.status.phase.in_play}
        for gone in [gid for gid in self._events_seen if gid not in live_ids]:
            del self._events_seen[gone]
        return [updated.get(g.id, g) for g in games]


class ScheduleTask:
    """Yesterday's, today's and tomorrow's games (see the module docstring).

    `include_today` is for `refresh` (the date-sweeping sports' live task sweeps today
    when the pollers run)."""

    task = "schedule"

    def __init__(self, ctx: SportContext, *, include_today: bool | None = None) -> None:
        self._ctx = ctx
        self.sport = ctx.sport
        self.lease = ctx.games_lease
        self._include_today = ctx.queries.live_all if include_today is None else include_today
        self._interval_s = ctx.settings.schedule_s

    def next_delay_s(self) -> tuple[float, str]:
        return self._interval_s, "schedule"

    def cadence_s(self) -> float:
        return self._interval_s

    async def run_once(self) -> RunReport:
        ctx = self._ctx
        report = RunReport()
        calls = RunCalls(ctx, report)
        plan = await ctx.budget.current()
        self._interval_s = ctx.settings.schedule_s * plan.factor(Kind.SCHEDULE)
        now = ctx.clock.time()
        offsets = (-1, 0, 1) if self._include_today else (-1, 1)
        fetched: dict[int, Game] = {}
        observed = iso_utc(now) or ""
        async with ctx.lock:
            for offset in offsets:
                items = await calls.get(ctx.queries.list_endpoint, {"date": utc_day(now, offset)})
                if items is not None:
                    for game in normalize_games(ctx.sport, items, observed_at=observed):
                        fetched[game.id] = game
            live = {g.id: g for g in await ctx.games.live(ctx.sport)}
            entries = {e.game_id: e for e in await ctx.book.entries(ctx.sport)}
            # the live task's games are its own; of the others, what the book does not
            # know yet or knows differently (a new game, a status, a new start time),
            # and a game in play that the live task is not chasing (`_handed_over`)
            chosen = [g for g in fetched.values() if g.id not in live and (
                _handed_over(ctx, entries.get(g.id), g) if g.status.phase.in_play
                else _moved(entries.get(g.id), g))]
            if chosen:
                chosen = await carry_stored(ctx, chosen, live)
                tally(await ctx.games.ingest(ctx.sport, chosen), report)
            if fetched:
                await ctx.book.note(ctx.sport, fetched.values(), now)
        report.games = len(chosen)
        book = await ctx.book.entries(ctx.sport)
        await _wake_standings_for_new_leagues(ctx, book, now)
        upcoming = next_start(book, now)
        if upcoming is not None:
            wake_at = upcoming - ctx.settings.pregame_lead_s
            if await ctx.state.wake(ctx.sport, LiveTask.task, max(now, wake_at)):
                log.debug("%s schedule: live poller woken for the start at %s", ctx.sport,
                          iso_utc(upcoming))
        log.debug("%s schedule: %d games over %d days, %d stored, %d changes", ctx.sport,
                  len(fetched), len(offsets), len(chosen), report.changes)
        return calls.finish()


class StaticTask:
    """Leagues, and the teams of each league of interest."""

    task = "static"

    def __init__(self, ctx: SportContext, *, force: bool = False) -> None:
        self._ctx = ctx
        self.sport = ctx.sport
        self.lease = f"{ctx.sport}:static"
        self._force = force

    def next_delay_s(self) -> tuple[float, str]:
        # looks for due work as often as the schedule changes the leagues of interest
        return self._ctx.settings.schedule_s, "static data check"

    def cadence_s(self) -> float:
        return self._ctx.settings.schedule_s

    async def run_once(self) -> RunReport:
        ctx = self._ctx
        report = RunReport()
        calls = RunCalls(ctx, report)
        plan = await ctx.budget.current()
        refresh_s = ctx.settings.static_s * plan.factor(Kind.STATIC)
        now = ctx.clock.time()
        done = await ctx.due.fetched_at(ctx.sport, self.task)

        def is_due(item: str) -> bool:
            return self._force or now - done.get(item, float("-inf")) >= refresh_s

        if is_due("leagues"):
            items = await calls.get("leagues", ctx.queries.league_params)
            if items is not None:
                leagues = leagues_from_upstream(ctx.sport, items)
                await ctx.games.save_leagues(ctx.sport, leagues)
                await ctx.due.mark(ctx.sport, self.task, "leagues", now)
                report.extra["leagues"] = str(len(leagues))
        wanted = [(league, season) for (league, season) in
                  leagues_of_interest(await ctx.book.entries(ctx.sport))
                  if is_due(f"teams:{league}:{season}")]
        teams = 0
        for league, season in wanted[:MAX_SLOW_CALLS_PER_RUN]:
            params = {"league": str(league)}
            if season is not None:
                params["season"] = season
            items = await calls.get("teams", params)
            if items is None:
                continue
            found = teams_from_upstream(ctx.sport, items, league_id=league)
            await ctx.games.save_teams(ctx.sport, found)
            await ctx.due.mark(ctx.sport, self.task, f"teams:{league}:{season}", now)
            teams += len(found)
        report.extra["teams"] = str(teams)
        return calls.finish()


async def _wake_standings_for_new_leagues(ctx: SportContext, book: list[BookEntry],
                                          now: float) -> None:
    """Run the standings task now when the schedule brought a league whose table was
    never fetched (right after start-up, the first standings check finds an empty book:
    without this, the tables would wait for the next check, minutes away)."""
    if ctx.standings is None:
        return
    done = await ctx.due.fetched_at(ctx.sport, StandingsTask.task)
    fresh = [f"{league}:{season}" for league, season in leagues_of_interest(book)
             if f"{league}:{season}" not in done]
    if fresh and await ctx.state.wake(ctx.sport, StandingsTask.task, now):
        log.debug("%s schedule: standings woken for %d new leagues", ctx.sport, len(fresh))


class StandingsTask:
    """League tables: hourly while a league has a game in play, daily otherwise. Until
    the schedule has filled the book there is nothing to fetch: the task says so
    ("waiting for the schedule") rather than report a success that did nothing, and the
    schedule task wakes it as soon as there is (`_wake_standings_for_new_leagues`)."""

    task = "standings"

    def __init__(self, ctx: SportContext, *, force: bool = False) -> None:
        self._ctx = ctx
        self.sport = ctx.sport
        self.lease = f"{ctx.sport}:standings"
        self._force = force
        self._waiting = False  # the last run found no league in the schedule book

    def next_delay_s(self) -> tuple[float, str]:
        return STANDINGS_CHECK_S, ("waiting for the schedule" if self._waiting
                                   else "standings check")

    def cadence_s(self) -> float:
        return STANDINGS_CHECK_S

    async def run_once(self) -> RunReport:
        ctx = self._ctx
        report = RunReport()
        if ctx.standings is None:
            return report
        calls = RunCalls(ctx, report)
        plan = await ctx.budget.current()
        stretch = plan.factor(Kind.STANDINGS)
        now = ctx.clock.time()
        done = await ctx.due.fetched_at(ctx.sport, self.task)
        due = []
        leagues = leagues_of_interest(await ctx.book.entries(ctx.sport))
        self._waiting = not leagues
        if self._waiting:
            report.extra["standings"] = "waiting for the schedule"
        for (league, season), live in leagues.items():
            item = f"{league}:{season}"
            age = now - done.get(item, float("-inf"))
            if self._force or age >= standings_interval_s(live, ctx.settings, stretch):
                due.append((not live, -age, league, season, item))
        due.sort()  # leagues in play first, then the stalest
        rows = 0
        for _, _, league, season, item in due[:MAX_SLOW_CALLS_PER_RUN]:
            params = {"league": str(league)}
            if season is not None:
                params["season"] = season
            items = await calls.get("standings", params)
            if items is None:
                continue
            rows += await ctx.standings.fetched(ctx.sport, league, season, items, now)
            await ctx.due.mark(ctx.sport, self.task, item, now)
        report.extra["standings_rows"] = str(rows)
        return calls.finish()
