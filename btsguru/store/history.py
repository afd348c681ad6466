"""The per-sport event history: what a reconnecting client missed, and the public event ids.

Where it sits: store + bus. The store appends every event it numbers to its sport's
Redis Stream in the same Lua script that stores the game and publishes the event
(`store.games`); the hub reads it back here to replay what a client missed (SSE
`Last-Event-ID`, native `since`, Pusher clients that come back). The stream entry's id
(`1723836667000-0`) is the event's public id on every transport.

Guarantees:
- Order: a stream is totally ordered, and ids increase. The script that appends a game's
  events also allocates their `seq`, so per game the history order is `seq` order, across
  every process sharing the Redis.
- Retention: every entry younger than `HISTORY_RETENTION_S` (15 min, against the
  contract's 10-minute window) is kept: appends trim with `MINID ~`, which only ever
  removes entries older than the threshold, and whole listpack nodes at a time (cheap).
  Memory is bounded by time, and by `HISTORY_MAX_ENTRIES` per sport as a backstop
  against a runaway publisher; should that cap ever cut into the window, `read_after`
  sees it and answers None, so clients get a snapshot rather than a silent gap.
- Replay: `read_after(id)` returns every entry after `id`, exactly once, in order, when
  `id` is still in the stream; None when it is older than the oldest entry (the caller
  sends `game.snapshot` instead). An id we cannot vouch for (an empty stream after a
  Redis flush) is also None: a snapshot is always correct, a replay only when complete.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from btsguru.store.bus import Bus, BusEvent, covers, parse_channel
from btsguru.store.redis import Keys, RedisStores

HISTORY_RETENTION_S = 15 * 60  # the contract's window is 10 min; 5 min of margin
# the window as users read it, in the docs, the landing page and the README (a test
# holds the README to it)
HISTORY_WINDOW_TEXT = f"{HISTORY_RETENTION_S // 60} minutes"
HISTORY_MAX_ENTRIES = 100_000  # per sport: hours of a busy Saturday; only a runaway hits it
READ_BATCH = 1000  # entries per XRANGE call while replaying

# ASCII digits only, and nothing after them (`$` would allow a line break): anything
# else Redis refuses, and a client's id must fail here, not as a Redis error
STREAM_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}\Z", re.ASCII)

# Appends one event and publishes it; `append_event(...)` is a Lua function that the
# scripts of `store.games` and `EventHistory.append` both include. The published message
# is `bus.encode_message`'s format, built here because the id exists only after XADD.
# `targets` is `Bus.redis_targets`: the command, then the channels, one a line ('' = not
# published here); on Cluster the command is SPUBLISH and every channel carries the
# script's `{sport}` hash tag, so the script stays in its one slot.
APPEND_LUA = """
local function append_event(stream, sport, event, channel, league, game, seq, data, targets)
  local id = redis.call('XADD', stream, '*', 'event', event, 'channel', channel,
                        'sport', sport, 'league', league, 'game', game, 'seq', seq,
                        'data', data)
  if targets ~= '' then
    local message = id .. '\\n' .. event .. '\\n' .. channel .. '\\n' .. data
    local command = nil
    for line in string.gmatch(targets, '[^\\n]+') do
      if command == nil then command = line else redis.call(command, line, message) end
    end
  end
  return id
end

local function trim_history(stream, last_id, retention_ms, max_entries)
  local ms = tonumber(string.match(last_id, '^(%d+)-'))
  redis.call('XTRIM', stream, 'MINID', '~', tostring(ms - retention_ms))
  redis.call('XTRIM', stream, 'MAXLEN', '~', max_entries)
end
"""

_APPEND_SCRIPT = APPEND_LUA + """
local id = append_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '', ARGV[6],
                        ARGV[7])
