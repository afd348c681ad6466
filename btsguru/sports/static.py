"""Static reference data: the upstream's `/leagues` and `/teams` items -> typed records.

Where it sits: beside `normalize` (pollers -> **static** -> `GameStore.save_leagues` /
`save_teams` -> database). Like the game adapters, the parsers tolerate the upstream's
drift (a missing or null field never raises; an item without an id is skipped).

Shapes: football v3 and American football nest the league as `{league: {...},
country: {...}, seasons: [{year, current}]}` and football nests a team as `{team:
{...}, venue: {...}}`; the v1 sports (basketball, hockey, baseball) put the fields at
the top level, with `seasons: [{season, current}]` and `country: {id, name, ...}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from btsguru.sports.fields import int_or_none, obj, season, text


@dataclass(frozen=True)
class LeagueInfo:
    id: int
    name: str
    country: str | None
    season: int | str | None  # the current season (or the latest the upstream listed)
    logo: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "country": self.country,
                "season": self.season, "logo": self.logo}


@dataclass(frozen=True)
class TeamInfo:
    id: int
    name: str
    logo: str | None
    league_id: int | None  # the league the poller asked `/teams` about, when it did

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "logo": self.logo,
                "league_id": self.league_id}


def leagues_from_upstream(sport: str, response_items: Iterable[Any]) -> list[LeagueInfo]:
    """The leagues of a `/leagues` response's `response` list, in its order."""
    out = []
    for item in _items(response_items):
        nested = "league" in item and isinstance(item["league"], dict)
        league = obj(item["league"]) if nested else item
        league_id = int_or_none(league.get("id"))
        if league_id is None:
            continue
        country = item.get("country")
        country_name = text(obj(country).get("name")) if isinstance(country, dict) \
            else text(country)
        out.append(LeagueInfo(id=league_id, name=text(league.get("name")) or "",
                              country=country_name,
                              season=_current_season(item.get("seasons")),
                              logo=text(league.get("logo"))))
    return out


def teams_from_upstream(sport: str, response_items: Iterable[Any], *,
                        league_id: int | None = None) -> list[TeamInfo]:
    """The teams of a `/teams` response's `response` list (of `league_id` when the
    poller asked for one league's teams)."""
    out = []
    for item in _items(response_items):
        team = obj(item["team"]) if isinstance(item.get("team"), dict) else item
        team_id = int_or_none(team.get("id"))
        if team_id is None:
            continue
        out.append(TeamInfo(id=team_id, name=text(team.get("name")) or "",
                            logo=text(team.get("logo")), league_id=league_id))
    return out


def _items(response_items: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    if not isinstance(response_items, list | tuple):
        return ()
    return (item for item in response_items if isinstance(item, dict))


def _current_season(seasons: Any) -> int | str | None:
    """The season flagged `current`, else the last listed (football and American
    football call it `year`, the v1 sports `season`)."""
    if not isinstance(seasons, list):
        return None
    found: int | str | None = None
    for entry in seasons:
        if not isinstance(entry, dict):
            continue
        value = season(entry.get("year", entry.get("season")))
        if value is None:
            continue
        if entry.get("current") is True:
            return value
        found = value
    return found
