"""The users' console: sign up, log in and out, change the password, manage API keys, read
usage, watch the live scoreboard.

Beside the flow: thin handlers over `auth` (users, keys, access), `console` (sessions,
throttle, reports) and the store; `btsguru.app` builds those services (`ConsoleServices`)
and `console_routes` gives `make_app` every console route, the operators' pages of
`handlers.ops` included, each handler with only the services it uses. Every form is a real
form that works without JavaScript; with htmx, the body is boosted and a few actions
(revoke, rotate, the refreshing panels) swap one named block of the same template.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from btsguru.auth.access import AccessService
from btsguru.auth.keys import KEY_NAME_MAX, ApiKeyInfo, KeyService
from btsguru.auth.tiers import TierService
from btsguru.auth.users import PASSWORD_MIN_LENGTH
from btsguru.console.directory import UserDirectory
from btsguru.console.ops import OpsReporter
from btsguru.console.throttle import LoginThrottle
from btsguru.console.timeline import OpsTimeline
from btsguru.console.usage import UsageReporter
from btsguru.errors import BadRequest, Conflict, NotFound
from btsguru.handlers.console_base import (
    HOME,
    ConsoleContext,
    ConsoleHandler,
    ConsoleNotFoundHandler,
    safe_next,
)
from btsguru.handlers.console_live import LiveGames, live_routes
from btsguru.handlers.landing import LandingHandler
from btsguru.handlers.ops import ops_routes
from btsguru.realtime.hub import Hub

log = logging.getLogger(__name__)

# One message for every failed login, whatever failed (unknown address, wrong
# password, disabled account), so the page never tells which addresses have accounts.
LOGIN_FAILED = "The email or password is not right."
THROTTLED = "Too many attempts. Please wait {minutes} minute(s) and try again."
SIGNUP_FAILED = ("An account could not be created with these details. If you already have "
                 "one, log in instead.")
KEY_PREFIX_ROUTE = r"(?P<prefix>btg_[0-9A-Za-z]{2,10})"


def _minutes(seconds: int) -> int:
    return max(1, math.ceil(seconds / 60))


class RootHandler(ConsoleHandler):
    login_required = False

    def get(self) -> None:
        self.redirect(HOME if self.user else "/console/login")


class SignupHandler(ConsoleHandler):
    login_required = False

    def initialize(self, ctx: ConsoleContext, throttle: LoginThrottle) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.throttle = throttle

    def get(self) -> None:
        if self.user:
            self.redirect(HOME)
            return
        self.render_page("signup.html", email="", min_length=PASSWORD_MIN_LENGTH)

    async def post(self) -> None:
        email = self.get_body_argument("email", "").strip()
        password = self.get_body_argument("password", "")
        wait_s = await self.throttle.signup_allowed(self.client_ip())
        if wait_s is not None:
            self.render_page("signup.html", status=429, email=email,
                             min_length=PASSWORD_MIN_LENGTH,
                             error=THROTTLED.format(minutes=_minutes(wait_s)))
            return
        try:
            user, _ = await self.ctx.users.create_user(email, password)
        except BadRequest as exc:
            self.render_page("signup.html", status=400, email=email,
                             min_length=PASSWORD_MIN_LENGTH, error=_sentence(exc.message))
            return
        except Conflict:
            self.render_page("signup.html", status=400, email=email,
                             min_length=PASSWORD_MIN_LENGTH, error=SIGNUP_FAILED)
            return
        log.info("console: user %d signed up", user.id)
        await self.start_session(user)
        self.see_other(HOME)


class LoginHandler(ConsoleHandler):
    login_required = False

    def initialize(self, ctx: ConsoleContext, throttle: LoginThrottle) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.throttle = throttle

    def get(self) -> None:
        target = safe_next(self.get_query_argument("next", None))
        if self.user:
            self.redirect(target)
            return
        self.render_page("login.html", email="", next=target)

    async def post(self) -> None:
        email = self.get_body_argument("email", "").strip()
        password = self.get_body_argument("password", "")
        target = safe_next(self.get_body_argument("next", None))
        ip = self.client_ip()
        wait_s = await self.throttle.blocked(email, ip)
        if wait_s is not None:
            log.info("console: login throttled from %s", ip)
            self.render_page("login.html", status=429, email=email, next=target,
                             error=THROTTLED.format(minutes=_minutes(wait_s)))
            return
        user = await self.ctx.users.verify_login(email, password)
        if user is None:
            await self.throttle.failed(email, ip)
            self.render_page("login.html", status=400, email=email, next=target,
                             error=LOGIN_FAILED)
            return
        await self.throttle.succeeded(email)
        await self.start_session(user)
        log.info("console: user %d logged in", user.id)
        self.see_other(target)


class LogoutHandler(ConsoleHandler):
    login_required = False

    def get(self) -> None:
        if not self.user:
            self.redirect("/console/login")
            return
        self.render_page("logout.html")

    async def post(self) -> None:
        await self.end_session()
        self.see_other("/console/login")


class PasswordHandler(ConsoleHandler):
    def initialize(self, ctx: ConsoleContext, throttle: LoginThrottle) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.throttle = throttle

    def get(self) -> None:
        self.render_page("password.html", min_length=PASSWORD_MIN_LENGTH)

    async def post(self) -> None:
        assert self.user is not None and self.session is not None  # prepare() checked
        current = self.get_body_argument("current_password", "")
        new = self.get_body_argument("new_password", "")
        ip = self.client_ip()

        def again(status: int, error: str) -> None:
            self.render_page("password.html", status=status, error=error,
                             min_length=PASSWORD_MIN_LENGTH)

        wait_s = await self.throttle.blocked(self.user.email, ip)
        if wait_s is not None:
            again(429, THROTTLED.format(minutes=_minutes(wait_s)))
            return
        if await self.ctx.users.verify_login(self.user.email, current) is None:
            await self.throttle.failed(self.user.email, ip)
            again(400, "The current password is not right.")
            return
        if new != self.get_body_argument("confirm_password", ""):
            again(400, "The new passwords do not match.")
            return
        try:
            user = await self.ctx.users.set_password(self.user.email, new)
        except BadRequest as exc:
            again(400, _sentence(exc.message))
            return
        # Whoever else held a session (a stolen cookie, another browser) is out; this
        # browser continues under a new id.
        await self.ctx.sessions.delete_user_sessions(user.id)
        self.session = None
        await self.start_session(user)
        log.info("console: user %d changed their password", user.id)
        self.render_page("password.html", min_length=PASSWORD_MIN_LENGTH,
                         notice="Your password was changed. Other sessions were logged out.")


class KeysHandler(ConsoleHandler):
    """`GET` lists the user's keys; `POST` creates one and shows its secret, once."""

    def initialize(self, ctx: ConsoleContext, keys: KeyService) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.keys = keys

    async def get(self) -> None:
        await self.render_keys()

    async def post(self) -> None:
        assert self.user is not None
        name = self.get_body_argument("name", "").strip()
        try:
            info, secret = await self.keys.create_key(self.user.email, name or "default")
        except BadRequest as exc:
            await self.render_keys(status=400, error=_sentence(exc.message), name=name)
            return
        log.info("console: user %d created key %s", self.user.id, info.prefix)
        await self.render_keys(status=201, new_key=info, secret=secret)

    async def render_keys(self, *, status: int = 200, block: str | None = None,
                          **context: Any) -> None:
        assert self.user is not None
        keys = await self.keys.list_user_keys(self.user.id)
        now = datetime.now(UTC)
        context.setdefault("name", "")
        context.setdefault("new_key", None)
        context.setdefault("secret", None)
        self.render_page("keys.html", block=block, status=status,
                         active=[k for k in keys if k.is_active(now)],
                         inactive=[k for k in keys if not k.is_active(now)],
                         name_max=KEY_NAME_MAX, **context)


