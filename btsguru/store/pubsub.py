"""One Redis pub/sub subscription kept alive, for the listeners beside the bus: the
auth cache's invalidations, the hot cache's and the Pusher app channels'.

Where it sits: Redis -> **listen** -> a callback on the loop. (The game bus,
`store.bus.RedisBus`, multiplexes many subscriptions and replays gaps from the history;
these listeners follow one channel or pattern each and, having no history, reset what
they cache whenever they may have missed a message.)

`listen` subscribes, calls `on_reset` (whatever was published while it was not
listening is unknown), sets `listening`, then hands each message to `on_message`;
when the connection fails it clears `listening`, calls `on_reset` again, waits by the
backoff and starts over, until cancelled. A failing callback is logged and skipped.

On Redis Cluster, pub/sub is sharded (`sharded`): `publish` sends SPUBLISH, which goes
to the master of the channel's hash slot only (classic PUBLISH is broadcast to every
node of the cluster), and `listen` follows its channel with SSUBSCRIBE on that master;
redis-py's `ClusterPubSub` moves the subscription when the slot moves (a failover, a
resharding). Sharded pub/sub has no patterns: the game bus subscribes to each channel
(`store.bus`, and `store.sharded` for the Pusher app channels, `store.pusher`); a
`pattern` listener is classic PSUBSCRIBE, which only one server and Sentinel use. On one
server and Sentinel nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from btsguru.backoff import Backoff, Failures
from btsguru.store.redis import RedisClient
from btsguru.store.typed import aclose_pubsub

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0  # a Redis that does not confirm a subscription in 5 s is down
CLOSE_TIMEOUT_S = 5.0  # a pub/sub cancelled mid-connect can leave its close waiting
MESSAGE_TYPES = ("message", "pmessage", "smessage")
# A sharded read with no timeout would not block but return at once: wake this often.
SHARDED_READ_S = 1.0
# With subscriptions on several shards, one read waits at most this long in all. redis-py
# polls the shards' connections in turn, each for a share of the read's timeout, so a
# message on one shard waits while the read blocks on a quiet one: with a 1 s timeout
# and three shards, about 330 ms at the median. The price of a short pass is a few
# polls a second on an idle process.
SHARDS_PASS_S = 0.02


async def read_shards(pubsub: ClusterPubSub, timeout_s: float,
                      ignore_subscribe_messages: bool = False) -> dict[str, Any] | None:
    """The next message of a sharded subscription (None: none came in time): blocks for
    `timeout_s` on one shard, but for at most `SHARDS_PASS_S` when there are several,
    so that no message waits on another shard's silence."""
    if len(pubsub.node_pubsub_mapping) > 1:
        timeout_s = min(timeout_s, SHARDS_PASS_S)
    return await pubsub.get_sharded_message(
        ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout_s)


def sharded(redis: RedisClient) -> bool:
    """True when pub/sub on `redis` is sharded (Redis Cluster)."""
    return isinstance(redis, RedisCluster)


async def publish(redis: RedisClient, channel: str, message: bytes | str) -> int:
    """PUBLISH, or SPUBLISH on Cluster; the number of subscribers that got it (on
    Cluster, on the channel's shard)."""
    if isinstance(redis, RedisCluster):
        return int(await redis.spublish(channel, message))
    return int(await redis.publish(channel, message))


async def listen(redis: RedisClient, *, what: str, on_message: Callable[[dict[str, Any]], None],
                 listening: asyncio.Event, backoff: Backoff,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 channel: str | None = None, pattern: str | None = None,
                 on_reset: Callable[[], None] | None = None,
                 read_timeout_s: float | None = None) -> NoReturn:
    """Follow `channel` (or `pattern`) until cancelled; see the module docstring.
    `backoff` spaces the tries after failures in a row."""
    if (channel is None) == (pattern is None):
        raise ValueError("listen: one channel or one pattern")
    failures = Failures(what, backoff, logger=log)
    delay_s = 0.0
    while True:
        pubsub = redis.pubsub()
        try:
            await asyncio.wait_for(_subscribe(pubsub, channel, pattern), SUBSCRIBE_TIMEOUT_S)
            if on_reset is not None:
                on_reset()
            listening.set()
            failures.succeeded()
            while True:
                message = await _read(pubsub, read_timeout_s)
                if message is None or message.get("type") not in MESSAGE_TYPES:
                    continue
                try:
                    on_message(message)
                except Exception:
                    log.exception("%s: a message could not be handled", what)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay_s = failures.failed(exc)
        finally:
            listening.clear()
            if on_reset is not None:
                on_reset()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(aclose_pubsub(pubsub), CLOSE_TIMEOUT_S)
        await sleep(delay_s)


async def _subscribe(pubsub: PubSub, channel: str | None, pattern: str | None) -> None:
    if pattern is not None:
        await pubsub.psubscribe(pattern)
    elif isinstance(pubsub, ClusterPubSub):
        assert channel is not None
        await pubsub.ssubscribe(channel)
    else:
        assert channel is not None
        await pubsub.subscribe(channel)


async def _read(pubsub: PubSub, timeout_s: float | None) -> dict[str, Any] | None:
    message: dict[str, Any] | None
    if isinstance(pubsub, ClusterPubSub) and not pubsub.patterns:
        # one shard: a connection failure is raised here (and the listener starts over)
        message = await read_shards(pubsub, timeout_s or SHARDED_READ_S,
                                    ignore_subscribe_messages=True)
    else:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
    return message
