"""`/leagues` and `/teams` items -> LeagueInfo / TeamInfo, for every sport's shape, the
simulator's included."""

from __future__ import annotations

from datetime import date

import pytest

from btsguru.simulator.catalog import Catalog
from btsguru.simulator.reference import leagues, teams
from btsguru.sports import SPORTS
from btsguru.sports.static import LeagueInfo, TeamInfo, leagues_from_upstream, teams_from_upstream


def test_football_shapes():
    items = [{"league": {"id": 39, "name": "Premier League", "logo": "l.png"},
              "country": {"name": "England"},
              "seasons": [{"year": 2023, "current": False}, {"year": 2024, "current": True},
                          {"year": 2025, "current": False}]},
             {"league": {"name": "no id"}}, None]
    assert leagues_from_upstream("football", items) == [
        LeagueInfo(39, "Premier League", "England", 2024, "l.png")]
    assert teams_from_upstream("football", [{"team": {"id": 33, "name": "Man Utd"}}],
                               league_id=39) == [TeamInfo(33, "Man Utd", None, 39)]


def test_v1_shapes_tolerate_missing_fields():
    items = [{"id": 12, "name": "NBA", "country": {"id": 5, "name": "USA"},
              "seasons": [{"season": "2023-2024"}, {"season": "2024-2025"}]},
             {"id": "13", "seasons": "none", "country": None}]
    assert leagues_from_upstream("basketball", items) == [
        LeagueInfo(12, "NBA", "USA", "2024-2025", None), LeagueInfo(13, "", None, None, None)]
    assert teams_from_upstream("hockey", [{"id": 41, "name": "Bears", "logo": "b.png"},
                                          {"name": "x"}]) == [TeamInfo(41, "Bears", "b.png",
                                                                       None)]
    assert leagues_from_upstream("hockey", {"not": "a list"}) == []


@pytest.mark.parametrize("sport", SPORTS)
def test_simulator_reference_data_parses(sport):
    catalog = Catalog(seed=3)
    today = date(2024, 11, 1)
    found = leagues_from_upstream(sport, leagues(catalog, sport, {}, today))
    assert [lg.id for lg in found] == [lg.id for lg in catalog.leagues[sport]]
    assert all(lg.name and lg.season is not None and lg.country for lg in found)
    league = catalog.leagues[sport][0]
    parsed = teams_from_upstream(sport, teams(catalog, sport, {"league": str(league.id)}, today),
                                 league_id=league.id)
    assert [(t.id, t.name) for t in parsed] == [(t.id, t.name) for t in league.teams]
