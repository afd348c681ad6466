"""The simulated upstream over real HTTP: envelopes, parameters, auth, quota, faults, control.

Each test runs the simulator in-process on a free port and talks to it with Tornado's
HTTP client, as the relay does, and checks what API-SPORTS.md says the real upstream
answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from btsguru.simulator import SimulatorOptions, run_simulator, start_simulator
from btsguru.simulator.quota import SportQuota
from btsguru.sports import SPORTS
from tests.cli_helpers import free_port
from tests.simulator_helpers import control, fetch, get_json, running, status_of, utc_day
from tests.waiting import wait_until

TOKEN = ("Error/Missing application key. Go to https://www.api-football.com/documentation-v3 "
         "to learn how to get your API application key.")
RAPIDAPI_401 = {"message": "Invalid API key. Go to https://docs.rapidapi.com/docs/keys for more "
                           "info."}
DAY_SPENT = ("You have reached the request limit for the day, Go to "
             "https://dashboard.api-football.com to upgrade your plan.")
MINUTE_SPENT = ("Too many requests. You have exceeded the limit of requests per minute of your "
                "subscription.")
FAILURE = {"message": "Something went wrong while fetching details. Try again later."}


def assert_envelope(sport, body, get, parameters, *, results=None):
    expected = ["get", "parameters", "errors", "results", "paging", "response"]
    if sport not in ("football", "american-football"):
        expected.remove("paging")  # the v1 games APIs mostly omit it
    assert list(body) == expected
    assert body["get"] == get
    assert body["parameters"] == (parameters or [])
    assert all(isinstance(v, str) for v in (parameters or {}).values())
    assert body["errors"] == []
    if isinstance(body["response"], list):
        assert body["results"] == len(body["response"])
    if results is not None:
        assert body["results"] == results
    if "paging" in body:
        assert body["paging"] == {"current": 1, "total": 1}


# --- envelope and endpoints -----------------------------------------------------------


@pytest.mark.parametrize("sport", ["basketball", "hockey", "baseball", "american-football"])
async def test_v1_endpoints_answer_in_the_envelope(sport):
    async with running() as server:
        league = {"basketball": 12, "hockey": 57, "baseball": 1, "american-football": 1}[sport]
        _, leagues = await get_json(server, f"/{sport}/leagues?id={league}")
        assert_envelope(sport, leagues, "leagues", {"id": str(league)}, results=1)
        item = leagues["response"][0]
        season = item["seasons"][-1].get("season", item["seasons"][-1].get("year"))
        season_param = str(season).split("-")[0]
        checks = [
            ("status", {}), ("timezone", {}), ("countries", {}), ("seasons", {}),
            ("leagues", {}), ("teams", {"league": str(league)}),
            ("standings", {"league": str(league), "season": season_param}),
            ("games", {"date": utc_day()}),
            ("games", {"league": str(league), "season": season_param}),
        ]
        for endpoint, params in checks:
            query = "&".join(f"{k}={v}" for k, v in params.items())
            code, body = await get_json(server, f"/{sport}/{endpoint}?{query}")
            assert code == 200, endpoint
            assert_envelope(sport, body, endpoint, params)
            if endpoint == "status":
                assert body["results"] == 0 and set(body["response"]) == {
                    "account", "subscription", "requests"}
            else:
                assert body["response"], f"{sport} {endpoint} returned nothing"
        _, table = await get_json(server, f"/{sport}/standings?league={league}"
                                          f"&season={season_param}")
        rows = table["response"] if sport == "american-football" else table["response"][0]
        assert len(rows) >= 10
        for row in rows:
            assert row["team"]["id"] and row["team"]["name"] and row["team"]["logo"]
            if sport == "american-football":
                assert {"position", "won", "lost", "ties", "points", "conference"} <= set(row)
            else:
                assert {"position", "stage", "group", "league", "country", "games", "points",
                        "form", "description"} <= set(row)
                assert row["games"]["played"] == row["games"]["win"]["total"] + \
                    row["games"]["lose"]["total"] + row["games"].get(
                        "lose_overtime", {"total": 0})["total"]
        if sport != "american-football":
            assert [r["position"] for r in rows] == list(range(1, len(rows) + 1))
        _, games = await get_json(server, f"/{sport}/games?date={utc_day()}")
        first = games["response"][0]
        game_id = first["game"]["id"] if sport == "american-football" else first["id"]
        _, by_id = await get_json(server, f"/{sport}/games?id={game_id}")
        assert by_id["results"] == 1 and by_id["response"][0] == first
        team_id = first["teams"]["home"]["id"]
        _, by_team = await get_json(server, f"/{sport}/games?team={team_id}")
        assert by_team["response"] and all(
            team_id in (g["teams"]["home"]["id"], g["teams"]["away"]["id"])
            for g in by_team["response"])


async def test_football_endpoints_answer_in_the_envelope():
    async with running() as server:
        _, live = await get_json(server, "/football/fixtures?live=all")
        assert_envelope("football", live, "fixtures", {"live": "all"})
        assert all("events" in f for f in live["response"])
        fixture = live["response"][0]
        season = str(fixture["league"]["season"])
        league = str(fixture["league"]["id"])
        fid = fixture["fixture"]["id"]
        for endpoint, params in [
            ("status", {}), ("timezone", {}), ("countries", {}), ("leagues", {}),
            ("leagues/seasons", {}), ("teams", {"league": league, "season": season}),
            ("standings", {"league": league, "season": season}),
            ("fixtures", {"date": utc_day()}), ("fixtures", {"league": league, "season": season}),
            ("fixtures", {"id": str(fid)}), ("fixtures/events", {"fixture": str(fid)}),
        ]:
            query = "&".join(f"{k}={v}" for k, v in params.items())
            code, body = await get_json(server, f"/football/{endpoint}?{query}")
            assert code == 200
            assert_envelope("football", body, endpoint, params)
        _, dated = await get_json(server, f"/football/fixtures?date={utc_day()}")
        assert dated["results"] >= 90 and all("events" not in f for f in dated["response"])
        _, by_id = await get_json(server, f"/football/fixtures?id={fid}")
        detail = by_id["response"][0]
        assert {"events", "lineups", "statistics", "players"} <= set(detail)
        _, events = await get_json(server, f"/football/fixtures/events?fixture={fid}")
        assert events["response"] == detail["events"]
        ids = [f["fixture"]["id"] for f in dated["response"][:20]]
        _, many = await get_json(server, "/football/fixtures?ids=" + "-".join(map(str, ids)))
        assert [f["fixture"]["id"] for f in many["response"]] == ids
        assert all({"events", "lineups"} <= set(f) for f in many["response"])
        _, table = await get_json(server, f"/football/standings?league={league}&season={season}")
        rows = table["response"][0]["league"]["standings"][0]
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert {"rank", "team", "points", "goalsDiff", "group", "form", "all"} <= set(rows[0])
        assert rows[0]["points"] >= rows[-1]["points"]
        assert rows[0]["all"]["played"] == rows[0]["all"]["win"] + rows[0]["all"]["draw"] + \
            rows[0]["all"]["lose"]
        # RapidAPI's football paths carry /v3: the same answer, counted under one path.
        _, v3 = await get_json(server, f"/football/v3/fixtures?id={fid}")
        assert v3["response"] == by_id["response"]
        _, stats = await control(server, "stats")
        assert stats["by_path"]["/football/fixtures"] >= 5


async def test_timezone_renders_dates_and_selects_that_zones_day():
    async with running() as server:
        day = utc_day(1)
        _, utc = await get_json(server, f"/football/fixtures?date={day}")
        _, kolkata = await get_json(server, f"/football/fixtures?date={day}&timezone=Asia/Kolkata")
        assert kolkata["parameters"] == {"date": day, "timezone": "Asia/Kolkata"}
        for fixture in kolkata["response"]:
            assert fixture["fixture"]["timezone"] == "Asia/Kolkata"
            assert fixture["fixture"]["date"].startswith(day)
            assert fixture["fixture"]["date"].endswith("+05:30")
        # Kolkata's day starts 5.5 hours earlier: the lists overlap but differ.
        utc_ids = {f["fixture"]["id"] for f in utc["response"]}
        ist_ids = {f["fixture"]["id"] for f in kolkata["response"]}
        assert utc_ids != ist_ids and utc_ids & ist_ids
        assert min(f["fixture"]["timestamp"] for f in kolkata["response"]) < \
            min(f["fixture"]["timestamp"] for f in utc["response"])
        _, hockey = await get_json(server, f"/hockey/games?date={day}&timezone=Asia/Kolkata")
        assert all(g["date"].endswith("+05:30") and g["timezone"] == "Asia/Kolkata"
                   for g in hockey["response"])
        _, gridiron = await get_json(server, f"/american-football/games?date={day}"
                                             "&timezone=Asia/Kolkata")
        assert all(g["game"]["date"]["timezone"] == "Asia/Kolkata"
                   and g["game"]["date"]["date"] == day for g in gridiron["response"])
        _, unknown = await get_json(server, f"/hockey/games?date={day}&timezone=Mars/Base")
        assert unknown["response"] and unknown["response"][0]["timezone"] == "UTC"


# --- parameter errors -----------------------------------------------------------------


async def test_parameter_errors_are_the_upstreams_in_a_200():
    async with running() as server:
        cases = [
            ("/football/fixtures?leaguee=39", {"leaguee": "The Leaguee field do not exist."}),
            ("/football/fixtures?page=2", {"page": "The Page field do not exist."}),
            ("/basketball/games?live=all", {"live": "The Live field do not exist."}),
            ("/hockey/games?live=all", {"live": "The Live field do not exist."}),
            ("/baseball/games?live=all", {"live": "The Live field do not exist."}),
            ("/football/fixtures?live=39", {"live": "The Live field does not match the regular "
                                                    "expression: [id-id-id...] or string: all."}),
            ("/football/standings?league=39", {"season": "The Season field is required."}),
            ("/hockey/standings?season=2025", {"league": "The League field is required."}),
            ("/football/fixtures/events", {"fixture": "The Fixture field is required."}),
            ("/hockey/games/events", {"game": "The Game field is required."}),
            ("/football/fixtures", {"required": "At least one parameter is required."}),
            ("/basketball/games", {"required": "At least one parameter is required."}),
            ("/football/fixtures?id=abc", {"id": "The Id field must contain an integer."}),
            ("/football/fixtures?ids=" + "-".join(str(n) for n in range(1, 22)),
             {"ids": "Maximum of 20 fixtures ids."}),
            ("/football/banana", {"endpoint": "The Banana endpoint does not exist."}),
        ]
        for path, errors in cases:
            code, body = await get_json(server, path)
            assert code == 200, path
            assert body["errors"] == errors, path
            assert body["results"] == 0 and body["response"] == []
        _, body = await get_json(server, "/football/banana?x=1")
        assert body["get"] == "banana" and body["parameters"] == {"x": "1"}
        _, body = await get_json(server, "/hockey/games/events?game=1")
        assert body["get"] == "games"  # hockey's events answer as "games"


async def test_only_get_unknown_sport_and_failures_are_json():
    async with running() as server:
        response = await fetch(server, "/football/fixtures?live=all", method="POST", body=b"")
        assert response.code == 405 and json.loads(response.body)["message"]
        code, body = await get_json(server, "/tennis/games?date=2026-01-01")
        assert code == 404 and "message" in body


async def test_an_internal_failure_is_the_upstreams_500_and_logged_once(caplog):
    async with running() as server:
        def broken(*args, **kwargs):
            raise RuntimeError("boom")

        server.simulator.api.answer = broken
        with caplog.at_level(logging.ERROR, logger="btsguru.simulator.server"):
            code, body = await get_json(server, "/football/fixtures?live=all")
        assert (code, body) == (500, FAILURE)
        assert len([r for r in caplog.records if "boom" in str(r.exc_info)]) == 1


# --- authentication -------------------------------------------------------------------


async def test_direct_mode_needs_a_key_and_answers_200_with_errors_token():
    async with running() as server:
        for headers in ({}, {"x-apisports-key": ""}):
            code, body = await get_json(server, "/football/fixtures?live=all", headers=headers)
            assert code == 200
            assert body["errors"] == {"token": TOKEN}
            assert body["response"] == [] and body["results"] == 0
        code, body = await get_json(server, "/hockey/games?date=2026-01-01",
                                    headers={"X-APISPORTS-KEY": "any"})
        assert code == 200 and body["errors"] == []


async def test_rapidapi_mode_needs_key_and_host_or_gets_the_proxys_401():
    async with running() as server:
        good = {"X-RapidAPI-Key": "k", "X-RapidAPI-Host": "api-hockey.p.rapidapi.com"}
        response = await fetch(server, "/hockey/games?date=2026-01-01", headers=good)
        assert response.code == 200 and json.loads(response.body)["errors"] == []
        assert response.headers["x-ratelimit-requests-reset"].isdigit()
        assert response.headers["server"].startswith("RapidAPI")
        lower = {"x-rapidapi-key": "k", "x-rapidapi-host": "api-hockey.p.rapidapi.com"}
        assert (await fetch(server, "/hockey/status", headers=lower)).code == 200
        for headers in ({"X-RapidAPI-Key": "k"},
                        {"X-RapidAPI-Key": "", "X-RapidAPI-Host": "api-hockey.p.rapidapi.com"}):
            response = await fetch(server, "/hockey/games?date=2026-01-01", headers=headers)
            assert response.code == 401
            assert json.loads(response.body) == RAPIDAPI_401
            assert response.headers["X-RapidAPI-Proxy-Response"] == "true"


# --- quota ------------------------------------------------------------------------------


async def test_day_quota_counts_down_per_sport_and_status_is_free():
    async with running(quota_day=3) as server:
        remaining = []
        for _ in range(3):
            response = await fetch(server, "/football/fixtures?live=all")
            assert response.code == 200
            remaining.append(response.headers["x-ratelimit-requests-remaining"])
            assert response.headers["x-ratelimit-requests-limit"] == "3"
            _, status = await get_json(server, "/football/status")
        assert remaining == ["2", "1", "0"]
        assert status["response"]["requests"] == {"current": 3, "limit_day": 3}
        response = await fetch(server, "/football/fixtures?live=all")
        body = json.loads(response.body)
        assert response.code == 200
        assert body["errors"] == {"requests": DAY_SPENT}
        assert body["response"] == [] and body["results"] == 0
        assert response.headers["x-ratelimit-requests-remaining"] == "0"
        # Each sport host has its own budget, and /status still answers.
        other = await fetch(server, "/basketball/games?date=2026-01-01")
        assert json.loads(other.body)["errors"] == []
        assert other.headers["x-ratelimit-requests-remaining"] == "2"
        assert (await get_json(server, "/football/status"))[1]["errors"] == []
        _, stats = await control(server, "stats")
        assert stats["by_path"]["/football/fixtures"] == 4  # the refusal counts here
        assert stats["by_path"]["/football/status"] == 4
        await control(server, "reset")
        refilled = await fetch(server, "/football/fixtures?live=all")
        assert json.loads(refilled.body)["errors"] == []
        assert refilled.headers["x-ratelimit-requests-remaining"] == "2"


async def test_minute_quota_answers_429_with_rate_limit():
    async with running(quota_minute=2) as server:
        seen = []
        for _ in range(2):
            response = await fetch(server, "/hockey/games?date=2026-01-01")
            seen.append(response.headers["X-RateLimit-Remaining"])
            assert response.headers["X-RateLimit-Limit"] == "2"
        assert seen == ["1", "0"]
        response = await fetch(server, "/hockey/games?date=2026-01-01")
        assert response.code == 429
        assert json.loads(response.body)["errors"] == {"rateLimit": MINUTE_SPENT}
        assert response.headers["X-RateLimit-Remaining"] == "0"
        # A refused request is not served data: the day budget did not move.
        assert response.headers["x-ratelimit-requests-remaining"] == str(1_000_000 - 2)


async def test_stats_show_the_busiest_minute_and_the_quota_refusals_per_sport():
    async with running(quota_minute=2, quota_day=4) as server:
        codes = [(await fetch(server, "/hockey/games?date=2026-01-01")).code for _ in range(3)]
        await fetch(server, "/hockey/status")  # never counts against the quota
        await fetch(server, "/baseball/games?date=2026-01-01")
        _, stats = await control(server, "stats")
        assert codes == [200, 200, 429]
        # the refused request was sent all the same: it counts in the busiest window
        assert stats["by_sport"]["hockey"] == {"max_per_60s": 3, "refused_quota": 1}
        assert stats["by_sport"]["baseball"] == {"max_per_60s": 1, "refused_quota": 0}
        assert stats["by_sport"]["football"] == {"max_per_60s": 0, "refused_quota": 0}


def test_the_busiest_window_slides_over_any_60_seconds_and_day_refusals_count():
    quota = SportQuota(day_limit=6, minute_limit=100)
    peaks = []
    for at in (0.0, 10.0, 50.0, 65.0, 70.0):  # at 70 the request of 10 has left the window
        assert quota.take(1_000_000 + at) is None
        peaks.append(quota.stats()["max_per_60s"])
    assert peaks == [1, 2, 3, 3, 3]
    assert quota.take(1_000_109.0) is None  # (49, 109]: 50, 65, 70 and 109
    assert quota.stats() == {"max_per_60s": 4, "refused_quota": 0}
    assert quota.take(1_000_200.0) == "day"  # the seventh of a day of six
    assert quota.stats() == {"max_per_60s": 4, "refused_quota": 1}


# --- faults -----------------------------------------------------------------------------


async def test_every_fault_mode_and_its_count():
    async with running() as server:
        path = "/football/fixtures?live=all"
        assert (await control(server, "fault", {"mode": "500", "count": 2}))[0] == 200
        for _ in range(2):
            assert await get_json(server, path) == (500, FAILURE)
        assert (await get_json(server, path))[0] == 200  # the count is spent

        await control(server, "fault", {"mode": "429"})
        code, body = await get_json(server, path)
        assert code == 429 and "rateLimit" in body["errors"] and body["response"] == []

        await control(server, "fault", {"mode": "garbage"})
        response = await fetch(server, path)
        assert response.code == 200
        with pytest.raises(ValueError):
            json.loads(response.body)

        await control(server, "fault", {"mode": "errors200"})
        code, body = await get_json(server, path)
        assert code == 200 and set(body["errors"]) == {"time", "bug", "report"}
        assert body["response"] == [] and body["results"] == 0
        await control(server, "fault", {"mode": "errors200",
                                        "errors": {"requests": DAY_SPENT}})
        assert (await get_json(server, path))[1]["errors"] == {"requests": DAY_SPENT}

        await control(server, "fault", {"mode": "slow", "delay_s": 0.3})
        started = time.monotonic()
        code, body = await get_json(server, path)
        assert time.monotonic() - started >= 0.3
        assert code == 200 and body["errors"] == [] and body["response"]


async def test_timeout_fault_holds_one_request_without_blocking_others():
    async with running() as server:
        await control(server, "fault", {"mode": "timeout", "delay_s": 0.5})
        started = time.monotonic()
        held = asyncio.ensure_future(fetch(server, "/football/fixtures?live=all"))

        async def counted() -> bool:
            return (await control(server, "stats"))[1]["requests"] >= 1

        await wait_until(counted, what="the held request to arrive")
        code, _ = await get_json(server, "/hockey/games?date=2026-01-01")
        assert code == 200 and not held.done()  # served while the other one is held
        response = await held
        assert response.code == 499 and json.loads(response.body) == FAILURE
        assert time.monotonic() - started >= 0.5


async def test_stopping_releases_a_request_held_by_a_timeout_fault():
    server = await start_simulator(SimulatorOptions(port=0))
    await control(server, "fault", {"mode": "timeout"})  # the default hold is 30 s
    held = asyncio.ensure_future(fetch(server, "/football/fixtures?live=all"))

    async def counted() -> bool:
        return (await control(server, "stats"))[1]["requests"] >= 1

    await wait_until(counted, what="the held request to arrive")
    started = time.monotonic()
    await server.stop()
    response = await held
    assert time.monotonic() - started < 5
    assert response.code == 499 and json.loads(response.body) == FAILURE


async def test_bad_control_input_is_400_json():
    async with running() as server:
        for route, body in [("fault", {"mode": "explode"}), ("fault", {"mode": "500", "count": 0}),
                            ("fault", {"mode": "slow", "delay_s": -1}), ("fault", [1]),
                            ("advance", {"seconds": -5}), ("advance", {}),
                            ("advance", {"seconds": "ten"})]:
            code, answer = await control(server, route, body)
            assert code == 400 and answer["error"], (route, body)
        response = await fetch(server, "/__sim/advance", method="POST", body=b"{not json",
                               headers={})
        assert response.code == 400 and json.loads(response.body)["error"]
        response = await fetch(server, "/__sim/advance", headers={})
        assert response.code == 405 and "error" in json.loads(response.body)
        response = await fetch(server, "/__sim/nothing", headers={})
        assert response.code == 404 and "error" in json.loads(response.body)


async def test_stats_count_every_upstream_request_and_reset_clears_them():
    async with running() as server:
        await fetch(server, "/football/fixtures?live=all")
        await fetch(server, "/football/fixtures?live=all", headers={})  # token error
        await control(server, "fault", {"mode": "500"})
        await fetch(server, "/hockey/games?date=2026-01-01")  # faulted
        await fetch(server, "/hockey/standings?league=57&season=2025")
        _, stats = await control(server, "stats")
        quota_seen = stats.pop("by_sport")
        assert stats == {"requests": 4, "by_path": {"/football/fixtures": 2,
                                                    "/hockey/games": 1,
                                                    "/hockey/standings": 1}}
        # the token error and the fault never reached the quota
        assert quota_seen["football"] == {"max_per_60s": 1, "refused_quota": 0}
        assert quota_seen["hockey"] == {"max_per_60s": 1, "refused_quota": 0}
        await control(server, "advance", {"seconds": 3600})
        await control(server, "fault", {"mode": "500", "count": 5})
        _, clock = await control(server, "clock")
        assert clock["offset_s"] >= 3600
        assert await control(server, "reset") == (200, {"reset": True})
        _, stats = await control(server, "stats")
        assert {k: stats[k] for k in ("requests", "by_path")} == {"requests": 0, "by_path": {}}
        assert set(stats["by_sport"]) == set(SPORTS)
        assert all(seen == {"max_per_60s": 0, "refused_quota": 0}
                   for seen in stats["by_sport"].values())
        assert abs((await control(server, "clock"))[1]["offset_s"]) < 5
        assert (await get_json(server, "/football/fixtures?live=all"))[0] == 200  # no fault


async def test_speed_runs_simulated_time_faster():
    async with running(speed=600) as server:
        async def ahead() -> bool:
            return (await control(server, "clock"))[1]["offset_s"] > 60

        await wait_until(ahead, what="simulated time to run ahead")


async def test_start_rejects_bad_options_and_run_stops_on_cancel(caplog):
    from btsguru.errors import ConfigError

    with pytest.raises(ConfigError):
        await start_simulator(SimulatorOptions(port=0, speed=0))
    port = free_port()
    with caplog.at_level(logging.INFO, logger="btsguru.simulator"):
        task = asyncio.ensure_future(run_simulator(SimulatorOptions(port=port)))

        async def listening() -> bool:
            return any(f"http://127.0.0.1:{port}" in r.getMessage() for r in caplog.records)

        await wait_until(listening, what="the start-up line")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    again = await start_simulator(SimulatorOptions(port=port))  # the port was released
    await again.stop()


# --- tape ------------------------------------------------------------------------------


def write_tape(tmp_path, lines):
    path = tmp_path / "tape.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


async def test_tape_replays_in_order_repeats_the_last_and_honours_wildcards(tmp_path):
    def body(n):
        return {"get": "fixtures", "parameters": {"live": "all"}, "errors": [], "results": 0,
                "paging": {"current": 1, "total": 1}, "response": [], "n": n}

    tape = write_tape(tmp_path, [
        {"sport": "football", "path": "/fixtures", "params": {"live": "all"}, "status": 200,
         "headers": {"X-Recorded": "yes", "Content-Length": "9"}, "body": body(1)},
        {"sport": "football", "path": "/fixtures", "params": {"live": "all"}, "status": 200,
         "headers": {}, "body": body(2)},
        {"sport": "football", "path": "/fixtures", "params": None, "status": 200,
         "headers": {}, "body": body("any")},
        {"sport": "hockey", "path": "/games", "params": {"date": "2026-01-01", "league": 57},
         "status": 200, "headers": {}, "body": {"hockey": True}},
    ])
    async with running(tape=tape, quota_day=100) as server:
        seen = []
        for _ in range(3):
            response = await fetch(server, "/football/fixtures?live=all")
            seen.append(json.loads(response.body)["n"])
        assert seen == [1, 2, 2]
        assert response.headers["x-ratelimit-requests-remaining"] == "97"  # quota still counts
        first = await fetch(server, "/football/fixtures?date=2026-01-01")
        assert json.loads(first.body)["n"] == "any"
        assert json.loads((await fetch(server, "/football/fixtures?league=3"))
                          .body)["n"] == "any"
        # Params match whatever their order and type in the tape.
        _, hockey = await get_json(server, "/hockey/games?league=57&date=2026-01-01")
        assert hockey == {"hockey": True}
        code, empty = await get_json(server, "/hockey/games?date=2026-01-02")
        assert code == 200
        assert empty == {"get": "games", "parameters": {"date": "2026-01-02"}, "errors": [],
                         "results": 0, "response": []}
        # Auth and faults apply in tape mode too.
        _, refused = await get_json(server, "/football/fixtures?live=all", headers={})
        assert "token" in refused["errors"]
        await control(server, "fault", {"mode": "500"})
        assert (await get_json(server, "/football/fixtures?live=all"))[0] == 500
        await control(server, "reset")
        replay = await fetch(server, "/football/fixtures?live=all")
        assert json.loads(replay.body)["n"] == 1  # reset rewinds the tape
        assert replay.headers["X-Recorded"] == "yes"


@pytest.mark.parametrize(("content", "message"), [
    ('{"sport": "football", "path": "/fixtures"\n', "line 1: not JSON"),
    ('{"sport": "cricket", "path": "/x", "params": null, "status": 200, "body": {}}\n',
     "line 1: sport must be one of"),
    ('\n{"sport": "football", "path": "/fixtures", "params": [], "body": {}}\n',
     "line 2: params must be an object or null"),
    ('{"sport": "football", "path": "/fixtures", "params": null, "status": 999, "body": {}}\n',
     "status must be an HTTP status code"),
    ('{"sport": "football", "path": "/fixtures", "params": null}\n', "body is missing"),
    ("\n\n", "has no recorded responses"),
])
async def test_a_bad_tape_is_a_one_line_config_error(tmp_path, content, message):
    from btsguru.errors import ConfigError

    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        await start_simulator(SimulatorOptions(port=0, tape=str(path)))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read tape"):
        await start_simulator(SimulatorOptions(port=0, tape=str(tmp_path / "missing.jsonl")))


async def test_v1_items_before_start_have_null_scores():
    async with running() as server:
        for sport in ("basketball", "hockey", "baseball", "american-football"):
            _, body = await get_json(server, f"/{sport}/games?date={utc_day(1)}")
            upcoming = [g for g in body["response"] if status_of(sport, g) == "NS"]
            assert upcoming, sport
            scores = upcoming[-1]["scores"]
            if sport == "hockey":
                assert scores == {"home": None, "away": None}
            else:
                assert scores["home"]["total"] is None and scores["away"]["total"] is None
        _, football = await get_json(server, f"/football/fixtures?date={utc_day(1)}")
        ns = [f for f in football["response"] if f["fixture"]["status"]["short"] == "NS"]
        assert ns[-1]["goals"] == {"home": None, "away": None}
        assert ns[-1]["fixture"]["status"]["elapsed"] is None
