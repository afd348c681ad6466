"""The Pusher endpoint with a raw WebSocket client: handshake, errors and close codes,
public, private and presence game channels, app channels, client events and the signed
HTTP API. Real Redis, SQLite and sockets; game events come from ingesting into the store."""

from __future__ import annotations

import json

from btsguru.realtime.pusher_protocol import channel_auth
from btsguru.sports.base import Phase
from tests.conftest import make_test_config
from tests.pusher_helpers import PusherClient, api, realtime_auth
from tests.realtime_helpers import relay
from tests.store_fixtures import make_game
from tests.waiting import wait_until


def sign(r, socket_id: str, channel: str, channel_data: str | None = None) -> str:
    return channel_auth(r.config.reverb_app_key, r.config.reverb_app_secret.reveal(), socket_id,
                        channel, channel_data)


async def kick_off(r, game_id: int = 1001, home: int = 0) -> None:
    await r.services.games.ingest("football", [make_game(game_id, phase=Phase.SCHEDULED)])
    await r.services.games.ingest("football", [make_game(
        game_id, phase=Phase.LIVE, code="1H", home=home, away=0, clock="1", period=1)])


# -- handshake and errors --

async def test_handshake_ping_and_malformed_messages_keep_the_socket(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        assert client.socket_id.count(".") == 1
        assert all(part.isdigit() for part in client.socket_id.split("."))
        hello = json.loads(client.received[0]["data"])
        assert hello["activity_timeout"] == 30
        await client.send("pusher:ping")
        assert await client.recv() == {"event": "pusher:pong", "data": {}}
        for bad in ("not json", '{"no": "event"}', '{"event": "pusher:nonsense", "data": {}}',
                    '{"event": "pusher:subscribe", "data": {"channel": "bad name!"}}'):
            await client.send_raw(bad)
            error = await client.recv()
            assert error["event"] == "pusher:error", (bad, error)
            assert error["data"]["code"] is None
        await client.send("pusher:ping")
        assert (await client.recv())["event"] == "pusher:pong"
        client.close()


async def test_wrong_app_key_and_bad_protocol_close_with_pusher_codes(tmp_path):
    async with relay(tmp_path) as r:
        for key, query, code in (("wrong-key", "protocol=7", 4001), (None, "client=js", 4008),
                                 (None, "protocol=99", 4007),
                                 (None, "protocol=7&version=%24%24", 4006)):
            client = await PusherClient.connect(r, key, query, established=False)
            error = await client.recv()
            assert error["event"] == "pusher:error"
            assert error["data"]["code"] == code
            assert await client.closed() == code


async def test_over_capacity_per_ip_is_4100(tmp_path):
    config = make_test_config(tmp_path, PUSHER_PUBLIC_PER_IP="2")
    async with relay(tmp_path, config) as r:
        first, second = await PusherClient.connect(r), await PusherClient.connect(r)
        third = await PusherClient.connect(r, established=False)
        error = await third.recv()
        assert (error["event"], error["data"]["code"]) == ("pusher:error", 4100)
        assert await third.closed() == 4100
        first.close()
        # the slot comes back: a retry (what pusher-js does after 4100) gets in
        await wait_until(lambda: len(r.services.hub.connections) == 1)
        again = await PusherClient.connect(r)
        again.close()
        second.close()


# -- game channels --

async def test_public_game_channel_gets_events_with_string_data(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        await client.subscribe("sports.football")
        ok = await client.recv()
        assert ok == {"event": "pusher_internal:subscription_succeeded",
                      "channel": "sports.football", "data": "{}"}
        await kick_off(r)
        started = await client.expect("game.started")
        assert started["channel"] == "sports.football"
        assert isinstance(started["data"], str)
        assert json.loads(started["data"])["game_id"] == 1001
        # idempotent resubscribe: success again, events not doubled
        await client.subscribe("sports.football")
        assert (await client.recv())["event"] == "pusher_internal:subscription_succeeded"
        await r.services.games.ingest("football", [make_game(
            1001, phase=Phase.LIVE, code="1H", home=1, away=0, clock="9", period=1)])
        got = await client.recv_until(lambda m: m["event"] == "game.score")
        assert [m["event"] for m in got].count("game.score") == 1
        await client.send("pusher:unsubscribe", {"channel": "sports.football"})
        await wait_until(lambda: r.services.hub.subscriber_count() == 0)
        client.close()


async def test_public_game_channels_can_be_closed(tmp_path):
    config = make_test_config(tmp_path, PUSHER_PUBLIC_CHANNELS="false")
    async with relay(tmp_path, config) as r:
        client = await PusherClient.connect(r)
        await client.subscribe("sports.football")
        error = await client.recv()
        assert error["event"] == "pusher:subscription_error"
        assert error["data"]["status"] == 403
        await client.subscribe("sports.notasport")
        assert (await client.recv())["data"]["status"] == 400
        client.close()


async def test_private_game_channel_needs_the_realtime_auth_endpoint(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        name = "private-sports.football"
        await client.subscribe(name, "")
        error = await client.recv()
        assert error["event"] == "pusher:subscription_error"
        assert error["data"] == {"type": "AuthError", "error": "Invalid signature", "status": 401}
        await client.subscribe(name, sign(r, client.socket_id, name)[:-2] + "00")
        assert (await client.recv())["data"]["status"] == 401
        # signed with the app secret but not through /v1/realtime/auth: no user, refused
        await client.subscribe(name, sign(r, client.socket_id, name))
        assert (await client.recv())["data"]["status"] == 403
        # the free tier has no private channels; no key at all is 401
        status, body = await realtime_auth(r, r.keys["free"], client.socket_id, name)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, _ = await realtime_auth(r, "nope", client.socket_id, name)
        assert status == 401
        status, _ = await realtime_auth(r, r.keys["pro"], client.socket_id, "private-orders")
        assert status == 403
        status, body = await realtime_auth(r, r.keys["pro"], client.socket_id, name,
                                           path="/broadcasting/auth")
        assert status == 200
        assert body["auth"] == sign(r, client.socket_id, name)
        await client.subscribe(name, body["auth"])
        assert (await client.recv())["event"] == "pusher_internal:subscription_succeeded"
        await kick_off(r)
        started = await client.expect("game.started")
        assert started["channel"] == name
        client.close()


async def test_private_game_channel_resumes_after_a_reconnect(tmp_path):
    async with relay(tmp_path) as r:
        name = "private-sports.football"
        client = await PusherClient.connect(r)
        _, body = await realtime_auth(r, r.keys["pro"], client.socket_id, name)
        await client.subscribe(name, body["auth"])
        await client.expect("pusher_internal:subscription_succeeded")
        await kick_off(r)
        await client.expect("game.started")
        client.close()
        await wait_until(lambda: not r.services.hub.connections)
        await wait_until(lambda: not r.services.pusher._cleanups)
        # missed while away
        await r.services.games.ingest("football", [make_game(
            1001, phase=Phase.LIVE, code="1H", home=1, away=0, clock="9", period=1)])
        back = await PusherClient.connect(r)
        _, body = await realtime_auth(r, r.keys["pro"], back.socket_id, name)
        await back.subscribe(name, body["auth"])
        await back.expect("pusher_internal:subscription_succeeded")
        score = await back.expect("game.score")
        assert json.loads(score["data"])["changes"]["home.score"] == 1
        back.close()


async def test_presence_game_channel_carries_the_users_id(tmp_path):
    async with relay(tmp_path) as r:
        name = "presence-sports.football"
        client = await PusherClient.connect(r)
        status, body = await realtime_auth(r, r.keys["pro"], client.socket_id, name)
        assert status == 200
        member = json.loads(body["channel_data"])
        user_id = str(member["user_id"])
        await client.subscribe(name, body["auth"], body["channel_data"])
        ok = await client.expect("pusher_internal:subscription_succeeded")
        presence = json.loads(ok["data"])["presence"]
        assert presence["ids"] == [user_id] and presence["count"] == 1
        # a client cannot swap in another user: the signature covers channel_data
        other = await PusherClient.connect(r)
        _, body2 = await realtime_auth(r, r.keys["pro"], other.socket_id, name)
        await other.subscribe(name, body2["auth"], body2["channel_data"].replace(
            user_id, user_id + "9"))
        assert (await other.recv())["data"]["status"] == 401
        client.close()
        other.close()


# -- app channels, presence and client events --

async def test_app_presence_members_and_client_events(tmp_path):
    async with relay(tmp_path) as r:
        name = "presence-room-1"
        a, b, a2 = (await PusherClient.connect(r), await PusherClient.connect(r),
                    await PusherClient.connect(r))
        data_a = json.dumps({"user_id": "u-1", "user_info": {"name": "Ana"}})
        data_b = json.dumps({"user_id": "u-2", "user_info": {"name": "Bo"}})
        await a.subscribe(name, sign(r, a.socket_id, name, data_a), data_a)
        first = json.loads((await a.expect("pusher_internal:subscription_succeeded"))["data"])
        assert first["presence"] == {"ids": ["u-1"], "hash": {"u-1": {"name": "Ana"}},
                                     "count": 1}
        await b.subscribe(name, sign(r, b.socket_id, name, data_b), data_b)
        second = json.loads((await b.expect("pusher_internal:subscription_succeeded"))["data"])
        assert sorted(second["presence"]["ids"]) == ["u-1", "u-2"]
        added = await a.expect("pusher_internal:member_added")
        assert json.loads(added["data"]) == {"user_id": "u-2", "user_info": {"name": "Bo"}}
        # a second socket of u-1: no member_added for anyone
        await a2.subscribe(name, sign(r, a2.socket_id, name, data_a), data_a)
        await a2.expect("pusher_internal:subscription_succeeded")
        # client events: relayed to the others with the sender's user_id, not echoed
        await b.send("client-typing", {"who": "u-2"}, channel=name)
        typing = await a.expect("client-typing")
        assert typing == {"event": "client-typing", "channel": name, "data": {"who": "u-2"},
                          "user_id": "u-2"}
        # u-1 closing one of two sockets: nobody is told; the last one: member_removed
        a2.close()
        a.close()
        removed = await b.expect("pusher_internal:member_removed")
        assert json.loads(removed["data"]) == {"user_id": "u-1"}
        assert not [m for m in b.received if m["event"] == "pusher_internal:member_added"]
        assert not [m for m in b.received if m["event"] == "client-typing"]
        b.close()


async def test_client_events_rules(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        await client.subscribe("orders")
        await client.expect("pusher_internal:subscription_succeeded")
        await client.send("client-x", {}, channel="orders")  # public: refused
        assert (await client.expect("pusher:error"))["data"]["code"] is None
        await client.send("client-x", {}, channel="private-nowhere")  # not subscribed
        assert (await client.expect("pusher:error"))["data"]["code"] is None
        name = "private-orders"
        await client.subscribe(name, sign(r, client.socket_id, name))
        await client.expect("pusher_internal:subscription_succeeded")
        for _ in range(12):
            await client.send("client-x", {"n": 1}, channel=name)
        error = await client.expect("pusher:error")
        assert error["data"]["code"] == 4301
        await client.send("pusher:ping")  # still open
        await client.expect("pusher:pong")
        client.close()


# -- the HTTP API --

async def test_http_api_publishes_and_checks_signatures(tmp_path):
    async with relay(tmp_path) as r:
        app = f"/apps/{r.config.reverb_app_id}"
        client = await PusherClient.connect(r)
        await client.subscribe("orders")
        await client.expect("pusher_internal:subscription_succeeded")
        await client.subscribe("sports.football")
        await client.expect("pusher_internal:subscription_succeeded")
        status, body = await api(r, "POST", app + "/events", {
            "name": "order.shipped", "channels": ["orders"], "data": '{"id":7}'})
        assert (status, body) == (200, {})
        shipped = await client.expect("order.shipped")
        assert shipped == {"event": "order.shipped", "channel": "orders", "data": '{"id":7}'}
        # to a game channel: through the history, to every transport
        status, _ = await api(r, "POST", app + "/batch_events", {"batch": [
            {"name": "promo", "channel": "sports.football", "data": '{"text":"hi"}'}]})
        assert status == 200
        promo = await client.expect("promo", "sports.football")
        assert json.loads(promo["data"]) == {"text": "hi"}
        # wrong secret, stale timestamp, tampered body, unknown app
        payload = {"name": "x", "channel": "orders", "data": "{}"}
        assert (await api(r, "POST", app + "/events", payload, secret="nope"))[0] == 401
        assert (await api(r, "POST", app + "/events", payload, timestamp=1000))[0] == 401
        assert (await api(r, "POST", "/apps/other/events", payload))[0] == 404
        # idempotency key: the retry is not published twice
        for _ in range(2):
            status, _ = await api(r, "POST", app + "/events", {
                "name": "once", "channel": "orders", "data": "1"},
                headers={"Idempotency-Key": "abc-1"})
            assert status == 200
        await api(r, "POST", app + "/events", {"name": "marker", "channel": "orders",
                                                "data": "2"})
        await client.expect("marker")
        assert [m["event"] for m in client.received].count("once") == 1
        # too big, and queries
        status, _ = await api(r, "POST", app + "/events", {"name": "big", "channel": "orders",
                                                           "data": "x" * 11000})
        assert status == 413
        status, body = await api(r, "GET", app + "/channels",
                                 params={"info": "subscription_count"})
        assert status == 200
        assert body["channels"]["orders"] == {"subscription_count": 1}
        status, body = await api(r, "GET", app + "/channels/orders",
                                 params={"info": "subscription_count"})
        assert body == {"occupied": True, "subscription_count": 1}
        status, _ = await api(r, "GET", app + "/channels/orders/users")
        assert status == 400
        client.close()


async def test_http_api_presence_users(tmp_path):
    async with relay(tmp_path) as r:
        app = f"/apps/{r.config.reverb_app_id}"
        name = "presence-room-9"
        client = await PusherClient.connect(r)
        data = json.dumps({"user_id": "u-9"})
        await client.subscribe(name, sign(r, client.socket_id, name, data), data)
        await client.expect("pusher_internal:subscription_succeeded")
        status, body = await api(r, "GET", f"{app}/channels/{name}/users")
        assert (status, body) == (200, {"users": [{"id": "u-9"}]})
        status, body = await api(r, "GET", app + "/channels",
                                 params={"filter_by_prefix": "presence-", "info": "user_count"})
        assert body == {"channels": {name: {"user_count": 1}}}
        client.close()
