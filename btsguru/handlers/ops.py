"""The operators' console (users with the admin flag): the health of the whole service at a
glance and over the last hour or day (`/console/ops`, its charts alone at
`/console/ops/charts` for htmx), and users and tiers (`/console/users`).

Beside the flow: thin handlers over `console.ops.OpsReporter` (which reads what the
pollers, the quota governor, the cache and the hub keep), `console.timeline.OpsTimeline`
(the cluster-wide series of `store.series`) and over `auth` for changes; `btsguru.app`
builds those services and `ops_routes` hands each handler the ones it uses.
Every change that affects API keys is announced through `AccessService.invalidate_*`,
so every process drops the cached principals at once (a disabled user's keys stop
working immediately, a tier change applies to the next request), and a disabled user's
console sessions end as well. The admin check is in `ConsoleHandler.prepare`: a
non-operator never reaches these handlers' code, let alone their templates.
"""

from __future__ import annotations

import logging
from typing import Any

from btsguru.auth.access import AccessService
from btsguru.auth.tiers import TierService
from btsguru.auth.users import UserInfo
from btsguru.console.directory import UserDirectory
from btsguru.console.ops import OpsReporter
from btsguru.console.timeline import OpsTimeline, window_named
from btsguru.errors import BadRequest, NotFound
from btsguru.handlers.console_base import ConsoleContext, ConsoleHandler

log = logging.getLogger(__name__)

USERS_PAGE_SIZE = 50
# The tier form's fields: whole numbers (daily_quota empty = unlimited), then switches.
_INT_FIELDS = ("rest_rate", "rest_period_s", "rest_burst", "max_streams",
               "max_subscriptions", "client_messages_per_s")
_BOOL_FIELDS = ("raw_proxy", "private_channels", "client_events")


class OperatorHandler(ConsoleHandler):
    admin_required = True


class OpsHandler(OperatorHandler):
    def initialize(self, ctx: ConsoleContext, ops: OpsReporter,  # type: ignore[override]
                   timeline: OpsTimeline) -> None:
        super().initialize(ctx)
        self.ops = ops
        self.timeline = timeline

    async def get(self) -> None:
        report = await self.ops.report()
        if self.is_htmx():  # the refreshing panel: the charts refresh on their own
            self.render_page("ops.html", block="ops_panel", report=report)
            return
        timeline = await self.timeline.view(self.get_argument("window", None))
        self.render_page("ops.html", report=report, timeline=timeline)


class OpsChartsHandler(OperatorHandler):
    """The charts alone, for htmx (their `every 10s` refresh and the window links);
    without htmx, the whole page for that window."""

    def initialize(self, ctx: ConsoleContext,  # type: ignore[override]
                   timeline: OpsTimeline) -> None:
        super().initialize(ctx)
        self.timeline = timeline

    async def get(self) -> None:
        window = window_named(self.get_argument("window", None))
        if not self.is_htmx():
            self.redirect(f"/console/ops?window={window.name}")
            return
        timeline = await self.timeline.view(window.name)
        self.render_page("ops.html", block="ops_charts", timeline=timeline)


class UsersHandler(OperatorHandler):
    """The user list with search, the tier editor, and the forms that change users."""

    def initialize(self, ctx: ConsoleContext, directory: UserDirectory,  # type: ignore[override]
                   tiers: TierService, access: AccessService) -> None:
        super().initialize(ctx)
        self.directory = directory
        self.tiers = tiers
        self.access = access

    async def get(self) -> None:
        await self.render_users()

    async def render_users(self, *, status: int = 200, block: str | None = "users_table",
                           **context: Any) -> None:
        query = self.get_argument("q", "").strip()
        offset = _whole(self.get_argument("offset", "0")) or 0
        page = await self.directory.search(query, limit=USERS_PAGE_SIZE, offset=offset)
        tiers = await self.tiers.all()
        self.render_page("users.html", block=block, status=status, page=page, q=query,
                         tiers=tiers, **context)

    async def target(self, user_id: str) -> UserInfo:
        user = await self.ctx.users.get_by_id(int(user_id))
        if user is None:
            raise NotFound("There is no such user.")
        return user

    async def finish_change(self, notice: str) -> None:
        """After a change: the table fragment for htmx, a redirect otherwise."""
        log.info("console ops: %s (by user %d)", notice, self.user.id if self.user else 0)
        if self.is_htmx():
            await self.render_users(notice=notice[:1].upper() + notice[1:] + ".")
        else:
            self.see_other("/console/users")


