"""Leases: each poller task runs in exactly one process of the cluster.

Where it sits: beside the pollers (ARCHITECTURE.md: "a Redis lease makes each task run in
exactly one process cluster-wide"). A lease is one key in the `queue` database,
`<prefix>poll:lease:<task>`, whose value is the holder's token `host:pid:uuid`:

- taken with `SET NX PX` (nobody holds it) — or kept, when the value is already ours;
- renewed by a compare-and-`PEXPIRE` script every `renew_s` while the task runs;
- released by a compare-and-`DEL` script on stop, so a clean shutdown hands over at the
  next renewal tick of another process (a few seconds);
- a holder that dies simply stops renewing: its key expires after `ttl_s`, and another
  process takes it at its next tick (within `ttl_s + renew_s`).

Guarantee: at most one live process believes it holds a lease at any moment, as long as
a holder notices a failed renewal before `ttl_s` passes (it renews every `renew_s`, well
inside the TTL, and drops the lease the moment a renewal is refused or fails).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterable

from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.store.redis import Keys, RedisStores
from btsguru.store.typed import queue_script

log = logging.getLogger(__name__)

# A dead holder's tasks move within TTL + one renewal tick: ~13 s. Shorter TTLs would let
# a stalled event loop (a long GC pause, a slow Redis) lose leases it still uses.
LEASE_TTL_S = 10.0
LEASE_RENEW_S = 3.0  # three renewals per TTL: one lost round trip is not a lost lease

# Take the lease if free, keep it if ours; 1 when we hold it afterwards.
_TAKE_OR_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(keys: Keys, name: str) -> str:
    return keys.key("poll", "lease", name)


def holder_token() -> str:
    """`host:pid:uuid`: who holds a lease, readable in the ops view, unique per process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases one process holds (or wants) for its tasks.

    `refresh(names)` is called every `renew_s` by the scheduler's keeper: it takes every
    free lease among `names` and renews the ones held, in one pipelined round trip.
    `held(name)` answers from memory (the last refresh); `wait_held(name)` returns once
    this process holds the lease.
    """

    def __init__(self, redis: RedisStores, clock: Clock, *, ttl_s: float = LEASE_TTL_S,
                 renew_s: float = LEASE_RENEW_S, token: str | None = None) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError("lease renew_s must be positive and shorter than ttl_s")
        self._redis = redis.queue
        self._keys = redis.keys
        self._clock = clock
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.token = token or holder_token()
        self._take = self._redis.register_script(_TAKE_OR_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._held: dict[str, float] = {}  # name -> monotonic time the lease was confirmed
        self._changed = asyncio.Condition()

    def key(self, name: str) -> str:
        return lease_key(self._keys, name)

    def held(self, name: str) -> bool:
        """Held as of the last refresh, and that refresh is younger than the TTL (a keeper
        that cannot reach Redis must not go on believing it holds anything)."""
        confirmed = self._held.get(name)
        return confirmed is not None and self._clock.monotonic() - confirmed < self.ttl_s

    async def refresh(self, names: Iterable[str]) -> dict[str, bool]:
        """Take or renew each lease; returns which ones this process holds now."""
        names = list(names)
        if not names:
            return {}
        started = self._clock.monotonic()
        ttl_ms = int(self.ttl_s * 1000)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    await queue_script(self._take, pipe, keys=[self.key(name)],
                                       args=[self.token, ttl_ms])
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("leases: cannot reach Redis to renew %d leases: %s", len(names), exc)
            # held() lapses by itself once the TTL passes since the last confirmation
            return {name: self.held(name) for name in names}
        result: dict[str, bool] = {}
        taken, lost = [], []
        for name, reply in zip(names, replies, strict=True):
            mine = int(reply) == 1
            was = name in self._held
            if mine:
                self._held[name] = started
                if not was:
                    taken.append(name)
            elif was:
                del self._held[name]
                lost.append(name)
            result[name] = mine
        if taken:
            log.info("leases taken by %s: %s", self.token, ", ".join(taken))
        if lost:
            log.warning("leases lost to another holder: %s", ", ".join(lost))
        async with self._changed:
            self._changed.notify_all()
        return result

    async def wait_held(self, name: str) -> None:
        """Return once this process holds `name` (woken by each refresh)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.held(name))

    async def release(self, names: Iterable[str]) -> None:
        """Give up the leases this process holds among `names` (on stop)."""
        mine = [name for name in names if name in self._held]
        for name in mine:
            self._held.pop(name, None)
        if not mine:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in mine:
                    await queue_script(self._release, pipe, keys=[self.key(name)],
                                       args=[self.token])
                await pipe.execute()
        except (RedisError, OSError) as exc:  # they expire by themselves
            log.warning("leases: could not release %s: %s", ", ".join(mine), exc)
        else:
            log.info("released leases %s", ", ".join(mine))
        async with self._changed:
            self._changed.notify_all()

    async def holder(self, name: str) -> str | None:
        """Who holds `name` now (the ops view), or None."""
        value = await self._redis.get(self.key(name))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
