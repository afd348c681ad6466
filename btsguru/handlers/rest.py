"""The REST read API (contract section 3): sports, live games, games by day, one game,
standings.

Where it sits: a transport beside the hub, reading what the pollers stored: `GameStore`
and `StandingsStore` (Redis first, the database for older games) and the pollers' state
for freshness. Never the upstream: a request is answered from what is stored.

Thin: each handler parses and validates its parameters (a bad one is a JSON 400, an
unknown sport or game a JSON 404), calls one service and renders. `SportsView` is that
service for the two routes that combine the stores with the pollers' state; `btsguru.app`
builds it once and hands the same one to the hot path (`handlers.hot`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson

from btsguru.auth.access import AccessService
from btsguru.clock import Clock
from btsguru.errors import BadRequest, NotFound
from btsguru.handlers.api import ApiHandler
from btsguru.pollers.state import SportPollState
from btsguru.sports.base import Game, Phase, game_to_json
from btsguru.store.games import GameStore
from btsguru.store.hot import HotCache, live_list_name
from btsguru.store.standings import StandingsStore

STALE_AFTER_CADENCES = 3  # live data older than three poll intervals is marked stale
FALLBACK_LIVE_INTERVAL_S = 30.0  # before the poller has reported its cadence
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_ID_RE = re.compile(r"^[1-9]\d{0,17}$")  # positive, and within a 64-bit integer
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SEASON_RE = re.compile(r"^\d{4}(-\d{4})?$")
_GAMES_FILTERS = frozenset({"date", "league", "team", "status"})
_STANDINGS_FILTERS = frozenset({"league", "season"})


class SportPollStates(Protocol):
    """Each sport's poll summary, for freshness (`pollers.state.PollerStateReader.state`)."""

    async def state(self, sport: str) -> SportPollState | None: ...


@dataclass(frozen=True)
class LiveAnswer:
    games: list[Game]
    as_of: str | None
    stale: bool


@dataclass(frozen=True)
class RenderedLive:
    """`/v1/{sport}/live` ready to write: the body both ways (`meta.stale` false and
    true) and when it turns stale, so a cached answer needs no encoding per request."""

    fresh: tuple[bytes, str]  # body, ETag
    stale: tuple[bytes, str]
    last: float | None  # when data was last stored (epoch s)
    stale_after_s: float | None  # None: stale whatever the time (no data, or failing)

    def at(self, now: float) -> tuple[bytes, str]:
        if self.last is None or self.stale_after_s is None or \
                now - self.last > self.stale_after_s:
            return self.stale
        return self.fresh


