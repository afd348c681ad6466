"""The base of every console page: sessions, security headers, Jinja2 rendering (whole
pages, or one named block of the same template for htmx), and the friendly error page.

Beside the flow: `handlers.console` (the users' pages) and `handlers.ops` (the
operators') subclass `ConsoleHandler`. The console is HTML, so `/v1`'s JSON rules do not
apply here, but the rule that nobody sees a traceback does: every error becomes
`error.html` (or a bare HTML line if even that fails).

Security, in one place: Tornado's XSRF check runs before `prepare` on every POST (the
token rides in each form and, for htmx, in the `X-XSRFToken` header set by `hx-headers`);
the session cookie is signed, HttpOnly, SameSite=Lax and Secure behind https (the server
runs with `xheaders`, so `request.protocol` is the client's); every response forbids
framing (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`) and scripts or styles
from anywhere but `/static`; Jinja2 autoescapes everything; `next` is accepted only as a
local console path. Permissions are decided here and in the handlers, never in a
template: a template only receives what its user may see.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import jinja2
import tornado.web
from jinja2_fragments import render_block
from markupsafe import Markup
from redis.exceptions import RedisError

from btsguru.auth.users import UserInfo, UserService
from btsguru.console.sessions import SESSION_MAX_AGE_S, ConsoleSession, SessionStore
from btsguru.errors import BtsguruError

log = logging.getLogger(__name__)

SESSION_COOKIE = "btsguru_session"
HOME = "/console/keys"
LOGIN = "/console/login"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
# `next` after logging in: a console path and query, nothing that a browser could read
# as another origin (`//evil`, `/\evil`, `javascript:`), no control characters.
_LOCAL_NEXT = re.compile(r"/console(?:/[A-Za-z0-9._~/%-]*)?(?:\?[A-Za-z0-9._~=&%+-]*)?")
_FRIENDLY: dict[int, str] = {
    400: "The request could not be understood.",
    401: "Please log in to see this page.",
    403: "You are not allowed to do that.",
    404: "There is no such page.",
    405: "That page does not accept this kind of request.",
    429: "Too many requests: please wait a little and try again.",
    503: "A service the console needs is not answering right now. Please try again "
         "in a moment.",
}
_XSRF_MESSAGE = ("The form had expired or came from another site, so nothing was done. "
                 "Reload the page and try again.")


def safe_next(raw: str | None, default: str = HOME) -> str:
    """`raw` when it is a local console path (with an optional query), else `default`:
    a login link cannot send anyone to another site."""
    if not raw or not _LOCAL_NEXT.fullmatch(raw):
        return default
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or "//" in parts.path or ".." in parts.path.split("/"):
        return default
    return raw


class ConsolePages:
    """The console's Jinja2 environment (autoescaping on, undefined names are errors)."""

    def __init__(self, templates_dir: Path) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)
        self.env.filters["percent"] = _percent
        self.env.filters["ago"] = _ago

    def page(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name).render(**context)

    def block(self, name: str, block: str, context: Mapping[str, Any]) -> str:
        return render_block(self.env, name, block, **context)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


@dataclass(frozen=True)
class ConsoleContext:
    """What every console handler needs: the templates, the sessions and the users."""

    pages: ConsolePages
    sessions: SessionStore
    users: UserService


async def session_user(handler: tornado.web.RequestHandler,
                       ctx: ConsoleContext) -> tuple[ConsoleSession, UserInfo] | None:
    """The session and user that `handler`'s request carries in its signed session
    cookie, or None (no cookie, an ended session, a disabled user)."""
    raw = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_MAX_AGE_S / 86_400)
    if not raw:
        return None
    session = await ctx.sessions.get(raw.decode())
    if session is None:
        return None
    user = await ctx.users.get_by_id(session.user_id)
    if user is None or user.disabled:
        await ctx.sessions.delete(session.id)
        return None
    return session, user


