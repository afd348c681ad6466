"""Pusher keepalive (PUSHER.md section 3) with a raw WebSocket client and timeouts of a
second: the server pings a silent client with `pusher:ping`, a `pusher:pong` (or any other
frame) keeps it open, and no answer within the pong timeout gets error 4201 and close 4201."""

from __future__ import annotations

import json
import time

from btsguru.realtime.pusher_protocol import PONG_NOT_RECEIVED
from tests.pusher_helpers import PusherClient
from tests.realtime_helpers import relay

ACTIVITY_S = 1.0
PONG_S = 1.0
SLACK_S = 1.5  # timer and scheduling jitter on a busy test machine


async def test_a_silent_client_is_pinged_and_closed_4201_without_a_pong(tmp_path):
    async with relay(tmp_path, pusher_activity_timeout=ACTIVITY_S,
                     pusher_pong_timeout=PONG_S) as r:
        client = await PusherClient.connect(r)
        connected_at = time.monotonic()
        assert json.loads(client.received[0]["data"])["activity_timeout"] == 1
        # silent for the activity timeout: pinged, not before
        ping = await client.recv(ACTIVITY_S + SLACK_S)
        assert ping == {"event": "pusher:ping", "data": {}}
        assert time.monotonic() - connected_at >= ACTIVITY_S * 0.9
        # answering keeps the socket: the next ping comes a whole activity timeout later
        await client.send("pusher:pong")
        ponged_at = time.monotonic()
        assert await client.recv(ACTIVITY_S + SLACK_S) == {"event": "pusher:ping", "data": {}}
        assert time.monotonic() - ponged_at >= ACTIVITY_S * 0.9
        # no answer this time: error 4201, then the close with 4201 (reconnect at once)
        pinged_at = time.monotonic()
        error = await client.recv(PONG_S + SLACK_S)
        assert error is not None and error["event"] == "pusher:error"
        assert error["data"]["code"] == PONG_NOT_RECEIVED
        assert await client.closed(SLACK_S) == PONG_NOT_RECEIVED
        assert time.monotonic() - pinged_at >= PONG_S * 0.9


async def test_client_traffic_counts_as_activity(tmp_path):
    async with relay(tmp_path, pusher_activity_timeout=ACTIVITY_S,
                     pusher_pong_timeout=PONG_S) as r:
        client = await PusherClient.connect(r)
        # a client heard from more often than the activity timeout is never pinged, and
        # WebSocket control frames count as much as messages
        deadline = time.monotonic() + 3 * (ACTIVITY_S + PONG_S)
        while time.monotonic() < deadline:
            client.conn.ping(b"")
            assert await _quiet(client, ACTIVITY_S / 3)
        await client.send("pusher:ping")
        assert await client.recv() == {"event": "pusher:pong", "data": {}}
        assert [m for m in client.received if m["event"] == "pusher:ping"] == []
        assert client.conn.close_code is None
        client.close()


async def _quiet(client: PusherClient, for_s: float) -> bool:
    """True when nothing arrives for `for_s` seconds."""
    try:
        message = await client.recv(for_s)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected {message}")
