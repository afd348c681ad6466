"""Cluster-wide state of the Pusher endpoint, in the `reverb` Redis database.

Where it sits: beside the bus and the hub. Game events reach Pusher clients through the
hub like on every transport; what is Pusher's own lives here:

- App channels (a Laravel app's own channels, presence and client events on any
  channel): a second bus channel family, `{prefix}bus:app:{pusher channel}`. Each process
  holds one pattern subscription to the whole family (`bus:app:*`) and hands each
  message to its local subscribers of that name, so a publish on any process reaches
  every subscriber on every process. Delivery is at most once (Redis pub/sub), in
  publish order per publisher; game events never go this way (they have ids and the
  history). On Redis Cluster pub/sub is sharded and has no patterns: a message is
  SPUBLISHed to its channel's own name, tagged with the Pusher channel
  (`{prefix}bus:app:{<pusher channel>}`, the slot of its presence keys), and a process
  SSUBSCRIBEs to exactly the channels its sockets use (`store.sharded`), when the first
  local listener of a channel comes and SUNSUBSCRIBEs when the last goes; a message to a
  channel with no listener here is not delivered here, as on one server.
- Presence: per channel, under the channel's hash tag (one Redis Cluster slot), a hash
  user id -> socket count, a hash user id -> user info and a ledger "process\\nuser" ->
  that process's sockets; per process a hash channel -> its sockets there (the channels
  to reap). Joins and leaves are Lua scripts on the channel's three keys, so
  `member_added` fires exactly once, on a user's first socket anywhere, and
  `member_removed` on the last. A join counts its channel in the process's hash before
  its script runs and a leave uncounts it after, so that hash never misses a channel
  where the process has sockets. A process proves it is alive with a heartbeat key; any
  process that finds one missing reaps the dead one channel by channel (one script per
  channel: the first reaper wins each) and announces the removals.
- Channel occupancy (`store.pusher_occupancy`): per process a hash channel -> local
  subscribers, summed over live processes for the HTTP API; while webhooks want it, per
  channel a hash process -> subscribers whose scripts decide occupied and vacated. The
  webhooks (`store.webhook_queue.WebhookSink`) also hear the reaper's member removals.
- Authorization grants of `/v1/realtime/auth` (socket id + channel -> the user), the
  last event id delivered per user and channel (resume after a reconnect, on any
  process), and publish idempotency keys. Positions are written in batches every
  `POSITION_FLUSH_S` from the connections' own bookkeeping (only the ones that moved),
  so they survive a crash of this process lagging by at most that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from btsguru.backoff import Backoff, every
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import listen, publish, sharded
from btsguru.store.pusher_cache import ChannelCache
from btsguru.store.pusher_occupancy import ChannelOccupancy
from btsguru.store.redis import Keys, RedisClient
from btsguru.store.sharded import ShardedChannels
from btsguru.store.webhook_queue import WebhookSink

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed heartbeats: the process is dead, its members go
GRANT_TTL_S = 300  # a client subscribes right after its auth request; generous for slow links
POSITION_TTL_S = 15 * 60  # the history's retention: an older position cannot be replayed
IDEMPOTENCY_TTL_S = 300
READ_TIMEOUT_S = 1.0
POSITION_FLUSH_S = 1.0  # how far a saved resume position may lag after a crash

# An app-channel message: {"event", "channel", "data" (the frame's data), "except"
# (a socket id that must not get it), "user_id" (client events on presence channels)}.
AppCallback = Callable[[dict[str, Any]], None]
# A connection's resume positions: (user id, Pusher channel) -> last event id written.
PositionSource = Callable[[], dict[tuple[int, str], str]]

# KEYS: the channel's counts, members and ledger. ARGV: the user, its info, the ledger
# field ("process\nuser"), the channel's member limit.
_JOIN = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if n == 1 then
  if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return -1
  end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return n
"""

