"""Usage accounting: requests and cache hits per key, user, UTC day, UTC hour and route
kind, from the hot path to the database.

Beside the flow, in three stages:

1. `record` (every authenticated `/v1` request and stream connection) adds to an
   in-process buffer: no I/O on the request path.
2. `flush` (every `FLUSH_INTERVAL_S`) moves the buffer into Redis in one `MULTI`/`EXEC`
   round trip of `HINCRBY`s: one hash per user and UTC day (`{prefix}usage:{usage}:d:
   YYYYMMDD:<user_id>`) and one per user and UTC hour (`usage:{usage}:h:YYYYMMDDHH:
   <user_id>`), fields `<key_id>:<kind>:r` (requests) and `<key_id>:<kind>:c` (cache
   hits), plus a `v` field counting flushes, and the hash's name in the set
   `usage:{usage}:pending`. A failed flush puts the counts back for the next one. Redis
   names carry ids only.
3. `rollup` (every `ROLLUP_INTERVAL_S`, in every process: no leader) copies the
   pending hashes into `UsageDaily` and `UsageHourly`.

Why the rollup cannot double count: the Redis hashes hold the running TOTAL of each
counter for its day or hour, never a delta, and the rollup writes those totals with a
monotonic upsert (`requests = max(requests, total)`). Applying the same snapshot twice,
or two processes applying two snapshots in either order, leaves the same row: the
largest total, which is the true count. A hash leaves `usage:pending` once its day or
hour is over (plus `CLOSE_GRACE_S` for stragglers) and it was applied unchanged (its
`v` still the one read; a Lua check), but stays in Redis until `DAY_TTL_S`/`HOUR_TTL_S`
so a late flush still adds to the total rather than starting a new one. A database
outage only delays the rollup: nothing leaves Redis or the pending set until applied.

Redis Cluster: the flush's MULTI spans every user flushed and the pending set, and the
rollup's check-and-forget script the set and one hash, so the whole family shares one
hash tag, `{usage}` (one slot: a few small hashes per active user, written once a second
per process). Earlier versions named them without the tag (`usage:d:...`,
`usage:pending`); the rollup still applies those, each total summed with its tagged
counterpart of the same user and period (both are running totals of disjoint requests:
the old processes' and the new ones'), until the old pending set is empty, so an upgrade
neither loses nor undercounts a day.

Reading (`usage_for_user`, `usage_for_key`) merges the database rows with the Redis
totals the same way, `max` per (key, day, kind), so `GET /v1/usage` shows a request as
soon as it is flushed (within about a second), before any rollup.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import peewee

from btsguru.clock import Clock
from btsguru.db.models import ROUTE_KINDS, ApiKey, UsageDaily, UsageHourly
from btsguru.db.runner import DatabaseRunner
from btsguru.store.redis import Keys, RedisClient

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0  # the contract's 10 s bound for /v1/usage, with room to spare
ROLLUP_INTERVAL_S = 30.0  # the database copy is for history; reads merge Redis anyway
# A period's hash leaves the pending set this long after the period ends: a process
# flushes every second, so only one stalled for minutes could still add to it.
CLOSE_GRACE_S = 600
# Totals stay in Redis this long (the TTL is refreshed by every flush): the database
# can be down for days without losing a count, and a straggler still adds to a total.
HOUR_TTL_S = 3 * 86_400
DAY_TTL_S = 8 * 86_400
ROLLUP_BATCH = 500  # hashes read and applied per database transaction
MAX_USAGE_DAYS = 400
# The family's one Redis Cluster hash tag: the flush is one MULTI across users (module).
USAGE_TAG = "usage"

# KEYS[1]: pending set, KEYS[2]: the hash; ARGV[1]: the `v` read with the snapshot.
# Forget the hash only if no flush touched it since that snapshot was applied.
_FORGET_LUA = """
local v = redis.call('HGET', KEYS[2], 'v')
if v == false or v == ARGV[1] then
  redis.call('SREM', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class DayUsage:
    """One UTC day's usage: requests and cache hits, in total and by route kind."""

    day: date
    requests: int
    cache_hits: int
    by_kind: Mapping[str, int]
    cache_hits_by_kind: Mapping[str, int]

    def to_json(self) -> dict[str, object]:
        return {"date": self.day.isoformat(), "requests": self.requests,
                "cache_hits": self.cache_hits, "by_kind": dict(self.by_kind)}


@dataclass
class _Counts:
    requests: int = 0
    cache_hits: int = 0


# (key_id, day or hour, kind) -> (requests, cache hits)
_Totals = dict[tuple[int, str, str], tuple[int, int]]


@dataclass
class _Snapshot:
    """Pending hashes as read: their totals by period kind, and their `v` fields."""

    daily: _Totals = field(default_factory=dict)
    hourly: _Totals = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)


class UsageService:
    """Counts usage in-process, flushes it to Redis, rolls it up into the database."""

    def __init__(self, redis: RedisClient, keys: Keys, runner: DatabaseRunner,
                 clock: Clock, *, close_grace_s: float = CLOSE_GRACE_S) -> None:
        self._redis = redis
        self._keys = keys
        self._runner = runner
        self._clock = clock
        self._close_grace_s = close_grace_s
        # (user_id, key_id, hour "YYYYMMDDHH", kind) -> counts not yet in Redis
        self._buffer: dict[tuple[int, int, str, str], _Counts] = {}
        self._hour: tuple[int, str] = (-1, "")  # the current UTC hour: number, "YYYYMMDDHH"
        self._forget = redis.register_script(_FORGET_LUA)

    @property
    def pending_key(self) -> str:
        return self._keys.tagged("usage", USAGE_TAG, "pending")

    def day_hash(self, day: str, user_id: int) -> str:
        return self._keys.tagged("usage", USAGE_TAG, "d", day, user_id)

    def hour_hash(self, hour: str, user_id: int) -> str:
        return self._keys.tagged("usage", USAGE_TAG, "h", hour, user_id)

    @property
    def legacy_pending_key(self) -> str:
        """The pending set of versions before the hash tag (read until it is empty)."""
        return self._keys.key("usage", "pending")

    def _counterpart(self, name: str) -> str:
        """The same user and period's hash under the other naming (tagged <-> legacy)."""
        tagged = self._keys.tagged("usage", USAGE_TAG, "")
        if name.startswith(tagged):
            return self._keys.key("usage", name[len(tagged):])
        return tagged + name[len(self._keys.key("usage", "")):]

    # -- the hot path --

    def record(self, user_id: int, key_id: int, kind: str, *, cache_hit: bool = False) -> None:
        """Count one request (or stream connection) of `key_id`. No I/O."""
        if kind not in ROUTE_KINDS:
            kind = "other"
        hour_n = int(self._clock.time() // 3600)
        if hour_n != self._hour[0]:  # formatted once an hour, not per request
            self._hour = (hour_n, datetime.fromtimestamp(hour_n * 3600, UTC).strftime("%Y%m%d%H"))
        hour = self._hour[1]
        counts = self._buffer.get((user_id, key_id, hour, kind))
        if counts is None:
            counts = self._buffer[(user_id, key_id, hour, kind)] = _Counts()
        counts.requests += 1
        if cache_hit:
            counts.cache_hits += 1

    @property
    def buffered(self) -> int:
        """Requests counted in this process and not yet flushed."""
        return sum(c.requests for c in self._buffer.values())

    # -- stage 2: buffer -> Redis --

    async def flush(self) -> int:
        """Move the buffer into Redis in one atomic round trip; returns the number of
        requests moved. On failure the counts go back into the buffer and the error
        propagates."""
        if not self._buffer:
            return 0
        batch, self._buffer = self._buffer, {}
        pipe = self._redis.pipeline(transaction=True)
        touched: dict[str, int] = {}
        for (user_id, key_id, hour, kind), counts in batch.items():
            for name, ttl_s in ((self.day_hash(hour[:8], user_id), DAY_TTL_S),
                                (self.hour_hash(hour, user_id), HOUR_TTL_S)):
                pipe.hincrby(name, f"{key_id}:{kind}:r", counts.requests)
                if counts.cache_hits:
                    pipe.hincrby(name, f"{key_id}:{kind}:c", counts.cache_hits)
                touched[name] = ttl_s
        for name, ttl_s in touched.items():
            pipe.hincrby(name, "v", 1)
            pipe.expire(name, ttl_s)
        pipe.sadd(self.pending_key, *touched)
        try:
            await pipe.execute()
        except BaseException:
            self._merge_back(batch)
            raise
        return sum(c.requests for c in batch.values())

    def _merge_back(self, batch: dict[tuple[int, int, str, str], _Counts]) -> None:
        for key, counts in batch.items():
            mine = self._buffer.setdefault(key, _Counts())
            mine.requests += counts.requests
            mine.cache_hits += counts.cache_hits

    # -- stage 3: Redis -> database --

    async def rollup(self) -> int:
        """Apply every pending hash's totals to the database; returns how many hashes
        were applied. Safe to run in several processes at once (see the module)."""
        applied = 0
        legacy = await self._pending(self.legacy_pending_key)  # empty once upgraded
        for pending_key, names in ((self.pending_key, await self._pending(self.pending_key)),
                                   (self.legacy_pending_key, legacy)):
            for start in range(0, len(names), ROLLUP_BATCH):
                chunk = names[start:start + ROLLUP_BATCH]
                snapshot = await self._read(chunk, with_legacy=bool(legacy))
                await self._runner.write(_apply, snapshot.daily, snapshot.hourly)
                await self._forget_closed(pending_key, snapshot.versions)
                applied += len(chunk)
        return applied

    async def _pending(self, key: str) -> list[str]:
        return sorted(n.decode() if isinstance(n, bytes) else str(n)
                      for n in await self._redis.smembers(key))

    async def _read(self, names: list[str], *, with_legacy: bool = False) -> _Snapshot:
        """The totals of `names`; `with_legacy`: each summed with its counterpart under
        the other naming (an upgrade under way; see the module)."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
            if with_legacy:
                pipe.hgetall(self._counterpart(name))
        replies = await pipe.execute()
        step = 2 if with_legacy else 1
        snapshot = _Snapshot()
        for at, name in enumerate(names):
            fields = replies[at * step]
            period_kind, period = self._parse_name(name)
            totals = snapshot.daily if period_kind == "d" else snapshot.hourly
            for key_id, kind, requests, hits in _parse_fields(fields):
                totals[(key_id, period, kind)] = (requests, hits)
            if with_legacy:
                for key_id, kind, requests, hits in _parse_fields(replies[at * step + 1]):
                    mine = totals.get((key_id, period, kind), (0, 0))
                    totals[(key_id, period, kind)] = (mine[0] + requests, mine[1] + hits)
            raw_v = fields.get(b"v")
            snapshot.versions[name] = raw_v.decode() if raw_v is not None else None
        return snapshot

    def _parse_name(self, name: str) -> tuple[str, str]:
        # {prefix}usage:{usage}:{d|h}:{period}:{user_id}, or before the tag without it
        rest = name[len(self._keys.key("usage", "")):]
        tag = "{" + USAGE_TAG + "}:"
        parts = rest.removeprefix(tag).split(":")
        return parts[0], parts[1]

    async def _forget_closed(self, pending_key: str, versions: dict[str, str | None]) -> None:
        now = self._clock.time()
        for name, version in versions.items():
            period_kind, period = self._parse_name(name)
            if now < _period_end(period_kind, period) + self._close_grace_s:
                continue
            await self._forget(keys=[pending_key, name], args=[version or ""])

    # -- reading --

    async def usage_for_user(self, user_id: int, days: int = 30) -> list[DayUsage]:
        """The user's usage (all keys), one entry per UTC day for the last `days` days
        (today included), oldest first, zero-filled."""
        rows = await self._runner.read(_user_rows, user_id, self._first_day(days))
        return await self._merge(user_id, days, rows, key_ids=None)

    async def usage_for_key(self, key_id: int, days: int = 30) -> list[DayUsage]:
        """One key's usage, like `usage_for_user` (empty days for an unknown key)."""
        user_id, rows = await self._runner.read(_key_rows, key_id, self._first_day(days))
        if user_id is None:
            return _zero_days(self._today(), days)
        return await self._merge(user_id, days, rows, key_ids={key_id})

    def _today(self) -> date:
        return datetime.fromtimestamp(self._clock.time(), UTC).date()

    def _first_day(self, days: int) -> date:
        days = min(max(1, days), MAX_USAGE_DAYS)
        return self._today() - timedelta(days=days - 1)

    async def _merge(self, user_id: int, days: int, rows: _Totals,
                     key_ids: set[int] | None) -> list[DayUsage]:
        days = min(max(1, days), MAX_USAGE_DAYS)
        today = self._today()
        span = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for day in span:
            pipe.hgetall(self.day_hash(day.strftime("%Y%m%d"), user_id))
        replies = await pipe.execute()
        totals = dict(rows)
        for day, fields in zip(span, replies, strict=True):
            for key_id, kind, requests, hits in _parse_fields(fields):
                if key_ids is not None and key_id not in key_ids:
                    continue
                current = totals.get((key_id, day.isoformat(), kind), (0, 0))
                totals[(key_id, day.isoformat(), kind)] = (max(current[0], requests),
                                                           max(current[1], hits))
        by_day: dict[str, dict[str, list[int]]] = defaultdict(
            lambda: {kind: [0, 0] for kind in ROUTE_KINDS})
        for (_key_id, day_text, kind), (requests, hits) in totals.items():
            counts = by_day[day_text].setdefault(kind, [0, 0])
            counts[0] += requests
            counts[1] += hits
        result = []
        for day in span:
            kinds = by_day[day.isoformat()]
            result.append(DayUsage(
                day=day, requests=sum(c[0] for c in kinds.values()),
                cache_hits=sum(c[1] for c in kinds.values()),
                by_kind={kind: c[0] for kind, c in kinds.items()},
                cache_hits_by_kind={kind: c[1] for kind, c in kinds.items()}))
        return result


def _zero_days(today: date, days: int) -> list[DayUsage]:
    days = min(max(1, days), MAX_USAGE_DAYS)
    zero = dict.fromkeys(ROUTE_KINDS, 0)
    return [DayUsage(day=today - timedelta(days=n), requests=0, cache_hits=0,
                     by_kind=zero, cache_hits_by_kind=zero)
            for n in range(days - 1, -1, -1)]


def _parse_fields(fields: Mapping[bytes, bytes]) -> Iterable[tuple[int, str, int, int]]:
    """A usage hash's fields as (key_id, kind, requests, cache hits)."""
    counts: dict[tuple[int, str], list[int]] = {}
    for raw_name, raw_value in fields.items():
        parts = raw_name.decode().split(":")
        if len(parts) != 3 or parts[2] not in ("r", "c") or not parts[0].isdigit():
            continue  # `v`, or a field this version does not know
        entry = counts.setdefault((int(parts[0]), parts[1]), [0, 0])
        entry[0 if parts[2] == "r" else 1] = int(raw_value)
    return [(key_id, kind, c[0], c[1]) for (key_id, kind), c in counts.items()]


def _period_end(period_kind: str, period: str) -> float:
    if period_kind == "d":
        start = datetime.strptime(period, "%Y%m%d").replace(tzinfo=UTC)
        return (start + timedelta(days=1)).timestamp()
    start = datetime.strptime(period, "%Y%m%d%H").replace(tzinfo=UTC)
    return (start + timedelta(hours=1)).timestamp()


# -- in the database threads --

def _apply(daily: _Totals, hourly: _Totals) -> None:
    """Upsert the totals monotonically (`max`), skipping keys deleted since.

    Roll-ups of the same keys in two processes take turns: each first locks its keys'
    rows (FOR UPDATE, in id order) on the servers. Interleaved, their inserts of the same
    new rows can deadlock in InnoDB on the unique index's locks, and MariaDB rolls the
    victim back whole, savepoint included ("SAVEPOINT ... does not exist"); PostgreSQL
    only makes one wait. SQLite has no row locks: it locks the whole database for its
    writer."""
    wanted = {key_id for key_id, _, _ in daily} | {key_id for key_id, _, _ in hourly}
    if not wanted:
        return
    keys = ApiKey.select(ApiKey.id).where(ApiKey.id.in_(sorted(wanted))).order_by(ApiKey.id)
    db = ApiKey._meta.database
    if not isinstance(getattr(db, "obj", db), peewee.SqliteDatabase):  # the proxy's target
        keys = keys.for_update()
    existing = {row.id for row in keys}
    _upsert(UsageDaily, UsageDaily.day,
            {(k, datetime.strptime(p, "%Y%m%d").date(), kind): v
             for (k, p, kind), v in daily.items() if k in existing})
    _upsert(UsageHourly, UsageHourly.hour,
            {(k, datetime.strptime(p, "%Y%m%d%H"), kind): v
             for (k, p, kind), v in hourly.items() if k in existing})


def _upsert(model: type[UsageDaily] | type[UsageHourly], period_field: peewee.Field,
            totals: dict[tuple[int, date | datetime, str], tuple[int, int]]) -> None:
    if not totals:
        return
    periods = sorted({period for _, period, _ in totals})
    key_ids = sorted({key_id for key_id, _, _ in totals})
    current = {(_key_id(row), getattr(row, period_field.name), row.kind): row
               for row in model.select().where(period_field.in_(periods),
                                               model.key.in_(key_ids))}
    for (key_id, period, kind), (requests, hits) in totals.items():
        row = current.get((key_id, period, kind))
        if row is None:
            try:
                with model._meta.database.atomic():  # a savepoint: a racing insert is fine
                    model.insert({model.key: key_id, period_field: period, model.kind: kind,
                                  model.requests: requests,
                                  model.cache_hits: hits}).execute()
                continue
            except peewee.IntegrityError:
                pass  # another process inserted it first: raise it to our totals below
        elif row.requests >= requests and row.cache_hits >= hits:
            continue
        # Conditional, so a concurrent rollup holding an older snapshot never lowers it.
        model.update({
            model.requests: peewee.Case(None, [(model.requests < requests, requests)],
                                        model.requests),
            model.cache_hits: peewee.Case(None, [(model.cache_hits < hits, hits)],
                                          model.cache_hits),
        }).where(model.key == key_id, period_field == period, model.kind == kind).execute()


def _user_rows(user_id: int, first_day: date) -> _Totals:
    query = (UsageDaily.select(UsageDaily.key, UsageDaily.day, UsageDaily.kind,
                               UsageDaily.requests, UsageDaily.cache_hits)
             .join(ApiKey).where(ApiKey.user == user_id, UsageDaily.day >= first_day))
    totals = {(_key_id(row), _as_date(row.day).isoformat(), row.kind):
              (int(row.requests), int(row.cache_hits)) for row in query}
    return totals


def _key_rows(key_id: int, first_day: date) -> tuple[int | None, _Totals]:
    key = ApiKey.get_or_none(ApiKey.id == key_id)
    if key is None:
        return None, {}
    query = (UsageDaily.select(UsageDaily.key, UsageDaily.day, UsageDaily.kind,
                               UsageDaily.requests, UsageDaily.cache_hits)
             .where(UsageDaily.key == key_id, UsageDaily.day >= first_day))
    totals = {(_key_id(row), _as_date(row.day).isoformat(), row.kind):
              (int(row.requests), int(row.cache_hits)) for row in query}
    return int(key.user_id), totals


def _key_id(row: UsageDaily | UsageHourly) -> int:
    # the foreign key's raw id, without loading the ApiKey row (its attribute is named
    # for the column, `api_key_id`)
    return int(getattr(row, UsageDaily.key.object_id_name))


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
