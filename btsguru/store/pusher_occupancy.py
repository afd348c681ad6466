"""Channel occupancy of the Pusher endpoint: how many sockets subscribe to each channel,
per process and cluster-wide, in the `reverb` database.

Where it sits: under `store.pusher` (`PusherState.count`, its reaper and heartbeat),
which owns the processes' liveness; `realtime.webhooks` is told the cluster-wide
transitions.

- Per process, a hash channel -> local subscribers (`pusher:subs:<process>`): what the
  HTTP API sums over the live processes (`GET /apps/{id}/channels`), and the list of
  channels to clean when the process dies. One HSET or HDEL per change, as before.
- Only while webhooks need it (`channel_occupied`, `channel_vacated` or
  `subscription_count` wanted), per channel a hash process -> local subscribers
  (`pusher:occupancy:{<channel>}`, the channel's hash tag, so one script per change):
  the script moves this process's field and returns the channel's total before and
  after, so the first subscriber anywhere (0 -> 1) and the last one gone everywhere
  (1 -> 0) are each decided exactly once. A dead process's fields go with one script
  per channel (the reaper's), which may empty the channel; a process whose heartbeat
  had lapsed writes its fields back the same way.

Ordering: a subscriber is counted in the process's hash before the channel's script and
uncounted after it, so the reaper, which reads the process's hash, never misses a
channel where the process still has a field.
"""

from __future__ import annotations

from collections import Counter

from btsguru.store.redis import Keys, RedisClient
from btsguru.store.webhook_queue import WebhookSink

# KEYS[1]: the channel's hash (process -> subscribers). ARGV: the process, then "+n"/"-n"
# to move its field or "=n" to set it. Returns {total before, total after}.
_MOVE = """
local before = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do before = before + tonumber(v) end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local op, n = string.sub(ARGV[2], 1, 1), tonumber(string.sub(ARGV[2], 2))
local new = n
if op == '+' then new = old + n elseif op == '-' then new = old - n end
if new < 0 then new = 0 end
if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], new) end
return {before, before - old + new}
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ChannelOccupancy:
    """This process's subscriber counts; see the module docstring."""

    def __init__(self, redis: RedisClient, keys: Keys, process_id: str,
                 sink: WebhookSink | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._process_id = process_id
        self._sink = sink if sink is not None and sink.tracks_occupancy else None
        self._move = redis.register_script(_MOVE)
        self.local: Counter[str] = Counter()  # channel -> subscribers here

    def key(self, proc: str) -> str:
        """`proc`'s hash channel -> its subscribers."""
        return self._keys.key("pusher", "subs", proc)

    def _channel_key(self, channel: str) -> str:
        return self._keys.tagged("pusher:occupancy", channel)

    async def count(self, channel: str, delta: int) -> None:
        if delta < 0:
            await self._moved(channel, self._process_id, f"-{-delta}")
        self.local[channel] += delta
        if self.local[channel] <= 0:
            del self.local[channel]
            await self._redis.hdel(self.key(self._process_id), channel)
        else:
            await self._redis.hset(self.key(self._process_id), channel, self.local[channel])
        if delta > 0:
            await self._moved(channel, self._process_id, f"+{delta}")

    async def _moved(self, channel: str, proc: str, op: str) -> None:
        if self._sink is None:
            return
        before, after = await self._move(keys=[self._channel_key(channel)], args=[proc, op])
        if int(before) != int(after):
            await self._sink.occupancy_changed(channel, int(before), int(after))

    async def counts(self, procs: list[str]) -> dict[str, int]:
        """Subscribers per occupied channel over `procs`."""
        totals: Counter[str] = Counter()
        for proc in procs:
            for name, n in (await self._redis.hgetall(self.key(proc))).items():
                totals[_text(name)] += int(n)
        return {name: n for name, n in totals.items() if n > 0}

    async def total(self, channel: str) -> int:
        """`channel`'s subscribers cluster-wide (tracked only while webhooks need it)."""
        return sum(int(n) for n in await self._redis.hvals(self._channel_key(channel)))

    async def reap(self, proc: str) -> None:
        """Remove a dead (or stopping) process's fields channel by channel, then its hash."""
        if self._sink is not None:
            for name in await self._redis.hkeys(self.key(proc)):
                await self._moved(_text(name), proc, "=0")
        await self._redis.delete(self.key(proc))

    async def reassert(self) -> None:
        """Write this process's counts back after its heartbeat lapsed (it may have been
        reaped): the same result whether or not it was."""
        if not self.local:
            return
        await self._redis.hset(self.key(self._process_id),
                               mapping={k: v for k, v in self.local.items()})
        for channel, n in list(self.local.items()):
            await self._moved(channel, self._process_id, f"={n}")
