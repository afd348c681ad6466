"""Stream connections as the console shows them: a user's open connections (the usage
page) and connections per process and transport (the ops page).

Beside the flow: reads what `realtime.slots.StreamSlots` keeps in Redis (the `reverb`
database): `streams:user:{user_id}`, a hash of process id -> that process's open
connections of the user, and `streams:proc:{process id}`, each live process's heartbeat.
A count counts only while its process's heartbeat lives, exactly as admission does. The
transport of a connection is known only to its own process, so the ops view splits this
process's count by transport (from the hub) and shows other processes' totals.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from btsguru.console.ops import StreamRow
from btsguru.store.redis import Keys, RedisClient

log = logging.getLogger(__name__)

SCAN_BATCH = 500
MAX_USER_HASHES = 20_000  # bounds one ops refresh; past it the totals say "at least"


class LocalConnections(Protocol):
    """The hub's own view: this process's connections, each with a `kind` (transport)."""

    @property
    def connections(self) -> Mapping[int, Any]: ...


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamCounts:
    def __init__(self, redis: RedisClient, keys: Keys, *, process_id: str,
                 local: LocalConnections | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._process_id = process_id
        self._local = local

    def _user_key(self, user_id: int | str) -> str:
        return self._keys.key("streams", "user", user_id)

    def _proc_key(self, process_id: str) -> str:
        return self._keys.key("streams", "proc", process_id)

    async def user_connections(self, user_id: int) -> int:
        """The user's open stream connections, on every live process."""
        counts = {_text(k): int(v) for k, v in
                  (await self._redis.hgetall(self._user_key(user_id))).items()}
        if not counts:
            return 0
        alive = await self._alive(list(counts))
        return sum(n for proc, n in counts.items() if proc in alive and n > 0)

    async def _alive(self, processes: list[str]) -> set[str]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for proc in processes:
                pipe.exists(self._proc_key(proc))
            found = await pipe.execute()
        return {proc for proc, yes in zip(processes, found, strict=True) if yes}

    async def rows(self) -> list[StreamRow]:
        """Connections per process (this one split by transport), live processes only."""
        totals: Counter[str] = Counter()
        seen = 0
        async for name in self._redis.scan_iter(match=self._user_key("*"), count=SCAN_BATCH):
            for proc, count in (await self._redis.hgetall(name)).items():
                totals[_text(proc)] += int(count)
            seen += 1
            if seen >= MAX_USER_HASHES:
                log.warning("ops view: stopped counting stream connections after %d users",
                            seen)
                break
        async for name in self._redis.scan_iter(match=self._proc_key("*"), count=SCAN_BATCH):
            totals.setdefault(_text(name)[len(self._proc_key("")):], 0)  # alive, idle
        alive = await self._alive(list(totals))
        rows: list[StreamRow] = []
        local = Counter(getattr(c, "kind", "stream") for c in
                        (self._local.connections.values() if self._local else ()))
        for proc in sorted(alive):
            if proc == self._process_id and local:
                rows.extend(StreamRow(f"{proc} (this one)", kind, n)
                            for kind, n in sorted(local.items()))
            else:
                label = f"{proc} (this one)" if proc == self._process_id else proc
                rows.append(StreamRow(label, "all", max(0, totals[proc])))
        return rows
