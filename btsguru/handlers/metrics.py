"""`GET /metrics`: the process's Prometheus registry (btsguru.metrics) in text format.

Where it sits: a handler, beside the flow. Before rendering, `StateGauges` refreshes the
scrape-time gauges that `btsguru.metrics` defines from the few services that keep that
state (the Redis and database probes, the breaker, the quota, the pollers' state rows,
the hub's connections); `btsguru.app` builds it with exactly those. When
`METRICS_TOKEN` is set the scraper must send `Authorization: Bearer TOKEN`; otherwise
the answer is the contract's JSON 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from btsguru import metrics
from btsguru.clock import Clock
from btsguru.config import Secret
from btsguru.errors import Unauthorized
from btsguru.handlers.base import JsonHandler
from btsguru.pollers.state import SportPollState, TaskState
from btsguru.upstream.quota import QuotaState

log = logging.getLogger(__name__)

# A scrape must answer well inside Prometheus's default 10 s scrape timeout even when
# Redis or the database hang.
STATE_PROBE_TIMEOUT_S = 2.0


class Quotas(Protocol):
    """The upstream budget (`upstream.quota.QuotaGovernor`)."""

    async def snapshot(self, sport: str) -> QuotaState: ...


class PollerStates(Protocol):
    """The pollers' state rows (`pollers.state.PollerStateReader`)."""

    async def tasks(self, sport: str) -> Sequence[TaskState]: ...

    async def state(self, sport: str) -> SportPollState: ...


class QueuedConnection(Protocol):
    """An open stream connection (`realtime.connection.Connection`)."""

    @property
    def kind(self) -> str: ...
    @property
    def queued_frames(self) -> int: ...
    @property
    def queued_bytes(self) -> int: ...


class StateGauges:
    """Sets the scrape-time gauges from the services' own state. A failing source leaves
    its gauges as they were (and `btsguru_dependency_up` says why) rather than failing
    the scrape."""

    def __init__(self, sports: Sequence[str], clock: Clock, *,
                 redis_ping: Callable[[], Awaitable[Any]],
                 database_ping: Callable[[], Awaitable[Any]],
                 breaker_state: Callable[[str], str], quota: Quotas,
                 pollers: PollerStates,
                 connections: Callable[[], Iterable[QueuedConnection]]) -> None:
        self._sports = tuple(sports)
        self._clock = clock
        self._redis_ping = redis_ping
        self._database_ping = database_ping
        self._breaker_state = breaker_state
        self._quota = quota
        self._pollers = pollers
        self._connections = connections

    async def refresh(self) -> None:
        metrics.DEPENDENCY_UP.labels("redis").set(await _probe(self._redis_ping()))
        metrics.DEPENDENCY_UP.labels("database").set(await _probe(self._database_ping()))
        for sport in self._sports:
            await self._sport(sport)
        self._streams()
        metrics.EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))

    async def _sport(self, sport: str) -> None:
        metrics.CIRCUIT_OPEN.labels(sport).set(
            0 if self._breaker_state(sport) == "closed" else 1)
        try:
            quota = await asyncio.wait_for(self._quota.snapshot(sport), STATE_PROBE_TIMEOUT_S)
            tasks = await asyncio.wait_for(self._pollers.tasks(sport), STATE_PROBE_TIMEOUT_S)
            poll = await asyncio.wait_for(self._pollers.state(sport), STATE_PROBE_TIMEOUT_S)
        except Exception as exc:
            log.debug("metrics: %s state unavailable: %s", sport, exc)
            return
        metrics.QUOTA_REMAINING.labels(sport, "day").set(quota.day_remaining)
        metrics.QUOTA_REMAINING.labels(sport, "minute").set(quota.minute_remaining)
        metrics.QUOTA_LIMIT.labels(sport, "day").set(quota.day_limit)
        metrics.QUOTA_LIMIT.labels(sport, "minute").set(quota.minute_limit)
        now = self._clock.time()
        scheduled = 0
        for task in tasks:
            if task.next_run is not None:
                scheduled += 1
                metrics.POLL_TASK_LAG.labels(sport, task.task).set(max(0.0, now - task.next_run))
            metrics.POLL_FAILURES_IN_A_ROW.labels(sport, task.task).set(task.failures)
        metrics.POLL_TASKS_SCHEDULED.labels(sport).set(scheduled)
        metrics.LIVE_GAMES.labels(sport).set(poll.live_games)
        if poll.data_age_s is not None:
            metrics.DATA_AGE.labels(sport).set(poll.data_age_s)

    def _streams(self) -> None:
        frames: dict[str, int] = {}
        queued: dict[str, int] = {}
        open_: dict[str, int] = {}
        for conn in self._connections():
            kind = conn.kind
            open_[kind] = open_.get(kind, 0) + 1
            frames[kind] = frames.get(kind, 0) + conn.queued_frames
            queued[kind] = queued.get(kind, 0) + conn.queued_bytes
        for kind in {"ws", "sse", "pusher"} | set(open_):
            metrics.STREAM_CONNECTIONS.labels(kind).set(open_.get(kind, 0))
            metrics.SEND_QUEUE_FRAMES.labels(kind).set(frames.get(kind, 0))
            metrics.SEND_QUEUE_BYTES.labels(kind).set(queued.get(kind, 0))


async def _probe(check: Awaitable[Any]) -> float:
    try:
        await asyncio.wait_for(check, STATE_PROBE_TIMEOUT_S)
    except Exception:
        return 0.0
    return 1.0


class MetricsHandler(JsonHandler):
    def initialize(self, gauges: StateGauges, token: Secret) -> None:
        self.gauges = gauges
        self.token = token

    def prepare(self) -> None:
        token = self.token.reveal()
        if not token:
            return
        scheme, _, given = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()):
            self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
            raise Unauthorized("/metrics needs Authorization: Bearer METRICS_TOKEN")

    async def get(self) -> None:
        await self.gauges.refresh()
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(metrics.render())
