"""A TCP proxy that a chaos test can cut and restore: a dependency (the database, Redis)
made unreachable on purpose, without stopping the server that other tests share.

Clients connect to `proxy.port`; each connection is piped to the target by two threads.
`cut()` resets every open connection and refuses new ones (accepted, then reset at once,
so a client fails fast with "connection lost" instead of waiting for a timeout), as a
crashed or firewalled server looks to its clients; `restore()` lets new connections
through again (the cut ones stay gone, as after a real outage). Works the same from
synchronous and asyncio tests: nothing here runs on an event loop.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

BUFFER_BYTES = 65536
ACCEPT_POLL_S = 0.2  # how soon `stop()` is noticed by the accepting thread


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection die, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """127.0.0.1:<port> -> target_host:target_port, with `cut`, `restore` and `stop`."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._open = True
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections piped to the target
        self.refused = 0  # connections reset while cut

    @property
    def is_cut(self) -> bool:
        return not self._open

    def start(self) -> TcpProxy:
        self._spawn(self._accept_loop, "tcp-proxy accept")
        return self

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until `restore`."""
        with self._lock:
            self._open = False
            pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def stop(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._stopped.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- threads --

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name,  # type: ignore[arg-type]
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        if not self._open:
            self.refused += 1
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self.refused += 1
            _reset(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        pair = (client, upstream)
        with self._lock:
            if self.is_cut:  # cut while we were connecting
                self.refused += 1
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
            self.accepted += 1
        self._spawn(self._pipe, "tcp-proxy pipe", client, upstream, pair)
        self._spawn(self._pipe, "tcp-proxy pipe", upstream, client, pair)

    def _pipe(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = source.recv(BUFFER_BYTES)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:  # a clean end on one side ends both (a cut has reset them already)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
