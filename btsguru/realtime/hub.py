"""The hub: one per process, between the bus and the transports' connections.

Where it sits: store + bus -> **hub** -> transports (native WebSocket, SSE, Pusher).

- Channels: each local subscription is indexed by its channel name; the hub holds one
  bus subscription per name its clients use (and nothing else, so a process's pub/sub
  traffic follows its own clients, not every game), lingering `BUS_LINGER_S` after the
  last client leaves so that reconnect churn does not churn Redis. The bus applies the
  hierarchy (`sports.football` receives every football game's events).
- Fan-out: an event from the bus is parsed once (`EventFacts`) and each connection's
  transport renders it through a cache shared by every subscriber of that channel
  (`Connection.render`): one encoding per transport format, then a socket write each.
- Subscribing and resuming (the contract's section 4), per sport, for the channels of
  one subscribe: the subscriptions are indexed first, so live events start to be held
  (`Sync`); then either the history after the client's cursor is replayed
  (`recovered`), or, for a game channel or a cursor older than the window, the current
  `game.snapshot` is sent; then the held events follow. An event is sent to a
  subscription only when its id is after the last one it had, and a game's event only
  when its seq is after the snapshot's: no gap, no duplicate, in order.
- Garbage collection: each connection is a few hundred long-lived objects, and a full
  collection walks them all, a pause of tens of milliseconds per ten thousand
  connections that lands on whatever fan-out is running. Once connections have
  settled (`GC_FREEZE_AFTER` new ones, then a quiet tick), the tick moves everything
  alive into the collector's permanent generation (`gc.freeze`), so later collections
  skip them. Frozen objects are never collected, so the cycles of connections that have
  closed since would stay for good (a soak with reconnect churn grew 3.5 MB a minute):
  a freeze after any connection left, or a quarter of the frozen ones having left,
  first unfreezes and runs one full collection, then freezes what is alive.
- Bus reconnects (pub/sub loses what is published while it is down) replay the same
  way from each subscription's last id; slow consumers are re-snapshotted once their
  socket drains (`Connection`); shutdown closes every connection with 1012 (SSE: the
  response ends) in staggered batches so that clients resume on other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.errors import BtsguruError, Unavailable, store_unavailable
from btsguru.lifecycle import cancel_tasks
from btsguru.realtime.channels import Channel
from btsguru.realtime.connection import (
    CLOSE_RESTARTING,
    STALL_TIMEOUT_S,
    Connection,
    EventFacts,
    Subscription,
    Sync,
    TooManyConnections,
)
from btsguru.realtime.cursor import NO_POSITION, Cursor, StreamPos
from btsguru.realtime.slots import HEARTBEAT_S, StreamSlots
from btsguru.sports.base import Game, game_to_json
from btsguru.store.bus import Bus, BusEvent, covers, game_channel, parse_channel
from btsguru.store.games import GameStore
from btsguru.store.history import EventHistory, HistoryEvent, parse_stream_id
from btsguru.store.series import SeriesRecorder

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SNAPSHOT_EVENT = "game.snapshot"
TICK_S = 1.0  # heartbeats, stalls and idle bus subscriptions are checked this often
BUS_LINGER_S = 30.0  # a channel nobody here follows any more stays subscribed this long
DRAIN_BATCH = 500  # connections closed at once on shutdown...
DRAIN_INTERVAL_S = 0.05  # ...then a pause, so reconnects spread over other processes
DRAIN_WAIT_S = 6.0  # then closes get this long to complete (under serve's 10 s drain)
SNAPSHOT_CACHE_SIZE = 2048  # encoded games, for snapshots sent to many clients at once
RECENT_DAYS = 2  # an expired cursor's snapshot covers games updated since, today or yesterday
# Catch-up reads in flight at once: well under the Redis client's pool of 100, so that a
# reconnect storm queues here instead of failing for want of a connection.
READ_CONCURRENCY = 32
GC_FREEZE_AFTER = 200  # connections admitted since the last freeze before the next one
GC_REFREEZE_SHARE = 4  # ...or 1/N of the frozen ones gone: collect them, freeze again


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


class Hub:
    """Channels -> subscribers for one process; see the module docstring."""

    def __init__(self, bus: Bus, history: EventHistory, games: GameStore, slots: StreamSlots,
                 sports: Sequence[str], *, series: SeriesRecorder | None = None) -> None:
        self._bus = bus
        self._series = series
        self._history = history
        self._games = games
        self.slots = slots
        self.sports = tuple(sports)
        self.connections: dict[int, Connection] = {}
        self._channels: dict[str, set[Subscription]] = {}
        self._bus_subs: dict[str, asyncio.Task[None]] = {}
        self._idle_since: dict[str, float] = {}
        self._recovering: set[int] = set()
        self._reads = SharedReads()
        self._snapshots: OrderedDict[tuple[str, int, int, str | None], bytes] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self.draining = False
        self._all_gone = asyncio.Event()  # set when the last connection goes
        self._gc_joined = 0  # connections admitted since the last freeze...
        self._gc_joined_last_tick = 0
        self._gc_frozen = 0  # ...connections alive at it, and how many of those left
        self._gc_left = 0
        bus.on_reconnect(self._on_bus_reconnect)

    # -- lifecycle --

    def start(self) -> None:
        """Start the tick (its first act is the stream-slot heartbeat); idempotent."""
        if self._ticker is None:
            self._started = True
            self._ticker = asyncio.create_task(self._tick_forever(), name="btsguru-hub-tick")

    async def drain(self) -> None:
        """Close every connection with 1012 (reconnect and resume), in batches, and wait
        for them to go (bounded). New connections are refused meanwhile."""
        self.draining = True
        conns = list(self.connections.values())
        random.shuffle(conns)
        if conns:
            log.info("hub: draining %d connections", len(conns))
        for at in range(0, len(conns), DRAIN_BATCH):
            for conn in conns[at:at + DRAIN_BATCH]:
                conn.close(CLOSE_RESTARTING, "server restarting: reconnect and resume")
            if at + DRAIN_BATCH < len(conns):
                await asyncio.sleep(DRAIN_INTERVAL_S)
        self._all_gone.clear()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), DRAIN_WAIT_S)

    async def close(self) -> None:
        if not self.draining:
            await self.drain()
        ticker, self._ticker = self._ticker, None
        tasks = [t for t in (ticker, *self._tasks, *self._bus_subs.values()) if t is not None]
        await cancel_tasks(tasks, owner="hub")
        for name in list(self._bus_subs):
            with contextlib.suppress(RedisError, OSError):
                await self._bus.unsubscribe(name, self._on_bus_event)
        self._bus_subs.clear()
        if self._started:  # a one-shot command never took a slot: no Redis round trip
            await self.slots.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub: %s failed", task.get_name(), exc_info=task.exception())

    # -- connections --

    async def register(self, conn: Connection) -> None:
        """Admit `conn` under its user's tier limit on concurrent streams (counted across
        processes): `TooManyConnections`, or `Unavailable` while draining."""
        if self.draining:
            raise Unavailable("server restarting: reconnect", retry_after_s=1)
        limit = conn.principal.tier.max_streams
        if await self.slots.acquire(conn.user_id, limit) is None:
            raise TooManyConnections(
                f"the {conn.principal.tier.name} tier allows {limit} concurrent stream "
                "connections", retry_after_s=5)
        conn.on_drained = self._on_drained
        self.connections[conn.id] = conn
        self._gc_joined += 1
        metrics.STREAM_CONNECTS.labels(conn.kind).inc()

    def unregister(self, conn: Connection) -> None:
        """Forget `conn` (it closed): its subscriptions now, its slot in the background."""
        if self.connections.pop(conn.id, None) is None:
            return
        conn.gone()
        self._gc_left += 1
        for sub in conn.subs.values():
            self._detach(sub)
        conn.subs.clear()
        if not self.connections:
            self._all_gone.set()
        self._spawn(self.slots.release(conn.user_id), f"release a slot of user {conn.user_id}")

    # -- subscriptions --

    async def subscribe(self, conn: Connection, channels: Sequence[Channel],
                        cursor: Cursor | None = None) -> None:
        """Subscribe `conn` to `channels` and catch it up (see the module docstring).
        Channels it already has are only announced again. Raises `TooManySubscriptions`
        or `Unavailable` (nothing subscribed then)."""
        new: dict[str, list[Subscription]] = {}
        again: list[str] = []
        seen: set[str] = set()
        for channel in channels:
            if channel.name in conn.subs or channel.name in seen:
                again.append(channel.name)
                continue
            seen.add(channel.name)
            new.setdefault(channel.sport, []).append(Subscription(conn, channel))
        conn.check_subscription_room(len(seen))
        syncs = {sport: Sync() for sport in new}
        added = [sub for subs in new.values() for sub in subs]
        for sub in added:
            sub.sync = syncs[sub.channel.sport]
            conn.subs[sub.name] = sub
            self._attach(sub)
        try:
            await asyncio.gather(*(self._ensure_bus(sub.name) for sub in added))
        except (TimeoutError, RedisError, OSError, RuntimeError) as exc:
            for sub in added:
                conn.subs.pop(sub.name, None)
                self._detach(sub)
            raise store_unavailable("subscribing", exc) from None
        for name in again:
            conn.control({"op": "subscribed", "channel": name, "recovered": False})
        pending = list(new.items())
        try:
            while pending:
                sport, subs = pending[0]
                since = cursor.position(sport) if cursor is not None else None
                await self._catch_up(conn, subs, since)
                pending.pop(0)
        except BaseException:
            for _sport, subs in pending:  # the sport that failed, and those not reached
                for sub in subs:
                    if conn.subs.get(sub.name) is sub:
                        del conn.subs[sub.name]
                    self._detach(sub)
            raise

    async def unsubscribe(self, conn: Connection, names: Iterable[str]) -> None:
        for name in names:
            sub = conn.subs.pop(name, None)
            if sub is not None:
                self._detach(sub)

    def _attach(self, sub: Subscription) -> None:
        self._channels.setdefault(sub.name, set()).add(sub)
        self._idle_since.pop(sub.name, None)

    def _detach(self, sub: Subscription) -> None:
        subs = self._channels.get(sub.name)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._channels[sub.name]
            self._idle_since[sub.name] = time.monotonic()

    async def _ensure_bus(self, name: str) -> None:
        task = self._bus_subs.get(name)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._bus.subscribe(name, self._on_bus_event))
            self._bus_subs[name] = task
        try:
            await asyncio.shield(task)
        except BaseException:
            if self._bus_subs.get(name) is task and task.done():
                del self._bus_subs[name]
            raise

    def bus_channels(self) -> list[str]:
        """The channels this process is subscribed to on the bus (for ops and tests)."""
        return sorted(self._bus_subs)

    # -- fan-out --

    def _facts(self, event: BusEvent) -> EventFacts | None:
        try:
            sport, _league, game_id = parse_channel(event.channel)
            return EventFacts(parse_stream_id(event.id), sport, game_id)
        except ValueError:
            log.warning("hub: ignoring event %r on channel %r", event.id, event.channel)
            return None

    def _on_bus_event(self, subscribed: str, event: BusEvent) -> None:
        subs = self._channels.get(subscribed)
        if not subs:
            return
        facts = self._facts(event)
        if facts is None:
            return
        shared: dict[Any, bytes] = {}
        watch = metrics.Stopwatch()
        for sub in tuple(subs):
            try:
                sub.conn.offer(sub, event, facts, shared)
            except Exception:  # one broken connection must not starve the others
                log.exception("hub: delivering %s to connection %d failed", event.id,
                              sub.conn.id)
                sub.conn.close(1011, "internal error")
        metrics.FANOUT_DURATION.observe(watch.elapsed_s())
        if self._series is not None:
            # the id's milliseconds are Redis's clock at XADD, so this is wall time (the
            # injected clock may be a test's): change stored -> handed to the sockets
            self._series.delivered(time.time() * 1000 - facts.pos[0])

    # -- catching up --

    async def _catch_up(self, conn: Connection, subs: list[Subscription],
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
                facts = self._facts(event)
                if facts is not None:
                    conn.deliver(sub, event, facts, {})

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

    # -- bus reconnects --

    def _on_bus_reconnect(self) -> None:
        """The bus calls this before it delivers anything more, so every subscription
        starts holding live events here and now: one delivered before its resync began
        would move its position past the events the bus missed, and the replay from
        that position would skip them. A catch-up already running is told to read the
        history again when it is done (as when its buffer overflows)."""
        groups: dict[str, dict[Connection, list[Subscription]]] = {}
        for local in self._channels.values():
            for sub in local:
                if sub.conn.closed:
                    continue
                if sub.sync is not None:
                    sub.sync.overflowed = True
                    sub.sync.buffer.clear()  # the history has them all
                    continue
                groups.setdefault(sub.channel.sport, {}).setdefault(sub.conn, []).append(sub)
        for sport, by_conn in groups.items():
            for group in by_conn.values():
                sync = Sync()
                for sub in group:
                    sub.sync = sync
            self._spawn(self._resync_sport(sport, by_conn), f"resync {sport}")

    async def _resync_sport(self, sport: str,
                            groups: dict[Connection, list[Subscription]]) -> None:
        """Fill what the bus missed while it was down, from the history."""
        log.info("hub: bus reconnected; catching up %d connections on %s", len(groups), sport)

        async def catch_up(conn: Connection, group: list[Subscription]) -> None:
            start = min((s.after or (0, 0)) for s in group)
            try:
                await self._catch_up(conn, group, format_pos(start), announce=False)
            except BtsguruError as exc:
                log.warning("hub: catching up connection %d failed: %s", conn.id, exc)
                conn.close(exc.ws_close_code, exc.message[:100])

        await asyncio.gather(*(catch_up(conn, group) for conn, group in groups.items()))

    # -- slow consumers --

    def _on_drained(self, conn: Connection) -> None:
        if conn.id not in self._recovering and not conn.closed:
            self._recovering.add(conn.id)
            self._spawn(self._recover(conn), f"recover connection {conn.id}")

    async def _recover(self, conn: Connection) -> None:
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
        finally:
            self._recovering.discard(conn.id)

    # -- the tick --

    async def _tick_forever(self) -> None:
        next_heartbeat = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_heartbeat:
                    next_heartbeat = now + HEARTBEAT_S
                    await self.slots.heartbeat()
            except (RedisError, OSError) as exc:
                log.warning("hub: stream slot heartbeat failed: %s", exc)
            try:
                self._check_connections(now)
                self._manage_gc()
                await self._release_idle(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub: tick failed")
            await asyncio.sleep(TICK_S)

    def _check_connections(self, now: float) -> None:
        wall = time.time()
        for conn in list(self.connections.values()):
            if conn.closed:
                continue
            expires_at = conn.principal.expires_at
            if expires_at is not None and wall >= expires_at:
                # a key that expires while connected: its stream ends within a tick, as
                # its next request would fail (revocations: `realtime.revocation`)
                conn.revoked()
                continue
            conn.tick(now)
            if conn.stalled_since is not None and now - conn.stalled_since > STALL_TIMEOUT_S:
                conn.close_too_slow(f"took no bytes for {STALL_TIMEOUT_S:g} s")
            elif conn.heartbeat_s is not None and now - conn.last_write_at >= conn.heartbeat_s:
                conn.heartbeat()

    def _manage_gc(self) -> None:
        """See the module docstring: freeze settled connections, and collect what the
        ones that left have left frozen."""
        settled = self._gc_joined == self._gc_joined_last_tick
        self._gc_joined_last_tick = self._gc_joined
        if self._gc_frozen and self._gc_left * GC_REFREEZE_SHARE >= self._gc_frozen:
            self._refreeze(full=True)
        elif settled and self._gc_joined >= GC_FREEZE_AFTER:
            self._refreeze(full=self._gc_left > 0)

    def _refreeze(self, *, full: bool) -> None:
        if full:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
        self._gc_frozen, self._gc_left = len(self.connections), 0
        self._gc_joined = self._gc_joined_last_tick = 0
        log.debug("hub: froze %d objects (%d connections%s)", gc.get_freeze_count(),
                  self._gc_frozen, ", after a full collection" if full else "")

    async def _release_idle(self, now: float) -> None:
        idle = [name for name, since in self._idle_since.items()
                if now - since >= BUS_LINGER_S and name not in self._channels]
        for name in idle:
            self._idle_since.pop(name, None)
            task = self._bus_subs.pop(name, None)
            if task is None:
                continue
            with contextlib.suppress(RedisError, OSError):
                await self._bus.unsubscribe(name, self._on_bus_event)

    def subscriber_count(self, names: Collection[str] | None = None) -> int:
        return sum(len(subs) for name, subs in self._channels.items()
                   if names is None or name in names)