trim_history(KEYS[1], id, tonumber(ARGV[8]), tonumber(ARGV[9]))
return id
"""


def history_key(keys: Keys, sport: str) -> str:
    # the sport is the Redis Cluster hash tag: a sport's game keys, seq counters, indexes
    # and stream share one slot, so one script can touch them all (see `store.games`)
    return keys.tagged("history", sport)


def parse_stream_id(value: str) -> tuple[int, int]:
    """`"ms-seq"` as a comparable pair; ValueError for anything else."""
    if not STREAM_ID_RE.match(value):
        raise ValueError(f"not an event id: {value!r}")
    ms, seq = value.split("-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class HistoryEvent:
    id: str
    event: str
    channel: str  # the public channel it was published on
    sport: str
    league_id: int | None
    game_id: int | None
    seq: int | None  # None for events published by others (the Pusher HTTP API)
    data_json: bytes

    @cached_property
    def data(self) -> Any:
        return orjson.loads(self.data_json)

    def to_bus_event(self) -> BusEvent:
        return BusEvent(id=self.id, event=self.event, channel=self.channel,
                        data_json=self.data_json)


class EventHistory:
    """Reads (and, for events that are not game changes, writes) the per-sport streams
    on the `reverb` database."""

    def __init__(self, redis: RedisStores, bus: Bus | None = None) -> None:
        self._redis = redis.reverb
        self._keys = redis.keys
        self._bus = bus
        self._append = self._redis.register_script(_APPEND_SCRIPT)

    async def read_after(self, sport: str, after_id: str, *,
                         game_ids: Collection[int] | None = None,
                         league_ids: Collection[int] | None = None,
                         ) -> list[HistoryEvent] | None:
        """The events after `after_id`, oldest first, optionally only those of some games
        or leagues; None when `after_id` is older than the window. ValueError for an id
        that is not an event id."""
        after = parse_stream_id(after_id)
        key = history_key(self._keys, sport)
        # one snapshot of "oldest entry" and the first batch, so a trim between the two
        # cannot hide a gap
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xrange(key, "-", "+", count=1)
            pipe.xrange(key, "(" + after_id, "+", count=READ_BATCH)
            first, batch = await pipe.execute()
        if not first or after < parse_stream_id(_text(first[0][0])):
            return None
        out: list[HistoryEvent] = []
        while True:
            for raw_id, fields in batch:
                event = _entry(sport, _text(raw_id), fields)
                if game_ids is not None and event.game_id not in game_ids:
                    continue
                if league_ids is not None and event.league_id not in league_ids:
                    continue
                out.append(event)
            if len(batch) < READ_BATCH:
                return out
            batch = await self._redis.xrange(key, "(" + _text(batch[-1][0]), "+",
                                             count=READ_BATCH)

    async def window_start(self, sport: str) -> str | None:
        """The id of the oldest event still replayable (None: no history yet)."""
        first = await self._redis.xrange(history_key(self._keys, sport), "-", "+", count=1)
        return _text(first[0][0]) if first else None

    async def last_id(self, sport: str) -> str | None:
        """The id of the newest event: where a new subscriber's replay would start."""
        last = await self._redis.xrevrange(history_key(self._keys, sport), "+", "-", count=1)
        return _text(last[0][0]) if last else None

    async def last_on(self, channel: str, scan: int = READ_BATCH) -> HistoryEvent | None:
        """The newest event a subscriber of `channel` (a sport's or a league's) got,
        among the last `scan` of its sport; None when there is none."""
        sport = parse_channel(channel)[0]
        entries = await self._redis.xrevrange(history_key(self._keys, sport), "+", "-",
                                              count=scan)
        for raw_id, fields in entries or ():
            event = _entry(sport, _text(raw_id), fields or {})
            if covers(channel, event.channel):
                return event
        return None

    async def append(self, sport: str, event: str, channel: str, data: Any) -> HistoryEvent:
        """Append an event that is not a game change (the Pusher HTTP API publishing to
        a `sports.*` channel) and publish it, atomically; it gets an id like any other."""
        chan_sport, league_id, game_id = parse_channel(channel)
        if chan_sport != sport:
            raise ValueError(f"channel {channel!r} is not a {sport} channel")
        data_json = orjson.dumps(data)
        target = (self._bus.redis_targets(channel) if self._bus is not None else None) or ""
        raw = await self._append(
            keys=[history_key(self._keys, sport)],
            args=[sport, event, channel, "" if league_id is None else league_id,
                  "" if game_id is None else game_id, data_json, target,
                  HISTORY_RETENTION_S * 1000, HISTORY_MAX_ENTRIES])
        stored = HistoryEvent(id=_text(raw), event=event, channel=channel, sport=sport,
                              league_id=league_id, game_id=game_id, seq=None,
                              data_json=data_json)
        if self._bus is not None and not target:
            await self._bus.publish(stored.to_bus_event())
        return stored


def _entry(sport: str, id: str, fields: dict[Any, Any]) -> HistoryEvent:
    get = {_text(k): v for k, v in fields.items()}

    def number(name: str) -> int | None:
        value = get.get(name)
        return int(value) if value not in (None, b"", "") else None

    data = get.get("data", b"null")
    return HistoryEvent(id=id, event=_text(get.get("event", b"")),
                        channel=_text(get.get("channel", b"")), sport=sport,
                        league_id=number("league"), game_id=number("game"), seq=number("seq"),
                        data_json=data if isinstance(data, bytes) else str(data).encode())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
