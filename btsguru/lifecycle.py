"""Stopping background tasks for certain.

Every service that owns tasks stops them through `cancel_tasks`. A single `cancel()`
followed by an unbounded await is not enough on Python 3.11: `asyncio.wait_for` can
swallow a cancellation that races with its inner future completing (CPython gh-86296),
and a loop that survives it would keep its owner's shutdown waiting for ever — seen as
a `serve` that did not stop on SIGTERM right after start-up. So the cancel is repeated
until the tasks end, within a bound, and what is still running then is named in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

TASK_STOP_S = 5.0  # well inside the server's 25 s stop deadline, summed over services
_RECANCEL_EVERY_S = 0.2


async def cancel_tasks(tasks: Iterable[asyncio.Task[Any]], *, timeout_s: float = TASK_STOP_S,
                       owner: str = "") -> None:
    """Cancel `tasks` and wait until they end, cancelling again while they don't, for at
    most `timeout_s`. Exceptions the tasks ended with are retrieved (they were logged by
    their own loops)."""
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _done, pending = await asyncio.wait(pending, timeout=min(_RECANCEL_EVERY_S, remaining))
    for task in pending:
        log.warning("%s: task %s did not stop within %.0f s", owner or "shutdown",
                    task.get_name(), timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()