class ConsoleHandler(tornado.web.RequestHandler):
    """Loads the session in `prepare`; `login_required` and `admin_required` pages refuse
    anyone else (a login redirect, or a 403 page)."""

    login_required: ClassVar[bool] = True
    admin_required: ClassVar[bool] = False

    def initialize(self, ctx: ConsoleContext) -> None:
        self.ctx = ctx
        self.user: UserInfo | None = None
        self.session: ConsoleSession | None = None
        self.request_id = secrets.token_hex(8)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Vary", "HX-Request, Cookie")

    # -- who is asking --

    async def prepare(self) -> None:
        await self.load_session()
        if self.login_required and self.user is None:
            self.refuse_anonymous()
            return
        if self.admin_required and not (self.user and self.user.is_admin):
            log.info("console: user %s refused from %s (not an operator)",
                     self.user.id if self.user else None, self.request.path)
            raise tornado.web.HTTPError(403, "operators only")

    async def load_session(self) -> None:
        found = await session_user(self, self.ctx)
        if found is not None:
            self.session, self.user = found

    def refuse_anonymous(self) -> None:
        login = LOGIN + "?" + urlencode({"next": self.request.uri or HOME})
        if self.is_htmx():
            # a polling panel whose session ended: send the whole page to the login
            self.set_header("HX-Redirect", login)
            self.set_status(401)
            self.finish()
        else:
            self.redirect(login)

    async def start_session(self, user: UserInfo) -> None:
        """Log `user` in with a brand-new session id (never the one the browser brought:
        no session fixation), ending the browser's previous session if any."""
        if self.session is not None:
            await self.ctx.sessions.delete(self.session.id)
        self.session = await self.ctx.sessions.create(user.id)
        self.user = user
        self.set_signed_cookie(SESSION_COOKIE, self.session.id,
                               expires_days=SESSION_MAX_AGE_S / 86_400, httponly=True,
                               samesite="Lax", secure=self.request.protocol == "https",
                               path="/console")

    async def end_session(self) -> None:
        if self.session is not None:
            await self.ctx.sessions.delete(self.session.id)
        self.session = self.user = None
        self.clear_cookie(SESSION_COOKIE, path="/console")

    def client_ip(self) -> str:
        return self.request.remote_ip or "unknown"

    # -- rendering --

    def is_htmx(self) -> bool:
        """An htmx request for a fragment (not a boosted navigation, which gets the
        whole page)."""
        headers = self.request.headers
        return headers.get("HX-Request") == "true" and headers.get("HX-Boosted") != "true"

    def base_context(self) -> dict[str, Any]:
        token = self.xsrf_token
        return {
            "user": self.user,
            "path": self.request.path,
            "xsrf_form_html": Markup(self.xsrf_form_html()),  # noqa: S704 - Tornado escapes it
            "xsrf_token": token.decode() if isinstance(token, bytes) else token,
            "static_url": self.static_url,
            "error": None,
            "notice": None,
        }

    def render_page(self, template: str, *, block: str | None = None, status: int = 200,
                    **context: Any) -> None:
        """The whole page, or only `block` of it when htmx asks for a fragment."""
        values = self.base_context()
        values.update(context)
        self.set_status(status)
        if block is not None and self.is_htmx():
            self.finish(self.ctx.pages.block(template, block, values))
        else:
            self.finish(self.ctx.pages.page(template, values))

    def see_other(self, url: str) -> None:
        """Post/redirect/get: a 303 so that reloading does not send the form again."""
        self.redirect(url, status=303)

    # -- errors: a friendly page, never a traceback --

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BtsguruError):
            message = exc.message if exc.status < 500 else _FRIENDLY.get(
                exc.status, "Something went wrong on our side.")
            if exc.retry_after_s is not None:
                self.set_header("Retry-After", str(exc.retry_after_s))
        elif isinstance(exc, RedisError | OSError):
            status_code, message = 503, _FRIENDLY[503]
            self.set_status(503)
        elif (isinstance(exc, tornado.web.HTTPError) and status_code == 403
              and exc.log_message and "xsrf" in exc.log_message.lower()):
            # Tornado's three refusals: "'_xsrf' argument missing", "... invalid format"
            # and "XSRF cookie does not match POST argument" (another browser's token)
            message = _XSRF_MESSAGE
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message == "operators only":
            message = "This page is for operators only."
        else:
            message = _FRIENDLY.get(status_code, "Something went wrong on our side. "
                                                 f"(request id {self.request_id})")
        for name, value in (("Content-Type", "text/html; charset=UTF-8"),
                            ("X-Frame-Options", "DENY"), ("Content-Security-Policy", CSP),
                            ("Cache-Control", "no-store")):
            self.set_header(name, value)
        try:
            context = self.base_context()
            context.update(status=status_code, message=message)
            self.finish(self.ctx.pages.page("error.html", context))
        except Exception:
            log.exception("console: the error page itself failed (request id %s)",
                          self.request_id)
            self.finish(f"<!doctype html><title>Error</title><p>Error {status_code}: "
                        f"something went wrong (request id {self.request_id}).</p>")

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BtsguruError):
            status_code = exc.status
        elif isinstance(exc, RedisError | OSError):
            status_code = 503
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, BtsguruError):
            log.log(logging.WARNING if value.status >= 500 else logging.DEBUG,
                    "console %s %s -> %d: %s", self.request.method, self.request.path,
                    value.status, value.message)
            return
        if isinstance(value, RedisError | OSError):
            log.warning("console %s %s -> 503: %s (request id %s)", self.request.method,
                        self.request.path, value, self.request_id)
            return
        super().log_exception(typ, value, tb)


class ConsoleNotFoundHandler(ConsoleHandler):
    """Any other `/console/...` path: the HTML 404 page (the rest of the server answers
    unknown paths in JSON)."""

    login_required = False

    def check_xsrf_cookie(self) -> None:
        """A POST to no page changes nothing: let it reach the 404."""

    async def prepare(self) -> None:
        await self.load_session()
        raise tornado.web.HTTPError(404)
