"""Authorization, one test per case of the issue: a key reads only its own user's usage, a
free key reaches nothing its tier forbids, private and presence channels need a signature
made for this socket and this channel, presence `channel_data` is the server's, revoked
keys and disabled users stop everywhere within seconds (open streams included), and no
secret shows in plaintext in responses, metrics or the database.

Related cases proven elsewhere and not repeated here: logs (tests/test_logs.py), Redis key
names and values (tests/test_access.py), the key table (tests/test_keys.py), revocation
reaching another process's REST cache (tests/test_access.py). Real Redis, SQLite and
sockets throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import tornado.websocket

from btsguru.auth.access import Invalidation
from btsguru.auth.keys import key_prefix
from btsguru.config import Config
from btsguru.db import connect_database
from btsguru.db.models import ApiKey, utc_now
from btsguru.db.runner import DatabaseRunner
from btsguru.realtime.pusher_protocol import channel_auth
from btsguru.realtime.revocation import StreamRevoker
from tests.access_fixtures import Node, open_node
from tests.console_fixtures import console_app
from tests.pusher_helpers import PusherClient, realtime_auth
from tests.realtime_helpers import TIMEOUT_S, Relay, SseClient, WsClient, relay
from tests.waiting import wait_until

REVOKE_BOUND_S = 5.0  # the contract: a revoked key stops working on every process within 5 s
GAME_CHANNEL = "sports.football"


# -- helpers --

async def rest(r: Relay, path: str, key: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            r.http_url + path, headers={"X-API-Key": key}) as resp:
        return resp.status, await resp.json(content_type=None)


def app_sign(r: Relay, socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """A signature made with the app secret, as an app's own backend makes one."""
    return channel_auth(r.config.reverb_app_key, r.config.reverb_app_secret.reveal(),
                        socket_id, channel, channel_data)


async def user_id_of(r: Relay, tier: str) -> int:
    user = await r.services.users.get_by_email(f"{tier}@example.com")
    assert user is not None
    return user.id


async def revoke(r: Relay, key: str) -> None:
    """What `btsguru keys revoke` and the console do: revoke, then announce it."""
    info = await r.services.keys.revoke(key_prefix(key))
    await r.services.access.invalidate_user(info.user_id)


async def subscription_answer(client: PusherClient) -> dict[str, Any]:
    """The next subscription outcome (success or error) the client receives."""
    got = await client.recv_until(lambda m: m.get("event") in (
        "pusher_internal:subscription_succeeded", "pusher:subscription_error"))
    return got[-1]


async def ws_subscribed(r: Relay, key: str) -> WsClient:
    ws = await WsClient.connect(r.ws_url, key)
    await ws.subscribe(GAME_CHANNEL)
    await ws.recv_until(lambda m: m.get("op") == "subscribed")
    return ws


async def ws_refused_code(r: Relay, key: str) -> int | None:
    """The close code a fresh WebSocket with `key` ends with (the handshake may succeed
    and close at once, as the contract's 4001 needs)."""
    try:
        ws = await WsClient.connect(r.ws_url, key)
    except tornado.websocket.WebSocketClosedError:
        return None
    return await ws.closed()


async def stream_ended(sse: SseClient, within_s: float) -> float:
    """Read until the SSE response ends; the seconds it took (fails after `within_s`)."""
    start = time.monotonic()
    while True:
        left = within_s - (time.monotonic() - start)
        assert left > 0, f"the stream was still open after {within_s} s"
        line = await asyncio.wait_for(sse.response.content.readline(), left)
        if not line:
            return time.monotonic() - start


# -- usage belongs to its user --

async def test_a_key_cannot_read_another_users_usage(tmp_path):
    async with relay(tmp_path) as r:
        victim, intruder = r.keys["pro"], r.keys["free"]
        victim_id = await user_id_of(r, "pro")
        for _ in range(6):
            assert (await rest(r, "/v1/football/live", victim))[0] == 200
        status, own = await rest(r, "/v1/usage", victim)
        assert status == 200 and own["data"]["today"]["live"] == 6
        # every guess at naming someone else is ignored or refused, never answered
        for query in ("", f"?user_id={victim_id}", f"?key_id={victim_id}",
                      f"?user={victim_id}", "?email=pro@example.com",
                      f"?user_id={victim_id}&key_id={victim_id + 1}"):
            status, body = await rest(r, "/v1/usage" + query, intruder)
            assert status in (200, 400), (query, status)
            if status == 200:
                today = body["data"]["today"]
                assert today["live"] == 0, (query, body)
                assert all(day["by_kind"].get("live", 0) == 0 for day in body["data"]["days"])
                assert sum(day["requests"] for day in body["data"]["days"]) < 6, query


