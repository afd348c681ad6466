"""The simulated upstream's reference data: countries, leagues, teams and players.

Where it sits: the bottom of the simulator (`btsguru simulate`). `games` schedules
fixtures between these teams and `render`/`reference` turn them into API-Sports JSON.
Everything is derived from the seed alone, so the same seed always yields the same
names and ids. Nothing here is shared with the relay's normalizers on purpose: the
simulator is the relay's independent counterpart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MEDIA = "https://media.api-sports.io"


def seeded_rng(*parts: object) -> random.Random:
    """A RNG fixed by its parts: the simulation must repeat exactly for a seed."""
    return random.Random(":".join(str(p) for p in parts))  # noqa: S311 - simulation, not secrets


@dataclass(frozen=True, slots=True)
class Country:
    id: int
    name: str
    code: str | None
    flag: str | None


@dataclass(frozen=True, slots=True)
class Player:
    id: int
    name: str
    number: int


@dataclass(frozen=True, slots=True)
class Team:
    id: int
    name: str
    code: str
    city: str
    logo: str
    country: Country
    venue_id: int
    venue_name: str
    founded: int
    players: tuple[Player, ...]


@dataclass(frozen=True, slots=True)
class League:
    id: int
    name: str
    type: str  # "League" or "Cup", as the upstream spells it
    country: Country
    logo: str
    # "cross": seasons span two years (Aug-May); "calendar": one calendar year.
    season_kind: str
    period_min: int  # regulation length of one period (quarter) in minutes, where it varies
    teams: tuple[Team, ...]


@dataclass(frozen=True, slots=True)
class LeagueSpec:
    id: int
    name: str
    type: str
    country: Country
    season_kind: str
    n_teams: int
    period_min: int = 0


def _country(cid: int, name: str, code: str | None, flag: str | None) -> Country:
    return Country(cid, name, code, f"{MEDIA}/flags/{flag}.svg" if flag else None)


USA = _country(5, "USA", "US", "us")

# Two or three leagues per sport; football's ids are the real API-Football ids so that
# clients keyed on "39 is the Premier League" behave as against the real upstream.
LEAGUE_SPECS: dict[str, tuple[LeagueSpec, ...]] = {
    "football": (
        LeagueSpec(39, "Premier League", "League",
                   _country(0, "England", "GB-ENG", "gb-eng"), "cross", 20),
        LeagueSpec(140, "La Liga", "League", _country(0, "Spain", "ES", "es"), "cross", 20),
        LeagueSpec(2, "UEFA Champions League", "Cup", _country(0, "World", None, None),
                   "cross", 16),
    ),
    "basketball": (
        LeagueSpec(12, "NBA", "League", USA, "cross", 16, period_min=12),
        LeagueSpec(120, "Euroleague", "League", _country(18, "Europe", None, None),
                   "cross", 14, period_min=10),
        LeagueSpec(13, "WNBA", "League", USA, "calendar", 12, period_min=10),
    ),
    "hockey": (
        LeagueSpec(57, "NHL", "League", _country(1, "USA", "US", "us"), "cross", 16),
        LeagueSpec(35, "KHL", "League", _country(8, "Russia", "RU", "ru"), "cross", 14),
        LeagueSpec(47, "SHL", "League", _country(11, "Sweden", "SE", "se"), "cross", 14),
    ),
    "baseball": (
        LeagueSpec(1, "MLB", "League", _country(1, "USA", "US", "us"), "calendar", 16),
        LeagueSpec(2, "NPB", "League", _country(4, "Japan", "JP", "jp"), "calendar", 12),
    ),
    "american-football": (
        LeagueSpec(1, "NFL", "League", USA, "cross", 16),
        LeagueSpec(2, "NCAA", "League", USA, "cross", 16),
    ),
}

_CITIES = (
    "Northtown", "Southport", "Eastfield", "Westbridge", "Lakeside", "Riverside", "Hillcrest",
    "Brookhaven", "Stonegate", "Oakridge", "Ironwood", "Redcliff", "Silverton", "Greenvale",
    "Ashford", "Blackmoor", "Clearwater", "Dunmore", "Elmstead", "Fairhaven", "Glenrock",
    "Harborview", "Kingsbury", "Larkspur", "Marlow", "Newhaven", "Oldcastle", "Pinecrest",
    "Queensbay", "Rockport", "Sandhurst", "Thornbury", "Upton", "Valemont", "Whitby",
    "Yarrow", "Bayford", "Cedar Falls", "Dover Point", "Edgewater", "Foxley", "Granton",
    "Highbury", "Ivydale", "Juniper", "Kestrel Bay", "Lindholm", "Millbrook", "Norwood",
    "Orchard Park", "Portside", "Ravensworth", "Seabrook", "Tidewater", "Underhill",
    "Westmarch", "Windham", "Amberley", "Briarwood", "Coldspring",
)
_FOOTBALL_PATTERNS = (
    "{} FC", "{} United", "{} City", "Real {}", "Sporting {}", "AC {}", "{} Athletic",
    "{} Rovers", "Dynamo {}", "{} Wanderers",
)
_NICKNAMES = {
    "basketball": ("Hawks", "Owls", "Comets", "Rockets", "Kings", "Storm", "Giants", "Lynx",
                   "Falcons", "Wolves", "Suns", "Flyers", "Tigers", "Dragons", "Pilots"),
    "hockey": ("Bears", "Wolves", "Blizzard", "Huskies", "Penguins", "Frost", "Ravens",
               "Lumberjacks", "Icemen", "Moose", "Eagles", "Sabres", "Stallions", "Vipers"),
    "baseball": ("Cats", "Foxes", "Mariners", "Pioneers", "Miners", "Robins", "Barons",
                 "Sluggers", "Aces", "Bandits", "Owls", "Stars", "Herons", "Rattlers"),
    "american-football": ("Miners", "Sharks", "Rams", "Chargers", "Titans", "Bison",
                          "Wildcats", "Knights", "Outlaws", "Mustangs", "Gladiators",
                          "Thunder", "Cougars", "Patriots", "Hornets", "Jaguars"),
}
_SURNAMES = (
    "Adams", "Baker", "Carter", "Dalton", "Evans", "Fischer", "Garcia", "Hughes", "Ivanov",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quinn",
    "Rossi", "Silva", "Tanaka", "Urban", "Varga", "Walker", "Xavier", "Young", "Zimmer",
    "Almeida", "Becker", "Costa", "Diallo", "Eriksen", "Ferreira", "Gomez", "Hansen",
    "Ibrahim", "Johansson", "Keller", "Lopez", "Martins", "Novak", "Olsen", "Pereira",
    "Ramos", "Schmidt", "Torres", "Umeh", "Vidal", "Weber", "Yilmaz", "Zielinski",
    "Brennan", "Castro", "Duarte", "Fontaine", "Greco", "Horvat", "Kane", "Lindqvist",
)
_INITIALS = "ABCDEFGHIJKLMNOPRSTVW"
_SQUAD_SIZE = {"football": 22, "hockey": 20}  # sports whose events name players
# Per sport, where team and player ids live, like the real upstream's id spaces.
_TEAM_ID_RANGE = {
    "football": (33, 20000), "basketball": (130, 6000), "hockey": (600, 3500),
    "baseball": (2, 1200), "american-football": (1, 900),
}


def _make_team(rng: random.Random, sport: str, tid: int, city: str, country: Country,
               used_player_ids: set[int]) -> Team:
    if sport == "football":
        name = rng.choice(_FOOTBALL_PATTERNS).format(city)
    else:
        name = f"{city} {rng.choice(_NICKNAMES[sport])}"
    players = []
    numbers = rng.sample(range(1, 99), _SQUAD_SIZE.get(sport, 0))
    for number in numbers:
        pid = rng.randrange(1000, 400000)
        while pid in used_player_ids:
            pid = rng.randrange(1000, 400000)
        used_player_ids.add(pid)
        players.append(Player(pid, f"{rng.choice(_INITIALS)}. {rng.choice(_SURNAMES)}", number))
    letters = [c for c in city.upper() if c.isalpha()]
    return Team(
        id=tid, name=name, code="".join(letters[:3]), city=city,
        logo=f"{MEDIA}/{sport}/teams/{tid}.png", country=country,
        venue_id=rng.randrange(100, 20000), venue_name=f"{city} {rng.choice(_VENUE_WORDS)}",
        founded=rng.randrange(1870, 2005), players=tuple(players),
    )


_VENUE_WORDS = ("Park", "Arena", "Stadium", "Field", "Ground", "Dome", "Center", "Coliseum")


class Catalog:
    """Every league, team and player of one seed, per sport."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.leagues: dict[str, tuple[League, ...]] = {}
        self.teams: dict[str, dict[int, Team]] = {}
        self.countries: dict[str, tuple[Country, ...]] = {}
        for sport, specs in LEAGUE_SPECS.items():
            rng = seeded_rng("catalog", seed, sport)
            low, high = _TEAM_ID_RANGE[sport]
            n_total = sum(spec.n_teams for spec in specs)
            team_ids = rng.sample(range(low, high), n_total)
            # A city hosts at most one team per sport, so names never repeat.
            cities = rng.sample(_CITIES, min(n_total, len(_CITIES)))
            cities += [f"{c} II" for c in cities][: n_total - len(cities)]
            used_players: set[int] = set()
            leagues = []
            by_id: dict[int, Team] = {}
            at = 0
            for spec in specs:
                teams = []
                for _ in range(spec.n_teams):
                    team = _make_team(rng, sport, team_ids[at], cities[at], spec.country,
                                      used_players)
                    teams.append(team)
                    by_id[team.id] = team
                    at += 1
                leagues.append(League(
                    id=spec.id, name=spec.name, type=spec.type, country=spec.country,
                    logo=f"{MEDIA}/{sport}/leagues/{spec.id}.png",
                    season_kind=spec.season_kind, period_min=spec.period_min,
                    teams=tuple(teams),
                ))
            self.leagues[sport] = tuple(leagues)
            self.teams[sport] = by_id
            seen: dict[str, Country] = {}
            for league in leagues:
                seen.setdefault(league.country.name, league.country)
            self.countries[sport] = tuple(seen.values())

    def league(self, sport: str, league_id: int) -> League | None:
        for league in self.leagues[sport]:
            if league.id == league_id:
                return league
        return None

    def league_of_team(self, sport: str, team_id: int) -> League | None:
        for league in self.leagues[sport]:
            if any(team.id == team_id for team in league.teams):
                return league
        return None


def season_start_year(league: League, year: int, month: int) -> int:
    """The season a game in (year, month) belongs to, as its start year."""
    if league.season_kind == "calendar":
        return year
    return year if month >= 7 else year - 1
