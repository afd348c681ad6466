"""The simulated upstream's API: endpoints, parameter checks and envelopes.

Where it sits: `server` parses the HTTP request, applies authentication, quota and
faults, then asks `UpstreamAPI.answer(sport, endpoint, params, clock)` for the body.
This module decides what the real upstream would say: which parameters an endpoint
takes (and the upstream's own wording when one is unknown, missing or malformed), which
games a query selects, and the envelope `{get, parameters, errors, results, paging,
response}`. Games are rendered once per (game, state, timezone) and kept as encoded
JSON fragments, so a typical query costs well under a millisecond.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import orjson

from btsguru.simulator import reference
from btsguru.simulator.catalog import Catalog
from btsguru.simulator.games import SCHEDULES, Game, Schedule
from btsguru.simulator.render import LIVE_CODES, football_event, hockey_event, render_game

DAY_S = 86400
MAX_IDS = 20  # the upstream's cap on `ids`
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_IDS_RE = re.compile(r"^\d+(-\d+)*$")
_LIVE_RE = re.compile(r"^\d+(-\d+)+$")
_FINISHED = frozenset({"FT", "AET", "PEN", "AWD", "WO", "AOT", "AP", "AW"})

Params = dict[str, str]


@dataclass(frozen=True, slots=True)
class Clock:
    """The two times of a request: the real one (dates) and the simulated one (play)."""

    real_now: float
    sim_now: float


class UpstreamError(Exception):
    """The upstream's `errors` object for a request it refuses (still HTTP 200)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


def ucfirst(name: str) -> str:
    return name[:1].upper() + name[1:]


