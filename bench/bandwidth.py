"""Bandwidth: bytes one WebSocket client receives over whole football matches, as btsguru
sends them (change events) against pushing the full game on every change.

Offline and deterministic, through the real pipeline: the simulator's model of each
match (`simulator.games.Schedule`, rendered as the upstream would answer: `live=all`
items with their events while in play, the `ids=` item once it has left the live list,
a `date=` item before kick-off) -> `normalize_games` -> `GameStore.ingest` (diff, seq,
history ids; embedded Redis, scratch SQLite, on a fake clock) -> the native WebSocket's
frames (`event_json` + `ws_frame`, compressed once per message with no context
takeover, as btsguru sends them when permessage-deflate is negotiated). The polls
follow the live poller's real cadence (`cadence.live_decision`: 15 s, 10 s in crucial
moments), from two minutes before kick-off until the final has been fetched.

Per client subscribed to the game's channel before kick-off: its `game.snapshot`, then
every event. The references start with the same snapshot, then push the full game
(`game_to_json`, as a snapshot is) framed the same way:

- "on every change" (the target's reference): after every poll in which the game a
  client would see changed, the match clock included (a full-game relay has no other
  way to move it; btsguru's clients run the clock from `game.status`'s `server_time`),
  the observation time (`server_time`, `updated_at`) excluded;
- "on event polls only" (stricter, for information): only after the polls in which
  btsguru itself sends events.

CI size: 4 matches; `--full`: 48 consecutive matches of the schedule (every scenario:
normal, extra time, penalties, interruptions...). Target (issue 9, target 6): the events
<= 10% of the full-game bytes, with and without compression.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness import report
from btsguru.clock import FakeClock
from btsguru.config import load_config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from btsguru.db.runner import DatabaseRunner
from btsguru.pollers.cadence import CadenceSettings, live_decision
from btsguru.realtime.frames import event_json, ws_frame
from btsguru.simulator.catalog import Catalog
from btsguru.simulator.games import Schedule
from btsguru.simulator.render import LIVE_CODES, render_game
from btsguru.sports.base import Game, game_to_json
from btsguru.sports.normalize import normalize_games
from btsguru.store.bus import InMemoryBus, game_channel
from btsguru.store.games import GameStore
from btsguru.store.redis import open_redis

SPORT = "football"
TARGET = 0.10  # issue 9, target 6
DEFLATE_WBITS = 15  # what clients offer (and btsguru accepts) by default
FIRST_SLOT = 85_000  # a slot of 2026: any will do, the schedule is the same every day
PREGAME_S = 120  # the live poller wakes POLL_PREGAME_LEAD_S before a start


@dataclass
class Tally:
    """Bytes and messages one client receives."""

    messages: int = 0
    plain: int = 0
    deflate: int = 0

    def add(self, payload: bytes) -> None:
        self.messages += 1
        self.plain += len(ws_frame(payload))
        self.deflate += len(ws_frame(payload, DEFLATE_WBITS))


@dataclass
class Match:
    game_id: int
    scenario: str
    polls: int = 0
    events: Tally = field(default_factory=Tally)
    full: Tally = field(default_factory=Tally)  # on every change of the game
    full_on_events: Tally = field(default_factory=Tally)  # only when btsguru sends events


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _visible(game: Game) -> bytes:
    """The game as a full-game relay would compare it: everything but the observation
    time and the store's own fields."""
    data = game_to_json(replace(game, seq=0, updated_at=None,
                                status=replace(game.status, server_time=None)))
    return orjson.dumps(data)


async def _play(store: GameStore, clock: FakeClock, schedule: Schedule, slot: int,
                settings: CadenceSettings) -> Match:
    sim = schedule.game(SPORT, slot)
    match = Match(sim.id, sim.scenario)
    channel = game_channel(SPORT, sim.league.id, sim.id)
    live_codes = LIVE_CODES[SPORT]
    seen_live = subscribed = False
    while True:
        now = clock.time()
        state = sim.state_at(int(now) - sim.start_ts)
        in_list = state.code in live_codes
        # live=all while in play (with events); the ids= final after it left the list;
        # before kick-off the schedule's date= sweep
        details = "events" if in_list else ("full" if seen_live else "plain")
        item = orjson.loads(orjson.dumps(render_game(state, "UTC", UTC, details)))
        games = normalize_games(SPORT, [item], observed_at=_iso(now))
        result = await store.ingest(SPORT, games)
        match.polls += 1
        if not subscribed:  # the client subscribes before kick-off: its snapshot
            snapshot = await store.get(SPORT, sim.id)
            assert snapshot is not None
            data = orjson.dumps(game_to_json(snapshot))
            payload = event_json("0-1", channel, "game.snapshot", data)
            for tally in (match.events, match.full, match.full_on_events):
                tally.add(payload)
            subscribed = True
            pushed = _visible(snapshot)
        for stored in result.changes:
            match.events.add(event_json(stored.id, channel, stored.event, stored.data_json))
        game = await store.get(SPORT, sim.id)
        assert game is not None
        full = event_json(result.changes[-1].id if result.changes else "0-1", channel,
                          "game.snapshot", orjson.dumps(game_to_json(game)))
        if _visible(game) != pushed:
            match.full.add(full)
            pushed = _visible(game)
        if result.changes:
            match.full_on_events.add(full)
        if seen_live and not in_list:
            return match  # the final was fetched: the live poller is done with the game
        seen_live = seen_live or in_list
        decision = live_decision(SPORT, games, now, sim.start_ts, settings)
        clock.advance(decision.interval_s)


