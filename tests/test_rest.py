"""The REST read API through a real Tornado app over real Redis and SQLite: every route,
its 400/404 JSON errors and the rate-limit headers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
import tornado.web

from btsguru.auth.access import AccessService
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.handlers.api import api_routes
from btsguru.handlers.base import NotFoundHandler
from btsguru.handlers.rest import SportsView, rest_routes
from btsguru.pollers.state import PollerState, PollerStateReader
from btsguru.sports.base import Phase
from btsguru.sports.standings import normalize_standings
from btsguru.store.games import GameStore
from btsguru.store.hot import HotCache
from btsguru.store.standings import StandingsStore
from tests.access_fixtures import make_account, migrated_sqlite, open_node
from tests.store_fixtures import NOW, goal, live, make_game, open_store
from tests.test_standings import FOOTBALL

RATE_HEADERS = ("RateLimit-Policy", "RateLimit", "RateLimit-Limit", "RateLimit-Remaining",
                "RateLimit-Reset", "X-RateLimit-Limit", "X-RateLimit-Remaining")


@dataclass
class Services:
    """The fields of `btsguru.app.Services` that `api_routes` and `rest_routes` read."""

    config: Config
    clock: Clock
    access: AccessService
    games: GameStore
    standings: StandingsStore
    poller_state: PollerStateReader
    hot: HotCache | None = None  # the in-process copies: tests/test_hot.py


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def world(test_config, runner, io_loop):
    access_node = open_node(test_config, runner)
    store = open_store(test_config, runner)
    services = Services(config=test_config, clock=store.clock, access=access_node.access,
                        games=store.games, standings=StandingsStore(store.redis),
                        poller_state=PollerStateReader(store.redis, store.clock))
    yield services, store
    io_loop.run_sync(store.close)
    io_loop.run_sync(access_node.close)


@pytest.fixture
def app(world):
    services, _ = world
    view = SportsView(services.games, services.poller_state, services.clock, services.hot)
    routes = rest_routes(access=services.access, sports=services.config.sports, view=view,
                         games=services.games, standings=services.standings,
                         clock=services.clock)
    return tornado.web.Application([*api_routes(services), *routes],
                                   default_handler_class=NotFoundHandler, xsrf_cookies=True)


@pytest.fixture
def key(runner, io_loop):
    return io_loop.run_sync(lambda: make_account(runner, "fan@example.com", tier="pro")).key


async def get(client, path, key):
    response = await client.fetch(path, headers={"X-API-Key": key}, raise_error=False)
    assert response.headers["Content-Type"] == "application/json"
    for name in RATE_HEADERS:
        assert name in response.headers, name
    return response.code, orjson.loads(response.body)


def assert_error(answer, status, code):
    assert answer[0] == status, answer
    assert set(answer[1]) == {"error"} and answer[1]["error"]["code"] == code
    assert answer[1]["error"]["message"]


async def seed(store):
    a, b = make_game(1, league=39), make_game(2, league=140, home_id=7, away_id=8,
                                               start="2024-08-16T21:00:00Z")
    old = make_game(3, start="2024-07-01T18:00:00Z")
    await store.games.ingest("football", [a, b, old])
    await store.games.ingest("football", [live(a, 1, 0, 12, events=(goal(11),))])


async def test_unauthenticated_is_401_json(http_server_client):
    response = await http_server_client.fetch("/v1/football/live", raise_error=False)
    assert response.code == 401
    assert orjson.loads(response.body)["error"]["code"] == "unauthorized"


async def test_sports_lists_every_sport_with_freshness(http_server_client, key, world):
    services, store = world
    await seed(store)
    store.clock.advance(5)
    status, body = await get(http_server_client, "/v1/sports", key)
    assert status == 200
    by_sport = {row["sport"]: row for row in body["data"]}
    assert list(by_sport) == list(services.config.sports)
    assert by_sport["football"] == {"sport": "football", "live_games": 1,
                                    "poll_interval_s": None,
                                    "last_poll_at": "2024-08-16T12:00:00Z", "data_age_s": 5}
    assert by_sport["hockey"]["live_games"] == 0 and by_sport["hockey"]["last_poll_at"] is None
    # once the live poller reports, its numbers win
    await PollerState(store.redis, store.clock).update("football", "live", {
        "interval_s": 15.0, "last_success": NOW + 4, "live_games": 1, "failures": 0})
    status, body = await get(http_server_client, "/v1/sports", key)
    football = next(row for row in body["data"] if row["sport"] == "football")
    assert (football["poll_interval_s"], football["last_poll_at"], football["data_age_s"]) == \
        (15.0, "2024-08-16T12:00:04Z", 1)


async def test_live_games_and_staleness(http_server_client, key, world):
    _, store = world
    await seed(store)
    status, body = await get(http_server_client, "/v1/football/live", key)
    assert status == 200
    assert [g["id"] for g in body["data"]] == [1]
    game = body["data"][0]
    assert game["status"]["phase"] == "live" and game["seq"] == 2
    assert game["events"][0]["player"] == "J. Striker"
    assert body["meta"] == {"as_of": "2024-08-16T12:00:00Z", "stale": False}
    store.clock.advance(91)  # three fallback cadences (30 s) and a second
    status, body = await get(http_server_client, "/v1/football/live", key)
    assert body["meta"]["stale"] is True
    status, body = await get(http_server_client, "/v1/hockey/live", key)
    assert body == {"data": [], "meta": {"as_of": None, "stale": True}}
    await PollerState(store.redis, store.clock).update("football", "live", {
        "interval_s": 15.0, "last_success": store.clock.time(), "failures": 2})
    status, body = await get(http_server_client, "/v1/football/live", key)
    assert body["meta"]["stale"] is True  # fresh, but the poller says it is failing
    # the live poller recovered; a schedule run that failed during the outage does not
    # keep the fresh list stale until the schedule's next run
    await PollerState(store.redis, store.clock).update("football", "schedule", {
        "interval_s": 900.0, "last_success": store.clock.time() - 1000, "failures": 1})
    await PollerState(store.redis, store.clock).update("football", "live", {
        "interval_s": 15.0, "last_success": store.clock.time(), "failures": 0})
    status, body = await get(http_server_client, "/v1/football/live", key)
    assert body["meta"]["stale"] is False


async def test_games_by_day_with_filters(http_server_client, key, world):
    _, store = world
    await seed(store)

    async def ids(query=""):
        status, body = await get(http_server_client, "/v1/football/games" + query, key)
        assert status == 200, body
        return [g["id"] for g in body["data"]]

    assert await ids() == [1, 2]  # today (UTC, the clock's) by default
    assert await ids("?date=2024-08-16&league=140") == [2]
    assert await ids("?team=7") == [2]
    assert await ids("?status=live") == [1]
    assert await ids("?status=finished") == []
    assert await ids("?date=2024-07-01") == [3]  # from the database


@pytest.mark.parametrize("query", [
    "?date=2024-02-30", "?date=16-08-2024", "?date=today", "?league=abc", "?league=-1",
    "?team=1.5", "?status=playing", "?colour=red", "?league=1&league=2"])
async def test_invalid_game_filters_are_400(http_server_client, key, query):
    assert_error(await get(http_server_client, "/v1/football/games" + query, key),
                 400, "bad_request")


async def test_one_game_from_redis_or_the_database(http_server_client, key, world):
    _, store = world
    await seed(store)
    status, body = await get(http_server_client, "/v1/football/games/1", key)
    assert status == 200 and body["data"]["home"]["score"] == 1
    assert [e["type"] for e in body["data"]["events"]] == ["goal"]
    await store.redis.reverb.delete(store.games._game_key("football", 3))
    status, body = await get(http_server_client, "/v1/football/games/3", key)
    assert status == 200 and body["data"]["start_time"] == "2024-07-01T18:00:00Z"
    assert_error(await get(http_server_client, "/v1/football/games/404", key), 404,
                 "not_found")
    assert_error(await get(http_server_client, "/v1/football/games/abc", key), 400,
                 "bad_request")


async def test_a_sport_without_events_has_no_events_field(http_server_client, key, world):
    _, store = world
    game = replace(make_game(9, sport="basketball", league=12), events=None)
    await store.games.ingest("basketball", [game])
    status, body = await get(http_server_client, "/v1/basketball/games/9", key)
    assert status == 200 and "events" not in body["data"]
    assert body["data"]["status"]["phase"] == Phase.SCHEDULED.value


async def test_standings(http_server_client, key, world):
    services, _ = world
    await services.standings.replace("football", 39, "2024",
                                     normalize_standings("football", FOOTBALL),
                                     refreshed_at=NOW)
    status, body = await get(http_server_client, "/v1/football/standings?league=39", key)
    assert status == 200
    assert [(r["rank"], r["team"], r["drawn"]) for r in body["data"]] == [
        (1, {"id": 40, "name": "Liverpool"}, 9), (2, {"id": 42, "name": "Arsenal"}, None)]
    status, body = await get(http_server_client,
                             "/v1/football/standings?league=39&season=2024", key)
    assert status == 200 and len(body["data"]) == 2
    assert_error(await get(http_server_client, "/v1/football/standings", key), 400,
                 "bad_request")
    assert_error(await get(http_server_client, "/v1/football/standings?league=x", key), 400,
                 "bad_request")
    assert_error(await get(http_server_client,
                           "/v1/football/standings?league=39&season=last", key),
                 400, "bad_request")
    assert_error(await get(http_server_client,
                           "/v1/football/standings?league=39&season=2019", key),
                 404, "not_found")


@pytest.mark.parametrize("path", ["/v1/curling/live", "/v1/curling/games",
                                  "/v1/curling/games/1", "/v1/curling/standings?league=1"])
async def test_unknown_sport_is_404(http_server_client, key, path):
    assert_error(await get(http_server_client, path, key), 404, "not_found")


async def test_usage_counts_each_route_kind(http_server_client, key, world):
    _, store = world
    await seed(store)
    for path in ("/v1/football/live", "/v1/football/games", "/v1/football/games/1",
                 "/v1/sports"):
        await get(http_server_client, path, key)

    async def kinds() -> dict[str, Any]:
        _, body = await get(http_server_client, "/v1/usage", key)
        return body["data"]["today"]

    today = await kinds()
    assert today["live"] == 1 and today["games"] == 2 and today["other"] >= 1
