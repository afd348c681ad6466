"""Game channel names and their hierarchy (the contract's section 4).

`sports.{sport}` ⊃ `sports.{sport}.{league_id}` ⊃ `sports.{sport}.{league_id}.{game_id}`:
a subscriber of a channel receives the events of every channel below it. The native
WebSocket and SSE accept only these names; the Pusher endpoint accepts any valid Pusher
channel name and maps `sports.*`, `private-sports.*` and `presence-sports.*` onto them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from btsguru.errors import BadRequest

# Ids as the upstream issues them: positive integers, well inside 64 bits.
_ID = r"[1-9][0-9]{0,17}"
_GAME_CHANNEL = re.compile(rf"^sports\.([a-z][a-z-]{{1,30}})(?:\.({_ID})(?:\.({_ID}))?)?$")

CHANNEL_MAX_LENGTH = 164  # Pusher's limit on channel names


class InvalidChannel(BadRequest):
    code = "invalid_channel"
    ws_close_code = 4003  # the contract's "forbidden channel" close code covers bad names too


@dataclass(frozen=True, order=True)
class Channel:
    """A parsed game channel: the sport, and optionally a league and a game."""

    sport: str
    league_id: int | None = None
    game_id: int | None = None

    @property
    def name(self) -> str:
        parts = ["sports", self.sport]
        if self.league_id is not None:
            parts.append(str(self.league_id))
            if self.game_id is not None:
                parts.append(str(self.game_id))
        return ".".join(parts)

    @property
    def is_game(self) -> bool:
        return self.game_id is not None

    def covers(self, sport: str, league_id: int, game_id: int) -> bool:
        """Whether an event of that game belongs to this channel."""
        return (self.sport == sport
                and (self.league_id is None or self.league_id == league_id)
                and (self.game_id is None or self.game_id == game_id))

    def __str__(self) -> str:
        return self.name


def parse_channel(name: str, sports: Iterable[str]) -> Channel:
    """Validate a game channel name against the relayed sports, or raise `InvalidChannel`."""
    if len(name) > CHANNEL_MAX_LENGTH:
        raise InvalidChannel(f"channel name longer than {CHANNEL_MAX_LENGTH} characters")
    match = _GAME_CHANNEL.fullmatch(name)
    if match is None:
        raise InvalidChannel(f"invalid channel {name[:80]!r}: expected sports.SPORT, "
                             "sports.SPORT.LEAGUE_ID or sports.SPORT.LEAGUE_ID.GAME_ID")
    sport, league, game = match.groups()
    if sport not in set(sports):
        raise InvalidChannel(f"invalid channel {name!r}: unknown sport {sport!r}")
    return Channel(sport, int(league) if league else None, int(game) if game else None)


def game_channels(sport: str, league_id: int, game_id: int) -> tuple[str, str, str]:
    """The names under which an event of that game is delivered, most specific first."""
    league = f"sports.{sport}.{league_id}"
    return (f"{league}.{game_id}", league, f"sports.{sport}")
