"""End-to-end encrypted channels (issue 20, item 4) with the real clients: pusher-js (with
tweetnacl) decrypts what btsguru encrypts on `private-encrypted-sports.*`, and what the
official server SDK encrypts on an app's own `private-encrypted-*` channel, which the
server relays untouched; the SDK, given the same master key, derives the same
`shared_secret` as `/v1/realtime/auth`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from btsguru.sports.base import Phase
from tests.conftest import make_test_config
from tests.pusher_helpers import PusherClient, realtime_auth
from tests.pusher_node import NodeClient, node_with_packages, sdk
from tests.realtime_helpers import relay
from tests.store_fixtures import make_game

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
GAME = "private-encrypted-sports.football.39.1001"


@pytest.fixture(scope="module")
def node() -> Path:
    return node_with_packages()


def live(home: int, minute: int):
    return [make_game(1001, phase=Phase.LIVE, code="1H", home=home, away=0,
                      clock=str(minute), period=1)]


async def test_btsguru_encrypts_game_events_that_only_authorized_clients_can_read(
        tmp_path, node):
    config = make_test_config(tmp_path, PUSHER_ENCRYPTION_MASTER_KEY=MASTER_KEY)
    async with relay(tmp_path, config) as r:
        await r.services.games.ingest("football", [make_game(1001)])
        await r.services.games.ingest("football", live(1, 10))
        reader = await NodeClient.start(node, r, [GAME], r.keys["pro"])
        raw = await PusherClient.connect(r)
        try:
            # pusher-js opens the snapshot with the shared secret the auth gave it
            snapshot = await reader.wait(lambda m: m.get("event") == "game.snapshot")
            assert (snapshot["data"]["id"], snapshot["data"]["home"]["score"]) == (1001, 1)

            status, auth = await realtime_auth(r, r.keys["pro"], raw.socket_id, GAME)
            assert status == 200 and "shared_secret" in auth
            # the official SDK derives the same key from the same master key
            signed = await sdk(node, r, {"op": "authorizeChannel", "socketId": raw.socket_id,
                                         "channel": GAME},
                               encryptionMasterKeyBase64=MASTER_KEY)
            assert signed["shared_secret"] == auth["shared_secret"]
            assert signed["auth"] == auth["auth"]
            await raw.subscribe(GAME, auth["auth"])
            await raw.expect("pusher_internal:subscription_succeeded", GAME)

            await r.services.games.ingest("football", live(2, 20))
            score = await reader.wait(lambda m: m.get("event") == "game.score")
            assert score["data"]["changes"]["home.score"] == 2
            # on the wire: a nonce and a ciphertext, nothing of the game
            wire = await raw.expect("game.score", GAME)
            sealed = json.loads(wire["data"])
            assert set(sealed) == {"nonce", "ciphertext"}
            assert len(base64.b64decode(sealed["nonce"])) == 24
            assert "home" not in wire["data"] and "1001" not in wire["data"]

            # no client events on an encrypted channel
            await raw.send("client-typing", {"who": "me"}, GAME)
            refused = await raw.expect("pusher:error")
            assert "private and presence" in refused["data"]["message"]
        finally:
            raw.close()
            await reader.stop()


async def test_without_a_master_key_encrypted_game_channels_are_refused_clearly(tmp_path,
                                                                                node):
    async with relay(tmp_path) as r:
        raw = await PusherClient.connect(r)
        try:
            status, body = await realtime_auth(r, r.keys["pro"], raw.socket_id, GAME)
            assert status == 403 and "PUSHER_ENCRYPTION_MASTER_KEY" in body["error"]["message"]
            reader = await NodeClient.start(node, r, [GAME], r.keys["pro"])
            try:
                failed = await reader.wait(lambda m: m["type"] == "subscription_error")
                assert failed["channel"] == GAME
            finally:
                await reader.stop()
        finally:
            raw.close()


async def test_an_apps_encrypted_channel_is_relayed_untouched(tmp_path, node):
    async with relay(tmp_path) as r:  # the server needs no master key for the app's own
        backend = {"appId": r.config.reverb_app_id,
                   "secret": r.config.reverb_app_secret.reveal(),
                   "encryptionMasterKeyBase64": MASTER_KEY}
        reader = await NodeClient.start(node, r, ["private-encrypted-chat"], backend=backend)
        try:
            await reader.wait(lambda m: m["type"] == "subscribed")
            sent = await sdk(node, r, {"op": "trigger", "channels": ["private-encrypted-chat"],
                                       "event": "message", "data": {"text": "hello"}},
                             encryptionMasterKeyBase64=MASTER_KEY)
            assert sent["status"] == 200, sent
            got = await reader.wait(lambda m: m["type"] == "event")
            assert (got["event"], got["data"]) == ("message", {"text": "hello"})
        finally:
            await reader.stop()
