"""Basketball (API-Basketball v1 `/games`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. Scores are `scores.{home,away}.total`; the periods are the quarters and one
`OT` (the upstream sums every overtime into `over_time`); the clock is `status.timer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from btsguru.sports import v1
from btsguru.sports.base import Game, Phase

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
_PERIODS: tuple[v1.PeriodKey, ...] = (
    ("quarter_1", "Q1", 1), ("quarter_2", "Q2", 2), ("quarter_3", "Q3", 3),
    ("quarter_4", "Q4", 4), ("over_time", "OT", 5))
_PERIOD_OF_CODE: Mapping[str, int] = MappingProxyType(
    {"Q1": 1, "Q2": 2, "HT": 2, "Q3": 3, "Q4": 4, "OT": 5})


def _scores(item: Mapping[str, Any]) -> v1.Scores:
    """`scores.{home,away}.total`, each quarter and `over_time` beside it."""
    return v1.side_scores(item.get("scores"), _PERIODS)


# The item is flat (`{id, status, league, country, teams, scores, ...}`); the clock is
# `status.timer`.
_SHAPE = v1.GamesShape(
    sport=SPORT, phases=PHASES, scores=_scores, period_of_code=_PERIOD_OF_CODE.get,
    number_of_period=MappingProxyType({n: i for _, n, i in _PERIODS}))


def normalize_game(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item as a Game, or None (with one warning) when it has no id."""
    return v1.normalize_game(_SHAPE, item, observed_at)
