"""Resume cursors: where a reconnecting client left off, on every transport.

Where it sits: hub -> transports. Every event has a public id, the entry id of its
sport's history stream (`store.history`), e.g. `1723836667000-0`. Ids of one sport are
totally ordered; ids of different sports are not comparable (each stream numbers its
own entries). So a connection that follows channels of several sports resumes from one
position *per sport*, and the cursor carries them all:

    composite cursor = base64url, unpadded, of "sport=ID,sport=ID,..." (sports sorted)

    e.g. {"basketball": "1723836667001-3", "football": "1723836667000-0"}
         -> "YmFza2V0YmFsbD0xNzIzODM2NjY3MDAxLTMsZm9vdGJhbGw9MTcyMzgzNjY2NzAwMC0w"

SSE sends the composite cursor as each event's `id:`, so the browser's `Last-Event-ID`
resumes every channel of the connection at once (for a one-sport stream the cursor is
a function of the event alone, so the frame is still built once per event). The native
WebSocket sends the plain stream id in each event's `id` (a client keeps the last id per
channel) and accepts either form in `since`. A plain id given for several sports is
applied to each of them: exact for its own sport, a time cut for the others (use one
subscribe per sport, or a composite cursor, to be exact everywhere).

The base64 is not a secret or a signature: it keeps the cursor one opaque token, safe in
a header, a query string and an SSE `id:` line, and tells clients not to parse it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from btsguru.errors import BadRequest
from btsguru.store.history import STREAM_ID_RE, parse_stream_id

CURSOR_MAX_LENGTH = 1024  # five sports take about 200 characters; far more is not ours
# Redis takes each part of a stream id as an unsigned 64-bit number, and refuses a range
# that starts after the largest one; ours are millisecond times and small counters, so
# a larger part comes from no server (unchecked, Redis's refusal read as an outage).
ID_PART_LIMIT = 2**63
NO_POSITION = "0-0"  # a sport with no history yet: any event after it is new

# A stream id as a comparable pair (ms, seq).
StreamPos = tuple[int, int]


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


@dataclass(frozen=True)
class Cursor:
    """Positions to resume from: sport -> last event id seen. `everywhere` holds a plain
    id that applies to every sport (a WebSocket `since` copied from an event)."""

    positions: Mapping[str, str]
    everywhere: str | None = None

    def position(self, sport: str) -> str | None:
        return self.positions.get(sport, self.everywhere)


def encode_cursor(positions: Mapping[str, str]) -> str:
    """The composite cursor of `positions` (sport -> stream id)."""
    text = ",".join(f"{sport}={positions[sport]}" for sport in sorted(positions))
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def parse_cursor(text: str, sports: Iterable[str]) -> Cursor:
    """A cursor from a client: a plain stream id or a composite cursor. Sports that are
    not relayed are ignored (the cursor may predate a configuration change);
    `InvalidCursor` when it is neither form."""
    text = text.strip()
    if not text or len(text) > CURSOR_MAX_LENGTH:
        raise InvalidCursor("invalid cursor: empty or too long")
    if STREAM_ID_RE.match(text):
        if not _in_range(text):
            raise InvalidCursor(f"invalid cursor {text[:40]!r}: not an id of this server")
        return Cursor({}, everywhere=text)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidCursor(f"invalid cursor {text[:40]!r}: expected an event id "
                            "or a cursor from this server") from None
    relayed = set(sports)
    positions: dict[str, str] = {}
    for part in raw.split(","):
        sport, sep, id = part.partition("=")
        if not sep or not STREAM_ID_RE.match(id) or not _in_range(id):
            raise InvalidCursor(f"invalid cursor {text[:40]!r}: not a cursor from this server")
        if sport in relayed:
            positions[sport] = id
    return Cursor(positions)


def _in_range(id: str) -> bool:
    """Whether a well-formed stream id is one Redis can start a range after."""
    return all(part < ID_PART_LIMIT for part in parse_stream_id(id))


def stream_pos(id: str) -> StreamPos:
    """`id` as a comparable pair; `InvalidCursor` for anything that is not an event id."""
    try:
        return parse_stream_id(id)
    except ValueError:
        raise InvalidCursor(f"not an event id: {id[:40]!r}") from None
