"""The console's defences, one test per attack of the issue: CSRF on every form, XSS
(stored and reflected) in every field a user controls, session fixation, open redirects,
login brute force, clickjacking, and the session cookie's flags.

tests/test_console.py has the everyday cases (a missing token, a key name escaped, the
first open-redirect vectors, throttling per account and per address); this file adds the
attacks around them and does not repeat those. Real Redis, SQLite and sockets; a
browser-like client with its own cookie jar (tests/console_fixtures.py).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

import aiohttp
import redis
from yarl import URL

from btsguru.config import Config
from btsguru.console.throttle import IP_MAX_FAILURES
from tests.console_fixtures import PASSWORD, Client, Console, Page, console_app
from tests.waiting import wait_until

HX = {"HX-Request": "true"}
SESSION = "btsguru_session"
TIMEOUT_S = 10.0

# -- helpers --


def forged_token() -> str:
    """A well-formed Tornado XSRF token (version 2: mask, masked token, timestamp) that no
    browser was given."""
    return f"2|{secrets.token_hex(4)}|{secrets.token_hex(16)}|{int(time.time())}"


async def v1_status(c: Console, key: str) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(c.url + "/v1/usage", headers={"X-API-Key": key}) as resp:
        await resp.read()
        return resp.status


async def logged_in(client: Client) -> bool:
    page = await client.get("/console/keys", follow=False)
    return page.status == 200


def set_cookie(page: Page, name: str = SESSION) -> str | None:
    for value in page.headers.getall("Set-Cookie", []):
        if value.startswith(name + "="):
            return str(value)
    return None


def redis_clients(config: Config) -> list[redis.Redis]:
    return [redis.Redis(host="127.0.0.1", port=6379, db=db)
            for db in sorted({config.redis_db, config.redis_cache_db, config.redis_queue_db,
                              config.redis_reverb_db})]


def redis_keys(config: Config, pattern: str) -> list[bytes]:
    """The keys under the config's prefix matching `pattern`, in every database."""
    found = []
    for client in redis_clients(config):
        try:
            found += list(client.scan_iter(match=config.redis_cache_prefix + pattern))
        finally:
            client.close()
    return found


def end_throttle_windows(config: Config) -> None:
    """The throttle's windows are Redis expiries: end them now instead of waiting a
    quarter of an hour (the throttle has no clock to drive)."""
    for client in redis_clients(config):
        try:
            for key in client.scan_iter(match=config.redis_cache_prefix + "console:throttle:*"):
                client.pexpire(key, 1)
        finally:
            client.close()


async def throttle_gone(config: Config) -> bool:
    return not redis_keys(config, "console:throttle:*")


# -- CSRF: every state-changing form, without a token, with a forged one, with another
#    browser's --

@dataclass
class Action:
    """One state-changing console POST, and how to tell that it did not happen."""

    name: str
    client: Client
    path: str
    data: dict[str, str]
    unchanged: Callable[[], Awaitable[bool]]


