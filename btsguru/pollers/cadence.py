"""How often each poller asks the upstream: pure, table-driven decisions.

Where it sits: the pollers' tasks (`tasks.py`) ask this module, after every run, how long
to sleep; nothing here does I/O or reads a clock: the caller passes `now` (its injected
clock's) and what it knows (the games in play, the day's schedule, the quota snapshot).

The decisions, in the order they apply:
1. Live data: each sport's target interval while games are in play
   (`POLL_LIVE_INTERVAL_<SPORT>_S`), shorter in crucial moments (`POLL_CRUCIAL_...`,
   see `CRUCIAL_RULES`: last minutes, overtime or extra time, shoot-outs, a close score
   late). With nothing in play, slow down to `POLL_IDLE_INTERVAL_S`, but wake
   `POLL_PREGAME_LEAD_S` before the next scheduled start.
2. The budget decides in the end: the sport's share of the day's quota still left
   (`budget_for_pollers`) is compared with what the pollers would spend until 00:00 UTC
   at their desired cadence (`estimate_demand`, from the day's expected live hours);
   when it does not fit, cadences stretch in `STRETCH_ORDER`: static data first, then
   standings and schedules, then event details, live scores last (`plan_stretch`).
3. Failures (`delay_after_failure`): after the upstream host failed, exactly the cadence
   (the next run is the retry and the breaker's probe: never more often than healthy,
   and fresh within one cadence of the host's return); a budget wall waits for the time
   it names; anything else (Redis, a refused key) the cadence plus exponential backoff.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from btsguru.backoff import Backoff
from btsguru.config import Config
from btsguru.sports import SPORTS
from btsguru.sports.base import Game, Phase
from btsguru.upstream.errors import HOST_FAILURE_KINDS, CircuitOpen, FetchError, QuotaExhausted

DAY_S = 86_400.0


class Kind(StrEnum):
    """The kinds of poller work, each with its own cadence."""

    LIVE = "live"  # scores and statuses of games in play
    DETAILS = "details"  # in-game events fetched separately (hockey), finished games' finals
    SCHEDULE = "schedule"  # yesterday's, today's and tomorrow's games
    STANDINGS = "standings"  # league tables
    STATIC = "static"  # leagues and teams


# Under budget pressure the slowest-changing data gives way first; live scores last.
STRETCH_ORDER: tuple[Kind, ...] = (Kind.STATIC, Kind.STANDINGS, Kind.SCHEDULE, Kind.DETAILS,
                                   Kind.LIVE)
# How far each kind may be stretched before the next in line is touched. Static data
# refreshed every 2 days instead of 6 h loses little; a schedule every hour instead of
# every 15 min still catches postponements the same day. Live is never capped: when the
# budget cannot carry it, live data slows down until it does.
MAX_STRETCH: Mapping[Kind, float] = MappingProxyType({
    Kind.STATIC: 8.0, Kind.STANDINGS: 8.0, Kind.SCHEDULE: 4.0, Kind.DETAILS: 4.0})

# From kick-off to the final status, a generous typical length (breaks and stoppages
# included): how long a scheduled game is expected to keep the live poller busy.
TYPICAL_GAME_S: Mapping[str, float] = MappingProxyType({
    "football": 2 * 3600, "basketball": 2.5 * 3600, "hockey": 2.75 * 3600,
    "baseball": 3.25 * 3600, "american-football": 3.5 * 3600})

MIN_INTERVAL_S = 1.0  # never poll faster than this, whatever a setting or a bug says


@dataclass(frozen=True)
class SportCadence:
    live_s: float  # while games are in play
    crucial_s: float  # while any game in play is in a crucial moment


@dataclass(frozen=True)
class CadenceSettings:
    """The cadence settings (all in seconds except `budget_share`)."""

    live: Mapping[str, SportCadence]
    idle_s: float
    pregame_lead_s: float
    schedule_s: float
    details_s: float
    standings_live_s: float
    standings_idle_s: float
    static_s: float
    budget_share: float  # of each sport's daily quota the pollers plan to spend
    backoff_base_s: float
    backoff_cap_s: float

    @classmethod
    def from_config(cls, config: Config) -> CadenceSettings:
        def per_sport(prefix: str, sport: str) -> float:
            value: int = getattr(config, f"{prefix}_{sport.replace('-', '_')}_s")
            return float(value)

        live = {sport: SportCadence(per_sport("poll_live_interval", sport),
                                    min(per_sport("poll_crucial_interval", sport),
                                        per_sport("poll_live_interval", sport)))
                for sport in SPORTS}
        return cls(
            live=MappingProxyType(live),
            idle_s=float(config.poll_idle_interval_s),
            pregame_lead_s=float(config.poll_pregame_lead_s),
            schedule_s=float(config.poll_schedule_interval_s),
            details_s=float(config.poll_details_interval_s),
            standings_live_s=float(config.poll_standings_live_interval_s),
            standings_idle_s=float(config.poll_standings_idle_interval_s),
            static_s=float(config.poll_static_interval_s),
            budget_share=config.poll_budget_share_percent / 100,
            backoff_base_s=float(config.poll_backoff_base_s),
            backoff_cap_s=float(config.poll_backoff_cap_s))

    def backoff(self) -> Backoff:
        return Backoff(base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)


# -- 1. live cadence and crucial moments ------------------------------------------------

_INT = re.compile(r"\d+")


def _minute(clock: str | None) -> int | None:
    """The match minute of a clock counting up ("67", "90+3" -> 93, "P3 17" -> 17)."""
    if not clock:
        return None
    numbers = [int(n) for n in _INT.findall(clock)]
    if not numbers:
        return None
    if "+" in clock and len(numbers) >= 2:
        return numbers[-2] + numbers[-1]
    return numbers[-1]


def _seconds_left(clock: str | None) -> int | None:
    """A countdown clock "MM:SS" in seconds (American football)."""
    if not clock or ":" not in clock:
        return None
    minutes, _, seconds = clock.partition(":")
    if not (minutes.strip().isdigit() and seconds.strip().isdigit()):
        return None
    return int(minutes) * 60 + int(seconds)


def _margin(game: Game) -> int | None:
    if game.home.score is None or game.away.score is None:
        return None
    return abs(game.home.score - game.away.score)


def _close(game: Game, points: int) -> bool:
    margin = _margin(game)
    return margin is not None and margin <= points


def _football(game: Game) -> str | None:
    code, minute = game.status.code, _minute(game.status.clock)
    if code in ("ET", "BT"):
        return "extra time"
    if code == "P":
        return "penalty shoot-out"
    if code == "2H" and minute is not None and minute >= 85:
        return "last minutes"
    if code == "2H" and minute is not None and minute >= 70 and _close(game, 1):
        return "close score late"
    return None


def _basketball(game: Game) -> str | None:
    code, minute = game.status.code, _minute(game.status.clock)
    if code == "OT":
        return "overtime"
    if code == "Q4" and minute is not None and minute >= 8:  # the minute of the quarter
        return "last minutes"
    if code == "Q4" and _close(game, 6):
        return "close score late"
    return None


def _hockey(game: Game) -> str | None:
    code, minute = game.status.code, _minute(game.status.clock)
    if code == "OT":
        return "overtime"
    if code == "PT":
        return "shoot-out"
    if code == "P3" and minute is not None and minute >= 15:
        return "last minutes"
    if code == "P3" and _close(game, 1):
        return "close score late"
    return None


def _baseball(game: Game) -> str | None:
    inning = game.status.period
    if inning is not None and inning >= 9:
        return "last innings"
    if inning is not None and inning >= 7 and _close(game, 2):
        return "close score late"
    return None


def _american_football(game: Game) -> str | None:
    code, left = game.status.code, _seconds_left(game.status.clock)
    if code == "OT":
        return "overtime"
    if code in ("Q2", "Q4") and left is not None and left <= 120:
        return "two-minute warning"
    if code == "Q4" and _close(game, 8):
        return "one-score game late"
    return None


# sport -> rule: the reason a game in play is in a crucial moment, or None
CRUCIAL_RULES: Mapping[str, Callable[[Game], str | None]] = MappingProxyType({
    "football": _football, "basketball": _basketball, "hockey": _hockey,
    "baseball": _baseball, "american-football": _american_football})


def crucial_reason(game: Game) -> str | None:
    """Why this game needs a faster cadence now, or None. Only games in live play count
    (a break is not crucial: nothing happens until it ends)."""
    if game.status.phase is not Phase.LIVE:
        return None
    rule = CRUCIAL_RULES.get(game.sport)
    return rule(game) if rule is not None else None


@dataclass(frozen=True)
class LiveDecision:
    interval_s: float
    reason: str  # for the logs and the ops view: "live", "crucial: extra time", "idle"...


def live_decision(sport: str, games: Iterable[Game], now: float, next_start: float | None,
                  settings: CadenceSettings, stretch: float = 1.0) -> LiveDecision:
    """The live poller's next interval, from the games of the sport it last saw.

    `next_start`: epoch seconds of the next scheduled kick-off (None when unknown);
    `stretch`: the budget's factor for live data (>= 1).
    """
    cadence = settings.live[sport]
    idle_s = _at_least(settings.idle_s)

    def stretched(seconds: float) -> float:
        # a budget too small for live data slows it to the idle cadence, no further: the
        # governor refuses tokens once the day is spent, and the wait is then until 00:00
        return _at_least(min(seconds * stretch, max(seconds, idle_s)))

    in_play = [g for g in games if g.status.phase.in_play]
    if in_play:
        for game in in_play:
            reason = crucial_reason(game)
            if reason is not None:
                return LiveDecision(stretched(cadence.crucial_s),
                                    f"crucial: {reason} ({game.id})")
        return LiveDecision(stretched(cadence.live_s), f"{len(in_play)} in play")
    live_s = stretched(cadence.live_s)
    if next_start is None:
        return LiveDecision(idle_s, "idle, nothing scheduled")
    wake_in_s = next_start - settings.pregame_lead_s - now
    if wake_in_s <= live_s:
        return LiveDecision(live_s, "a game starts soon")
    if wake_in_s < idle_s:
        return LiveDecision(wake_in_s, "idle until the next start")
    return LiveDecision(idle_s, "idle")


def standings_interval_s(league_live: bool, settings: CadenceSettings,
                         stretch: float = 1.0) -> float:
    """The upstream's advice: hourly while a league has a game live, else daily."""
    base = settings.standings_live_s if league_live else settings.standings_idle_s
    return _at_least(base * stretch)


