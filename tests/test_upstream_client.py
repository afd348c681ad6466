"""The upstream client against the real simulator (in-process, ephemeral port) and real
Redis: auth headers, the quota in front of every request, every fault mode, the walls,
the circuit breaker, and the classification of every documented upstream answer."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from btsguru.clock import FakeClock
from btsguru.errors import BadRequest, Unavailable, UpstreamError
from btsguru.upstream import (
    CircuitBreaker,
    CircuitOpen,
    QuotaExhausted,
    UpstreamAuthError,
    UpstreamFailure,
    UpstreamRequestError,
    auth_headers,
    auth_mode,
    classify_answer,
)
from tests.upstream_fixtures import (
    point_at,
    sim_fault,
    sim_requests,
    sim_stats,
    simulator,
    upstream_client,
    with_quota,
)

SECRET_KEY = "sk-upstream-9f8e7d6c5b4a"  # distinctive, so the log can be searched for it
RAPIDAPI_FOOTBALL = "api-football-v1.p.rapidapi.com"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def config(test_config):
    from btsguru.config import Secret

    return with_quota(test_config.replace(rapidapi_key=Secret(SECRET_KEY)), day=7500, minute=300)


async def advance_until_done(clock: FakeClock, task: asyncio.Task, step_s: float = 1.0,
                             timeout_s: float = 20.0):
    """Move a FakeClock forward until `task` (sleeping on it) finishes."""
    deadline = time.monotonic() + timeout_s
    while not task.done():
        assert time.monotonic() < deadline, "the task did not finish"
        clock.advance(step_s)
        await asyncio.sleep(0.01)
    return task.result()


# -- auth --


@pytest.mark.parametrize(("base_url", "rapidapi_host", "expected"), [
    ("https://v3.football.api-sports.io", None, ("apisports", "v3.football.api-sports.io")),
    ("https://v3.football.api-sports.io", "v3.football.api-sports.io",
     ("apisports", "v3.football.api-sports.io")),
    ("https://api-football-v1.p.rapidapi.com/v3", None, ("rapidapi", RAPIDAPI_FOOTBALL)),
    ("https://API-Basketball.P.RapidAPI.com", None, ("rapidapi", "api-basketball.p.rapidapi.com")),
    ("http://127.0.0.1:8099/football", RAPIDAPI_FOOTBALL, ("rapidapi", RAPIDAPI_FOOTBALL)),
    ("https://api-football-v1.p.rapidapi.com/v3", "v3.football.api-sports.io",
     ("rapidapi", RAPIDAPI_FOOTBALL)),
    ("https://evil-rapidapi.com.example.org", None, ("apisports", "evil-rapidapi.com.example.org")),
    ("https://notrapidapi.com", None, ("apisports", "notrapidapi.com")),
])
def test_auth_mode_follows_the_host(base_url, rapidapi_host, expected):
    assert auth_mode(base_url, rapidapi_host) == expected


def test_auth_headers_are_exactly_the_credentials():
    assert auth_headers("https://v1.hockey.api-sports.io", "k") == {"x-apisports-key": "k"}
    assert auth_headers("https://api-hockey.p.rapidapi.com", "k") == {
        "X-RapidAPI-Key": "k", "X-RapidAPI-Host": "api-hockey.p.rapidapi.com"}


async def _recording_server(seen: list[dict[str, str]]):
    async def handler(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"get": "status", "parameters": [], "errors": [],
                                  "results": 0, "response": []},
                                 headers={"X-RateLimit-Remaining": "7"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


def test_requests_carry_no_headers_beyond_auth_and_aiohttp_basics(config):
    async def scenario():
        seen: list[dict[str, str]] = []
        runner, port = await _recording_server(seen)
        try:
            direct = config.replace(rapidapi_base_url_hockey=f"http://127.0.0.1:{port}/hockey")
            async with upstream_client(direct) as client:
                response = await client.fetch("hockey", "status", {}, purpose="poller")
                assert response.limits.minute_remaining == 7
            rapid = config.replace(rapidapi_base_url_football=f"http://127.0.0.1:{port}/v3",
                                   rapidapi_host=RAPIDAPI_FOOTBALL)
            async with upstream_client(rapid) as client:
                await client.fetch("football", "status", {}, purpose="poller")
        finally:
            await runner.cleanup()
        basics = {"host", "accept", "accept-encoding", "user-agent"}
        assert set(seen[0]) - basics == {"x-apisports-key"}
        assert seen[0]["x-apisports-key"] == SECRET_KEY
        assert set(seen[1]) - basics == {"x-rapidapi-key", "x-rapidapi-host"}
        assert seen[1]["x-rapidapi-host"] == RAPIDAPI_FOOTBALL
        assert seen[1]["x-rapidapi-key"] == SECRET_KEY

    run(scenario())


def test_both_auth_modes_end_to_end_on_the_simulator(config, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario():
        async with simulator() as server:
            async with upstream_client(point_at(config, server)) as client:
                response = await client.fetch("basketball", "games", {"date": "2025-01-01"},
                                              purpose="user")
                assert response.status == 200
                assert response.body["errors"] in ([], {})
                assert response.body["get"] == "games"
                assert response.params == {"date": "2025-01-01"}
                assert response.limits.day_limit == 1_000_000
                assert response.limits.minute_limit is not None
                assert "rapidapi" not in response.headers.get("server", "").lower()
            rapid = point_at(config, server).replace(rapidapi_host=RAPIDAPI_FOOTBALL)
            async with upstream_client(rapid) as client:
                response = await client.fetch("football", "fixtures", {"live": "all"},
                                              purpose="poller")
                assert response.headers["server"].startswith("RapidAPI")
                assert response.body["parameters"] == {"live": "all"}
                assert isinstance(response.body["response"], list)
            assert (await sim_stats(server))["by_path"] == {"/basketball/games": 1,
                                                            "/football/fixtures": 1}

    run(scenario())
    successes = [r.getMessage() for r in caplog.records if r.name == "btsguru.upstream.client"]
    assert len(successes) == 2 and "basketball /games date=2025-01-01: 200" in successes[0]
    assert SECRET_KEY not in caplog.text


def test_a_refused_key_is_an_auth_failure_and_never_retried(config, caplog):
    from btsguru.config import Secret

    async def scenario():
        async with simulator() as server:
            keyless = point_at(config, server).replace(rapidapi_key=Secret(""))
            async with upstream_client(keyless) as client:
                with pytest.raises(UpstreamAuthError) as direct:
                    await client.fetch("hockey", "games", {"date": "2025-01-01"},
                                       purpose="poller")
                with pytest.raises(UpstreamAuthError) as proxy:
                    await client.fetch("football", "fixtures", {"live": "all"},
                                       purpose="poller")
                assert client.breaker.state("hockey") == "closed"
            assert await sim_requests(server) == 2  # one each: never retried
            return direct.value, proxy.value

    # football through the "RapidAPI proxy" with an empty key: the proxy's own 401
    config = config.replace(rapidapi_host=RAPIDAPI_FOOTBALL)
    with caplog.at_level(logging.ERROR, logger="btsguru.upstream.client"):
        direct, proxy = run(scenario())
    assert direct.kind == "auth" and not direct.transient and direct.status == 502
    assert "Missing application key" in direct.message
    assert isinstance(proxy, UpstreamAuthError) and proxy.http_status == 401
    assert "Invalid API key" in proxy.message
    assert sum("kind auth" in r.getMessage() for r in caplog.records) == 2


# -- the quota in front of every request --


def test_a_flood_of_user_misses_sends_at_most_the_minute_quota(config):
    minute = 5
    limited = with_quota(config, minute=minute)

    async def scenario():
        async with simulator() as server, upstream_client(point_at(limited, server)) as client:
            started = time.monotonic()
            results = await asyncio.gather(*(
                client.fetch("football", "fixtures", {"id": str(900_000 + i)}, purpose="user")
                for i in range(20)), return_exceptions=True)
            elapsed_s = time.monotonic() - started
            sent = await sim_requests(server)
            ok = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, QuotaExhausted)]
            assert len(ok) + len(refused) == 20
            # users get the window less the pollers' reserve; never more than the quota
            assert sent == len(ok) == minute - int(minute * client.quota.minute_reserve_fraction)
            assert sent <= minute
            assert elapsed_s < 5  # refused at once, not after waiting
            exc = refused[0]
            assert isinstance(exc, Unavailable) and exc.status == 503
            assert exc.source == "local" and exc.window == "minute"
            # about one window (a token taken a moment "later" by a racing caller can add 1)
            assert 1 <= exc.retry_after_s <= 62
            # the pollers still have their reserve
            await client.fetch("football", "fixtures", {"live": "all"}, purpose="poller")
            assert await sim_requests(server) == sent + 1

    run(scenario())


def test_the_upstreams_remaining_header_stops_requests_before_its_wall(config):
    async def scenario():
        async with simulator(quota_day=3) as server, \
                upstream_client(point_at(config, server)) as client:
            for i in range(3):
                await client.fetch("hockey", "games", {"date": f"2025-01-0{i + 1}"},
                                   purpose="poller")
            with pytest.raises(QuotaExhausted) as info:
                await client.fetch("hockey", "games", {"date": "2025-01-09"},
                                   purpose="poller")
            assert info.value.window == "day" and info.value.source == "local"
            assert await sim_requests(server) == 3
            state = await client.quota.snapshot("hockey")
            assert state.upstream_day_remaining == 0 and state.day_remaining == 0
            assert state.level == "spent"

    run(scenario())


def test_a_daily_wall_marks_the_day_spent_and_nothing_more_goes_out(config):
    async def scenario():
        async with simulator() as server, \
                upstream_client(point_at(config, server)) as client:
            await sim_fault(server, "errors200", 1, errors={
                "requests": "You have reached the request limit for the day, Go to "
                            "https://dashboard.api-football.com to upgrade your plan."})
            with pytest.raises(QuotaExhausted) as info:
                await client.fetch("baseball", "games", {"date": "2025-06-01"},
                                   purpose="poller")
            assert await sim_requests(server) == 1  # a daily wall is never retried
            exc = info.value
            assert exc.source == "upstream" and exc.window == "day" and not exc.transient
            assert exc.retry_after_s is not None and exc.retry_after_s > 0
            assert (await client.quota.snapshot("baseball")).day_spent
            for purpose in ("user", "poller"):
                with pytest.raises(QuotaExhausted):
                    await client.fetch("baseball", "games", {"date": "2025-06-02"},
                                       purpose=purpose)
            assert await sim_requests(server) == 1
            # other sports' hosts have budgets of their own
            await client.fetch("hockey", "games", {"date": "2025-06-02"}, purpose="user")

    run(scenario())


# -- faults --


@pytest.mark.parametrize(("mode", "kind"), [
    ("500", "server"), ("garbage", "malformed"), ("errors200", "upstream_bug"),
    ("timeout", "timeout"),
])
def test_each_transient_fault_is_retried_to_success(config, mode, kind):
    async def scenario():
        async with simulator() as server, upstream_client(
                point_at(config, server), request_timeout_s=0.5) as client:
            await sim_fault(server, mode, 2)
            response = await client.fetch("football", "fixtures", {"live": "all"},
                                          purpose="user")
            assert response.status == 200 and response.body["errors"] in ([], {})
            assert await sim_requests(server) == 3
            assert (await client.quota.snapshot("football")).day_used == 3  # a token each

    run(scenario())


@pytest.mark.parametrize(("mode", "kind"), [
    ("500", "server"), ("garbage", "malformed"), ("errors200", "upstream_bug"),
    ("timeout", "timeout"),
])
def test_a_pollers_host_failure_is_not_retried_its_next_run_is(config, mode, kind):
    """A failing poller never asks more often than a healthy one: one request a run."""
    async def scenario():
        async with simulator() as server, upstream_client(
                point_at(config, server), request_timeout_s=0.5) as client:
            await sim_fault(server, mode, 2)
            with pytest.raises(UpstreamFailure) as info:
                await client.fetch("football", "fixtures", {"live": "all"}, purpose="poller")
            assert info.value.kind == kind
            assert await sim_requests(server) == 1
            assert client.breaker.state("football") == "closed"  # one failure of five

    run(scenario())


@pytest.mark.parametrize(("mode", "kind", "http_status"), [
    ("500", "server", 500), ("garbage", "malformed", 200), ("errors200", "upstream_bug", 200),
    ("timeout", "timeout", None),
])
def test_each_transient_fault_classified_when_retries_run_out(config, caplog, mode, kind,
                                                              http_status):
    async def scenario():
        async with simulator() as server, upstream_client(
                point_at(config, server), request_timeout_s=0.5) as client:
            await sim_fault(server, mode, 3)
            with pytest.raises(UpstreamFailure) as info:
                await client.fetch("football", "fixtures", {"live": "all"}, purpose="user")
            assert await sim_requests(server) == 3
            return info.value

    with caplog.at_level(logging.DEBUG):
        exc = run(scenario())
    assert isinstance(exc, UpstreamError) and exc.status == 502
    assert exc.kind == kind and exc.transient and exc.http_status == http_status
    assert exc.sport == "football" and exc.endpoint == "fixtures"
    failures = [r.getMessage() for r in caplog.records
                if r.name == "btsguru.upstream.client" and "upstream failure" in r.getMessage()]
    assert len(failures) == 3
    assert "attempt 3/3" in failures[-1] and "football /fixtures" in failures[-1]
    assert "left today" in failures[-1]
    assert SECRET_KEY not in caplog.text


def test_a_429_pauses_the_minute_users_fail_fast_and_pollers_wait(config):
    async def scenario():
        clock = FakeClock()
        async with simulator() as server, \
                upstream_client(point_at(config, server), clock=clock) as client:
            await sim_fault(server, "429", 1)
            # a user's fetch: the wall is noted, the retry finds no token, 503 at once
            with pytest.raises(QuotaExhausted) as info:
                await client.fetch("football", "fixtures", {"live": "all"}, purpose="user")
            assert info.value.window == "minute" and info.value.transient
            assert await sim_requests(server) == 1
            assert (await client.quota.snapshot("football")).minute_blocked_s > 0
            # a poller's fetch waits (on the clock) for the window, then goes out
            task = asyncio.create_task(
                client.fetch("football", "fixtures", {"live": "all"}, purpose="poller"))
            await asyncio.sleep(0.05)
            assert not task.done()
            assert await sim_requests(server) == 1
            response = await advance_until_done(clock, task)
            assert response.status == 200
            assert await sim_requests(server) == 2

    run(scenario())


def test_a_429_for_a_poller_is_retried_once_the_window_frees(config):
    async def scenario():
        clock = FakeClock()
        async with simulator() as server, \
                upstream_client(point_at(config, server), clock=clock) as client:
            await sim_fault(server, "429", 1)
            task = asyncio.create_task(
                client.fetch("hockey", "games", {"date": "2025-01-01"}, purpose="poller"))
            response = await advance_until_done(clock, task)
            assert response.status == 200
            assert await sim_requests(server) == 2

    run(scenario())


def test_slow_answers_within_the_timeout_succeed_and_users_never_wait_past_the_deadline(
        config):
    async def scenario():
        async with simulator() as server:
            async with upstream_client(point_at(config, server), request_timeout_s=2) as client:
                await sim_fault(server, "slow", 1, delay_s=0.2)
                response = await client.fetch("football", "fixtures", {"live": "all"},
                                              purpose="user")
                assert response.status == 200 and response.elapsed_ms >= 150
            async with upstream_client(point_at(config, server), request_timeout_s=5,
                                       user_deadline_s=1.0) as client:
                await sim_fault(server, "slow", 1, delay_s=3)
                started = time.monotonic()
                with pytest.raises(UpstreamFailure) as info:
                    await client.fetch("football", "fixtures", {"live": "all"}, purpose="user")
                assert time.monotonic() - started < 1.5
                assert info.value.kind == "timeout"

    run(scenario())


def test_request_errors_are_not_retried_and_report_400(config):
    async def scenario():
        async with simulator() as server, \
                upstream_client(point_at(config, server)) as client:
            await sim_fault(server, "errors200", 1, errors={
                "plan": "Free plans do not have access to this season, try from 2022 to 2024."})
            with pytest.raises(UpstreamRequestError) as info:
                await client.fetch("football", "fixtures", {"season": "2019", "league": "39"},
                                   purpose="user")
            assert await sim_requests(server) == 1
            assert info.value.status == 400 and not info.value.transient
            assert "Free plans" in info.value.message
            # the simulator itself refuses `live` for basketball
            with pytest.raises(UpstreamRequestError) as live:
                await client.fetch("basketball", "games", {"live": "all"}, purpose="user")
            assert "live" in live.value.message.lower()
            assert await sim_requests(server) == 2
            assert client.breaker.state("football") == "closed"

    run(scenario())


def test_unusable_endpoints_are_refused_before_any_token(config):
    async def scenario():
        async with simulator() as server, \
                upstream_client(point_at(config, server)) as client:
            for endpoint in ("../admin", "fixtures?live=all", "http://example.com/x", ""):
                with pytest.raises(BadRequest):
                    await client.fetch("football", endpoint, {}, purpose="user")
            with pytest.raises(BadRequest):
                await client.fetch("curling", "games", {}, purpose="user")
            assert await sim_requests(server) == 0
            assert (await client.quota.snapshot("football")).day_used == 0

    run(scenario())


# -- the breaker --


def test_breaker_opens_rejects_without_sending_and_recovers_through_a_probe(config):
    async def scenario():
        clock = FakeClock()
        breaker = CircuitBreaker(clock, failure_threshold=3, cooldown_s=10)
        async with simulator() as server, upstream_client(
                point_at(config, server), clock=clock, breaker=breaker,
                max_attempts=1) as client:
            await sim_fault(server, "500", 3)
            for _ in range(3):
                with pytest.raises(UpstreamFailure):
                    await client.fetch("football", "fixtures", {"live": "all"},
                                       purpose="poller")
            assert client.breaker.state("football") == "open"
            sent = await sim_requests(server)
            used = (await client.quota.snapshot("football")).day_used
            with pytest.raises(CircuitOpen) as info:
                await client.fetch("football", "fixtures", {"live": "all"}, purpose="user")
            assert info.value.status == 503 and info.value.retry_after_s == 10
            assert await sim_requests(server) == sent  # nothing sent
            assert (await client.quota.snapshot("football")).day_used == used  # no token
            # other sports are not affected
            await client.fetch("hockey", "games", {"date": "2025-01-01"}, purpose="user")

            clock.advance(10)
            assert client.breaker.state("football") == "half_open"
            await sim_fault(server, "500", 1)
            with pytest.raises(UpstreamFailure):  # the probe fails: open again, longer
                await client.fetch("football", "fixtures", {"live": "all"}, purpose="poller")
            assert client.breaker.state("football") == "open"
            assert client.breaker.retry_after_s("football") == pytest.approx(20)
            clock.advance(20)
            response = await client.fetch("football", "fixtures", {"live": "all"},
                                          purpose="poller")
            assert response.status == 200
            assert client.breaker.state("football") == "closed"

    run(scenario())


def test_a_failure_that_opens_the_breaker_stops_the_retries(config):
    async def scenario():
        clock = FakeClock()
        breaker = CircuitBreaker(clock, failure_threshold=2, cooldown_s=30)
        async with simulator() as server, upstream_client(
                point_at(config, server), clock=clock, breaker=breaker, max_attempts=5,
                ) as client:
            await sim_fault(server, "500", 5)
            task = asyncio.create_task(
                client.fetch("football", "fixtures", {"live": "all"}, purpose="user"))
            with pytest.raises(UpstreamFailure) as info:
                await advance_until_done(clock, task, step_s=0.5)
            assert info.value.kind == "server"
            assert await sim_requests(server) == 2
            assert breaker.state("football") == "open"

    run(scenario())


def test_pollers_probe_through_the_cool_down_and_close_it_for_everyone(config):
    """While the breaker keeps users' misses off the failing host, each poll is a probe;
    the first that finds the host back closes the breaker at once, not at the end of
    the cool-down."""
    async def scenario():
        clock = FakeClock()
        breaker = CircuitBreaker(clock, failure_threshold=2, cooldown_s=15)
        async with simulator() as server, upstream_client(
                point_at(config, server), clock=clock, breaker=breaker) as client:
            await sim_fault(server, "500", 4)
            for _ in range(2):
                with pytest.raises(UpstreamFailure):
                    await client.fetch("football", "fixtures", {"live": "all"},
                                       purpose="poller")
            assert breaker.state("football") == "open"
            for _ in range(2):  # two more polls, a cadence apart, both probes
                clock.advance(2)
                with pytest.raises(CircuitOpen):
                    await client.fetch("football", "countries", {}, purpose="user")
                with pytest.raises(UpstreamFailure):
                    await client.fetch("football", "fixtures", {"live": "all"},
                                       purpose="poller")
                assert breaker.retry_after_s("football") == pytest.approx(15)
            assert await sim_requests(server) == 4  # the users' misses sent nothing
            clock.advance(2)  # the host is back; 13 s of the cool-down are left
            response = await client.fetch("football", "fixtures", {"live": "all"},
                                          purpose="poller")
            assert response.status == 200 and breaker.state("football") == "closed"
            await client.fetch("football", "countries", {}, purpose="user")
            assert await sim_requests(server) == 6

    run(scenario())


# -- the session --


def test_close_closes_the_owned_session_and_a_given_session_is_left_open(config):
    async def scenario():
        async with simulator() as server:
            sim_config = point_at(config, server)
            async with upstream_client(sim_config) as client:
                await client.fetch("football", "status", {}, purpose="user")
                session = client._session
                assert session is not None and not session.closed
                await client.close()
                assert session.closed
                # used again after close: a new session on the running loop
                await client.fetch("football", "status", {}, purpose="user")
            async with aiohttp.ClientSession() as shared:
                async with upstream_client(sim_config, session=shared) as client:
                    await client.fetch("football", "status", {}, purpose="user")
                assert not shared.closed

    run(scenario())


# -- classification of every documented answer --


def _envelope(errors, response=None):
    return {"get": "fixtures", "parameters": {"live": "all"}, "errors": errors,
            "results": 0, "paging": {"current": 1, "total": 1}, "response": response or []}


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, _envelope([]), None),
    (200, _envelope({}), None),
    (200, {"get": "status", "parameters": [], "errors": [], "results": 0,
           "response": {"account": {}}}, None),
    (200, _envelope({"token": "Error/Missing application key."}), ("auth", False)),
    (200, _envelope({"access": "Your account is suspended"}), ("auth", False)),
    (200, _envelope({"requests": "You have reached the request limit for the day"}),
     ("day_quota", False)),
    (429, _envelope({"requests": "...reached your daily request limit..."}),
     ("day_quota", False)),
    (200, _envelope({"rateLimit": "Too many requests. Your rate limit is 10 requests per "
                                  "minute."}), ("minute_quota", True)),
    (429, _envelope({"rateLimit": "Too many requests. You have reached your per-minute "
                                  "request limit."}), ("minute_quota", True)),
    (200, _envelope({"plan": "Free plans do not have access to this season"}),
     ("request", False)),
    (200, _envelope({"endpoint": "The Banana endpoint does not exist."}), ("request", False)),
    (200, _envelope({"live": "The Live field do not exist."}), ("request", False)),
    (200, _envelope(["The League field is required."]), ("request", False)),
    (200, _envelope([{"league": "The League field is required."}]), ("request", False)),
    (204, _envelope({"time": "2025-01-01 00:00:00", "bug": "This is on our side",
                     "report": "info@api-football.com"}), ("upstream_bug", True)),
    (204, None, ("upstream_bug", True)),
    (499, {"message": "Something went wrong while fetching details. Try again later."},
     ("server", True)),
    (500, {"message": "Something went wrong while fetching details. Try again later."},
     ("server", True)),
    (502, None, ("server", True)),
    (401, {"message": "Invalid API key. Go to https://docs.rapidapi.com/docs/keys"},
     ("auth", False)),
    (403, {"message": "You are not subscribed to this API."}, ("auth", False)),
    (429, {"message": "You have exceeded the DAILY quota for Requests on your current plan, "
                      "BASIC."}, ("day_quota", False)),
    (429, {"message": "You have exceeded the rate limit per second for your plan, BASIC, by "
                      "the API provider"}, ("minute_quota", True)),
    (429, {"message": "Too many requests"}, ("minute_quota", True)),
    (404, {"message": "API doesn't exists"}, ("request", False)),
    (200, None, ("malformed", True)),
    (200, {"unexpected": True}, ("malformed", True)),
    (200, ["not", "an", "object"], ("malformed", True)),
])
def test_classify_answer(status, body, expected):
    error = classify_answer(status, body, sport="football", endpoint="fixtures")
    if expected is None:
        assert error is None
        return
    assert error is not None
    assert (error.kind, error.transient) == expected
    assert error.http_status == status
    family = Unavailable if expected[0].endswith("_quota") else UpstreamError
    assert isinstance(error, family)
    assert error.message.startswith("football /fixtures: ")


def test_without_redis_nothing_is_sent_and_the_error_is_a_503(config):
    from tests.cli_helpers import free_port

    async def scenario():
        async with simulator() as server:
            no_redis = point_at(config, server).replace(
                redis_url=f"redis://127.0.0.1:{free_port()}/0")
            async with upstream_client(no_redis) as client:
                with pytest.raises(Unavailable) as info:
                    await client.fetch("football", "fixtures", {"live": "all"}, purpose="user")
            assert info.value.status == 503 and "budget" in info.value.message
            assert await sim_requests(server) == 0

    run(scenario())
