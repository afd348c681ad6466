"""Pusher user authentication (issue 20, item 3) with the real clients: pusher-js signs in
(through `/v1/realtime/user-auth` with an API key, or with `user_data` the app's backend
signed with the official SDK's `authenticateUser`), the SDK's `sendToUser` reaches every
connection of that user and only those, and `terminateUserConnections` closes them with
4009 on every process within 5 s. Forged or malformed sign-ins get Pusher's errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from btsguru.realtime.pusher_protocol import UNAUTHORIZED, user_auth
from tests.pusher_helpers import PusherClient
from tests.pusher_node import NodeClient, node_with_packages, sdk
from tests.realtime_helpers import relay, servers
from tests.security.test_authorization import REVOKE_BOUND_S, revoke
from tests.test_pusher_processes import cluster_config, node  # noqa: F401 (a fixture)

TERMINATE_BOUND_S = 5.0


@pytest.fixture(scope="module")
def js() -> Path:
    return node_with_packages()


def signed_in_id(client_lines: list[dict]) -> str:
    success = next(m for m in client_lines if m.get("event") == "pusher:signin_success")
    data = success["data"] if isinstance(success["data"], dict) else json.loads(success["data"])
    return json.loads(data["user_data"])["id"]


async def sign_in(js: Path, server, api_key: str | None = None, **options) -> NodeClient:
    client = await NodeClient.start(js, server, [], api_key, signin=True, **options)
    await client.wait(lambda m: m.get("event") == "pusher:signin_success")
    user = signed_in_id(client.lines)
    await client.wait(lambda m: m.get("event") == "pusher_internal:subscription_succeeded"
                      and m.get("channel") == f"#server-to-user-{user}")
    return client


async def test_api_key_sign_in_send_to_user_and_terminate(tmp_path, js):
    async with relay(tmp_path) as r:
        await r.services.users.create_user("second@example.com", "password123", tier="pro")
        _info, second_key = await r.services.keys.create_key("second@example.com")
        mine = await sign_in(js, r, r.keys["pro"])
        also_mine = await sign_in(js, r, r.keys["pro"])  # a second tab
        other = await sign_in(js, r, second_key)
        try:
            user = signed_in_id(mine.lines)
            assert user == signed_in_id(also_mine.lines) != signed_in_id(other.lines)
            sent = await sdk(js, r, {"op": "sendToUser", "userId": user, "event": "note",
                                     "data": {"text": "your bet won"}})
            assert sent["status"] == 200, sent
            for client in (mine, also_mine):
                got = await client.wait(lambda m: m["type"] == "user_event")
                assert (got["event"], got["data"]) == ("note", {"text": "your bet won"})

            asked = time.monotonic()
            done = await sdk(js, r, {"op": "terminate", "userId": user})
            assert done["status"] == 200, done
            for client in (mine, also_mine):
                error = await client.wait(lambda m: m.get("event") == "pusher:error",
                                          timeout_s=TERMINATE_BOUND_S)
                assert error["data"]["code"] == UNAUTHORIZED
            assert time.monotonic() - asked < TERMINATE_BOUND_S
            # the other user neither got the note nor lost its connection
            await sdk(js, r, {"op": "sendToUser", "userId": signed_in_id(other.lines),
                              "event": "ping", "data": {}})
            pinged = await other.wait(lambda m: m["type"] == "user_event")
            assert pinged["event"] == "ping"
            assert not [m for m in other.lines if m["type"] == "user_event"
                        and m["event"] == "note"]
        finally:
            for client in (mine, also_mine, other):
                await client.stop()


async def test_the_apps_backend_signs_its_own_user_data(tmp_path, js):
    async with relay(tmp_path) as r:
        backend = {"appId": r.config.reverb_app_id,
                   "secret": r.config.reverb_app_secret.reveal()}
        ana = await sign_in(js, r, backend=backend,
                            userData={"id": "u-17", "name": "Ana"})
        try:
            assert signed_in_id(ana.lines) == "u-17"
            await sdk(js, r, {"op": "sendToUser", "userId": "u-17", "event": "hello",
                              "data": {"n": 1}})
            got = await ana.wait(lambda m: m["type"] == "user_event")
            assert got["data"] == {"n": 1}
        finally:
            await ana.stop()


async def test_forged_and_malformed_sign_ins_and_other_users_channels_are_refused(tmp_path):
    async with relay(tmp_path) as r:
        key, secret = r.config.reverb_app_key, r.config.reverb_app_secret.reveal()
        # not signed in: a user channel is refused, the socket stays
        client = await PusherClient.connect(r)
        await client.subscribe("#server-to-user-1")
        refused = await client.expect("pusher:subscription_error")
        assert refused["data"]["status"] == 403
        # malformed: in band
        await client.send("pusher:signin", {"auth": 5})
        error = await client.expect("pusher:error")
        assert error["data"]["code"] == UNAUTHORIZED and "user_data" in error["data"]["message"]
        # signed in as u-1, user u-2's channel is refused
        data = json.dumps({"id": "u-1"})
        await client.send("pusher:signin", {"auth": user_auth(key, secret, client.socket_id,
                                                              data), "user_data": data})
        await client.expect("pusher:signin_success")
        await client.subscribe("#server-to-user-u-2")
        refused = await client.expect("pusher:subscription_error")
        assert refused["channel"] == "#server-to-user-u-2"
        await client.subscribe("#server-to-user-u-1")
        await client.expect("pusher_internal:subscription_succeeded", "#server-to-user-u-1")
        client.close()

        # forged: user_data claims another id than the one signed
        forger = await PusherClient.connect(r)
        signed = user_auth(key, secret, forger.socket_id, json.dumps({"id": "u-1"}))
        await forger.send("pusher:signin", {"auth": signed,
                                            "user_data": json.dumps({"id": "u-2"})})
        error = await forger.expect("pusher:error")
        assert error["data"]["code"] == UNAUTHORIZED
        assert await forger.closed() == UNAUTHORIZED
        # signed but not a user: no id
        empty = await PusherClient.connect(r)
        await empty.send("pusher:signin", {"auth": user_auth(key, secret, empty.socket_id,
                                                             "{}"), "user_data": "{}"})
        assert (await empty.expect("pusher:error"))["data"]["code"] == UNAUTHORIZED
        assert await empty.closed() == UNAUTHORIZED


async def test_terminate_reaches_every_process(cluster_config, js):  # noqa: F811
    config, keys = cluster_config
    with servers(config, 2) as started:
        (a, _pa), (b, _pb) = started
        on_a = await sign_in(js, node(a, config), keys["pro"])
        on_b = await sign_in(js, node(b, config), keys["pro"])
        try:
            user = signed_in_id(on_a.lines)
            await sdk(js, node(a, config), {"op": "sendToUser", "userId": user,
                                            "event": "note", "data": {"x": 1}})
            for client in (on_a, on_b):  # published on A, delivered on both
                assert (await client.wait(lambda m: m["type"] == "user_event"))["data"] \
                    == {"x": 1}
            asked = time.monotonic()
            await sdk(js, node(b, config), {"op": "terminate", "userId": user})
            for client in (on_a, on_b):
                error = await client.wait(lambda m: m.get("event") == "pusher:error",
                                          timeout_s=TERMINATE_BOUND_S)
                assert error["data"]["code"] == UNAUTHORIZED
            assert time.monotonic() - asked < TERMINATE_BOUND_S
        finally:
            await on_a.stop()
            await on_b.stop()


async def test_revoking_the_key_that_signed_in_ends_the_connection(tmp_path, js):
    async with relay(tmp_path) as r:
        client = await sign_in(js, r, r.keys["pro"])
        try:
            asked = time.monotonic()
            await revoke(r, r.keys["pro"])
            error = await client.wait(lambda m: m.get("event") == "pusher:error",
                                      timeout_s=REVOKE_BOUND_S)
            assert error["data"]["code"] == UNAUTHORIZED
            assert time.monotonic() - asked < REVOKE_BOUND_S
        finally:
            await client.stop()
