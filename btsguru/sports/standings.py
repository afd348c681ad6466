"""League tables: each sport's upstream `/standings` answer -> the contract's rows.

Where it sits: beside `normalize` (pollers -> **standings** -> `StandingsStore`). Upstream
dicts stop here; the rows are the contract's shape (section 3): rank, team {id, name},
points, played, won, drawn, lost, scored, conceded, group.

Shapes (API-SPORTS.md; `simulator/reference.py` renders the same):
- football: `response[i].league.standings` is a list of groups, each a list of rows with
  `rank`, `team`, `points`, `group` and `all.{played, win, draw, lose, goals.{for,
  against}}`;
- basketball, hockey, baseball (v1): `response` is a list of groups, each a list of rows
  with `position`, `group.name`, `team`, `games.{played, win.total, lose.total}` and
  `points.{for, against}` (scored points); hockey also has `win_overtime` and
  `lose_overtime`, `goals.{for, against}` and `points` as the table points;
- American football: `response` is a flat list of rows with `conference`, `division`,
  `position` (within the division), `won`, `lost`, `ties`, `points.{for, against}`.

Which fields mean what:
- `drawn` is null where the sport has no draws (basketball, baseball, hockey, whose
  overtime and shoot-out decide every game: OT wins and losses count in `won`/`lost`);
  football counts draws, American football ties.
- `points` are table points where the sport keeps them (football, hockey), else null
  (the others rank by winning percentage); `scored`/`conceded` are goals, runs or points.
Every field tolerates absence (null); a row without a team id is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from btsguru.sports.fields import int_or_none, obj, season, text

SPORTS_WITH_DRAWS = frozenset({"football", "american-football"})


@dataclass(frozen=True)
class StandingRow:
    rank: int | None
    team_id: int
    team_name: str
    points: int | None
    played: int | None
    won: int | None
    drawn: int | None
    lost: int | None
    scored: int | None
    conceded: int | None
    group: str | None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "team": {"id": self.team_id, "name": self.team_name},
                "points": self.points, "played": self.played, "won": self.won,
                "drawn": self.drawn, "lost": self.lost, "scored": self.scored,
                "conceded": self.conceded, "group": self.group}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StandingRow:
        team = data["team"]
        return cls(rank=data.get("rank"), team_id=int(team["id"]), team_name=team["name"],
                   points=data.get("points"), played=data.get("played"),
                   won=data.get("won"), drawn=data.get("drawn"), lost=data.get("lost"),
                   scored=data.get("scored"), conceded=data.get("conceded"),
                   group=data.get("group"))


def normalize_standings(sport: str, response: Any) -> list[StandingRow]:
    """The rows of one `/standings` answer's `response`, in table order (groups in the
    upstream's order; American football by conference and division)."""
    if not isinstance(response, list):
        return []
    if sport == "football":
        return [row for item in _dicts(response)
                for group in _lists(obj(obj(item).get("league")).get("standings"))
                for row in _rows(group, _football_row)]
    if sport == "american-football":
        rows = _rows(_flatten(response), _gridiron_row)
        return sorted(rows, key=lambda r: (r.group or "", r.rank if r.rank is not None
                                           else 1 << 30))
    if sport in ("basketball", "hockey", "baseball"):
        return _rows(_flatten(response), lambda item: _v1_row(sport, item))
    raise ValueError(f"no standings normalizer for sport {sport!r}")


def standings_season(sport: str, response: Any) -> str | None:
    """The season an answer is for (its first row's league season), as text."""
    for item in _flatten(response) if isinstance(response, list) else ():
        league = obj(item.get("league"))
        value = season(league.get("season"))
        if value is not None:
            return str(value)
    return None


