"""Concurrent stream connections per user, counted across every process and host.

Where it sits: beside the hub; the transports ask for a slot when a client connects
(the tier's `max_streams`, all of a user's keys together) and give it back when it goes.

Redis layout (the `reverb` database):
- `streams:user:{user_id}`: a hash, process id -> that process's open connections of
  the user.
- `streams:proc:{process id}`: a heartbeat key with a TTL, refreshed every
  `HEARTBEAT_S` by the process that owns it.

Taking a slot is one script on the user's hash alone (one key: one Redis Cluster slot,
wherever the heartbeat keys live). The caller tells it which processes it knows to be
alive (their heartbeat key seen within `ALIVE_CACHE_S`) or dead (seen missing just now);
the script counts this process and the live ones, and when the hash names a process the
caller knows nothing about it changes nothing and returns that name: the caller reads its
heartbeat key and asks again. Otherwise it deletes the fields of the dead (a process that
died without releasing its counts is reaped the first time anyone looks) and adds one if
the sum is under the limit. So the limit stays exact: a process is counted unless its
heartbeat was seen missing, and one that just appeared is never taken for dead.

A process whose heartbeat lapsed while it lived (a Redis outage) may have had its counts
reaped: the first heartbeat that finds its key gone, and the one after it (for a reaper
that read the key as missing just before it came back), write back the counts of the
users whose field is missing (HSETNX: a field still there is exact, kept by increments),
so the totals heal by themselves.

Takes and releases are batched: those asked for in one loop iteration go to Redis as
one pipeline. A reconnect storm (thousands of clients after a deploy) then costs a few
round trips and a single pooled connection, instead of one connection per client, which
the client pool (100 connections) would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from typing import Any

from redis.exceptions import RedisError

from btsguru.clock import Clock, SystemClock
from btsguru.errors import store_unavailable
from btsguru.store.redis import Keys, RedisClient
from btsguru.store.typed import queue_script

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed heartbeats: the process is dead, its counts go
USER_HASH_TTL_S = 86400  # a user's hash outlives any connection that refreshes it
BATCH_MAX = 500  # scripts per pipeline
# how long a heartbeat seen present counts as alive without asking again: a dead
# process's slots are freed at most this long after its heartbeat expires
ALIVE_CACHE_S = 1.0
ROUNDS_MAX = 4  # asking again after meeting unknown processes; more means something is wrong

# KEYS[1]: the user's hash. ARGV: this process, the limit, the hash's TTL, then "+<proc>"
# for each process known alive and "-<proc>" for each known dead. Returns the new
# total, -1 at the limit, or the names of processes neither known alive nor dead.
_ACQUIRE = """
local known = {}
for i = 4, #ARGV do known[string.sub(ARGV[i], 2)] = string.sub(ARGV[i], 1, 1) end
local total, dead, unknown = 0, {}, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local proc = fields[i]
  if proc == ARGV[1] or known[proc] == '+' then
    total = total + tonumber(fields[i + 1])
  elseif known[proc] == '-' then
    table.insert(dead, proc)
  else
    table.insert(unknown, proc)
  end
