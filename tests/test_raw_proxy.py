"""The raw REST proxy end to end: real Redis, SQLite, the simulator and HTTP, in and across
processes. Upstream calls are counted by the simulator itself (`/__sim/stats`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.app import Services, make_app, open_services
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from tests.cli_helpers import ROOT, cli_env, free_port
from tests.conftest import make_test_config, purge_redis_prefix
from tests.upstream_fixtures import point_at, sim_fault, sim_stats, simulator

TODAY_PATH = "/v1/football/raw/fixtures"


@dataclass
class Relay:
    url: str
    key: str
    services: Services
    sim: Any
    config: Config
    session: aiohttp.ClientSession

    async def get(self, path: str, key: str | None = None, **params: str) -> tuple[int, Any, Any]:
        headers = {"X-API-Key": key or self.key}
        async with self.session.get(self.url + path, params=params, headers=headers) as resp:
            body = await resp.read()
            return resp.status, resp.headers, json.loads(body)

    async def upstream(self, path: str = "/football/fixtures") -> int:
        return int((await sim_stats(self.sim))["by_path"].get(path, 0))


def relay_config(tmp_path, sim, **env: str) -> Config:
    return point_at(make_test_config(tmp_path, RAPIDAPI_HOST="127.0.0.1", **env), sim)


def migrate_file(config: Config) -> None:
    database = connect_database(config.database_url)
    migrate(database)
    close_database(database)


@contextlib.asynccontextmanager
async def relay(tmp_path, *, tier: str = "pro", sim_options: dict[str, Any] | None = None,
                **env: str) -> AsyncIterator[Relay]:
    async with simulator(**(sim_options or {})) as sim:
        config = relay_config(tmp_path, sim, **env)
        migrate_file(config)
        try:
            async with open_services(config) as s, aiohttp.ClientSession() as session:
                await s.users.create_user("fan@example.com", "password123", tier=tier)
                _info, key = await s.keys.create_key("fan@example.com")
                server = HTTPServer(make_app(s))
                sockets = bind_sockets(0, "127.0.0.1")
                server.add_sockets(sockets)
                try:
                    yield Relay(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", key, s, sim,
                                config, session)
                finally:
                    server.stop()
        finally:
            purge_redis_prefix(config)


async def test_a_miss_then_hits_with_cache_headers(tmp_path):
    async with relay(tmp_path) as r:
        status, headers, body = await r.get("/v1/football/raw/leagues")
        assert status == 200, body
        assert headers["X-Cache"] == "MISS"
        assert body["get"] == "leagues" and body["errors"] in ([], {})
        assert body["results"] == len(body["response"]) > 0
        assert int(headers["Cache-Control"].removeprefix("max-age=")) >= 3600
        status, headers, again = await r.get("/v1/football/raw/leagues")
        assert (status, headers["X-Cache"]) == (200, "HIT")
        assert again == body
        assert int(headers["Age"]) >= 0
        assert headers["RateLimit-Limit"] and headers["X-RateLimit-Remaining"]
        assert await r.upstream("/football/leagues") == 1


async def test_fifty_concurrent_identical_misses_make_one_upstream_call(tmp_path):
    async with relay(tmp_path) as r:
        results = await asyncio.gather(*(r.get(TODAY_PATH, date="2026-01-10", league="39")
                                         for _ in range(50)))
        assert [status for status, _h, _b in results] == [200] * 50
        assert len({json.dumps(b, sort_keys=True) for _s, _h, b in results}) == 1
        assert await r.upstream() == 1
        # parameter order and spacing do not make a second entry
        status, headers, _ = await r.get(TODAY_PATH, league=" 39", date="2026-01-10")
        assert (status, headers["X-Cache"]) == (200, "HIT")
        assert await r.upstream() == 1


async def test_concurrent_misses_across_two_server_processes_make_one_call(tmp_path):
    async with simulator() as sim:
        config = relay_config(tmp_path, sim)
        migrate_file(config)
        async with open_services(config) as s:
            await s.users.create_user("fan@example.com", "password123", tier="pro")
            _info, key = await s.keys.create_key("fan@example.com")
        env = {"REDIS_URL": config.redis_url, "REDIS_CACHE_PREFIX": config.redis_cache_prefix,
               "DATABASE_URL": config.database_url, "RAPIDAPI_KEY": "k",
               "RAPIDAPI_HOST": "127.0.0.1", "SECRET_KEY": config.secret_key.reveal()}
        for sport in ("FOOTBALL", "BASKETBALL", "HOCKEY", "BASEBALL", "AMERICAN_FOOTBALL"):
            env[f"RAPIDAPI_BASE_URL_{sport}"] = config.upstream_base_url(
                sport.lower().replace("_", "-"))
        ports = [free_port(), free_port()]
        command = [sys.executable, "-m", "btsguru", "serve", "--no-pollers", "--port"]
        servers = [subprocess.Popen([*command, str(p)],  # noqa: ASYNC220 - not awaited
                                    cwd=ROOT, env=cli_env(env), stderr=subprocess.PIPE)
                   for p in ports]
        try:
            async with aiohttp.ClientSession() as session:
                for port in ports:
                    await _wait_http(session, f"http://127.0.0.1:{port}/healthz")

                async def one(port: int) -> int:
                    async with session.get(f"http://127.0.0.1:{port}{TODAY_PATH}",
                                           params={"date": "2026-01-11"},
                                           headers={"X-API-Key": key}) as resp:
                        await resp.read()
                        return resp.status

                statuses = await asyncio.gather(*(one(ports[i % 2]) for i in range(40)))
            assert statuses == [200] * 40
            assert (await sim_stats(sim))["by_path"]["/football/fixtures"] == 1
        finally:
            for process in servers:
                process.send_signal(signal.SIGTERM)
            outcomes = [(process.wait(timeout=30), process.communicate()[1])
                         for process in servers]
            purge_redis_prefix(config)
        assert [code for code, _err in outcomes] == [0, 0], outcomes


async def _wait_http(session: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


async def test_a_flood_of_distinct_misses_never_exceeds_the_minute_quota(tmp_path):
    async with relay(tmp_path, UPSTREAM_MINUTE_QUOTA="10") as r:
        results = await asyncio.gather(*(r.get(TODAY_PATH, date="2026-01-12", league=str(n))
                                         for n in range(1, 41)))
        upstream = await r.upstream()
        assert upstream <= 10
        served = [s for s, _h, _b in results if s == 200]
        refused = [(s, h, b) for s, h, b in results if s != 200]
        assert len(served) == upstream
        assert refused, "the flood should have run out of budget"
        for status, headers, body in refused:
            assert status == 503
            assert body["error"]["code"] == "upstream_quota_exhausted"
            assert int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize(("mode", "status"), [
    ("500", 502), ("garbage", 502), ("errors200", 502), ("timeout", 502), ("429", 503),
])
async def test_every_fault_mode_is_a_json_error_or_stale_never_a_500(tmp_path, mode, status):
    async with relay(tmp_path, UPSTREAM_TIMEOUT_S="1") as r:
        # nothing cached: a JSON error with the right status
        await sim_fault(r.sim, mode, count=10, delay_s=3 if mode == "timeout" else None)
        code, headers, body = await r.get("/v1/football/raw/leagues")
        assert code == status, body
        assert set(body) == {"error"} and body["error"]["code"].startswith("upstream_")
        if code == 503:
            assert int(headers["Retry-After"]) >= 1
        # cached but stale: the stale copy, marked so
        await r.services.cache.put("football", "status", {}, b'{"response": {"ok": 1}}', 60,
                                   fetched_at=r.services.clock.time() - 3600)
        code, headers, body = await r.get("/v1/football/raw/status")
        assert (code, headers["X-Cache"], body) == (200, "STALE", {"response": {"ok": 1}})
        assert headers["Cache-Control"] == "max-age=0"
        assert int(headers["Age"]) >= 3600


async def test_errors_inside_a_200_are_not_cached_as_data(tmp_path):
    async with relay(tmp_path) as r:
        attempts = r.services.upstream.max_attempts  # a transient error is retried
        await sim_fault(r.sim, "errors200", count=attempts)
        code, _h, body = await r.get("/v1/football/raw/leagues")
        assert code == 502 and body["error"]["code"] == "upstream_error"
        code, headers, body = await r.get("/v1/football/raw/leagues")
        assert (code, headers["X-Cache"]) == (200, "MISS")
        assert body["response"]
        assert await r.upstream("/football/leagues") == attempts + 1
        # a request the upstream refuses (an error key that is not transient) is a 400
        await sim_fault(r.sim, "errors200", count=1,
                        errors={"plan": "Free plans do not have access to this season."})
        code, _h, body = await r.get("/v1/football/raw/teams", league="39", season="2010")
        assert (code, body["error"]["code"]) == (400, "upstream_rejected_request")
        assert "Free plans" in body["error"]["message"]


async def test_stale_entries_are_served_at_once_and_refreshed_once_in_the_background(tmp_path):
    async with relay(tmp_path) as r:
        old = r.services.clock.time() - 7200
        await r.services.cache.put("football", "leagues", {}, b'{"response": ["old"]}', 3600,
                                   fetched_at=old)
        results = await asyncio.gather(*(r.get("/v1/football/raw/leagues") for _ in range(10)))
        assert {h["X-Cache"] for _s, h, _b in results} == {"STALE"}
        assert all(b == {"response": ["old"]} for _s, _h, b in results)
        for _ in range(200):
            _code, headers, body = await r.get("/v1/football/raw/leagues")
            if headers["X-Cache"] == "HIT":
                break
            await asyncio.sleep(0.02)
        assert headers["X-Cache"] == "HIT" and body["get"] == "leagues"
        assert await r.upstream("/football/leagues") == 1


async def test_the_breaker_opens_on_repeated_failures_and_stops_calling(tmp_path):
    async with relay(tmp_path) as r:
        await sim_fault(r.sim, "500", count=100)
        codes = []
        for n in range(12):
            code, _h, _b = await r.get(TODAY_PATH, date="2026-01-13", league=str(n + 1))
            codes.append(code)
        sent = await r.upstream()
        assert codes[-1] == 503  # open: refused without calling
        code, headers, _body = await r.get(TODAY_PATH, date="2026-01-13", league="99")
        assert code == 503 and "Retry-After" in headers
        assert await r.upstream() == sent
        assert r.services.upstream.breaker.state("football") == "open"


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("/v1/football/raw/players", {}, 404, "not_found"),
    ("/v1/curling/raw/games", {}, 404, "not_found"),
    (TODAY_PATH, {"date": "2026-02-30"}, 400, "bad_request"),
    (TODAY_PATH, {"leage": "39"}, 400, "bad_request"),
    ("/v1/basketball/raw/games", {"live": "all"}, 400, "bad_request"),
])
async def test_bad_requests_are_json_and_cost_no_upstream_call(tmp_path, path, params, status,
                                                               code):
    async with relay(tmp_path) as r:
        got, _h, body = await r.get(path, **params)
        assert (got, body["error"]["code"]) == (status, code)
        assert (await sim_stats(r.sim))["requests"] == 0


async def test_auth_scopes_and_tiers_guard_the_raw_proxy(tmp_path):
    async with relay(tmp_path, tier="free") as r:
        code, _h, body = await r.get("/v1/football/raw/leagues")
        assert (code, body["error"]["code"]) == (403, "forbidden")
        code, _h, body = await r.get("/v1/football/raw/leagues", key="btg_" + "x" * 40)
        assert (code, body["error"]["code"]) == (401, "unauthorized")
        await r.services.users.set_tier("fan@example.com", "pro")
        _info, rest_only = await r.services.keys.create_key("fan@example.com", scopes=["rest"])
        code, _h, body = await r.get("/v1/football/raw/leagues", key=rest_only)
        assert (code, body["error"]["code"]) == (403, "forbidden")
        assert (await sim_stats(r.sim))["requests"] == 0