async def test_the_console_usage_page_shows_only_the_logged_in_users_usage(tmp_path):
    async with console_app(tmp_path) as c:
        owner, other = c.client(), c.client()
        await owner.signup("meter@example.com")
        _, secret = await owner.create_key("meter")
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(c.url + "/v1/sports",
                                       headers={"X-API-Key": secret}) as resp:
                    assert resp.status == 200
        owner_page = await owner.get("/console/usage", headers={"HX-Request": "true"})
        assert int(owner_page.find(r'id="today-requests">(\d+)<')) == 5
        await other.signup("peek@example.com")
        owner_user = await c.services.users.get_by_email("meter@example.com")
        assert owner_user is not None
        for query in ("", f"?user_id={owner_user.id}", f"?user={owner_user.id}",
                      "?email=meter@example.com", f"?key={secret[:12]}"):
            for headers in (None, {"HX-Request": "true"}):
                page = await other.get("/console/usage" + query, headers=headers)
                assert page.status == 200, query
                assert page.find(r'id="today-requests">(\d+)<') == "0", (query, headers)
                assert "meter@example.com" not in page.text and secret[:12] not in page.text


# -- what the free tier forbids --

async def test_a_free_key_cannot_use_the_raw_proxy(tmp_path):
    async with relay(tmp_path) as r:
        for endpoint in ("leagues", "fixtures?live=all", "status", "teams?id=33"):
            status, body = await rest(r, "/v1/football/raw/" + endpoint, r.keys["free"])
            assert (status, body["error"]["code"]) == (403, "forbidden"), endpoint
            assert "raw proxy" in body["error"]["message"]


