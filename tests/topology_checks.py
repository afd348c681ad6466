"""What the Sentinel and Cluster tests check alike: the app on that topology answering
REST and carrying one game's events over the WebSocket and SSE."""

from __future__ import annotations

import json
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from btsguru.sports.base import Phase
from tests.realtime_helpers import Relay, SseClient, WsClient, events
from tests.store_fixtures import make_game


async def fetch_json(url: str, **headers: str) -> tuple[int, dict]:
    response = await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False,
                                             request_timeout=30)
    assert response.headers["Content-Type"].startswith("application/json"), response.body
    return response.code, json.loads(response.body)


def live(home: int) -> list[Any]:
    return [make_game(1001, phase=Phase.LIVE, code="1H", home=home, away=0,
                      clock=str(10 + home), period=1)]


async def events_on_every_transport(r: Relay, goals: int) -> list[dict]:
    """Game 1001 starts, then the home side scores `goals` times, each ingested into
    `r`'s store: a WebSocket on the sport and an SSE stream on the league get every
    event, in seq order from 1, the same on both; REST shows the score. Returns the
    WebSocket's events."""
    ws = await WsClient.connect(r.ws_url, r.keys["pro"])
    await ws.subscribe("sports.football")
    assert (await ws.recv())["op"] == "subscribed"
    sse = await SseClient.connect(r.http_url, r.keys["pro"], "sports.football.39")
    try:
        await r.services.games.ingest("football", [make_game(1001)])
        published = 0
        for home in range(1, goals + 1):
            published += (await r.services.games.ingest("football", live(home))).events
        assert published >= goals

        def last(e: dict) -> bool:
            return e.get("data", {}).get("seq") == published

        got = events(await ws.recv_until(last))
        assert [e["data"]["seq"] for e in got] == list(range(1, published + 1))
        assert got[0]["event"] == "game.started"
        streamed = await sse.events_until(last)
        assert [(e["event"], e["data"]["seq"], e["data"]["changes"]) for e in streamed] \
            == [(e["event"], e["data"]["seq"], e["data"]["changes"]) for e in got]
        status, game = await fetch_json(f"{r.http_url}/v1/football/games/1001",
                                        **{"X-API-Key": r.keys["pro"]})
        assert status == 200 and game["data"]["home"]["score"] == goals, game
        return got
    finally:
        ws.close()
        await sse.close()
