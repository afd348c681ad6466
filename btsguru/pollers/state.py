"""Poller state in Redis: what each task did last and when it runs next, for every process.

Where it sits: beside the pollers. The scheduler writes one hash per (sport, task) in the
`queue` database, `<prefix>poll:state:<sport>:<task>`; readers are `/v1/sports` (through
`PollerStateReader.state`), the ops console (`PollerStateReader.tasks`) and the
scheduler itself: `next_run` is the task's schedule, shared by the cluster, so a process
taking a lease over continues where the previous holder stopped (a 6-hourly refresh is
not repeated because a process restarted), and a task can be woken early by moving it.

Fields (epoch seconds on the pollers' clock, as text): interval_s, reason, last_run,
last_success, next_run, failures (in a row), backoff_s, live_games, last_error, lease,
requests (made by this task since the row was created), and task-specific extras.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from redis.typing import EncodableT

from btsguru.clock import Clock
from btsguru.pollers.lease import lease_key
from btsguru.store.hot import encode_invalidation, hot_channel, live_list_name
from btsguru.store.pubsub import publish, sharded
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

# A task nobody runs any more (a sport dropped from BTSGURU_SPORTS) fades from the ops
# view after a week.
STATE_TTL_S = 7 * 86_400
# The tasks of a sport, in the order the ops view lists them.
TASK_NAMES: tuple[str, ...] = ("live", "schedule", "standings", "static")


def iso_utc(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TaskState:
    """One task's row in the ops view."""

    sport: str
    task: str
    interval_s: float | None
    reason: str | None
    last_run: float | None
    last_success: float | None
    next_run: float | None
    failures: int
    backoff_s: float
    live_games: int | None
    last_error: str | None
    lease: str | None
    holder: str | None
    requests: int
    data_age_s: float | None
    extra: Mapping[str, str]


@dataclass(frozen=True)
class SportPollState:
    """What `/v1/sports` shows of a sport's pollers."""

    sport: str
    live_games: int
    poll_interval_s: float | None  # the live poller's current interval
    last_poll_at: str | None  # its last successful poll, ISO 8601 UTC
    data_age_s: int | None  # seconds since then
    failing: bool  # the live task's last run failed (no live task yet: the schedule's)


# The tasks whose rows `/v1/{sport}/live`'s `meta` reads (through `state`).
_SHOWN_IN_LIVE = frozenset({"live", "schedule"})
_KNOWN = frozenset({"interval_s", "reason", "last_run", "last_success", "next_run",
                    "failures", "backoff_s", "live_games", "last_error", "lease",
                    "requests"})


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else str(k)):
            (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}


class PollerState:
    """Reads and writes the task rows (the scheduler's side). `namespace` keeps a
    `record` run's schedule apart from the cluster's pollers."""

    def __init__(self, redis: RedisStores, clock: Clock, *, namespace: str = "poll") -> None:
        self._redis = redis.queue
        self._keys = redis.keys
        self._clock = clock
        self.namespace = namespace

    def key(self, sport: str, task: str) -> str:
        return self._keys.key(self.namespace, "state", sport, task)

    async def load(self, sport: str, task: str) -> dict[str, str]:
        return _decoded(await self._redis.hgetall(self.key(sport, task)))

    async def next_run(self, sport: str, task: str) -> float | None:
        return _float(_text(await self._redis.hget(self.key(sport, task), "next_run")))

    async def update(self, sport: str, task: str, fields: Mapping[str, Any],
                     *, count_requests: int = 0) -> None:
        """Set `fields` (None deletes a field) and add to today's request count."""
        key = self.key(sport, task)
        values: dict[EncodableT, EncodableT] = {
            k: _encode(v) for k, v in fields.items() if v is not None}
        gone = [k for k, v in fields.items() if v is None]
        async with self._redis.pipeline(transaction=True) as pipe:
            if values:
                pipe.hset(key, mapping=values)
            if gone:
                pipe.hdel(key, *gone)
            if count_requests:
                pipe.hincrby(key, "requests", count_requests)
            pipe.expire(key, STATE_TTL_S)
            # `/v1/{sport}/live` shows this row's freshness: drop its cached copies, with
            # the write; on Cluster after it (SPUBLISH is bound to its channel's slot,
            # which a MULTI on this key cannot reach)
            invalidate = self.namespace == "poll" and task in _SHOWN_IN_LIVE
            message = encode_invalidation([live_list_name(sport)])
            if invalidate and not sharded(self._redis):
                pipe.publish(hot_channel(self._keys), message)
            await pipe.execute()
        if invalidate and sharded(self._redis):
            await publish(self._redis, hot_channel(self._keys), message)

    async def wake(self, sport: str, task: str, at: float) -> bool:
        """Move the task's next run to `at` if that is sooner; True when moved."""
        key = self.key(sport, task)
        current = await self.next_run(sport, task)
        if current is not None and current <= at:
            return False
        await self._redis.hset(key, "next_run", _encode(at))
        return True


