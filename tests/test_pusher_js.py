"""The real pusher-js (from npm, under Node) against the Pusher endpoint: public, private
and presence game channels with game events, presence members coming and going, and a
backend publish through the signed HTTP API. Node.js and npm are required (`.ci/run`
installs Debian's when missing); pusher-js comes from tests/node's package-lock.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btsguru.sports.base import Phase
from tests.pusher_helpers import api
from tests.pusher_node import NodeClient, node_with_packages
from tests.realtime_helpers import relay
from tests.store_fixtures import make_game


@pytest.fixture(scope="module")
def pusher_js() -> Path:
    """`node`, with pusher-js (and the other Node clients) installed."""
    return node_with_packages()


async def test_pusher_js_gets_game_events_members_and_backend_publishes(tmp_path, pusher_js):
    async with relay(tmp_path) as r:
        await r.services.users.create_user("second@example.com", "password123", tier="pro")
        _info, second_key = await r.services.keys.create_key("second@example.com")
        channels = ["sports.football", "private-sports.football", "presence-sports.football",
                    "orders"]
        first = await NodeClient.start(pusher_js, r, channels, r.keys["pro"])
        second = None
        try:
            await first.wait(lambda m: m["type"] == "connected")
            for name in channels:
                got = await first.wait(lambda m, n=name: m["type"] in (
                    "subscribed", "subscription_error") and m["channel"] == n)
                assert got["type"] == "subscribed", got
            presence = next(m for m in first.lines if m.get("channel") ==
                            "presence-sports.football" and m["type"] == "subscribed")
            me = presence["members"]
            assert len(me) == 1
            # game events on every form of the game channel, data parsed by pusher-js
            await r.services.games.ingest("football", [make_game(1001, phase=Phase.SCHEDULED)])
            await r.services.games.ingest("football", [make_game(
                1001, phase=Phase.LIVE, code="1H", home=0, away=0, clock="1", period=1)])
            for name in channels[:3]:
                started = await first.wait(lambda m, n=name: m["type"] == "event" and
                                           m["event"] == "game.started" and m["channel"] == n)
                assert started["data"]["game_id"] == 1001
                assert started["data"]["seq"] >= 1
            # a backend publish through the signed HTTP API
            status, _ = await api(r, "POST", f"/apps/{r.config.reverb_app_id}/events",
                                  {"name": "order.shipped", "channels": ["orders"],
                                   "data": json.dumps({"id": 7})})
            assert status == 200
            shipped = await first.wait(lambda m: m.get("event") == "order.shipped")
            assert shipped["data"] == {"id": 7}
            # a second user joins the presence channel, then leaves
            second = await NodeClient.start(pusher_js, r, ["presence-sports.football"],
                                            second_key)
            joined = await second.wait(lambda m: m["type"] == "subscribed")
            assert len(joined["members"]) == 2
            added = await first.wait(lambda m: m["type"] == "member_added")
            assert added["id"] not in me
            assert added["info"] == {"tier": "pro"}
            await second.stop()
            removed = await first.wait(lambda m: m["type"] == "member_removed")
            assert removed["id"] == added["id"]
        finally:
            await first.stop()
            if second is not None:
                await second.stop()
