"""The hub, the native WebSocket and SSE end to end in one process: real Redis (the bus and
the history), SQLite, real sockets. Events are published by ingesting games into the
store, as the pollers do."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import aiohttp
import pytest
import redis.asyncio as aioredis
import tornado.websocket

from btsguru.realtime import connection as connection_module
from btsguru.sports.base import Game, Phase
from btsguru.store.history import EventHistory
from tests.realtime_helpers import (
    TIMEOUT_S,
    RawWsClient,
    SseClient,
    WsClient,
    cursor_positions,
    events,
    relay,
)
from tests.store_fixtures import goal, make_game
from tests.waiting import wait_until


def match(game_id: int = 1001, league: int = 39, sport: str = "football") -> list[Game]:
    """A match from kick-off to full time, with a clock tick that must not be broadcast."""
    def at(phase: Phase, code: str, home: int | None, away: int | None, clock: str | None,
           period: int | None, goals: tuple = ()) -> Game:
        return make_game(game_id, sport=sport, league=league, phase=phase, code=code,
                         home=home, away=away, clock=clock, period=period, events=goals)

    first, second = (goal(23),), (goal(23), goal(70, team_id=36, player="A. Visitor"))
    return [
        at(Phase.SCHEDULED, "NS", None, None, None, None),
        at(Phase.LIVE, "1H", 0, 0, "1", 1),
        at(Phase.LIVE, "1H", 1, 0, "23", 1, first),
        at(Phase.LIVE, "1H", 1, 0, "24", 1, first),  # the clock alone: no event
        at(Phase.BREAK, "HT", 1, 0, "45", 1, first),
        at(Phase.LIVE, "2H", 1, 0, "46", 2, first),
        at(Phase.LIVE, "2H", 1, 1, "70", 2, second),
        at(Phase.FINISHED, "FT", 1, 1, "90", 2, second),
    ]


async def play(r, games: list[Game], sport: str = "football") -> int:
    """Ingest each state in turn; the number of events broadcast."""
    total = 0
    for game in games:
        total += (await r.services.games.ingest(sport, [game])).events
    return total


def finished(message) -> bool:
    return message.get("event") == "game.finished"


# -- delivery --

async def test_a_sport_subscriber_gets_every_event_of_a_match_in_seq_order(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football")
        assert await ws.recv() == {"op": "subscribed", "channel": "sports.football",
                                   "recovered": False}
        published = await play(r, match())
        got = events(await ws.recv_until(finished))
        assert [e["data"]["seq"] for e in got] == list(range(1, published + 1))
        assert published >= 7  # started, score+event, status x2, score+event, finished
        assert {e["channel"] for e in got} == {"sports.football"}
        ids = [tuple(map(int, e["id"].split("-"))) for e in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        names = [e["event"] for e in got]
        assert names[0] == "game.started" and names[-1] == "game.finished"
        assert names.count("game.event") == 2 and names.count("game.score") == 2
        status = [e for e in got if e["event"] == "game.status"]
        assert status and all("status.server_time" in e["data"]["changes"] for e in status)
        # the clock tick was stored, not broadcast
        stored = await r.services.games.get("football", 1001)
        assert stored is not None and stored.seq == published
        ws.close()


async def test_game_channel_starts_with_a_snapshot_and_parents_get_their_own_copy(tmp_path):
    async with relay(tmp_path) as r:
        states = match()
        await play(r, states[:3])
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football.39.1001", "sports.football.39")
        first = await ws.recv_until(lambda m: m.get("event") == "game.snapshot")
        assert [m.get("op") for m in first[:2]] == ["subscribed", "subscribed"]
        snapshot = first[-1]
        assert snapshot["channel"] == "sports.football.39.1001"
        assert snapshot["data"]["home"]["score"] == 1 and snapshot["data"]["seq"] == 3
        await play(r, states[3:5])
        got = events(await ws.recv_until(
            lambda m: m.get("event") == "game.status" and m["channel"] == "sports.football.39"))
        by_channel = {}
        for e in got:
            by_channel.setdefault(e["channel"], []).append((e["id"], e["data"]["seq"]))
        assert by_channel["sports.football.39.1001"] == by_channel["sports.football.39"]
        assert [seq for _id, seq in by_channel["sports.football.39"]] == [4]
        # a game of another league reaches neither channel
        await play(r, [make_game(2002, league=140, phase=Phase.LIVE, code="1H", home=0,
                                 away=0, clock="1", period=1)])
        await ws.send({"op": "ping"})
        assert await ws.recv_until(lambda m: m.get("op") == "pong") == [{"op": "pong"}]
        ws.close()


async def test_sse_headers_retry_and_a_stream_of_events(tmp_path):
    async with relay(tmp_path) as r:
        sse = await SseClient.connect(r.http_url, r.keys["pro"], "sports.football")
        headers = sse.response.headers
        assert sse.response.status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        assert headers["X-Accel-Buffering"] == "no"
        assert "no-cache" in headers["Cache-Control"]
        assert sse.retry_ms is not None and 3000 <= sse.retry_ms < 7000
        published = await play(r, match())
        got = await sse.events_until(finished)
        assert [e["data"]["seq"] for e in got] == list(range(1, published + 1))
        assert all(e["data"]["channel"] == "sports.football" for e in got)
        assert cursor_positions(got[-1]["id"]).keys() == {"football"}
        await sse.close()


async def test_sse_sends_a_heartbeat_comment_when_quiet(tmp_path, monkeypatch):
    from btsguru.handlers.sse import SSE_HEARTBEAT_S, SseConnection

    assert SSE_HEARTBEAT_S <= 15  # the contract's bound
    monkeypatch.setattr(SseConnection, "heartbeat_s", 0.2)
    async with relay(tmp_path) as r:
        sse = await SseClient.connect(r.http_url, r.keys["pro"], "sports.football")
        line = b""
        while line != b": hb\n":
            line = await asyncio.wait_for(sse.response.content.readline(), 5)
        await sse.close()


# -- resume --

async def test_ws_resume_after_a_drop_has_no_gap_and_no_duplicate(tmp_path):
    async with relay(tmp_path) as r:
        states = match()
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football")
        await ws.recv()
        await play(r, states[:3])
        before = events(await ws.recv_until(lambda m: m.get("event") == "game.event"))
        ws.close()
        missed = await play(r, states[3:6])
        again = await WsClient.connect(r.ws_url, r.keys["pro"])
        await again.subscribe("sports.football", since=before[-1]["id"])
        assert await again.recv() == {"op": "subscribed", "channel": "sports.football",
                                      "recovered": True}
        await play(r, states[6:])
        after = events(await again.recv_until(finished))
        seqs = [e["data"]["seq"] for e in before + after]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(after) > missed
        again.close()


async def test_sse_resume_of_several_sports_with_one_cursor(tmp_path):
    async with relay(tmp_path) as r:
        football, basketball = match(), match(5005, league=12, sport="basketball")
        await play(r, football[:2])  # history exists before the stream starts
        sse = await SseClient.connect(r.http_url, r.keys["pro"],
                                      "sports.football,sports.basketball.12")
        await play(r, football[2:3])
        await play(r, basketball[:3], "basketball")
        got = await sse.events_until(lambda e: e["event"] == "game.event"
                                     and e["data"]["sport"] == "basketball")
        cursor = got[-1]["id"]
        assert cursor_positions(cursor).keys() == {"football", "basketball"}
        await sse.close()
        await play(r, football[3:5])
        await play(r, basketball[3:5], "basketball")
        # the browser reconnects with Last-Event-ID: both sports resume from the one cursor
        back = await SseClient.connect(r.http_url, r.keys["pro"],
                                       "sports.football,sports.basketball.12",
                                       last_event_id=cursor)
        await play(r, football[5:])
        await play(r, basketball[5:], "basketball")
        rest = []
        while not {"football", "basketball"} <= {e["data"]["sport"] for e in rest
                                                 if e["event"] == "game.finished"}:
            rest.append(await back.next_event())
        for sport in ("football", "basketball"):
            seqs = [e["data"]["seq"] for e in got + rest if e["data"]["sport"] == sport]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (sport, seqs)
        assert next(e for e in got if e["data"]["sport"] == "basketball")["data"]["seq"] == 1
        assert not [e for e in rest if e["event"] == "game.snapshot"]
        await back.close()


async def test_a_cursor_older_than_the_window_gets_a_snapshot(tmp_path):
    async with relay(tmp_path) as r:
        await play(r, match()[:3])
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football.39.1001", "sports.football", since="1-0")
        got = await ws.recv_until(lambda m: m.get("event") == "game.snapshot"
                                  and m["channel"] == "sports.football")
        assert {m["channel"]: m["recovered"] for m in got if m.get("op")} == {
            "sports.football.39.1001": False, "sports.football": False}
        snaps = [m for m in got if m.get("event") == "game.snapshot"]
        assert {m["channel"] for m in snaps} == {"sports.football.39.1001", "sports.football"}
        assert all(m["data"]["home"]["score"] == 1 for m in snaps)
        ws.close()
        # SSE: an unreadable Last-Event-ID is treated the same way
        sse = await SseClient.connect(r.http_url, r.keys["pro"], "sports.football.39.1001",
                                      last_event_id="not-a-cursor")
        first = await sse.next_event()
        assert first["event"] == "game.snapshot" and first["data"]["seq"] == 3
        await sse.close()


# -- slow consumers --

async def test_a_slow_consumer_is_snapshotted_without_slowing_the_fast_one(tmp_path, monkeypatch):
    monkeypatch.setattr(connection_module, "MAX_QUEUE_BYTES", 64 * 1024)
    async with relay(tmp_path) as r:
        await play(r, match()[:2])
        fast = await WsClient.connect(r.ws_url, r.keys["pro"])
        await fast.subscribe("sports.football.39.1001")
        await fast.recv_until(lambda m: m.get("event") == "game.snapshot")
        slow = await asyncio.to_thread(RawWsClient, r.port, f"/v1/ws?api_key={r.keys['pro']}")
        slow.send_text(json.dumps({"op": "subscribe", "channels": ["sports.football.39.1001"]}))
        await asyncio.to_thread(slow.read_messages, lambda m: m.get("event") == "game.snapshot")
        history = EventHistory(r.services.redis, r.services.bus)
        big = {"blob": "x" * 20_000}
        count = 300  # 6 MB: far more than the socket buffers and the queue hold
        start = time.monotonic()
        got = []
        for n in range(count):  # in step with the fast reader, which never falls behind
            await history.append("football", "game.updated", "sports.football.39.1001",
                                 {**big, "n": n})
            got += events(await fast.recv_until(lambda m, n=n: m.get("data", {}).get("n") == n))
        fast_s = time.monotonic() - start
        assert [e["data"]["n"] for e in got] == list(range(count))
        assert fast_s < 10
        assert not [c for c in r.services.hub.connections.values() if c.closed]
        await play(r, match()[3:5])  # a game change while the slow one is behind
        # the slow client reads at last: some events, then a fresh snapshot (with that
        # change in it), then live events again, the next seq first
        seen = await asyncio.to_thread(
            slow.read_messages, lambda m: m.get("event") == "game.snapshot", 30)
        numbers = [m["data"]["n"] for m in seen if m.get("event") == "game.updated"]
        assert numbers == list(range(len(numbers))) and len(numbers) < count
        snapshot = seen[-1]["data"]
        assert snapshot["seq"] == 4 and snapshot["status"]["code"] == "HT"
        await play(r, match()[5:6])
        live = await asyncio.to_thread(slow.read_messages, lambda m: "event" in m)
        assert live[-1]["event"] == "game.status" and live[-1]["data"]["seq"] == 5
        slow.close()
        fast.close()


async def test_a_client_that_stops_reading_for_good_is_closed_4010(tmp_path, monkeypatch):
    monkeypatch.setattr(connection_module, "MAX_QUEUE_BYTES", 64 * 1024)
    monkeypatch.setattr(connection_module, "MAX_LAGS", 0)
    async with relay(tmp_path) as r:
        slow = await asyncio.to_thread(RawWsClient, r.port, f"/v1/ws?api_key={r.keys['pro']}")
        slow.send_text(json.dumps({"op": "subscribe", "channels": ["sports.football"]}))
        await asyncio.to_thread(slow.read_messages, lambda m: m.get("op") == "subscribed")
        (conn,) = r.services.hub.connections.values()
        history = EventHistory(r.services.redis, r.services.bus)
        for n in range(300):
            await history.append("football", "game.updated", "sports.football.39.1001",
                                 {"blob": "x" * 20_000, "n": n})
            if conn.closed:
                break
        await wait_until(lambda: conn.closed, timeout_s=10)
        # what the socket already held arrives, then the close frame

        def close_code() -> int | None:
            try:
                slow.read_messages(lambda m: False, 4)
            except EOFError as exc:
                return exc.args[0] if exc.args else None
            return None

        assert await asyncio.to_thread(close_code) == 4010
        slow.close()


# -- bad input and limits --

async def test_bad_messages_get_an_error_and_the_connection_stays_open(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        for message, code in [("{not json", "invalid_json"), ('"a string"', "bad_request"),
                              ({"op": "dance"}, "unknown_op"),
                              ({"op": "subscribe", "channels": "sports.football"},
                               "invalid_message"),
                              ({"op": "subscribe", "channels": ["sports.football"],
                                "since": "garbage"}, "invalid_cursor")]:
            await ws.send(message)
            reply = await ws.recv()
            assert reply["op"] == "error" and reply["code"] == code, (message, reply)
            assert reply["message"]
        await ws.send({"op": "ping"})
        assert await ws.recv() == {"op": "pong"}
        ws.close()


@pytest.mark.parametrize("channel", ["sports.curling", "private-sports.football",
                                     "sports.football.0", "presence-x"])
async def test_an_invalid_channel_closes_4003(tmp_path, channel):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.football", channel)
        reply = await ws.recv()
        assert reply["op"] == "error" and reply["code"] == "invalid_channel"
        assert await ws.closed() == 4003
        # nothing was subscribed on its behalf
        assert r.services.hub.subscriber_count() == 0


async def test_oversized_frames_close_1009_and_floods_4029(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.send({"op": "ping", "pad": "x" * (64 * 1024)})
        assert await ws.closed() == 1009
        flood = await WsClient.connect(r.ws_url, r.keys["free"])  # 5 messages/s, burst 10
        for _ in range(40):
            await flood.send({"op": "ping"})
        got = []
        while (message := await flood.recv()) is not None:
            got.append(message)
        assert flood.close_code == 4029
        assert got[-1]["code"] == "rate_limited"
        assert 1 <= got.count({"op": "pong"}) <= 12
        # the flood hurt nobody else
        other = await WsClient.connect(r.ws_url, r.keys["pro"])
        await other.send({"op": "ping"})
        assert await other.recv() == {"op": "pong"}
        other.close()


async def test_bad_keys_and_tier_limits(tmp_path):
    async with relay(tmp_path) as r:
        for key in (None, "bts_nonsense"):
            ws = await WsClient.connect(r.ws_url, key)
            assert await ws.closed() == 4001
        # free tier: 10 subscriptions per connection
        ws = await WsClient.connect(r.ws_url, r.keys["free"])
        await ws.subscribe(*(f"sports.football.{n}" for n in range(1, 11)))
        await ws.recv_until(lambda m: m.get("channel") == "sports.football.10")
        await ws.subscribe("sports.football.11")
        reply = await ws.recv()
        assert reply["code"] == "too_many_subscriptions"
        assert await ws.closed() == 4009
        # free tier: 2 concurrent streams, WebSocket and SSE together
        first = await WsClient.connect(r.ws_url, r.keys["free"])
        second = await SseClient.connect(r.http_url, r.keys["free"], "sports.football")
        third = await WsClient.connect(r.ws_url, r.keys["free"])
        assert await third.closed() == 4008
        sse = await SseClient.connect(r.http_url, r.keys["free"], "sports.football")
        assert sse.response.status == 429
        assert (await sse.response.json())["error"]["code"] == "too_many_connections"
        await sse.close()
        await second.close()  # a slot comes back when a stream ends
        await wait_until(lambda: r.services.hub.slots.local[_user(r, "free")] == 1)
        fourth = await WsClient.connect(r.ws_url, r.keys["free"])
        await fourth.send({"op": "ping"})
        assert await fourth.recv() == {"op": "pong"}
        first.close()
        fourth.close()


def _user(r, tier: str) -> int:
    return next(c.user_id for c in r.services.hub.connections.values()
                if c.principal.tier.name == tier)


async def test_sse_errors_are_json_before_the_stream_starts(tmp_path):
    async with relay(tmp_path) as r:
        for key, channels, status, code in [
            ("bts_nonsense", "sports.football", 401, "unauthorized"),
            (r.keys["pro"], "", 400, "bad_request"),
            (r.keys["pro"], "sports.football,sports.curling", 400, "invalid_channel"),
            (r.keys["free"], ",".join(f"sports.football.{n}" for n in range(1, 12)), 403,
             "too_many_subscriptions"),
        ]:
            sse = await SseClient.connect(r.http_url, key, channels)
            assert sse.response.status == status, (channels, status)
            assert (await sse.response.json())["error"]["code"] == code
            await sse.close()


# -- transport details --

async def test_permessage_deflate_frames_are_shared_and_decode(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"], compression_options={})
        assert ws.conn.headers.get("Sec-WebSocket-Extensions", "").startswith(
            "permessage-deflate")
        plain = await WsClient.connect(r.ws_url, r.keys["pro"])
        for client in (ws, plain):
            await client.subscribe("sports.football")
            await client.recv()
        published = await play(r, match())
        zipped = events(await ws.recv_until(finished))
        assert zipped == events(await plain.recv_until(finished))
        assert len(zipped) == published
        ws.close()
        plain.close()


async def test_dead_peers_are_found_by_pings(tmp_path):
    async with relay(tmp_path, websocket_ping_interval=0.2, websocket_ping_timeout=0.2) as r:
        silent = await asyncio.to_thread(RawWsClient, r.port, f"/v1/ws?api_key={r.keys['pro']}")
        await wait_until(lambda: len(r.services.hub.connections) == 1)
        # it never reads, so it never answers a ping: the server lets it go (after the
        # ping timeout and Tornado's 5 s wait for a close handshake)
        await wait_until(lambda: not r.services.hub.connections, timeout_s=10)
        silent.close()


async def test_the_bus_carries_only_the_channels_clients_use(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.subscribe("sports.hockey.57")
        await ws.recv()
        assert r.services.hub.bus_channels() == ["sports.hockey.57"]
        client = aioredis.Redis(host="127.0.0.1", port=6379)
        try:
            prefix = r.config.redis_cache_prefix
            patterns = await client.pubsub_numpat()
            channels = await client.pubsub_channels(prefix + "bus:games:*")
            assert [c.decode() for c in channels] == [prefix + "bus:games:hockey:57"]
            assert patterns >= 1
        finally:
            await client.aclose()
        ws.close()


async def test_shutdown_tells_clients_to_reconnect(tmp_path):
    async with relay(tmp_path) as r:
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        await ws.send({"op": "ping"})
        await ws.recv()
        sse = await SseClient.connect(r.http_url, r.keys["pro"], "sports.football")
        drained = asyncio.ensure_future(r.services.hub.drain())
        assert await ws.closed() == 1012
        assert await sse.next_event() is None  # the response ended: EventSource reconnects
        await drained
        assert not r.services.hub.connections
        refused = await WsClient.connect(r.ws_url, r.keys["pro"])
        assert await refused.closed() == 1012
        await sse.close()


def test_deflate_frame_round_trip():
    from btsguru.realtime.frames import ws_frame

    payload = json.dumps({"data": "y" * 500}).encode()
    frame = ws_frame(payload, 15)
    assert frame[0] == 0xC1  # FIN, RSV1 (compressed), text
    body = frame[4:] if frame[1] == 126 else frame[2:]
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(body + b"\x00\x00\xff\xff") == payload
    assert ws_frame(b'{"op":"pong"}', 15)[0] == 0x81  # too small to be worth it
    _ = tornado.websocket  # the client side of these tests


async def test_live_peers_are_pinged_and_kept(tmp_path):
    async with relay(tmp_path, websocket_ping_interval=0.2, websocket_ping_timeout=0.5) as r, \
            aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{r.ws_url}?api_key={r.keys['pro']}", autoping=False)
        pings = 0
        while pings < 3:  # the hub pings once a tick: a few seconds
            message = await ws.receive(timeout=TIMEOUT_S)
            assert message.type == aiohttp.WSMsgType.PING, message
            pings += 1
            await ws.pong(message.data)
        assert len(r.services.hub.connections) == 1
        await ws.send_str('{"op": "ping"}')
        message = await ws.receive(timeout=TIMEOUT_S)
        assert json.loads(message.data) == {"op": "pong"}
        await ws.close()


async def test_a_connection_that_talks_is_not_pinged(tmp_path):
    async with relay(tmp_path, websocket_ping_interval=0.5, websocket_ping_timeout=0.5) as r, \
            aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{r.ws_url}?api_key={r.keys['pro']}", autoping=False)
        kinds = set()
        for _ in range(25):  # 2.5 s: several ticks and ping intervals
            await ws.send_str('{"op": "ping"}')
            message = await ws.receive(timeout=TIMEOUT_S)
            kinds.add(message.type if message.type != aiohttp.WSMsgType.TEXT
                      else json.loads(message.data)["op"])
            await asyncio.sleep(0.1)
        assert kinds == {"pong"}
        await ws.close()


async def test_a_drain_gives_the_slots_back_before_it_tells_clients_to_go(tmp_path):
    """A client at its tier's stream limit that is told to reconnect (1012) must find its
    slot free on the next process, not be refused as over the limit (4008)."""
    async with relay(tmp_path) as r:
        hub = r.services.hub
        ws = await WsClient.connect(r.ws_url, r.keys["free"])
        await ws.subscribe("sports.football")
        assert (await ws.recv())["op"] == "subscribed"
        assert sum(hub.slots.local.values()) == 1
        held_at_close: list[int] = []
        for conn in list(hub.connections.values()):
            close = conn.close

            def spy(code: int, reason: str, close=close) -> None:
                held_at_close.append(sum(hub.slots.local.values()))
                close(code, reason)

            conn.close = spy  # type: ignore[method-assign]
        await hub.drain()
        assert held_at_close == [0]
        assert await ws.closed() == 1012
        user = await r.services.users.get_by_email("free@example.com")
        assert user is not None
        assert await r.services.redis.reverb.hgetall(hub.slots._user_key(user.id)) == {}