class SportsView:
    """Games plus freshness: what `/v1/sports` and `/v1/{sport}/live` show.

    With a `HotCache`, `/v1/{sport}/live` is answered from this process's copy: the
    games store (after an ingest) and the pollers' state (after a live or schedule run)
    invalidate it in every process, and `HOT_TTL_S` bounds it otherwise."""

    def __init__(self, games: GameStore, poll_state: SportPollStates | None,
                 clock: Clock, hot: HotCache | None = None) -> None:
        self._games = games
        self._poll_state = poll_state
        self._clock = clock
        self._hot = hot

    async def _freshness(self, sport: str) -> tuple[SportPollState | None, float | None]:
        """The poller state and when data for `sport` was last stored (epoch s)."""
        state = await self._poll_state.state(sport) if self._poll_state else None
        last = _epoch(state.last_poll_at) if state is not None else None
        if last is None:
            last = await self._games.last_ingest_at(sport)
        return state, last

    async def overview(self, sports: Sequence[str]) -> list[dict[str, Any]]:
        counts = await self._games.live_counts(sports)
        now = self._clock.time()
        out = []
        for sport in sports:
            state, last = await self._freshness(sport)
            out.append({
                "sport": sport, "live_games": counts.get(sport, 0),
                "poll_interval_s": state.poll_interval_s if state is not None else None,
                "last_poll_at": _iso(last),
                "data_age_s": None if last is None else max(0, int(now - last)),
            })
        return out

    async def live(self, sport: str) -> LiveAnswer:
        games, last, stale_after_s = await self._live_state(sport)
        stale = last is None or stale_after_s is None or \
            self._clock.time() - last > stale_after_s
        return LiveAnswer(games=games, as_of=_iso(last), stale=stale)

    def peek_live(self, sport: str) -> tuple[bytes, str] | None:
        """`live_rendered` from this process's copy, without waiting; None when it has
        none."""
        cached: RenderedLive | None = self._hot.get(live_list_name(sport)) \
            if self._hot is not None else None
        return None if cached is None else cached.at(self._clock.time())

    async def live_rendered(self, sport: str) -> tuple[bytes, str]:
        """`/v1/{sport}/live`'s body and ETag, from the hot cache when it has them."""
        rendered: RenderedLive | None
        if self._hot is None:
            rendered, _ = await self._render(sport)
        else:  # one rendering per process however many ask at once
            rendered = await self._hot.load(live_list_name(sport),
                                            lambda: self._render(sport))
        assert rendered is not None
        return rendered.at(self._clock.time())

    async def _render(self, sport: str) -> tuple[RenderedLive, None]:
        games, last, stale_after_s = await self._live_state(sport)
        data = orjson.dumps([game_to_json(g) for g in games])
        fresh, stale = (_live_body(data, last, flag) for flag in (False, True))
        return RenderedLive(fresh, stale, last, stale_after_s), None

    async def _live_state(self, sport: str) -> tuple[list[Game], float | None, float | None]:
        """The games in play, when data was last stored, and how old it may be before it
        is stale (None: stale now, the pollers say they are failing)."""
        games = await self._games.live(sport)
        state, last = await self._freshness(sport)
        interval_s = (state.poll_interval_s if state is not None else None) \
            or FALLBACK_LIVE_INTERVAL_S
        failing = state is not None and state.failing
        return games, last, None if failing else STALE_AFTER_CADENCES * interval_s


def _live_body(data_json: bytes, last: float | None, stale: bool) -> tuple[bytes, str]:
    meta = orjson.dumps({"as_of": _iso(last), "stale": stale})
    body = b'{"data":' + data_json + b',"meta":' + meta + b"}"
    return body, f'"{hashlib.sha1(body).hexdigest()}"'  # noqa: S324 (Tornado's ETag, not security)


class _SportHandler(ApiHandler):
    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str]) -> None:
        super().initialize(access)
        self.sports = tuple(sports)

    def check_sport(self, sport: str) -> str:
        if sport not in self.sports:
            raise NotFound(f"unknown sport {sport!r}; this relay serves: "
                           f"{', '.join(self.sports)}")
        return sport

    def check_filters(self, allowed: frozenset[str]) -> None:
        unknown = sorted(set(self.request.query_arguments) - allowed)
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(allowed))}")

    def query(self, name: str) -> str | None:
        values = self.get_query_arguments(name)
        if len(values) > 1:
            raise BadRequest(f"{name}: give it once")
        return values[0].strip() if values else None


class SportsHandler(_SportHandler):
    """`GET /v1/sports`: each sport's live count and data freshness."""

    route_kind = "other"

    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str], view: SportsView) -> None:
        super().initialize(access, sports)
        self.view = view

    async def get(self) -> None:
        self.write_json({"data": await self.view.overview(self.sports)})


class LiveHandler(_SportHandler):
    """`GET /v1/{sport}/live`: games in play, with how fresh they are."""

    route_kind = "live"

    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str], view: SportsView) -> None:
        super().initialize(access, sports)
        self.view = view

    async def get(self, sport: str) -> None:
        body, etag = await self.view.live_rendered(self.check_sport(sport))
        self.set_header("Etag", etag)  # computed once per rendering, not per request
        self.finish(body)


