"""Previous Game vs new Game -> the contract's change events (section 4), and back.

Where it sits: normalize -> **diff** -> store + bus. Both functions are pure: no I/O, no
clock, no seq numbers (the store numbers the changes when it broadcasts them).

`diff_games(old, new)` returns, in this order (so that a goal's `game.score` and its
`game.event` take consecutive seq numbers, as the contract promises):

1. `game.started` (the phase left `scheduled` for `live` or `break`), carrying the status
   fields, the scores and the periods as they are now; or else `game.status` (phase,
   period or status code changed, but the game neither started nor finished), carrying
   every `status.*` field, `status.clock` and `status.server_time` included, so that a
   client can run the clock locally;
2. `game.score` (a score changed, but not at kick-off, which `game.started` carries):
   both scores, and `periods` when they changed too;
3. one `game.event` per in-game event that is new by identity (type, clock, team,
   player, detail): re-sending or reordering the same events is not new. When the
   same poll brings events before the first new goal (a substitution a minute
   earlier), those come before the `game.score`, so that the goal still follows its
   score at once;
4. `game.finished` (the phase became `finished`): the status fields and the final score;
5. `game.updated`: every other difference the contract exposes (league fields,
   `start_time`, team ids and names, `periods` without a score change, `status.detail`
   alone, and `events` when the list is not the old one plus the new events, e.g. the
   upstream deleted a VAR-cancelled goal).

A clock tick alone (`status.clock`, `status.server_time`) is not a change: `[]`. A first
sighting (`old` None) is `[]` too: the snapshot a subscriber receives covers it.
`seq` and `updated_at` are the store's and are neither compared nor changed here.

`apply_changes(game, changes)` is the inverse a client runs: applied to `old`, the
changes give `new`, every field exactly, except `status.clock` and `status.server_time`
when no status-carrying event (started, status, finished) was emitted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from btsguru.sports.base import (
    Change,
    Game,
    GameEvent,
    League,
    Phase,
    Status,
    Team,
    event_from_json,
    event_to_json,
    periods_from_json,
    periods_to_json,
)

GAME_STARTED = "game.started"
GAME_SCORE = "game.score"
GAME_STATUS = "game.status"
GAME_EVENT = "game.event"
GOAL = "goal"  # the event type that moves a score
GAME_FINISHED = "game.finished"
GAME_UPDATED = "game.updated"


def diff_games(old: Game | None, new: Game) -> list[Change]:
    """The contract's events that turn `old` into `new`, in a deterministic order."""
    if old is None:
        return []
    if old.id != new.id or old.sport != new.sport:
        raise ValueError(f"cannot diff {old.sport} {old.id} against {new.sport} {new.id}")
    out: list[Change] = []
    was, now = old.status, new.status
    started = was.phase is Phase.SCHEDULED and now.phase.in_play
    finished = now.phase is Phase.FINISHED and was.phase is not Phase.FINISHED
    status_moved = (was.phase is not now.phase or was.code != now.code
                    or was.period != now.period)
    scores_moved = old.home.score != new.home.score or old.away.score != new.away.score
    periods_moved = old.periods != new.periods
    periods_told = False

    def change(event: str, changes: dict[str, Any]) -> Change:
        return Change(event=event, sport=new.sport, league_id=new.league.id, game_id=new.id,
                      changes=changes)

    if started:
        changes = _status_changes(now)
        if scores_moved:
            changes.update(_score_changes(new))
        if periods_moved:
            changes["periods"] = periods_to_json(new.periods)
            periods_told = True
        out.append(change(GAME_STARTED, changes))
    elif status_moved and not finished:
        out.append(change(GAME_STATUS, _status_changes(now)))
    score: Change | None = None
    if scores_moved and not started:
        changes = _score_changes(new)
        if periods_moved:
            changes["periods"] = periods_to_json(new.periods)
            periods_told = True
        score = change(GAME_SCORE, changes)
    fresh = _new_events(old.events, new.events)
    # the score goes right before the first new goal (the contract: a goal's score and
    # event take consecutive seq numbers), after what came before it in the same poll
    goal_at = next((i for i, e in enumerate(fresh) if e.type == GOAL), 0) if score else 0
    told = [Change(event=GAME_EVENT, sport=new.sport, league_id=new.league.id,
                   game_id=new.id, game_event=event) for event in fresh]
    out.extend(told[:goal_at])
    if score is not None:
        out.append(score)
    out.extend(told[goal_at:])
    if finished:
        changes = _status_changes(now)
        changes.update(_score_changes(new))  # the contract: finished carries the final score
        if periods_moved and not periods_told:
            changes["periods"] = periods_to_json(new.periods)
            periods_told = True
        out.append(change(GAME_FINISHED, changes))
    updated = _other_changes(old, new, status_told=started or finished or status_moved,
                             periods_told=periods_told, fresh=fresh)
    if updated:
        out.append(change(GAME_UPDATED, updated))
    return out