class PollerStateReader:
    """The task rows as the ops view and `/v1/sports` read them."""

    def __init__(self, redis: RedisStores, clock: Clock) -> None:
        self._redis = redis.queue
        self._keys = redis.keys
        self._clock = clock
        self._state = PollerState(redis, clock)

    async def tasks(self, sport: str) -> list[TaskState]:
        """Every task row of `sport` that exists, with its lease holder."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for task in TASK_NAMES:
                pipe.hgetall(self._state.key(sport, task))
            rows = [_decoded(raw) for raw in await pipe.execute()]
        leases = [row.get("lease") for row in rows]
        holders: list[str | None] = [None] * len(rows)
        wanted = [(i, name) for i, name in enumerate(leases) if name]
        if wanted:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, name in wanted:
                    pipe.get(lease_key(self._keys, name))
                found = await pipe.execute()
            for (i, _), value in zip(wanted, found, strict=True):
                holders[i] = _text(value)
        now = self._clock.time()
        out = []
        for task, row, holder in zip(TASK_NAMES, rows, holders, strict=True):
            if not row:
                continue
            last_success = _float(row.get("last_success"))
            out.append(TaskState(
                sport=sport, task=task, interval_s=_float(row.get("interval_s")),
                reason=row.get("reason"), last_run=_float(row.get("last_run")),
                last_success=last_success, next_run=_float(row.get("next_run")),
                failures=_int(row.get("failures")) or 0,
                backoff_s=_float(row.get("backoff_s")) or 0.0,
                live_games=_int(row.get("live_games")), last_error=row.get("last_error"),
                lease=row.get("lease"), holder=holder, requests=_int(row.get("requests")) or 0,
                data_age_s=None if last_success is None else max(0.0, now - last_success),
                extra={k: v for k, v in row.items() if k not in _KNOWN}))
        return out

    async def state(self, sport: str) -> SportPollState:
        """The sport's line in `/v1/sports` (zeros and nulls before any poll)."""
        try:
            rows = {t.task: t for t in await self.tasks(sport)}
        except RedisError as exc:
            log.warning("poller state of %s unreadable: %s", sport, exc)
            rows = {}
        live = rows.get("live")
        schedule = rows.get("schedule")
        if live is None:
            return SportPollState(sport, 0, None, None, None,
                                  failing=bool(schedule and schedule.failures))
        age = None if live.data_age_s is None else int(live.data_age_s)
        return SportPollState(
            sport=sport, live_games=live.live_games or 0, poll_interval_s=live.interval_s,
            last_poll_at=iso_utc(live.last_success), data_age_s=age,
            # the live task's own runs say whether live data is current: a schedule run
            # that failed during an outage would keep a fresh list stale until its next
            # run (up to POLL_SCHEDULE_INTERVAL_S), long after the upstream came back
            failing=live.failures > 0)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)
