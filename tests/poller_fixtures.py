"""Helpers for the pollers' tests: the whole pipeline (client, cache, store, bus) over real
Redis and SQLite, against an in-process simulator, with the bus's events collected."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from btsguru.backoff import Backoff
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.pollers.service import TASK_KINDS
from btsguru.pollers.stack import PollerStack, open_poller_stack
from btsguru.simulator.games import SCHEDULES
from btsguru.store.bus import BusEvent


@dataclass
class Received:
    at: float  # time.time() when the bus delivered it
    event: BusEvent


@dataclass(frozen=True)
class CollectingStack(PollerStack):
    """The pollers' stack, with every event its sports' channels published."""

    events: list[Received] = field(default_factory=list)

    def of_game(self, game_id: int) -> list[BusEvent]:
        return [r.event for r in self.events if r.event.data.get("game_id") == game_id]


@asynccontextmanager
async def poller_stack(config: Config, *, clock: Clock | None = None,
                       sports: Sequence[str] | None = None,
                       kinds: Sequence[str] = TASK_KINDS,
                       use_leases: bool = False) -> AsyncIterator[CollectingStack]:
    """`btsguru.pollers.stack` on the in-memory bus, with a quick retry backoff."""
    async with open_poller_stack(config, clock=clock, bus="memory", sports=sports, kinds=kinds,
                                 use_leases=use_leases,
                                 backoff=Backoff(0.01, 0.05)) as parts:
        stack = CollectingStack(**{f.name: getattr(parts, f.name) for f in fields(parts)})

        def collect(_channel: str, event: BusEvent) -> None:
            stack.events.append(Received(time.time(), event))

        for sport in parts.pollers.sports:
            await parts.bus.subscribe(f"sports.{sport}", collect)
        yield stack


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