def _status_changes(status: Status) -> dict[str, Any]:
    return {"status.phase": status.phase.value, "status.code": status.code,
            "status.detail": status.detail, "status.clock": status.clock,
            "status.period": status.period, "status.server_time": status.server_time}


def _score_changes(game: Game) -> dict[str, Any]:
    return {"home.score": game.home.score, "away.score": game.away.score}


def _other_changes(old: Game, new: Game, *, status_told: bool, periods_told: bool,
                   fresh: tuple[GameEvent, ...]) -> dict[str, Any]:
    """The differences no event before `game.updated` carried (dotted path -> new value)."""
    out: dict[str, Any] = {}
    if old.periods != new.periods and not periods_told:
        out["periods"] = periods_to_json(new.periods)
    if old.status.detail != new.status.detail and not status_told:
        out["status.detail"] = new.status.detail
    events_after = old.events if not fresh else (*(old.events or ()), *fresh)
    if events_after != new.events:
        out["events"] = None if new.events is None else [event_to_json(e) for e in new.events]
    if old.league != new.league:
        for key in ("id", "name", "country", "season"):
            value = getattr(new.league, key)
            if getattr(old.league, key) != value:
                out[f"league.{key}"] = value
    if old.start_time != new.start_time:
        out["start_time"] = new.start_time  # rescheduled
    for side in ("home", "away"):
        was, now = getattr(old, side), getattr(new, side)
        if was.id != now.id:
            out[f"{side}.id"] = now.id
        if was.name != now.name:
            out[f"{side}.name"] = now.name
    return out


def _identity(event: GameEvent) -> tuple[str, str | None, int | None, str | None, str | None]:
    return event.type, event.clock, event.team_id, event.player, event.detail


def _new_events(old: tuple[GameEvent, ...] | None,
                new: tuple[GameEvent, ...] | None) -> tuple[GameEvent, ...]:
    """The events of `new` that `old` does not have, by identity, in `new`'s order.

    Counted as a multiset: two identical events (a player booked twice in one minute
    by a data correction) are two, and a re-sent list yields nothing.
    """
    if not new or old == new:
        return ()
    known = Counter(_identity(e) for e in old or ())
    fresh = []
    for event in new:
        key = _identity(event)
        if known[key]:
            known[key] -= 1
        else:
            fresh.append(event)
    return tuple(fresh)


# The dotted paths `apply_changes` understands, by the part of the game they set.
_LEAGUE_KEYS = frozenset({"id", "name", "country", "season"})
_STATUS_KEYS = frozenset({"phase", "code", "detail", "clock", "period", "server_time"})
_TEAM_KEYS = frozenset({"id", "name", "score"})


def apply_changes(game: Game, changes: Sequence[Change]) -> Game:
    """`game` with `changes` applied in order (the pure inverse of `diff_games`).

    `game.event` appends its event; every other change sets its dotted paths. A change
    that carries a seq (numbered by the store) raises the game's `seq` to it. Raises
    ValueError for a change of another game or an unknown path (a bug, not data).
    """
    parts: dict[str, dict[str, Any]] = {"league": {}, "status": {}, "home": {}, "away": {}}
    top: dict[str, Any] = {}
    events = game.events
    seq = game.seq
    for change in changes:
        if change.game_id != game.id or change.sport != game.sport:
            raise ValueError(f"change for {change.sport} {change.game_id} applied to "
                             f"{game.sport} {game.id}")
        if change.event == GAME_EVENT:
            if change.game_event is not None:
                events = (*(events or ()), change.game_event)
        else:
            for path, value in change.changes.items():
                if path == "events":
                    events = None if value is None else tuple(event_from_json(e) for e in value)
                else:
                    _set(parts, top, path, value)
        seq = max(seq, change.seq)
    return _rebuild(game, parts, top, events, seq)


def _set(parts: dict[str, dict[str, Any]], top: dict[str, Any], path: str, value: Any) -> None:
    head, _, key = path.partition(".")
    if not key:
        if head == "start_time":
            top["start_time"] = value
        elif head == "periods":
            top["periods"] = periods_from_json(value or ())
        else:
            raise ValueError(f"unknown change path {path!r}")
        return
    allowed = {"league": _LEAGUE_KEYS, "status": _STATUS_KEYS, "home": _TEAM_KEYS,
               "away": _TEAM_KEYS}.get(head)
    if allowed is None or key not in allowed:
        raise ValueError(f"unknown change path {path!r}")
    parts[head][key] = Phase(value) if path == "status.phase" else value


def _rebuild(game: Game, parts: Mapping[str, dict[str, Any]], top: dict[str, Any],
             events: tuple[GameEvent, ...] | None, seq: int) -> Game:
    league: League = replace(game.league, **parts["league"]) if parts["league"] else game.league
    status: Status = replace(game.status, **parts["status"]) if parts["status"] else game.status
    home: Team = replace(game.home, **parts["home"]) if parts["home"] else game.home
    away: Team = replace(game.away, **parts["away"]) if parts["away"] else game.away
    return replace(game, league=league, status=status, home=home, away=away, events=events,
                   seq=seq, **top)
