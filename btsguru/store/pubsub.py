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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import redis.asyncio as aioredis

from btsguru.backoff import Backoff, Failures
from btsguru.store.typed import aclose_pubsub

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0  # a Redis that does not confirm a subscription in 5 s is down
CLOSE_TIMEOUT_S = 5.0  # a pub/sub cancelled mid-connect can leave its close waiting


async def listen(redis: aioredis.Redis, *, what: str, on_message: Callable[[dict[str, Any]], None],
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
            if pattern is not None:
                await asyncio.wait_for(pubsub.psubscribe(pattern), SUBSCRIBE_TIMEOUT_S)
            else:
                assert channel is not None
                await asyncio.wait_for(pubsub.subscribe(channel), SUBSCRIBE_TIMEOUT_S)
            if on_reset is not None:
                on_reset()
            listening.set()
            failures.succeeded()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=read_timeout_s)
                if message is None or message.get("type") not in ("message", "pmessage"):
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
