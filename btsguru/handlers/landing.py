"""The landing page at `/` and the favicon: what this server is and where to go next.

Beside the flow: a console page (`ConsoleHandler`: sessions, security headers, Jinja2),
anonymous, showing the endpoints with the address the visitor used, so they can be
copied as they are. Everything under `/v1` stays JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

from btsguru.handlers.console_base import ConsoleContext, ConsoleHandler
from btsguru.store.history import HISTORY_WINDOW_TEXT


class LandingHandler(ConsoleHandler):
    login_required = False

    def initialize(self, ctx: ConsoleContext, sports: Sequence[str],  # type: ignore[override]
                   app_key: str) -> None:
        super().initialize(ctx)
        self.sports = sports
        self.app_key = app_key

    def get(self) -> None:
        secure = self.request.protocol == "https"
        host = self.request.host
        self.render_page("index.html", sports=list(self.sports), app_key=self.app_key,
                         base=f"{self.request.protocol}://{host}",
                         ws_base=f"{'wss' if secure else 'ws'}://{host}",
                         history_window=HISTORY_WINDOW_TEXT)