end
if #unknown > 0 then return unknown end
for _, proc in ipairs(dead) do redis.call('HDEL', KEYS[1], proc) end
if total >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total + 1
"""

_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""


class StreamSlots:
    """This process's share of the per-user connection counts."""

    def __init__(self, redis: RedisClient, keys: Keys, *,
                 heartbeat_ttl_s: int = HEARTBEAT_TTL_S, process_id: str | None = None,
                 clock: Clock | None = None) -> None:
        self._redis = redis
        self._clock = clock or SystemClock()
        self._keys = keys
        self.ttl_s = heartbeat_ttl_s
        self.process_id = process_id or \
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._proc_prefix = keys.key("streams", "proc", "")
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self.local: Counter[int] = Counter()  # user id -> open connections here
        self._alive_until: dict[str, float] = {}  # other process -> seen alive until
        self._reassert_beats = 0  # heartbeats left that write back reaped counts
        # (user id, limit or None for a release, the caller's future)
        self._pending: list[tuple[int, int | None, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _user_key(self, user_id: int) -> str:
        return self._keys.key("streams", "user", user_id)

    async def heartbeat(self) -> None:
        """Prove this process is alive; if its heartbeat had lapsed (a Redis outage),
        others may have reaped its counts: write back the missing ones, now and at the
        next heartbeat (a reaper may have read the heartbeat as missing just before)."""
        if await self._redis.set(self._proc_prefix + self.process_id, "1",
                                 ex=self.ttl_s, get=True) is None:
            self._reassert_beats = 2
        if self._reassert_beats and self.local:
            log.info("stream slots: heartbeat had lapsed; re-asserting %d users' counts",
                     len(self.local))
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, count in self.local.items():
                    pipe.hsetnx(self._user_key(user_id), self.process_id, count)
                    pipe.expire(self._user_key(user_id), USER_HASH_TTL_S)
                await pipe.execute()
        self._reassert_beats = max(0, self._reassert_beats - 1)

    async def acquire(self, user_id: int, limit: int) -> int | None:
        """Take a slot: the user's connection count with it, or None at the limit."""
        try:
            total = await self._submit(user_id, limit)
        except (RedisError, OSError) as exc:
            raise store_unavailable("stream admission", exc, retry_after_s=5) from None
        if total < 0:
            return None
        self.local[user_id] += 1
        return total

    async def release(self, user_id: int) -> None:
        if self.local[user_id] <= 0:
            return
        self.local[user_id] -= 1
        if self.local[user_id] == 0:
            del self.local[user_id]
        try:
            await self._submit(user_id, None)
        except (RedisError, OSError) as exc:
            # a lapsed heartbeat re-asserts the true count; until then it is one too high
            log.warning("stream slot of user %d not released: %s", user_id, exc)

    def _submit(self, user_id: int, limit: int | None) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((user_id, limit, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="btsguru-stream-slots")
        return future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let this loop iteration's callers join the batch
        while self._pending:
            batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
            try:
                results = await self._run(batch)
            except (RedisError, OSError) as exc:
                results = [exc] * len(batch)
            for (user_id, limit, future), result in zip(batch, results, strict=True):
                if future.done():
                    if limit is not None and isinstance(result, int) and result >= 0:
                        # its caller went away after Redis counted it: give it back
                        orphan = self._submit(user_id, None)
                        orphan.add_done_callback(lambda f: f.cancelled() or f.exception())
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(int(result))

    async def _run(self, batch: list[tuple[int, int | None, asyncio.Future[int]]]) -> list[Any]:
        """One pipeline of scripts, the batch's results in order. Acquires that met
        processes of unknown liveness are asked again once their heartbeats are read."""
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        dead: set[str] = set()  # seen missing in this run: never assumed later
        for _round in range(ROUNDS_MAX):
            now = self._clock.monotonic()
            known = [f"+{proc}" for proc, until in self._alive_until.items() if until > now]
            known += [f"-{proc}" for proc in dead]
            async with self._redis.pipeline(transaction=False) as pipe:
                for at in todo:
                    user_id, limit, _future = batch[at]
                    if limit is None:
                        await queue_script(self._release, pipe,
                                           keys=[self._user_key(user_id)],
                                           args=[self.process_id])
                    else:
                        await queue_script(self._acquire, pipe,
                                           keys=[self._user_key(user_id)],
                                           args=[self.process_id, limit, USER_HASH_TTL_S,
                                                 *known])
                answers = await pipe.execute(raise_on_error=False)
            unknown: set[str] = set()
            again = []
            for at, answer in zip(todo, answers, strict=True):
                if isinstance(answer, list):
                    unknown.update(_text(proc) for proc in answer)
                    again.append(at)
                else:
                    results[at] = answer
            if not again:
                return results
            dead |= await self._read_heartbeats(sorted(unknown))
            todo = again
        for at in todo:
            results[at] = RedisError("stream slots: processes kept appearing")
        return results

    async def _read_heartbeats(self, procs: list[str]) -> set[str]:
        """Remember which of `procs` are alive for `ALIVE_CACHE_S`; the dead ones."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for proc in procs:
                pipe.exists(self._proc_prefix + proc)
            found = await pipe.execute()
        until = self._clock.monotonic() + ALIVE_CACHE_S
        self._alive_until = {proc: t for proc, t in self._alive_until.items()
                             if t > until - ALIVE_CACHE_S}  # forget the stale
        for proc, alive in zip(procs, found, strict=True):
            if alive:
                self._alive_until[proc] = until
        return {proc for proc, alive in zip(procs, found, strict=True) if not alive}

    async def surrender(self) -> None:
        """Give back every slot of this process at once (a drain, before its clients are
        told to reconnect elsewhere: at their tier's limit, they must find their slots
        free there); the connections' own releases then have nothing left to give."""
        await self._give_back(stop=False)

    async def close(self) -> None:
        """Give back every slot of this process and stop proving it alive."""
        await self._give_back(stop=True)

    async def _give_back(self, *, stop: bool) -> None:
        users, self.local = list(self.local), Counter()
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._flusher
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.hdel(self._user_key(user_id), self.process_id)
                if stop:
                    pipe.delete(self._proc_prefix + self.process_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("stream slots not given back (they expire in %d s once this "
                        "process stops): %s", self.ttl_s, exc)
