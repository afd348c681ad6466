"""The simulated upstream (`btsguru simulate`): API-Sports, live games, quota, faults, tapes.

Where it sits: outside the relay's flow, standing in for API-Sports in every test, demo
and benchmark (ARCHITECTURE.md). It renders API-Sports JSON from its own game model and
shares no code with the relay's upstream client or normalizers, so one bug cannot hide
itself on both sides. Public API for the CLI and the demo:

    server = await start_simulator(SimulatorOptions(port=0))
    server.url          # "http://127.0.0.1:PORT"
    await server.stop()

    await run_simulator(options)  # until cancelled, SIGINT or SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import tornado.httpserver
import tornado.netutil

from btsguru.errors import ConfigError
from btsguru.simulator.server import Simulator

log = logging.getLogger(__name__)

__all__ = ["Simulator", "SimulatorOptions", "SimulatorServer", "run_simulator",
           "start_simulator"]


@dataclass(frozen=True)
class SimulatorOptions:
    host: str = "127.0.0.1"
    port: int = 8099  # 0 picks a free port
    seed: int = 1
    speed: float = 1.0  # simulated seconds of play per real second
    # Generous defaults: a test or demo never hits them unless it asks to.
    quota_day: int = 1_000_000
    quota_minute: int = 100_000
    tape: str | None = None


class SimulatorServer:
    """A running simulator: where it listens, its state, and how to stop it."""

    def __init__(self, simulator: Simulator, http: tornado.httpserver.HTTPServer, host: str,
                 port: int) -> None:
        self.simulator = simulator
        self._http = http
        self.port = port
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{port}"

    async def stop(self) -> None:
        self._http.stop()
        await self.simulator.release_held()  # requests held by a "timeout" fault answer now
        await self._http.close_all_connections()


async def start_simulator(options: SimulatorOptions, *,
                          clock: Callable[[], float] = time.time) -> SimulatorServer:
    """Listen on options.host:options.port (0: any free port) and serve the simulator.

    `clock` is the real clock its dates follow (a test pins the time of day with it).
    Raises ConfigError for a bad tape and OSError when the address cannot be bound.
    """
    if options.speed <= 0:
        raise ConfigError("--speed must be a positive number")
    if options.quota_day < 0 or options.quota_minute < 0:
        raise ConfigError("--quota-day and --quota-minute must not be negative")
    simulator = Simulator(options, clock=clock)
    sockets = tornado.netutil.bind_sockets(options.port, options.host)
    http = tornado.httpserver.HTTPServer(simulator.make_app())
    http.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    server = SimulatorServer(simulator, http, options.host, port)
    log.info("simulated upstream listening on %s (seed %d, speed %g%s)", server.url,
             options.seed, options.speed, f", tape {options.tape}" if options.tape else "")
    return server


async def run_simulator(options: SimulatorOptions) -> None:
    """Serve until cancelled or until SIGINT/SIGTERM, then stop cleanly."""
    server = await start_simulator(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await server.stop()
        log.info("simulated upstream stopped")