async def _matches(count: int) -> list[Match]:
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-bandwidth-"))
    config = load_config(environ={"REDIS_URL": "memory://", "RAPIDAPI_KEY": "bench",
                                  "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}"},
                         env_file=None)
    settings = CadenceSettings.from_config(config)
    database = connect_database(config.database_url)
    migrate(database)
    runner = DatabaseRunner(database)
    stores = open_redis(config)
    bus = InMemoryBus()
    schedule = Schedule(Catalog(seed=1))
    out: list[Match] = []
    try:
        slot = FIRST_SLOT
        while len(out) < count:
            sim = schedule.game(SPORT, slot)
            slot += 1
            if sim.first_play_index >= len(sim.segments) or sim.awarded is not None:
                continue  # postponed, cancelled or awarded: no match to follow
            # matches overlap in the schedule; each is followed alone, on a clock of
            # its own from two minutes before its kick-off
            clock = FakeClock(sim.start_ts - PREGAME_S)
            store = GameStore(stores, runner, clock, bus)
            try:
                out.append(await _play(store, clock, schedule, slot - 1, settings))
            finally:
                await store.close()
    finally:
        await bus.close()
        await stores.close()
        runner.close()
        close_database(database)
    return out


BASELINES = (
    ("full game on every change", "full"),
    ("full game on event polls only", "full_on_events"),
)


def run(full: bool) -> None:
    matches = asyncio.run(_matches(48 if full else 4))
    rows: list[dict[str, Any]] = []
    for label, attr in (("uncompressed", "plain"), ("permessage-deflate", "deflate")):
        events = [getattr(m.events, attr) for m in matches]
        for baseline, which in BASELINES:
            fulls = [getattr(getattr(m, which), attr) for m in matches]
            ratios = [e / f for e, f in zip(events, fulls, strict=True)]
            rows.append({
                "frames": label, "reference": baseline,
                "events B/match": round(statistics.mean(events)),
                "reference B/match": round(statistics.mean(fulls)),
                "ratio %": round(100 * sum(events) / sum(fulls), 1),
                "worst match %": round(100 * max(ratios), 1),
                "target": f"<= {TARGET:.0%}",
                "pass": "yes" if sum(events) <= TARGET * sum(fulls) else "NO",
            })
    extra = {
        "matches": len(matches),
        "events_per_match": statistics.mean(m.events.messages for m in matches),
        "full_pushes_per_match": statistics.mean(m.full.messages for m in matches),
        "event_poll_pushes_per_match": statistics.mean(m.full_on_events.messages
                                                       for m in matches),
        "polls_per_match": statistics.mean(m.polls for m in matches),
        "per_match": [{"game_id": m.game_id, "scenario": m.scenario, "polls": m.polls,
                       "events": m.events.messages, "full_pushes": m.full.messages,
                       "event_poll_pushes": m.full_on_events.messages,
                       "events_bytes": m.events.plain, "full_bytes": m.full.plain,
                       "event_poll_bytes": m.full_on_events.plain,
                       "events_deflate": m.events.deflate, "full_deflate": m.full.deflate,
                       "event_poll_deflate": m.full_on_events.deflate}
                      for m in matches],
        "deflate_wbits": DEFLATE_WBITS, "full": full,
    }
    print(f"  {len(matches)} matches; per match: {extra['events_per_match']:.1f} messages "
          f"of events (snapshot included), {extra['full_pushes_per_match']:.1f} full-game "
          f"pushes on every change ({extra['event_poll_pushes_per_match']:.1f} on event "
          f"polls only), {extra['polls_per_match']:.0f} polls")
    report("bandwidth_full" if full else "bandwidth", rows, extra)
