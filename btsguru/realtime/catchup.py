"""Catching a subscription up: the history replayed after a client's cursor, or
`game.snapshot` of the games it follows, before the live events held meanwhile.

Where it sits: store (history, game state) -> **catch-up** -> hub -> transports. The hub
indexes a subscribe's channels and holds their live events (`Sync`); this module fills
in what came before and then releases what was held. It also serves the hub's two other
moments of catching up: after a bus reconnect (pub/sub loses what is published while it
is down) and for a slow consumer whose socket has drained (`Connection` lags).

Per sport, for the channels of one subscribe (the contract's section 4): either the
history after the client's cursor is replayed (`recovered`), or, for a game channel or
a cursor older than the window, the current `game.snapshot` is sent; then the held
events follow. An event is sent to a subscription only when its id is after the last
one it had, and a game's event only when its seq is after the snapshot's: no gap, no
duplicate, in order.

Reads are bounded in number and shared between subscribers asking the same thing at
once (`SharedReads`), and encoded snapshots are cached, so that a reconnect storm after
a restart costs one read and one encoding per game, not one per client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from btsguru.errors import BtsguruError, store_unavailable
from btsguru.realtime.connection import Connection, EventFacts, Subscription, event_facts
from btsguru.realtime.cursor import NO_POSITION, StreamPos
from btsguru.sports.base import Game, game_to_json
from btsguru.store.bus import BusEvent, covers, game_channel
from btsguru.store.games import GameStore
from btsguru.store.history import EventHistory, HistoryEvent, parse_stream_id

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SNAPSHOT_EVENT = "game.snapshot"
SNAPSHOT_CACHE_SIZE = 2048  # encoded games, for snapshots sent to many clients at once
RECENT_DAYS = 2  # an expired cursor's snapshot covers games updated since, today or yesterday
# Catch-up reads in flight at once: well under the Redis client's pool of 100, so that a
# reconnect storm queues here instead of failing for want of a connection.
READ_CONCURRENCY = 32


def format_pos(pos: StreamPos) -> str:
    return f"{pos[0]}-{pos[1]}"


class SharedReads:
    """Catch-up reads (the history, game state), bounded in number and shared between
    subscribers that ask the same thing at once: after a restart thousands of clients
    ask for the same game's snapshot within milliseconds.

    Sharing must not return state older than a caller may see: a caller holds a
    `ticket()` taken when it became entitled to a read (its bus subscription active, or
    the history position its snapshot must include already read) and joins only a read
    that *started* after that ticket; otherwise it starts a fresh one.
    """

    def __init__(self, limit: int = READ_CONCURRENCY) -> None:
        self._gate = asyncio.Semaphore(limit)
        self._counter = 0
        self._inflight: dict[Hashable, tuple[int, asyncio.Future[Any]]] = {}

    def ticket(self) -> int:
        return self._counter

    async def read(self, key: Hashable, ticket: int,
                   fetch: Callable[[], Awaitable[_T]]) -> _T:
        entry = self._inflight.get(key)
        if entry is not None and entry[0] > ticket:
            shared: _T = await asyncio.shield(entry[1])
            return shared
        self._counter += 1
        task = asyncio.ensure_future(self._run(fetch))
        self._inflight[key] = (self._counter, task)

        def forget(done: asyncio.Future[Any]) -> None:
            if self._inflight.get(key, (0, None))[1] is done:
                del self._inflight[key]
            if not done.cancelled():
                done.exception()  # retrieved: every caller got it already

        task.add_done_callback(forget)
        result: _T = await asyncio.shield(task)
        return result

    async def _run(self, fetch: Callable[[], Awaitable[_T]]) -> _T:
        async with self._gate:
            return await fetch()


class CatchUp:
    """The hub's replays and snapshots; see the module docstring."""

    def __init__(self, history: EventHistory, games: GameStore) -> None:
        self._history = history
        self._games = games
        self._reads = SharedReads()
        self._snapshots: OrderedDict[tuple[str, int, int, str | None], bytes] = OrderedDict()

    async def run(self, conn: Connection, subs: list[Subscription],
                  since: str | None, *, announce: bool = True) -> None:
        """Replay or snapshot for `subs` (one sport, sharing one `Sync`), then release
        the events held meanwhile. Always ends the sync, even when it fails."""
        sport = subs[0].channel.sport
        sync = subs[0].sync
        ticket = self._reads.ticket()  # the bus delivers to `subs` from here on
        try:
            events = None
            if since is not None:
                events = await self._read_after(sport, since, subs, ticket)
            if events is not None:
                pos = parse_stream_id(since) if since is not None else (0, 0)
                for sub in subs:
                    sub.after = max(sub.after or pos, pos)
                conn.positions.setdefault(sport, format_pos(pos))
                if announce:
                    for sub in subs:
                        conn.control({"op": "subscribed", "channel": sub.name,
                                      "recovered": True})
                self._replay(conn, subs, events)
            else:
                await self._snapshot(conn, subs, ticket, expired=since, announce=announce)
            while sync is not None and sync.overflowed and not conn.closed:
                sync.overflowed = False
                start = min((s.after or (0, 0)) for s in subs)
                replay = await self._read_after(sport, format_pos(start), subs,
                                                self._reads.ticket())
                if replay is None:
                    conn.close_too_slow("its catch-up outran the history window")
                    return
                self._replay(conn, subs, replay)
        finally:
            held = sync.buffer if sync is not None else []
            for sub in subs:
                sub.sync = None
            for sub, event in held:
                facts = event_facts(event)
                if facts is not None:
                    conn.deliver(sub, event, facts, {})

    async def resync(self, sport: str, groups: dict[Connection, list[Subscription]]) -> None:
        """Fill what the bus missed while it was down, from the history (the hub has
        made each group hold its live events meanwhile)."""
        log.info("hub: bus reconnected; catching up %d connections on %s", len(groups), sport)

        async def catch_up(conn: Connection, group: list[Subscription]) -> None:
            start = min((s.after or (0, 0)) for s in group)
            try:
                await self.run(conn, group, format_pos(start), announce=False)
            except BtsguruError as exc:
                log.warning("hub: catching up connection %d failed: %s", conn.id, exc)
                conn.close(exc.ws_close_code, exc.message[:100])

        await asyncio.gather(*(catch_up(conn, group) for conn, group in groups.items()))

    async def recover(self, conn: Connection) -> None:
        """Snapshot every game a lagging connection missed events of, then go live."""
        try:
            while not conn.closed:
                work = [(sub, sorted(sub.lagged)) for sub in conn.subs.values() if sub.lagged]
                if not work:
                    conn.lagging = False
                    return
                for sub, _ids in work:
                    sub.lagged = set()
                lasts: dict[str, str] = {}
                ticket = self._reads.ticket()
                for sport in {sub.channel.sport for sub, _ids in work}:
                    lasts[sport] = await self._last_id(sport, ticket)
                ticket = self._reads.ticket()
                for sub, ids in work:
                    sport = sub.channel.sport
                    games = await asyncio.gather(*(self._game(sport, i, ticket) for i in ids))
                    pos = parse_stream_id(lasts[sport])
                    sub.after = max(sub.after or pos, pos)
                    for game in games:
                        if game is not None and not conn.closed:
                            self.send_snapshot(conn, sub, game, lasts[sport])
        except (RedisError, OSError, BtsguruError) as exc:
            log.warning("hub: recovering connection %d failed: %s", conn.id, exc)
            conn.close_too_slow("could not be caught up")

    async def _read_after(self, sport: str, since: str, subs: Sequence[Subscription],
                          ticket: int) -> list[HistoryEvent] | None:
        game_ids: set[int] | None = None
        league_ids: set[int] | None = None
        if all(s.channel.is_game for s in subs):
            game_ids = {s.channel.game_id for s in subs if s.channel.game_id is not None}
        elif all(s.channel.league_id is not None for s in subs):
            league_ids = {s.channel.league_id for s in subs if s.channel.league_id is not None}
        key = ("after", sport, since, frozenset(game_ids or ()), frozenset(league_ids or ()),
               game_ids is None, league_ids is None)
        try:
            return await self._reads.read(key, ticket, lambda: self._history.read_after(
                sport, since, game_ids=game_ids, league_ids=league_ids))
        except (RedisError, OSError) as exc:
            raise store_unavailable("the event history", exc) from None

    def _replay(self, conn: Connection, subs: Sequence[Subscription],
                events: Sequence[HistoryEvent]) -> None:
        for stored in events:
            event = stored.to_bus_event()
            facts = EventFacts(parse_stream_id(stored.id), stored.sport, stored.game_id)
            shared: dict[Any, bytes] = {}
            for sub in subs:
                if covers(sub.name, stored.channel):
                    conn.deliver(sub, event, facts, shared)

    async def _snapshot(self, conn: Connection, subs: Sequence[Subscription], ticket: int,
                        *, expired: str | None, announce: bool) -> None:
        """`subscribed` (not recovered), then `game.snapshot` of each game channel's game,
        and, when the client's cursor is older than the window, of every game of its
        other channels that is in play or changed since."""
        sport = subs[0].channel.sport
        try:
            last = await self._last_id(sport, ticket)
        except (RedisError, OSError) as exc:
            raise store_unavailable("the event history", exc) from None
        ticket = self._reads.ticket()  # the snapshot must include everything up to `last`
        pos = parse_stream_id(last)
        for sub in subs:
            sub.after = max(sub.after or pos, pos)
        conn.positions.setdefault(sport, last)
        if announce:
            for sub in subs:
                conn.control({"op": "subscribed", "channel": sub.name, "recovered": False})
        pairs = await self._games_for(sport, subs, expired, ticket)
        for sub, game in pairs:
            self.send_snapshot(conn, sub, game, last)

    async def _last_id(self, sport: str, ticket: int) -> str:
        last = await self._reads.read(("last", sport), ticket,
                                      lambda: self._history.last_id(sport))
        return last or NO_POSITION

    async def _game(self, sport: str, game_id: int, ticket: int) -> Game | None:
        return await self._reads.read(("game", sport, game_id), ticket,
                                      lambda: self._games.get(sport, game_id))

    async def _games_for(self, sport: str, subs: Sequence[Subscription],
                         expired: str | None, ticket: int) -> list[tuple[Subscription, Game]]:
        wanted = sorted({s.channel.game_id for s in subs if s.channel.game_id is not None})
        try:
            found = await asyncio.gather(*(self._game(sport, gid, ticket) for gid in wanted))
            by_id = {g.id: g for g in found if g is not None}
            pool: list[Game] = []
            if expired is not None and any(not s.channel.is_game for s in subs):
                since_s = parse_stream_id(expired)[0] / 1000
                pool = await self._reads.read(("recent", sport, expired), ticket,
                                              lambda: self._recent_games(sport, since_s))
        except (RedisError, OSError) as exc:
            raise store_unavailable("game state", exc) from None
        except BtsguruError:
            raise
        out: list[tuple[Subscription, Game]] = []
        for sub in subs:
            channel = sub.channel
            if channel.game_id is not None:
                if channel.game_id in by_id and by_id[channel.game_id].league_id == \
                        (channel.league_id or by_id[channel.game_id].league_id):
                    out.append((sub, by_id[channel.game_id]))
            else:
                out += [(sub, g) for g in pool if channel.covers(g.sport, g.league_id, g.id)]
        return out

    async def _recent_games(self, sport: str, since_s: float) -> list[Game]:
        """Games in play, and games of today and yesterday updated since `since_s`."""
        games = {g.id: g for g in await self._games.live(sport)}
        today = datetime.now(UTC).date()
        cut = datetime.fromtimestamp(since_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for back in range(RECENT_DAYS):
            for game in await self._games.list(sport, date=today - timedelta(days=back)):
                if game.updated_at is not None and game.updated_at >= cut:
                    games.setdefault(game.id, game)
        return sorted(games.values(), key=lambda g: (g.start_time, g.id))

    def send_snapshot(self, conn: Connection, sub: Subscription, game: Game, id: str) -> None:
        """Queue `game.snapshot` of `game` for `sub`; its events up to `game.seq` are
        then skipped, as the snapshot holds them."""
        key = (game.sport, game.id, game.seq, game.updated_at)
        data_json = self._snapshots.get(key)
        if data_json is None:
            data_json = orjson.dumps(game_to_json(game))
            self._snapshots[key] = data_json
            if len(self._snapshots) > SNAPSHOT_CACHE_SIZE:
                self._snapshots.popitem(last=False)
        event = BusEvent(id=id, event=SNAPSHOT_EVENT,
                         channel=game_channel(game.sport, game.league_id, game.id),
                         data_json=data_json)
        facts = EventFacts(parse_stream_id(id), game.sport, game.id)
        sub.seq_floor[game.id] = max(sub.seq_floor.get(game.id, 0), game.seq)
        conn.send_frame(conn.render(sub.name, event, facts, {}), sub, game.id, game.sport, id)
