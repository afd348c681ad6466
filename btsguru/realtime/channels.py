"""Game channel names and their hierarchy (the contract's section 4).

`sports.{sport}` ⊃ `sports.{sport}.{league_id}` ⊃ `sports.{sport}.{league_id}.{game_id}`:
a subscriber of a channel receives the events of every channel below it. The native
WebSocket and SSE accept only these names; the Pusher endpoint accepts any valid Pusher
channel name and maps `sports.*`, `private-sports.*` and `presence-sports.*` onto them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from btsguru.errors import BadRequest
from btsguru.store import bus

CHANNEL_MAX_LENGTH = 164  # Pusher's limit on channel names
ID_MAX = 10**18  # ids as the upstream issues them: positive integers well inside 64 bits


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
        return bus.covers(self.name, bus.game_channel(sport, league_id, game_id))

    def __str__(self) -> str:
        return self.name


def parse_channel(name: str, sports: Iterable[str]) -> Channel:
    """Validate a game channel name from a client against the relayed sports, or raise
    `InvalidChannel`. The grammar is the bus's (`store.bus.parse_channel`); a client's
    name must also be canonical (no leading zeros), with positive ids."""
    if len(name) > CHANNEL_MAX_LENGTH:
        raise InvalidChannel(f"channel name longer than {CHANNEL_MAX_LENGTH} characters")
    try:
        sport, league, game = bus.parse_channel(name)
    except ValueError:
        raise InvalidChannel(f"invalid channel {name[:80]!r}: expected sports.SPORT, "
                             "sports.SPORT.LEAGUE_ID or sports.SPORT.LEAGUE_ID.GAME_ID") from None
    channel = Channel(sport, league, game)
    ids = [i for i in (league, game) if i is not None]
    if channel.name != name or any(not 0 < i < ID_MAX for i in ids):
        raise InvalidChannel(f"invalid channel {name[:80]!r}: ids are positive integers "
                             "written without leading zeros")
    if sport not in set(sports):
        raise InvalidChannel(f"invalid channel {name!r}: unknown sport {sport!r}")
    return channel


def game_channels(sport: str, league_id: int, game_id: int) -> tuple[str, str, str]:
    """The names under which an event of that game is delivered, most specific first."""
    game = bus.game_channel(sport, league_id, game_id)
    league = game.rsplit(".", 1)[0]
    return (game, league, league.rsplit(".", 1)[0])
