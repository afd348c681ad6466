"""The pure parts of real-time delivery: cursors, frames, shared reads."""

from __future__ import annotations

import asyncio
import json

import pytest

from btsguru.handlers.ws import deflate_wbits
from btsguru.realtime.catchup import SharedReads
from btsguru.realtime.cursor import (
    Cursor,
    InvalidCursor,
    encode_cursor,
    parse_cursor,
)
from btsguru.realtime.frames import event_json, sse_data, sse_event, ws_frame
from btsguru.sports import SPORTS


def test_composite_cursor_round_trip_and_plain_ids():
    positions = {"football": "1723836667000-0", "basketball": "1723836667001-3"}
    cursor = encode_cursor(positions)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert parse_cursor(cursor, SPORTS) == Cursor(positions)
    assert encode_cursor(dict(reversed(positions.items()))) == cursor  # order-free
    plain = parse_cursor("1723836667000-5", SPORTS)
    assert plain.position("hockey") == "1723836667000-5"
    assert parse_cursor(cursor, SPORTS).position("hockey") is None
    # a sport no longer relayed is dropped, not an error
    assert parse_cursor(encode_cursor({"curling": "1-0", "football": "2-0"}), SPORTS) == \
        Cursor({"football": "2-0"})


@pytest.mark.parametrize("text", ["", "x" * 2000, "not base64 !", "Zm9vYmFy",
                                  encode_cursor({"football": "abc"})])
def test_bad_cursors_are_refused(text):
    with pytest.raises(InvalidCursor):
        parse_cursor(text, SPORTS)


def test_event_frames_wrap_the_data_bytes_without_re_encoding():
    data = b'{"sport":"football","seq":3,"changes":{"home.score":1}}'
    message = json.loads(event_json("5-0", "sports.football", "game.score", data))
    assert message == {"id": "5-0", "channel": "sports.football", "event": "game.score",
                       "data": json.loads(data)}
    assert json.loads(sse_data("sports.football", data)) == {"channel": "sports.football",
                                                             **json.loads(data)}
    assert json.loads(sse_data("c", b"{}")) == {"channel": "c"}
    assert json.loads(sse_data("c", b'"text"')) == {"channel": "c", "data": "text"}
    frame = sse_event("bad\nname", "c", b"{}", b"id: X\n")
    assert frame == b'id: X\nevent: bad name\ndata: {"channel":"c"}\n\n'


@pytest.mark.parametrize("size", [10, 125, 126, 65535, 65536, 70000])
def test_ws_frame_lengths(size):
    frame = ws_frame(b"a" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == size + 2
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


@pytest.mark.parametrize(("header", "wbits"), [
    ("", 0), ("x-webkit-deflate-frame", 0), ("permessage-deflate", 15),
    ("permessage-deflate; client_max_window_bits", 15),
    ("permessage-deflate; server_max_window_bits=10", 10),
    ("permessage-deflate; server_max_window_bits=8", 0),
    ("foo, permessage-deflate; server_max_window_bits=12, permessage-deflate", 12),
])
def test_deflate_window_follows_the_accepted_offer(header, wbits):
    assert deflate_wbits(header) == wbits


async def test_shared_reads_join_only_reads_started_after_the_ticket():
    reads = SharedReads(limit=2)
    calls = []
    gate = asyncio.Event()

    async def fetch():
        calls.append(1)
        await gate.wait()
        return len(calls)

    early = reads.ticket()
    first = asyncio.ensure_future(reads.read("k", early, fetch))
    await asyncio.sleep(0)
    joined = asyncio.ensure_future(reads.read("k", early, fetch))  # entitled before it began
    late = asyncio.ensure_future(reads.read("k", reads.ticket(), fetch))  # must not join
    await asyncio.sleep(0)
    gate.set()
    assert await first == await joined
    assert await late == 2
    assert len(calls) == 2
