"""Unusual-access counters: what the alerter needs to see from the hot path, kept cheap.

Beside the flow, fed by the `/v1` handlers and `AccessService.limit`, read by
`btsguru.alerts`. Recording is in-process and does no I/O (a dict update); `flush`
moves the counts to Redis in one pipelined round trip, from the same background loop
that flushes usage (about once a second per process), so a request costs nothing more
than it did. Three signals:

- failed authentication per client address and UTC minute
  (`<prefix>watch:m:<minute>`, field `authfail:<address>`);
- distinct raw-proxy misses per key and UTC minute (same hash, field
  `busting:<key_id>:<key_prefix>`): a key that keeps asking for things nobody asked for
  before — a random query parameter per request — defeats the cache and spends the
  upstream quota. Each process counts the distinct misses it saw and the hash sums the
  processes: the same miss seen by two processes counts twice, which only happens for
  the first request of a cold entry and does not make an honest key look like a buster;
- users past `QUOTA_NOTICE` of their tier's daily quota (`<prefix>watch:quota:<day>`,
  field `<user_id>`, JSON with the latest count seen), from the rate limiter's answer
  that the request already waited for.

Minute hashes live for `MINUTE_TTL_S`; the quota hash for two days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from btsguru.clock import Clock
from btsguru.store.redis import Keys, RedisClient

log = logging.getLogger(__name__)

QUOTA_NOTICE = 0.80  # the issue: a user nearing their tier's daily quota at 80%
MINUTE_TTL_S = 600  # the alerter reads the last complete minute; a few spare
QUOTA_TTL_S = 2 * 86_400
# A key's distinct misses are tracked up to this many per minute: enough to cross any
# sensible alert threshold, bounded so a buster cannot grow this process's memory.
MAX_DISTINCT_TRACKED = 10_000


@dataclass(frozen=True)
class QuotaNotice:
    user_id: int
    tier: str
    used: int
    quota: int


def minute_of(epoch_s: float) -> int:
    return int(epoch_s // 60)


class AccessWatch:
    """In-process counts of unusual access, flushed to Redis in one round trip."""

    def __init__(self, redis: RedisClient, keys: Keys, clock: Clock) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._auth_failures: dict[tuple[int, str], int] = {}  # (minute, address) -> count
        # (minute, key_id, key_prefix) -> the distinct misses' identities this minute
        self._misses: dict[tuple[int, int, str], set[str]] = {}
        self._flushed_misses: dict[tuple[int, int, str], int] = {}  # already in Redis
        self._quota: dict[int, QuotaNotice] = {}

    def minute_key(self, minute: int) -> str:
        return self._keys.key("watch", "m", minute)

    def quota_key(self, day: str) -> str:
        return self._keys.key("watch", "quota", day)

    # -- the hot path: no I/O --

    def auth_failed(self, address: str) -> None:
        slot = (minute_of(self._clock.time()), address)
        self._auth_failures[slot] = self._auth_failures.get(slot, 0) + 1

    def raw_miss(self, key_id: int, key_prefix: str, identity: str) -> None:
        """A raw-proxy request of `key_id` that missed the cache; `identity` names what
        was asked (endpoint and normalized query)."""
        seen = self._misses.setdefault((minute_of(self._clock.time()), key_id, key_prefix),
                                       set())
        if len(seen) < MAX_DISTINCT_TRACKED:
            seen.add(identity)

    def quota_used(self, user_id: int, tier: str, used: int, quota: int | None) -> None:
        """The rate limiter's count of the user's requests today, when it is high."""
        if quota and used >= QUOTA_NOTICE * quota:
            self._quota[user_id] = QuotaNotice(user_id, tier, used, quota)

    # -- the background flush --

    async def flush(self) -> None:
        """Move the counts to Redis (one pipelined round trip, nothing when idle). On
        failure the counts are kept for the next flush and the error propagates."""
        now_minute = minute_of(self._clock.time())
        auth, self._auth_failures = self._auth_failures, {}
        quota, self._quota = self._quota, {}
        misses = {slot: len(seen) - self._flushed_misses.get(slot, 0)
                  for slot, seen in self._misses.items()}
        misses = {slot: n for slot, n in misses.items() if n > 0}
        if not (auth or quota or misses):
            self._forget_old(now_minute)
            return
        pipe = self._redis.pipeline(transaction=False)
        minutes: set[int] = set()
        for (minute, address), count in auth.items():
            pipe.hincrby(self.minute_key(minute), f"authfail:{address}", count)
            minutes.add(minute)
        for (minute, key_id, prefix), count in misses.items():
            pipe.hincrby(self.minute_key(minute), f"busting:{key_id}:{prefix}", count)
            minutes.add(minute)
        for minute in minutes:
            pipe.expire(self.minute_key(minute), MINUTE_TTL_S)
        if quota:
            day = datetime.fromtimestamp(self._clock.time(), UTC).strftime("%Y%m%d")
            pipe.hset(self.quota_key(day), mapping={
                str(n.user_id): orjson.dumps({"tier": n.tier, "used": n.used, "quota": n.quota})
                for n in quota.values()})
            pipe.expire(self.quota_key(day), QUOTA_TTL_S)
        try:
            await pipe.execute()
        except BaseException:
            for slot, count in auth.items():
                self._auth_failures[slot] = self._auth_failures.get(slot, 0) + count
            for user_id, notice in quota.items():
                self._quota.setdefault(user_id, notice)
            raise
        for miss_slot, count in misses.items():
            self._flushed_misses[miss_slot] = self._flushed_misses.get(miss_slot, 0) + count
        self._forget_old(now_minute)

    def _forget_old(self, now_minute: int) -> None:
        # a minute's distinct set is needed only while that minute can still see misses
        for slot in [s for s in self._misses if s[0] < now_minute]:
            del self._misses[slot]
            self._flushed_misses.pop(slot, None)

    # -- reading, for the alerter --

    async def minute_counts(self, minute: int) -> dict[str, int]:
        raw = await self._redis.hgetall(self.minute_key(minute))
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v)
                for k, v in raw.items()}

    async def quota_notices(self) -> list[QuotaNotice]:
        day = datetime.fromtimestamp(self._clock.time(), UTC).strftime("%Y%m%d")
        raw = await self._redis.hgetall(self.quota_key(day))
        notices = []
        for user_id, blob in raw.items():
            fields = orjson.loads(blob)
            notices.append(QuotaNotice(int(user_id), fields["tier"], int(fields["used"]),
                                       int(fields["quota"])))
        return sorted(notices, key=lambda n: n.user_id)
