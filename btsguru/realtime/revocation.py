"""Closing the open streams of revoked keys and disabled users, within seconds.

Beside the flow: `AccessService` hands every invalidation it applies (a key revoked, a
user disabled or changed, everything after a missed message) to `StreamRevoker`, which
re-checks, in one query per batch, the keys of the hub's connections it may concern and
closes those that no longer authenticate: 4001 (bad key) on the native WebSocket, the
end of the response on SSE, 4009 (unauthorized) on Pusher, whose private and presence
game channels rest on the key that authorized them. A REST client meets a revoked key at
its next request; a stream makes no more requests, so without this it would keep
receiving events for as long as it stayed open.

Connections without an API key (a Pusher socket on public or app channels only, the
console's scoreboard) are not this module's: their rights come from the app key or a
session. A failed re-check (the database down) closes nothing: the hot path keeps
serving through a database outage, and the next invalidation checks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from btsguru.auth.access import Invalidation
from btsguru.lifecycle import cancel_tasks
from btsguru.realtime.connection import Connection

log = logging.getLogger(__name__)

CHECK_BATCH = 500  # key ids per query: well under every backend's bound on IN lists


def concerns(what: Invalidation, conn: Connection) -> bool:
    """Whether `what` may have taken away rights `conn` holds. A key is named by its
    hash, which connections do not keep, so a key invalidation re-checks every key."""
    if not conn.key_ids():
        return False
    return what.everything or what.key_hash is not None or what.user_id in conn.user_ids()


class StreamRevoker:
    """Listens to invalidations (`AccessService.on_invalidation(revoker.invalidated)`) and
    closes the hub's connections whose key was revoked or whose user was disabled."""

    def __init__(self, connections: Callable[[], Iterable[Connection]],
                 active_key_ids: Callable[[list[int]], Awaitable[set[int]]]) -> None:
        self._connections = connections
        self._active = active_key_ids
        self._tasks: set[asyncio.Task[int]] = set()

    def invalidated(self, what: Invalidation) -> None:
        """Start re-checking the connections `what` concerns (no waiting here: this runs
        inside the access service's invalidation)."""
        conns = [c for c in self._connections() if not c.closed and concerns(what, c)]
        if not conns:
            return
        task = asyncio.create_task(self.recheck(conns), name="btsguru-stream-revoker")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recheck(self, conns: list[Connection]) -> int:
        """Close those of `conns` that hold a key which no longer authenticates; how many
        closed."""
        ids = sorted(set().union(*(c.key_ids() for c in conns)))
        active: set[int] = set()
        try:
            for at in range(0, len(ids), CHECK_BATCH):
                active |= await self._active(ids[at:at + CHECK_BATCH])
        except Exception as exc:
            log.warning("open streams' keys could not be re-checked: %s", exc)
            return 0
        closed = 0
        for conn in conns:
            gone = conn.key_ids() - active
            if gone and not conn.closed:
                log.info("closing %s connection %d (user %d): key id(s) %s revoked, expired "
                         "or their user disabled", conn.kind, conn.id, conn.user_id,
                         ",".join(map(str, sorted(gone))))
                conn.revoked()
                closed += 1
        return closed

    async def close(self) -> None:
        await cancel_tasks(list(self._tasks), owner="stream revoker")
