"""The alerter: raises and resolves alerts from state the services already keep.

Where it sits: beside the flow, reading it (quota counters, the pollers' state rows, the
breaker, the Redis and database probes, this process's metrics, the unusual-access
counters every process flushes (`auth.watch`)) and writing only its
own keys. One process of the cluster evaluates at a time — it holds the `alerter` lease
(`pollers.lease`, the pollers' mechanism) — so an alert is raised once, not once per
process. Each raise and resolve is:

- logged on one line (a critical alert at error, a warning at warning, a resolve at info);
- kept in Redis: the firing set (`<prefix>alerts:{alerts}:firing`, a hash by alert id,
  so a new leader carries on where the old one stopped and does not re-send) and the
  recent events (`<prefix>alerts:{alerts}:recent`, newest first, capped) that the ops
  console shows, one hash tag so one MULTI writes both on a Redis Cluster;
- POSTed as JSON to `ALERT_WEBHOOK_URL` when set, with a Slack-compatible `text`, retried
  with jittered backoff on connection errors, 429 and 5xx.

When Redis itself is unreachable no lease can be confirmed: every process then raises
`redis_unreachable` from its own memory (logged and sent, not stored). Duplicate
webhook posts from several processes are the price of not staying silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.auth.watch import AccessWatch, minute_of
from btsguru.backoff import Backoff
from btsguru.clock import Clock
from btsguru.lifecycle import cancel_tasks
from btsguru.pollers.lease import Leases
from btsguru.store.alert_store import Alert, AlertEvent, AlertStore  # the records
from btsguru.store.redis import RedisStores
from btsguru.store.webhook_queue import UrlHealth
from btsguru.upstream.quota import QuotaState

log = logging.getLogger(__name__)

ALERTER_LEASE = "alerter"
CHECK_INTERVAL_S = 15.0  # well inside the 3x-cadence staleness bound of the fastest poller
QUOTA_WARNING = 0.80  # the thresholds: 80% and 95% of the day's budget
QUOTA_CRITICAL = 0.95
STALE_CADENCES = 3.0  # data older than three cadences while games are live
FAILURES_IN_A_ROW = 3  # a poller failing this often in a row (three cadences at least)
DISCONNECT_SPIKE = 100  # abnormal disconnects in one check interval in this process
# A Sentinel failover is an event, not a state: its alert stays raised this long (the
# history window, over which clients may resume across it), then resolves by itself.
FAILOVER_ALERT_S = 600.0
# Unusual access, per UTC minute over the cluster (counted by `auth.watch`): a client
# polling honestly repeats its queries and hits the cache, so this many distinct misses
# from one key is a cache-busting pattern; this many 401s from one address is guessing.
CACHE_BUSTING_MISSES = 120
AUTH_FAILURE_BURST = 30
# A Pusher webhook URL failing this long (a minute of retries, every batch refused) is
# raised; dropping batches (ten minutes of failures) makes it critical.
PUSHER_WEBHOOK_FAILING_S = 60.0
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0
# Disconnect reasons that are not trouble: clients leaving, and our own restarts.
_ORDINARY_DISCONNECTS = frozenset({"normal", "going_away", "peer", "restart"})


class Quotas(Protocol):
    async def snapshot(self, sport: str) -> QuotaState: ...


class TaskRow(Protocol):
    @property
    def task(self) -> str: ...
    @property
    def interval_s(self) -> float | None: ...
    @property
    def failures(self) -> int: ...
    @property
    def live_games(self) -> int | None: ...
    @property
    def data_age_s(self) -> float | None: ...
    @property
    def last_error(self) -> str | None: ...


class TaskRows(Protocol):
    async def tasks(self, sport: str) -> Sequence[TaskRow]: ...


class WebhookHealth(Protocol):
    async def health(self) -> list[UrlHealth]: ...


class WebhookSender:
    """POSTs events as JSON to the webhook, retrying transient failures."""

    def __init__(self, url: str, clock: Clock, *, attempts: int = WEBHOOK_ATTEMPTS,
                 backoff: Backoff | None = None) -> None:
        self.url = url
        self._clock = clock
        self._attempts = attempts
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=8.0)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, event: AlertEvent) -> bool:
        """True once the webhook took the event (2xx); False after the last attempt."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        payload = {"text": event.text(), **event.to_json()}
        why = ""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._session.post(self.url, json=payload) as resp:
                    if resp.status < 300:
                        return True
                    why = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status != 429:
                        break  # the receiver refuses this payload: asking again won't help
            except (aiohttp.ClientError, TimeoutError) as exc:
                # the type only: aiohttp's messages quote the URL, which may hold a token
                why = type(exc).__name__
            if attempt < self._attempts:
                await self._clock.sleep(self._backoff.compute(attempt))
        # the URL may carry a token (Slack's do): never log it
        log.error("alert webhook: %s %s not delivered after %d attempts (%s)",
                  event.status, event.alert.id, attempt, why)
        return False


