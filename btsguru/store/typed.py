"""Typed calls into the parts of redis-py whose annotations change between releases.

Where it sits: beside `store.redis`, under everything that closes a pub/sub or resets a
pipeline. redis-py 8.2 annotated `PubSub.aclose`; earlier releases leave it (and still
leave `Pipeline.reset`) untyped, so a direct call needs a `type: ignore` under one
release and fails mypy's unused-ignore check under the other. Calling through a
Protocol is checked the same way under both, and keeps `warn_unused_ignores` on.
"""

from __future__ import annotations

from typing import Protocol, cast

from redis.asyncio.client import Pipeline, PubSub


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class _Resettable(Protocol):
    async def reset(self) -> None: ...


async def aclose_pubsub(pubsub: PubSub) -> None:
    """Unsubscribe from everything and give the connection back."""
    await cast(_Closable, pubsub).aclose()


async def reset_pipeline(pipe: Pipeline) -> None:
    """Drop what is queued and give the connection back (also after a cut-short
    `execute`)."""
    await cast(_Resettable, pipe).reset()
