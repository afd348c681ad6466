"""Typed calls into the parts of redis-py whose annotations change between releases.

Where it sits: beside `store.redis`, under everything that closes a pub/sub or resets a
pipeline. redis-py 8.2 annotated `PubSub.aclose`; earlier releases leave it (and still
leave `Pipeline.reset`) untyped, so a direct call needs a `type: ignore` under one
release and fails mypy's unused-ignore check under the other. Calling through a
Protocol is checked the same way under both, and keeps `warn_unused_ignores` on.
redis-py 8.2 annotates `AsyncScript.__call__`'s `client` as a client, though it queues
the script on a pipeline of either kind (and on Redis Cluster's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.typing import EncodableT, KeyT


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class _Resettable(Protocol):
    async def reset(self) -> None: ...


async def aclose_pubsub(pubsub: PubSub) -> None:
    """Unsubscribe from everything and give the connection back."""
    await cast(_Closable, pubsub).aclose()


async def queue_script(script: AsyncScript, pipe: Pipeline | ClusterPipeline, *,
                       keys: Sequence[KeyT], args: Iterable[EncodableT]) -> None:
    """Queue one run of `script` on `pipe` (its reply comes with the pipeline's).

    A server's pipeline loads its scripts before it executes; Redis Cluster's does not
    (it queues EVALSHA, which a master that never saw the script refuses), so there the
    script goes as EVAL: its body on the wire, the same single round trip, and each
    master caches it by its SHA-1 as SCRIPT LOAD would."""
    if isinstance(pipe, ClusterPipeline):
        body = script.script
        pipe.eval(body if isinstance(body, str) else bytes(body).decode(), len(keys), *keys,
                  *args)
        return
    await script(keys=keys, args=args, client=cast(Any, pipe))


async def reset_pipeline(pipe: Pipeline | ClusterPipeline) -> None:
    """Drop what is queued and give the connection back (also after a cut-short
    `execute`)."""
    await cast(_Resettable, pipe).reset()
