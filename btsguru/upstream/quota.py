"""The cluster-wide upstream budget: how many requests each sport's host may still get.

Sits in front of every upstream request: `UpstreamClient.fetch` takes a token here before
each attempt, and nothing is sent without one. The budget lives in Redis (the `queue`
database, beside the pollers' state), so every process of the relay shares it, and each
check-and-take is one Lua script, so two processes can never together exceed a limit.

Per sport (the upstream counts each sport host separately), three limits apply together:
- the UTC day: `UPSTREAM_DAILY_QUOTA[_<SPORT>]` requests, a counter per date that expires
  after its day;
- any 60-second window: `UPSTREAM_MINUTE_QUOTA[_<SPORT>]` requests, a sliding log (a
  ZSET of token times) widened by `SEND_MARGIN_S` because a token is taken a moment
  before its request reaches the upstream;
- what the upstream's own headers say is left. A response's `remaining` counts the
  requests the upstream had seen up to that one, so a token's sequence number plus
  `remaining` is the highest sequence number the relay may reach (for the day, and for
  the next 60 s on the minute family); the newest report wins. A daily wall reported by
  the upstream (`mark_day_spent`) closes the day; a minute wall (`mark_minute_spent`)
  closes the window for 60 s.

User-driven requests (REST misses) may not use the last `day_reserve_fraction` of the
day, nor the last `minute_reserve_fraction` of the window: those are kept for the pollers,
so that a flood of misses cannot starve live data. Users never wait for a token; pollers
may (`wait_acquire`), sleeping on the injected clock.

Failovers (Sentinel, Cluster): replication is asynchronous, so a promoted replica may
have missed the last tokens, and a budget that went back would let the relay over the
upstream's quota. Each process keeps where a rollback shows: its own count of tokens
for the day (a field of its own in the day hash) and its tokens of the last window (each
a unique member of the window log). A take first checks that Redis still holds them; if
not, or when this process saw a failover, it puts its own tokens back (`restore`, one
script, idempotent), re-applies what the upstream last reported and any wall it hit, and
marks the sport's budget as failing over: every process's takes wait `SETTLE_S` (time
for the others to put theirs back too), and for one window the minute budget keeps
`CAREFUL_SHARE` of itself unused. What cannot come back is a token of a process that
died with the master; the upstream's own headers stay the floor for those.

Time is the injected clock's (the hosts of a cluster keep NTP time), not Redis' `TIME`,
so the windows are testable with a `FakeClock`. Every script's keys carry the sport as a
Redis Cluster hash tag, `{football}`, so they share a slot.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from btsguru import metrics
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.store.redis import RedisStores
from btsguru.upstream.quota_scripts import NOTE_SCRIPT, RESTORE_SCRIPT, TAKE_SCRIPT

log = logging.getLogger(__name__)

Purpose = Literal["poller", "user"]
QuotaLevel = Literal["ok", "warn80", "warn95", "spent"]

MINUTE_WINDOW_S = 60.0  # the upstream's per-minute limit holds in any 60-second window
# A token is taken a little before its request reaches the upstream (connect, TLS); the
# window the relay enforces is this much wider so that jitter in sending cannot put
# more than the limit into one of the upstream's 60-second windows.
SEND_MARGIN_S = 1.0
DAY_S = 86_400
# Day keys outlive their UTC day by this much, so that a process whose clock is a little
# behind still finds the day it is counting in, then they expire.
DAY_KEY_GRACE_S = 3_600
# The upstream's last report is kept this long for the ops view; a stale upstream limit
# must not bind forever.
UPSTREAM_REPORT_TTL_S = 2 * DAY_S
WARN_LEVELS: tuple[tuple[float, QuotaLevel], ...] = ((0.95, "warn95"), (0.80, "warn80"))
# A poller waiting for a token never sleeps less than this between tries (no busy loop).
MIN_WAIT_STEP_S = 0.01
# After a failover: no process takes a token for this long (the others put their lost
# tokens back meanwhile), then for one window this share of the minute budget (at least
# one request) stays unused.
SETTLE_S = 2.0
CAREFUL_SHARE = 0.1

@dataclass(frozen=True)
class RateLimitInfo:
    """What one upstream response's headers said (None: the header was absent)."""

    day_limit: int | None = None
    day_remaining: int | None = None
    minute_limit: int | None = None
    minute_remaining: int | None = None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.day_limit, self.day_remaining, self.minute_limit,
                                       self.minute_remaining))


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(str(raw).strip().split(",")[0])
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimitInfo:
    """Both header families from lower-cased response headers. The pair with "requests"
    in its name is the day, the pair without is the minute (API-SPORTS.md section 3)."""
    return RateLimitInfo(
        day_limit=_header_int(headers, "x-ratelimit-requests-limit"),
        day_remaining=_header_int(headers, "x-ratelimit-requests-remaining"),
        minute_limit=_header_int(headers, "x-ratelimit-limit"),
        minute_remaining=_header_int(headers, "x-ratelimit-remaining"))


