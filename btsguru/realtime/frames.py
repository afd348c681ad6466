"""Wire encodings of events: built once per event, written to every subscriber.

Where it sits: hub -> **frames** -> transports. The bus hands the hub an event whose data
is already JSON (`BusEvent.data_json`, encoded once at publish); these functions wrap
those bytes by concatenation, so no subscriber costs a JSON encode:

- native WebSocket: the whole frame, header included. A server's frames are not masked,
  so the same bytes are valid on every connection, and `ws_frame` can build them once.
  permessage-deflate (RFC 7692) is compressed once too: a message compressed by a fresh
  compressor and ended with a sync flush references nothing sent before, which every
  receiver accepts whatever context takeover it negotiated (not using takeover is
  always the sender's choice), so one compressed frame serves every connection.
- SSE: `id:`, `event:` and one `data:` line. The data is the contract's data object with
  the `channel` the client subscribed to spliced in as its first member (an SSE client
  following a channel and its parent gets an event under both names, and must be able
  to tell them apart), again by concatenation.
"""

from __future__ import annotations

import struct
import zlib

import orjson

WS_OPCODE_TEXT = 0x1
WS_FIN = 0x80
WS_RSV1 = 0x40  # permessage-deflate: this message is compressed
DEFLATE_TRAILER = b"\x00\x00\xff\xff"  # RFC 7692 7.2.1: removed by the sender
# Smaller messages are sent as they are: deflate's block overhead eats the gain.
DEFLATE_MIN_BYTES = 128
DEFLATE_LEVEL = 6  # zlib's default: once per event, so the better ratio is worth it


def _json_str(text: str) -> bytes:
    return orjson.dumps(text)


def event_json(id: str, channel: str, event: str, data_json: bytes) -> bytes:
    """The native WebSocket's event message: `{"id","channel","event","data"}`."""
    return b"".join((b'{"id":', _json_str(id), b',"channel":', _json_str(channel),
                     b',"event":', _json_str(event), b',"data":', data_json, b"}"))


def sse_data(channel: str, data_json: bytes) -> bytes:
    """The SSE `data:` value: the event's data object with `channel` first; data that is
    not an object (a Pusher publisher's string) is wrapped as `{"channel", "data"}`."""
    name = _json_str(channel)
    if data_json == b"{}":
        return b'{"channel":' + name + b"}"
    if data_json.startswith(b"{"):
        return b'{"channel":' + name + b"," + data_json[1:]
    return b'{"channel":' + name + b',"data":' + data_json + b"}"


def sse_event(event: str, channel: str, data_json: bytes, id_line: bytes = b"") -> bytes:
    """One SSE event. `id_line` is `b"id: CURSOR\\n"` (empty: the caller prepends it)."""
    # an event name from a publisher must not break the framing; the data line is
    # JSON, which never holds a raw line break
    name = event.replace("\r", " ").replace("\n", " ").encode()
    return b"".join((id_line, b"event: ", name, b"\ndata: ", sse_data(channel, data_json),
                     b"\n\n"))


def sse_id_line(cursor: str) -> bytes:
    return b"id: " + cursor.encode() + b"\n"


def ws_frame(payload: bytes, deflate_wbits: int = 0) -> bytes:
    """A complete, unmasked WebSocket text frame of `payload`, compressed with a window
    of `deflate_wbits` bits when non-zero (and the payload is worth compressing)."""
    first = WS_FIN | WS_OPCODE_TEXT
    if deflate_wbits and len(payload) >= DEFLATE_MIN_BYTES:
        compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -deflate_wbits)
        body = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if body.endswith(DEFLATE_TRAILER):
            payload = body[:-len(DEFLATE_TRAILER)]
            first |= WS_RSV1
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload
