"""Helpers for the pollers' tests: the whole pipeline (client, cache, store, bus) over real
Redis and SQLite, against an in-process simulator, with the bus's events collected."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from btsguru.backoff import Backoff
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from btsguru.db.runner import DatabaseRunner
from btsguru.pollers.service import TASK_KINDS, Pollers
from btsguru.simulator.games import SCHEDULES
from btsguru.store.bus import BusEvent, InMemoryBus
from btsguru.store.cache import RawCache
from btsguru.store.games import GameStore
from btsguru.store.redis import RedisStores, open_redis
from btsguru.store.standings import StandingsStore
from btsguru.upstream import QuotaGovernor, UpstreamClient


@dataclass
class Received:
    at: float  # time.time() when the bus delivered it
    event: BusEvent


@dataclass
class PollerStack:
    config: Config
    clock: Clock
    redis: RedisStores
    games: GameStore
    cache: RawCache
    quota: QuotaGovernor
    pollers: Pollers
    events: list[Received] = field(default_factory=list)

    def of_game(self, game_id: int) -> list[BusEvent]:
        return [r.event for r in self.events if r.event.data.get("game_id") == game_id]


@asynccontextmanager
async def poller_stack(config: Config, *, clock: Clock | None = None,
                       sports: Sequence[str] | None = None,
                       kinds: Sequence[str] = TASK_KINDS,
                       use_leases: bool = False) -> AsyncIterator[PollerStack]:
    clock = clock or SystemClock()
    database = connect_database(config.database_url)
    migrate(database, free_rate=60, free_period_s=60)
    runner = DatabaseRunner(database)
    stores = open_redis(config)
    bus = InMemoryBus()
    games = GameStore(stores, runner, clock, bus)
    quota = QuotaGovernor(stores, config, clock)
    client = UpstreamClient(config, stores, clock=clock, quota=quota,
                            backoff=Backoff(0.01, 0.05))
    cache = RawCache(stores, config, clock)
    pollers = Pollers(config, clock, stores, client, cache, quota, games,
                      StandingsStore(stores), sports=sports, kinds=kinds,
                      use_leases=use_leases)
    stack = PollerStack(config, clock, stores, games, cache, quota, pollers)

    def collect(_channel: str, event: BusEvent) -> None:
        stack.events.append(Received(time.time(), event))

    for sport in pollers.sports:
        await bus.subscribe(f"sports.{sport}", collect)
    try:
        yield stack
    finally:
        await pollers.stop()
        await games.close()
        await client.close()
        await bus.close()
        await stores.close()
        runner.close()
        close_database(database)


def next_normal_game(server: Any, sport: str, *, after_s: float = 120,
                     until: float | None = None, goals: bool = True) -> Any:
    """The simulator's next game of `sport` kicking off at least `after_s` from its now,
    playing the normal scenario (and scoring, when `goals`); None if none before `until`."""
    schedule = server.simulator.schedule
    sim_now = server.simulator.now().sim_now
    interval = SCHEDULES[sport].interval_s
    for game in schedule.games_between(sport, int(sim_now + after_s),
                                       int(sim_now + after_s + 40 * interval)):
        if until is not None and game.start_ts >= until:
            return None
        if game.scenario != "normal":
            continue
        if goals and not any(e.points and e.period != "PEN" for e in game.events):
            continue
        return game
    return None
