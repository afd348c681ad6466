"""Cluster-wide time series for the operators' page: the last hour by minute, the last day
by quarter hour, summed over every process and host.

Where it sits: beside the flow, at the bottom of the store layer. The stages that already
count what they do tell this process's `SeriesRecorder` as well: the upstream client
(requests sent, per sport), the raw proxy's cache (hits and lookups), the games store
(change events published, per sport), the pollers' scheduler (failed runs, per sport) and
the hub (change -> client latency; stream connections per transport, sampled). Recording
is an in-process increment (no I/O, no clock read); a background task flushes the batch
every `FLUSH_INTERVAL_S` in one script call, so the hot paths never wait on Redis. A
failed flush keeps its counts for the next one. `console.timeline` reads and draws them.

Redis layout (the `data` database, under the key prefix; the `{series}` hash tag keeps
both rings in one Redis Cluster slot, so one script writes both):

- `series:{series}:m:{slot}`: the minute ring, slot = minute index % 64. A hash:
  `@` the minute index the slot holds now (a writer that finds an older index empties the
  slot first; a write older than what the slot holds is dropped), counters `up:{sport}`
  (upstream requests sent), `ev:{sport}` (change events published), `pf:{sport}` (failed
  poller runs), `cache:hit` and `cache:all` (raw cache hits and lookups), `lat:{bin}`
  (change -> client latency histogram, fixed bins `LATENCY_BOUNDS_MS` summed across
  processes), and per process `g:{transport}:{process}` (its peak connections in the
  minute) and `t:{process}` (its last sample's time).
- `series:{series}:q:{slot}`: the same for quarter hours, slot = quarter index % 100:
  the 24 h roll-up, written by the same flush (counts and bins add up; gauges keep the
  peak of the process's samples).

Memory bound: at most `MAX_KEYS` (164) keys whatever the clock does, each with at most
`max_fields(sports, processes)` fields: 1 + 3 per sport + 2 + 14 latency bins + 4 per
process that flushed within the bucket's span (a minute, or a quarter hour). With five
sports and ten processes that is 72 small fields per hash (a listpack of a few KB), under
half a megabyte in all. Every key also expires (`ttl_s`, refreshed by each write) once
the whole cluster stops writing.

A gauge is summed from the processes' samples at read time; in the current bucket a
process whose last sample is older than `GAUGE_STALE_S` (three missed flushes: it died)
no longer counts. Buckets are assigned at flush time, so a count may land up to one flush
interval late; sample times and bucket indexes come from the writers' clocks (NTP keeps
hosts within far less than a step).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from btsguru.clock import Clock
from btsguru.lifecycle import cancel_tasks
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

# "Every few seconds": a Redis call per process every 5 s costs nothing, and a chart
# refreshed every 10 s is never more than one flush behind.
FLUSH_INTERVAL_S = 5.0
GAUGE_STALE_S = 3 * FLUSH_INTERVAL_S  # three missed flushes: that process has gone
# Upper bounds (ms) of the latency bins, plus an overflow bin: in-process delivery takes
# about a millisecond, a loaded hub tens, a stalled one seconds.
LATENCY_BOUNDS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
                                        5000, 10000)
LATENCY_BINS = len(LATENCY_BOUNDS_MS) + 1
TRANSPORTS = ("ws", "sse", "pusher")  # the hub's connection kinds, a fixed set
CACHE_HIT, CACHE_ALL = "cache:hit", "cache:all"


@dataclass(frozen=True)
class Resolution:
    name: str  # the key part
    step_s: int
    slots: int  # the ring's size: the longest window read plus a margin for clock skew
    ttl_s: int  # a ring the cluster stopped writing expires after this


MINUTES = Resolution("m", 60, 64, 2 * 3600)
QUARTERS = Resolution("q", 900, 100, 26 * 3600)
MAX_KEYS = MINUTES.slots + QUARTERS.slots


def max_fields(sports: int, processes: int) -> int:
    """The most fields a bucket hash holds (see the module docstring)."""
    return 1 + 3 * sports + 2 + LATENCY_BINS + processes * (len(TRANSPORTS) + 1)


@dataclass(frozen=True)
class Window:
    name: str
    label: str
    resolution: Resolution
    points: int  # buckets read, the current (partial) one last

    def __post_init__(self) -> None:
        if self.points >= self.resolution.slots:
            raise ValueError(f"window {self.name} does not fit in its ring")


WINDOWS = {"1h": Window("1h", "Last hour", MINUTES, 61),
           "24h": Window("24h", "Last 24 hours", QUARTERS, 97)}


def latency_bin(latency_ms: float) -> int:
    """The bin of a latency: bin i holds (LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]]."""
    return bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def percentile(bins: Sequence[int], q: float) -> float | None:
    """The `q` quantile (0 < q <= 1) of a latency histogram, interpolated within its bin
    as Prometheus' `histogram_quantile` does (the overflow bin answers with the last
    bound); None when the histogram is empty."""
    total = sum(bins)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(bins):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                break
            lower = 0.0 if index == 0 else LATENCY_BOUNDS_MS[index - 1]
            return lower + (LATENCY_BOUNDS_MS[index] - lower) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


@dataclass(frozen=True)
class Bucket:
    """One step of a window, summed over every process."""

    start: float  # epoch seconds
    covered_s: float  # how much of the step has passed (less than a step: the current one)
    seen: bool  # some process flushed in it (False: no data, not zero)
    counts: Mapping[str, int] = field(default_factory=dict)
    connections: Mapping[str, int] = field(default_factory=dict)  # transport -> sum
    latency: tuple[int, ...] = (0,) * LATENCY_BINS

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    def per_minute(self, name: str) -> float | None:
        """The counter as a rate per minute over the part of the step that has passed."""
        if not self.seen:
            return None
        return self.count(name) * 60 / max(60.0, self.covered_s)

    def hit_rate(self) -> float | None:
        lookups = self.count(CACHE_ALL)
        return self.count(CACHE_HIT) / lookups if self.seen and lookups else None

    def latency_ms(self, q: float) -> float | None:
        return percentile(self.latency, q) if self.seen else None

    def connection_count(self, transport: str) -> int | None:
        return self.connections.get(transport, 0) if self.seen else None


# KEYS: the minute bucket, the quarter bucket
# ARGV: 1 minute index, 2 quarter index, 3 minute TTL s, 4 quarter TTL s, 5 process id,
#       6 sample time (s), 7 n counters, then n (field, increment) pairs, then
#       (transport, connections) pairs
_WRITE_SCRIPT = """
local n = tonumber(ARGV[7])
local written = 0
for k = 1, 2 do
  local key, index = KEYS[k], tonumber(ARGV[k])
  local held = tonumber(redis.call('HGET', key, '@') or '-1')
  if held <= index then
    if held < index then
      redis.call('DEL', key)
      redis.call('HSET', key, '@', index)
    end
    for i = 8, 7 + 2 * n, 2 do
      redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    end
    for i = 8 + 2 * n, #ARGV, 2 do
      local name = 'g:' .. ARGV[i] .. ':' .. ARGV[5]
      local old = redis.call('HGET', key, name)
      if not old or tonumber(ARGV[i + 1]) > tonumber(old) then
        redis.call('HSET', key, name, ARGV[i + 1])
      end
    end
    redis.call('HSET', key, 't:' .. ARGV[5], ARGV[6])
    redis.call('EXPIRE', key, ARGV[2 + k])
    written = written + 1
  end