def _at_least(seconds: float) -> float:
    return max(MIN_INTERVAL_S, seconds)


# -- 2. the budget -------------------------------------------------------------------------


def seconds_left_in_day(now: float) -> float:
    """Until 00:00 UTC, when the upstream's daily counters reset."""
    return DAY_S - (now % DAY_S)


def expected_live_seconds(starts: Iterable[float], now: float, until: float,
                          typical_game_s: float) -> float:
    """Seconds in [now, until) during which at least one game is expected in play, from
    the kick-off times of the games not finished yet (each assumed to last
    `typical_game_s`; a game past its typical end but not finished counts from now
    for a quarter of that)."""
    spans: list[tuple[float, float]] = []
    for start in starts:
        end = start + typical_game_s
        if end <= now:  # late: still expected for a while
            end = now + typical_game_s / 4
        lo, hi = max(start, now), min(end, until)
        if hi > lo:
            spans.append((lo, hi))
    total = 0.0
    cursor = now
    for lo, hi in sorted(spans):
        begin = max(lo, cursor)
        if hi > begin:
            total += hi - begin
            cursor = hi
    return total


def expected_game_seconds(starts: Iterable[float], now: float, until: float,
                          typical_game_s: float) -> float:
    """The sum over games of their expected time in play in [now, until) (two games at
    once count twice): what per-game detail polling scales with."""
    total = 0.0
    for start in starts:
        end = start + typical_game_s
        if end <= now:
            end = now + typical_game_s / 4
        total += max(0.0, min(end, until) - max(start, now))
    return total


