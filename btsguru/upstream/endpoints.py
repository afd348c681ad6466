"""What the raw proxy may ask the upstream: each sport's allow-list of endpoints and their
known parameters, and the normalization that lets trivially different queries share one
cache entry (`/v1/{sport}/raw/{endpoint}`).

The lists follow the upstream reference (API-Football v3; the v1 "games" family for the
other sports). Paginated or per-player endpoints are left out: they multiply upstream
calls without serving a live-scores product, and each left-out endpoint is one a user
can't spend the shared quota on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date

from btsguru.errors import BadRequest

Validator = Callable[[str], bool]

_INT = re.compile(r"^[0-9]{1,10}$")
_IDS = re.compile(r"^[0-9]{1,10}(-[0-9]{1,10}){0,19}$")  # football's ids=: up to 20
_H2H = re.compile(r"^[0-9]{1,10}-[0-9]{1,10}$")
_SEASON = re.compile(r"^[0-9]{4}(-[0-9]{4})?$")
_TEXT = re.compile(r"^[\w .'&()-]{1,60}$", re.UNICODE)
_CODE = re.compile(r"^[A-Za-z]{2,6}$")
_TZ = re.compile(r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}$")
_STATUS = re.compile(r"^[A-Z0-9]{1,5}(-[A-Z0-9]{1,5}){0,19}$")


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _matches(pattern: re.Pattern[str]) -> Validator:
    return lambda value: pattern.fullmatch(value) is not None


def _one_of(*choices: str) -> Validator:
    return lambda value: value in choices


INT = _matches(_INT)
DATE = _is_date
TEXT = _matches(_TEXT)
SEASON = _matches(_SEASON)
TIMEZONE = _matches(_TZ)
CODE = _matches(_CODE)
BOOL = _one_of("true", "false")
LAST_NEXT = lambda value: _INT.fullmatch(value) is not None and 1 <= int(value) <= 99  # noqa: E731
LIVE = lambda value: value == "all" or _IDS.fullmatch(value) is not None  # noqa: E731

# What each kind of value looks like, named in error messages.
_DESCRIPTIONS: dict[Validator, str] = {
    INT: "an integer id", DATE: "a date YYYY-MM-DD", TEXT: "text (letters, digits, spaces)",
    SEASON: "a season YYYY or YYYY-YYYY", TIMEZONE: "an IANA time zone such as Europe/London",
    CODE: "a 2-6 letter code", BOOL: "true or false", LAST_NEXT: "an integer from 1 to 99",
    LIVE: "all, or league ids joined with -",
}


@dataclass(frozen=True)
class Endpoint:
    name: str
    params: Mapping[str, Validator]
    required_any: tuple[str, ...] = ()  # at least one of these must be given
    kind: str = "static"  # what it holds, for the cache TTL: static, games, events, standings


def _endpoint(endpoint: str, kind: str = "static", required_any: tuple[str, ...] = (), /,
              **params: Validator) -> Endpoint:
    return Endpoint(endpoint, params, required_any, kind)


_FIXTURE_FILTERS = {"date": DATE, "league": INT, "season": SEASON, "last": LAST_NEXT,
                    "next": LAST_NEXT, "from": DATE, "to": DATE,
                    "status": _matches(_STATUS), "venue": INT, "timezone": TIMEZONE}

FOOTBALL = (
    _endpoint("status"),
    _endpoint("timezone"),
    _endpoint("countries", name=TEXT, code=CODE, search=TEXT),
    _endpoint("leagues", id=INT, name=TEXT, country=TEXT, code=CODE, season=SEASON, team=INT,
              type=_one_of("league", "cup"), current=BOOL, search=TEXT, last=LAST_NEXT),
    _endpoint("leagues/seasons"),
    _endpoint("teams", "static", ("id", "name", "league", "season", "country", "code", "venue",
                                  "search"),
              id=INT, name=TEXT, league=INT, season=SEASON, country=TEXT, code=CODE, venue=INT,
              search=TEXT),
    _endpoint("standings", "standings", ("league", "team"), league=INT, season=SEASON, team=INT),
    _endpoint("fixtures", "games", ("id", "ids", "live", "date", "league", "team", "last", "next",
                                    "from", "round"),
              id=INT, ids=_matches(_IDS), live=LIVE, team=INT, round=TEXT, **_FIXTURE_FILTERS),
    _endpoint("fixtures/rounds", "static", ("league",), league=INT, season=SEASON, current=BOOL),
    _endpoint("fixtures/events", "events", ("fixture",), fixture=INT, team=INT, player=INT,
              type=TEXT),
    _endpoint("fixtures/lineups", "events", ("fixture",), fixture=INT, team=INT, player=INT,
              type=TEXT),
    _endpoint("fixtures/statistics", "events", ("fixture",), fixture=INT, team=INT, type=TEXT,
              half=BOOL),
    _endpoint("fixtures/headtohead", "games", ("h2h",), h2h=_matches(_H2H), **_FIXTURE_FILTERS),
)


def _v1_sport(*, live: bool, events: bool) -> tuple[Endpoint, ...]:
    games: dict[str, Validator] = {"id": INT, "date": DATE, "league": INT, "season": SEASON,
                                   "team": INT, "timezone": TIMEZONE}
    required: tuple[str, ...] = ("id", "date", "league", "team")
    if live:  # American football has live=all (and h2h on /games)
        games |= {"live": _one_of("all"), "h2h": _matches(_H2H)}
        required += ("live", "h2h")
    endpoints = [
        _endpoint("status"),
        _endpoint("timezone"),
        _endpoint("seasons"),
        _endpoint("countries", id=INT, name=TEXT, code=CODE, search=TEXT),
        _endpoint("leagues", id=INT, name=TEXT, country_id=INT, country=TEXT, type=TEXT,
                  season=SEASON, search=TEXT, code=CODE),
        _endpoint("teams", "static", ("id", "name", "league", "country_id", "country", "search"),
                  id=INT, name=TEXT, country_id=INT, country=TEXT, league=INT, season=SEASON,
                  search=TEXT),
        _endpoint("standings", "standings", ("league",), league=INT, season=SEASON, team=INT,
                  stage=TEXT, group=TEXT),
        _endpoint("standings/stages", "standings", ("league",), league=INT, season=SEASON),
        _endpoint("standings/groups", "standings", ("league",), league=INT, season=SEASON),
        _endpoint("games", "games", required, **games),
        _endpoint("games/h2h", "games", ("h2h",), h2h=_matches(_H2H), date=DATE, league=INT,
                  season=SEASON, timezone=TIMEZONE),
    ]
    if events:  # hockey's goals and penalties come from /games/events
        endpoints.append(_endpoint("games/events", "events", ("game",), game=INT))
    return tuple(endpoints)


ALLOW_LIST: Mapping[str, Mapping[str, Endpoint]] = {
    sport: {e.name: e for e in endpoints} for sport, endpoints in {
        "football": FOOTBALL,
        "basketball": _v1_sport(live=False, events=False),
        "hockey": _v1_sport(live=False, events=True),
        "baseball": _v1_sport(live=False, events=False),
        "american-football": _v1_sport(live=True, events=False),
    }.items()
}


def lookup_endpoint(sport: str, name: str) -> Endpoint | None:
    return ALLOW_LIST.get(sport, {}).get(name.strip("/"))


def normalize_params(endpoint: Endpoint, raw: Mapping[str, list[str]]) -> dict[str, str]:
    """Validate a query against the endpoint's known parameters and return it in one
    canonical form (sorted keys, one value each, trimmed), or raise `BadRequest`."""
    params: dict[str, str] = {}
    for name in sorted(raw):
        values = [v.strip() for v in raw[name]]
        if name not in endpoint.params:
            known = ", ".join(sorted(endpoint.params)) or "none"
            raise BadRequest(f"unknown parameter {name!r} for {endpoint.name} (known: {known})")
        if len(values) != 1:
            raise BadRequest(f"parameter {name!r} given {len(values)} times")
        value = values[0]
        validate = endpoint.params[name]
        if not value or not validate(value):
            raise BadRequest(f"parameter {name!r} must be {_DESCRIPTIONS.get(validate, 'valid')}, "
                             f"got {value[:40]!r}")
        params[name] = value
    if endpoint.required_any and not params.keys() & set(endpoint.required_any):
        raise BadRequest(f"{endpoint.name} needs at least one of: "
                         f"{', '.join(endpoint.required_any)}")
    return params
