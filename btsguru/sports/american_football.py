"""American football (API-American-Football v1 `/games`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. The item nests the game (`{game, league, teams, scores}`); scores are
`scores.{home,away}.total`, the periods the quarters and `OT` (the upstream's key is
`overtime` here, not basketball's `over_time`), the clock `game.status.timer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from btsguru.sports import v1
from btsguru.sports.base import Game, Phase
from btsguru.sports.fields import obj, text, utc_time

SPORT = "american-football"

# The contract's phase table (section 3), American football's column (`PST`, not `POST`).
PHASES: Mapping[str, Phase] = MappingProxyType({
    "NS": Phase.SCHEDULED,
    "Q1": Phase.LIVE, "Q2": Phase.LIVE, "Q3": Phase.LIVE, "Q4": Phase.LIVE, "OT": Phase.LIVE,
    "HT": Phase.BREAK,
    "FT": Phase.FINISHED, "AOT": Phase.FINISHED,
    "PST": Phase.POSTPONED,
    "CANC": Phase.CANCELLED, "ABD": Phase.CANCELLED,
})

# (upstream score key, period name, status.period): overtime counts as period 5.
_PERIODS: tuple[v1.PeriodKey, ...] = (
    ("quarter_1", "Q1", 1), ("quarter_2", "Q2", 2), ("quarter_3", "Q3", 3),
    ("quarter_4", "Q4", 4), ("overtime", "OT", 5))
_PERIOD_OF_CODE: Mapping[str, int] = MappingProxyType(
    {"Q1": 1, "Q2": 2, "HT": 2, "Q3": 3, "Q4": 4, "OT": 5})


def _scores(item: Mapping[str, Any]) -> v1.Scores:
    """`scores.{home,away}.total`, each quarter and `overtime` beside it."""
    return v1.side_scores(item.get("scores"), _PERIODS)


def _start_time(game: Mapping[str, Any]) -> str:
    """From `date.timestamp`; failing that, `date.date` + `date.time` when they are UTC
    (the only zone we can read without a time-zone database lookup on a guess)."""
    when = obj(game.get("date"))
    day, clock = text(when.get("date")), text(when.get("time"))
    zone = text(when.get("timezone"))
    fallback = f"{day}T{clock}:00+00:00" if day and clock and zone in (None, "UTC") else None
    return utc_time(when.get("timestamp"), fallback)


# The item nests the game (`{game: {id, date, status}, league, teams, scores}`), the
# country is the league's, the clock `game.status.timer`.
_SHAPE = v1.GamesShape(
    sport=SPORT, phases=PHASES, scores=_scores, period_of_code=_PERIOD_OF_CODE.get,
    number_of_period=MappingProxyType({n: i for _, n, i in _PERIODS}),
    game_key="game", country_in_league=True, start_time=_start_time)


def normalize_game(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item as a Game, or None (with one warning) when it has no id."""
    return v1.normalize_game(_SHAPE, item, observed_at)
