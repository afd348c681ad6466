"""The pollers' schedule book: when each known game starts, its phase, league and season.

Where it sits: written by the schedule and live tasks after each run, read by the
cadence decisions (the next start, the day's expected live hours) and by the static and
standings tasks (the leagues of interest and their seasons). One Redis hash per sport in
the `queue` database, `<prefix>poll:book:<sport>`, field = game id, value = a compact
JSON entry; games that started more than two days ago are dropped on each write. It is
a small index of a few hundred entries, not the games themselves (those are the
GameStore's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import orjson

from btsguru.sports.base import Game, Phase
from btsguru.store.redis import RedisStores

# A game is kept in the book until this long after its start: long enough for the
# yesterday-to-tomorrow window, and for a late game to finish.
KEEP_S = 2 * 86_400


@dataclass(frozen=True)
class BookEntry:
    game_id: int
    start_ts: float
    phase: Phase
    league_id: int
    season: str | None  # as the upstream spells it: "2024" or "2024-2025"

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.FINISHED, Phase.CANCELLED, Phase.POSTPONED)


def entry_of(game: Game) -> BookEntry:
    start = datetime.fromisoformat(game.start_time.replace("Z", "+00:00")).timestamp()
    season = game.league.season
    return BookEntry(game.id, start, game.status.phase, game.league.id,
                     None if season is None else str(season))


class ScheduleBook:
    def __init__(self, redis: RedisStores, *, namespace: str = "poll") -> None:
        self._redis = redis.queue
        self._keys = redis.keys
        self.namespace = namespace

    def key(self, sport: str) -> str:
        return self._keys.key(self.namespace, "book", sport)

    async def note(self, sport: str, games: Iterable[Game], now: float) -> None:
        """Record these games (insert or update) and forget games long past."""
        entries = [entry_of(g) for g in games if g.start_time]
        key = self.key(sport)
        if entries:
            await self._redis.hset(key, mapping={
                str(e.game_id): orjson.dumps([e.start_ts, e.phase.value, e.league_id, e.season])
                for e in entries})
            await self._redis.expire(key, KEEP_S + 86_400)  # a sport no longer polled
        old = [e.game_id for e in await self.entries(sport) if e.start_ts < now - KEEP_S]
        if old:
            await self._redis.hdel(key, *map(str, old))

    async def entries(self, sport: str) -> list[BookEntry]:
        raw = await self._redis.hgetall(self.key(sport))
        out = []
        for field, value in raw.items():
            try:
                start, phase, league, season = orjson.loads(value)
                out.append(BookEntry(int(field), float(start), Phase(phase), int(league),
                                     season))
            except (ValueError, TypeError, orjson.JSONDecodeError):
                continue  # an entry from another version: rewritten at the next poll
        return sorted(out, key=lambda e: (e.start_ts, e.game_id))


def next_start(entries: Iterable[BookEntry], now: float) -> float | None:
    """The next kick-off still scheduled after `now` (None when none is known)."""
    later = [e.start_ts for e in entries if e.phase is Phase.SCHEDULED and e.start_ts > now]
    return min(later) if later else None


def unfinished_starts(entries: Iterable[BookEntry], now: float) -> list[float]:
    """Kick-offs of the games still to be played or in play, from yesterday on."""
    return [e.start_ts for e in entries
            if not e.finished and e.phase is not Phase.INTERRUPTED and e.start_ts > now - 86_400]


def leagues_of_interest(entries: Iterable[BookEntry]) -> dict[tuple[int, str | None], bool]:
    """(league, season) -> whether it has a game in play now, for every league with a
    game in the book (yesterday to tomorrow)."""
    out: dict[tuple[int, str | None], bool] = {}
    for e in entries:
        key = (e.league_id, e.season)
        out[key] = out.get(key, False) or e.phase.in_play
    return out


class DueBook:
    """When each item of a slow task (leagues, one league's teams or standings) was last
    fetched: one hash per (sport, task), `<prefix>poll:due:<sport>:<task>`, so a process
    taking the task over does not fetch again what another fetched an hour ago."""

    def __init__(self, redis: RedisStores, *, namespace: str = "poll") -> None:
        self._redis = redis.queue
        self._keys = redis.keys
        self.namespace = namespace

    def key(self, sport: str, task: str) -> str:
        return self._keys.key(self.namespace, "due", sport, task)

    async def fetched_at(self, sport: str, task: str) -> dict[str, float]:
        raw = await self._redis.hgetall(self.key(sport, task))
        out = {}
        for field, value in raw.items():
            try:
                out[field.decode() if isinstance(field, bytes) else str(field)] = float(value)
            except (TypeError, ValueError):
                continue
        return out

    async def mark(self, sport: str, task: str, item: str, at: float) -> None:
        key = self.key(sport, task)
        await self._redis.hset(key, item, f"{at:.3f}")
        await self._redis.expire(key, 7 * 86_400)
