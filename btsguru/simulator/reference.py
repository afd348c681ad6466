"""The simulated upstream's reference endpoints: leagues, teams, standings, countries.

Where it sits: beside `render`, called by `api` for the endpoints that do not list
games. Shapes follow each API-Sports product (football v3; basketball, hockey, baseball
and American football v1). Standings are drawn per (seed, league, season) from the
seeded teams, so they are stable for a seed and plausible (points follow results).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from btsguru.simulator.catalog import (
    MEDIA,
    Catalog,
    Country,
    League,
    Team,
    season_start_year,
    seeded_rng,
)
from btsguru.simulator.render import country_v1, season_label, team_ref

FIRST_SEASON = 2018  # oldest season the simulated leagues have data for


def current_season(league: League, today: date) -> int:
    return season_start_year(league, today.year, today.month)


def season_years(league: League, today: date) -> list[int]:
    return list(range(FIRST_SEASON, current_season(league, today) + 1))


def _season_span(league: League, year: int) -> tuple[str, str]:
    if league.season_kind == "calendar":
        return f"{year}-03-20", f"{year}-10-30"
    return f"{year}-08-10", f"{year + 1}-06-15"


def parse_season(value: str) -> int | None:
    """A season parameter as its start year: "2024" or "2024-2025"."""
    head = value.split("-", 1)[0]
    return int(head) if head.isdigit() and len(head) == 4 else None


def _matches_text(needle: str | None, *hay: str | None) -> bool:
    if needle is None:
        return True
    low = needle.lower()
    return any(h is not None and low in h.lower() for h in hay)


def leagues(catalog: Catalog, sport: str, params: dict[str, str], today: date) -> list[Any]:
    out: list[Any] = []
    team_id = int(params["team"]) if params.get("team", "").isdigit() else None
    for league in catalog.leagues[sport]:
        years = season_years(league, today)
        if "id" in params and params["id"] != str(league.id):
            continue
        if "name" in params and params["name"].lower() != league.name.lower():
            continue
        if "country" in params and params["country"].lower() != league.country.name.lower():
            continue
        if "code" in params and params["code"].upper() != (league.country.code or ""):
            continue
        if "type" in params and params["type"].lower() != league.type.lower():
            continue
        if not _matches_text(params.get("search"), league.name, league.country.name):
            continue
        if team_id is not None and all(t.id != team_id for t in league.teams):
            continue
        if "season" in params:
            wanted = parse_season(params["season"])
            if wanted not in years:
                continue
            years = [wanted]
        if params.get("current") == "true":
            years = years[-1:]
        out.append(_league_item(sport, league, years, current_season(league, today)))
    if params.get("last", "").isdigit():
        out = out[-int(params["last"]):]
    return out


def _league_item(sport: str, league: League, years: list[int], current: int) -> dict[str, Any]:
    seasons = []
    for year in years:
        start, end = _season_span(league, year)
        if sport == "football":
            coverage: dict[str, Any] = {
                "fixtures": {"events": True, "lineups": True, "statistics_fixtures": True,
                             "statistics_players": True},
                "standings": True, "players": True, "top_scorers": True, "top_assists": True,
                "top_cards": True, "injuries": True, "predictions": True, "odds": True,
            }
        else:
            coverage = {"games": {"statistics": {"teams": True, "players": True},
                                  "events": sport == "hockey"},
                        "standings": True, "players": True, "odds": True}
        season: dict[str, Any] = {"start": start, "end": end, "current": year == current,
                                  "coverage": coverage}
        if sport in ("football", "american-football"):
            seasons.append({"year": year, **season})
        else:
            seasons.append({"season": season_label(sport, league, year), **season})
    country = {"name": league.country.name, "code": league.country.code,
               "flag": league.country.flag}
    if sport == "football":
        return {"league": {"id": league.id, "name": league.name, "type": league.type,
                           "logo": league.logo},
                "country": country, "seasons": seasons}
    if sport == "american-football":
        return {"league": {"id": league.id, "name": league.name, "logo": league.logo},
                "country": country, "seasons": seasons}
    return {"id": league.id, "name": league.name, "type": league.type, "logo": league.logo,
            "country": country_v1(league.country), "seasons": seasons}


def teams(catalog: Catalog, sport: str, params: dict[str, str], today: date) -> list[Any]:
    pool: list[Team] = []
    for league in catalog.leagues[sport]:
        if "league" in params and params["league"] != str(league.id):
            continue
        if "season" in params and parse_season(params["season"]) not in season_years(
                league, today):
            continue
        pool.extend(league.teams)
    out: list[Any] = []
    for team in pool:
        if "id" in params and params["id"] != str(team.id):
            continue
        if "name" in params and params["name"].lower() != team.name.lower():
            continue
        if "country" in params and params["country"].lower() != team.country.name.lower():
            continue
        if "code" in params and params["code"].upper() != team.code:
            continue
        if "venue" in params and params["venue"] != str(team.venue_id):
            continue
        if not _matches_text(params.get("search"), team.name):
            continue
        out.append(_team_item(sport, team))
    return out


def _team_item(sport: str, team: Team) -> dict[str, Any]:
    if sport == "football":
        return {
            "team": {"id": team.id, "name": team.name, "code": team.code,
                     "country": team.country.name, "founded": team.founded, "national": False,
                     "logo": team.logo},
            "venue": {"id": team.venue_id, "name": team.venue_name,
                      "address": f"1 Stadium Way, {team.city}", "city": team.city,
                      "capacity": 20000 + team.venue_id % 40000, "surface": "grass",
                      "image": f"{MEDIA}/football/venues/{team.venue_id}.png"},
        }
    if sport == "american-football":
        return {"id": team.id, "name": team.name, "code": team.code, "city": team.city,
                "coach": None, "owner": None, "stadium": team.venue_name,
                "established": team.founded, "logo": team.logo,
                "country": {"name": team.country.name, "code": team.country.code,
                            "flag": team.country.flag}}
    # "nationnal" is the v1 APIs' own spelling.
    return {"id": team.id, "name": team.name, "logo": team.logo, "nationnal": False,
            "country": country_v1(team.country)}


def countries(catalog: Catalog, sport: str, params: dict[str, str]) -> list[Any]:
    out: list[Any] = []
    for country in catalog.countries[sport]:
        if "name" in params and params["name"].lower() != country.name.lower():
            continue
        if "code" in params and params["code"].upper() != (country.code or ""):
            continue
        if "id" in params and params["id"] != str(country.id):
            continue
        if not _matches_text(params.get("search"), country.name):
            continue
        out.append(_country_item(sport, country))
    return out


def _country_item(sport: str, country: Country) -> dict[str, Any]:
    if sport == "football":
        return {"name": country.name, "code": country.code, "flag": country.flag}
    return country_v1(country)


def seasons(catalog: Catalog, sport: str, today: date) -> list[Any]:
    years = sorted({y for league in catalog.leagues[sport] for y in season_years(league, today)})
    if sport != "basketball":
        return list(years)
    # Basketball lists calendar-year and cross-year seasons side by side.
    out: list[Any] = []
    for year in years:
        out += [year, f"{year}-{year + 1}"]
    return out


# --- standings --------------------------------------------------------------------


def _records(catalog: Catalog, sport: str, league: League, season: int,
             today: date) -> list[dict[str, Any]]:
    rng = seeded_rng("standings", catalog.seed, sport, league.id, season)
    played = 20 if season == current_season(league, today) else 2 * (len(league.teams) - 1)
    rows: list[dict[str, Any]] = []
    for team in league.teams:
        strength = rng.random()
        win = sum(rng.random() < 0.25 + 0.4 * strength for _ in range(played))
        draw = sum(rng.random() < 0.28 for _ in range(played - win)) \
            if sport in ("football", "hockey") else 0
        lose = played - win - draw
        scored = round(win * rng.uniform(1.6, 2.2) + draw * 1.0 + lose * 0.6)
        conceded = round(lose * rng.uniform(1.6, 2.2) + draw * 1.0 + win * 0.6)
        form = "".join(rng.choices("WDL" if sport == "football" else "WL", k=5))
        rows.append({"team": team, "played": played, "win": win, "draw": draw, "lose": lose,
                     "for": scored, "against": conceded, "form": form})
    rows.sort(key=lambda r: (-(3 * r["win"] + r["draw"]), -(r["for"] - r["against"]),
                             r["team"].name))
    return rows


def standings(catalog: Catalog, sport: str, params: dict[str, str], today: date) -> list[Any]:
    season = parse_season(params.get("season", ""))
    out: list[Any] = []
    for league in catalog.leagues[sport]:
        if "league" in params and params["league"] != str(league.id):
            continue
        if season not in season_years(league, today):
            continue
        rows = _records(catalog, sport, league, season, today)
        if "team" in params:
            rows = [r for r in rows if str(r["team"].id) == params["team"]]
        if not rows:
            continue
        if sport == "football":
            out.append(_football_table(league, season, rows, today))
        elif sport == "american-football":
            out.extend(_gridiron_rows(league, season, rows))
        else:
            out.append(_v1_table(sport, league, season, rows))
    return out


def _football_table(league: League, season: int, rows: list[dict[str, Any]],
                    today: date) -> dict[str, Any]:
    table = []
    for rank, r in enumerate(rows, start=1):
        stats = {"played": r["played"], "win": r["win"], "draw": r["draw"], "lose": r["lose"],
                 "goals": {"for": r["for"], "against": r["against"]}}
        home = {"played": r["played"] // 2, "win": r["win"] // 2, "draw": r["draw"] // 2,
                "lose": r["played"] // 2 - r["win"] // 2 - r["draw"] // 2,
                "goals": {"for": r["for"] // 2, "against": r["against"] // 2}}
        away = {key: stats[key] - home[key] for key in ("played", "win", "draw", "lose")}
        away["goals"] = {"for": r["for"] - r["for"] // 2,
                         "against": r["against"] - r["against"] // 2}
        table.append({
            "rank": rank, "team": team_ref(r["team"]), "points": 3 * r["win"] + r["draw"],
            "goalsDiff": r["for"] - r["against"], "group": league.name, "form": r["form"],
            "status": "same",
            "description": "Promotion" if rank <= 4 else "Relegation"
            if rank > len(rows) - 3 else None,
            "all": stats, "home": home, "away": away,
            "update": f"{today.isoformat()}T00:00:00+00:00",
        })
    return {"league": {"id": league.id, "name": league.name, "country": league.country.name,
                       "logo": league.logo, "flag": league.country.flag, "season": season,
                       "standings": [table]}}


def _percentage(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "0.000"


def _v1_table(sport: str, league: League, season: int,
              rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    stage = f"{league.name} - Regular Season"
    for position, r in enumerate(rows, start=1):
        games: dict[str, Any] = {
            "played": r["played"],
            "win": {"total": r["win"], "percentage": _percentage(r["win"], r["played"])},
            "lose": {"total": r["lose"], "percentage": _percentage(r["lose"], r["played"])},
        }
        row: dict[str, Any] = {
            "position": position, "stage": stage, "group": {"name": league.name, "points": None},
            "team": team_ref(r["team"]),
            "league": {"id": league.id, "name": league.name, "type": league.type,
                       "season": season_label(sport, league, season), "logo": league.logo},
            "country": country_v1(league.country), "games": games,
        }
        if sport == "hockey":
            # Hockey's "draws" are games lost in overtime or the shoot-out.
            games["win_overtime"] = {"total": 0, "percentage": "0.000"}
            games["lose_overtime"] = {"total": r["draw"],
                                      "percentage": _percentage(r["draw"], r["played"])}
            row.update(goals={"for": r["for"], "against": r["against"]},
                       points=2 * r["win"] + r["draw"])
        else:
            scale = 28 if sport == "basketball" else 1  # points, not goals
            row["points"] = {"for": r["for"] * scale, "against": r["against"] * scale}
        row.update(form=r["form"], description="Play Offs" if position <= 8 else None)
        table.append(row)
    return table


def _gridiron_rows(league: League, season: int,
                   rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for position, r in enumerate(rows, start=1):
        conference = "American Football Conference" if position % 2 else \
            "National Football Conference"
        out.append({
            "league": {"id": league.id, "name": league.name,
                       "season": season_label("american-football", league, season),
                       "logo": league.logo,
                       "country": {"name": league.country.name, "code": league.country.code,
                                   "flag": league.country.flag}},
            "conference": conference, "division": ("East", "North", "South", "West")[
                position % 4],
            "position": (position + 1) // 2,
            "team": team_ref(r["team"]), "won": r["win"], "lost": r["lose"], "ties": 0,
            "points": {"for": r["for"] * 11, "against": r["against"] * 11,
                       "difference": (r["for"] - r["against"]) * 11},
            "records": {"home": f"{r['win'] // 2}-{r['lose'] // 2}",
                        "road": f"{r['win'] - r['win'] // 2}-{r['lose'] - r['lose'] // 2}",
                        "conference": None, "division": None},
            "streak": f"{r['form'][-1]}1",
            "ncaa_conference": {"won": None, "lost": None,
                                "points": {"for": None, "against": None}},
        })
    return out
