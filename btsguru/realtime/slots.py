"""Concurrent stream connections per user, counted across every process and host.

Where it sits: beside the hub; the transports ask for a slot when a client connects
(the tier's `max_streams`, all of a user's keys together) and give it back when it goes.

Redis layout (the `reverb` database):
- `streams:user:{user_id}`: a hash, process id -> that process's open connections of
  the user.
- `streams:proc:{process id}`: a heartbeat key with a TTL, refreshed every
  `HEARTBEAT_S` by the process that owns it.

Taking a slot is one script: it sums the counts of the processes whose heartbeat key
still exists, deletes the fields of the others (a process that died without releasing
its counts is reaped the first time anyone looks), and adds one if the sum is under the
limit. After a Redis outage (the heartbeat may have lapsed and the counts been reaped)
the first heartbeat that finds its key gone re-asserts this process's counts, so the
totals heal by themselves.

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

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from btsguru.errors import store_unavailable
from btsguru.store.redis import Keys

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed heartbeats: the process is dead, its counts go
USER_HASH_TTL_S = 86400  # a user's hash outlives any connection that refreshes it
BATCH_MAX = 500  # scripts per pipeline

_ACQUIRE = """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local proc, n = fields[i], tonumber(fields[i + 1])
  if proc == ARGV[1] or redis.call('EXISTS', ARGV[3] .. proc) == 1 then
    total = total + n
  else
    redis.call('HDEL', KEYS[1], proc)
  end
end
if total >= tonumber(ARGV[2]) then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return total + 1
"""

_RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""


class StreamSlots:
    """This process's share of the per-user connection counts."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *,
                 heartbeat_ttl_s: int = HEARTBEAT_TTL_S, process_id: str | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self.ttl_s = heartbeat_ttl_s
        self.process_id = process_id or \
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._proc_prefix = keys.key("streams", "proc", "")
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self.local: Counter[int] = Counter()  # user id -> open connections here
        # (user id, limit or None for a release, the caller's future)
        self._pending: list[tuple[int, int | None, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _user_key(self, user_id: int) -> str:
        return self._keys.key("streams", "user", user_id)

    async def heartbeat(self) -> None:
        """Prove this process is alive; if its heartbeat had lapsed (a Redis outage),
        others may have reaped its counts: write them again."""
        lapsed = await self._redis.set(self._proc_prefix + self.process_id, "1",
                                       ex=self.ttl_s, get=True) is None
        if lapsed and self.local:
            log.info("stream slots: heartbeat had lapsed; re-asserting %d users' counts",
                     len(self.local))
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, count in self.local.items():
                    pipe.hset(self._user_key(user_id), self.process_id, count)
                    pipe.expire(self._user_key(user_id), USER_HASH_TTL_S)
                await pipe.execute()

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
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user_id, limit, _future in batch:
                        if limit is None:
                            await self._release(keys=[self._user_key(user_id)],
                                                args=[self.process_id], client=pipe)
                        else:
                            await self._acquire(
                                keys=[self._user_key(user_id)],
                                args=[self.process_id, limit, self._proc_prefix,
                                      USER_HASH_TTL_S], client=pipe)
                    results = await pipe.execute(raise_on_error=False)
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

    async def close(self) -> None:
        """Give back every slot of this process and stop proving it alive."""
        users, self.local = list(self.local), Counter()
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._flusher
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.hdel(self._user_key(user_id), self.process_id)
                pipe.delete(self._proc_prefix + self.process_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("stream slots not released at shutdown (they expire in %d s): %s",
                        self.ttl_s, exc)