async def csrf_actions(c: Console) -> list[Action]:
    users, keys = c.services.users, c.services.keys
    anonymous = c.client()
    await anonymous.get("/console/login")
    victim = c.client()
    await victim.signup("victim@example.com")
    _, key = await victim.create_key("prod")
    prefix = key[:12]
    admin = await c.admin()
    target, _ = await users.create_user("target@example.com", PASSWORD)
    free = await c.services.tiers.get("free")

    async def key_names() -> list[str]:
        return [k.name for k in await keys.list_keys("victim@example.com")]

    async def target_unchanged() -> bool:
        user = await users.get_by_id(target.id)
        return user is not None and user.tier == "free" and not user.disabled

    async def tier_unchanged() -> bool:
        return (await c.services.tiers.get("free")).rest_rate == free.rest_rate

    tier_form = {"rest_rate": "999", "rest_period_s": "60", "rest_burst": "999",
                 "daily_quota": "", "max_streams": "9", "max_subscriptions": "9",
                 "client_messages_per_s": "9", "raw_proxy": "on"}
    return [
        Action("sign up", anonymous, "/console/signup",
               {"email": "forged@example.com", "password": PASSWORD},
               lambda: _absent(c, "forged@example.com")),
        Action("log in", anonymous, "/console/login",
               {"email": "victim@example.com", "password": PASSWORD},
               lambda: _not_logged_in(anonymous)),
        Action("log out", victim, "/console/logout", {}, lambda: logged_in(victim)),
        Action("change password", victim, "/console/password",
               {"current_password": PASSWORD, "new_password": "attacker's choice",
                "confirm_password": "attacker's choice"},
               lambda: _password_is(c, "victim@example.com", PASSWORD)),
        Action("create key", victim, "/console/keys", {"name": "forged"},
               lambda: _equal(key_names, ["prod"])),
        Action("revoke key", victim, f"/console/keys/{prefix}/revoke", {},
               lambda: _status_is(c, key, 200)),
        Action("rotate key", victim, f"/console/keys/{prefix}/rotate", {},
               lambda: _equal(key_names, ["prod"])),
        Action("change a user's tier", admin, f"/console/users/{target.id}/tier",
               {"tier": "pro"}, target_unchanged),
        Action("disable a user", admin, f"/console/users/{target.id}/disable",
               {"disabled": "1"}, target_unchanged),
        Action("edit a tier", admin, "/console/tiers/free", tier_form, tier_unchanged),
    ]


async def _absent(c: Console, email: str) -> bool:
    return await c.services.users.get_by_email(email) is None


async def _not_logged_in(client: Client) -> bool:
    return client.cookie(SESSION) is None


async def _password_is(c: Console, email: str, password: str) -> bool:
    return await c.services.users.verify_login(email, password) is not None


async def _status_is(c: Console, key: str, status: int) -> bool:
    return await v1_status(c, key) == status


