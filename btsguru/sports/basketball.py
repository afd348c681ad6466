"""Basketball (API-Basketball v1 `/games`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. Scores are `scores.{home,away}.total`; the periods are the quarters and one
`OT` (the upstream sums every overtime into `over_time`); the clock is `status.timer`.
"""

from __future__ import annotations

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

SPORT = "basketball"

# The contract's phase table (section 3), basketball's column.
PHASES: Mapping[str, Phase] = MappingProxyType({
    "NS": Phase.SCHEDULED,
    "Q1": Phase.LIVE, "Q2": Phase.LIVE, "Q3": Phase.LIVE, "Q4": Phase.LIVE, "OT": Phase.LIVE,
    "HT": Phase.BREAK, "BT": Phase.BREAK,
    "SUSP": Phase.INTERRUPTED,
    "FT": Phase.FINISHED, "AOT": Phase.FINISHED, "AWD": Phase.FINISHED,
    "POST": Phase.POSTPONED,
    "CANC": Phase.CANCELLED, "ABD": Phase.CANCELLED,
})

# (upstream score key, period name, status.period): overtime counts as period 5.
_PERIODS = (("quarter_1", "Q1", 1), ("quarter_2", "Q2", 2), ("quarter_3", "Q3", 3),
            ("quarter_4", "Q4", 4), ("over_time", "OT", 5))
_PERIOD_OF_CODE: Mapping[str, int] = MappingProxyType(
    {"Q1": 1, "Q2": 2, "HT": 2, "Q3": 3, "Q4": 4, "OT": 5})
_NUMBER_OF_PERIOD: Mapping[str, int] = MappingProxyType({n: i for _, n, i in _PERIODS})


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
    periods = tuple(p for key, period_name, _ in _PERIODS
                    if (p := period(period_name, home_scores.get(key),
                                    away_scores.get(key))) is not None)
    league, country = obj(item.get("league")), obj(item.get("country"))
    teams = obj(item.get("teams"))
    return Game(
        id=game_id,
        sport=SPORT,
        league=League(id=int_or_none(league.get("id")) or 0, name=name(league.get("name")),
                      country=text(country.get("name")), season=season(league.get("season"))),
        start_time=utc_time(item.get("timestamp"), item.get("date")),
        status=Status(phase=phase, code=code, detail=text(status.get("long")),
                      clock=text(status.get("timer")),
                      period=current_period(code, phase, periods, _PERIOD_OF_CODE,
                                            _NUMBER_OF_PERIOD),
                      server_time=observed_at),
        home=team(teams.get("home"), home),
        away=team(teams.get("away"), away),
        periods=() if phase is Phase.SCHEDULED else periods,
    )