@dataclass(frozen=True)
class DayOutlook:
    """What the schedule says about the rest of one sport's UTC day."""

    seconds_left: float
    live_seconds: float  # with at least one game in play
    game_seconds: float  # summed over games
    games_left: int  # not finished yet
    leagues: int  # leagues of interest (with games yesterday to tomorrow)
    live_leagues: int  # leagues with a game in play now


def day_outlook(sport: str, unfinished_starts: Iterable[float], now: float, *,
                leagues: int, live_leagues: int) -> DayOutlook:
    starts = list(unfinished_starts)
    left = seconds_left_in_day(now)
    typical = TYPICAL_GAME_S.get(sport, 3 * 3600)
    return DayOutlook(
        seconds_left=left,
        live_seconds=expected_live_seconds(starts, now, now + left, typical),
        game_seconds=expected_game_seconds(starts, now, now + left, typical),
        games_left=len(starts), leagues=leagues, live_leagues=live_leagues)


@dataclass(frozen=True)
class PollShape:
    """How many upstream calls one run of each task makes for a sport."""

    live_calls: float  # 1 (live=all), or the dates swept
    schedule_calls: float  # dates swept by the schedule task
    details_per_game_s: float  # calls per second per game in play (0: no detail feed)
    details_per_finish: float  # calls when a game leaves the live list (its final)


