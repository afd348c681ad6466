"""Runs peewee calls off the IOLoop: the one way services reach the database.

peewee is synchronous, so every database call runs in a thread: reads in a small pool,
writes through one writer thread, in submission order (Datasette's pattern). One
writer means SQLite never sees two writers in this process (no "database is locked"
between our own threads) and on every backend a process's writes apply in the order
the loop issued them. Each call holds a pooled connection for its duration only
(`connection_context`); each write is one transaction (`atomic`), so a function that
raises leaves nothing behind.

Guarantees: `write` calls run one at a time, in the order they were awaited; `read`
calls may run concurrently with each other and with a write. Connection-level failures
(server gone, pool exhausted, SQLite busy past its timeout) surface as `Unavailable`;
other database errors (an `IntegrityError`, say) reach the caller unchanged, for the
service to translate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

import peewee
from playhouse.pool import MaxConnectionsExceeded

from btsguru.db import close_database
from btsguru.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

READ_THREADS = 4  # reads are short indexed lookups; more threads would only queue on the DB
PING_TIMEOUT_S = 5.0  # /readyz answers well before a load balancer's usual 10 s check timeout

# Failures of the connection rather than of the statement: the caller can do nothing
# but report the database unavailable and try later.
_UNAVAILABLE_ERRORS = (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded)


class DatabaseRunner:
    """Executes synchronous peewee functions in threads and awaits them on the loop."""

    def __init__(self, database: peewee.Database, *, read_threads: int = READ_THREADS) -> None:
        self.database = database
        self._readers = ThreadPoolExecutor(read_threads, thread_name_prefix="btsguru-db-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="btsguru-db-write")
        self._closed = False

    async def read(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """`fn(*args)` in a reader thread, inside a connection."""
        return await self._submit(self._readers, self._run_read, fn, args)

    async def write(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """`fn(*args)` in the writer thread, inside a connection and one transaction."""
        return await self._submit(self._writer, self._run_write, fn, args)

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> None:
        """Raise `Unavailable` unless the database answers `SELECT 1` within `timeout_s`."""
        try:
            await asyncio.wait_for(self.read(self._select_one), timeout_s)
        except TimeoutError:
            raise Unavailable(f"database did not answer within {timeout_s:g} s") from None

    def close(self) -> None:
        """Wait for calls in flight, stop the threads and close the pooled connections."""
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        close_database(self.database)

    # -- in the loop --

    async def _submit(self, executor: Executor,
                      runner: Callable[[Callable[[*Ts], T], tuple[*Ts]], T],
                      fn: Callable[[*Ts], T], args: tuple[*Ts]) -> T:
        if self._closed:
            raise Unavailable("database closed (shutting down)")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, runner, fn, args)
        except _UNAVAILABLE_ERRORS as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("database call %s failed: %s", _name(fn), detail)
            raise Unavailable(f"database unavailable: {detail}") from exc

    # -- in a thread --

    def _run_read(self, fn: Callable[[*Ts], T], args: tuple[*Ts]) -> T:
        with self.database.connection_context():
            return fn(*args)

    def _run_write(self, fn: Callable[[*Ts], T], args: tuple[*Ts]) -> T:
        with self.database.connection_context(), self.database.atomic():
            return fn(*args)

    def _select_one(self) -> None:
        self.database.execute_sql("SELECT 1")  # type: ignore[no-untyped-call]


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