@dataclass(frozen=True)
class QuotaToken:
    """Permission for one upstream request; its sequence numbers let `note_limits` line the
    upstream's `remaining` up with the requests the relay sent after this one."""

    sport: str
    day: str
    day_seq: int
    minute_seq: int
    taken_at: float
    day_left: int  # the day's budget left after this token (all purposes)


@dataclass(frozen=True)
class QuotaDecision:
    """The answer to one request for a token."""

    token: QuotaToken | None
    # ok | day | day_reserved | minute | minute_reserved | minute_spent
    reason: str
    retry_after_s: float
    day_left: int

    @property
    def window(self) -> Literal["day", "minute"]:
        return "day" if self.reason.startswith("day") else "minute"


@dataclass(frozen=True)
class QuotaState:
    """One sport's budget now, for `/v1/sports`, the ops view and the alerter."""

    sport: str
    day: str
    day_used: int
    day_limit: int
    day_remaining: int
    day_reserve: int
    minute_used: int
    minute_limit: int
    minute_remaining: int
    level: QuotaLevel
    day_spent: bool
    minute_blocked_s: float
    upstream_day_limit: int | None
    upstream_day_remaining: int | None
    upstream_minute_limit: int | None
    upstream_minute_remaining: int | None
    upstream_noted_at: float | None


def utc_day(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_s))


