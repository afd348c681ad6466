"""The real pusher-js (from npm, under Node) against the Pusher endpoint: public, private
and presence game channels with game events, presence members coming and going, and a
backend publish through the signed HTTP API. Node.js and npm are required (`.ci/run`
installs Debian's when missing); pusher-js comes from tests/node's package-lock.json."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.harness import node_packages
from btsguru.sports.base import Phase
from tests.pusher_helpers import api
from tests.realtime_helpers import TIMEOUT_S, relay
from tests.store_fixtures import make_game

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "pusher_client.js"


@pytest.fixture(scope="module")
def pusher_js() -> Path:
    """`node`, with pusher-js installed from tests/node's package-lock.json."""
    return node_packages(NODE_DIR, "pusher-js")


class NodeClient:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, node: Path, r, channels: list[str], api_key: str | None = None,
                    ) -> NodeClient:
        options = {"host": "127.0.0.1", "port": r.port, "key": r.config.reverb_app_key,
                   "channels": channels, "apiKey": api_key}
        process = await asyncio.create_subprocess_exec(
            str(node), str(SCRIPT), json.dumps(options), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, cwd=str(NODE_DIR))
        return cls(process)

    async def wait(self, condition: Callable[[dict[str, Any]], bool],
                   timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        for line in self.lines:
            if condition(line):
                return line
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(),
                                         max(0.01, deadline - time.monotonic()))
            if not raw:
                raise AssertionError(f"pusher-js exited; it printed {self.lines}")
            line = json.loads(raw)
            self.lines.append(line)
            if condition(line):
                return line

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


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
