"""Laravel Echo 2 itself (unmodified, `broadcaster: "reverb"`, under Node), against the
Pusher extras of issue 20: a cache game channel starts with the whole game, an encrypted
game channel is opened with the key `/broadcasting/auth` gave, and a signed-in user gets
what the official server SDK's `sendToUser` sends."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from btsguru.sports.base import Phase
from tests.conftest import make_test_config
from tests.pusher_node import NODE_DIR, NodeClient, node_with_packages, sdk
from tests.realtime_helpers import relay
from tests.store_fixtures import make_game

ECHO_SCRIPT = NODE_DIR / "echo_client.mjs"


@pytest.fixture(scope="module")
def node() -> Path:
    return node_with_packages()


async def test_echo_gets_cached_encrypted_and_user_events(tmp_path, node):
    master = base64.b64encode(bytes(range(32, 64))).decode()
    config = make_test_config(tmp_path, PUSHER_ENCRYPTION_MASTER_KEY=master)
    async with relay(tmp_path, config) as r:
        await r.services.games.ingest("football", [make_game(1001)])
        await r.services.games.ingest("football", [make_game(
            1001, phase=Phase.LIVE, code="1H", home=1, away=0, clock="12", period=1)])
        options = {"host": "127.0.0.1", "port": r.port, "key": config.reverb_app_key,
                   "apiKey": r.keys["pro"], "channel": "cache-sports.football.39.1001",
                   "encrypted": "sports.football.39.1001",
                   "events": ["game.snapshot", "game.score"], "signin": True}
        process = await asyncio.create_subprocess_exec(
            str(node), str(ECHO_SCRIPT), json.dumps(options), stdout=asyncio.subprocess.PIPE,
            cwd=str(NODE_DIR))
        echo = NodeClient(process)  # the same JSON-lines reading as pusher-js's
        try:
            for kind in ("channel", "encrypted"):
                snapshot = await echo.wait(lambda m, k=kind: m["type"] == "event"
                                           and m["kind"] == k
                                           and m["event"] == "game.snapshot")
                assert (snapshot["data"]["id"], snapshot["data"]["home"]["score"]) == (1001, 1)
            await r.services.games.ingest("football", [make_game(
                1001, phase=Phase.LIVE, code="1H", home=2, away=0, clock="30", period=1)])
            for kind in ("channel", "encrypted"):
                score = await echo.wait(lambda m, k=kind: m["type"] == "event"
                                        and m["kind"] == k and m["event"] == "game.score")
                assert score["data"]["changes"]["home.score"] == 2
            user = await r.services.users.get_by_email("pro@example.com")
            assert user is not None
            sent = await sdk(node, r, {"op": "sendToUser", "userId": str(user.id),
                                       "event": "note", "data": {"won": True}})
            assert sent["status"] == 200, sent
            note = await echo.wait(lambda m: m["type"] == "user_event")
            assert (note["event"], note["data"]) == ("note", {"won": True})
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