class Alerter:
    """Evaluates the conditions every `interval_s` while holding the `alerter` lease."""

    def __init__(self, sports: Sequence[str], clock: Clock, redis: RedisStores, *,
                 quota: Quotas, tasks: TaskRows,
                 breaker_state: Callable[[str], str] | None = None,
                 database_ping: Callable[[], Awaitable[None]] | None = None,
                 webhook: WebhookSender | None = None, leases: Leases | None = None,
                 pusher_webhooks: WebhookHealth | None = None,
                 interval_s: float = CHECK_INTERVAL_S,
                 cache_busting_misses: int = CACHE_BUSTING_MISSES,
                 auth_failure_burst: int = AUTH_FAILURE_BURST) -> None:
        self._sports = tuple(sports)
        self._clock = clock
        self._redis = redis
        self._quota = quota
        self._tasks = tasks
        self._breaker_state = breaker_state
        self._database_ping = database_ping
        self.webhook = webhook
        self._pusher_webhooks = pusher_webhooks
        self.store = AlertStore(redis)
        # the lease is renewed once per check, so it must outlive one: with the pollers'
        # 10 s TTL and a 15 s interval another process took it over between checks
        self.leases = leases or Leases(redis, clock, ttl_s=interval_s * 2.5,
                                       renew_s=interval_s)
        self.interval_s = interval_s
        self.watch = AccessWatch(redis.data, redis.keys, clock)  # reads what processes flush
        self.cache_busting_misses = cache_busting_misses
        self.auth_failure_burst = auth_failure_burst
        self._local_firing: dict[str, Alert] = {}  # only while Redis is unreachable
        watch = redis.master or (redis.cluster.watch if redis.cluster is not None else None)
        self._failovers_seen = watch.failovers if watch is not None else 0
        self._failover: tuple[Alert, float] | None = None  # the alert, raised until
        self._disconnects_seen = _abnormal_disconnects()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="alerter")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_tasks([self._task], owner="alerter")
            self._task = None
            # give the lease back so another process leads at once, as the pollers do
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release([ALERTER_LEASE])
        if self.webhook is not None:
            await self.webhook.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alerter: a check failed")
            await self._clock.sleep(self.interval_s)

    # -- one check --

    async def check_once(self) -> list[AlertEvent]:
        """Evaluate, compare with what is firing, and report the differences. Returns the
        events reported (empty when another process leads)."""
        if not await _answers(self._redis.ping()):
            return await self._report_local([Alert(
                "redis_unreachable", "redis_unreachable", "critical",
                "Redis does not answer: streams, caching and pollers are down")])
        resolved_local = await self._report_local([])
        held = await self.leases.refresh([ALERTER_LEASE])
        if not held.get(ALERTER_LEASE):
            return resolved_local
        current = {alert.id: alert for alert in await self.evaluate()}
        firing = await self.store.firing()
        events = [AlertEvent("firing", a, self._clock.time())
                  for key, a in current.items() if key not in firing]
        events += [AlertEvent("resolved", a, self._clock.time())
                   for key, a in firing.items() if key not in current]
        for event in events:
            await self.store.record(event)
            await self._announce(event)
        self._export(current.values())
        return resolved_local + events

    async def evaluate(self) -> list[Alert]:
        """The conditions that hold now."""
        alerts: list[Alert] = []
        if self._database_ping is not None and not await _answers(self._database_ping()):
            alerts.append(Alert("database_unreachable", "database_unreachable", "critical",
                                "the database does not answer: signups, keys and usage "
                                "rollups fail"))
        for sport in self._sports:
            alerts += await self._sport_alerts(sport)
        alerts += await self._access_alerts()
        alerts += await self._failover_alerts()
        alerts += await self._pusher_webhook_alerts()
        now_seen = _abnormal_disconnects()
        spike = now_seen - self._disconnects_seen
        self._disconnects_seen = now_seen
        if spike >= DISCONNECT_SPIKE:
            alerts.append(Alert("disconnect_spike", "disconnect_spike", "warning",
                                f"{spike:.0f} abnormal stream disconnects in the last "
                                f"{self.interval_s:.0f} s"))
        return alerts

    async def _sport_alerts(self, sport: str) -> list[Alert]:
        alerts: list[Alert] = []
        try:
            quota = await self._quota.snapshot(sport)
            tasks = await self._tasks.tasks(sport)
        except (RedisError, OSError) as exc:
            log.debug("alerter: %s state unavailable: %s", sport, exc)
            return alerts
        if quota.day_limit > 0:
            used = quota.day_used / quota.day_limit
            for level, severity in ((QUOTA_WARNING, "warning"), (QUOTA_CRITICAL, "critical")):
                if used >= level or quota.day_spent:
                    alerts.append(Alert(
                        f"quota_day_{int(level * 100)}:{sport}", f"quota_day_{int(level * 100)}",
                        severity,  # type: ignore[arg-type]
                        f"{sport}: {quota.day_used} of {quota.day_limit} upstream requests "
                        f"used today ({used:.0%})", sport))
        if quota.day_spent or quota.minute_blocked_s > 0:
            window = "day" if quota.day_spent else "minute"
            alerts.append(Alert(f"upstream_rate_limited:{sport}", "upstream_rate_limited",
                                "warning", f"{sport}: the upstream refused for its {window} "
                                "rate limit", sport))
        for row in tasks:
            if row.failures >= FAILURES_IN_A_ROW:
                alerts.append(Alert(
                    f"poller_failing:{sport}:{row.task}", "poller_failing", "critical",
                    f"{sport} {row.task}: {row.failures} failures in a row "
                    f"(last: {row.last_error or 'unknown'})", f"{sport}/{row.task}"))
            if row.task == "live" and (row.live_games or 0) > 0 and row.interval_s and \
                    row.data_age_s is not None and \
                    row.data_age_s > STALE_CADENCES * row.interval_s:
                alerts.append(Alert(
                    f"data_stale:{sport}", "data_stale", "critical",
                    f"{sport}: live data is {row.data_age_s:.0f} s old with "
                    f"{row.live_games} games live (cadence {row.interval_s:.0f} s)", sport))
        if self._breaker_state is not None and self._breaker_state(sport) != "closed":
            alerts.append(Alert(f"circuit_open:{sport}", "circuit_open", "critical",
                                f"{sport}: the upstream circuit breaker is "
                                f"{self._breaker_state(sport)}", sport))
        return alerts

    async def _access_alerts(self) -> list[Alert]:
        """Unusual access in the last complete UTC minute, and users past 80% of their
        tier's daily quota today (one alert per user and day)."""
        alerts: list[Alert] = []
        try:
            counts = await self.watch.minute_counts(minute_of(self._clock.time()) - 1)
            notices = await self.watch.quota_notices()
        except (RedisError, OSError) as exc:
            log.debug("alerter: access counters unavailable: %s", exc)
            return alerts
        for field, count in sorted(counts.items()):
            kind, _, subject = field.partition(":")
            if kind == "busting" and count >= self.cache_busting_misses:
                key_id, _, key_prefix = subject.partition(":")
                alerts.append(Alert(
                    f"cache_busting:{key_id}", "cache_busting", "warning",
                    f"key {key_prefix} (id {key_id}): {count} distinct raw-proxy misses in "
                    "one minute: its queries defeat the cache", f"key {key_id}"))
            elif kind == "authfail" and count >= self.auth_failure_burst:
                alerts.append(Alert(
                    f"auth_failure_burst:{subject}", "auth_failure_burst", "warning",
                    f"{subject}: {count} failed authentications in one minute", subject))
        for notice in notices:
            alerts.append(Alert(
                f"user_quota_80:{notice.user_id}", "user_quota_80", "warning",
                f"user {notice.user_id} ({notice.tier} tier): {notice.used} of "
                f"{notice.quota} requests of the daily quota used today "
                f"({notice.used / notice.quota:.0%})", f"user {notice.user_id}"))
        return alerts

    async def _pusher_webhook_alerts(self) -> list[Alert]:
        """A Pusher webhook URL whose deliveries have failed for a while (cluster-wide:
        every process records its failures and a delivery clears them)."""
        if self._pusher_webhooks is None:
            return []
        try:
            rows = await self._pusher_webhooks.health()
        except (RedisError, OSError) as exc:
            log.debug("alerter: webhook health unavailable: %s", exc)
            return []
        alerts = []
        now = self._clock.time()
        for row in rows:
            if row.failing_since is None or now - row.failing_since < PUSHER_WEBHOOK_FAILING_S:
                continue
            alerts.append(Alert(
                f"pusher_webhook_failing:{row.url_id}", "pusher_webhook_failing",
                "critical" if row.dropped else "warning",
                f"Pusher webhooks to {row.where} failing for {now - row.failing_since:.0f} s "
                f"(last: {row.last_error or 'unknown'}); {row.queued} batches queued, "
                f"{row.dropped} dropped", row.where))
        return alerts

    async def _failover_alerts(self) -> list[Alert]:
        """With Sentinel: the master moved since the last check (this process's clients
        followed it; the sentinels are asked too, so a move no client has met yet counts).
        With Cluster: a master's slots moved to its promoted replica in the slot map of
        this process's client (`store.cluster.SlotMasters`)."""
        sentinel, cluster = self._redis.master, self._redis.cluster
        if sentinel is not None:
            with contextlib.suppress(RedisError, OSError):
                await asyncio.wait_for(sentinel.discover(), PROBE_TIMEOUT_S)
        watch = sentinel or (cluster.watch if cluster is not None else None)
        if watch is None:
            return []
        what, how, subject = ((f"Redis master {sentinel.service}", "Sentinel failover",
                               sentinel.service) if sentinel is not None else
                              ("A Redis Cluster master", "Cluster failover: its replica "
                               "promoted", self._redis.description))
        now = self._clock.time()
        if watch.failovers > self._failovers_seen and watch.last_move is not None:
            self._failovers_seen = watch.failovers
            move = watch.last_move
            self._failover = (Alert(
                f"redis_failover:{move.new}", "redis_failover", "warning",
                f"{what} moved from {move.old} to {move.new} ({how}; {watch.failovers} seen "
                "by this process): writes acknowledged just before it may be lost", subject),
                now + FAILOVER_ALERT_S)
        if self._failover is not None and now < self._failover[1]:
            return [self._failover[0]]
        return []

    # -- reporting --

    async def _announce(self, event: AlertEvent) -> None:
        alert = event.alert
        if event.status == "firing":
            metrics.ALERTS_RAISED.labels(alert.name).inc()
            level = logging.ERROR if alert.severity == "critical" else logging.WARNING
            log.log(level, "alert %s [%s]: %s", alert.id, alert.severity, alert.message)
        else:
            log.info("alert resolved %s: %s", alert.id, alert.message)
        if self.webhook is not None:
            await self.webhook.send(event)

    async def _report_local(self, current: list[Alert]) -> list[AlertEvent]:
        """The Redis-down path: compare with this process's memory, store nothing."""
        now = self._clock.time()
        wanted = {a.id: a for a in current}
        events = [AlertEvent("firing", a, now) for k, a in wanted.items()
                  if k not in self._local_firing]
        events += [AlertEvent("resolved", a, now) for k, a in self._local_firing.items()
                   if k not in wanted]
        self._local_firing = wanted
        for event in events:
            await self._announce(event)
        return events

    def _export(self, current: Any) -> None:
        counts = {"warning": 0, "critical": 0}
        for alert in current:
            counts[alert.severity] += 1
        for severity, count in counts.items():
            metrics.ALERTS_FIRING.labels(severity).set(count)


async def _answers(probe: Awaitable[Any]) -> bool:
    try:
        await asyncio.wait_for(probe, PROBE_TIMEOUT_S)
    except Exception:
        return False
    return True


def _abnormal_disconnects() -> float:
    total = 0.0
    for family in metrics.STREAM_DISCONNECTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and \
                    sample.labels.get("reason") not in _ORDINARY_DISCONNECTS:
                total += sample.value
    return total
