"""The access service's background work: what the hot path leaves for later.

Where it sits: beside `auth.access`, which starts and stops it. Requests only touch
memory (usage counts, the watch's counters, the ids of keys used, leased tokens); these
loops move that to Redis and the database on their own cadence, each on
`btsguru.backoff.every` so a failing iteration backs off and the loop survives:

- usage flush (`auth.usage.FLUSH_INTERVAL_S`): usage counts and the `AccessWatch`
  counters to Redis, so `/v1/usage` and the alerter see them within seconds;
- usage rollup (`auth.usage.ROLLUP_INTERVAL_S`): Redis counters into the database;
- last-used update (`LAST_USED_INTERVAL_S`): the keys' `last_used_at`;
- rate-limit lease return (`auth.ratelimit.RETURN_INTERVAL_S`): expired leases' tokens;
- the invalidation listener (`store.pubsub.listen`): revocations heard from other
  processes, applied here; `listening` is set while subscribed.

`stop` cancels them, then flushes what is buffered once more (bounded, best effort).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from btsguru.auth.keys import KeyService
from btsguru.auth.ratelimit import RETURN_INTERVAL_S, RateLimiter
from btsguru.auth.usage import FLUSH_INTERVAL_S, ROLLUP_INTERVAL_S, UsageService
from btsguru.auth.watch import AccessWatch
from btsguru.backoff import Backoff, every
from btsguru.clock import Clock
from btsguru.errors import BtsguruError
from btsguru.lifecycle import cancel_tasks
from btsguru.store.pubsub import listen
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

# last_used_at is for people ("used 2 minutes ago"): a write a minute is plenty.
LAST_USED_INTERVAL_S = 60.0
MAX_LOOP_BACKOFF_S = 60.0
STOP_FLUSH_TIMEOUT_S = 5.0


class AccessUpkeep:
    """The flush, rollup, last-used, lease-return and invalidation-listener tasks."""

    def __init__(self, redis: RedisStores, keys: KeyService, limiter: RateLimiter,
                 usage: UsageService, watch: AccessWatch, clock: Clock, *,
                 invalidation_channel: str, on_invalidation: Callable[[bytes], None],
                 on_listener_reset: Callable[[], None]) -> None:
        self._redis = redis
        self._keys = keys
        self._limiter = limiter
        self._usage = usage
        self._watch = watch
        self._clock = clock
        self._channel = invalidation_channel
        self._on_invalidation = on_invalidation
        self._on_listener_reset = on_listener_reset
        self._used_key_ids: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()  # set while subscribed to invalidations

    def key_used(self, key_id: int) -> None:
        """Note a key's use for the next last-used update (no I/O)."""
        self._used_key_ids.add(key_id)

    def start(self) -> None:
        """Start the tasks (idempotent)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._every("usage flush", FLUSH_INTERVAL_S, self.flush)),
            asyncio.create_task(self._every("usage rollup", ROLLUP_INTERVAL_S, self._rollup)),
            asyncio.create_task(self._every("last-used update", LAST_USED_INTERVAL_S,
                                            self._touch_last_used)),
            asyncio.create_task(self._every("rate-limit lease return", RETURN_INTERVAL_S,
                                            self._return_leases)),
            asyncio.create_task(self._listen()),
        ]

    async def stop(self, also_cancel: Iterable[asyncio.Task[Any]] = ()) -> None:
        """Cancel the tasks (and `also_cancel`), then flush what is buffered (best
        effort, bounded)."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks([*tasks, *also_cancel], owner="access")
        for name, final in (("usage flush", self.flush),
                            ("last-used update", self._touch_last_used),
                            ("rate-limit lease return", self._limiter.close)):
            try:
                await asyncio.wait_for(final(), STOP_FLUSH_TIMEOUT_S)
            except (BtsguruError, RedisError, OSError, TimeoutError) as exc:
                log.warning("%s at shutdown failed: %s", name, exc)

    async def flush(self) -> None:
        """Usage counts and the watch's counters to Redis."""
        await self._usage.flush()
        await self._watch.flush()

    async def _touch_last_used(self) -> None:
        ids, self._used_key_ids = self._used_key_ids, set()
        try:
            await self._keys.touch_last_used(ids)
        except BaseException:
            self._used_key_ids |= ids
            raise

    async def _rollup(self) -> None:
        applied = await self._usage.rollup()
        if applied:
            log.debug("usage rollup: %d counters applied", applied)

    async def _return_leases(self) -> None:
        await self._limiter.return_expired()

    async def _listen(self) -> None:
        """Subscribe and apply invalidations until cancelled, resubscribing on errors;
        everything cached is dropped whenever a message may have been missed."""
        await listen(self._redis.reverb, what="auth invalidation listener",
                     channel=self._channel,
                     on_message=lambda m: self._on_invalidation(m["data"]),
                     on_reset=self._on_listener_reset, listening=self.listening,
                     backoff=Backoff(1.0, MAX_LOOP_BACKOFF_S),
                     sleep=self._clock.sleep)

    async def _every(self, name: str, interval_s: float,
                     work: Callable[[], Awaitable[None]]) -> None:
        await every(name, interval_s, work, backoff=Backoff(interval_s, MAX_LOOP_BACKOFF_S),
                    sleep=self._clock.sleep, logger=log)
