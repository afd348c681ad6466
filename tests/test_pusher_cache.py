"""Pusher cache channels (issue 20, item 1) with the real clients: pusher-js subscribes,
the official `pusher` server SDK publishes. Right after `subscription_succeeded` a
subscriber gets the channel's last event, or `pusher:cache_miss`; on a game's channel the
last event is the whole current game as `game.snapshot`."""

from __future__ import annotations

from pathlib import Path

import pytest

from btsguru.sports.base import Phase
from btsguru.store.pusher_cache import CACHE_TTL_S
from tests.pusher_node import NodeClient, node_with_packages, sdk
from tests.realtime_helpers import relay
from tests.store_fixtures import make_game


@pytest.fixture(scope="module")
def node() -> Path:
    return node_with_packages()


def after_subscribed(client: NodeClient, channel: str) -> list[dict]:
    """What `client` printed for `channel` from its subscription on."""
    lines = [line for line in client.lines if line.get("channel") == channel]
    start = next(i for i, line in enumerate(lines) if line["type"] == "subscribed")
    return lines[start:]


async def test_an_app_cache_channel_misses_then_remembers_the_servers_last_event(
        tmp_path, node):
    async with relay(tmp_path) as r:
        first = await NodeClient.start(node, r, ["cache-scoreboard"])
        try:
            await first.wait(lambda m: m["type"] == "cache_miss")
            assert [m["type"] for m in after_subscribed(first, "cache-scoreboard")] \
                == ["subscribed", "cache_miss"]
            for home in (1, 2):
                sent = await sdk(node, r, {"op": "trigger", "channels": ["cache-scoreboard"],
                                           "event": "score", "data": {"home": home}})
                assert sent["status"] == 200, sent
            await first.wait(lambda m: m.get("data") == {"home": 2})
        finally:
            await first.stop()
        ttl = await r.services.redis.reverb.ttl(
            r.services.redis.keys.tagged("pusher-cache", "cache-scoreboard"))
        assert CACHE_TTL_S - 60 < ttl <= CACHE_TTL_S

        later = await NodeClient.start(node, r, ["cache-scoreboard"])
        try:
            await later.wait(lambda m: m["type"] == "event")
            told = after_subscribed(later, "cache-scoreboard")
            assert [(m["type"], m.get("event"), m.get("data")) for m in told] == [
                ("subscribed", None, None), ("event", "score", {"home": 2})]
        finally:
            await later.stop()


async def test_a_game_cache_channel_starts_with_the_whole_game(tmp_path, node):
    async with relay(tmp_path) as r:
        game = make_game(1001, phase=Phase.LIVE, code="1H", home=2, away=1, clock="55",
                         period=2)
        await r.services.games.ingest("football", [make_game(1001)])
        await r.services.games.ingest("football", [game])
        names = ["cache-sports.football.39.1001", "cache-sports.football.39.4242",
                 "cache-sports.football.39"]
        client = await NodeClient.start(node, r, names)
        try:
            snapshot = await client.wait(lambda m: m.get("event") == "game.snapshot")
            assert snapshot["channel"] == names[0]
            assert (snapshot["data"]["id"], snapshot["data"]["home"]["score"],
                    snapshot["data"]["away"]["score"]) == (1001, 2, 1)
            await client.wait(lambda m: m["type"] == "cache_miss" and m["channel"] == names[1])
            # the league's channel: the last event published on it, a game's change here
            last = await client.wait(lambda m: m["type"] == "event" and m["channel"] == names[2])
            assert last["data"]["game_id"] == 1001 and last["event"].startswith("game.")
            assert [m["type"] for m in after_subscribed(client, names[0])][:2] \
                == ["subscribed", "event"]
            # and live from there, like any game channel
            await r.services.games.ingest("football", [make_game(
                1001, phase=Phase.LIVE, code="2H", home=3, away=1, clock="70", period=2)])
            await client.wait(lambda m: m.get("event") == "game.score"
                              and m["channel"] == names[0])
        finally:
            await client.stop()


async def test_an_event_over_10_kb_is_refused_and_the_cache_keeps_the_last_good_one(
        tmp_path, node):
    async with relay(tmp_path) as r:
        small = await sdk(node, r, {"op": "trigger", "channels": ["cache-board"],
                                    "event": "score", "data": {"home": 1}})
        huge = await sdk(node, r, {"op": "trigger", "channels": ["cache-board"],
                                   "event": "score", "data": {"blob": "x" * 11_000}})
        assert (small["status"], huge["status"]) == (200, 413)
        assert "10 KB" in huge["body"]
        client = await NodeClient.start(node, r, ["cache-board"])
        try:
            cached = await client.wait(lambda m: m["type"] == "event")
            assert cached["data"] == {"home": 1}
        finally:
            await client.stop()