class KeyActionHandler(KeysHandler):
    """`/console/keys/{prefix}/revoke|rotate`: `GET` asks for confirmation (the no-JS
    path; htmx confirms with `hx-confirm`), `POST` acts."""

    def initialize(self, ctx: ConsoleContext, keys: KeyService,  # type: ignore[override]
                   access: AccessService, action: str) -> None:
        super().initialize(ctx, keys)
        self.access = access
        self.action = action

    async def get(self, prefix: str) -> None:  # type: ignore[override]
        key = await self._own_key(prefix)
        self.render_page("key_confirm.html", key=key, action=self.action)

    async def post(self, prefix: str) -> None:  # type: ignore[override]
        assert self.user is not None
        key = await self._own_key(prefix)
        secret = new_key = None
        if self.action == "rotate":
            new_key, secret = await self.keys.create_key(
                self.user.email, key.name, _remaining_days(key), key.scopes)
        try:
            await self.keys.revoke(key.prefix, user_id=self.user.id)
        except (NotFound, Conflict) as exc:
            await self.render_keys(status=409, block="keys_panel",
                                   error=_sentence(exc.message))
            return
        # every process drops the key's cached principal now, not within the cache TTL
        await self.access.invalidate_user(self.user.id)
        log.info("console: user %d %sd key %s", self.user.id, self.action, key.prefix)
        if self.action == "revoke" and not self.is_htmx():
            self.see_other(HOME)
            return
        notice = f"Key {key.prefix}… was revoked." if self.action == "revoke" else None
        await self.render_keys(block="keys_panel", new_key=new_key, secret=secret,
                               notice=notice)

    async def _own_key(self, prefix: str) -> ApiKeyInfo:
        assert self.user is not None
        for key in await self.keys.list_user_keys(self.user.id):
            if key.prefix == prefix and key.revoked_at is None:
                return key
        raise NotFound("You have no active key with this prefix.")


