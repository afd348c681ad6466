"""The clients a chaos test runs beside its faults (stream resumers, REST probes): each is
one task on the test's loop, started with a session and cancelled at the end."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp


class Background:
    """Mixin: `start` runs `_run(session)` as a task, `stop` cancels it and waits."""

    task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession) -> None:
        self.task = asyncio.create_task(self._run(session))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, session: aiohttp.ClientSession) -> None:
        raise NotImplementedError
