"""The console's live scoreboard: `/console/live` renders today's games in play on the
server, and `static/console/live.js` keeps it current from `/console/live/stream`, the
SSE transport of `handlers.sse` authenticated by the console session instead of an API
key (a browser's `EventSource` sends the session cookie, and the page never has to hold
a secret).

Beside the flow: a thin adapter, like every transport. The scoreboard's stream is the
user's own: it counts against their tier's concurrent stream connections (the hub's
rule for every transport), but not as API usage, since no key made a request.
"""

from __future__ import annotations

from typing import Any, Protocol

from btsguru.auth.access import AccessService, Principal
from btsguru.auth.tiers import TierService
from btsguru.errors import Unauthorized
from btsguru.handlers.console_base import ConsoleContext, ConsoleHandler, session_user
from btsguru.handlers.sse import StreamHandler
from btsguru.realtime.hub import Hub
from btsguru.sports.status_names import STATUS_NAMES

STREAM_PATH = "/console/live/stream"
CONSOLE_KEY_ID = 0  # no API key: the session's stream is the user's, not a key's


class LiveGames(Protocol):
    """The scoreboard's source: the store's latest games (`store.games.GameStore`)."""

    async def live(self, sport: str) -> list[Any]: ...


class LiveHandler(ConsoleHandler):
    def initialize(self, ctx: ConsoleContext, games: LiveGames,  # type: ignore[override]
                   sports: tuple[str, ...]) -> None:
        super().initialize(ctx)
        self.games = games
        self.sports = sports

    async def get(self) -> None:
        boards = [(sport, await self.games.live(sport)) for sport in self.sports]
        self.render_page("live.html", block="boards", boards=boards, stream_url=STREAM_PATH,
                         channels=",".join(f"sports.{s}" for s in self.sports),
                         status_names={s: dict(STATUS_NAMES[s]) for s in self.sports})


class ConsoleStreamHandler(StreamHandler):
    """`GET /console/live/stream?channels=...`: SSE for a logged-in console user."""

    def initialize(self, access: AccessService, hub: Hub,  # type: ignore[override]
                   ctx: ConsoleContext, tiers: TierService) -> None:
        super().initialize(access, hub)
        self.ctx = ctx
        self.tiers = tiers

    async def prepare(self) -> None:
        found = await session_user(self, self.ctx)
        if found is None:
            raise Unauthorized("log in to the console to watch the live scoreboard")
        _session, user = found
        self.principal = Principal(
            key_id=CONSOLE_KEY_ID, user_id=user.id, key_prefix="console",
            tier=await self.tiers.get(user.tier), scopes=frozenset({"stream"}),
            expires_at=None)


def live_routes(ctx: ConsoleContext, *, games: LiveGames, sports: tuple[str, ...],
                access: AccessService, hub: Hub, tiers: TierService) -> list[Any]:
    """The scoreboard's routes, for `handlers.console.console_routes`."""
    return [
        (r"/console/live", LiveHandler, {"ctx": ctx, "games": games, "sports": sports}),
        (STREAM_PATH, ConsoleStreamHandler, {"access": access, "hub": hub, "ctx": ctx,
                                              "tiers": tiers}),
    ]
