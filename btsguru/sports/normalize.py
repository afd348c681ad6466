"""Upstream JSON -> Game: the entry the pollers call, dispatching to one adapter per sport.

Where it sits: pollers -> **normalize** -> diff. Upstream dicts never get past here. Every
adapter tolerates the upstream's drift (API-SPORTS.md §6.7): a missing or null field never
raises; an item without an id is skipped with one warning; a status code outside the
contract's table keeps the game, live when it has a score and scheduled otherwise, with
one warning per (sport, code) per process.

Events. Football's and hockey's games carry `events`; the other sports' are None.
A tuple means "what the upstream said"; None means "not fetched by this query" (football
`date=`/`league=` fixtures, every hockey `/games` item), so that a sweep without events
never looks like the events were removed. The poller:

    games = normalize_games(sport, body["response"], observed_at=now)
    new = carry_events(old, new)                 # keep the known events over a sweep
    new = with_events(new, normalize_events("hockey", events_body["response"]))

A game not started has () (it can have no events yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from btsguru.sports import american_football, baseball, basketball, football, hockey
from btsguru.sports.base import Game, GameEvent, Phase

# The contract's phase table (section 3): sport -> status code -> phase.
PHASES: Mapping[str, Mapping[str, Phase]] = MappingProxyType({
    football.SPORT: football.PHASES,
    basketball.SPORT: basketball.PHASES,
    hockey.SPORT: hockey.PHASES,
    baseball.SPORT: baseball.PHASES,
    american_football.SPORT: american_football.PHASES,
})

_ADAPTERS: Mapping[str, Callable[[Mapping[str, Any], str], Game | None]] = MappingProxyType({
    football.SPORT: football.normalize_fixture,
    basketball.SPORT: basketball.normalize_game,
    hockey.SPORT: hockey.normalize_game,
    baseball.SPORT: baseball.normalize_game,
    american_football.SPORT: american_football.normalize_game,
})

_EVENT_ADAPTERS: Mapping[str, Callable[[Iterable[Any]], tuple[GameEvent, ...]]] = (
    MappingProxyType({football.SPORT: football.normalize_events,
                      hockey.SPORT: hockey.normalize_events}))

# The sports whose games carry an events list (the others' `events` is always None).
SPORTS_WITH_EVENTS: frozenset[str] = frozenset(_EVENT_ADAPTERS)


def normalize_games(sport: str, response_items: Iterable[Any], *,
                    observed_at: str) -> list[Game]:
    """The games of one upstream list response (`/fixtures` or `/games`), in its order.

    `response_items` is the envelope's `response`; `observed_at` (ISO 8601 UTC, "...Z")
    becomes every game's `status.server_time`. Items that are not objects or have no id
    are skipped. Raises ValueError only for a sport btsguru does not support (a bug in
    the caller, not upstream data).
    """
    adapter = _ADAPTERS.get(sport)
    if adapter is None:
        raise ValueError(f"no normalizer for sport {sport!r}")
    if not isinstance(response_items, list | tuple):
        return []  # `response` is an object on /status, or garbage: no games in it
    games = []
    for item in response_items:
        if isinstance(item, dict):
            game = adapter(item, observed_at)
            if game is not None:
                games.append(game)
    return games


def normalize_events(sport: str, items: Iterable[Any]) -> tuple[GameEvent, ...]:
    """The events of football's `/fixtures/events` or hockey's `/games/events` response.

    Raises ValueError for a sport without an event feed.
    """
    adapter = _EVENT_ADAPTERS.get(sport)
    if adapter is None:
        raise ValueError(f"sport {sport!r} has no event feed")
    if not isinstance(items, list | tuple):
        return ()
    return adapter(items)


def with_events(game: Game, events: Iterable[GameEvent]) -> Game:
    """`game` with the events fetched separately (hockey's `/games/events`)."""
    return replace(game, events=tuple(events))


def carry_events(old: Game | None, new: Game) -> Game:
    """`new`, keeping `old`'s events when this response did not fetch any (None).

    Call it before `diff_games`, so that a date sweep without events does not read as
    every event being removed (and then re-sent as new on the next live poll).
    """
    if new.events is None and old is not None and old.events is not None:
        return replace(new, events=old.events)
    return new
