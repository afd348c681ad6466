"""Pusher webhooks (PUSHER.md section 13, the contract's "Pusher extras"): what happens on
the Pusher endpoint, told to the app's backend at each URL of `PUSHER_WEBHOOK_URLS`.

Where it sits: `realtime.pusher_channels` (client events, member and cache-miss hooks)
and `store.pusher` (occupancy and presence transitions, the reaper's removals) tell
`PusherWebhooks`; it filters by `PUSHER_WEBHOOK_EVENTS`, debounces, batches and queues
(`store.webhook_queue`), and `realtime.webhook_delivery` delivers. Built by the
composition root only when there are URLs: with none, nothing here exists and the
subscribe path does what it did before.

- `channel_occupied` / `channel_vacated`: the first subscriber on any process and the
  last one gone from all of them, decided by the occupancy scripts
  (`store.pusher_occupancy`), a dead process's subscribers included (its reaper).
- `member_added` / `member_removed`: a user's first socket in a presence channel
  anywhere and their last one, decided by the presence scripts (`store.pusher`).
- The debounce, as Pusher's: `channel_vacated` and `member_removed` are held
  `DEBOUNCE_S` in Redis (`WebhookQueue.hold`); the channel's next occupant (or the
  member's return) within that time takes the held event back and sends neither, so a
  page reload or a reconnect sends nothing. Any process sends what is due (every
  `SWEEP_S`); a vacated channel or a removed member is checked once more before sending
  (a subscriber or the member may have come back in the instant between the script that
  decided it and the hold: then nothing is sent). Held events live in Redis, so a crash
  of the process that held them loses none.
- `subscription_count` (non-presence channels): at most once per `COUNT_INTERVAL_S` per
  channel across the cluster, carrying the count when it is sent (the latest).
- `client_event` (with `event`, `data` as a JSON string, `socket_id`, and `user_id` on
  presence channels) and `cache_miss`: sent as they happen.
- Batches: events are collected per process for up to `BATCH_WINDOW_S` or
  `BATCH_MAX_EVENTS`, then queued in Redis as one signed body `{"time_ms", "events"}`
  per URL. Until Redis takes them they wait in memory (at most `BUFFER_MAX_EVENTS`; a
  longer outage drops the oldest, logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.backoff import Backoff, Failures
from btsguru.clock import Clock
from btsguru.config import WEBHOOK_EVENTS, Config
from btsguru.lifecycle import cancel_tasks
from btsguru.realtime.pusher_protocol import is_presence
from btsguru.realtime.webhook_delivery import WebhookDelivery
from btsguru.store.redis import Keys, RedisClient
from btsguru.store.webhook_queue import WebhookQueue

log = logging.getLogger(__name__)

# Pusher holds vacated and member_removed "a few seconds": a page reload (a new socket
# and its subscriptions) takes one or two; five leaves room on a slow phone.
DEBOUNCE_S = 5.0
SWEEP_S = 0.5  # how late past its debounce a held event may be sent
COUNT_INTERVAL_S = 5.0  # subscription_count per channel at most this often, cluster-wide
BATCH_WINDOW_S = 0.25  # how long an event may wait for others to share its POST
BATCH_MAX_EVENTS = 100  # events per POST (Pusher's own batches stay well under this)
BUFFER_MAX_EVENTS = 10_000  # events kept in memory while Redis does not take them

_OCCUPANCY = frozenset({"channel_occupied", "channel_vacated", "subscription_count"})
_HELD = frozenset({"channel_vacated", "member_removed"})

# Reads of the cluster-wide state a held event is checked against before it is sent.
Total = Callable[[str], Awaitable[int]]
Members = Callable[[str], Awaitable[dict[str, Any]]]


class PusherWebhooks:
    """This process's webhook events; see the module docstring."""

    def __init__(self, redis: RedisClient, keys: Keys, config: Config, clock: Clock, *,
                 consumer: str, debounce_s: float = DEBOUNCE_S,
                 count_interval_s: float = COUNT_INTERVAL_S,
                 batch_window_s: float = BATCH_WINDOW_S, **delivery: Any) -> None:
        self.events = frozenset(config.pusher_webhook_events or WEBHOOK_EVENTS)
        self.tracks_occupancy = bool(self.events & _OCCUPANCY)
        self._tracks_members = bool(self.events & {"member_added", "member_removed"})
        self._clock = clock
        self.debounce_s = debounce_s
        self.count_interval_s = count_interval_s
        self.batch_window_s = batch_window_s
        self.queue = WebhookQueue(redis, keys, config.pusher_webhook_urls)
        self.delivery = WebhookDelivery(self.queue, clock, app_key=config.reverb_app_key,
                                        secret=config.reverb_app_secret.reveal(),
                                        consumer=consumer, **delivery)
        self._buffer: list[dict[str, Any]] = []
        self._filled = asyncio.Event()
        self._counts_due: dict[str, float] = {}  # channel -> when to try its count (monotonic)
        self._total: Total | None = None
        self._members: Members | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --

    def start(self, total: Total, members: Members) -> None:
        """Run the batcher, the sweep of held events and the delivery; `total` and
        `members` read a channel's subscribers and presence roster cluster-wide."""
        self._total, self._members = total, members
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._batch_forever(),
                                               name="btsguru-webhook-batcher"),
                           asyncio.create_task(self._sweep_forever(),
                                               name="btsguru-webhook-held")]
            self.delivery.start()

    async def close(self) -> None:
        """Queue what is still in memory, then stop delivering (after `PusherState`
        closed: its last departures are in)."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(tasks, owner="webhooks")
        with contextlib.suppress(RedisError, OSError):
            while self._buffer:
                await self.flush()
        await self.delivery.close()

    # -- what the Pusher endpoint tells --

    def emit(self, event: dict[str, Any]) -> None:
        """Send `event` (`name`, `channel` and its fields) in the next batch, if wanted."""
        if event["name"] not in self.events:
            return
        self._buffer.append(event)
        if len(self._buffer) > BUFFER_MAX_EVENTS:
            del self._buffer[:len(self._buffer) - BUFFER_MAX_EVENTS]
            log.warning("pusher webhooks: Redis does not take batches; dropped the oldest "
                        "events beyond %d", BUFFER_MAX_EVENTS)
        self._filled.set()

    def client_event(self, channel: str, event: str, data: Any, socket_id: str,
                     user_id: str | None) -> None:
        fields: dict[str, Any] = {"name": "client_event", "channel": channel, "event": event,
                                  "data": data if isinstance(data, str)
                                  else orjson.dumps(data).decode(), "socket_id": socket_id}
        if user_id is not None:
            fields["user_id"] = user_id
        self.emit(fields)

    def cache_miss(self, channel: str) -> None:
        self.emit({"name": "cache_miss", "channel": channel})

    async def occupancy_changed(self, channel: str, before: int, after: int) -> None:
        if before == 0:
            await self._arrived({"name": "channel_occupied", "channel": channel},
                                {"name": "channel_vacated", "channel": channel})
        elif after == 0:
            await self._hold({"name": "channel_vacated", "channel": channel})
        if "subscription_count" in self.events and not is_presence(channel):
            self._counts_due.setdefault(channel, self._clock.monotonic())

    async def member_added(self, channel: str, user_id: str) -> None:
        if not self._tracks_members:
            return
        await self._arrived({"name": "member_added", "channel": channel, "user_id": user_id},
                            {"name": "member_removed", "channel": channel, "user_id": user_id})

    async def member_removed(self, channel: str, user_id: str) -> None:
        if not self._tracks_members:
            return
        await self._hold({"name": "member_removed", "channel": channel, "user_id": user_id})

    # -- the debounce --

    async def _arrived(self, event: dict[str, Any], opposite: dict[str, Any]) -> None:
        # a departure still held: this arrival undoes it, and neither is sent
        if not await self.queue.take(orjson.dumps(opposite)):
            self.emit(event)

    async def _hold(self, event: dict[str, Any]) -> None:
        # held even when not wanted, so that the arrival that undoes it is not sent twice
        await self.queue.hold(orjson.dumps(event), self._clock.time() + self.debounce_s)

    async def _sweep_forever(self) -> None:
        failures = Failures("pusher webhooks: sending held events", Backoff(0.5, 10.0),
                            logger=log)
        while True:
            await self._clock.sleep(SWEEP_S)
            try:
                await self.sweep()
                failures.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._clock.sleep(failures.failed(exc))

    async def sweep(self) -> None:
        """Send the held events that are due and the subscription counts whose turn came."""
        for member in await self.queue.due(self._clock.time(), BATCH_MAX_EVENTS):
            event = orjson.loads(member)
            # checked before it is taken: a read that fails leaves it held for the next
            # sweep (at least once); of the processes that check, the one that takes it
            # sends it
            if not await self._still_gone(event):
                await self.queue.take(member)  # the channel or the member came back
            elif await self.queue.take(member):
                self.emit(event)
        now = self._clock.monotonic()
        for channel, due in list(self._counts_due.items()):
            if due > now:
                continue
            wait_ms = await self.queue.count_turn(channel, int(self.count_interval_s * 1000))
            if wait_ms:
                self._counts_due[channel] = now + wait_ms / 1000
                continue
            del self._counts_due[channel]
            assert self._total is not None
            self.emit({"name": "subscription_count", "channel": channel,
                       "subscription_count": await self._total(channel)})

    async def _still_gone(self, event: dict[str, Any]) -> bool:
        assert self._total is not None and self._members is not None
        if event["name"] == "channel_vacated":
            return await self._total(event["channel"]) == 0
        return str(event["user_id"]) not in await self._members(event["channel"])

    # -- batching --

    async def _batch_forever(self) -> None:
        failures = Failures("pusher webhooks: queueing a batch", Backoff(0.5, 10.0),
                            logger=log)
        while True:
            await self._filled.wait()
            if len(self._buffer) < BATCH_MAX_EVENTS:
                await self._clock.sleep(self.batch_window_s)  # let others join the POST
            try:
                while self._buffer:
                    await self.flush()
                failures.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._clock.sleep(failures.failed(exc))
            if not self._buffer:
                self._filled.clear()

    async def flush(self) -> None:
        """Queue the first `BATCH_MAX_EVENTS` events in memory as one batch."""
        events, self._buffer = self._buffer[:BATCH_MAX_EVENTS], self._buffer[BATCH_MAX_EVENTS:]
        if not events:
            return
        at_ms = int(self._clock.time() * 1000)
        try:
            await self.queue.enqueue(orjson.dumps({"time_ms": at_ms, "events": events}), at_ms)
        except BaseException:
            self._buffer[:0] = events  # first again, for the next try
            raise
        for event in events:
            metrics.PUSHER_WEBHOOK_EVENTS.labels(event["name"]).inc()
