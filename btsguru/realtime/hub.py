"""The hub: one per process, between the bus and the transports' connections.

Where it sits: store + bus -> **hub** -> transports (native WebSocket, SSE, Pusher). The
hub owns the connections, their subscriptions and the fan-out; catching a subscription
up (history replay, snapshots) is `realtime.catchup`, and the once-a-second upkeep
(heartbeats, stalls, idle bus subscriptions, freezing the garbage collector's view of
settled connections) is `realtime.upkeep`.

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
  (`Sync`); then `CatchUp.run` replays the history after the client's cursor or sends
  `game.snapshot`, and releases the held events: no gap, no duplicate, in order.
- Bus reconnects (pub/sub loses what is published while it is down) make every
  subscription hold its live events at once and replay the same way from its last id;
  slow consumers are re-snapshotted once their socket drains (`Connection`); shutdown
  closes every connection with 1012 (SSE: the response ends) in staggered batches so
  that clients resume on other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.errors import Unavailable, store_unavailable
from btsguru.lifecycle import cancel_tasks
from btsguru.realtime.catchup import CatchUp
from btsguru.realtime.channels import Channel
from btsguru.realtime.connection import (
    CLOSE_RESTARTING,
    Connection,
    Subscription,
    Sync,
    TooManyConnections,
    event_facts,
)
from btsguru.realtime.cursor import Cursor
from btsguru.realtime.slots import StreamSlots
from btsguru.realtime.upkeep import Upkeep
from btsguru.store.bus import Bus, BusEvent
from btsguru.store.games import GameStore
from btsguru.store.history import EventHistory
from btsguru.store.series import SeriesRecorder

log = logging.getLogger(__name__)

BUS_LINGER_S = 30.0  # a channel nobody here follows any more stays subscribed this long
DRAIN_BATCH = 500  # connections closed at once on shutdown...
DRAIN_INTERVAL_S = 0.05  # ...then a pause, so reconnects spread over other processes
DRAIN_WAIT_S = 6.0  # then closes get this long to complete (under serve's 10 s drain)


class Hub:
    """Channels -> subscribers for one process; see the module docstring."""

    def __init__(self, bus: Bus, history: EventHistory, games: GameStore, slots: StreamSlots,
                 sports: Sequence[str], *, series: SeriesRecorder | None = None) -> None:
        self._bus = bus
        self._series = series
        self.games = games  # read by the Pusher cache channels
        self.history = history
        self.slots = slots
        self.sports = tuple(sports)
        self.connections: dict[int, Connection] = {}
        self._channels: dict[str, set[Subscription]] = {}
        self._bus_subs: dict[str, asyncio.Task[None]] = {}
        self._idle_since: dict[str, float] = {}
        self._recovering: set[int] = set()
        self._catchup = CatchUp(history, games)
        self.upkeep = Upkeep(self.connections, slots, self._release_idle)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._started = False
        self.draining = False
        self._all_gone = asyncio.Event()  # set when the last connection goes
        bus.on_reconnect(self._on_bus_reconnect)

    # -- lifecycle --

    def start(self) -> None:
        """Start the tick (its first act is the stream-slot heartbeat); idempotent."""
        if self._ticker is None:
            self._started = True
            self._ticker = asyncio.create_task(self.upkeep.run(), name="btsguru-hub-tick")

    async def drain(self) -> None:
        """Close every connection with 1012 (reconnect and resume), in batches, and wait
        for them to go (bounded). New connections are refused meanwhile."""
        self.draining = True
        conns = list(self.connections.values())
        random.shuffle(conns)
        if conns:
            log.info("hub: draining %d connections", len(conns))
            if self._started:  # their slots first, so they find them free elsewhere
                await self.slots.surrender()
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
        self.upkeep.gc.joined += 1
        metrics.STREAM_CONNECTS.labels(conn.kind).inc()

    def unregister(self, conn: Connection) -> None:
        """Forget `conn` (it closed): its subscriptions now, its slot in the background."""
        if self.connections.pop(conn.id, None) is None:
            return
        conn.gone()
        self.upkeep.gc.left += 1
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
                await self._catchup.run(conn, subs, since)
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

    def subscriber_count(self, names: Collection[str] | None = None) -> int:
        return sum(len(subs) for name, subs in self._channels.items()
                   if names is None or name in names)

    # -- fan-out --

    def _on_bus_event(self, subscribed: str, event: BusEvent) -> None:
        subs = self._channels.get(subscribed)
        if not subs:
            return
        facts = event_facts(event)
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
            self._spawn(self._catchup.resync(sport, by_conn), f"resync {sport}")

    # -- slow consumers --

    def _on_drained(self, conn: Connection) -> None:
        if conn.id not in self._recovering and not conn.closed:
            self._recovering.add(conn.id)
            self._spawn(self._recover(conn), f"recover connection {conn.id}")

    async def _recover(self, conn: Connection) -> None:
        try:
            await self._catchup.recover(conn)
        finally:
            self._recovering.discard(conn.id)

    # -- idle bus subscriptions (the upkeep's tick lets them go) --

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
