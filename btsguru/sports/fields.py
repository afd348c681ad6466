"""Defensive readers of upstream JSON fields, shared by the per-sport adapters.

Where it sits: inside `normalize` (upstream JSON -> Game). The upstream drifts (API-SPORTS.md
§6.7): any field may be null or missing, a season is an int or a string, an id can arrive
as a string, a container can be `[]` where an object was documented. These readers turn
whatever came into the typed value or None, and never raise, so one odd item cannot
take a whole poll down.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from btsguru.sports.base import League, Period, Phase, Team

log = logging.getLogger(__name__)

EMPTY: Mapping[str, Any] = MappingProxyType({})
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the contract's timestamps: second precision, "Z"


def obj(value: Any) -> Mapping[str, Any]:
    """`value` when it is a JSON object, else an empty one (null, `[]`, a string...)."""
    return value if isinstance(value, dict) else EMPTY


def int_or_none(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string; None otherwise."""
    if type(value) is int:  # the common case first; bool is not a number here
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in ("+", "-") else text
        if digits.isascii() and digits.isdigit():
            return int(text)
    return None


def text(value: Any) -> str | None:
    """A non-blank string (numbers rendered), or None for null, blanks and containers."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def name(value: Any) -> str:
    """A display name: the text, or "" when the upstream sent none."""
    return text(value) or ""


def season(value: Any) -> int | str | None:
    """A league season as given: an int year, or a label such as "2024-2025".

    A purely numeric string ("2024", as American football sends it) becomes the int, so
    one league's season compares equal whichever way the upstream spelled it that day.
    """
    number = int_or_none(value)
    if number is not None:
        return number
    return text(value)


def utc_time(timestamp: Any, iso_date: Any = None) -> str:
    """The contract's UTC start time, from the epoch `timestamp` (the reliable field) or,
    failing that, an ISO 8601 date with an offset; "" when neither is usable."""
    seconds = int_or_none(timestamp)
    if seconds is not None and seconds >= 0:
        formatted = _utc_from_epoch(seconds)
        if formatted:
            return formatted
    raw = text(iso_date)
    if raw is not None:
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return ""
        if when.tzinfo is None:  # a bare local time: only trust it as UTC
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime(UTC_FORMAT)
    return ""


# Games share kick-off times and are normalized on every poll: remembering the last few
# thousand conversions saves most of the formatting (pure, so the cache is only speed).
@functools.lru_cache(maxsize=4096)
def _utc_from_epoch(seconds: int) -> str:
    try:
        return time.strftime(UTC_FORMAT, time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return ""


def period(period_name: str, home: Any, away: Any) -> Period | None:
    """A period whose score the upstream gave (either side), or None if it has not begun."""
    if type(home) is int and type(away) is int:  # the common case, without the readers
        return Period(period_name, home, away)
    home_n, away_n = int_or_none(home), int_or_none(away)
    if home_n is None and away_n is None:
        return None
    return Period(period_name, home_n, away_n)


# The warnings below say "once per process" (the contract: an unknown code "logs a warning
# once"): a poll every few seconds must not repeat the same line all day. The memory is
# an lru_cache rather than a module-level set so that it is bounded: an upstream sending
# garbage codes cannot grow it without limit (past 512 distinct keys a key may warn again).
@functools.lru_cache(maxsize=512)
def warn_once(sport: str, problem: str, value: str) -> None:
    log.warning("%s upstream: %s: %r (logged once per process)", sport, problem, value)


def phase_of(sport: str, phases: Mapping[str, Phase], code: str, *, scored: bool) -> Phase:
    """The contract's phase for a status code; for a code outside the contract's table,
    the phase the evidence supports (a score means the game is under way) and one
    warning per (sport, code) per process."""
    phase = phases.get(code)
    if phase is not None:
        return phase
    warn_once(sport, "status code outside the contract's table (kept: live when it has a "
              "score, else scheduled)", code)
    return Phase.LIVE if scored else Phase.SCHEDULED


def game_id(sport: str, value: Any, where: str) -> int | None:
    """An item's id, or None with one warning per (sport, `where`) per process: an item
    without an id is skipped, as nothing could address the game it describes."""
    number = int_or_none(value)
    if number is None:
        warn_once(sport, "skipped an item without an id", where)
    return number


def phase_and_score(sport: str, phases: Mapping[str, Phase], code: str, home: int | None,
                    away: int | None) -> tuple[Phase, int | None, int | None]:
    """The phase of `code` (see `phase_of`: the upstream's totals are its evidence) and
    the totals as the contract shows them: null on both sides before the game starts."""
    phase = phase_of(sport, phases, code, scored=home is not None or away is not None)
    if phase is Phase.SCHEDULED:
        return phase, None, None
    return phase, home, away


def league(value: Any, country: str | None) -> League:
    """A game's league from `{id, name, season, ...}`; where the country's name sits
    differs between the upstream's APIs, so the caller reads it."""
    data = obj(value)
    return League(id=int_or_none(data.get("id")) or 0, name=name(data.get("name")),
                  country=country, season=season(data.get("season")))


def team(value: Any, score: int | None) -> Team:
    """A side of a game: `{id, name, ...}` (id 0 and name "" when the upstream left them out)."""
    data = obj(value)
    return Team(id=int_or_none(data.get("id")) or 0, name=name(data.get("name")), score=score)


def current_period(code: str, phase: Phase, periods: tuple[Period, ...],
                   of_code: Callable[[str], int | None],
                   of_period: Mapping[str, int]) -> int | None:
    """status.period: from the code while it names a period (`of_code`); in a break or an
    interruption, the last period that has a score; None once the game is over."""
    number = of_code(code)
    if number is not None:
        return number
    if phase in (Phase.BREAK, Phase.INTERRUPTED, Phase.LIVE) and periods:
        return max((of_period.get(p.name, 0) for p in periods), default=0) or None
    return None
