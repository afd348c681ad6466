"""League tables in Redis: written by the standings poller, read by `/v1/{sport}/standings`.

Where it sits: pollers -> `sports.standings` (normalize) -> **StandingsStore** -> REST.

Layout, on the `reverb` database beside the games (derived state the pollers rebuild,
not a cache to be flushed at will), per (sport, league, season):
- `standings:{<sport>:<league>}:table:{season}`: a sorted set of the rows' JSON scored by
  table order (group by group, as the upstream lists them): the whole table is one
  ZRANGE and the top N one `ZRANGE 0 N-1`;
- `standings:{<sport>:<league>}:teams:{season}`: a hash team id -> that team's rows (a
  JSON list: a team can sit in several groups of a multi-stage competition), for one
  lookup;
- `standings:{<sport>:<league>}:meta`: a hash season -> refreshed-at epoch, plus
  `latest`, the most recent season stored (what a request without `season` gets).
`replace` swaps a table in one MULTI, so a reader sees the old table or the new one; the
league is the Redis Cluster hash tag, so that MULTI stays in one slot. Until a league's
next refresh, reads fall back to the names before the tag (`standings:{sport}:...`,
written by earlier versions), so an upgrade does not empty the tables for a day.
Tables expire `STANDINGS_TTL_S` after their last refresh: the poller refreshes daily at
the least, and a league nobody polls any more fades away.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from btsguru.sports.standings import StandingRow, normalize_standings, standings_season
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

STANDINGS_TTL_S = 3 * 86400  # three missed daily refreshes before a table disappears
LATEST = "latest"


def season_order(value: str) -> tuple[int, str]:
    """Seasons compare by start year ("2024" and "2024-2025" both start in 2024)."""
    head = value.split("-", 1)[0]
    return (int(head) if head.isdigit() else -1, value)


class StandingsStore:
    def __init__(self, redis: RedisStores) -> None:
        self._redis = redis.reverb
        self._keys = redis.keys

    def _table_key(self, sport: str, league_id: int, season: str, *,
                   legacy: bool = False) -> str:
        if legacy:
            return self._keys.key("standings", sport, league_id, season)
        return self._keys.tagged("standings", f"{sport}:{league_id}", "table", season)

    def _teams_key(self, sport: str, league_id: int, season: str, *,
                   legacy: bool = False) -> str:
        if legacy:
            return self._keys.key("standings", "teams", sport, league_id, season)
        return self._keys.tagged("standings", f"{sport}:{league_id}", "teams", season)

    def _meta_key(self, sport: str, league_id: int, *, legacy: bool = False) -> str:
        if legacy:
            return self._keys.key("standings", "meta", sport, league_id)
        return self._keys.tagged("standings", f"{sport}:{league_id}", "meta")

    async def fetched(self, sport: str, league_id: int, season: str | None,
                      response_items: Any, fetched_at: float) -> int:
        """Store one `/standings` answer (the pollers' entry); returns the rows stored.
        Without a season in the query, the answer's own season is used."""
        rows = normalize_standings(sport, response_items)
        season = season or standings_season(sport, response_items)
        if not rows or season is None:
            log.debug("%s standings of league %s (%s): nothing to store", sport, league_id,
                      season)
            return 0
        await self.replace(sport, league_id, season, rows, refreshed_at=fetched_at)
        return len(rows)

    async def replace(self, sport: str, league_id: int, season: str,
                      rows: Sequence[StandingRow], *, refreshed_at: float) -> None:
        """Make `rows` (in table order) the table of (sport, league, season)."""
        table, teams = self._table_key(sport, league_id, season), \
            self._teams_key(sport, league_id, season)
        meta = self._meta_key(sport, league_id)
        by_team: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_team.setdefault(str(row.team_id), []).append(row.to_json())
        latest = await self._redis.hget(meta, LATEST)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(table, teams)
            if rows:
                # the order number makes each member unique even for identical rows
                pipe.zadd(table, {orjson.dumps({"order": i, **row.to_json()}): i
                                  for i, row in enumerate(rows)})
                pipe.hset(teams, mapping={k: orjson.dumps(v) for k, v in by_team.items()})
                pipe.expire(table, STANDINGS_TTL_S)
                pipe.expire(teams, STANDINGS_TTL_S)
            pipe.hset(meta, season, repr(refreshed_at))
            if latest is None or season_order(season) >= season_order(_text(latest)):
                pipe.hset(meta, LATEST, season)
            pipe.expire(meta, STANDINGS_TTL_S)
            await pipe.execute()

    async def get(self, sport: str, league_id: int, season: str | None = None,
                  *, limit: int | None = None) -> list[StandingRow]:
        """The table (its first `limit` rows), of `season` or the latest stored."""
        season = season or await self.latest_season(sport, league_id)
        if season is None:
            return []
        stop = -1 if limit is None else limit - 1
        raw = await self._redis.zrange(self._table_key(sport, league_id, season), 0, stop)
        if not raw:  # written before the hash tag (an upgrade), until the next refresh
            raw = await self._redis.zrange(
                self._table_key(sport, league_id, season, legacy=True), 0, stop)
        return [StandingRow.from_json(orjson.loads(member)) for member in raw
                if isinstance(member, bytes | str)]

    async def team_rows(self, sport: str, league_id: int, season: str,
                        team_id: int) -> list[StandingRow]:
        raw = await self._redis.hget(self._teams_key(sport, league_id, season), str(team_id))
        if raw is None:
            raw = await self._redis.hget(
                self._teams_key(sport, league_id, season, legacy=True), str(team_id))
        return [] if raw is None else [StandingRow.from_json(r) for r in orjson.loads(raw)]

    async def refreshed_at(self, sport: str, league_id: int, season: str) -> float | None:
        raw = await self._redis.hget(self._meta_key(sport, league_id), season)
        if raw is None:
            raw = await self._redis.hget(self._meta_key(sport, league_id, legacy=True), season)
        return float(raw) if raw is not None else None

    async def latest_season(self, sport: str, league_id: int) -> str | None:
        raw = await self._redis.hget(self._meta_key(sport, league_id), LATEST)
        if raw is None:
            raw = await self._redis.hget(self._meta_key(sport, league_id, legacy=True), LATEST)
        return None if raw is None else _text(raw)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
