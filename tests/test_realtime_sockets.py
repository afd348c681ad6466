"""The fan-out's own write path (`realtime.sockets`) and the hub's garbage-collector
management, on real sockets and the real collector."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref

import pytest
from tornado.iostream import IOStream, StreamClosedError

from btsguru.realtime.hub import Hub
from btsguru.realtime.sockets import chunk, send_now, slim_stream, stream_for_streaming
from btsguru.realtime.upkeep import GC_FREEZE_AFTER
from btsguru.store.bus import InMemoryBus


def stream_pair() -> tuple[IOStream, socket.socket]:
    server, client = socket.socketpair()
    server.setblocking(False)
    # small buffers, so that the kernel refuses bytes soon
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return IOStream(server), client


async def read_exactly(client: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    client.setblocking(False)
    got = b""
    while len(got) < size:
        got += await asyncio.wait_for(loop.sock_recv(client, size - len(got)), 5)
    return got


async def test_a_frame_the_kernel_takes_goes_without_a_future():
    stream, client = stream_pair()
    try:
        assert send_now(stream, b"hello") is None
        assert await read_exactly(client, 5) == b"hello"
    finally:
        stream.close()
        client.close()


@pytest.mark.parametrize("slim", [False, True])
async def test_what_the_kernel_refuses_follows_in_order_through_the_stream(slim):
    stream, client = stream_pair()
    if slim:
        slim_stream(stream)
    try:
        frames = [bytes([65 + i % 26]) * 3000 for i in range(200)]  # far over the buffers
        futures = [send_now(stream, frame) for frame in frames]
        pending = [f for f in futures if f is not None]
        assert pending, "the kernel took 600 KB into 4 KB buffers"
        assert stream.writing()
        assert await read_exactly(client, 600_000) == b"".join(frames)
        await asyncio.wait_for(asyncio.gather(*pending), 5)
        assert not stream.writing()
        assert send_now(stream, b"after") is None  # straight to the socket again
        assert await read_exactly(client, 5) == b"after"
    finally:
        stream.close()
        client.close()


async def test_a_gone_peer_raises_stream_closed_and_closes_the_stream():
    stream, client = stream_pair()
    client.close()
    with pytest.raises(StreamClosedError):
        for _ in range(10):  # the first write may still be accepted
            send_now(stream, b"x" * 1000)
    assert stream.closed()
    with pytest.raises(StreamClosedError):
        send_now(stream, b"x")


def test_chunk_framing():
    assert chunk(b"data: 1\n\n") == b"9\r\ndata: 1\n\n\r\n"
    assert chunk(b"x" * 255).startswith(b"ff\r\n")


class _Cycle:
    """Stands for a closed connection: garbage only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


def _open_connection() -> tuple[list[_Cycle], weakref.ref[_Cycle]]:
    """An open connection (`held`; clear it to close) and a way to tell it was freed."""
    cycle = _Cycle()
    return [cycle], weakref.ref(cycle)


async def test_the_hub_freezes_settled_connections_and_collects_those_that_left():
    gc.unfreeze()  # whatever an earlier test left frozen
    hub = Hub(InMemoryBus(), None, None, None, ["football"])  # type: ignore[arg-type]
    freezer = hub.upkeep.gc
    try:
        gc.disable()  # only the hub collects here
        freezer.joined = GC_FREEZE_AFTER  # as if admitted during the last tick...
        freezer.tick()
        assert gc.get_freeze_count() == 0  # ...not settled yet
        held, gone = _open_connection()
        freezer.tick()  # a tick with no new connection: settled
        assert gc.get_freeze_count() > 0
        held.clear()  # the connection closes
        gc.collect()
        assert gone() is not None  # frozen: ordinary collections skip it
        # churn: connections left, new ones settled; the next freeze collects first
        freezer.left, freezer.joined = 1, GC_FREEZE_AFTER
        freezer.tick()
        freezer.tick()
        assert gone() is None
        assert gc.get_freeze_count() > 0
        # no churn: a quarter of the frozen connections gone is enough
        held, gone = _open_connection()
        gc.freeze()
        held.clear()
        freezer.frozen, freezer.left = 100, 24
        freezer.tick()
        assert gone() is not None
        freezer.left = 25
        freezer.tick()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.enable()
        gc.unfreeze()


def test_streams_are_set_up_for_streaming():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setblocking(False)
    stream = IOStream(server)
    try:
        stream_for_streaming(stream, user_timeout_s=12.5)
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12_500
        assert isinstance(stream._write_futures, list)
    finally:
        stream.close()
        client.close()
        listener.close()
