"""Football (API-Football v3 `/fixtures`, `/fixtures/events`) -> Game.

Where it sits: one adapter behind `sports.normalize`, between the pollers' upstream JSON
and `diff`. The score is the upstream's `goals` (extra time included, a shoot-out not);
the periods come from `score` (1H = halftime, 2H = fulltime - halftime, ET = extratime,
PEN = penalty), and while a half is being played from the running `goals`, because the
upstream fills `halftime` only at the break and `fulltime` only after 90 minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from btsguru.sports.base import Game, GameEvent, Period, Phase, Status
from btsguru.sports.fields import (
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

SPORT = "football"

# The contract's phase table (section 3), football's column.
PHASES: Mapping[str, Phase] = MappingProxyType({
    "TBD": Phase.SCHEDULED, "NS": Phase.SCHEDULED,
    "1H": Phase.LIVE, "2H": Phase.LIVE, "ET": Phase.LIVE, "P": Phase.LIVE, "LIVE": Phase.LIVE,
    "HT": Phase.BREAK, "BT": Phase.BREAK,
    "SUSP": Phase.INTERRUPTED, "INT": Phase.INTERRUPTED,
    "FT": Phase.FINISHED, "AET": Phase.FINISHED, "PEN": Phase.FINISHED,
    "AWD": Phase.FINISHED, "WO": Phase.FINISHED,
    "PST": Phase.POSTPONED,
    "CANC": Phase.CANCELLED, "ABD": Phase.CANCELLED,
})

# status.period: 1 and 2 are the halves, 3 extra time, 4 the shoot-out. HT is still
# "after period 1" until the second half kicks off.
_PERIOD_OF_CODE: Mapping[str, int] = MappingProxyType(
    {"1H": 1, "HT": 1, "2H": 2, "ET": 3, "P": 4})
_EVENT_TYPES: Mapping[str, str] = MappingProxyType(
    {"goal": "goal", "card": "card", "subst": "substitution", "var": "var"})
# The upstream's exact spellings, looked up before any normalising of case and spaces.
_TYPE_OF_UPSTREAM: Mapping[str, str] = MappingProxyType(
    {"Goal": "goal", "Card": "card", "subst": "substitution", "Var": "var"})
_REGULATION_HALF_MIN = 45
_STOPPED_CODES = frozenset({"SUSP", "INT", "ABD", "LIVE"})


def normalize_fixture(item: Mapping[str, Any], observed_at: str) -> Game | None:
    """One `/fixtures` item as a Game, or None (with one warning) when it has no id.

    `events` is the item's events when it carries the list (`live=all`, `id`, `ids`);
    None when the query kind carries none (`date`, `league`: "not fetched", so the poller
    keeps what it knew, see `normalize.carry_events`), and () for a game not started.
    """
    fixture = obj(item.get("fixture"))
    number = game_id(SPORT, fixture.get("id"), "fixture.id")
    if number is None:
        return None
    status = obj(fixture.get("status"))
    code = text(status.get("short")) or ""
    goals = obj(item.get("goals"))
    phase, home, away = phase_and_score(SPORT, PHASES, code, int_or_none(goals.get("home")),
                                        int_or_none(goals.get("away")))
    elapsed = int_or_none(status.get("elapsed"))
    periods = _periods(code, elapsed, obj(item.get("score")), home, away)
    raw_events = item.get("events")
    events: tuple[GameEvent, ...] | None
    if isinstance(raw_events, list):
        events = normalize_events(raw_events)
    else:
        events = () if phase is Phase.SCHEDULED else None
    league_data = obj(item.get("league"))
    teams = obj(item.get("teams"))
    return Game(
        id=number,
        sport=SPORT,
        league=league(league_data, text(league_data.get("country"))),
        start_time=utc_time(fixture.get("timestamp"), fixture.get("date")),
        status=Status(phase=phase, code=code, detail=text(status.get("long")),
                      clock=_clock(elapsed, int_or_none(status.get("extra"))),
                      period=_period_number(code, phase, elapsed, periods),
                      server_time=observed_at),
        home=team(teams.get("home"), home),
        away=team(teams.get("away"), away),
        periods=() if phase is Phase.SCHEDULED else periods,
        events=events,
    )


def normalize_events(items: Iterable[Any]) -> tuple[GameEvent, ...]:
    """A fixture's events (inline, or `/fixtures/events`), in match-time order.

    Sorted (stably) by minute and added minutes, so that the upstream re-sending the list
    in another order does not look like a change.
    """
    keyed: list[tuple[int, int, GameEvent]] = []
    for raw in items:
        data = obj(raw)
        if not data:
            continue
        when = obj(data.get("time"))
        elapsed, extra = int_or_none(when.get("elapsed")), int_or_none(when.get("extra"))
        keyed.append((elapsed or 0, extra or 0, _event(data, elapsed, extra)))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    return tuple(entry[2] for entry in keyed)


def _event(data: Mapping[str, Any], elapsed: int | None, extra: int | None) -> GameEvent:
    raw_type = data.get("type")
    event_type = _TYPE_OF_UPSTREAM.get(raw_type) if type(raw_type) is str else None
    detail = text(data.get("detail"))
    if event_type is None:  # drifted spelling or a type we do not know yet: keep it readable
        kind = (text(raw_type) or "").strip().lower()
        event_type = _EVENT_TYPES.get(kind) or kind.replace(" ", "_") or "unknown"
    if event_type == "goal" and detail is not None and detail.strip().lower() == "missed penalty":
        event_type = "missed_penalty"  # not a goal: it must not read as one to a client
    return GameEvent(
        type=event_type,
        clock=_clock(elapsed, extra),
        team_id=int_or_none(obj(data.get("team")).get("id")),
        player=text(obj(data.get("player")).get("name")),  # for a substitution: going off
        detail=detail,
        assist=text(obj(data.get("assist")).get("name")),  # for a substitution: coming on
    )


def _clock(elapsed: int | None, extra: int | None) -> str | None:
    """ "67", or "45+2" in added time."""
    if elapsed is None:
        return None
    return f"{elapsed}+{extra}" if extra else str(elapsed)


def _periods(code: str, elapsed: int | None, score: Mapping[str, Any], home: int | None,
             away: int | None) -> tuple[Period, ...]:
    halftime, fulltime = obj(score.get("halftime")), obj(score.get("fulltime"))
    extratime, penalty = obj(score.get("extratime")), obj(score.get("penalty"))
    ht_home, ht_away = int_or_none(halftime.get("home")), int_or_none(halftime.get("away"))
    ft_home, ft_away = int_or_none(fulltime.get("home")), int_or_none(fulltime.get("away"))
    # Which half is (or was, when it stopped) being played: the code says it, or for a
    # game stopped or of unknown half (SUSP, INT, ABD, LIVE) the minute does.
    minute = elapsed if code in _STOPPED_CODES and elapsed is not None else -1
    in_first = code in ("1H", "HT") or 0 <= minute <= _REGULATION_HALF_MIN
    in_second = code == "2H" or _REGULATION_HALF_MIN < minute <= 2 * _REGULATION_HALF_MIN
    out: list[Period] = []
    first = period("1H", ht_home, ht_away)
    if first is None and in_first:
        first = period("1H", home, away)  # the half being played: its score is the total
    if first is not None:
        out.append(first)
    if ht_home is not None and ht_away is not None:
        if ft_home is not None and ft_away is not None:
            out.append(_difference("2H", ft_home, ft_away, ht_home, ht_away))
        elif in_second and home is not None and away is not None:
            out.append(_difference("2H", home, away, ht_home, ht_away))
    extra = period("ET", extratime.get("home"), extratime.get("away"))
    if (extra is None and code in ("ET", "BT", "P") and ft_home is not None
            and ft_away is not None and home is not None and away is not None):
        extra = _difference("ET", home, away, ft_home, ft_away)
    if extra is not None:
        out.append(extra)
    shootout = period("PEN", penalty.get("home"), penalty.get("away"))
    if shootout is not None:
        out.append(shootout)
    return tuple(out)


def _difference(period_name: str, home: int, away: int, home_before: int,
                away_before: int) -> Period:
    # A negative count is never right (a correction reached one field before the
    # other): floor it at 0.
    return Period(period_name, max(0, home - home_before), max(0, away - away_before))


def _period_number(code: str, phase: Phase, elapsed: int | None,
                   periods: tuple[Period, ...]) -> int | None:
    number = _PERIOD_OF_CODE.get(code)
    if number is not None:
        return number
    if code == "BT":  # before extra time, or its own half-time once it has begun
        return 3 if any(p.name == "ET" for p in periods) else 2
    if phase in (Phase.LIVE, Phase.INTERRUPTED) and elapsed is not None:
        # LIVE, SUSP, INT and codes outside the table: only the minute tells the period
        if elapsed <= _REGULATION_HALF_MIN:
            return 1
        return 2 if elapsed <= 2 * _REGULATION_HALF_MIN else 3
    return None