end
return written
"""


class SeriesStore:
    """The rings in Redis: one script call per flush, one pipeline per read."""

    def __init__(self, redis: RedisStores) -> None:
        self._redis = redis.data
        self._keys = redis.keys
        self._write = self._redis.register_script(_WRITE_SCRIPT)

    def key(self, resolution: Resolution, index: int) -> str:
        return self._keys.tagged("series", "series", resolution.name,
                                 index % resolution.slots)

    def pattern(self) -> str:
        """Every key of the rings (for tests and operators: `redis-cli --scan`)."""
        return self._keys.tagged("series", "series", "*")

    async def write(self, now: float, process_id: str, counts: Mapping[str, int],
                    connections: Mapping[str, int]) -> None:
        minute, quarter = int(now // MINUTES.step_s), int(now // QUARTERS.step_s)
        args: list[str | int] = [minute, quarter, MINUTES.ttl_s, QUARTERS.ttl_s, process_id,
                                 int(now), len(counts)]
        for pairs in (counts, connections):
            for name, value in pairs.items():
                args.extend((name, int(value)))
        await self._write(keys=[self.key(MINUTES, minute), self.key(QUARTERS, quarter)],
                          args=args)

    async def read(self, window: Window, now: float) -> list[Bucket]:
        """The window's buckets, oldest first; the last one is the current step."""
        res = window.resolution
        current = int(now // res.step_s)
        indexes = range(current - window.points + 1, current + 1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.hgetall(self.key(res, index))
            replies = await pipe.execute()
        return [_bucket(index, res, now, index == current, raw)
                for index, raw in zip(indexes, replies, strict=True)]


def _bucket(index: int, res: Resolution, now: float, current: bool,
            raw: Mapping[bytes, bytes]) -> Bucket:
    start = float(index * res.step_s)
    covered = min(float(res.step_s), now - start) if current else float(res.step_s)
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    if fields.get("@") != str(index):
        return Bucket(start, covered, seen=False)
    counts: dict[str, int] = {}
    latency = [0] * LATENCY_BINS
    samples: dict[str, dict[str, int]] = {}  # process -> transport -> peak
    sampled_at: dict[str, float] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition(":")
        if kind == "lat" and rest.isdigit() and int(rest) < LATENCY_BINS:
            latency[int(rest)] += int(value)
        elif kind == "g":
            transport, _, process = rest.partition(":")
            samples.setdefault(process, {})[transport] = int(value)
        elif kind == "t":
            sampled_at[rest] = float(value)
        elif kind != "@":
            counts[name] = int(value)
    connections = dict.fromkeys(TRANSPORTS, 0)
    for process, by_transport in samples.items():
        if current and sampled_at.get(process, 0.0) < now - GAUGE_STALE_S:
            continue  # it stopped sampling: gone
        for transport, peak in by_transport.items():
            connections[transport] = connections.get(transport, 0) + peak
    return Bucket(start, covered, seen=True, counts=counts, connections=connections,
                  latency=tuple(latency))


class SeriesRecorder:
    """This process's side: counts in memory, flushed every `flush_interval_s`.

    The recording methods are each a dict or list increment, safe on any hot path; they
    never raise and never touch Redis. `start()` runs the flush loop (long-running
    commands); `close()` stops it and flushes what is left, if anything.
    """

    def __init__(self, store: SeriesStore, clock: Clock, *, process_id: str | None = None,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._store = store
        self._clock = clock
        self.process_id = process_id or \
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._interval_s = flush_interval_s
        self._upstream: dict[str, int] = {}
        self._events: dict[str, int] = {}
        self._poll_failures: dict[str, int] = {}
        self._cache_hits = 0
        self._cache_lookups = 0
        self._latency = [0] * LATENCY_BINS
        self._unsent: dict[str, int] = {}  # a failed flush's counts, for the next one
        self._connections: Callable[[], Mapping[str, int]] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- recording: the hot paths --

    def upstream_request(self, sport: str) -> None:
        self._upstream[sport] = self._upstream.get(sport, 0) + 1

    def cache_lookup(self, hit: bool) -> None:
        self._cache_lookups += 1
        if hit:
            self._cache_hits += 1

    def events_published(self, sport: str, count: int) -> None:
        self._events[sport] = self._events.get(sport, 0) + count

    def poll_failed(self, sport: str) -> None:
        self._poll_failures[sport] = self._poll_failures.get(sport, 0) + 1

    def delivered(self, latency_ms: float) -> None:
        """One event handed to its subscribers' connections `latency_ms` after it was
        stored (negative values, from clock skew, count as the fastest bin)."""
        self._latency[bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1

    def watch_connections(self, source: Callable[[], Mapping[str, int]]) -> None:
        """Sample `source()` (open connections by transport) at each flush."""
        self._connections = source

    # -- flushing --

    def pending(self) -> bool:
        return bool(self._unsent or self._upstream or self._events or self._poll_failures
                     or self._cache_lookups or any(self._latency))

    def _take(self) -> dict[str, int]:
        counts, self._unsent = self._unsent, {}

        def add(name: str, value: int) -> None:
            if value:
                counts[name] = counts.get(name, 0) + value

        for prefix, by_sport in (("up", self._upstream), ("ev", self._events),
                                 ("pf", self._poll_failures)):
            for sport, value in by_sport.items():
                add(f"{prefix}:{sport}", value)
        add(CACHE_HIT, self._cache_hits)
        add(CACHE_ALL, self._cache_lookups)
        for index, value in enumerate(self._latency):
            add(f"lat:{index}", value)
        self._upstream, self._events, self._poll_failures = {}, {}, {}
        self._cache_hits = self._cache_lookups = 0
        self._latency = [0] * LATENCY_BINS
        return counts

    def _sample(self) -> dict[str, int]:
        if self._connections is None:
            return {}
        seen = self._connections()
        return {transport: int(seen.get(transport, 0)) for transport in TRANSPORTS}

    async def flush(self) -> bool:
        """Write what was recorded since the last flush; False (counts kept) when Redis
        did not take it."""
        counts = self._take()
        try:
            await self._store.write(self._clock.time(), self.process_id, counts,
                                    self._sample())
        except (RedisError, OSError) as exc:
            for name, value in counts.items():
                self._unsent[name] = self._unsent.get(name, 0) + value
            log.warning("series: flush failed, %d counters kept for the next: %s",
                        len(counts), exc)
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_forever(), name="btsguru-series")

    async def _flush_forever(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the series for good
                log.exception("series: flush crashed")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_tasks([task], owner="series")
        if self.pending():  # a one-shot command's upstream requests count too
            await self.flush()