def estimate_demand(sport: str, outlook: DayOutlook, shape: PollShape,
                    settings: CadenceSettings) -> dict[Kind, float]:
    """Upstream calls each kind of task would make until 00:00 UTC at its desired cadence.

    Live counts the normal (not crucial) interval: crucial moments are minutes of a
    game, and the margin the budget share leaves absorbs them.
    """
    left, live = outlook.seconds_left, min(outlook.live_seconds, outlook.seconds_left)
    cadence = settings.live[sport]
    idle = left - live
    # an idle poller wakes at most every idle_s, and once before each start
    idle_runs = idle / settings.idle_s + min(outlook.games_left, idle / max(1.0, cadence.live_s))
    live_runs = live / cadence.live_s
    hours_live = live / 3600
    return {
        Kind.LIVE: shape.live_calls * (live_runs + idle_runs),
        Kind.DETAILS: (outlook.game_seconds * shape.details_per_game_s
                       + outlook.games_left * shape.details_per_finish),
        Kind.SCHEDULE: shape.schedule_calls * left / settings.schedule_s,
        Kind.STANDINGS: (outlook.live_leagues * hours_live * 3600 / settings.standings_live_s
                         + outlook.leagues * max(1.0, left / settings.standings_idle_s)),
        Kind.STATIC: (1 + outlook.leagues) * max(1.0, left / settings.static_s),
    }


def budget_for_pollers(day_limit: int, day_remaining: int, now: float, share: float) -> float:
    """Requests the pollers may still spend today: what is left, less the user misses'
    allowance (`1 - share` of the day's quota) for the rest of the day, pro rata."""
    keep_for_users = (1 - share) * day_limit * seconds_left_in_day(now) / DAY_S
    return max(0.0, day_remaining - keep_for_users)


def plan_stretch(demand: Mapping[Kind, float], budget: float) -> dict[Kind, float]:
    """Factors (>= 1) to multiply each kind's interval by so that the demand fits the
    budget, stretching in `STRETCH_ORDER`, each up to `MAX_STRETCH` except live."""
    stretch = dict.fromkeys(Kind, 1.0)
    deficit = sum(demand.values()) - budget
    for kind in STRETCH_ORDER:
        if deficit <= 0:
            break
        want = demand.get(kind, 0.0)
        if want <= 0:
            continue
        cap = MAX_STRETCH.get(kind, math.inf)
        most_saved = want * (1 - 1 / cap)
        if most_saved >= deficit:
            stretch[kind] = want / (want - deficit)
            deficit = 0.0
        else:
            stretch[kind] = cap
            deficit -= most_saved
    if deficit > 0:
        # nothing left for live data at all (`live_decision` caps the stretch at the idle
        # cadence; the governor refuses tokens once the day is spent)
        stretch[Kind.LIVE] = math.inf
    return stretch


# -- 3. failures -----------------------------------------------------------------------------


def delay_after_failure(exc: BaseException, cadence_s: float, failures: int,
                        backoff: Backoff) -> float:
    """How long a task sleeps after its `failures`-th failed run in a row.

    - The upstream host failed (timeout, connection, 5xx, garbage, errors in a 200), or
      the breaker refused the call because another probe is out: exactly the cadence. A
      failing poller then asks no more often than a healthy one, each run is one probe
      of the host (`breaker.py`), and the first run after the host returns, at most one
      cadence later, is fresh again. Backoff on top would only delay that run: the
      breaker already keeps users' misses off the failing host.
    - A budget wall (`QuotaExhausted`: the day, or the minute window after a 429) names
      its own wait: no sooner than that (recovery is then within one cadence of the
      window clearing).
    - Anything else (Redis or the database away, the key refused, a bug): the cadence
      plus exponential backoff with full jitter (`POLL_BACKOFF_BASE_S` doubling up to
      `POLL_BACKOFF_CAP_S`), so that tasks failing together spread out.
    """
    if isinstance(exc, QuotaExhausted) and exc.retry_after_s:
        return max(cadence_s, float(exc.retry_after_s))
    if is_host_failure(exc):
        return cadence_s
    return cadence_s + backoff.compute(failures)


def is_host_failure(exc: BaseException) -> bool:
    """The upstream host is failing: its answer said so, or the breaker did."""
    return isinstance(exc, CircuitOpen) or (
        isinstance(exc, FetchError) and exc.kind in HOST_FAILURE_KINDS)
