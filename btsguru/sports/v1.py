"""The API-Sports v1 `/games` family (basketball, hockey, baseball, American football) -> Game.

Where it sits: inside `normalize`, under the per-sport adapters. The v1 APIs lay a game
out the same way: an id, a status `{short, long, ...}`, a league, two teams and scores;
they differ in where each of those sits and in how the scores split into periods. Each
sport module states its own layout as a `GamesShape` (its phase table, its score and
period keys, where its status, clock and country live); this module turns any item of
such a shape into a Game, so the rules (null scores before the start, the period in a
break, unknown codes) are written once for all four.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from btsguru.sports.base import Game, Period, Phase, Status
from btsguru.sports.fields import (
    current_period,
    game_id,
    int_or_none,
    league,
    obj,
    period,
    phase_and_score,
    team,
    text,
    utc_time,
)

# A game's scores as read from its item: the home total, the away total, and the periods
# that have begun (the totals as the upstream sent them, before the contract's rules).
Scores = tuple[int | None, int | None, tuple[Period, ...]]

# One row of a sport's period table: (upstream key, period name, status.period).
PeriodKey = tuple[str, str, int]


def side_scores(value: Any, periods: Iterable[PeriodKey], within: str | None = None) -> Scores:
    """Scores kept per side, `{home: {total, ...}, away: {total, ...}}`: each period's
    score is beside the total under its own key, or in the side's `within` object
    (baseball's `innings`)."""
    scores = obj(value)
    home_scores, away_scores = obj(scores.get("home")), obj(scores.get("away"))
    home_periods, away_periods = home_scores, away_scores
    if within is not None:
        home_periods, away_periods = obj(home_scores.get(within)), obj(away_scores.get(within))
    return (int_or_none(home_scores.get("total")), int_or_none(away_scores.get("total")),
            tuple(p for key, period_name, _ in periods
                  if (p := period(period_name, home_periods.get(key),
                                  away_periods.get(key))) is not None))


def start_time_of(game: Mapping[str, Any]) -> str:
    """The start time from the game's `timestamp`, or failing that its ISO `date`."""
    return utc_time(game.get("timestamp"), game.get("date"))


@dataclass(frozen=True)
class GamesShape:
    """How one sport's v1 `/games` item lays out a game (see the sport's module)."""

    sport: str
    phases: Mapping[str, Phase]  # the contract's phase table, this sport's column
    scores: Callable[[Mapping[str, Any]], Scores]  # reads the item's totals and periods
    period_of_code: Callable[[str], int | None]  # status.period while a code names a period
    number_of_period: Mapping[str, int]  # period name -> status.period (breaks, stoppages)
    game_key: str | None = None  # id, status and start time sit in item[game_key], not item
    clock_in: Literal["status", "game"] | None = "status"  # where `timer` sits; None: no clock
    country_in_league: bool = False  # the country is `league.country`, not the item's `country`
    start_time: Callable[[Mapping[str, Any]], str] = start_time_of  # reads the game object
    # The sport has events, fetched apart (`/games/events`): a game's `events` is () before
    # the start and None ("not fetched") after; None throughout for sports without events.
    events_fetched_apart: bool = False


def normalize_game(shape: GamesShape, item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item of `shape` as a Game, or None (with one warning) when it has no id."""
    game = item if shape.game_key is None else obj(item.get(shape.game_key))
    number = game_id(shape.sport, game.get("id"),
                     "id" if shape.game_key is None else f"{shape.game_key}.id")
    if number is None:
        return None
    status = obj(game.get("status"))
    code = text(status.get("short")) or ""
    home, away, periods = shape.scores(item)
    phase, home, away = phase_and_score(shape.sport, shape.phases, code, home, away)
    scheduled = phase is Phase.SCHEDULED  # the contract: no score and no periods yet
    league_data = obj(item.get("league"))
    country = obj(league_data.get("country") if shape.country_in_league else item.get("country"))
    clock = None
    if shape.clock_in is not None:
        clock = text((status if shape.clock_in == "status" else game).get("timer"))
    teams = obj(item.get("teams"))
    return Game(
        id=number,
        sport=shape.sport,
        league=league(league_data, text(country.get("name"))),
        start_time=shape.start_time(game),
        status=Status(phase=phase, code=code, detail=text(status.get("long")), clock=clock,
                      period=current_period(code, phase, periods, shape.period_of_code,
                                            shape.number_of_period),
                      server_time=observed_at),
        home=team(teams.get("home"), home),
        away=team(teams.get("away"), away),
        periods=() if scheduled else periods,
        events=() if scheduled and shape.events_fetched_apart else None,
    )