async def test_a_free_key_cannot_authorize_private_or_presence_channels(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        for channel in ("private-sports.football", "presence-sports.football",
                        "private-sports.football.39", "presence-sports.football.39.1001"):
            for path in ("/v1/realtime/auth", "/broadcasting/auth"):
                status, body = await realtime_auth(r, r.keys["free"], client.socket_id,
                                                   channel, path=path)
                assert (status, body["error"]["code"]) == (403, "forbidden"), (channel, path)
                assert "auth" not in body
            # and without a grant, even a signature made with the app secret is refused
            data = None
            if channel.startswith("presence-"):
                data = json.dumps({"user_id": str(await user_id_of(r, "free"))})
            await client.subscribe(channel, app_sign(r, client.socket_id, channel, data), data)
            answer = await subscription_answer(client)
            assert answer["event"] == "pusher:subscription_error", channel
            assert answer["data"]["status"] == 403
        client.close()


async def test_the_native_websocket_refuses_private_and_presence_channels_with_4003(tmp_path):
    async with relay(tmp_path) as r:
        for channel in ("private-sports.football", "presence-sports.football"):
            ws = await WsClient.connect(r.ws_url, r.keys["free"])
            await ws.subscribe(channel)
            assert await ws.closed() == 4003, channel


async def test_client_events_are_refused_where_the_tier_forbids_them(tmp_path):
    async with relay(tmp_path) as r:
        name = "private-sports.football"
        tier = await r.services.tiers.get("pro")
        assert not tier.client_events  # the seeded default: only private, no client events
        client = await PusherClient.connect(r)
        status, body = await realtime_auth(r, r.keys["pro"], client.socket_id, name)
        assert status == 200
        await client.subscribe(name, body["auth"])
        assert (await subscription_answer(client))["event"] == \
            "pusher_internal:subscription_succeeded"
        listener = await PusherClient.connect(r)
        _, body = await realtime_auth(r, r.keys["pro"], listener.socket_id, name)
        await listener.subscribe(name, body["auth"])
        await subscription_answer(listener)
        await client.send("client-cheer", {"text": "goal"}, channel=name)
        error = await client.expect("pusher:error")
        assert "client event" in json.dumps(error["data"]).lower()
        await client.send("pusher:ping")
        await client.expect("pusher:pong")  # refused, not disconnected
        await listener.send("pusher:ping")
        heard = await listener.recv_until(lambda m: m.get("event") == "pusher:pong")
        assert not [m for m in heard if m.get("event") == "client-cheer"]
        client.close()
        listener.close()


# -- signatures: this socket, this channel --

async def test_a_private_channel_needs_a_valid_signature(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        name = "private-sports.football"
        good = app_sign(r, client.socket_id, name)
        key, _, digest = good.partition(":")
        for auth in ("", "nonsense", f"{key}:", f":{digest}", f"{key}:{'0' * 64}",
                     f"wrong-key:{digest}", f"{key}:{digest.upper()}", f"{key}:{digest[:-1]}",
                     f"{key}:{digest}0", good + " "):
            await client.subscribe(name, auth)
            answer = await subscription_answer(client)
            assert answer["event"] == "pusher:subscription_error", auth
            assert answer["data"]["status"] == 401, auth
        assert not r.services.hub.subscriber_count()
        client.close()


async def test_a_signature_for_another_socket_is_refused(tmp_path):
    async with relay(tmp_path) as r:
        name = "private-sports.football"
        owner, thief = await PusherClient.connect(r), await PusherClient.connect(r)
        status, body = await realtime_auth(r, r.keys["pro"], owner.socket_id, name)
        assert status == 200
        await thief.subscribe(name, body["auth"])  # replayed on another connection
        answer = await subscription_answer(thief)
        assert (answer["event"], answer["data"]["status"]) == ("pusher:subscription_error", 401)
        # the grant is the owner's socket's: the rightful subscription still works
        await owner.subscribe(name, body["auth"])
        assert (await subscription_answer(owner))["event"] == \
            "pusher_internal:subscription_succeeded"
        owner.close()
        thief.close()


async def test_a_signature_for_another_channel_is_refused(tmp_path):
    async with relay(tmp_path) as r:
        client = await PusherClient.connect(r)
        granted = "private-sports.football.39"
        status, body = await realtime_auth(r, r.keys["pro"], client.socket_id, granted)
        assert status == 200
        for other in ("private-sports.football", "private-sports.football.40",
                      "private-sports.basketball.39", "presence-sports.football.39"):
            await client.subscribe(other, body["auth"])
            answer = await subscription_answer(client)
            assert answer["event"] == "pusher:subscription_error", other
            assert answer["data"]["status"] == 401, other
        # a valid app signature for a channel this socket was never granted: still no
        # user, so no game data
        await client.subscribe("private-sports.football",
                               app_sign(r, client.socket_id, "private-sports.football"))
        assert (await subscription_answer(client))["data"]["status"] == 403
        client.close()


# -- presence channel_data is made by the server --

async def test_presence_channel_data_cannot_be_spoofed(tmp_path):
    async with relay(tmp_path) as r:
        name = "presence-sports.football"
        me = await user_id_of(r, "pro")
        victim = await user_id_of(r, "free")
        client = await PusherClient.connect(r)
        # the client's own claim in the auth request is ignored
        async with aiohttp.ClientSession() as session, session.post(
                f"{r.http_url}/v1/realtime/auth",
                data={"socket_id": client.socket_id, "channel_name": name,
                      "channel_data": json.dumps({"user_id": str(victim)}),
                      "user_id": str(victim)},
                headers={"X-API-Key": r.keys["pro"]}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert json.loads(body["channel_data"])["user_id"] == str(me)
        # channel_data edited after signing: the signature no longer matches
        forged = body["channel_data"].replace(f'"{me}"', f'"{victim}"')
        assert forged != body["channel_data"]
        await client.subscribe(name, body["auth"], forged)
        assert (await subscription_answer(client))["data"]["status"] == 401
        # even correctly signed (a leaked app secret, a buggy backend), another user's
        # channel_data on a game channel granted to this user is refused
        spoofed = json.dumps({"user_id": str(victim), "user_info": {"tier": "pro"}})
        await client.subscribe(name, app_sign(r, client.socket_id, name, spoofed), spoofed)
        answer = await subscription_answer(client)
        assert (answer["event"], answer["data"]["status"]) == ("pusher:subscription_error", 403)
        # the genuine one joins, as the user the key belongs to
        await client.subscribe(name, body["auth"], body["channel_data"])
        ok = await subscription_answer(client)
        assert json.loads(ok["data"])["presence"]["ids"] == [str(me)]
        client.close()


# -- revoked keys and disabled users stop everywhere within seconds --

async def test_a_revoked_key_is_refused_on_every_transport_at_once(tmp_path):
    async with relay(tmp_path) as r:
        key = r.keys["pro"]
        client = await PusherClient.connect(r)
        assert (await rest(r, "/v1/sports", key))[0] == 200
        await revoke(r, key)
        status, body = await rest(r, "/v1/sports", key)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        assert await ws_refused_code(r, key) == 4001
        sse = await SseClient.connect(r.http_url, key, GAME_CHANNEL, ready=False)
        assert sse.response.status == 401
        await sse.close()
        status, _ = await realtime_auth(r, key, client.socket_id, "private-sports.football")
        assert status == 401
        client.close()


async def test_an_open_websocket_of_a_revoked_key_is_closed_within_seconds(tmp_path):
    async with relay(tmp_path) as r:
        ws = await ws_subscribed(r, r.keys["pro"])
        bystander = await ws_subscribed(r, r.keys["free"])
        started = time.monotonic()
        await revoke(r, r.keys["pro"])
        assert await ws.closed(REVOKE_BOUND_S) == 4001
        assert time.monotonic() - started < REVOKE_BOUND_S
        await bystander.send({"op": "ping"})  # another user's stream is untouched
        assert (await bystander.recv_until(lambda m: m.get("op") == "pong"))[-1]["op"] == "pong"
        bystander.close()


async def test_an_open_sse_stream_of_a_revoked_key_ends_within_seconds(tmp_path):
    async with relay(tmp_path) as r:
        sse = await SseClient.connect(r.http_url, r.keys["pro"], GAME_CHANNEL)
        try:
            await revoke(r, r.keys["pro"])
            assert await stream_ended(sse, REVOKE_BOUND_S) < REVOKE_BOUND_S
            await wait_until(lambda: _no_connections(r), TIMEOUT_S)
        finally:
            await sse.close()


async def test_a_pusher_socket_on_channels_of_a_revoked_key_is_closed_within_seconds(tmp_path):
    async with relay(tmp_path) as r:
        name = "private-sports.football"
        client, public = await PusherClient.connect(r), await PusherClient.connect(r)
        status, body = await realtime_auth(r, r.keys["pro"], client.socket_id, name)
        assert status == 200
        await client.subscribe(name, body["auth"])
        assert (await subscription_answer(client))["event"] == \
            "pusher_internal:subscription_succeeded"
        await public.subscribe(GAME_CHANNEL)  # an app-key socket: no API key behind it
        await subscription_answer(public)
        started = time.monotonic()
        await revoke(r, r.keys["pro"])
        error = await client.expect("pusher:error")
        assert error["data"]["code"] == 4009 and "revoked" in error["data"]["message"]
        assert await client.closed(REVOKE_BOUND_S) == 4009
        assert time.monotonic() - started < REVOKE_BOUND_S
        # coming back with the same key gets no new grant
        again = await PusherClient.connect(r)
        status, _ = await realtime_auth(r, r.keys["pro"], again.socket_id, name)
        assert status == 401
        await public.send("pusher:ping")
        await public.expect("pusher:pong")
        public.close()
        again.close()


async def test_an_open_stream_ends_when_its_key_expires(tmp_path):
    async with relay(tmp_path) as r:
        key = r.keys["pro"]
        lifetime_s = 2.0
        await set_expiry(r, key, lifetime_s)
        ws = await ws_subscribed(r, key)
        started = time.monotonic()
        assert await ws.closed(lifetime_s + REVOKE_BOUND_S) == 4001
        assert time.monotonic() - started < lifetime_s + REVOKE_BOUND_S
        assert (await rest(r, "/v1/sports", key))[0] == 401


async def set_expiry(r: Relay, key: str, in_s: float) -> None:
    """Make `key` expire `in_s` from now (the API only sets whole days)."""
    def update() -> None:
        ApiKey.update(expires_at=utc_now() + timedelta(seconds=in_s)).where(
            ApiKey.prefix == key_prefix(key)).execute()

    await r.services.db.write(update)
    await r.services.access.invalidate_all()  # forget the cached principal


async def test_a_disabled_users_open_streams_are_closed_within_seconds(tmp_path):
    async with relay(tmp_path) as r:
        ws = await ws_subscribed(r, r.keys["pro"])
        sse = await SseClient.connect(r.http_url, r.keys["pro"], GAME_CHANNEL)
        try:
            user = await r.services.users.set_disabled("pro@example.com", True)
            await r.services.access.invalidate_user(user.id)
            assert await ws.closed(REVOKE_BOUND_S) == 4001
            assert await stream_ended(sse, REVOKE_BOUND_S) < REVOKE_BOUND_S
            assert (await rest(r, "/v1/sports", r.keys["pro"]))[0] == 401
        finally:
            await sse.close()


@contextlib.asynccontextmanager
async def other_process(config: Config) -> AsyncIterator[Node]:
    """A second "process" on the same Redis and database: its own Redis clients and
    AccessService (what `btsguru keys revoke` on another host amounts to)."""
    runner = DatabaseRunner(connect_database(config.database_url))
    node = open_node(config, runner)
    try:
        yield node
    finally:
        await node.close()
        runner.close()


async def test_a_revocation_made_by_another_process_closes_streams_here(tmp_path):
    async with relay(tmp_path) as r:
        r.services.access.start()  # this process listens to invalidations
        await asyncio.wait_for(r.services.access.listening.wait(), TIMEOUT_S)
        ws = await ws_subscribed(r, r.keys["pro"])
        async with other_process(r.config) as cli:
            info = await cli.keys.revoke(key_prefix(r.keys["pro"]))
            started = time.monotonic()
            await cli.access.invalidate_user(info.user_id)
            assert await ws.closed(REVOKE_BOUND_S) == 4001
            assert time.monotonic() - started < REVOKE_BOUND_S


async def _no_connections(r: Relay) -> bool:
    return not r.services.hub.connections


# -- secrets never in plaintext --

async def test_keys_and_passwords_never_appear_in_responses_metrics_or_the_database(tmp_path):
    """Through the console and the API, a key is shown once, at creation; afterwards no
    response, no metrics scrape and no database table holds it or the password."""
    password = "Pl41ntext-never-" + "x" * 8
    async with console_app(tmp_path) as c:
        browser = c.client()
        await browser.signup("secret@example.com", password)
        created, key = await browser.create_key("prod")
        assert key in created.text  # the one-time display
        seen: list[str] = []
        for path in ("/console/keys", "/console/usage", "/console/live", "/console/password",
                     f"/console/keys/{key[:12]}/rotate"):
            seen.append((await browser.get(path)).text)
        wrong = await browser.post("/console/password", {
            "current_password": password + "!", "new_password": password,
            "confirm_password": password})
        seen.append(wrong.text)
        login_failure = await c.client().login("secret@example.com", password + "?")
        seen.append(login_failure.text)
        async with aiohttp.ClientSession() as session:
            for path, headers, status in (
                    ("/v1/usage", {"X-API-Key": key}, 200),
                    ("/v1/sports", {"Authorization": f"Bearer {key}"}, 200),
                    ("/v1/football/raw/leagues", {"X-API-Key": key}, 403),  # free tier
                    ("/v1/usage", {"X-API-Key": key[:-2] + "zz"}, 401),
                    ("/v1/usage?api_key=" + key, {}, 401),  # query keys: streams only
                    ("/v1/stream?channels=sports.nope&api_key=" + key, {}, 400),
                    ("/openapi.json", {}, 200)):
                async with session.get(c.url + path, headers=headers) as resp:
                    assert resp.status == status, (path, resp.status)
                    seen.append(await resp.text())
                    seen.append(str(dict(resp.headers)))
            await c.services.access.usage.flush()
            async with session.get(c.url + "/metrics") as resp:  # after all of the above
                assert resp.status == 200
                metrics = await resp.text()
                assert "btsguru_" in metrics
                seen.append(metrics)
        for text in seen:
            for secret in (key, key[:-2] + "zz", password):
                assert secret not in text
        dump = sqlite_dump(c.config.database_url)
        assert "secret@example.com" in dump  # the dump did read the tables
        for secret in (key, key[len(key_prefix(key)):], password):
            assert secret not in dump


def sqlite_dump(url: str) -> str:
    """Every table of the SQLite database at `url`, as SQL text."""
    path = url.removeprefix("sqlite:///")
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


class _FakeStream:
    """Just what `StreamRevoker` reads of a connection."""

    def __init__(self, key_id: int, user_id: int) -> None:
        self.key_id, self.user_id, self.closed = key_id, user_id, False
        self.kind, self.id = "fake", key_id

    def key_ids(self) -> set[int]:
        return {self.key_id}

    def user_ids(self) -> set[int]:
        return {self.user_id}

    def revoked(self) -> None:
        self.closed = True


async def test_streams_stay_open_when_the_database_cannot_confirm_a_revocation():
    """The hot path keeps serving through a database outage (issue 10), so a re-check
    that fails closes nothing; one that answers closes exactly the revoked keys."""
    streams: list[Any] = [_FakeStream(1, 10), _FakeStream(2, 10), _FakeStream(3, 11)]

    async def database_down(ids: list[int]) -> set[int]:
        raise OSError("database unreachable")

    async def key_2_revoked(ids: list[int]) -> set[int]:
        return set(ids) - {2}

    down = StreamRevoker(lambda: streams, database_down)
    assert await down.recheck(streams) == 0
    assert not any(s.closed for s in streams)
    up = StreamRevoker(lambda: streams, key_2_revoked)
    up.invalidated(Invalidation(user_id=10))  # user 11's stream is not even re-checked
    await wait_until(lambda: _closed(streams[1]), TIMEOUT_S)
    assert [s.closed for s in streams] == [False, True, False]
    await up.close()


async def _closed(stream: _FakeStream) -> bool:
    return stream.closed