def _football_row(item: Mapping[str, Any]) -> StandingRow | None:
    team = obj(item.get("team"))
    team_id = int_or_none(team.get("id"))
    if team_id is None:
        return None
    stats = obj(item.get("all"))
    goals = obj(stats.get("goals"))
    return StandingRow(rank=int_or_none(item.get("rank")), team_id=team_id,
                       team_name=text(team.get("name")) or "",
                       points=int_or_none(item.get("points")),
                       played=int_or_none(stats.get("played")),
                       won=int_or_none(stats.get("win")), drawn=int_or_none(stats.get("draw")),
                       lost=int_or_none(stats.get("lose")),
                       scored=int_or_none(goals.get("for")),
                       conceded=int_or_none(goals.get("against")),
                       group=text(item.get("group")))


def _v1_row(sport: str, item: Mapping[str, Any]) -> StandingRow | None:
    team = obj(item.get("team"))
    team_id = int_or_none(team.get("id"))
    if team_id is None:
        return None
    games = obj(item.get("games"))
    won = _sum(_total(games, "win"), _total(games, "win_overtime"))
    lost = _sum(_total(games, "lose"), _total(games, "lose_overtime"))
    if sport == "hockey":
        goals = obj(item.get("goals"))
        points, scored, conceded = (int_or_none(item.get("points")),
                                    int_or_none(goals.get("for")),
                                    int_or_none(goals.get("against")))
    else:
        tally = obj(item.get("points"))
        points, scored, conceded = (None, int_or_none(tally.get("for")),
                                    int_or_none(tally.get("against")))
    group = obj(item.get("group")).get("name") if isinstance(item.get("group"), dict) \
        else item.get("group")
    return StandingRow(rank=int_or_none(item.get("position")), team_id=team_id,
                       team_name=text(team.get("name")) or "", points=points,
                       played=int_or_none(games.get("played")), won=won, drawn=None,
                       lost=lost, scored=scored, conceded=conceded,
                       group=text(group) or text(item.get("stage")))


def _gridiron_row(item: Mapping[str, Any]) -> StandingRow | None:
    team = obj(item.get("team"))
    team_id = int_or_none(team.get("id"))
    if team_id is None:
        return None
    won, lost, ties = (int_or_none(item.get(k)) for k in ("won", "lost", "ties"))
    played = None if won is None or lost is None else won + lost + (ties or 0)
    tally = obj(item.get("points"))
    conference, division = text(item.get("conference")), text(item.get("division"))
    group = " - ".join(part for part in (conference, division) if part) or None
    return StandingRow(rank=int_or_none(item.get("position")), team_id=team_id,
                       team_name=text(team.get("name")) or "", points=None, played=played,
                       won=won, drawn=ties, lost=lost, scored=int_or_none(tally.get("for")),
                       conceded=int_or_none(tally.get("against")), group=group)


def _total(games: Mapping[str, Any], key: str) -> int | None:
    value = games.get(key)
    return int_or_none(obj(value).get("total")) if isinstance(value, dict) \
        else int_or_none(value)


def _sum(first: int | None, extra: int | None) -> int | None:
    if first is None:
        return extra
    return first + (extra or 0)


def _rows(items: Iterable[Any], parse: Any) -> list[StandingRow]:
    out = []
    for item in items:
        if isinstance(item, dict):
            row = parse(item)
            if row is not None:
                out.append(row)
    return out


def _flatten(response: list[Any]) -> list[Mapping[str, Any]]:
    """Groups (lists of rows) or rows, as one list of rows."""
    out: list[Mapping[str, Any]] = []
    for entry in response:
        if isinstance(entry, list):
            out.extend(row for row in entry if isinstance(row, dict))
        elif isinstance(entry, dict):
            out.append(entry)
    return out


def _dicts(items: list[Any]) -> list[Mapping[str, Any]]:
    return [item for item in items if isinstance(item, dict)]


def _lists(value: Any) -> list[list[Any]]:
    if not isinstance(value, list):
        return []
    if value and all(isinstance(v, dict) for v in value):
        return [value]  # one group sent flat
    return [group for group in value if isinstance(group, list)]
