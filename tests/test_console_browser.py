"""The console in a real browser: headless Chromium (Debian's `chromium`, installed here
if missing; never a downloaded browser) driven by Playwright. A person's path through it:
sign up, create a key, see it once, use it, watch the usage chart move, revoke it, and
watch the live scoreboard change while the simulator plays. Screenshots of each page go
to `test-output/console/` (not committed); with BTSGURU_DOCS_SCREENSHOTS=1 the README's
two pictures are written to `docs/` as well."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.cli_helpers import ROOT
from tests.conftest import make_test_config
from tests.console_fixtures import ADMIN_EMAIL, PASSWORD, console_app
from tests.upstream_fixtures import point_at, sim_fault, simulator

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-output" / "console"
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1000, "height": 800}  # the README's pictures are 1000 px wide


def _install_chromium() -> str | None:
    """Why chromium cannot be had, or None once /usr/bin/chromium exists."""
    if Path(CHROMIUM).exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium is not installed and apt-get cannot run here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    done = subprocess.run(install, env=env, capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600,
                       check=False)
        done = subprocess.run(install, env=env, capture_output=True, timeout=900, check=False)
    if not Path(CHROMIUM).exists():
        return f"apt-get install chromium failed: {done.stderr.decode()[-300:]}"
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    reason = _install_chromium()
    if reason is not None:
        pytest.skip(reason)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return CHROMIUM


async def _launch(playwright, executable: str):
    return await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                            headless=True)


async def _shot(page, name: str, *, docs: str | None = None) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if docs and os.environ.get("BTSGURU_DOCS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        target = DOCS / docs
        await page.screenshot(path=str(target), full_page=False)
        if shutil.which("optipng"):
            await asyncio.to_thread(subprocess.run, ["optipng", "-quiet", "-o2", str(target)],
                                    check=False)


async def _v1_usage(base: str, key: str) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(base + "/v1/usage", headers={"X-API-Key": key}) as resp:
        await resp.read()
        return resp.status


async def test_sign_up_create_use_watch_and_revoke_a_key(tmp_path, chromium):
    async with console_app(tmp_path, background=True) as c, \
            playwright_api.async_playwright() as p:
        browser = await _launch(p, chromium)
        try:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            await page.goto(c.url + "/console/signup")
            await page.get_by_label("Email").fill("walker@example.com")
            await page.get_by_label("Password").fill(PASSWORD)
            await _shot(page, "01-signup")
            await page.get_by_role("button", name="Create account").click()
            await page.wait_for_url("**/console/keys")

            await page.get_by_label("Key name").fill("my laptop <script>")
            await page.get_by_role("button", name="Create key").click()
            secret_box = page.locator("#new-secret")
            await secret_box.wait_for()
            secret = await secret_box.input_value()
            assert secret.startswith("btg_") and len(secret) == 44
            assert await page.get_by_role("button", name="Copy key").is_visible()
            assert await page.locator("td.key-name").inner_text() == "my laptop <script>"
            await _shot(page, "02-key-created")
            await page.goto(c.url + "/console/keys")  # shown once: not on a later visit
            assert secret not in await page.content()
            assert secret[:12] in await page.content()
            await _shot(page, "03-keys")

            for _ in range(5):
                assert await _v1_usage(c.url, secret) == 200
            await page.goto(c.url + "/console/usage")
            chart = page.locator("#daily-chart")
            before = int(await chart.get_attribute("data-total") or "-1")
            assert before >= 5
            for _ in range(7):
                assert await _v1_usage(c.url, secret) == 200
            # no reload: the panel refreshes itself (hx-trigger="every 10s")
            await page.wait_for_function(
                "n => Number(document.querySelector('#daily-chart').dataset.total) >= n",
                arg=before + 7, timeout=25_000)
            assert page.url.endswith("/console/usage")
            assert await page.locator("#daily-chart rect.bar").count() >= 1
            await _shot(page, "04-usage", docs="console-usage.png")

            await page.goto(c.url + "/console/keys")
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.get_by_role("link", name="Revoke key").click()
            await page.get_by_text("was revoked").wait_for()
            assert await page.get_by_text("You have no active keys").is_visible()
            await _shot(page, "05-revoked")
            assert await _v1_usage(c.url, secret) == 401

            # the operators' pages, as an operator sees them
            await c.services.users.create_user(ADMIN_EMAIL, PASSWORD, admin=True)
            ops = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            await ops.goto(c.url + "/console/login")
            await ops.get_by_label("Email").fill(ADMIN_EMAIL)
            await ops.get_by_label("Password").fill(PASSWORD)
            await ops.get_by_role("button", name="Log in").click()
            await ops.wait_for_url("**/console/keys")
            await ops.goto(c.url + "/console/ops")
            assert await ops.get_by_role("heading", name="Upstream quota").is_visible()
            await _shot(ops, "06-ops")
            await ops.goto(c.url + "/console/users")
            assert await ops.get_by_role("cell", name="walker@example.com", exact=True).is_visible()
            await _shot(ops, "07-users")
        finally:
            await browser.close()


def _polling_every_second(tmp_path, sim, **settings: str):
    """A relay on the simulator polling football and basketball every second."""
    return point_at(make_test_config(tmp_path, RAPIDAPI_HOST="127.0.0.1",
                                     BTSGURU_SPORTS="football,basketball",
                                     POLL_LIVE_INTERVAL_FOOTBALL_S="1",
                                     POLL_LIVE_INTERVAL_BASKETBALL_S="1",
                                     POLL_CRUCIAL_INTERVAL_FOOTBALL_S="1",
                                     POLL_CRUCIAL_INTERVAL_BASKETBALL_S="1", **settings), sim)


async def test_the_live_scoreboard_changes_while_the_simulator_plays(tmp_path, chromium):
    async with simulator(speed=30.0) as sim:
        config = _polling_every_second(tmp_path, sim)
        async with console_app(tmp_path, config, pollers=True) as c, \
                playwright_api.async_playwright() as p:
            await c.services.users.create_user("fan@example.com", PASSWORD)
            browser = await _launch(p, chromium)
            try:
                page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
                await page.goto(c.url + "/console/login?next=/console/live")
                await page.get_by_label("Email").fill("fan@example.com")
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Log in").click()
                await page.wait_for_url("**/console/live")
                # live games appear once the pollers have run (the page refreshes its
                # boards itself when a game it does not show starts or changes)
                deadline = asyncio.get_running_loop().time() + 90  # a loaded CI machine
                while await page.locator("tr[data-game]").count() == 0:
                    assert asyncio.get_running_loop().time() < deadline, "no live games"
                    await page.wait_for_timeout(500)
                    if await page.locator("tr[data-game]").count() == 0:
                        await page.reload()
                await page.wait_for_selector("#stream-state[data-state='open']",
                                             timeout=20_000)
                scores = await page.locator("td.score").all_inner_texts()
                await _shot(page, "08-live-before")
                # the simulator plays on (and faster when pushed); the page must change
                # in place: no reload, the same document
                marker = await page.evaluate("window.__stay = Math.random()")
                async with aiohttp.ClientSession() as session:
                    for _ in range(6):
                        async with session.post(f"{sim.url}/__sim/advance",
                                                json={"seconds": 300}) as resp:
                            assert resp.status in (200, 204)
                        changed = await page.evaluate(
                            "() => document.querySelectorAll('.scoreboard .changed').length")
                        if changed:
                            break
                        await page.wait_for_timeout(2500)
                await page.wait_for_function(
                    "() => document.querySelectorAll('.scoreboard .changed').length > 0",
                    timeout=30_000)
                assert await page.evaluate("window.__stay") == marker  # no reload happened
                after = await page.locator("td.score").all_inner_texts()
                status_cells = await page.locator("[data-field='status.clock']").all_inner_texts()
                assert after != scores or status_cells, "nothing on the board changed"
                await _shot(page, "09-live-after")
                # the status codes say what they mean (a tooltip), and the legend opens
                code = page.locator("[data-field='status.code']").first
                assert await code.get_attribute("title") not in (None, "", await code.inner_text())
                await page.locator("details.legend summary").first.click()
                assert await page.locator("details.legend[open] dt").count() > 5
                await _shot(page, "09-live-legend", docs="console-live.png")
                # the landing page at /, with the address this browser used
                landing = await (await browser.new_context(viewport=VIEWPORT)).new_page()
                await landing.goto(c.url + "/")
                assert await landing.get_by_role("link", name="Console").count() == 1
                assert f"{c.url.replace('http', 'ws')}/v1/ws" in await landing.inner_text("main")
                await _shot(landing, "09-landing", docs="landing.png")
                # the operators' view with the pollers at work (the README's picture)
                await c.services.users.create_user(ADMIN_EMAIL, PASSWORD, admin=True)
                ops = await (await browser.new_context(viewport=VIEWPORT)).new_page()
                await ops.goto(c.url + "/console/login?next=/console/ops")
                await ops.get_by_label("Email").fill(ADMIN_EMAIL)
                await ops.get_by_label("Password").fill(PASSWORD)
                await ops.get_by_role("button", name="Log in").click()
                await ops.wait_for_url("**/console/ops")
                await ops.wait_for_selector("table.pollers tbody tr", timeout=15_000)
                assert await ops.locator("table.pollers tbody tr").count() >= 2
                await _shot(ops, "10-ops-polling")
            finally:
                await browser.close()


# Every chart of the ops page, and the least each must show once a match has played: the
# pollers asked the upstream, events were published and delivered to the open scoreboard
# over SSE (so latency was measured), the raw cache answered, and an upstream fault made
# a poll fail.
_CHARTS = ("chart-upstream", "chart-connections", "chart-events", "chart-latency",
           "chart-cache", "chart-poll-failures")
_CHARTS_WITH_DATA = """ids => ids.every(id => {
    const figure = document.getElementById(id);
    return figure && Number(figure.dataset.points) > 0 && Number(figure.dataset.peak) > 0;
})"""


async def _log_in(browser, base: str, email: str, path: str):
    page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
    await page.goto(f"{base}/console/login?next={path}")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    # the login page's own URL ends with `next=<path>`: wait for the path itself
    await page.wait_for_url(lambda url: urlsplit(url).path == path)
    return page


class _Streams:
    """A fan's two stream connections (SSE and WebSocket, both following football and
    basketball), read in the background; `changed` is set by every change event."""

    CHANNELS = "sports.football,sports.basketball"

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.session = aiohttp.ClientSession()
        self.changed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        sse = await self.session.get(f"{self.base}/v1/stream?channels={self.CHANNELS}",
                                     headers={"X-API-Key": self.key})
        assert sse.status == 200, await sse.text()
        ws = await self.session.ws_connect(f"{self.base}/v1/ws",
                                           headers={"X-API-Key": self.key})
        await ws.send_json({"op": "subscribe", "channels": self.CHANNELS.split(",")})
        self.tasks = [asyncio.create_task(self._read_sse(sse)),
                      asyncio.create_task(self._read_ws(ws))]

    async def _read_sse(self, response) -> None:
        async for line in response.content:
            if line.startswith(b"event: game.") and b"snapshot" not in line:
                self.changed.set()

    async def _read_ws(self, ws) -> None:
        async for _message in ws:
            pass

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


DOCS_PLAY_S = 480


async def _play(sim, base: str, key: str, streams: _Streams, *, advance_s: int = 300,
                fault: bool = False) -> None:
    """One round of a match day: the simulator moves on `advance_s`, a client reads the
    raw cache, the upstream fails a few times when `fault`; then wait (bounded) for a
    change event to reach the fan."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.url}/__sim/advance",
                                json={"seconds": advance_s}) as resp:
            assert resp.status in (200, 204)
        async with session.get(f"{base}/v1/football/raw/status",
                               headers={"X-API-Key": key}) as resp:
            await resp.read()
    if fault:
        await sim_fault(sim, "500", count=4)
    streams.changed.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(streams.changed.wait(), 10)