def seconds_until_utc_midnight(epoch_s: float) -> float:
    return DAY_S - (epoch_s % DAY_S)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class QuotaGovernor:
    """The upstream budget of every process, kept in Redis (see the module docstring)."""

    def __init__(self, redis: RedisStores, config: Config, clock: Clock, *,
                 day_reserve_fraction: float = 0.2, minute_reserve_fraction: float = 0.2,
                 window_s: float = MINUTE_WINDOW_S + SEND_MARGIN_S) -> None:
        if not (0 <= day_reserve_fraction < 1 and 0 <= minute_reserve_fraction < 1):
            raise ValueError("quota reserve fractions must be in [0, 1)")
        self._stores = redis
        self._redis = redis.queue
        self._keys = redis.keys
        self._config = config
        self._clock = clock
        self.day_reserve_fraction = day_reserve_fraction
        self.minute_reserve_fraction = minute_reserve_fraction
        self.window_s = window_s
        self._take = self._redis.register_script(TAKE_SCRIPT)
        self._note = self._redis.register_script(NOTE_SCRIPT)
        self._restore = self._redis.register_script(RESTORE_SCRIPT)
        # What this process took and was told, where a rollback shows (see "Failovers"):
        # its field in the day hash, its tokens' members, its count per sport for the
        # day, its tokens of the last window, the highest sequence it saw, the last
        # upstream report and the walls it hit.
        self._field = f"p:{secrets.token_hex(6)}"
        self._members = itertools.count(1)
        self._own_day: dict[str, tuple[str, int]] = {}
        self._own_window: dict[str, deque[tuple[str, int]]] = {}
        self._seq_high: dict[str, int] = {}
        self._last_note: dict[str, tuple[list[str], list[Any]]] = {}
        self._walls: dict[str, tuple[str | None, int]] = {}  # spent day, minute block ms
        self._failovers_at = redis.failovers_seen()
        self._check: set[str] = set()  # sports to restore before their next take

    # -- keys --

    def _key(self, sport: str, *parts: str) -> str:
        # the sport is the Redis Cluster hash tag: one script, one slot
        return self._keys.tagged("quota", sport, *parts)

    def _day_key(self, sport: str, day: str) -> str:
        return self._key(sport, "day", day)

    def _day_ttl_s(self, now: float) -> int:
        # relative, not EXPIREAT: Redis' clock need not agree with the injected one
        return math.ceil(seconds_until_utc_midnight(now)) + DAY_KEY_GRACE_S

    def day_limit(self, sport: str) -> int:
        return self._config.upstream_daily_quota_for(sport)

    def minute_limit(self, sport: str) -> int:
        return self._config.upstream_minute_quota_for(sport)

    # -- taking tokens --

    async def try_acquire(self, sport: str, purpose: Purpose) -> QuotaDecision:
        """Atomically check every limit and take a token if all allow it; never waits."""
        now = self._clock.time()
        day = utc_day(now)
        failovers = self._stores.failovers_seen()
        if failovers != self._failovers_at:
            self._failovers_at = failovers
            self._check.update(self._own_day)
        if sport in self._check:
            await self.restore(sport, "a Redis failover")
        reply = await self._take_once(sport, purpose, now, day)
        if _text(reply[1]) == "rollback":
            await self.restore(sport, "tokens missing in Redis")
            reply = await self._take_once(sport, purpose, now, day)
        ok, reason = int(reply[0]), _text(reply[1])
        day_used, day_left = int(reply[3]), int(reply[4])
        if not ok:
            if reason.startswith("day"):
                wait_s = seconds_until_utc_midnight(now)
            else:
                wait_s = int(reply[2]) / 1000
            return QuotaDecision(None, reason, wait_s, day_left)
        day_limit = int(reply[9])
        if int(reply[8]):
            log.warning("upstream %s: 95%% of the day's quota used (%d of %d, %d left)",
                        sport, day_limit - day_left, day_limit, day_left)
        if int(reply[7]):
            log.warning("upstream %s: 80%% of the day's quota used (%d of %d, %d left)",
                        sport, day_limit - day_left, day_limit, day_left)
        token = QuotaToken(sport=sport, day=day, day_seq=day_used, minute_seq=int(reply[5]),
                           taken_at=now, day_left=day_left)
        self._seq_high[sport] = max(self._seq_high.get(sport, 0), token.minute_seq)
        return QuotaDecision(token, "ok", 0.0, day_left)

    async def _take_once(self, sport: str, purpose: Purpose, now: float, day: str) -> Any:
        now_ms = int(now * 1000)
        window = self._window(sport, now_ms)
        last_member, last_ms = window[-1] if window else ("", 0)
        member = f"{self._field[2:]}:{next(self._members)}"
        own_day, own = self._own_day.get(sport, (day, 0))
        minute_limit = self.minute_limit(sport)
        reply = await self._take(
            keys=[self._day_key(sport, day), self._key(sport, "window"),
                  self._key(sport, "seq"), self._key(sport, "minute_cap"),
                  self._key(sport, "minute_block"), self._key(sport, "upstream"),
                  self._key(sport, "failover")],
            args=[now_ms, self.day_limit(sport), minute_limit,
                  1 if purpose == "user" else 0, self.day_reserve_fraction,
                  self.minute_reserve_fraction, int(self.window_s * 1000),
                  self._day_ttl_s(now), member, self._field,
                  own if own_day == day else 0, last_member, last_ms,
                  max(1, math.ceil(minute_limit * CAREFUL_SHARE))])
        if int(reply[0]):
            self._own_day[sport] = (day, (own if own_day == day else 0) + 1)
            window.append((member, now_ms))
        return reply

    def _window(self, sport: str, now_ms: int) -> deque[tuple[str, int]]:
        """This process's tokens of `sport` still in the window."""
        window = self._own_window.setdefault(sport, deque())
        while window and window[0][1] <= now_ms - int(self.window_s * 1000):
            window.popleft()
        return window

    async def restore(self, sport: str, why: str) -> None:
        """Put back what this process took and was told of `sport`'s budget, where Redis
        lost it, and hold every process's takes a moment (see "Failovers"). Idempotent."""
        self._check.discard(sport)
        now = self._clock.time()
        now_ms, day = int(now * 1000), utc_day(now)
        window_ms = int(self.window_s * 1000)
        own_day, own = self._own_day.get(sport, (day, 0))
        pairs: list[Any] = []
        for member, at_ms in self._window(sport, now_ms):
            pairs += [member, at_ms]
        reply = await self._restore(
            keys=[self._day_key(sport, day), self._key(sport, "window"),
                  self._key(sport, "seq"), self._key(sport, "failover")],
            args=[now_ms, self._field, own if own_day == day else 0,
                  self._seq_high.get(sport, 0), now_ms + int(SETTLE_S * 1000),
                  now_ms + window_ms, window_ms, self._day_ttl_s(now), *pairs])
        lost_day, lost_window = int(reply[0]), int(reply[1])
        note = self._last_note.get(sport)
        if note is not None:
            await self._note(keys=note[0], args=note[1])
        spent_day, block_ms = self._walls.get(sport, (None, 0))
        if spent_day == day:
            await self._redis.hsetnx(self._day_key(sport, day), "spent", 1)
        if block_ms > now_ms:
            await self._redis.set(self._key(sport, "minute_block"), block_ms,
                                  px=block_ms - now_ms)
        if lost_day or lost_window:
            metrics.REDIS_ROLLBACKS.labels("quota").inc()
            log.warning("upstream %s budget: Redis lost %d of this process's tokens of the "
                        "day and %d of the last minute (%s); put back, and the budget is "
                        "held %.0f s then kept %d%% lower for a minute", sport, lost_day,
                        lost_window, why, SETTLE_S, CAREFUL_SHARE * 100)
        else:
            log.info("upstream %s budget checked after %s: nothing of this process's lost",
                     sport, why)

    async def acquire(self, sport: str, purpose: Purpose) -> bool:
        """Take a token now if the budget allows (atomic check-and-take)."""
        return (await self.try_acquire(sport, purpose)).token is not None

    async def wait_token(self, sport: str, timeout_s: float,
                         purpose: Purpose = "poller") -> QuotaDecision:
        """Take a token, sleeping on the clock until one frees, for at most `timeout_s`.
        Gives up at once when the budget cannot free in time (a spent day)."""
        deadline = self._clock.monotonic() + timeout_s
        while True:
            decision = await self.try_acquire(sport, purpose)
            if decision.token is not None:
                return decision
            left_s = deadline - self._clock.monotonic()
            if left_s <= 0 or decision.retry_after_s > left_s:
                return decision
            await self._clock.sleep(max(MIN_WAIT_STEP_S, decision.retry_after_s))

    async def wait_acquire(self, sport: str, timeout_s: float,
                           purpose: Purpose = "poller") -> bool:
        """`acquire` for pollers: True once a token is taken, False after `timeout_s`."""
        return (await self.wait_token(sport, timeout_s, purpose)).token is not None

    # -- what the upstream says --

    async def note_limits(self, sport: str, limits: RateLimitInfo,
                          token: QuotaToken | None = None) -> None:
        """Tighten the budget to what the upstream's headers report. `token` is the one the
        reporting request was sent with; without it, the report is taken as covering every
        token taken so far."""
        if limits.empty:
            return
        now = self._clock.time()
        day = token.day if token is not None else utc_day(now)

        def arg(value: int | None, positive: bool = False) -> str | int:
            if value is None or (positive and value <= 0):
                return ""
            return value

        keys = [self._day_key(sport, day), self._key(sport, "seq"),
                self._key(sport, "minute_cap"), self._key(sport, "upstream")]
        args: list[Any] = [
            int(now * 1000), arg(limits.day_limit, positive=True), arg(limits.day_remaining),
            arg(limits.minute_limit, positive=True), arg(limits.minute_remaining),
            token.day_seq if token is not None else "",
            token.minute_seq if token is not None else "",
            int(self.window_s * 1000), self._day_ttl_s(now), UPSTREAM_REPORT_TTL_S]
        self._last_note[sport] = (keys, args)  # told again after a failover
        await self._note(keys=keys, args=args)

    async def mark_day_spent(self, sport: str) -> None:
        """The upstream reported its daily wall: no more requests until 00:00 UTC."""
        now = self._clock.time()
        key = self._day_key(sport, utc_day(now))
        self._walls[sport] = (utc_day(now), self._walls.get(sport, (None, 0))[1])
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "spent", 1)
            pipe.expire(key, self._day_ttl_s(now))
            first, _ = await pipe.execute()
        if first:
            log.warning("upstream %s: the daily quota is spent; no requests until 00:00 UTC "
                        "(in %.0f min)", sport, seconds_until_utc_midnight(now) / 60)

    async def mark_minute_spent(self, sport: str) -> None:
        """The upstream reported its per-minute wall: nothing for one window."""
        window_ms = int(self.window_s * 1000)
        until_ms = int(self._clock.time() * 1000) + window_ms
        self._walls[sport] = (self._walls.get(sport, (None, 0))[0], until_ms)
        await self._redis.set(self._key(sport, "minute_block"), until_ms, px=window_ms)
        log.warning("upstream %s: the per-minute limit was hit; pausing for %.0f s",
                    sport, self.window_s)

    # -- reading --

    async def snapshot(self, sport: str) -> QuotaState:
        now = self._clock.time()
        day = utc_day(now)
        window_ms = int(self.window_s * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._day_key(sport, day))
            pipe.zcount(self._key(sport, "window"), f"({int(now * 1000) - window_ms}", "+inf")
            pipe.get(self._key(sport, "seq"))
            pipe.hgetall(self._key(sport, "minute_cap"))
            pipe.get(self._key(sport, "minute_block"))
            pipe.hgetall(self._key(sport, "upstream"))
            day_hash, minute_used, seq, cap, block_until, upstream = await pipe.execute()
        day_hash, cap, upstream = _decoded(day_hash), _decoded(cap), _decoded(upstream)

        up_day_limit = _int(upstream.get("day_limit"))
        up_minute_limit = _int(upstream.get("minute_limit"))
        day_limit = min(self.day_limit(sport), up_day_limit or self.day_limit(sport))
        minute_limit = min(self.minute_limit(sport),
                           up_minute_limit or self.minute_limit(sport))
        day_used = _int(day_hash.get("used")) or 0
        day_remaining = day_limit - day_used
        if (day_cap := _int(day_hash.get("cap"))) is not None:
            day_remaining = min(day_remaining, day_cap - day_used)
        day_spent = "spent" in day_hash
        if day_spent:
            day_remaining = 0
        day_remaining = max(0, day_remaining)
        minute_remaining = minute_limit - int(minute_used)
        minute_cap = _int(cap.get("total"))
        if minute_cap is not None and (_int(cap.get("until")) or 0) > now * 1000:
            minute_remaining = min(minute_remaining, minute_cap - (_int(seq) or 0))
        minute_blocked_s = max(0.0, (_int(block_until) or 0) / 1000 - now)
        if minute_blocked_s:
            minute_remaining = 0

        consumed = day_limit - day_remaining
        level: QuotaLevel = "ok"
        if day_remaining <= 0:
            level = "spent"
        else:
            for share, name in WARN_LEVELS:
                if consumed >= day_limit * share:
                    level = name
                    break
        noted_at = _int(upstream.get("noted_at"))
        return QuotaState(
            sport=sport, day=day, day_used=day_used, day_limit=day_limit,
            day_remaining=day_remaining,
            day_reserve=math.floor(day_limit * self.day_reserve_fraction),
            minute_used=int(minute_used), minute_limit=minute_limit,
            minute_remaining=max(0, minute_remaining), level=level, day_spent=day_spent,
            minute_blocked_s=minute_blocked_s, upstream_day_limit=up_day_limit,
            upstream_day_remaining=_int(upstream.get("day_remaining")),
            upstream_minute_limit=up_minute_limit,
            upstream_minute_remaining=_int(upstream.get("minute_remaining")),
            upstream_noted_at=noted_at / 1000 if noted_at is not None else None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}
