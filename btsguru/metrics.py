"""Every Prometheus collector of btsguru, in one place (STYLE.md's one allowed global).

Where it sits: at the bottom, beside the flow; it imports no other btsguru module. Each
stage counts what it does with one call here (upstream client, raw proxy, pollers, hub
and connections, REST handlers, the rate limit); the gauges that describe shared state
(quota, data age, live games, task lag, connections, send queues, event-loop tasks, the
breaker, Redis and the database) are only defined here: `handlers.metrics.StateGauges`
sets them at scrape time, from the services that already keep that state, so they are
never stale.

Names carry their unit (`_seconds`, `_bytes`, `_total`) and every label has a bounded
set of values: sports, endpoints of the allow-list, task names, transports, tiers,
outcome kinds, HTTP statuses and handler names — never a key, user, game or path.

Multi-process: one registry per process, scraped per process. The production layout is
one process per port (`btsguru@PORT`), so each is its own Prometheus target and
`sum by (...)` aggregates across them; that needs no shared directory of mmap files to
clean after restarts (prometheus-client's multiprocess mode) and keeps histograms
exact. Gauges read from Redis (quota, data age, live games, task lag) are cluster-wide
and the same on every target: alert on `max` of them, not `sum`. `serve --processes N`
forks workers behind one port, where a scrape reaches one worker: use `btsguru@` units
(one port each) when scraping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="btsguru", registry=REGISTRY)

# Latency buckets: upstream calls take 50 ms to seconds; REST hits a few milliseconds.
_UPSTREAM_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_POLL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FANOUT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# -- upstream --
UPSTREAM_REQUESTS = Counter(
    "btsguru_upstream_requests_total",
    "Requests sent to the upstream, by sport, endpoint and outcome (ok or the failure kind).",
    ["sport", "endpoint", "outcome"], registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(
    "btsguru_upstream_request_duration_seconds", "Upstream request latency.",
    ["sport"], buckets=_UPSTREAM_BUCKETS_S, registry=REGISTRY)
UPSTREAM_RATE_LIMITED = Counter(
    "btsguru_upstream_rate_limited_total",
    "Upstream answers refusing for its rate limit (window: day or minute).",
    ["sport", "window"], registry=REGISTRY)
QUOTA_TOKENS = Counter(
    "btsguru_quota_tokens_taken_total", "Upstream budget tokens taken, by purpose.",
    ["sport", "purpose"], registry=REGISTRY)
QUOTA_REMAINING = Gauge(
    "btsguru_quota_remaining_requests", "Upstream budget left in the window (day, minute).",
    ["sport", "window"], registry=REGISTRY)
QUOTA_LIMIT = Gauge(
    "btsguru_quota_limit_requests", "Upstream budget of the window (day, minute).",
    ["sport", "window"], registry=REGISTRY)
CIRCUIT_OPEN = Gauge(
    "btsguru_upstream_circuit_open", "1 while this process's breaker for the sport is not "
    "closed.", ["sport"], registry=REGISTRY)

# -- cache --
CACHE_REQUESTS = Counter(
    "btsguru_cache_requests_total", "Raw-proxy answers by cache result (hit, miss, stale).",
    ["result"], registry=REGISTRY)

# -- pollers --
POLL_RUNS = Counter(
    "btsguru_poll_runs_total", "Poller runs by sport, task and outcome (ok, failed).",
    ["sport", "task", "outcome"], registry=REGISTRY)
POLL_DURATION = Histogram(
    "btsguru_poll_duration_seconds", "Poller run duration.", ["sport", "task"],
    buckets=_POLL_BUCKETS_S, registry=REGISTRY)
POLL_TASKS_SCHEDULED = Gauge(
    "btsguru_poll_tasks_scheduled", "Poller tasks with a next run scheduled (cluster-wide).",
    ["sport"], registry=REGISTRY)
POLL_TASK_LAG = Gauge(
    "btsguru_poll_task_lag_seconds", "How late a task is past its scheduled run (0 when on "
    "time; cluster-wide).", ["sport", "task"], registry=REGISTRY)
POLL_FAILURES_IN_A_ROW = Gauge(
    "btsguru_poll_failures_in_a_row", "Consecutive failed runs of a task (cluster-wide).",
    ["sport", "task"], registry=REGISTRY)
DATA_AGE = Gauge(
    "btsguru_data_age_seconds", "Seconds since the sport's last successful live poll.",
    ["sport"], registry=REGISTRY)
LIVE_GAMES = Gauge(
    "btsguru_live_games", "Games live or at a break, per sport.", ["sport"], registry=REGISTRY)

# -- streams --
STREAM_CONNECTIONS = Gauge(
    "btsguru_stream_connections", "Open stream connections in this process, by transport.",
    ["transport"], registry=REGISTRY)
STREAM_CONNECTS = Counter(
    "btsguru_stream_connects_total", "Stream connections admitted.", ["transport"],
    registry=REGISTRY)
STREAM_DISCONNECTS = Counter(
    "btsguru_stream_disconnects_total", "Stream connections ended, by reason.",
    ["transport", "reason"], registry=REGISTRY)
SEND_QUEUE_FRAMES = Gauge(
    "btsguru_send_queue_frames", "Frames waiting in connections' send queues.",
    ["transport"], registry=REGISTRY)
SEND_QUEUE_BYTES = Gauge(
    "btsguru_send_queue_bytes", "Bytes waiting in connections' send queues.",
    ["transport"], registry=REGISTRY)
EVENT_LOOP_TASKS = Gauge(
    "btsguru_event_loop_tasks", "asyncio tasks alive in this process's event loop (a leak "
    "shows as growth at a steady number of connections).", registry=REGISTRY)


class SentTally:
    """Frames and bytes written to clients, per transport. The fan-out counts one write
    per subscriber per event, so these are plain integers (a `Counter`'s lock would cost
    a good part of the write's own bookkeeping), exposed as counters at scrape."""

    def __init__(self) -> None:
        self.messages: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def add(self, transport: str, messages: int, size: int) -> None:
        self.messages[transport] = self.messages.get(transport, 0) + messages
        self.bytes[transport] = self.bytes.get(transport, 0) + size

    def collect(self) -> Iterator[CounterMetricFamily]:
        messages = CounterMetricFamily("btsguru_stream_messages_sent",
                                       "Frames written to clients.", labels=["transport"])
        size = CounterMetricFamily("btsguru_stream_bytes_sent",
                                   "Bytes written to clients (after compression).",
                                   labels=["transport"])
        for transport, value in sorted(self.messages.items()):
            messages.add_metric([transport], value)
        for transport, value in sorted(self.bytes.items()):
            size.add_metric([transport], value)
        yield messages
        yield size

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


SENT = SentTally()
REGISTRY.register(SENT)
FANOUT_DURATION = Histogram(
    "btsguru_fanout_duration_seconds", "Time to hand one bus event to every subscriber of "
    "a channel in this process.", buckets=_FANOUT_BUCKETS_S, registry=REGISTRY)

# -- Pusher webhooks (realtime.webhooks, realtime.webhook_delivery) --
PUSHER_WEBHOOKS = Counter(
    "btsguru_pusher_webhooks_total",
    "Pusher webhook batch deliveries per URL: delivered (a 2xx), failed (one try that was "
    "not), dropped (given up after the retry window).", ["result"], registry=REGISTRY)
PUSHER_WEBHOOK_EVENTS = Counter(
    "btsguru_pusher_webhook_events_total", "Pusher webhook events queued, by event name.",
    ["event"], registry=REGISTRY)
PUSHER_WEBHOOK_QUEUE = Gauge(
    "btsguru_pusher_webhook_queue_batches", "Pusher webhook batches not yet delivered, over "
    "every URL (cluster-wide: alert on max, not sum).", registry=REGISTRY)

# -- REST and access --
HTTP_REQUESTS = Counter(
    "btsguru_http_requests_total", "HTTP requests by handler and status.",
    ["handler", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "btsguru_http_request_duration_seconds", "HTTP request latency (streams excluded).",
    ["handler"], buckets=_REST_BUCKETS_S, registry=REGISTRY)
RATE_LIMIT_REJECTIONS = Counter(
    "btsguru_rate_limit_rejections_total", "Requests refused by the rate limit, by tier.",
    ["tier"], registry=REGISTRY)
AUTH_FAILURES = Counter(
    "btsguru_auth_failures_total",
    "Failed authentications: a missing or bad API key (401, close 4001), a wrong Pusher "
    "app key or channel signature.",
    registry=REGISTRY)

# -- dependencies and alerts --
DEPENDENCY_UP = Gauge(
    "btsguru_dependency_up", "1 when the dependency (redis, database) answers a probe.",
    ["dependency"], registry=REGISTRY)
ALERTS_FIRING = Gauge(
    "btsguru_alerts_firing", "Alerts the alerter holds raised, by severity.", ["severity"],
    registry=REGISTRY)
ALERTS_RAISED = Counter(
    "btsguru_alerts_raised_total", "Alerts raised by the alerter, by name.", ["alert"],
    registry=REGISTRY)
REDIS_FAILOVERS = Counter(
    "btsguru_redis_failovers_total",
    "Times this process saw a Redis master fail over: the Sentinel-managed master move "
    "to another address, or a Cluster master's slots move to its promoted replica.",
    registry=REGISTRY)
REDIS_ROLLBACKS = Counter(
    "btsguru_redis_rollbacks_total",
    "Times Redis was found behind what this process had written before (a failover lost "
    "acknowledged writes): `game` when a game's seq went back (its subscribers get "
    "game.snapshot), `quota` when an upstream budget counter did (restored from this "
    "process's own tokens, and a conservative budget for one window).", ["what"],
    registry=REGISTRY)
REDIS_MASTER_LOOKUP_FAILURES = Counter(
    "btsguru_redis_master_lookup_failures_total",
    "Sentinel lookups of the master that found none (sentinels unreachable, unknown master "
    "name, or the master down before a promotion).", registry=REGISTRY)

# Close codes (contract section 4, RFC 6455) to bounded disconnect reasons.
_CLOSE_REASONS = {1000: "normal", 1001: "going_away", 1009: "frame_too_large",
                  1011: "internal_error", 1012: "restart", 4001: "bad_key",
                  4003: "forbidden", 4008: "too_many_connections",
                  4009: "too_many_subscriptions", 4010: "too_slow", 4029: "rate_limited",
                  4100: "over_capacity"}


@lru_cache(maxsize=1024)
def http_series(handler: str, status: str) -> tuple[Any, Any]:
    """The `HTTP_REQUESTS` and `HTTP_LATENCY` children of one handler and status, bound
    once (`labels()` is a lookup under a lock: too dear for every request)."""
    return HTTP_REQUESTS.labels(handler, status), HTTP_LATENCY.labels(handler)


def disconnect_reason(code: int | None) -> str:
    """A bounded label for a close code (`peer` when the client went away)."""
    if code is None:
        return "peer"
    return _CLOSE_REASONS.get(code, "other")


def metric_names() -> set[str]:
    """Every sample name the registry can expose (with `_total`, `_bucket`, ... suffixes),
    for the tests that check dashboards and rules only name real metrics."""
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        for sample in metric.samples:
            names.add(sample.name)
        if metric.type == "histogram":
            names.update(metric.name + s for s in ("_bucket", "_sum", "_count"))
        if metric.type == "counter":
            names.add(metric.name + "_total")
    return names


def render() -> bytes:
    """The registry in Prometheus's text format."""
    return generate_latest(REGISTRY)


class Stopwatch:
    """Wall time of a block for a histogram; `time.perf_counter`, not the injected clock,
    since a duration measured on a fake clock would be meaningless."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