class GamesHandler(_SportHandler):
    """`GET /v1/{sport}/games?date=&league=&team=&status=`: one UTC day's games."""

    route_kind = "games"

    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str], games: GameStore, clock: Clock) -> None:
        super().initialize(access, sports)
        self.games = games
        self.clock = clock

    async def get(self, sport: str) -> None:
        self.check_sport(sport)
        self.check_filters(_GAMES_FILTERS)
        day = _date_argument(self.query("date"))
        league = _id_argument("league", self.query("league"))
        team = _id_argument("team", self.query("team"))
        phase = _phase_argument(self.query("status"))
        games = await self.games.list(
            sport, date=day or datetime.fromtimestamp(self.clock.time(), UTC).date(),
            league=league, team=team, phase=phase)
        self.write_json({"data": [game_to_json(g) for g in games]})


class GameHandler(_SportHandler):
    """`GET /v1/{sport}/games/{id}`: any game the relay has seen."""

    route_kind = "games"

    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str], games: GameStore) -> None:
        super().initialize(access, sports)
        self.games = games

    async def get(self, sport: str, game_id: str) -> None:
        self.check_sport(sport)
        number = _id_argument("id", game_id)
        assert number is not None
        game = await self.games.get(sport, number)
        if game is None:
            raise NotFound(f"no {sport} game {number}")
        self.write_json({"data": game_to_json(game)})


class StandingsHandler(_SportHandler):
    """`GET /v1/{sport}/standings?league=ID[&season=S]`: a league table (the latest
    season stored when `season` is left out)."""

    route_kind = "standings"

    def initialize(self, access: AccessService,  # type: ignore[override]
                   sports: Sequence[str], standings: StandingsStore) -> None:
        super().initialize(access, sports)
        self.standings = standings

    async def get(self, sport: str) -> None:
        self.check_sport(sport)
        self.check_filters(_STANDINGS_FILTERS)
        league = _id_argument("league", self.query("league"))
        if league is None:
            raise BadRequest("league is required: /v1/{sport}/standings?league=ID")
        season = self.query("season")
        if season is not None and not _SEASON_RE.match(season):
            raise BadRequest(f"season: YYYY or YYYY-YYYY, got {season!r}")
        rows = await self.standings.get(sport, league, season)
        if not rows:
            raise NotFound(f"no {sport} standings stored for league {league}"
                           + (f" season {season}" if season else ""))
        self.write_json({"data": [row.to_json() for row in rows]})


def _date_argument(raw: str | None) -> date | None:
    if raw is None:
        return None
    try:
        if not _DATE_RE.match(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"date: a real day as YYYY-MM-DD, got {raw!r}") from None


def _id_argument(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _ID_RE.match(raw):
        raise BadRequest(f"{name}: a positive integer, got {raw!r}")
    return int(raw)


def _phase_argument(raw: str | None) -> Phase | None:
    if raw is None:
        return None
    try:
        return Phase(raw.lower())
    except ValueError:
        raise BadRequest(f"status: one of {', '.join(p.value for p in Phase)}, "
                         f"got {raw!r}") from None


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC).strftime(UTC_FORMAT)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rest_routes(*, access: AccessService, sports: Sequence[str], view: SportsView,
                games: GameStore, standings: StandingsStore, clock: Clock) -> list[Any]:
    """The routes this module serves, for `btsguru.app.make_app` (which builds the one
    `SportsView`, shared with the hot path)."""
    common = {"access": access, "sports": sports}
    sport = r"/v1/(?P<sport>[a-z][a-z-]*)"
    return [
        (r"/v1/sports", SportsHandler, {**common, "view": view}),
        (sport + r"/live", LiveHandler, {**common, "view": view}),
        (sport + r"/games", GamesHandler, {**common, "games": games, "clock": clock}),
        (sport + r"/games/(?P<game_id>[^/]+)", GameHandler, {**common, "games": games}),
        (sport + r"/standings", StandingsHandler, {**common, "standings": standings}),
    ]
