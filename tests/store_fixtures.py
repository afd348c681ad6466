"""Helpers for the store tests: games to ingest, and a store over real Redis and SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from btsguru.clock import Clock, FakeClock
from btsguru.config import Config
from btsguru.db.runner import DatabaseRunner
from btsguru.sports.base import Game, GameEvent, League, Phase, Status, Team
from btsguru.store.bus import Bus, InMemoryBus, RedisBus
from btsguru.store.games import GameStore
from btsguru.store.history import EventHistory
from btsguru.store.redis import RedisStores, open_redis

# 2024-08-16T12:00:00Z: the FakeClock's "now" in these tests
NOW = datetime(2024, 8, 16, 12, 0, tzinfo=UTC).timestamp()


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_game(game_id: int = 1001, *, sport: str = "football", league: int = 39,
              phase: Phase = Phase.SCHEDULED, code: str = "NS", home: int | None = None,
              away: int | None = None, clock: str | None = None, period: int | None = None,
              start: str = "2024-08-16T19:00:00Z", events: tuple[GameEvent, ...] | None = (),
              home_id: int = 33, away_id: int = 36, observed: str = "2024-08-16T12:00:00Z",
              ) -> Game:
    return Game(
        id=game_id, sport=sport,
        league=League(id=league, name=f"League {league}", country="England", season=2024),
        start_time=start,
        status=Status(phase=phase, code=code, detail=None, clock=clock, period=period,
                      server_time=observed),
        home=Team(id=home_id, name=f"Team {home_id}", score=home),
        away=Team(id=away_id, name=f"Team {away_id}", score=away),
        events=events,
    )


def live(game: Game, home: int, away: int, minute: int, *, code: str = "1H",
         events: tuple[GameEvent, ...] | None = None) -> Game:
    """`game` in play at `minute` with the given score."""
    return replace(game, status=replace(game.status, phase=Phase.LIVE, code=code,
                                        clock=str(minute), period=1 if code == "1H" else 2),
                   home=replace(game.home, score=home), away=replace(game.away, score=away),
                   events=game.events if events is None else events)


def goal(minute: int, team_id: int = 33, player: str = "J. Striker") -> GameEvent:
    return GameEvent(type="goal", clock=str(minute), team_id=team_id, player=player,
                     detail="Normal Goal")


@dataclass
class StoreNode:
    """One "process": its own Redis clients, bus and store over the shared Redis and DB."""

    redis: RedisStores
    bus: Bus
    games: GameStore
    history: EventHistory
    clock: Clock

    async def close(self) -> None:
        await self.games.close()
        await self.bus.close()
        await self.redis.close()


def open_store(config: Config, runner: DatabaseRunner, *, clock: Clock | None = None,
               redis_bus: bool = True) -> StoreNode:
    stores = open_redis(config)
    clock = clock or FakeClock(NOW)
    bus: Bus = RedisBus(stores.reverb, stores.keys) if redis_bus else InMemoryBus()
    return StoreNode(stores, bus, GameStore(stores, runner, clock, bus),
                     EventHistory(stores, bus), clock)


def store_nodes(config: Config, runner: DatabaseRunner,
                io_loop: Any) -> Iterator[Callable[..., StoreNode]]:
    """For a `nodes` fixture: `make(**open_store options)` opens one more "process" on
    the shared Redis and database; all are closed after the test."""
    opened: list[StoreNode] = []

    def make(**options: Any) -> StoreNode:
        node = open_store(config, runner, **options)
        opened.append(node)
        return node

    yield make
    for node in opened:
        io_loop.run_sync(node.close)
