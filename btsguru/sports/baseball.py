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

from btsguru.sports import v1
from btsguru.sports.base import Game, Phase

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
_PERIODS: tuple[v1.PeriodKey, ...] = (
    *((str(n), f"IN{n}", n) for n in range(1, REGULATION_INNINGS + 1)),
    ("extra", "EXTRA", REGULATION_INNINGS + 1))
_INNING_CODE = re.compile(r"IN(\d{1,2})")  # also reads an undocumented "IN10"


def _scores(item: Mapping[str, Any]) -> v1.Scores:
    """`scores.{home,away}.total` (runs); the innings under each side's `innings`."""
    return v1.side_scores(item.get("scores"), _PERIODS, within="innings")


def _inning_of_code(code: str) -> int | None:
    """The inning an `IN<n>` code names (baseball's only codes that name a period)."""
    inning = _INNING_CODE.fullmatch(code)
    return int(inning.group(1)) if inning else None


# The item is flat (`{id, status, league, country, teams, scores, ...}`); no clock.
_SHAPE = v1.GamesShape(
    sport=SPORT, phases=PHASES, scores=_scores, period_of_code=_inning_of_code,
    number_of_period=MappingProxyType({n: i for _, n, i in _PERIODS}), clock_in=None)


def normalize_game(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item as a Game, or None (with one warning) when it has no id."""
    return v1.normalize_game(_SHAPE, item, observed_at)
