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
import tornado.netutil

from btsguru.app import Services, make_app, open_services
from btsguru.config import Config

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
        server = tornado.httpserver.HTTPServer(app, xheaders=True)
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
