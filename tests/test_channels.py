"""Game channel names: validation and the sport > league > game hierarchy."""

from __future__ import annotations

import pytest

from btsguru.realtime.channels import Channel, InvalidChannel, game_channels, parse_channel
from btsguru.sports import SPORTS


@pytest.mark.parametrize(("name", "expected"), [
    ("sports.football", Channel("football")),
    ("sports.football.39", Channel("football", 39)),
    ("sports.american-football.1.500001", Channel("american-football", 1, 500001)),
])
def test_valid_names_parse_and_round_trip(name, expected):
    channel = parse_channel(name, SPORTS)
    assert channel == expected
    assert channel.name == name == str(channel)


@pytest.mark.parametrize("name", [
    "", "sports", "sports.", "sports.curling", "sports.football.0", "sports.football.-1",
    "sports.football.39.x", "sports.football.39.1.2", "Sports.football", "sports.FOOTBALL",
    "private-sports.football", "sports.football.039", "sports.football." + "9" * 19,
    "sports.football " , "x" * 200,
])
def test_invalid_names_are_refused_with_a_clear_error(name):
    with pytest.raises(InvalidChannel) as info:
        parse_channel(name, SPORTS)
    assert info.value.code == "invalid_channel"
    assert info.value.ws_close_code == 4003


def test_a_sport_not_relayed_is_refused():
    with pytest.raises(InvalidChannel, match="unknown sport 'hockey'"):
        parse_channel("sports.hockey", ("football",))


def test_hierarchy():
    sport, league, game = Channel("football"), Channel("football", 39), Channel("football", 39, 7)
    for channel in (sport, league, game):
        assert channel.covers("football", 39, 7)
    assert not game.covers("football", 39, 8)
    assert not league.covers("football", 40, 7)
    assert not sport.covers("hockey", 39, 7)
    assert game.is_game and not league.is_game
    assert game_channels("football", 39, 7) == ("sports.football.39.7", "sports.football.39",
                                                "sports.football")
