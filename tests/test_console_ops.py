"""The operators' console over HTTP: who may see it, what it shows (pollers, quota gauges,
cache), and the changes it makes to users and tiers taking effect at once."""

from __future__ import annotations

import re

import aiohttp
from multidict import CIMultiDict

from btsguru.pollers.state import PollerState
from tests.console_fixtures import ADMIN_EMAIL, PASSWORD, console_app

HX = {"HX-Request": "true"}


async def v1(console, key: str) -> tuple[int, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as session, \
            session.get(console.url + "/v1/usage", headers={"X-API-Key": key}) as resp:
        await resp.read()
        return resp.status, CIMultiDict(resp.headers)


async def test_non_operators_are_refused_from_every_operator_page(tmp_path):
    async with console_app(tmp_path) as c:
        client = c.client()
        await client.signup("plain@example.com")
        user = await c.services.users.get_by_email("plain@example.com")
        assert user is not None
        for path in ("/console/ops", "/console/users", "/console/users?q=a"):
            page = await client.get(path)
            assert page.status == 403, path
            assert "for operators only" in page.text and "Pollers" not in page.text
        assert 'href="/console/ops"' not in (await client.get("/console/keys")).text
        for path, form in ((f"/console/users/{user.id}/tier", {"tier": "enterprise"}),
                           (f"/console/users/{user.id}/disable", {"disabled": "1"}),
                           ("/console/tiers/free", {"rest_rate": "999999"})):
            assert (await client.post(path, form)).status == 403, path
        after = await c.services.users.get_by_id(user.id)
        assert after is not None and (after.tier, after.disabled) == ("free", False)
        assert (await c.services.tiers.get("free")).rest_rate == 60


async def test_ops_page_shows_quota_gauges_pollers_and_cache(tmp_path):
    async with console_app(tmp_path, UPSTREAM_DAILY_QUOTA="100",
                           UPSTREAM_MINUTE_QUOTA="500") as c:
        admin = await c.admin()
        for _ in range(85):  # 85 % of football's day: past the 80 % mark
            assert (await c.services.quota.try_acquire("football", "poller")).token is not None
        await PollerState(c.services.redis, c.services.clock).update(
            "football", "live", {"interval_s": 15.0, "last_run": c.services.clock.time(),
                                 "last_success": c.services.clock.time(), "failures": 2,
                                 "backoff_s": 10.0, "live_games": 3,
                                 "next_run": c.services.clock.time() + 12})
        page = await admin.get("/console/ops")
        assert page.status == 200 and 'hx-trigger="every 10s"' in page.text
        football = re.search(r'<div class="card quota level-(\w+)">\s*<h3>football</h3>(.*?)'
                             r'</div>\s*</div>', page.text, re.S)
        assert football and football.group(1) == "warn80"
        assert "85 of 100" in football.group(2) and "80%" in football.group(2)
        assert "95%" in football.group(2)
        assert "0 of 100" in page.text  # another sport, untouched
        row = re.search(r'<tr class="failing">\s*<td>football</td><td>live.*?</tr>', page.text,
                        re.S)
        assert row and ">2<" in row.group(0).replace(" ", "") and "15.0 s" in row.group(0)
        assert "No recent alerts." in page.text  # the alerter's log, empty so far
        assert 'id="cache-hit-rate">-<' in page.text
        fragment = await admin.get("/console/ops", headers=HX)
        assert fragment.text.lstrip().startswith('<section id="ops-panel"')


async def test_operators_change_a_users_tier_and_it_applies_at_once(tmp_path):
    async with console_app(tmp_path) as c:
        admin = await c.admin()
        user, _ = await c.services.users.create_user("up@example.com", PASSWORD)
        _, key = await c.services.keys.create_key("up@example.com", "k")
        status, headers = await v1(c, key)
        assert status == 200 and headers["RateLimit-Limit"] == "60"
        listing = await admin.get("/console/users?q=UP@")
        assert 'class="user-email">up@example.com' in listing.text
        assert f'class="user-email">{ADMIN_EMAIL}' not in listing.text
        search = await admin.get("/console/users?q=up", headers=HX)
        assert search.text.lstrip().startswith('<section id="users-table"')
        page = await admin.post(f"/console/users/{user.id}/tier", {"tier": "pro"},
                                headers={**HX})
        assert page.status == 200 and "is now on the pro tier" in page.text
        assert "<html" not in page.text
        status, headers = await v1(c, key)
        assert status == 200 and headers["RateLimit-Limit"] == "100"  # the pro burst
        bad = await admin.post(f"/console/users/{user.id}/tier", {"tier": "platinum"})
        assert bad.status == 400 and "unknown tier" in bad.text


async def test_disabling_a_user_stops_their_keys_and_sessions_at_once(tmp_path):
    async with console_app(tmp_path) as c:
        admin = await c.admin()
        victim = c.client()
        await victim.signup("bye@example.com")
        _, key = await victim.create_key("service")
        assert (await v1(c, key))[0] == 200
        user = await c.services.users.get_by_email("bye@example.com")
        assert user is not None
        page = await admin.post(f"/console/users/{user.id}/disable", {"disabled": "1"},
                                follow=False)
        assert (page.status, page.headers["Location"]) == (303, "/console/users")
        assert (await v1(c, key))[0] == 401
        assert (await victim.get("/console/keys", follow=False)).status == 302
        assert (await victim.login("bye@example.com")).status == 400
        listing = await admin.get("/console/users")
        assert ">Enable user</button>" in listing.text
        await admin.post(f"/console/users/{user.id}/disable", {"disabled": "0"})
        assert (await v1(c, key))[0] == 200
        me = await c.services.users.get_by_email(ADMIN_EMAIL)
        assert me is not None
        own = await admin.post(f"/console/users/{me.id}/disable", {"disabled": "1"})
        assert own.status == 400 and "cannot disable your own account" in own.text


async def test_operators_edit_tier_limits(tmp_path):
    async with console_app(tmp_path) as c:
        admin = await c.admin()
        _, _ = await c.services.users.create_user("t@example.com", PASSWORD)
        _, key = await c.services.keys.create_key("t@example.com", "k")
        assert (await v1(c, key))[1]["RateLimit-Limit"] == "60"
        page = await admin.get("/console/users")
        assert ">Save free limits</button>" in page.text
        form = {"rest_rate": "120", "rest_period_s": "60", "rest_burst": "30",
                "daily_quota": "", "max_streams": "3", "max_subscriptions": "12",
                "client_messages_per_s": "4", "raw_proxy": "on"}
        saved = await admin.post("/console/tiers/free", form, follow=False)
        assert saved.status == 303
        tier = await c.services.tiers.get("free")
        assert (tier.rest_rate, tier.rest_burst, tier.daily_quota, tier.max_streams) == (
            120, 30, None, 3)
        assert tier.raw_proxy and not tier.private_channels
        assert tier.rest_refill_per_s == 2.0
        assert (await v1(c, key))[1]["RateLimit-Limit"] == "30"  # the burst
        bad = await admin.post("/console/tiers/free", {**form, "rest_rate": "lots"})
        assert bad.status == 400 and "rest rate: a whole number" in bad.text
        missing = await admin.post("/console/tiers/gold", form)
        assert missing.status == 404