async def _equal(read: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return await read() == expected


async def test_every_state_changing_form_refuses_a_missing_forged_or_foreign_token(tmp_path):
    async with console_app(tmp_path) as c:
        actions = await csrf_actions(c)
        other_browser = c.client()
        await other_browser.get("/console/login")
        foreign = other_browser.xsrf()  # valid, but for another browser's cookie
        for action in actions:
            attempts: list[tuple[str, dict[str, str], dict[str, str]]] = [
                ("no token", {}, {}),
                ("forged token", {"_xsrf": forged_token()}, {}),
                ("another browser's token", {"_xsrf": foreign}, {}),
                ("another browser's token in the htmx header", {}, {"X-XSRFToken": foreign}),
            ]
            for label, token, headers in attempts:
                page = await action.client.post(action.path, {**action.data, **token},
                                                xsrf=False, headers=headers, follow=False)
                assert page.status == 403, (action.name, label, page.status)
                assert "came from another site" in page.text, (action.name, label)
                assert await action.unchanged(), f"{action.name} happened with {label}"
        # the same forms with the browser's own token do act: the refusals were the token's
        create = next(a for a in actions if a.name == "create key")
        assert (await create.client.post(create.path, create.data)).status == 201
        assert not await create.unchanged()


# -- XSS: stored and reflected, in every field a user controls --

PAYLOADS = ('<script>alert("x")</script>', '"><img src=x onerror=alert(1)>',
            "'><svg/onload=alert(1)>", "javascript:alert(1)//")
# Addresses the sign-up form accepts (no whitespace, one @, a dotted domain) that carry
# markup: stored XSS through the e-mail field.
EVIL_EMAILS = ('"><img/src=x/onerror=alert(1)>@evil.example',
               "<script>alert(1)</script>@evil.example")
LIVE_MARKUP = re.compile(r"<script>alert|<img[\s/]src=x|<svg/onload", re.I)
SCRIPT_URL = re.compile(r"""(?:href|src|action|formaction|hx-get|hx-post)\s*=\s*["']?\s*"""
                        r"javascript:", re.I)


def assert_inert(page: Page, where: str) -> None:
    """No payload survives as markup or as a script URL, and the page's CSP forbids
    inline scripts anyway."""
    assert not LIVE_MARKUP.search(page.text), (where, LIVE_MARKUP.search(page.text))
    assert not SCRIPT_URL.search(page.text), where
    csp = page.headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, (where, csp)


def assert_escaped(page: Page, payload: str, where: str) -> None:
    """`payload` is shown, as text: the escaped form is on the page."""
    assert_inert(page, where)
    escaped = (payload.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace('"', "&#34;").replace("'", "&#39;"))
    assert escaped in page.text, (where, escaped)


async def test_reflected_input_comes_back_escaped(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("known@example.com", PASSWORD)
        client = c.client()
        for payload in PAYLOADS:
            signup = await client.signup(payload, PASSWORD)  # not an address: re-shown
            assert signup.status == 400
            assert_escaped(signup, payload, "sign-up e-mail")
            login = await client.login(payload, "wrong password")
            assert login.status in (400, 429)
            assert_escaped(login, payload, "login e-mail")
            form = await client.get("/console/login?next=" + quote(payload, safe=""))
            assert_inert(form, "login next (form)")
            assert payload not in form.text
            posted = await client.post("/console/login", {"email": "known@example.com",
                                                          "password": "nope", "next": payload})
            assert_inert(posted, "login next (re-shown)")
            missing = await client.get("/console/" + quote(payload, safe=""))
            assert missing.status == 404
            assert_inert(missing, "404 path")
            assert payload not in missing.text


async def test_stored_key_names_are_escaped_on_every_page_that_shows_them(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("names@example.com")
        for payload in PAYLOADS:
            created, secret = await client.create_key(payload)
            assert_escaped(created, payload, "new key")
            prefix = secret[:12]
            for path in ("/console/keys", f"/console/keys/{prefix}/revoke",
                         f"/console/keys/{prefix}/rotate"):
                assert_escaped(await client.get(path), payload, path)
            rotated = await client.post(f"/console/keys/{prefix}/rotate", xsrf=False,
                                        headers={**HX, "X-XSRFToken": client.xsrf()})
            assert rotated.status == 200
            assert_escaped(rotated, payload, "rotate fragment")
            too_long = await client.post("/console/keys", {"name": payload + "x" * 100})
            assert too_long.status == 400
            assert_inert(too_long, "key name re-shown after an error")
        # the confirm dialogs carry the name inside an attribute: quotes escaped there too
        listing = await client.get("/console/keys")
        for attribute in re.findall(r'hx-confirm="([^"]*)"', listing.text):
            assert "<" not in attribute and ">" not in attribute and "'" not in attribute


async def test_stored_emails_are_escaped_for_their_owner_and_for_operators(tmp_path):
    async with console_app(tmp_path) as c:
        for email in EVIL_EMAILS:
            owner = c.client()
            page = await owner.signup(email)
            assert page.status == 200, page.text  # the form accepts it: it is stored
            for path in ("/console/keys", "/console/usage", "/console/password"):
                assert_escaped(await owner.get(path), email, f"{path} for the owner")
        admin = await c.admin()
        listing = await admin.get("/console/users")
        for email in EVIL_EMAILS:
            assert_escaped(listing, email, "operators' user list")
            found = await admin.get("/console/users?q=" + quote(email[:12], safe=""))
            assert_inert(found, "user search")
            fragment = await admin.get("/console/users?q=" + quote(email[:12], safe=""),
                                       headers=HX)
            assert_inert(fragment, "user search fragment")
        for attribute in re.findall(r'hx-confirm="([^"]*)"', listing.text):
            assert "<" not in attribute and ">" not in attribute, attribute


async def test_operator_pages_escape_reflected_search_and_error_text(tmp_path):
    async with console_app(tmp_path) as c:
        admin = await c.admin()
        target, _ = await c.services.users.create_user("plain@example.com", PASSWORD)
        for payload in PAYLOADS:
            for headers in (None, HX):
                search = await admin.get("/console/users?q=" + quote(payload, safe=""),
                                         headers=headers)
                assert search.status == 200
                assert_escaped(search, payload, "user search")
            bad_tier = await admin.post(f"/console/users/{target.id}/tier", {"tier": payload})
            assert bad_tier.status == 400
            assert_inert(bad_tier, "unknown tier error")
            bad_limit = await admin.post("/console/tiers/free", {"rest_rate": payload})
            assert bad_limit.status == 400
            assert_inert(bad_limit, "tier form error")
        user = await c.services.users.get_by_id(target.id)
        assert user is not None and user.tier == "free"


# -- session fixation --

def plant(client: Client, value: str) -> None:
    """Put a session cookie in `client`'s jar as if this site had set it (same host,
    the console's path), so the server's own cookie replaces it as a browser's would."""
    client.session.cookie_jar.update_cookies({SESSION: value},
                                             response_url=URL(client.base + "/console/"))


async def test_a_login_over_an_attackers_live_session_replaces_it(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("victim@example.com", PASSWORD)
        attacker = c.client()
        await attacker.signup("attacker@example.com")
        planted = attacker.cookie(SESSION)
        assert planted
        victim = c.client()
        plant(victim, planted)  # the attacker's session, in the victim's browser
        await victim.get("/console/signup")
        done = await victim.post("/console/login", {"email": "victim@example.com",
                                                    "password": PASSWORD}, follow=False)
        assert done.status == 303 and set_cookie(done) is not None
        issued = victim.cookie(SESSION)
        assert issued not in (None, planted)
        keys = await victim.get("/console/keys")
        assert "victim@example.com · free" in keys.text
        # the planted session is over, and never became the victim's
        assert not await logged_in(attacker)
        replay = c.client()
        plant(replay, planted)
        assert not await logged_in(replay)


async def test_an_unsigned_or_made_up_session_cookie_is_ignored(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("plain@example.com", PASSWORD)
        for made_up in (secrets.token_urlsafe(32), "2|1:0|10:1700000000|15:btsguru_session|"
                        "8:YWJjZGVm|" + "0" * 64):
            client = c.client()
            plant(client, made_up)
            assert not await logged_in(client)
            await client.login("plain@example.com")
            assert client.cookie(SESSION) not in (None, made_up)
            assert await logged_in(client)


async def test_logout_ends_the_session_on_the_server(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("bye@example.com")
        cookie, token = client.cookie(SESSION), client.xsrf()
        assert cookie and redis_keys(c.config, "console:session:*")
        logout = await client.post("/console/logout", follow=False)
        assert logout.status == 303
        cleared = set_cookie(logout)
        assert cleared is not None, logout.headers
        expires = re.search(r"expires=([^;]+)", cleared, re.I)
        assert expires and parsedate_to_datetime(expires.group(1)) < datetime.now(UTC)
        assert not redis_keys(c.config, "console:session:*")  # gone server-side
        # a copy of the old cookie (stolen before logout) does nothing: no page, no
        # fragment, no action
        thief = c.client()
        thief.session.cookie_jar.update_cookies({SESSION: cookie, "_xsrf": token})
        assert (await thief.get("/console/keys", follow=False)).status == 302
        poll = await thief.get("/console/usage", headers=HX, follow=False)
        assert poll.status == 401 and poll.headers["HX-Redirect"].startswith("/console/login")
        forged = await thief.post("/console/keys", {"name": "after logout"}, xsrf=False,
                                  headers={"X-XSRFToken": token}, follow=False)
        assert forged.status == 302
        assert await c.services.keys.list_keys("bye@example.com") == []


# -- open redirects (beyond tests/test_console.py's first vectors) --

OPEN_REDIRECTS = (
    "%2F%2Fevil.example", "%252F%252Fevil.example", "https:evil.example", "HTTPS://EVIL.EXAMPLE",
    "\\\\evil.example", "/\\/evil.example", "//\\evil.example", "/%5Cevil.example",
    "/%2F/evil.example", "//evil.example@console", "/console@evil.example",
    "/console/../..//evil.example", "/console/..%2F..%2F%2Fevil.example",
    "\t//evil.example", " //evil.example", "/console/keys\r\nLocation: https://evil.example",
    "http://127.0.0.1/console/keys", "/console\\evil.example", "/console/keys#//evil.example",
    "data:text/html,<script>alert(1)</script>", "///evil.example", "/console/keys?//evil",
    "evil.example", "",
)


def assert_local(location: str, target: str) -> None:
    """A Location a browser resolves on this origin, inside the console."""
    parts = urlsplit(location)
    assert not parts.scheme and not parts.netloc, (target, location)
    assert location.startswith("/console") and not location.startswith("//"), (target, location)
    assert "\\" not in location and "\r" not in location and "\n" not in location, target


async def test_login_never_redirects_off_site(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("nav@example.com", PASSWORD)
        for target in OPEN_REDIRECTS:
            client = c.client()
            form = await client.get("/console/login?next=" + quote(target, safe=""))
            shown = form.find(r'name="next" value="([^"]*)"')
            assert_local(shown, target)
            done = await client.post("/console/login", {"email": "nav@example.com",
                                                        "password": PASSWORD, "next": target},
                                     follow=False)
            assert done.status == 303, target
            assert_local(done.headers["Location"], target)
            # already logged in, the login page redirects at once: the same rule applies
            again = await client.get("/console/login?next=" + quote(target, safe=""),
                                     follow=False)
            assert again.status == 302, target
            assert_local(again.headers["Location"], target)


# -- login brute force --

async def test_a_locked_account_refuses_the_right_password_and_unlocks_after_the_window(
        tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("victim@example.com", PASSWORD)
        client = c.client()
        # the lock follows the account however the address is typed
        for email in ("victim@example.com", "VICTIM@example.com", " Victim@Example.COM ",
                      "victim@EXAMPLE.com", "victim@example.com"):
            assert (await client.login(email, "guess")).status == 400
        locked = await client.login("victim@example.com", PASSWORD)
        assert locked.status == 429
        assert "Too many attempts. Please wait 15 minute(s) and try again." in locked.text
        assert client.cookie(SESSION) is None
        assert (await c.client().login("Victim@Example.com", PASSWORD)).status == 429
        end_throttle_windows(c.config)
        await wait_until(lambda: throttle_gone(c.config), TIMEOUT_S)
        back = await client.login("victim@example.com", PASSWORD)
        assert back.status == 200 and back.url.endswith("/console/keys")
        assert client.cookie(SESSION) is not None


async def test_a_locked_address_refuses_every_account_and_unlocks_after_the_window(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("real@example.com", PASSWORD)
        client = c.client()
        await client.get("/console/login")
        sprayer = {"X-Real-IP": "203.0.113.99"}
        for n in range(IP_MAX_FAILURES):
            page = await client.post("/console/login", {"email": f"u{n}@example.com",
                                                        "password": "x"}, headers=sprayer)
            assert page.status == 400
        blocked = await client.post("/console/login", {"email": "real@example.com",
                                                       "password": PASSWORD}, headers=sprayer)
        assert blocked.status == 429 and "Too many attempts" in blocked.text
        assert client.cookie(SESSION) is None
        end_throttle_windows(c.config)
        await wait_until(lambda: throttle_gone(c.config), TIMEOUT_S)
        ok = await client.post("/console/login", {"email": "real@example.com",
                                                  "password": PASSWORD}, headers=sprayer)
        assert ok.status == 200 and ok.url.endswith("/console/keys")


async def test_the_password_form_is_no_way_around_the_lock(tmp_path):
    """A stolen session cannot guess the current password faster than the login form:
    both count against the same account."""
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("pw@example.com")
        for _ in range(5):
            page = await client.post("/console/password", {
                "current_password": "guess", "new_password": "new password 1",
                "confirm_password": "new password 1"})
            assert page.status == 400
        right = await client.post("/console/password", {
            "current_password": PASSWORD, "new_password": "new password 1",
            "confirm_password": "new password 1"})
        assert right.status == 429 and "Too many attempts" in right.text
        assert await c.services.users.verify_login("pw@example.com", PASSWORD)
        assert (await c.client().login("pw@example.com")).status == 429


# -- clickjacking: every page, error pages and fragments included, and the docs --

async def test_no_page_can_be_framed(tmp_path):
    async with console_app(tmp_path) as c:
        user = c.client()
        await user.signup("frame@example.com")
        _, secret = await user.create_key("k")
        admin = await c.admin()
        pages: list[tuple[str, Page]] = [
            ("usage fragment", await user.get("/console/usage", headers=HX)),
            ("key confirm", await user.get(f"/console/keys/{secret[:12]}/revoke")),
            ("operators only", await user.get("/console/ops")),
            ("xsrf refusal", await user.post("/console/keys", {"name": "x"}, xsrf=False)),
            ("form error", await user.post("/console/keys", {"name": "x" * 200})),
            ("method not allowed", await _put(user, "/console/keys")),
            ("ops", await admin.get("/console/ops")),
            ("ops fragment", await admin.get("/console/ops", headers=HX)),
            ("users", await admin.get("/console/users")),
            ("anonymous poll", await c.client().get("/console/usage", headers=HX,
                                                    follow=False)),
            ("login", await c.client().get("/console/login")),
            ("docs", await c.client().get("/docs")),
        ]
        throttled = c.client()
        for _ in range(6):
            last = await throttled.login("nobody@example.com", "x")
        pages.append(("throttled", last))
        for name, page in pages:
            assert page.headers.get("X-Frame-Options") == "DENY", name
            csp = page.headers.get("Content-Security-Policy", "")
            assert "frame-ancestors 'none'" in csp, (name, csp)
        assert dict(pages)["throttled"].status == 429
        assert dict(pages)["docs"].status == 200


async def _put(client: Client, path: str) -> Page:
    async with client.session.put(client.base + path, data=b"") as resp:
        return Page(resp.status, str(resp.url), await resp.text(), resp.headers)


# -- the session cookie's flags --

async def test_every_session_cookie_is_httponly_samesite_and_secure_behind_https(tmp_path):
    """Every path that issues a session cookie (signup is in tests/test_console.py)."""
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("flags@example.com", PASSWORD)
        https = {"X-Forwarded-Proto": "https"}
        secure_browser, plain_browser = c.client(), c.client()
        await secure_browser.get("/console/login")
        login = await secure_browser.post("/console/login", {"email": "flags@example.com",
                                                             "password": PASSWORD},
                                          headers=https, follow=False)
        await plain_browser.get("/console/login")
        plain_login = await plain_browser.post("/console/login", {
            "email": "flags@example.com", "password": PASSWORD}, follow=False)
        # (the test client speaks plain http, so it keeps sending only the non-Secure one)
        changed = await plain_browser.post("/console/password", {
            "current_password": PASSWORD, "new_password": "another password",
            "confirm_password": "another password"}, headers=https)
        assert changed.status == 200 and "Your password was changed" in changed.text
        for name, page, secure in (("login behind https", login, True),
                                   ("login over plain http", plain_login, False),
                                   ("password change behind https", changed, True)):
            cookie = set_cookie(page)
            assert cookie is not None, name
            flags = [part.strip().lower() for part in cookie.split(";")]
            assert "httponly" in flags and "samesite=lax" in flags, (name, cookie)
            assert "path=/console" in flags, (name, cookie)
            assert ("secure" in flags) is secure, (name, cookie)
        # the XSRF cookie too: no script needs it (the token rides in the page)
        xsrf = set_cookie(await c.client().get("/console/login"), "_xsrf")
        assert xsrf is not None
        flags = [part.strip().lower() for part in xsrf.split(";")]
        assert "httponly" in flags and "samesite=lax" in flags, xsrf
