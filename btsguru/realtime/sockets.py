"""Writing a frame to a Tornado stream without the stream's per-write bookkeeping.

Where it sits: connection -> **sockets** -> the kernel.

`IOStream.write` makes a `Future` per call, with a done callback, and resolves it
through the loop once the bytes are out: for a fan-out to thousands of sockets that is
thousands of futures and loop callbacks per event, several times the cost of the
`send` itself. `send_now` hands the bytes to the socket directly when the stream has
nothing waiting (the common case: a client that keeps up), and falls back to
`IOStream.write` for whatever the kernel does not take at once, so the stream's own
ordering and flow control apply from there on. Tornado writes pings, pongs and close
frames through the same stream, and a direct send happens only while its buffer is
empty, so no bytes are ever reordered.
"""

from __future__ import annotations

import contextlib
import socket
from asyncio import Future
from typing import Any

from tornado.iostream import IOStream, StreamClosedError


class _SmallQueue(list[Any]):
    """A list that answers to what `IOStream` asks of its deques."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


# Transmitted bytes unacknowledged this long: the kernel drops the connection. Finds a
# dead peer while events flow (pings then are not needed; see handlers.ws).
USER_TIMEOUT_S = 40.0


def stream_for_streaming(stream: IOStream, user_timeout_s: float = USER_TIMEOUT_S) -> None:
    """Set an admitted stream connection up: no Nagle delay (a frame is a whole message),
    a TCP user timeout (Linux) so the kernel finds a peer that stopped acknowledging,
    and slim write bookkeeping (`slim_stream`)."""
    slim_stream(stream)
    stream.set_nodelay(True)
    sock = stream.socket
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int(user_timeout_s * 1000))


def slim_stream(stream: IOStream) -> None:
    """Swap the stream's two write-side deques for lists while they are empty: an empty
    deque holds a 64-slot block (about 1.5 KB for the two), and with frames going
    straight to the socket (`send_now`) they hold something only while a client lags,
    and then only a few entries (a connection hands its queue over in one write)."""
    buffer: Any = stream._write_buffer
    if not buffer._buffers:
        buffer._buffers = _SmallQueue()
    if not stream._write_futures:
        stream._write_futures = _SmallQueue()  # type: ignore[assignment]


def send_now(stream: IOStream, data: bytes) -> Future[None] | None:
    """Write `data`: None when the kernel took it all, otherwise the stream's future for
    the rest. Raises `StreamClosedError` when the stream is closed or the peer is gone
    (the stream is closed then, and its close callback runs as usual)."""
    sock: Any = stream.socket
    if sock is None or stream.closed():
        raise StreamClosedError()
    if not stream.writing():
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            stream.close(exc_info=exc)
            raise StreamClosedError(real_error=exc) from None
        if sent == len(data):
            return None
        data = memoryview(data)[sent:]  # type: ignore[assignment]
    future: Future[None] = stream.write(data)
    return future


def chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk (RFC 9112, section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