async def test_the_ops_charts_show_a_match_being_played(tmp_path, chromium):
    async with simulator(speed=30.0) as sim:
        config = _polling_every_second(tmp_path, sim, UPSTREAM_MINUTE_QUOTA="60")
        async with console_app(tmp_path, config, pollers=True) as c, \
                playwright_api.async_playwright() as p:
            await c.services.users.create_user("fan@example.com", PASSWORD, tier="pro")
            await c.services.users.create_user(ADMIN_EMAIL, PASSWORD, admin=True)
            _, key = await c.services.keys.create_key("fan@example.com", "streams")
            streams = _Streams(c.url, key)
            browser = await _launch(p, chromium)
            try:
                await streams.open()
                # the match plays on, pushed along by the simulator's control API, until
                # change events reach the fan; a client reads the raw cache meanwhile,
                # and the upstream fails for a moment, so a poll fails
                for round_ in range(8):
                    await _play(sim, c.url, key, streams, fault=round_ == 1)
                    if round_ >= 2 and streams.changed.is_set():
                        break
                assert streams.changed.is_set(), "no change event reached the fan"
                if os.environ.get("BTSGURU_DOCS_SCREENSHOTS") == "1":
                    # the README's picture: minutes of real play, so the charts have a
                    # history to show (only when writing it: the test needs none)
                    deadline = asyncio.get_running_loop().time() + DOCS_PLAY_S
                    round_ = 0
                    while asyncio.get_running_loop().time() < deadline:
                        round_ += 1
                        await _play(sim, c.url, key, streams, advance_s=60,
                                    fault=round_ % 25 == 0)

                ops = await _log_in(browser, c.url, ADMIN_EMAIL, "/console/ops")
                assert await ops.get_by_role("heading", name="Last hour").is_visible()
                # no reload: the charts refresh themselves (every 10 s) as processes flush
                await ops.wait_for_function(_CHARTS_WITH_DATA, arg=list(_CHARTS),
                                            timeout=60_000)
                for chart_id in _CHARTS:
                    figure = ops.locator(f"#{chart_id}")
                    assert await figure.locator("svg[role=img]").get_attribute("aria-label")
                    paths = await figure.locator("path.line").evaluate_all(
                        "ps => ps.map(p => [p.getAttribute('d'), p.dataset.peak])")
                    assert any(d and float(peak) > 0 for d, peak in paths), (chart_id, paths)
                quota = ops.locator("#chart-upstream line.rule[data-value]")
                assert await quota.get_attribute("data-value") == "60.0"
                await _shot(ops, "11-ops-charts", docs="console-ops.png")
                # the day's view, in place
                await ops.get_by_role("link", name="Last 24 hours").click()
                await ops.wait_for_selector("#ops-charts[data-window='24h']")
                await ops.wait_for_function(_CHARTS_WITH_DATA, arg=list(_CHARTS[:3]),
                                            timeout=20_000)
                await _shot(ops, "12-ops-charts-day")
            finally:
                await browser.close()
                await streams.close()
