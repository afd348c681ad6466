"""The games store: latest state, event numbering, history and publishing, and persistence.

Where it sits: pollers -> normalize -> diff -> **store** + bus -> hub. The pollers call
`ingest(sport, games)`; REST reads `get`, `live` and `list`.

Redis layout (all on the `reverb` database, which the contract gives to real-time state;
each key carries the `{sport}` Cluster hash tag so that one Lua script may touch them):

- `game:{sport}:{id}`: the Game's JSON (orjson). One key per game rather than one hash per
  sport, because each game needs its own expiry (Redis 7.0 has no per-field TTL): a
  game expires `GAME_TTL_S` (3 days) after its start or its last write, whichever is
  later, and the database answers for it after that.
- `seq:{sport}:{id}`: the game's last event number. It outlives the game key
  (`SEQ_TTL_S`), so a game that comes back continues its numbering.
- `live:{sport}`: the ids of games in play (phase live or break): `/live` is one SMEMBERS
  plus one MGET.
- `day:{sport}:{YYYY-MM-DD}`: the ids of the games starting that UTC day, scored by start
  time: listing a day is one ZRANGE plus one MGET. Yesterday, today and tomorrow are
  read here; other days from the database (whose `(sport, start_time)` index serves them).
- `history:{sport}`: the event stream (`store.history`).

The hash tag is the sport, not the game: the ingest script stores a game, numbers its
changes and appends them to the sport's one history stream (whose ids are the public
event ids, ordered across the sport) in one atomic step, and keeps the sport's live and
day indexes; so a sport's real-time state is one Cluster slot. A per-game tag would
need a per-game stream and a merge of ids across streams on resume.

Ingest, per game: load the stored state (Redis, or the database when Redis lost it),
`diff_games(old, new)`, then one Lua script checks that the stored state is still the
one diffed against (compare-and-set on its SHA-1 and on the seq counter), assigns the
changes consecutive numbers, stores the new state with `seq` = the last one, updates
the indexes, appends each change to the history and PUBLISHes it. A concurrent writer
makes the check fail and the game is re-read and re-diffed (a poller lease normally
leaves one writer per sport, but correctness does not depend on it). So `seq` is
gap-free and history order is `seq` order per game, across every process. A game whose
only difference is the clock is stored the same way with no event; one with no
difference at all (server_time aside) is not written. All games of one call share two
round trips (a pipelined read, then a pipeline of scripts).

Rollbacks: Redis replication is asynchronous, so a failover (Sentinel, Cluster) can
promote a replica that missed the last writes, and a game's stored seq goes back below
numbers clients were already sent. Numbering on from there would give new changes old
numbers (a client drops them as repeats) and diff against a state clients have moved
past (a goal told twice). So the store keeps each game's high-water seq where a rollback
shows: in this process (every seq it wrote) and in the database (every game it persisted,
read once per game when this process first writes it). A stored seq below the high-water
mark is a rollback: instead of a diff, the game's current state goes out as one
`game.snapshot` event numbered after the high-water mark, so seq never goes back, and
every subscriber (live, or replaying the history) starts again from the whole game.

Persistence: every game seen (first sighting or any change; not mere clock ticks) is
upserted into `GameRecord` through the runner's single writer, batched per ingest call;
rows that fail to write stay pending and go with the next call, so a database outage
delays persistence without failing the poll (the database side is `store.game_records`).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson

from btsguru import metrics
from btsguru.clock import Clock
from btsguru.db.runner import DatabaseRunner
from btsguru.diff import diff_games
from btsguru.sports.base import Change, Game, Phase, game_from_json, game_to_json
from btsguru.sports.static import LeagueInfo, TeamInfo
from btsguru.store.bus import Bus, BusEvent, game_channel
from btsguru.store.game_records import (
    UTC_FORMAT,
    games_by_id,
    games_on,
    start_of,
    upsert_games,
    upsert_leagues,
    upsert_teams,
)
from btsguru.store.history import (
    APPEND_LUA,
    HISTORY_MAX_ENTRIES,
    HISTORY_RETENTION_S,
    history_key,
)
from btsguru.store.hot import HotCache, live_list_name
from btsguru.store.redis import RedisStores
from btsguru.store.series import SeriesRecorder
from btsguru.store.typed import queue_script

log = logging.getLogger(__name__)

GAME_TTL_S = 3 * 86400  # finished games stay in Redis 3 days, then the database answers
SEQ_TTL_S = 30 * 86400  # a postponed game that returns within a month keeps its numbering
INGEST_MARK_TTL_S = 86400
# Games whose high-water seq a process keeps in memory (about 40 bytes each); past this,
# the least recently written half is forgotten and the database answers for them again.
HIGH_WATER_GAMES = 200_000
SNAPSHOT_EVENT = "game.snapshot"
CAS_ATTEMPTS = 8  # a conflict needs another writer; eight in a row means something is off

# KEYS: game, seq, live set, new day zset, old day zset, history stream
# ARGV: the stored game as read ('' = absent; compared whole: Lua's redis.sha1hex is
#   missing from the embedded store's interpreter), expected seq ('' = absent), game JSON, new seq,
#   game TTL s, seq TTL s, in play, game id, start epoch, has day, had old day, day TTL s,
#   sport, retention ms, max entries, n events, then 7 per event:
#   event, channel, league, game, seq, data, pub/sub targets ('' = not published here)
_INGEST_SCRIPT = APPEND_LUA + """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return {0} end
elseif current ~= ARGV[1] then
  return {0}
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return {0} end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[5])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[6])
if ARGV[7] == '1' then
  redis.call('SADD', KEYS[3], ARGV[8])
