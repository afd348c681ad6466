"""The hub's once-a-second upkeep: the stream-slot heartbeat, each connection's
heartbeat, stall and key-expiry checks, idle bus subscriptions let go, and freezing the
garbage collector's view of settled connections.

Where it sits: beside the hub (`realtime.hub` starts it and hands it the connections);
it writes nothing of its own to a socket, only asks each `Connection` to.

Garbage collection: each connection is a few hundred long-lived objects, and a full
collection walks them all, a pause of tens of milliseconds per ten thousand connections
that lands on whatever fan-out is running. Once connections have settled
(`GC_FREEZE_AFTER` new ones, then a quiet tick), the tick moves everything alive into
the collector's permanent generation (`gc.freeze`), so later collections skip them.
Frozen objects are never collected, so the cycles of connections that have closed since
would stay for good (a soak with reconnect churn grew 3.5 MB a minute): a freeze after
any connection left, or a quarter of the frozen ones having left, first unfreezes and
runs one full collection, then freezes what is alive.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from redis.exceptions import RedisError

from btsguru.realtime.connection import STALL_TIMEOUT_S, Connection
from btsguru.realtime.slots import HEARTBEAT_S, StreamSlots

log = logging.getLogger(__name__)

TICK_S = 1.0  # heartbeats, stalls and idle bus subscriptions are checked this often
GC_FREEZE_AFTER = 200  # connections admitted since the last freeze before the next one
GC_REFREEZE_SHARE = 4  # ...or 1/N of the frozen ones gone: collect them, freeze again


class GcFreezer:
    """When to `gc.freeze` the hub's connections; see the module docstring. The hub
    counts `joined` and `left` as connections come and go."""

    def __init__(self, connections: Mapping[int, Connection]) -> None:
        self._connections = connections
        self.joined = 0  # connections admitted since the last freeze...
        self._joined_last_tick = 0
        self.frozen = 0  # ...connections alive at it, and how many of those left
        self.left = 0

    def tick(self) -> None:
        """Freeze settled connections, and collect what the ones that left have left
        frozen."""
        settled = self.joined == self._joined_last_tick
        self._joined_last_tick = self.joined
        if self.frozen and self.left * GC_REFREEZE_SHARE >= self.frozen:
            self._refreeze(full=True)
        elif settled and self.joined >= GC_FREEZE_AFTER:
            self._refreeze(full=self.left > 0)

    def _refreeze(self, *, full: bool) -> None:
        if full:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
        self.frozen, self.left = len(self._connections), 0
        self.joined = self._joined_last_tick = 0
        log.debug("hub: froze %d objects (%d connections%s)", gc.get_freeze_count(),
                  self.frozen, ", after a full collection" if full else "")


class Upkeep:
    """The tick of one hub: `run` until cancelled (the hub owns the task)."""

    def __init__(self, connections: Mapping[int, Connection], slots: StreamSlots,
                 release_idle: Callable[[float], Awaitable[None]]) -> None:
        self._connections = connections
        self._slots = slots
        self._release_idle = release_idle
        self.gc = GcFreezer(connections)

    async def run(self) -> None:
        """Tick every `TICK_S`; its first act is the stream-slot heartbeat. A failed
        tick is logged and the next one runs as usual."""
        next_heartbeat = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_heartbeat:
                    next_heartbeat = now + HEARTBEAT_S
                    await self._slots.heartbeat()
            except (RedisError, OSError) as exc:
                log.warning("hub: stream slot heartbeat failed: %s", exc)
            try:
                self.check_connections(now)
                self.gc.tick()
                await self._release_idle(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub: tick failed")
            await asyncio.sleep(TICK_S)

    def check_connections(self, now: float) -> None:
        wall = time.time()
        for conn in list(self._connections.values()):
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
