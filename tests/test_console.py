"""The web console's pages and forms over HTTP: accounts, sessions, CSRF, throttling, keys,
usage, the live page, escaping, headers and the friendly error pages. Real Redis, SQLite
and sockets; a browser-like client with a cookie jar."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from html import unescape

import aiohttp

from btsguru.sports.base import Game, League, Phase, Status, Team
from tests.console_fixtures import PASSWORD, Client, console_app

HX = {"HX-Request": "true"}


async def v1_usage(console, key: str) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(console.url + "/v1/usage", headers={"X-API-Key": key}) as resp:
        await resp.read()
        return resp.status


def session_cookie_header(page) -> str:
    for value in page.headers.getall("Set-Cookie", []):
        if value.startswith("btsguru_session="):
            return value
    raise AssertionError(f"no session cookie set: {page.headers}")


# -- accounts and sessions --

async def test_signup_logs_in_with_a_hardened_session_cookie(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.get("/console/signup")
        page = await client.post("/console/signup", {"email": "Ann@Example.com",
                                                     "password": PASSWORD}, follow=False)
        assert page.status == 303 and page.headers["Location"] == "/console/keys"
        cookie = session_cookie_header(page).lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/console" in cookie
        assert "secure" not in cookie  # plain http here; https sets it (next test)
        keys = await client.get("/console/keys")
        assert keys.status == 200 and "ann@example.com · free" in keys.text
        user = await c.services.users.get_by_email("ann@example.com")
        assert user is not None and user.tier == "free"


async def test_the_session_cookie_is_secure_behind_https(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.get("/console/signup")
        page = await client.post("/console/signup", {"email": "sec@example.com",
                                                     "password": PASSWORD},
                                 headers={"X-Forwarded-Proto": "https"}, follow=False)
        assert page.status == 303
        assert "secure" in session_cookie_header(page).lower()


async def test_signup_errors_are_shown_on_the_form(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        short = await client.signup("bob@example.com", "short")
        assert short.status == 400 and "Password too short" in short.text
        assert 'value="bob@example.com"' in short.text
        bad = await client.signup("not-an-address", PASSWORD)
        assert bad.status == 400 and "Not an e-mail address" in bad.text
        await c.services.users.create_user("taken@example.com", PASSWORD)
        taken = await c.client().signup("taken@example.com", "another password")
        assert taken.status == 400 and "could not be created" in taken.text
        assert await c.services.users.verify_login("taken@example.com", PASSWORD)


async def test_login_failures_look_the_same_for_unknown_and_known_emails(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("known@example.com", PASSWORD)
        client = c.client()
        wrong = await client.login("known@example.com", "wrong password")
        unknown = await client.login("nobody@example.com", "wrong password")
        assert wrong.status == unknown.status == 400
        message = "The email or password is not right."
        assert message in wrong.text and message in unknown.text
        assert client.cookie("btsguru_session") is None
        ok = await client.login("known@example.com")
        assert ok.status == 200 and ok.url.endswith("/console/keys")


async def test_login_follows_a_local_next_and_refuses_open_redirects(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("nav@example.com", PASSWORD)
        anonymous = await c.client().get("/console/usage", follow=False)
        assert anonymous.status == 302
        assert anonymous.headers["Location"] == "/console/login?next=%2Fconsole%2Fusage"
        for target, expected in [("/console/usage", "/console/usage"),
                                 ("https://evil.example/", "/console/keys"),
                                 ("//evil.example/console", "/console/keys"),
                                 ("/\\evil.example", "/console/keys"),
                                 ("/console//evil.example", "/console/keys"),
                                 ("javascript:alert(1)", "/console/keys")]:
            client = c.client()
            page = await client.get("/console/login?next=" + aiohttp.helpers.quote(target, safe=""))
            assert page.find(r'name="next" value="([^"]*)"') == expected
            done = await client.post("/console/login", {"email": "nav@example.com",
                                                        "password": PASSWORD, "next": target},
                                     follow=False)
            assert (done.status, done.headers["Location"]) == (303, expected), target


async def test_logging_in_issues_a_new_session_id(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("fix@example.com", PASSWORD)
        client = c.client()
        await client.login("fix@example.com")
        first = client.cookie("btsguru_session")
        await client.login("fix@example.com")
        second = client.cookie("btsguru_session")
        assert first and second and first != second
        # the earlier session is over: a browser presenting it is anonymous
        replay = Client(c.url)
        c.clients.append(replay)
        replay.session.cookie_jar.update_cookies({"btsguru_session": first})
        page = await replay.get("/console/keys", follow=False)
        assert page.status == 302 and page.headers["Location"].startswith("/console/login")


async def test_logout_ends_the_session(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("out@example.com")
        cookie = client.cookie("btsguru_session")
        confirm = await client.get("/console/logout")
        assert confirm.status == 200 and ">Log out</button>" in confirm.text
        page = await client.post("/console/logout")
        assert page.status == 200 and page.url.endswith("/console/login")
        other = Client(c.url)
        c.clients.append(other)
        other.session.cookie_jar.update_cookies({"btsguru_session": cookie or ""})
        assert (await other.get("/console/keys", follow=False)).status == 302


async def test_change_password(tmp_path):
    async with console_app(tmp_path) as c:
        client, elsewhere = c.client(), c.client()
        await client.signup("pw@example.com")
        await elsewhere.login("pw@example.com")
        await client.get("/console/password")
        wrong = await client.post("/console/password", {
            "current_password": "nope nope nope", "new_password": "a new password",
            "confirm_password": "a new password"})
        assert wrong.status == 400 and "current password is not right" in wrong.text
        mismatch = await client.post("/console/password", {
            "current_password": PASSWORD, "new_password": "a new password",
            "confirm_password": "another one!"})
        assert mismatch.status == 400 and "do not match" in mismatch.text
        ok = await client.post("/console/password", {
            "current_password": PASSWORD, "new_password": "a new password",
            "confirm_password": "a new password"})
        assert ok.status == 200 and "Your password was changed" in ok.text
        assert (await client.get("/console/keys")).status == 200  # still logged in here
        assert (await elsewhere.get("/console/keys", follow=False)).status == 302
        assert await c.services.users.verify_login("pw@example.com", "a new password")
        assert not await c.services.users.verify_login("pw@example.com", PASSWORD)


# -- CSRF and throttling --

async def test_forms_without_the_xsrf_token_are_refused(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("csrf@example.com")
        refused = await client.post("/console/keys", {"name": "forged"}, xsrf=False)
        assert refused.status == 403
        assert "came from another site" in refused.text and "Traceback" not in refused.text
        forged_token = await client.post("/console/keys", {"name": "forged",
                                                           "_xsrf": "2|00|11|22"}, xsrf=False)
        assert forged_token.status == 403
        assert (await client.post("/console/logout", xsrf=False)).status == 403
        assert await c.services.keys.list_keys("csrf@example.com") == []
        # htmx sends the token in a header (hx-headers on <body>)
        via_header = await client.post("/console/keys", {"name": "from htmx"}, xsrf=False,
                                       headers={"X-XSRFToken": client.xsrf()})
        assert via_header.status == 201
        assert [k.name for k in await c.services.keys.list_keys("csrf@example.com")] == [
            "from htmx"]


async def test_login_is_throttled_per_account_whether_or_not_it_exists(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("victim@example.com", PASSWORD)
        client = c.client()
        for email in ("victim@example.com", "ghost@example.com"):
            for _ in range(5):
                assert (await client.login(email, "guess guess")).status == 400
            blocked = await client.login(email, PASSWORD)
            assert blocked.status == 429, email
            assert "Too many attempts" in blocked.text
        assert client.cookie("btsguru_session") is None
        # another account from the same address is still fine
        await c.services.users.create_user("other@example.com", PASSWORD)
        assert (await client.login("other@example.com")).url.endswith("/console/keys")


async def test_login_is_throttled_per_address(tmp_path):
    async with console_app(tmp_path) as c:
        await c.services.users.create_user("spray@example.com", PASSWORD)
        client = c.client()
        await client.get("/console/login")
        attacker = {"X-Real-IP": "203.0.113.7"}
        for n in range(30):  # many accounts, few tries each: the per-IP limit
            page = await client.post("/console/login", {"email": f"user{n}@example.com",
                                                        "password": "x"}, headers=attacker)
            assert page.status == 400
        blocked = await client.post("/console/login", {"email": "spray@example.com",
                                                       "password": PASSWORD}, headers=attacker)
        assert blocked.status == 429
        other_ip = await client.post("/console/login", {"email": "spray@example.com",
                                                        "password": PASSWORD},
                                     headers={"X-Real-IP": "198.51.100.1"})
        assert other_ip.status == 200 and other_ip.url.endswith("/console/keys")


# -- keys --

async def test_key_lifecycle_create_show_once_use_revoke(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("keys@example.com")
        page, secret = await client.create_key("laptop")
        assert page.status == 201 and re.fullmatch(r"btg_[0-9A-Za-z]{40}", secret)
        assert "shown only this once" in page.text and ">Copy key</button>" in page.text
        listing = await client.get("/console/keys")
        assert secret not in listing.text and secret[:12] in listing.text
        assert "laptop" in listing.text and "never" in listing.text  # last used
        assert await v1_usage(c, secret) == 200
        # no-JS revoke: a confirmation page, then a POST and a redirect
        confirm = await client.get(f"/console/keys/{secret[:12]}/revoke")
        assert confirm.status == 200 and ">Revoke key</button>" in confirm.text
        done = await client.post(f"/console/keys/{secret[:12]}/revoke", follow=False)
        assert (done.status, done.headers["Location"]) == (303, "/console/keys")
        assert await v1_usage(c, secret) == 401  # at once, not after a cache TTL
        listing = await client.get("/console/keys")
        assert "You have no active keys" in listing.text and "revoked" in listing.text


async def test_htmx_revoke_and_rotate_answer_with_the_keys_fragment(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("hx@example.com")
        _, first = await client.create_key("ci")
        _, second = await client.create_key("backup")
        headers = {**HX, "X-XSRFToken": client.xsrf()}
        rotated = await client.post(f"/console/keys/{first[:12]}/rotate", xsrf=False,
                                    headers=headers)
        assert rotated.status == 200
        assert rotated.text.lstrip().startswith('<section id="keys-panel"')
        assert "<html" not in rotated.text
        new = rotated.find(r'id="new-secret"[^>]*value="([^"]+)"')
        assert new != first and "ci" in rotated.text
        assert await v1_usage(c, first) == 401 and await v1_usage(c, new) == 200
        revoked = await client.post(f"/console/keys/{second[:12]}/revoke", xsrf=False,
                                    headers=headers)
        assert revoked.status == 200 and "was revoked" in revoked.text
        assert "<html" not in revoked.text
        assert await v1_usage(c, second) == 401 and await v1_usage(c, new) == 200


async def test_nobody_can_revoke_another_users_key(tmp_path):
    async with console_app(tmp_path) as c:
        owner, thief = c.client(), c.client()
        await owner.signup("owner@example.com")
        _, secret = await owner.create_key("prod")
        await thief.signup("thief@example.com")
        page = await thief.post(f"/console/keys/{secret[:12]}/revoke")
        assert page.status == 404 and "no active key" in page.text
        assert await v1_usage(c, secret) == 200


async def test_user_supplied_names_are_escaped(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("xss@example.com")
        evil = '<script>alert("k")</script>'
        page, _ = await client.create_key(evil)
        listing = await client.get("/console/keys")
        for text in (page.text, listing.text):
            assert evil not in text
            assert "&lt;script&gt;alert(&#34;k&#34;)&lt;/script&gt;" in text
        bad = await client.post("/console/keys", {"name": "x" * 101})
        assert bad.status == 400 and "1 to 100 printable characters" in bad.text


# -- usage --

async def test_usage_page_counts_requests_and_refreshes_as_a_fragment(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("use@example.com")
        _, secret = await client.create_key("meter")
        page = await client.get("/console/usage")
        assert page.status == 200
        assert page.find(r'id="today-requests">(\d+)<') == "0"
        assert 'hx-trigger="every 10s"' in page.text and "<svg" in page.text
        assert page.find(r'id="stream-count">([^<]*)<') in ("-", "0")
        for _ in range(7):
            assert await v1_usage(c, secret) == 200
        fragment = await client.get("/console/usage", headers=HX)
        assert fragment.text.lstrip().startswith('<section id="usage-panel"')
        assert int(fragment.find(r'id="today-requests">(\d+)<')) == 7
        assert int(fragment.find(r'id="daily-chart" data-total="(\d+)"')) == 7
        assert int(fragment.find(r'id="hourly-chart" data-total="(\d+)"')) == 7
        assert "of 1000" in fragment.text  # the free tier's daily quota gauge
        assert "7 other of 7 requests" in fragment.text  # /v1/usage counts as "other"


# -- live --

def _game(game_id: int, home: str, away: str, score: tuple[int, int]) -> Game:
    return Game(id=game_id, sport="football",
                league=League(id=39, name="Premier League", country="England", season=2024),
                start_time="2024-08-16T19:00:00Z",
                status=Status(phase=Phase.LIVE, code="2H", clock="67", period=2),
                home=Team(id=1, name=home, score=score[0]),
                away=Team(id=2, name=away, score=score[1]))


async def test_live_page_shows_games_in_play_escaped(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("live@example.com")
        await c.services.games.ingest("football", [
            _game(501, "Arsenal", "<b>Spurs</b>", (2, 1))])
        page = await client.get("/console/live")
        assert page.status == 200
        row = re.search(r'<tr id="game-football-501".*?</tr>', page.text, re.S)
        assert row and "Arsenal" in row.group(0)
        assert "&lt;b&gt;Spurs&lt;/b&gt;" in row.group(0) and "<b>Spurs" not in page.text
        assert '<span data-field="home.score">2</span>' in page.text
        assert "No basketball games in play" in page.text
        await c.services.games.ingest("football", [
            replace(_game(501, "Arsenal", "<b>Spurs</b>", (3, 1)))])
        boards = await client.get("/console/live", headers=HX)  # live.js's refresh
        assert boards.text.lstrip().startswith('<div id="boards">')
        assert '<span data-field="home.score">3</span>' in boards.text
        # every status code says what it means: a tooltip, and a legend per board
        assert '<abbr data-field="status.code" title="Second half">2H</abbr>' in boards.text
        legend = re.search(r'<details class="legend">.*?</details>', boards.text, re.S)
        assert legend and "<dt>BT</dt><dd>Break time (before or during extra time)</dd>" \
            in legend.group(0)
        names = re.search(r"id=\"board-football\"[^>]*data-status-names='([^']*)'", boards.text)
        assert names and json.loads(unescape(names.group(1)))["P"] == "Penalty shoot-out"


def test_every_status_code_of_every_sport_has_a_long_name():
    from btsguru.sports.normalize import PHASES
    from btsguru.sports.status_names import STATUS_NAMES, status_name

    assert set(STATUS_NAMES) == set(PHASES)
    for sport, phases in PHASES.items():
        unnamed = [code for code in phases if status_name(sport, code) == code]
        assert unnamed == [], (sport, unnamed)
        assert list(STATUS_NAMES[sport]) == list(phases)  # its own codes, no other sport's
    assert status_name("baseball", "IN9") == "Inning 9"
    assert status_name("hockey", "P3") == "Period 3"
    assert status_name("football", "NEW") == "NEW"  # a code the upstream adds later


# -- pages, headers, errors --

async def test_every_page_forbids_framing_and_foreign_scripts(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("hdr@example.com")
        for path in ("/console/login", "/console/signup", "/console/keys", "/console/usage",
                     "/console/live", "/console/password", "/console/logout",
                     "/console/nope"):
            page = await client.get(path)
            assert page.headers["X-Frame-Options"] == "DENY", path
            csp = page.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
            assert page.headers["Content-Type"].startswith("text/html"), path
            assert "Traceback" not in page.text
        static = await client.get(page.find(r'<script src="(/static/htmx/htmx\.min\.js\?v=\w+)"'))
        assert static.status == 200 and "htmx" in static.text[:2000]


async def test_unknown_console_pages_are_a_friendly_html_404(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        page = await client.get("/console/no/such/page")
        assert page.status == 404 and "There is no such page" in page.text
        assert page.headers["Content-Type"].startswith("text/html")
        anonymous_post = await client.post("/console/nowhere", xsrf=False)
        assert anonymous_post.status == 404


async def test_anonymous_visitors_are_sent_to_log_in(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        for path in ("/console", "/console/keys", "/console/usage", "/console/live",
                     "/console/password", "/console/ops", "/console/users"):
            page = await client.get(path)
            assert page.url.split("?")[0].endswith("/console/login"), path
        poll = await client.get("/console/usage", headers=HX, follow=False)
        assert poll.status == 401
        assert poll.headers["HX-Redirect"].startswith("/console/login?next=")


# -- the landing page and the favicon --

async def test_the_landing_page_says_what_this_is_and_where_to_go(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        page = await client.get("/", headers={"X-Forwarded-Proto": "https"})
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "real-time sports data relay" in page.text
        for link in ("/console", "/docs", "/openapi.json", "/healthz", "/readyz"):
            assert f'href="{link}"' in page.text, link
        host = c.url.split("://", 1)[1]
        # the endpoints with the address the visitor used (https: wss)
        assert f"https://{host}/v1/football/live" in page.text
        assert f"wss://{host}/v1/ws?api_key=KEY" in page.text
        assert f"https://{host}/v1/stream?channels=sports.football&amp;api_key=KEY" in page.text
        app_key = c.services.config.reverb_app_key
        assert f"wss://{host}/app/{app_key}?protocol=7" in page.text
        assert "within 15 minutes" in page.text  # the history window, from the store
        assert page.headers["X-Frame-Options"] == "DENY"
        # JSON elsewhere: an unknown path outside the console is still a JSON 404
        missing = await client.get("/nothing-here")
        assert missing.status == 404 and missing.headers["Content-Type"].startswith(
            "application/json")


async def test_the_favicon_is_served_and_every_page_links_it(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        async with aiohttp.ClientSession() as session, \
                session.get(c.url + "/favicon.ico") as ico:
            body = await ico.read()
            assert ico.status == 200 and ico.headers["Content-Type"] in (
                "image/x-icon", "image/vnd.microsoft.icon")
        assert body[:4] == b"\x00\x00\x01\x00"  # an icon directory
        assert body[22:30] == b"\x89PNG\r\n\x1a\n"  # its one image, a PNG
        svg = await client.get("/static/favicon.svg")
        assert svg.status == 200 and svg.headers["Content-Type"] == "image/svg+xml"
        login = await client.get("/console/login")
        assert re.search(r'<link rel="icon" href="/static/favicon\.svg\?v=\w+"', login.text)