else
  redis.call('SREM', KEYS[3], ARGV[8])
end
if ARGV[11] == '1' and KEYS[5] ~= KEYS[4] then redis.call('ZREM', KEYS[5], ARGV[8]) end
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[9], ARGV[8])
  redis.call('EXPIRE', KEYS[4], ARGV[12])
end
local out = {1}
local n = tonumber(ARGV[16])
for i = 0, n - 1 do
  local a = 17 + i * 7
  out[#out + 1] = append_event(KEYS[6], ARGV[13], ARGV[a], ARGV[a + 1], ARGV[a + 2],
                               ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
end
if n > 0 then trim_history(KEYS[6], out[#out], tonumber(ARGV[14]), tonumber(ARGV[15])) end
return out
"""


@dataclass(frozen=True)
class StoredChange:
    """A change as broadcast: numbered (`change.seq`) and with its history id."""

    id: str
    change: Change
    data_json: bytes

    @property
    def event(self) -> str:
        return self.change.event

    @property
    def seq(self) -> int:
        return self.change.seq

    def to_bus_event(self) -> BusEvent:
        c = self.change
        return BusEvent(id=self.id, event=c.event,
                        channel=game_channel(c.sport, c.league_id, c.game_id),
                        data_json=self.data_json)


@dataclass(frozen=True)
class IngestResult:
    changes: tuple[StoredChange, ...]  # per game in seq order; games in input order
    new_games: int  # first sightings
    updated_games: int  # stored again (events or clock)
    events: int
    skipped: int = 0  # games left for the next poll after repeated write conflicts


@dataclass
class _Plan:
    new: Game  # as normalized
    old: Game | None
    old_raw: bytes | None  # what Redis held (None: absent there)
    seq_raw: bytes | None
    from_db: bool = False


class GameStore:
    def __init__(self, redis: RedisStores, runner: DatabaseRunner, clock: Clock,
                 bus: Bus, *, hot: HotCache | None = None,
                 series: SeriesRecorder | None = None) -> None:
        self._redis = redis.reverb
        self._hot = hot
        self._series = series
        self._keys = redis.keys
        self._runner = runner
        self._clock = clock
        self._bus = bus
        self._script = self._redis.register_script(_INGEST_SCRIPT)
        self._pending: dict[tuple[str, int], Game] = {}
        # game -> the highest seq written or persisted (see "Rollbacks"); insertion
        # order is recency of writing
        self._high: dict[tuple[str, int], int] = {}

    # -- keys --

    def _game_key(self, sport: str, game_id: int) -> str:
        return self._keys.tagged("game", sport, game_id)

    def _seq_key(self, sport: str, game_id: int) -> str:
        return self._keys.tagged("seq", sport, game_id)

    def _live_key(self, sport: str) -> str:
        return self._keys.tagged("live", sport)

    def _day_key(self, sport: str, day: date | str) -> str:
        return self._keys.tagged("day", sport, str(day))

    def _mark_key(self, sport: str) -> str:
        return self._keys.tagged("ingested", sport)

    # -- ingest --

    async def ingest(self, sport: str, games: Sequence[Game]) -> IngestResult:
        """Store `games` (one poll's worth, for `sport`), number and publish their
        changes. Returns what was broadcast. Raises on a Redis failure (nothing half
        written for any one game: each game is one script)."""
        latest: dict[int, Game] = {}
        for game in games:
            if game.sport != sport:
                raise ValueError(f"{game.sport} game {game.id} ingested as {sport}")
            latest[game.id] = game  # the last word on a game within one poll wins
        plans = await self._load(sport, list(latest.values()))
        stored: list[StoredChange] = []
        counts = {"new": 0, "updated": 0, "skipped": 0}
        pending = plans
        for _attempt in range(CAS_ATTEMPTS):
            conflicts = await self._write(sport, pending, stored, counts)
            if not conflicts:
                break
            pending = await self._load(sport, [p.new for p in conflicts])
        else:
            counts["skipped"] = len(conflicts)
            log.warning("%s: %d games kept changing under us (%d attempts); next poll",
                        sport, len(conflicts), CAS_ATTEMPTS)
        if self._bus.redis_targets(f"sports.{sport}") is None:
            for item in stored:  # a Redis bus got them from the script, in order
                await self._bus.publish(item.to_bus_event())
        if self._series is not None and stored:
            self._series.events_published(sport, len(stored))
        await self._redis.set(self._mark_key(sport), repr(self._clock.time()),
                              ex=INGEST_MARK_TTL_S)
        if self._hot is not None:  # the live list and its `as_of` changed, everywhere
            await self._hot.invalidate(live_list_name(sport))
        await self.flush()
        return IngestResult(changes=tuple(stored), new_games=counts["new"],
                            updated_games=counts["updated"], events=len(stored),
                            skipped=counts["skipped"])

    async def _load(self, sport: str, games: Sequence[Game]) -> list[_Plan]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for game in games:
                pipe.get(self._game_key(sport, game.id))
                pipe.get(self._seq_key(sport, game.id))
            raw = await pipe.execute()
        plans = [_Plan(new=game, old=None if raw[2 * i] is None else _decode(raw[2 * i]),
                       old_raw=raw[2 * i], seq_raw=raw[2 * i + 1])
                 for i, game in enumerate(games)]
        # the database answers for games Redis lost, and gives the high-water seq of
        # games this process has not written yet
        ask = [p.new.id for p in plans
               if p.old_raw is None or (sport, p.new.id) not in self._high]
        if ask:
            known = await self._runner.read(games_by_id, sport, ask)
            for plan in plans:
                stored = known.get(plan.new.id)
                if (sport, plan.new.id) not in self._high:
                    self._remember(sport, plan.new.id, stored.seq if stored else 0)
                if stored is not None and plan.old_raw is None:
                    plan.old, plan.from_db = stored, True
        return plans

    async def _write(self, sport: str, plans: Sequence[_Plan], stored: list[StoredChange],
                     counts: dict[str, int]) -> list[_Plan]:
        """Run the scripts of `plans` in one pipeline; returns the plans that lost a
        compare-and-set (to re-read and retry)."""
        now = self._clock.time()
        now_iso = datetime.fromtimestamp(now, UTC).strftime(UTC_FORMAT)
        work: list[tuple[_Plan, Game, list[Change], list[bytes]]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for plan in plans:
                old, new = plan.old, plan.new
                base = max(int(plan.seq_raw) if plan.seq_raw else 0, old.seq if old else 0)
                high = self._high.get((sport, new.id), 0)
                if high > base:  # Redis went back (see "Rollbacks")
                    game = replace(new, seq=high + 1, updated_at=now_iso)
                    changes = [Change(SNAPSHOT_EVENT, sport, game.league.id, game.id,
                                      seq=game.seq)]
                    data = [orjson.dumps(game_to_json(game))]
                    log.warning("%s game %d: Redis holds seq %d but %d was written before "
                                "(a failover lost writes); sending game.snapshot as %d",
                                sport, new.id, base, high, game.seq)
                    metrics.REDIS_ROLLBACKS.labels("game").inc()
                else:
                    if old is not None and not plan.from_db and _same_observation(old, new):
                        continue
                    changes = diff_games(old, new)
                    changes = [replace(c, seq=base + i)
                               for i, c in enumerate(changes, start=1)]
                    game = replace(new, seq=base + len(changes), updated_at=now_iso)
                    data = [orjson.dumps(c.to_json()) for c in changes]
                keys, args = self._script_call(sport, plan, game, changes, data, now)
                await queue_script(self._script, pipe, keys=keys, args=args)
                work.append((plan, game, changes, data))
            results = await pipe.execute() if work else []
        conflicts = []
        for (plan, game, changes, data), result in zip(work, results, strict=True):
            if int(result[0]) != 1:
                conflicts.append(plan)
                continue
            ids = [r.decode() if isinstance(r, bytes) else str(r) for r in result[1:]]
            stored.extend(StoredChange(id=i, change=c, data_json=d)
                          for i, c, d in zip(ids, changes, data, strict=True))
            if plan.old is None:
                counts["new"] += 1
            else:
                counts["updated"] += 1
            if plan.old is None or plan.from_db or changes:
                self._pending[(sport, game.id)] = game
            self._remember(sport, game.id, game.seq)
        return conflicts

    def _remember(self, sport: str, game_id: int, seq: int) -> None:
        key = (sport, game_id)
        self._high.pop(key, None)
        self._high[key] = seq
        if len(self._high) > HIGH_WATER_GAMES:
            for stale in list(self._high)[:HIGH_WATER_GAMES // 2]:
                del self._high[stale]

    def _script_call(self, sport: str, plan: _Plan, game: Game, changes: list[Change],
                     data: list[bytes], now: float) -> tuple[list[str], list[Any]]:
        start = _start_epoch(game)
        new_day = _day_of(game)
        old_day = _day_of(plan.old) if plan.old is not None and plan.old_raw else None
        # relative TTLs (not EXAT): the injected clock need not agree with Redis's
        ttl_s = int(max((start or now) - now, 0) + GAME_TTL_S)
        day_ttl_s = int(max(_day_epoch(new_day) + 86400 - now, 0) + GAME_TTL_S + 86400) \
            if new_day else 0
        keys = [self._game_key(sport, game.id), self._seq_key(sport, game.id),
                self._live_key(sport), self._day_key(sport, new_day or "none"),
                self._day_key(sport, old_day or new_day or "none"),
                history_key(self._keys, sport)]
        args: list[Any] = [
            plan.old_raw or "",
            plan.seq_raw or "", orjson.dumps(game_to_json(game)), game.seq, ttl_s,
            ttl_s + SEQ_TTL_S, "1" if game.status.phase.in_play else "0", game.id,
            start or 0, "1" if new_day else "0", "1" if old_day else "0", day_ttl_s,
            sport, HISTORY_RETENTION_S * 1000, HISTORY_MAX_ENTRIES, len(changes)]
        for change, payload in zip(changes, data, strict=True):
            channel = game_channel(sport, change.league_id, change.game_id)
            args += [change.event, channel, change.league_id, change.game_id, change.seq,
                     payload, self._bus.redis_targets(channel) or ""]
        return keys, args

    async def flush(self) -> None:
        """Write the games not yet persisted (one transaction); on failure they stay
        pending for the next call."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._runner.write(upsert_games, list(batch.values()))
        except Exception as exc:
            for key, game in batch.items():
                self._pending.setdefault(key, game)  # a newer state may have come meanwhile
            log.warning("persisting %d games failed, will retry: %s", len(batch), exc)

    # -- reads --

    async def get(self, sport: str, game_id: int) -> Game | None:
        raw = await self._redis.get(self._game_key(sport, game_id))
        if raw is not None:
            return _decode(raw)
        known = await self._runner.read(games_by_id, sport, [game_id])
        return known.get(game_id)

    async def live(self, sport: str) -> list[Game]:
        """Games in play, by start time."""
        ids = await self._redis.smembers(self._live_key(sport))
        games = await self._by_ids(sport, sorted(int(i) for i in ids), fall_back=False)
        gone = [i for i in ids if int(i) not in {g.id for g in games}]
        if gone:  # expired while listed (their poller stopped seeing them): forget them
            await self._redis.srem(self._live_key(sport), *gone)
        return _ordered(g for g in games if g.status.phase.in_play)

    async def live_counts(self, sports: Sequence[str]) -> dict[str, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for sport in sports:
                pipe.scard(self._live_key(sport))
            counts = await pipe.execute()
        return {sport: int(n) for sport, n in zip(sports, counts, strict=True)}

    async def last_ingest_at(self, sport: str) -> float | None:
        raw = await self._redis.get(self._mark_key(sport))
        return float(raw) if raw is not None else None

    async def list(self, sport: str, *, date: date | None = None, league: int | None = None,
                   team: int | None = None, phase: Phase | None = None) -> builtins.list[Game]:
        """The games starting on UTC `date` (default today), filtered, by start time."""
        today = datetime.fromtimestamp(self._clock.time(), UTC).date()
        day = date or today
        games: builtins.list[Game] | None = None
        if abs((day - today).days) <= 1:
            key = self._day_key(sport, day)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(key)
                pipe.zrange(key, 0, -1)
                exists, ids = await pipe.execute()
            if exists:
                games = await self._by_ids(sport, [int(i) for i in ids], fall_back=True)
        if games is None:
            games = await self._runner.read(games_on, sport, day, league, team,
                                            phase.value if phase else None)
        return _ordered(g for g in games if _matches(g, league, team, phase))

    async def _by_ids(self, sport: str, ids: Sequence[int], *,
                      fall_back: bool) -> builtins.list[Game]:
        if not ids:
            return []
        raw = await self._redis.mget([self._game_key(sport, i) for i in ids])
        games = [_decode(r) for r in raw if r is not None]
        missing = [i for i, r in zip(ids, raw, strict=True) if r is None]
        if missing and fall_back:
            games += (await self._runner.read(games_by_id, sport, missing)).values()
        return games

    # -- static data --

    async def save_leagues(self, sport: str, leagues: Sequence[LeagueInfo]) -> None:
        if leagues:
            await self._runner.write(upsert_leagues, sport, list(leagues))

    async def save_teams(self, sport: str, teams: Sequence[TeamInfo]) -> None:
        if teams:
            await self._runner.write(upsert_teams, sport, list(teams))

    async def close(self) -> None:
        await self.flush()


# -- pure --

def _decode(raw: bytes | str) -> Game:
    return game_from_json(orjson.loads(raw))


def _same_observation(old: Game, new: Game) -> bool:
    """Nothing but the observation time differs (a scheduled game re-swept, a break)."""
    seen = replace(new, status=replace(new.status, server_time=old.status.server_time),
                   seq=old.seq, updated_at=old.updated_at)
    return seen == old


def _start_epoch(game: Game) -> int | None:
    start = start_of(game)
    return int(start.timestamp()) if start else None


def _day_of(game: Game) -> date | None:
    start = start_of(game)
    return start.date() if start else None


def _day_epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _matches(game: Game, league: int | None, team: int | None, phase: Phase | None) -> bool:
    return ((league is None or game.league.id == league)
            and (team is None or team in (game.home.id, game.away.id))
            and (phase is None or game.status.phase is phase))


def _ordered(games: Iterable[Game]) -> list[Game]:
    return sorted(games, key=lambda g: (g.start_time, g.id))
