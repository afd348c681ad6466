"""The lifecycle of `btsguru serve` and `btsguru demo`.

One IOLoop per process. `run_server` either serves in this process or forks workers
that each run their own IOLoop on their own `SO_REUSEPORT` listener on the same port
(the kernel spreads connections between them evenly; where the option is missing they
share the parent's sockets); the parent only supervises: it forwards SIGTERM/SIGINT
and restarts a worker that dies unexpectedly.

Shutdown order (SIGTERM or Ctrl-C sets the stop event): stop accepting, close the
services (Redis, then the database) — the exit stack unwinds what `open_services` opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from btsguru import metrics
from btsguru.app import Services, make_app, open_services
from btsguru.config import Config
from btsguru.errors import BtsguruError, HeaderFieldsTooLarge, PayloadTooLarge, UriTooLong
from btsguru.handlers.base import render_error

log = logging.getLogger(__name__)

# Time allowed for in-flight requests after the listener closes; systemd's TimeoutStopSec
# must exceed it (systemd/btsguru.service sets 30 s).
DRAIN_S = 10.0
# A worker that keeps dying this soon after start is not restarted in a tight loop.
WORKER_RESTART_BACKOFF_S = 1.0
# After a stop is asked, a process that has not exited by then is ended hard, so a stuck
# shutdown can never outlive systemd's TimeoutStopSec (30 s in systemd/btsguru.service).
STOP_DEADLINE_S = 25


def _arm_stop_deadline(on_expiry: Callable[[], None]) -> None:
    def expired(_signum: int, _frame: object) -> None:
        os.write(2, f"btsguru: pid {os.getpid()} did not stop within {STOP_DEADLINE_S} s; "
                    "ending it\n".encode())
        on_expiry()

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(STOP_DEADLINE_S)

EXIT_STUCK = 70  # EX_SOFTWARE: the shutdown had to be cut short
# Tornado reads a request's head up to this many times HTTP_MAX_HEADER_BYTES, so that a
# request over the limit is still parsed and answered (JSON 414/431); past that, memory
# comes first: Tornado closes the connection unanswered, since it cannot parse the head.
HEADER_READ_FACTOR = 2

Hook = Callable[[Services, int], Awaitable[None]]


async def serve_sockets(config: Config, sockets: list[socket.socket], *,
                        on_ready: Hook | None = None, pollers: bool = True) -> None:
    """Serve on already-bound sockets until SIGTERM/SIGINT, with the pollers in the same
    IOLoop unless `pollers` is False (`serve --no-pollers`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(config) as services:
        services.start_background()
        app = make_app(services)
        _freeze_startup_objects()
        server = http_server(app, config)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        log.info("serving on port %d (pid %d)", port, os.getpid())
        if pollers:
            await services.pollers.start()
        try:
            if on_ready is not None:
                await on_ready(services, port)
            await stop.wait()
            log.info("stopping (pid %d)", os.getpid())
            _arm_stop_deadline(lambda: _exit_stuck(loop))
        finally:
            # STYLE.md's order: pollers, listener, connections, then (the exit stack)
            # Redis and the database
            if pollers:
                await services.pollers.stop()
            server.stop()
            await services.hub.drain()  # streams told to reconnect (1012), in batches
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), DRAIN_S)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


def http_server(app: tornado.web.Application, config: Config) -> LimitedHTTPServer:
    """The HTTP server of `app`, with the configured limits on every connection: a
    request's head must arrive within HTTP_IDLE_TIMEOUT_S (Tornado applies its idle
    timeout to the whole header read, so headers dribbled byte by byte do not keep a
    connection open) and its body within HTTP_BODY_TIMEOUT_S; sizes as `RequestLimits`.
    Streams are not affected: a WebSocket leaves HTTP after its handshake, and an SSE
    response is a write, not a read."""
    server = LimitedHTTPServer(
        app, xheaders=True, idle_connection_timeout=float(config.http_idle_timeout_s),
        body_timeout=float(config.http_body_timeout_s),
        max_header_size=HEADER_READ_FACTOR * config.http_max_header_bytes,
        max_body_size=config.http_max_body_bytes)
    server.max_header_bytes = config.http_max_header_bytes
    server.max_body_bytes = config.http_max_body_bytes
    return server


class LimitedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server, with each request's size checked before the application sees
    it (`RequestLimits`)."""

    max_header_bytes = 65536
    max_body_bytes = 1 << 20

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection,
                      ) -> httputil.HTTPMessageDelegate:
        return RequestLimits(super().start_request(server_conn, request_conn), request_conn,
                             self.max_header_bytes, self.max_body_bytes)


class RequestLimits(httputil.HTTPMessageDelegate):
    """Answers a request over a size limit itself, with the contract's JSON error and a
    close, instead of Tornado's bare 400 (or silent close): a URI longer than
    HTTP_MAX_HEADER_BYTES is 414, a longer head 431, a declared body over
    HTTP_MAX_BODY_BYTES 413 (before a byte of it is read). A chunked body that outgrows
    the limit is still cut off by Tornado's own 400."""

    def __init__(self, inner: httputil.HTTPMessageDelegate,
                 connection: httputil.HTTPConnection, max_header_bytes: int,
                 max_body_bytes: int) -> None:
        self.inner = inner
        self.connection = connection
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        refusal = self._refusal(start_line, headers)
        if refusal is None or not isinstance(self.connection, HTTP1Connection):
            return self.inner.headers_received(start_line, headers)
        return self._refuse(self.connection, *refusal)

    def _refusal(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 ) -> tuple[str, BtsguruError] | None:
        """(reason phrase, error) when the request is over a limit."""
        limit = self.max_header_bytes
        if len(start_line.path) > limit:
            return "URI Too Long", UriTooLong(f"the URI is over {limit} bytes")
        size = len(start_line.method) + len(start_line.path) + len(start_line.version) + 4
        size += sum(len(name) + len(value) + 4 for name, value in headers.get_all())
        if size > limit:
            return ("Request Header Fields Too Large",
                    HeaderFieldsTooLarge(f"the request line and headers are over {limit} bytes"))
        declared = headers.get("Content-Length", "0").strip()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return ("Payload Too Large",
                    PayloadTooLarge(f"the body is over {self.max_body_bytes} bytes"))
        return None

    async def _refuse(self, connection: HTTP1Connection, reason: str,
                      error: BtsguruError) -> None:
        """Write the answer on the stream, taken from HTTP processing (nothing more of
        this connection is read), then close it."""
        status = error.status
        log.debug("refused a request from %s: %d %s", connection.context, status, error.code)
        metrics.http_series("RequestLimits", str(status))[0].inc()
        body = render_error(status, error, reason=reason).body
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n").encode()
        stream = connection.detach()
        try:
            await stream.write(head + body)
        except tornado.iostream.StreamClosedError:
            pass  # the client is gone: nothing to tell it
        finally:
            stream.close()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


def _freeze_startup_objects() -> None:
    """What start-up built (modules, services, the routing table) lives as long as the
    process: moved out of the collector's sight, a full collection no longer walks it, so
    it stops adding tens of milliseconds to whichever requests it interrupts (issue 9's
    p99)."""
    gc.collect()
    gc.freeze()


def _exit_stuck(loop: asyncio.AbstractEventLoop) -> None:
    """Say what the shutdown is waiting for (each pending task's innermost frames), then
    end the process: the operator gets the cause, not just a killed service."""
    for task in asyncio.all_tasks(loop):
        where = " > ".join(_awaiting(task.get_coro())) or "not started"
        os.write(2, f"btsguru: still pending at shutdown: {task.get_name()}: {where}\n".encode())
    os._exit(EXIT_STUCK)


def _awaiting(coro: object) -> list[str]:
    """The chain of frames a suspended coroutine is waiting in, outermost first."""
    chain: list[str] = []
    while coro is not None and len(chain) < 12:
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                 or getattr(coro, "ag_frame", None))
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} "
                         f"{frame.f_code.co_name}")
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    return chain


def run_server(config: Config, host: str, port: int, processes: int = 1,
               on_ready: Hook | None = None, pollers: bool = True) -> int:
    """Bind once, then serve in this process (`processes == 1`) or in forked workers
    (`0` means one per core; each runs pollers, and the leases let one process run
    each task). Returns the exit status."""
    count = processes or (os.cpu_count() or 1)
    if count == 1:
        sockets = tornado.netutil.bind_sockets(port, host)
        asyncio.run(serve_sockets(config, sockets, on_ready=on_ready, pollers=pollers))
        return 0
    if not hasattr(socket, "SO_REUSEPORT"):
        sockets = tornado.netutil.bind_sockets(port, host)
        return _supervise(count, lambda: asyncio.run(serve_sockets(config, sockets,
                                                                   pollers=pollers)))
    # Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new
    # connections evenly: on one shared socket, whichever worker wakes first accepts a
    # whole burst. The parent binds first (a taken port fails here, with a clear
    # message, not in every worker) and learns the port, then lets go of it.
    probe = tornado.netutil.bind_sockets(port, host, reuse_port=True)
    port = probe[0].getsockname()[1]
    for sock in probe:
        sock.close()

    def work() -> None:
        sockets = tornado.netutil.bind_sockets(port, host, reuse_port=True)
        asyncio.run(serve_sockets(config, sockets, pollers=pollers))

    return _supervise(count, work)


def _supervise(count: int, work: Callable[[], None]) -> int:
    """Fork `count` workers running `work`; restart crashed ones; forward stop signals."""
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            status = 0
            try:
                work()
            except BaseException:
                log.exception("worker %d crashed", os.getpid())
                status = 1
            finally:
                logging.shutdown()
            os._exit(status)
        children[pid] = time.monotonic()

    def signal_children(sig: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            _arm_stop_deadline(lambda: signal_children(signal.SIGKILL))
        stopping = True
        signal_children(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(count):
        spawn()
    log.info("supervising %d workers: %s", count, ", ".join(map(str, children)))
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, abs(code))
            continue
        log.error("worker %d exited with %d; restarting it", pid, code)
        if time.monotonic() - started < WORKER_RESTART_BACKOFF_S:
            time.sleep(WORKER_RESTART_BACKOFF_S)
        spawn()
    return 1 if worst else 0


def print_line(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
