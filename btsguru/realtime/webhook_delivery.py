"""Delivering queued Pusher webhook batches: POST, sign, retry, hand over.

Where it sits: `realtime.webhooks` queues batches (`store.webhook_queue`); this reads
them back in every process and POSTs each to its URL, in Pusher's form: the batch's
bytes as they were queued, `Content-Type: application/json` (exactly: the Pusher SDKs'
validators compare it), `X-Pusher-Key` (the app key) and `X-Pusher-Signature` (hex
HMAC-SHA256 of the body with the app secret).

Guarantees:
- At least once. A 2xx ends a batch (acknowledged and deleted); anything else (another
  status, a timeout, a refused connection) is retried with exponential back-off with
  jitter (`btsguru.backoff`) until `retry_for_s` (ten minutes) after it was queued, then
  dropped: logged, counted and kept in the URL's health for the alerter. A redirect is
  not followed (it is not a 2xx either). A batch whose POST succeeded may be sent again
  when its process dies before acknowledging it.
- Every URL on its own: each has its reader and at most `in_flight` batches being tried
  per process, and each request gives up after `timeout_s`, so a URL that hangs or fails
  delays only its own batches. Order across batches is not kept (each carries its
  `time_ms`), as with Pusher.
- Handed over: a batch being retried is touched every `claim_timeout_s / 3` so that it
  stays this process's; one idle past `claim_timeout_s` (its process died) is claimed
  by the next sweep of any process. Stopping gives the batches in hand back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from redis.exceptions import RedisError, ResponseError

from btsguru import metrics
from btsguru.backoff import Backoff, Failures
from btsguru.clock import Clock
from btsguru.lifecycle import cancel_tasks
from btsguru.realtime.pusher_protocol import webhook_signature
from btsguru.store.webhook_queue import Batch, WebhookQueue, url_origin

log = logging.getLogger(__name__)

RETRY_FOR_S = 600.0  # the contract: retried for at least ten minutes after it was queued
REQUEST_TIMEOUT_S = 5.0  # a receiver that hangs costs one slot this long, not the queue
CLAIM_TIMEOUT_S = 30.0  # six heartbeats of a live holder's touches; then it counts as dead
IN_FLIGHT = 4  # batches tried at once per URL per process: a slow receiver is not flooded
READ_BLOCK_MS = 1000  # XREADGROUP's wait: how soon a reader notices it is being stopped
BACKOFF = Backoff(base_s=1.0, cap_s=60.0)  # 1 s, 2 s, ... a minute between tries


class WebhookDelivery:
    """The readers and senders of every URL in this process; see the module docstring."""

    def __init__(self, queue: WebhookQueue, clock: Clock, *, app_key: str, secret: str,
                 consumer: str, backoff: Backoff = BACKOFF, retry_for_s: float = RETRY_FOR_S,
                 timeout_s: float = REQUEST_TIMEOUT_S, claim_timeout_s: float = CLAIM_TIMEOUT_S,
                 in_flight: int = IN_FLIGHT) -> None:
        self.queue = queue
        self._clock = clock
        self._app_key = app_key
        self._secret = secret
        self.consumer = consumer
        self.backoff = backoff
        self.retry_for_s = retry_for_s
        self.timeout_s = timeout_s
        self.claim_timeout_s = claim_timeout_s
        self.in_flight = in_flight
        self._held: dict[str, dict[str, asyncio.Task[None]]] = {u: {} for u in queue.urls}
        self._room = {url: asyncio.Event() for url in queue.urls}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self._tasks:
            return
        for n, url in enumerate(self.queue.urls):
            self._tasks.append(asyncio.create_task(self._read_forever(url),
                                                   name=f"btsguru-webhook-reader-{n}"))
            self._tasks.append(asyncio.create_task(self._sweep_forever(url),
                                                   name=f"btsguru-webhook-sweep-{n}"))

    async def close(self) -> None:
        """Stop reading and sending; the batches in hand go back to the queue."""
        tasks, self._tasks = self._tasks, []
        await cancel_tasks(tasks, owner="webhook delivery")
        for url, held in self._held.items():
            ids, sending = list(held), list(held.values())
            held.clear()
            await cancel_tasks(sending, owner="webhook delivery")
            with contextlib.suppress(RedisError, OSError):
                await self.queue.release(url, self.consumer, ids,
                                         int(self.claim_timeout_s * 10_000))
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- reading --

    def _room_for(self, url: str) -> int:
        return self.in_flight - len(self._held[url])

    async def _read_forever(self, url: str) -> None:
        failures = Failures(f"pusher webhooks: reading {url_origin(url)}'s queue",
                            Backoff(0.5, 10.0), logger=log)
        grouped = False
        while True:
            try:
                if not grouped:
                    await self.queue.ensure_group(url)
                    grouped = True
                while self._room_for(url) <= 0:
                    self._room[url].clear()
                    await self._room[url].wait()
                for batch in await self.queue.read(url, self.consumer, self._room_for(url),
                                                   READ_BLOCK_MS):
                    self._send(url, batch)
                failures.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    grouped = False  # the stream was deleted: create it again
                await self._clock.sleep(failures.failed(exc))

    async def _sweep_forever(self, url: str) -> None:
        """Touch the batches in hand, take over the stale ones, refresh the depth gauge."""
        failures = Failures(f"pusher webhooks: sweeping {url_origin(url)}'s queue",
                            Backoff(0.5, 10.0), logger=log)
        while True:
            await self._clock.sleep(self.claim_timeout_s / 3)
            try:
                await self.sweep(url)
                failures.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._clock.sleep(failures.failed(exc))

    async def sweep(self, url: str) -> int:
        """One sweep; how many stale batches this process took over."""
        await self.queue.touch(url, self.consumer, list(self._held[url]))
        taken = 0
        if self._room_for(url) > 0:
            for batch in await self.queue.claim_stale(
                    url, self.consumer, int(self.claim_timeout_s * 1000), self._room_for(url)):
                if batch.id not in self._held[url]:
                    log.info("pusher webhooks: took over batch %s of %s (its process "
                             "stopped or died)", batch.id, url_origin(url))
                    self._send(url, batch)
                    taken += 1
        metrics.PUSHER_WEBHOOK_QUEUE.set(await self.queue.depth())
        return taken

    # -- sending --

    def _send(self, url: str, batch: Batch) -> None:
        task = asyncio.create_task(self._deliver(url, batch),
                                   name=f"btsguru-webhook-{batch.id}")
        self._held[url][batch.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._held[url].get(batch.id) is finished:
                del self._held[url][batch.id]
            self._room[url].set()
            if not finished.cancelled() and finished.exception() is not None:
                # Redis failed at the acknowledgement: the batch stays queued, and the
                # sweep of some process sends it again once it is idle
                log.warning("pusher webhooks: batch %s of %s: %s", batch.id,
                            url_origin(url), finished.exception())

        task.add_done_callback(done)

    async def _deliver(self, url: str, batch: Batch) -> None:
        attempt = 0
        while True:
            attempt += 1
            why = await self.post(url, batch.body)
            if why is None:
                metrics.PUSHER_WEBHOOKS.labels("delivered").inc()
                await self.queue.done(url, batch.id)
                await self.queue.delivered(url)
                return
            metrics.PUSHER_WEBHOOKS.labels("failed").inc()
            now = self._clock.time()
            if now - batch.at_ms / 1000 >= self.retry_for_s:
                metrics.PUSHER_WEBHOOKS.labels("dropped").inc()
                log.error("pusher webhooks: dropped batch %s for %s after %d tries over "
                          "%.0f s (last: %s)", batch.id, url_origin(url), attempt,
                          now - batch.at_ms / 1000, why)
                await self.queue.failed(url, why, now, dropped=True)
                await self.queue.done(url, batch.id)
                return
            await self.queue.failed(url, why, now)
            delay_s = self.backoff.compute(attempt)
            log.warning("pusher webhooks: %s refused batch %s (%s, try %d); again in %.1f s",
                        url_origin(url), batch.id, why, attempt, delay_s)
            await self._clock.sleep(delay_s)

    async def post(self, url: str, body: bytes) -> str | None:
        """POST one batch: None on a 2xx, else why not (a status or an error's type:
        aiohttp's messages quote the URL, which may hold a token)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {"Content-Type": "application/json", "X-Pusher-Key": self._app_key,
                   "X-Pusher-Signature": webhook_signature(self._secret, body)}
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
