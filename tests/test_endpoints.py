"""The raw proxy's allow-list and parameter normalization."""

from __future__ import annotations

import pytest

from btsguru.errors import BadRequest
from btsguru.sports import SPORTS
from btsguru.upstream.endpoints import ALLOW_LIST, lookup_endpoint, normalize_params


def test_every_sport_has_its_list_endpoint_and_basics():
    for sport in SPORTS:
        names = set(ALLOW_LIST[sport])
        assert {"status", "leagues", "teams", "standings"} <= names
        assert ("fixtures" if sport == "football" else "games") in names
    assert "fixtures/events" in ALLOW_LIST["football"]
    assert "games/events" in ALLOW_LIST["hockey"]
    assert "games/events" not in ALLOW_LIST["basketball"]


def test_unlisted_endpoints_are_not_found():
    assert lookup_endpoint("football", "players") is None
    assert lookup_endpoint("football", "odds") is None
    assert lookup_endpoint("curling", "games") is None
    assert lookup_endpoint("football", "/fixtures/") is not None


def test_trivially_different_queries_normalize_to_one_form():
    fixtures = lookup_endpoint("football", "fixtures")
    a = normalize_params(fixtures, {"league": ["39"], "date": ["2026-11-28"]})
    b = normalize_params(fixtures, {"date": [" 2026-11-28 "], "league": ["39 "]})
    assert a == b == {"date": "2026-11-28", "league": "39"}
    assert list(a) == ["date", "league"]


@pytest.mark.parametrize(("sport", "endpoint", "query", "fragment"), [
    ("football", "fixtures", {"date": ["2026-02-30"]}, "must be a date"),
    ("football", "fixtures", {"id": ["abc"]}, "must be an integer id"),
    ("football", "fixtures", {"leage": ["39"]}, "unknown parameter 'leage'"),
    ("football", "fixtures", {"id": ["1", "2"]}, "given 2 times"),
    ("football", "fixtures", {"timezone": ["Europe/London"]}, "needs at least one of"),
    ("football", "fixtures", {"ids": ["-".join(str(i) for i in range(21))]}, "must be"),
    ("basketball", "games", {"live": ["all"]}, "unknown parameter 'live'"),
    ("hockey", "games", {"season": ["24"]}, "must be a season"),
    ("football", "teams", {}, "needs at least one of"),
    ("football", "fixtures", {"date": [""]}, "must be a date"),
])
def test_invalid_parameters_are_rejected_clearly(sport, endpoint, query, fragment):
    with pytest.raises(BadRequest) as info:
        normalize_params(lookup_endpoint(sport, endpoint), query)
    assert fragment in info.value.message


def test_american_football_accepts_live_and_others_use_dates():
    games = lookup_endpoint("american-football", "games")
    assert normalize_params(games, {"live": ["all"]}) == {"live": "all"}
    assert normalize_params(lookup_endpoint("baseball", "games"),
                            {"date": ["2026-11-28"], "timezone": ["America/New_York"]}) == \
        {"date": "2026-11-28", "timezone": "America/New_York"}
    assert normalize_params(lookup_endpoint("basketball", "games"), {"season": ["2024-2025"],
                                                                     "league": ["12"]}) == \
        {"league": "12", "season": "2024-2025"}