_LEAVE = """
local m = redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
if m <= 0 then redis.call('HDEL', KEYS[3], ARGV[2]) end
if m < 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: the channel's counts, members and ledger; ARGV[1]: the dead process. Returns the
# users whose last socket was the dead process's.
_REAP = """
local removed = {}
local mine = ARGV[1] .. '\\n'
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #mine) == mine then
    local user = string.sub(fields[i], #mine + 1)
    redis.call('HDEL', KEYS[3], fields[i])
    local n = redis.call('HINCRBY', KEYS[1], user, -tonumber(fields[i + 1]))
    if n <= 0 then
      redis.call('HDEL', KEYS[1], user)
      redis.call('HDEL', KEYS[2], user)
      table.insert(removed, user)
    end
  end
end
return removed
"""

# KEYS: the channel's counts, members and ledger; ARGV: this process, then user and
# socket count pairs. Sets the process's ledger entries to those counts and moves the
# channel's counts by the difference: the same result whether or not it was reaped.
_REASSERT = """
for i = 2, #ARGV, 2 do
  local user, n = ARGV[i], tonumber(ARGV[i + 1])
  local field = ARGV[1] .. '\\n' .. user
  local delta = n - tonumber(redis.call('HGET', KEYS[3], field) or '0')
  if delta ~= 0 then
    redis.call('HSET', KEYS[3], field, n)
    redis.call('HINCRBY', KEYS[1], user, delta)
    redis.call('HSETNX', KEYS[2], user, 'null')
  end
end
return 0
"""

# KEYS[1]: a process's joined channels (channel -> its sockets there); ARGV[1]: a channel.
_UNCOUNT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def new_process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PusherState:
    """This process's view of the Pusher state; see the module docstring."""

    def __init__(self, redis: RedisClient, keys: Keys, *,
                 process_id: str | None = None, heartbeat_ttl_s: int = HEARTBEAT_TTL_S,
                 webhooks: WebhookSink | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self.process_id = process_id or new_process_id()
        self.ttl_s = heartbeat_ttl_s
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._reap = redis.register_script(_REAP)
        self._reassert = redis.register_script(_REASSERT)
        self._uncount = redis.register_script(_UNCOUNT)
        self.cache = ChannelCache(redis, keys)  # cache channels' last events
        self._bus_prefix = keys.channel("app", "")
        self._subscribers: dict[str, set[AppCallback]] = {}
        # on Cluster: the channels of this process's listeners, each SSUBSCRIBEd
        self._shards = ShardedChannels(redis, self._dispatch, what="pusher: app bus",
                                       backoff=Backoff(0.1, 5.0)) \
            if isinstance(redis, RedisCluster) else None
        self.webhooks = webhooks  # told of presence changes (and occupancy, below)
        self.occupancy = ChannelOccupancy(redis, keys, self.process_id, webhooks)
        self.local_counts = self.occupancy.local  # channel -> subscribers here
        self.local_presence: Counter[tuple[str, str]] = Counter()  # (channel, user) -> sockets
        self._joined: Counter[str] = Counter()  # channel -> sockets counted in _joined_key
        self._reassert_beats = 0  # heartbeats left that write this process's presence back
        self._beating = False
        self._position_sources: set[PositionSource] = set()
        self._saved_positions: dict[tuple[int, str], str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    # -- keys --

    def _proc_key(self, proc: str) -> str:
        return self._keys.key("pusher", "proc", proc)

    def _procs_key(self) -> str:
        return self._keys.key("pusher", "procs")

    def _joined_key(self, proc: str) -> str:
        return self._keys.key("pusher", "joined", proc)

    # -- lifecycle --

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._heartbeat_forever(),
                                               name="btsguru-pusher-heartbeat"),
                           asyncio.create_task(self._save_positions_forever(),
                                               name="btsguru-pusher-positions")]
            if self._shards is None:
                self._tasks.append(asyncio.create_task(self._listen(),
                                                       name="btsguru-pusher-bus"))
            else:
                self.listening.set()  # each channel is subscribed when a listener comes

    def spawn(self, coro: Any, name: str) -> None:
        """Run a connection's cleanup after its socket is gone, holding the task."""
        task = asyncio.create_task(coro, name=name)
        self._cleanups.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._cleanups.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("pusher: %s failed: %s", name, finished.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=5.0)
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(tasks, owner="pusher")
        if self._shards is not None:
            await self._shards.close()
        with contextlib.suppress(RedisError, OSError):
            # our members leave with us: reap our own ledger now rather than in 15 s
            await self._reap_process(self.process_id)
            async with self._redis.pipeline(transaction=False) as pipe:
                # one key per DEL: they may live in different Cluster slots
                pipe.delete(self._proc_key(self.process_id))
                pipe.srem(self._procs_key(), self.process_id)
                await pipe.execute()

    async def _heartbeat_forever(self) -> None:
        async def beat() -> None:
            await self.heartbeat()
            await self.reap()

        await every("pusher: heartbeat", HEARTBEAT_S, beat, first_wait_s=0,
                    backoff=Backoff(1.0, HEARTBEAT_S), logger=log)

    async def heartbeat(self) -> None:
        """Prove this process alive; when its key had lapsed (a Redis outage) others may
        have reaped its members and counts: write them again, now and at the next
        heartbeat (a reaper may have read the key as missing just before it came back;
        writing presence back is idempotent)."""
        lapsed = await self._redis.set(self._proc_key(self.process_id), "1", ex=self.ttl_s,
                                       get=True) is None
        await self._redis.sadd(self._procs_key(), self.process_id)
        if lapsed and self._beating:
            self._reassert_beats = 2
        self._beating = True
        if self._reassert_beats and (self.local_presence or self.local_counts):
            log.info("pusher: heartbeat had lapsed; re-asserting %d members",
                     len(self.local_presence))
            if self._joined:
                await self._redis.hset(self._joined_key(self.process_id),
                                       mapping={k: v for k, v in self._joined.items()})
            by_channel: dict[str, list[str | int]] = {}
            for (channel, user), n in list(self.local_presence.items()):
                by_channel.setdefault(channel, []).extend((user, n))
            for channel, pairs in by_channel.items():
                await self._reassert(keys=self._presence_keys(channel),
                                     args=[self.process_id, *pairs])
            await self.occupancy.reassert()
        self._reassert_beats = max(0, self._reassert_beats - 1)

    async def reap(self) -> None:
        """Reap the members and counts of processes whose heartbeat is gone."""
        procs = [_text(p) for p in await self._redis.smembers(self._procs_key())]
        for proc in procs:
            if proc == self.process_id or await self._redis.exists(self._proc_key(proc)):
                continue
            log.info("pusher: reaping process %s", proc)
            await self._reap_process(proc)
            await self._redis.srem(self._procs_key(), proc)

    async def _reap_process(self, proc: str) -> None:
        """Remove `proc`'s sockets from every channel it had members in, one script per
        channel (each in the channel's slot), and announce the users who left with it."""
        for name in await self._redis.hkeys(self._joined_key(proc)):
            channel = _text(name)
            removed = await self._reap(keys=self._presence_keys(channel), args=[proc])
            for user in removed:
                await self.publish(channel, {
                    "event": "pusher_internal:member_removed", "channel": channel,
                    "data": orjson.dumps({"user_id": _text(user)}).decode()})
                if self.webhooks is not None:
                    await self.webhooks.member_removed(channel, _text(user))
        await self._redis.delete(self._joined_key(proc))
        await self.occupancy.reap(proc)  # its subscriber counts, and any channel it empties

    # -- the app bus --

    def redis_channel(self, channel: str) -> str:
        """The Redis channel of Pusher `channel`: on Cluster tagged with the channel
        (Pusher names have no braces), elsewhere under the family's pattern."""
        if self._shards is not None and "{" not in channel and "}" not in channel:
            return self._bus_prefix + "{" + channel + "}"
        return self._bus_prefix + channel

    def _pusher_channel(self, redis_channel: str) -> str:
        name = redis_channel[len(self._bus_prefix):]
        if self._shards is not None and name.startswith("{") and name.endswith("}"):
            return name[1:-1]
        return name

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """PUBLISH, or SPUBLISH on Cluster (see the module docstring)."""
        if sharded(self._redis):
            await publish(self._redis, self.redis_channel(channel), orjson.dumps(message))
        else:  # one server and Sentinel: as before
            await self._redis.publish(self._bus_prefix + channel, orjson.dumps(message))

    async def add_listener(self, channel: str, callback: AppCallback) -> None:
        """Hand `callback` the messages of `channel`; on Cluster, returns once this
        process is subscribed to it (a RedisError when it cannot be)."""
        callbacks = self._subscribers.setdefault(channel, set())
        callbacks.add(callback)
        if self._shards is None:
            return
        try:
            await self._shards.subscribe(self.redis_channel(channel))
        except BaseException:
            await self.remove_listener(channel, callback)
            raise

    async def remove_listener(self, channel: str, callback: AppCallback) -> None:
        callbacks = self._subscribers.get(channel)
        if callbacks is not None:
            callbacks.discard(callback)
            if not callbacks:
                del self._subscribers[channel]
        if self._shards is not None and channel not in self._subscribers:
            await self._shards.unsubscribe(self.redis_channel(channel))

    def _dispatch(self, redis_channel: str, data: bytes) -> None:
        channel = self._pusher_channel(redis_channel)
        callbacks = self._subscribers.get(channel)
        if not callbacks:
            return
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("pusher: ignoring a malformed app-channel message on %s", channel)
            return
        for callback in tuple(callbacks):
            try:
                callback(message)
            except Exception:
                log.exception("pusher: a subscriber of %s failed", channel)

    async def _listen(self) -> None:
        pattern = self._bus_prefix.replace("\\", "\\\\").replace("*", "\\*") \
            .replace("?", "\\?").replace("[", "\\[") + "*"
        await listen(self._redis, what="pusher: app bus listener", pattern=pattern,
                     on_message=lambda m: self._dispatch(_text(m["channel"]), m["data"]),
                     listening=self.listening, backoff=Backoff(0.1, 5.0),
                     read_timeout_s=READ_TIMEOUT_S)

    # -- occupancy --

    async def count(self, channel: str, delta: int) -> None:
        await self.occupancy.count(channel, delta)

    async def channel_counts(self) -> dict[str, int]:
        """Subscribers per occupied channel across live processes."""
        procs = [_text(p) for p in await self._redis.smembers(self._procs_key())]
        return await self.occupancy.counts(
            [p for p in procs if p == self.process_id or await self._redis.exists(
                self._proc_key(p))])

    # -- presence --

    def _presence_keys(self, channel: str) -> list[str]:
        """The channel's counts, members and ledger: one hash tag, one Cluster slot."""
        return [self._keys.tagged("pusher:presence", channel, part)
                for part in ("counts", "members", "ledger")]

    async def _count_joined(self, channel: str, delta: int) -> None:
        # increments commute, so a join's +1 and another socket's -1 may cross on the way
        # to Redis: the channel leaves the hash only when its true count reaches 0
        self._joined[channel] += delta
        if self._joined[channel] <= 0:
            del self._joined[channel]
        if delta > 0:
            await self._redis.hincrby(self._joined_key(self.process_id), channel, delta)
        else:
            await self._uncount(keys=[self._joined_key(self.process_id)], args=[channel])

    async def join(self, channel: str, user_id: str, info_json: bytes, max_members: int) -> int:
        """Add one socket of `user_id`: its socket count (1: the user is new here, announce
        it), or -1 when the channel is full."""
        # first the channel in this process's hash, so a reaper finds what the script adds
        await self._count_joined(channel, 1)
        n = int(await self._join(keys=self._presence_keys(channel),
                                 args=[user_id, info_json, f"{self.process_id}\n{user_id}",
                                       max_members]))
        if n > 0:
            self.local_presence[(channel, user_id)] += 1
        else:
            await self._count_joined(channel, -1)
        return n

    async def leave(self, channel: str, user_id: str) -> bool:
        """Remove one socket of `user_id`: True when it was the user's last."""
        if self.local_presence[(channel, user_id)] <= 0:
            self.local_presence.pop((channel, user_id), None)
            return False
        self.local_presence[(channel, user_id)] -= 1
        if self.local_presence[(channel, user_id)] <= 0:
            del self.local_presence[(channel, user_id)]
        last = bool(await self._leave(keys=self._presence_keys(channel),
                                      args=[user_id, f"{self.process_id}\n{user_id}"]))
        await self._count_joined(channel, -1)  # after the script: the socket is gone
        return last

    async def members(self, channel: str) -> dict[str, Any]:
        raw = await self._redis.hgetall(self._presence_keys(channel)[1])
        return {_text(k): orjson.loads(v) for k, v in raw.items()}

    # -- grants, positions, idempotency --

    async def grant(self, socket_id: str, channel: str, grant: dict[str, Any]) -> None:
        await self._redis.set(self._keys.key("pusher", "grant", socket_id, channel),
                              orjson.dumps(grant), ex=GRANT_TTL_S)

    async def granted(self, socket_id: str, channel: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._keys.key("pusher", "grant", socket_id, channel))
        return None if raw is None else dict(orjson.loads(raw))

    async def save_positions(self, user_id: int, positions: dict[str, str]) -> None:
        """channel -> last event id written, for a user's private/presence channels."""
        if not positions:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, id in positions.items():
                pipe.set(self._keys.key("pusher", "pos", user_id, channel), id,
                         ex=POSITION_TTL_S)
            await pipe.execute()

    def track_positions(self, source: PositionSource) -> None:
        """Save `source`'s positions every `POSITION_FLUSH_S` until `untrack_positions`."""
        self._position_sources.add(source)

    def untrack_positions(self, source: PositionSource) -> None:
        self._position_sources.discard(source)

    async def flush_positions(self) -> int:
        """Write the tracked positions that moved since the last flush; how many."""
        current: dict[tuple[int, str], str] = {}
        for source in tuple(self._position_sources):
            current.update(source())
        moved = {key: id for key, id in current.items()
                 if self._saved_positions.get(key) != id}
        if moved:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (user_id, channel), id in moved.items():
                    pipe.set(self._keys.key("pusher", "pos", user_id, channel), id,
                             ex=POSITION_TTL_S)
                await pipe.execute()
        self._saved_positions = current  # forgets connections that are gone
        return len(moved)

    async def _save_positions_forever(self) -> None:
        await every("pusher: saving resume positions", POSITION_FLUSH_S, self.flush_positions,
                    backoff=Backoff(1.0, 10.0), logger=log)

    async def position(self, user_id: int, channel: str) -> str | None:
        raw = await self._redis.get(self._keys.key("pusher", "pos", user_id, channel))
        return None if raw is None else _text(raw)

    async def first_use(self, idempotency_key: str) -> bool:
        """True the first time `idempotency_key` is seen within `IDEMPOTENCY_TTL_S`."""
        return bool(await self._redis.set(self._keys.key("pusher", "idem", idempotency_key),
                                          "1", nx=True, ex=IDEMPOTENCY_TTL_S))