def field_error(param: str, text: str) -> UpstreamError:
    return UpstreamError({param: f"The {ucfirst(param)} field {text}"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    get: str  # what the envelope's `get` echoes
    params: frozenset[str]
    handler: Callable[[Request], Any]


@dataclass(slots=True)
class Request:
    sport: str
    endpoint: str
    params: Params
    clock: Clock
    tz_name: str
    tz: tzinfo
    requests_today: int
    limit_day: int


def envelope(sport: str, get: str, params: Params, errors: dict[str, str] | list[Any],
             response: Any) -> dict[str, Any]:
    """The API-Sports envelope; football always pages, the v1 games APIs mostly do not."""
    body: dict[str, Any] = {
        "get": get, "parameters": dict(params) if params else [], "errors": errors,
        "results": len(response) if isinstance(response, list) else 0,
    }
    if sport in ("football", "american-football"):
        body["paging"] = {"current": 1, "total": 1}
    body["response"] = response
    return body


class UpstreamAPI:
    """Answers upstream requests from the seeded world (or the caller's tape)."""

    FRAGMENT_CACHE_MAX = 50_000

    def __init__(self, catalog: Catalog, schedule: Schedule) -> None:
        self.catalog = catalog
        self.schedule = schedule
        self.timezones = sorted(zoneinfo.available_timezones())
        self._zones: dict[str, tzinfo] = {"UTC": UTC}
        self._fragments: dict[tuple[Any, ...], orjson.Fragment] = {}
        self._standings_memo: dict[tuple[Any, ...], list[Any]] = {}
        self.endpoints = {sport: self._endpoints(sport) for sport in SCHEDULES}

    # -- entry point ---------------------------------------------------------------

    def answer(self, sport: str, endpoint: str, params: Params, clock: Clock,
               requests_today: int = 0, limit_day: int = 0) -> dict[str, Any]:
        spec = self.endpoints[sport].get(endpoint)
        if spec is None:
            return envelope(sport, endpoint, params,
                            {"endpoint": f"The {ucfirst(endpoint)} endpoint does not exist."},
                            [])
        unknown = {p: f"The {ucfirst(p)} field do not exist." for p in params
                   if p not in spec.params}
        if unknown:
            return envelope(sport, spec.get, params, unknown, [])
        tz_name, tz = self.zone(params.get("timezone"))
        request = Request(sport, endpoint, params, clock, tz_name, tz, requests_today,
                          limit_day)
        try:
            response = spec.handler(request)
        except UpstreamError as exc:
            return envelope(sport, spec.get, params, exc.errors, [])
        return envelope(sport, spec.get, params, [], response)

    def zone(self, name: str | None) -> tuple[str, tzinfo]:
        """The request's timezone; unknown or empty falls back to UTC, as upstream does."""
        if not name:
            return "UTC", UTC
        tz = self._zones.get(name)
        if tz is None:
            if name not in self.timezones:
                return "UTC", UTC
            tz = zoneinfo.ZoneInfo(name)
            self._zones[name] = tz
        return name, tz

    # -- endpoint table --------------------------------------------------------------

    def _endpoints(self, sport: str) -> dict[str, Endpoint]:
        def ep(get: str, params: str, handler: Callable[[Request], Any]) -> Endpoint:
            return Endpoint(get, frozenset(params.split()), handler)

        def empty(_: Request) -> list[Any]:
            return []

        table = {
            "status": ep("status", "", self._status),
            "timezone": ep("timezone", "", lambda r: list(self.timezones)),
        }
        if sport == "football":
            table.update({
                "countries": ep("countries", "name code search", self._countries),
                "leagues": ep("leagues", "id name country code season team type current "
                              "search last", self._leagues),
                "leagues/seasons": ep("leagues/seasons", "", self._seasons),
                "teams": ep("teams", "id name league season country code venue search",
                            self._teams),
                "standings": ep("standings", "league season team", self._standings),
                "fixtures": ep("fixtures", "id ids live date league season team last next "
                               "from to round status venue timezone", self._fixtures),
                "fixtures/events": ep("fixtures/events", "fixture team player type",
                                      self._fixture_events),
                "fixtures/rounds": ep("fixtures/rounds", "league season current dates "
                                      "timezone", empty),
                "fixtures/headtohead": ep("fixtures/headtohead", "h2h date league season "
                                          "last next from to status venue timezone", empty),
                "fixtures/statistics": ep("fixtures/statistics", "fixture team type half",
                                          empty),
                "fixtures/lineups": ep("fixtures/lineups", "fixture team player type", empty),
                "fixtures/players": ep("fixtures/players", "fixture team", empty),
                "odds/live": ep("odds/live", "fixture league bet", empty),
            })
            return table
        common = {
            "countries": ep("countries", "id name code search", self._countries),
            "seasons": ep("seasons", "", self._seasons),
            "leagues": ep("leagues", "id name country_id country type season search code",
                          self._leagues),
            "teams": ep("teams", "id name country_id country league season search",
                        self._teams),
            "standings": ep("standings", "league season team stage group", self._standings),
            "standings/stages": ep("standings/stages", "league season", self._stages),
            "standings/groups": ep("standings/groups", "league season", self._groups),
            "games": ep("games", "id date league season team timezone", self._games),
            "games/h2h": ep("games/h2h", "h2h date league season timezone", empty),
            "odds": ep("odds", "league season game bookmaker bet", empty),
        }
        table.update(common)
        if sport == "hockey":
            table["games/events"] = ep("games", "game", self._hockey_events)
        if sport == "basketball":
            table["games/statistics/teams"] = ep("games", "id", empty)
            table["games/statistics/players"] = ep("games", "id", empty)
        if sport == "american-football":
            table["games"] = ep("games", "id date league season team h2h live timezone",
                                self._games)
            table["leagues"] = ep("leagues", "id name code search country season current "
                                  "type", self._leagues)
            table["teams"] = ep("teams", "id name code league season search", self._teams)
            table["standings"] = ep("standings", "league season team conference division",
                                    self._standings)
            table["games/events"] = ep("games/events", "id", empty)
            table["games/statistics/teams"] = ep("games/statistics/teams", "id team", empty)
            del table["standings/stages"], table["standings/groups"], table["games/h2h"]
        return table

    # -- reference endpoints -----------------------------------------------------------

    def _today(self, request: Request) -> date:
        return datetime.fromtimestamp(request.clock.real_now, UTC).date()

    def _status(self, request: Request) -> dict[str, Any]:
        end = datetime.fromtimestamp(request.clock.real_now, UTC) + timedelta(days=30)
        return {
            "account": {"firstname": "Btsguru", "lastname": "Simulator",
                        "email": "simulator@btsguru.invalid"},
            "subscription": {"plan": "Custom", "end": end.isoformat(timespec="seconds"),
                             "active": True},
            "requests": {"current": request.requests_today, "limit_day": request.limit_day},
        }

    def _countries(self, request: Request) -> list[Any]:
        return reference.countries(self.catalog, request.sport, request.params)

    def _seasons(self, request: Request) -> list[Any]:
        return reference.seasons(self.catalog, request.sport, self._today(request))

    def _leagues(self, request: Request) -> list[Any]:
        self._check_int(request.params, "id", "team", "country_id", "last")
        self._check_season(request)
        return reference.leagues(self.catalog, request.sport, request.params,
                                 self._today(request))

    def _teams(self, request: Request) -> list[Any]:
        if not request.params:
            raise UpstreamError({"required": "At least one parameter is required."})
        self._check_int(request.params, "id", "league", "venue", "country_id")
        self._check_season(request)
        if "search" in request.params and len(request.params["search"]) < 3:
            raise field_error("search", "must be at least 3 characters.")
        return reference.teams(self.catalog, request.sport, request.params,
                               self._today(request))

    def _standings(self, request: Request) -> list[Any]:
        """Tables drawn once per (query, day): they change daily, not per request."""
        params = request.params
        key = (request.sport, tuple(sorted(params.items())), self._today(request))
        cached = self._standings_memo.get(key)
        if cached is not None:
            return cached
        if "season" not in params:
            raise field_error("season", "is required.")
        if "league" not in params and ("team" not in params or request.sport != "football"):
            raise field_error("league", "is required.")
        self._check_int(params, "league", "team")
        self._check_season(request)
        tables = reference.standings(self.catalog, request.sport, params, self._today(request))
        if len(self._standings_memo) >= self.FRAGMENT_CACHE_MAX:
            self._standings_memo.clear()
        self._standings_memo[key] = tables
        return tables

    def _stages(self, request: Request) -> list[Any]:
        rows = self._standings(request)
        return sorted({row["stage"] for table in rows for row in table})

    def _groups(self, request: Request) -> list[Any]:
        rows = self._standings(request)
        return sorted({row["group"]["name"] for table in rows for row in table})

    # -- checks --------------------------------------------------------------------------

    @staticmethod
    def _check_int(params: Params, *names: str) -> None:
        for name in names:
            if name in params and not params[name].isdigit():
                raise field_error(name, "must contain an integer.")

    @staticmethod
    def _check_season(request: Request) -> None:
        value = request.params.get("season")
        if value is None:
            return
        if request.sport == "basketball":
            if not re.fullmatch(r"\d{4}(-\d{4})?", value):
                raise field_error("season", "must contain 4 or 9 characters. "
                                  "Example: 2019 or 2019-2020")
        elif not re.fullmatch(r"\d{4}", value):
            raise field_error("season", "must contain 4 characters. Example: 2019")

    @staticmethod
    def _parse_date(params: Params, name: str) -> date:
        value = params[name]
        try:
            if not _DATE_RE.match(value):
                raise ValueError(value)
            return date.fromisoformat(value)
        except ValueError:
            raise field_error(name, "must contain a valid date. Example: 2019-01-30") from None

    # -- games ---------------------------------------------------------------------------

    def _day_bounds(self, day: date, tz: tzinfo) -> tuple[int, int]:
        start = datetime(day.year, day.month, day.day, tzinfo=tz)
        end = start + timedelta(days=1)
        return int(start.timestamp()), int(datetime(end.year, end.month, end.day,
                                                    tzinfo=tz).timestamp())

    def _window(self, request: Request) -> tuple[int, int]:
        """Games a league/season/team query sees: yesterday through simulated tomorrow."""
        real = int(request.clock.real_now)
        sim = int(request.clock.sim_now)
        return real - real % DAY_S - DAY_S, sim - sim % DAY_S + 2 * DAY_S

    def _fixtures(self, request: Request) -> list[Any]:
        params = request.params
        self._check_int(params, "id", "league", "team", "venue", "last", "next")
        self._check_season(request)
        if not set(params) - {"timezone"}:
            raise UpstreamError({"required": "At least one parameter is required."})
        if "ids" in params:
            if not _IDS_RE.match(params["ids"]):
                raise field_error("ids", "does not match the regular expression: "
                                  "[id-id-id...].")
            if len(params["ids"].split("-")) > MAX_IDS:
                raise UpstreamError({"ids": f"Maximum of {MAX_IDS} fixtures ids."})
        if "live" in params and params["live"] != "all" and not _LIVE_RE.match(params["live"]):
            raise field_error("live", "does not match the regular expression: "
                              "[id-id-id...] or string: all.")
        if ("from" in params) != ("to" in params):
            missing = "to" if "from" in params else "from"
            raise field_error(missing, "is required.")
        return self._select(request, details="full" if {"id", "ids"} & set(params)
                            else "events" if "live" in params else "plain")

    def _games(self, request: Request) -> list[Any]:
        params = request.params
        self._check_int(params, "id", "league", "team")
        self._check_season(request)
        if not set(params) - {"timezone"}:
            raise UpstreamError({"required": "At least one parameter is required."})
        if "live" in params and params["live"] != "all":
            raise field_error("live", "does not match the regular expression: string: all.")
        return self._select(request, details="plain")

    def _select(self, request: Request, details: str) -> list[Any]:
        """The games a fixtures/games query selects, filtered, as encoded fragments."""
        params = request.params
        sim_now = request.clock.sim_now
        games = self._filter(request, self._candidates(request))
        states = [(g, g.state_at(int(sim_now) - g.start_ts)) for g in games]
        if "live" in params:
            live = LIVE_CODES[request.sport]
            states = [(g, s) for g, s in states if s.code in live]
        if "status" in params:
            codes = set(params["status"].split("-"))
            states = [(g, s) for g, s in states if s.code in codes]
        if "last" in params:
            done = [(g, s) for g, s in states if s.code in _FINISHED]
            states = sorted(done, key=lambda gs: gs[0].start_ts)[-int(params["last"]):]
        if "next" in params:
            ahead = [(g, s) for g, s in states if s.code in ("NS", "TBD")
                     and g.start_ts > sim_now]
            states = sorted(ahead, key=lambda gs: gs[0].start_ts)[: int(params["next"])]
        return [self._fragment(state, request, details) for _, state in states]

    def _candidates(self, request: Request) -> list[Game]:
        """Games in the query's time frame: one id, a list, live now, a day or the window."""
        params = request.params
        sport = request.sport
        sim_now = request.clock.sim_now
        if ("league" in params and "season" not in params and "id" not in params
                and "live" not in params and "date" not in params):
            raise field_error("season", "is required.")
        games: list[Game]
        if "id" in params:
            game = self.schedule.game_by_id(sport, int(params["id"]), request.clock.real_now)
            games = [game] if game else []
        elif "ids" in params:
            seen: dict[int, Game] = {}
            for raw in params["ids"].split("-"):
                found = self.schedule.game_by_id(sport, int(raw), request.clock.real_now)
                if found is not None:
                    seen.setdefault(found.id, found)
            games = list(seen.values())
        elif "live" in params:
            longest = SCHEDULES[sport].longest_s
            games = self.schedule.games_between(sport, int(sim_now) - longest, int(sim_now) + 1)
            if params["live"] != "all":
                wanted = set(params["live"].split("-"))
                games = [g for g in games if str(g.league.id) in wanted]
        elif "date" in params:
            start, end = self._day_bounds(self._parse_date(params, "date"), request.tz)
            games = self.schedule.games_between(sport, start, end)
        elif "from" in params:
            first = self._parse_date(params, "from")
            last = self._parse_date(params, "to")
            if last < first or (last - first).days > 31:
                raise field_error("to", "must be a date after From, at most 31 days later.")
            start, _ = self._day_bounds(first, request.tz)
            _, end = self._day_bounds(last, request.tz)
            games = self.schedule.games_between(sport, start, end)
        else:
            games = self.schedule.games_between(sport, *self._window(request))
        return games

    def _filter(self, request: Request, games: list[Game]) -> list[Game]:
        params = request.params
        if not params.keys() & {"league", "season", "team", "round", "venue"}:
            return games
        out = []
        season = reference.parse_season(params["season"]) if "season" in params else None
        for game in games:
            if "league" in params and str(game.league.id) != params["league"]:
                continue
            if season is not None and game.season != season:
                continue
            if "team" in params and params["team"] not in (str(game.home.id),
                                                           str(game.away.id)):
                continue
            if "round" in params and params["round"] != game.round:
                continue
            if "venue" in params and params["venue"] != str(game.home.venue_id):
                continue
            out.append(game)
        return out

    def _fragment(self, state: Any, request: Request, details: str) -> orjson.Fragment:
        game = state.game
        key = (game.sport, game.id, state.key, request.tz_name, details)
        fragment = self._fragments.get(key)
        if fragment is None:
            if len(self._fragments) >= self.FRAGMENT_CACHE_MAX:
                self._fragments.clear()
            fragment = orjson.Fragment(orjson.dumps(
                render_game(state, request.tz_name, request.tz, details)))
            self._fragments[key] = fragment
        return fragment

    def _fixture_events(self, request: Request) -> list[Any]:
        params = request.params
        if "fixture" not in params:
            raise field_error("fixture", "is required.")
        self._check_int(params, "fixture", "team", "player")
        game = self.schedule.game_by_id("football", int(params["fixture"]),
                                        request.clock.real_now)
        if game is None:
            return []
        state = game.state_at(int(request.clock.sim_now) - game.start_ts)
        out = []
        for event in state.happened():
            item = football_event(event, game)
            if "team" in params and str(item["team"]["id"]) != params["team"]:
                continue
            if "player" in params and str(item["player"]["id"]) != params["player"]:
                continue
            if "type" in params and item["type"].lower() != params["type"].lower():
                continue
            out.append(item)
        return out

    def _hockey_events(self, request: Request) -> list[Any]:
        params = request.params
        if "game" not in params:
            raise field_error("game", "is required.")
        self._check_int(params, "game")
        game = self.schedule.game_by_id("hockey", int(params["game"]), request.clock.real_now)
        if game is None:
            return []
        state = game.state_at(int(request.clock.sim_now) - game.start_ts)
        return [hockey_event(e, game) for e in state.happened() if e.kind in ("goal", "penalty")]
