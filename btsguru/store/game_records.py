"""Games, leagues and teams in the database: the `GameStore`'s persistence, run in the
database's threads (`DatabaseRunner`: writes through its single writer, reads in its
small pool), never on the IOLoop.

Where it sits: pollers -> normalize -> diff -> **store** (`store.games` keeps the latest
state in Redis and hands each game seen here, batched per ingest call) -> the database
answers for a game once Redis no longer holds it (older than `GAME_TTL_S`, or a day
outside yesterday to tomorrow). Last writer wins: the lease makes the pollers the only
writers, and their last write is a game's last state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import peewee

from btsguru.db import models
from btsguru.db.models import GameRecord, to_db_time, utc_now
from btsguru.sports.base import Game, game_from_json, game_to_json
from btsguru.sports.static import LeagueInfo, TeamInfo

DB_BATCH_ROWS = 200  # rows per INSERT: far under SQLite's bound-variable limit
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
EPOCH = datetime(1970, 1, 1)  # naive UTC, as the database stores times


def start_of(game: Game) -> datetime | None:
    """When the game starts (aware, UTC); None when the upstream gave no usable time."""
    try:
        return datetime.strptime(game.start_time, UTC_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None  # normalize gives "" when the upstream sent no usable time


def _upsert(model: type[models.BaseModel], rows: list[dict[str, Any]],
            conflict: Sequence[peewee.Field], preserve: Sequence[peewee.Field]) -> None:
    db = model._meta.database
    db = getattr(db, "obj", db)  # the proxy's target
    for at in range(0, len(rows), DB_BATCH_ROWS):
        query = model.insert_many(rows[at:at + DB_BATCH_ROWS])
        if isinstance(db, peewee.MySQLDatabase):
            query = query.on_conflict(preserve=list(preserve))  # ON DUPLICATE KEY: no target
        else:
            query = query.on_conflict(conflict_target=list(conflict), preserve=list(preserve))
        query.execute()


def upsert_games(games: list[Game]) -> None:
    now = utc_now()
    rows = []
    for game in games:
        start = start_of(game)
        rows.append({
            "sport": game.sport, "id": game.id, "league_id": game.league.id,
            "start_time": to_db_time(start) if start else EPOCH,
            "phase": game.status.phase.value, "status_code": game.status.code[:16],
            "home_team_id": game.home.id, "away_team_id": game.away.id,
            "data": orjson.dumps(game_to_json(game)), "updated_at": now,
        })
    G = GameRecord
    _upsert(GameRecord, rows, (G.sport, G.id),
            (G.league_id, G.start_time, G.phase, G.status_code, G.home_team_id,
             G.away_team_id, G.data, G.updated_at))


def games_by_id(sport: str, ids: Sequence[int]) -> dict[int, Game]:
    out: dict[int, Game] = {}
    for at in range(0, len(ids), DB_BATCH_ROWS):
        query = GameRecord.select(GameRecord.id, GameRecord.data).where(
            (GameRecord.sport == sport) & GameRecord.id.in_(list(ids[at:at + DB_BATCH_ROWS])))
        for row in query:
            out[row.id] = game_from_json(orjson.loads(row.data))
    return out


def games_on(sport: str, day: date, league: int | None, team: int | None,
                 phase: str | None) -> list[Game]:
    start = datetime(day.year, day.month, day.day)  # naive UTC, as stored
    G = GameRecord
    query = G.select(G.data).where((G.sport == sport) & (G.start_time >= start)
                                   & (G.start_time < start + timedelta(days=1)))
    if league is not None:
        query = query.where(G.league_id == league)
    if team is not None:
        query = query.where((G.home_team_id == team) | (G.away_team_id == team))
    if phase is not None:
        query = query.where(G.phase == phase)
    return [game_from_json(orjson.loads(row.data)) for row in query.order_by(G.start_time, G.id)]


def upsert_leagues(sport: str, leagues: list[LeagueInfo]) -> None:
    now = utc_now()
    rows = [{"sport": sport, "id": lg.id, "name": lg.name[:200],
             "country": lg.country[:100] if lg.country else None,
             "season": str(lg.season)[:16] if lg.season is not None else None,
             "logo": lg.logo[:500] if lg.logo else None,
             "data": orjson.dumps(lg.to_json()), "updated_at": now} for lg in leagues]
    L = models.League
    _upsert(L, rows, (L.sport, L.id), (L.name, L.country, L.season, L.logo, L.data,
                                       L.updated_at))


def upsert_teams(sport: str, teams: list[TeamInfo]) -> None:
    now = utc_now()
    rows = [{"sport": sport, "id": t.id, "name": t.name[:200],
             "logo": t.logo[:500] if t.logo else None, "league_id": t.league_id,
             "data": orjson.dumps(t.to_json()), "updated_at": now} for t in teams]
    T = models.Team
    # a team listed without a league keeps the league it had
    preserve = (T.name, T.logo, T.data, T.updated_at) if any(
        t.league_id is None for t in teams) else (T.name, T.logo, T.league_id, T.data,
                                                  T.updated_at)
    _upsert(T, rows, (T.sport, T.id), preserve)
