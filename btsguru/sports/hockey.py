"""Hockey (API-Hockey v1 `/games`, `/games/events`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. Scores are the running totals `scores.{home,away}` (after a shoot-out the
upstream counts the winner's deciding goal in them); periods come from `periods.*`,
"home-away" strings; the clock is the top-level `timer`. `/games` says only *whether*
there are events (`events: true`): their detail comes from `/games/events`, which the
poller fetches for games in play and merges in with `normalize.with_events`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from btsguru.sports import v1
from btsguru.sports.base import Game, GameEvent, Period, Phase
from btsguru.sports.fields import int_or_none, obj, text

SPORT = "hockey"

# The contract's phase table (section 3), hockey's column.
PHASES: Mapping[str, Phase] = MappingProxyType({
    "NS": Phase.SCHEDULED,
    "P1": Phase.LIVE, "P2": Phase.LIVE, "P3": Phase.LIVE, "OT": Phase.LIVE, "PT": Phase.LIVE,
    "BT": Phase.BREAK,
    "INTR": Phase.INTERRUPTED,
    "FT": Phase.FINISHED, "AOT": Phase.FINISHED, "AP": Phase.FINISHED, "AW": Phase.FINISHED,
    "POST": Phase.POSTPONED,
    "CANC": Phase.CANCELLED, "ABD": Phase.CANCELLED,
})

# (upstream periods key, period name, status.period): overtime is 4, the shoot-out 5.
_PERIODS: tuple[v1.PeriodKey, ...] = (
    ("first", "P1", 1), ("second", "P2", 2), ("third", "P3", 3),
    ("overtime", "OT", 4), ("penalties", "PEN", 5))
_PERIOD_OF_CODE: Mapping[str, int] = MappingProxyType(
    {"P1": 1, "P2": 2, "P3": 3, "OT": 4, "PT": 5})


def _scores(item: Mapping[str, Any]) -> v1.Scores:
    """The totals are `scores.{home,away}` (plain numbers); the periods are
    `periods.{first,...}`, each a "home-away" string."""
    scores, raw_periods = obj(item.get("scores")), obj(item.get("periods"))
    return (int_or_none(scores.get("home")), int_or_none(scores.get("away")),
            tuple(p for key, period_name, _ in _PERIODS
                  if (p := _period(period_name, raw_periods.get(key))) is not None))


# The item is flat (`{id, status, league, country, teams, scores, periods, timer, ...}`);
# the clock is the item's own `timer`, and the events come apart from `/games/events`.
_SHAPE = v1.GamesShape(
    sport=SPORT, phases=PHASES, scores=_scores, period_of_code=_PERIOD_OF_CODE.get,
    number_of_period=MappingProxyType({n: i for _, n, i in _PERIODS}), clock_in="game",
    events_fetched_apart=True)


def normalize_game(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/games` item as a Game, or None (with one warning) when it has no id.

    `events` is () for a game not started and None otherwise ("not fetched"): `/games`
    carries no event detail, `with_events` adds what `/games/events` returned.
    """
    return v1.normalize_game(_SHAPE, item, observed_at)


def _period(period_name: str, value: Any) -> Period | None:
    """A period from the upstream's "home-away" string ("1-0"); None when not begun or
    unreadable (a malformed string is dropped, not guessed at)."""
    raw = text(value)
    if raw is None:
        return None
    home_text, dash, away_text = raw.partition("-")
    home, away = int_or_none(home_text), int_or_none(away_text)
    if not dash or home is None or away is None:
        return None
    return Period(period_name, home, away)


def normalize_events(items: Iterable[Any]) -> tuple[GameEvent, ...]:
    """`/games/events` items (goals and penalties) as GameEvents, in the upstream's order.

    The clock is the period and its minute ("P2 07"): the upstream counts minutes within
    each period, so the minute alone would make two events of different periods equal.
    """
    events: list[GameEvent] = []
    for raw in items:
        data = obj(raw)
        if not data:
            continue
        period_code, minute = text(data.get("period")), text(data.get("minute"))
        clock = " ".join(part for part in (period_code, minute) if part is not None) or None
        players = _names(data.get("players"))
        assists = _names(data.get("assists"))
        events.append(GameEvent(
            type=(text(data.get("type")) or "unknown").strip().lower().replace(" ", "_"),
            clock=clock,
            team_id=int_or_none(obj(data.get("team")).get("id")),
            player=players[0] if players else None,
            detail=text(data.get("comment")),
            assist=", ".join(assists) or None,
        ))
    return tuple(events)


def _names(value: Any) -> list[str]:
    """Player names from a list of strings (or of `{name}` objects, tolerated)."""
    if not isinstance(value, list):
        return []
    out = []
    for entry in value:
        player = text(entry) if not isinstance(entry, dict) else text(entry.get("name"))
        if player is not None:
            out.append(player)
    return out