class UserTierHandler(UsersHandler):
    async def post(self, user_id: str) -> None:
        user = await self.target(user_id)
        tier = self.get_body_argument("tier", "")
        try:
            changed = await self.ctx.users.set_tier(user.email, tier)
        except BadRequest as exc:
            await self.render_users(status=400, error=exc.message)
            return
        await self.access.invalidate_user(user.id)
        await self.finish_change(f"{changed.email} is now on the {changed.tier} tier")


class UserDisableHandler(UserTierHandler):
    async def post(self, user_id: str) -> None:
        assert self.user is not None
        user = await self.target(user_id)
        disable = self.get_body_argument("disabled", "1") == "1"
        if disable and user.id == self.user.id:
            await self.render_users(status=400, error="You cannot disable your own account.")
            return
        changed = await self.ctx.users.set_disabled(user.email, disable)
        # keys stop on every process now; console sessions end as well
        await self.access.invalidate_user(user.id)
        if disable:
            await self.ctx.sessions.delete_user_sessions(user.id)
        state = "disabled" if changed.disabled else "enabled again"
        await self.finish_change(f"{changed.email} is {state}")


class TierEditHandler(UserTierHandler):
    async def post(self, name: str) -> None:
        try:
            limits = self._limits()
            tier = await self.tiers.update(name, **limits)
        except BadRequest as exc:
            await self.render_users(status=400, error=exc.message, block=None)
            return
        await self.access.invalidate_tier(tier.name)
        await self.finish_change(f"the {tier.name} tier's limits were saved")

    def _limits(self) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        for field in _INT_FIELDS:
            value = _whole(self.get_body_argument(field, ""))
            if value is None:
                raise BadRequest(f"{field.replace('_', ' ')}: a whole number, please")
            limits[field] = value
        quota = self.get_body_argument("daily_quota", "").strip()
        if quota:
            value = _whole(quota)
            if value is None:
                raise BadRequest("daily quota: a whole number, or empty for unlimited")
            limits["daily_quota"] = value
        else:
            limits["daily_quota"] = None
        for field in _BOOL_FIELDS:
            limits[field] = self.get_body_argument(field, "") == "on"
        return limits


def _whole(raw: str) -> int | None:
    text = raw.strip()
    return int(text) if text.isdigit() and len(text) <= 12 else None


def ops_routes(ctx: ConsoleContext, *, ops: OpsReporter, timeline: OpsTimeline,
               directory: UserDirectory, tiers: TierService,
               access: AccessService) -> list[Any]:
    """The operators' routes, for `handlers.console.console_routes`."""
    users = {"ctx": ctx, "directory": directory, "tiers": tiers, "access": access}
    return [
        (r"/console/ops", OpsHandler, {"ctx": ctx, "ops": ops, "timeline": timeline}),
        (r"/console/ops/charts", OpsChartsHandler, {"ctx": ctx, "timeline": timeline}),
        (r"/console/users", UsersHandler, users),
        (r"/console/users/(?P<user_id>\d{1,12})/tier", UserTierHandler, users),
        (r"/console/users/(?P<user_id>\d{1,12})/disable", UserDisableHandler, users),
        (r"/console/tiers/(?P<name>[A-Za-z0-9_-]{1,32})", TierEditHandler, users),
    ]
