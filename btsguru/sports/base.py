"""The normalized game: the one shape every sport's upstream JSON becomes (the contract's
section 3), as frozen dataclasses.

Upstream dicts never get past `normalize`; from here on the flow (diff, store, bus, hub,
transports, REST) speaks `Game`. `game_to_json` / `game_from_json` are the one encoding
of a game, used for Redis, the database and every transport.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    BREAK = "break"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    POSTPONED = "postponed"
    CANCELLED = "cancelled"

    @property
    def in_play(self) -> bool:
        """Live or in a break: the games `/v1/{sport}/live` lists and the pollers chase."""
        return self in (Phase.LIVE, Phase.BREAK)


@dataclass(frozen=True)
class League:
    id: int
    name: str
    country: str | None = None
    season: int | str | None = None  # basketball's cross-year seasons are "2024-2025"


@dataclass(frozen=True)
class Team:
    id: int
    name: str
    score: int | None = None  # null before the game starts


@dataclass(frozen=True)
class Status:
    phase: Phase
    code: str  # the upstream's short code, unchanged
    detail: str | None = None  # the upstream's long text
    clock: str | None = None  # the match clock as the upstream gives it ("67", "45+2", "07:41")
    period: int | None = None  # 1-based period/half/quarter/inning while it is known
    server_time: str | None = None  # when btsguru observed this status (ISO 8601, UTC)


@dataclass(frozen=True)
class Period:
    name: str  # "1H", "Q1", "P2", "IN5", "OT", "ET", "PEN"
    home: int | None
    away: int | None


@dataclass(frozen=True)
class GameEvent:
    type: str  # goal, card, substitution, var, penalty, ...
    clock: str | None
    team_id: int | None
    player: str | None = None
    detail: str | None = None
    assist: str | None = None  # for substitutions: the player coming on


@dataclass(frozen=True)
class Game:
    id: int
    sport: str
    league: League
    start_time: str  # ISO 8601 UTC, "2024-08-16T19:00:00Z"
    status: Status
    home: Team
    away: Team
    periods: tuple[Period, ...] = ()
    events: tuple[GameEvent, ...] | None = None  # None for sports without event feeds
    seq: int = 0  # number of the last event broadcast for this game
    updated_at: str | None = None

    @property
    def league_id(self) -> int:
        return self.league.id


def game_to_json(game: Game) -> dict[str, Any]:
    """The contract's JSON shape of a game."""
    data: dict[str, Any] = {
        "id": game.id,
        "sport": game.sport,
        "league": {"id": game.league.id, "name": game.league.name,
                   "country": game.league.country, "season": game.league.season},
        "start_time": game.start_time,
        "status": {"phase": game.status.phase.value, "code": game.status.code,
                   "detail": game.status.detail, "clock": game.status.clock,
                   "period": game.status.period, "server_time": game.status.server_time},
        "home": {"id": game.home.id, "name": game.home.name, "score": game.home.score},
        "away": {"id": game.away.id, "name": game.away.name, "score": game.away.score},
        "periods": periods_to_json(game.periods),
        "seq": game.seq,
        "updated_at": game.updated_at,
    }
    if game.events is not None:
        data["events"] = [event_to_json(e) for e in game.events]
    return data


def event_to_json(event: GameEvent) -> dict[str, Any]:
    """The contract's JSON shape of one in-game event (`assist` only when known)."""
    data: dict[str, Any] = {"type": event.type, "clock": event.clock, "team_id": event.team_id,
                            "player": event.player, "detail": event.detail}
    if event.assist is not None:
        data["assist"] = event.assist
    return data


def event_from_json(data: Mapping[str, Any]) -> GameEvent:
    return GameEvent(type=data["type"], clock=data.get("clock"), team_id=data.get("team_id"),
                     player=data.get("player"), detail=data.get("detail"),
                     assist=data.get("assist"))


def periods_to_json(periods: Sequence[Period]) -> list[dict[str, Any]]:
    """The contract's JSON shape of a game's periods (also the value of a `periods` change)."""
    return [{"name": p.name, "home": p.home, "away": p.away} for p in periods]


def periods_from_json(data: Iterable[Mapping[str, Any]]) -> tuple[Period, ...]:
    return tuple(Period(p["name"], p.get("home"), p.get("away")) for p in data)


def game_from_json(data: Mapping[str, Any]) -> Game:
    """The inverse of `game_to_json` (for games this process or another stored)."""
    league, status = data["league"], data["status"]
    events = data.get("events")
    return Game(
        id=int(data["id"]),
        sport=data["sport"],
        league=League(id=int(league["id"]), name=league["name"], country=league.get("country"),
                      season=league.get("season")),
        start_time=data["start_time"],
        status=Status(phase=Phase(status["phase"]), code=status["code"],
                      detail=status.get("detail"), clock=status.get("clock"),
                      period=status.get("period"), server_time=status.get("server_time")),
        home=_team(data["home"]),
        away=_team(data["away"]),
        periods=periods_from_json(data.get("periods") or ()),
        events=None if events is None else tuple(event_from_json(e) for e in events),
        seq=int(data.get("seq") or 0),
        updated_at=data.get("updated_at"),
    )


def _team(data: Mapping[str, Any]) -> Team:
    return Team(id=int(data["id"]), name=data["name"], score=data.get("score"))


@dataclass(frozen=True)
class Change:
    """One event for the bus: a contract event name and its data (section 4)."""

    event: str  # game.started, game.score, game.status, game.event, game.finished, game.updated
    sport: str
    league_id: int
    game_id: int
    changes: Mapping[str, Any] = field(default_factory=dict)  # dotted path -> new value
    game_event: GameEvent | None = None  # for game.event
    seq: int = 0  # assigned when the change is broadcast

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sport": self.sport, "league_id": self.league_id,
                                "game_id": self.game_id, "seq": self.seq}
        if self.game_event is not None:
            data["event"] = event_to_json(self.game_event)
        else:
            data["changes"] = dict(self.changes)
        return data