def _remaining_days(key: ApiKeyInfo) -> int | None:
    """A rotated key keeps its predecessor's lifetime (whole days, at least one)."""
    if key.expires_at is None:
        return None
    span_s = (key.expires_at - key.created_at).total_seconds()
    return max(1, round(span_s / 86_400))


class UsageHandler(ConsoleHandler):
    def initialize(self, ctx: ConsoleContext, usage: UsageReporter) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.usage = usage

    async def get(self) -> None:
        assert self.user is not None
        report = await self.usage.report(self.user)
        self.render_page("usage.html", block="usage_panel", report=report)


def _sentence(message: str) -> str:
    """A service's message as a sentence for a page."""
    text = message.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


@dataclass(frozen=True)
class ConsoleServices:
    """What the console's routes hand their handlers, built by `btsguru.app` (the
    console's own services are views over Redis and the database)."""

    ctx: ConsoleContext
    throttle: LoginThrottle
    usage: UsageReporter
    ops: OpsReporter
    timeline: OpsTimeline
    directory: UserDirectory
    keys: KeyService
    access: AccessService
    tiers: TierService
    games: LiveGames
    hub: Hub
    sports: tuple[str, ...]
    app_key: str


def console_routes(c: ConsoleServices) -> list[Any]:
    """Every HTML route — the landing page at `/` and `/console` — for
    `btsguru.app.make_app` (the console's catch-all 404 last); each handler gets only
    the services it uses."""
    base = {"ctx": c.ctx}
    return [
        (r"/", LandingHandler, {**base, "sports": c.sports, "app_key": c.app_key}),
        (r"/console/?", RootHandler, base),
        (r"/console/signup", SignupHandler, {**base, "throttle": c.throttle}),
        (r"/console/login", LoginHandler, {**base, "throttle": c.throttle}),
        (r"/console/logout", LogoutHandler, base),
        (r"/console/password", PasswordHandler, {**base, "throttle": c.throttle}),
        (r"/console/keys", KeysHandler, {**base, "keys": c.keys}),
        (rf"/console/keys/{KEY_PREFIX_ROUTE}/revoke", KeyActionHandler,
         {**base, "keys": c.keys, "access": c.access, "action": "revoke"}),
        (rf"/console/keys/{KEY_PREFIX_ROUTE}/rotate", KeyActionHandler,
         {**base, "keys": c.keys, "access": c.access, "action": "rotate"}),
        (r"/console/usage", UsageHandler, {**base, "usage": c.usage}),
        *live_routes(c.ctx, games=c.games, sports=c.sports, access=c.access, hub=c.hub,
                     tiers=c.tiers),
        *ops_routes(c.ctx, ops=c.ops, timeline=c.timeline, directory=c.directory,
                    tiers=c.tiers, access=c.access),
        (r"/console/.*", ConsoleNotFoundHandler, base),
    ]
