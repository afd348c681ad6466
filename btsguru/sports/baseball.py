"""Baseball (API-Baseball v1 `/games`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. Scores are `scores.{home,away}.total` (runs); the periods are the innings
IN1..IN9 and `EXTRA` (all extra innings, as the upstream sums them). Baseball has no
clock, and no status code for extra innings or half-innings (such a code is kept as
live when the game has a score, as for any code outside the contract's table).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from btsguru.sports.base import Game, League, Phase, Status
from btsguru.sports.fields import (
    current_period,
    int_or_none,
    name,
    obj,
    period,
    phase_of,
    season,
    team,
    text,
    utc_time,
    warn_once,
)

SPORT = "baseball"
REGULATION_INNINGS = 9

# The contract's phase table (section 3), baseball's column.
PHASES: Mapping[str, Phase] = MappingProxyType({
    "NS": Phase.SCHEDULED,
    **{f"IN{n}": Phase.LIVE for n in range(1, REGULATION_INNINGS + 1)},
    "INTR": Phase.INTERRUPTED,
    "FT": Phase.FINISHED,
    "POST": Phase.POSTPONED,
    "CANC": Phase.CANCELLED, "ABD": Phase.CANCELLED,
})

# (upstream innings key, period name, status.period): the extra innings count as 10.
_PERIODS = (*((str(n), f"IN{n}", n) for n in range(1, REGULATION_INNINGS + 1)),
            ("extra", "EXTRA", REGULATION_INNINGS + 1))
_NUMBER_OF_PERIOD: Mapping[str, int] = MappingProxyType({n: i for _, n, i in _PERIODS})
_INNING_CODE = re.compile(r"IN(\d{1,2})")  # also reads an undocumented "IN10"


def normalize_game(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item as a Game, or None (with one warning) when it has no id."""
    game_id = int_or_none(item.get("id"))
    if game_id is None:
        warn_once(SPORT, "skipped an item without an id", "id")
        return None
    status = obj(item.get("status"))
    code = text(status.get("short")) or ""
    scores = obj(item.get("scores"))
    home_scores, away_scores = obj(scores.get("home")), obj(scores.get("away"))
    home, away = int_or_none(home_scores.get("total")), int_or_none(away_scores.get("total"))
    phase = phase_of(SPORT, PHASES, code, scored=home is not None or away is not None)
    if phase is Phase.SCHEDULED:
        home = away = None  # the contract: null before the game starts (periods: none)
    home_innings, away_innings = obj(home_scores.get("innings")), obj(away_scores.get("innings"))
    periods = tuple(p for key, period_name, _ in _PERIODS
                    if (p := period(period_name, home_innings.get(key),
                                    away_innings.get(key))) is not None)
    inning = _INNING_CODE.fullmatch(code)
    league, country = obj(item.get("league")), obj(item.get("country"))
    teams = obj(item.get("teams"))
    return Game(
        id=game_id,
        sport=SPORT,
        league=League(id=int_or_none(league.get("id")) or 0, name=name(league.get("name")),
                      country=text(country.get("name")), season=season(league.get("season"))),
        start_time=utc_time(item.get("timestamp"), item.get("date")),
        status=Status(phase=phase, code=code, detail=text(status.get("long")), clock=None,
                      period=int(inning.group(1)) if inning else current_period(
                          code, phase, periods, {}, _NUMBER_OF_PERIOD),
                      server_time=observed_at),
        home=team(teams.get("home"), home),
        away=team(teams.get("away"), away),
        periods=() if phase is Phase.SCHEDULED else periods,
    )
