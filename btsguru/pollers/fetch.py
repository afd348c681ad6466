"""The pollers' one way to ask the upstream: fetch, then share the answer with the raw cache.

Where it sits: between the pollers' tasks and `UpstreamClient.fetch` (purpose "poller":
it may wait for a quota token). Every answer is also written to the raw cache under the
key the raw proxy uses for the same query (`RawCache.key_for(sport, endpoint, params)`,
with the TTL `RawCache.ttl_for` gives it), so a user asking `/v1/{sport}/raw/...` for
what a poller just fetched is a cache hit, not another upstream call. Observers see
every answer (`record` writes them to a tape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from btsguru.store.cache import RawCache
from btsguru.upstream.client import UpstreamClient, UpstreamResponse
from btsguru.upstream.endpoints import lookup_endpoint

log = logging.getLogger(__name__)

Observer = Callable[[UpstreamResponse], None]


@dataclass
class FetchCounts:
    """Calls made through one `Fetcher`, by sport (for logs, `refresh` and benchmarks)."""

    requests: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.requests.values())


class Fetcher:
    def __init__(self, client: UpstreamClient, cache: RawCache) -> None:
        self._client = client
        self._cache = cache
        self.counts = FetchCounts()
        self.observers: list[Observer] = []

    async def get(self, sport: str, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        """The envelope of `<sport>/<endpoint>?<params>`, or the client's `FetchError`."""
        query = {str(k): str(v) for k, v in params.items()}
        self.counts.requests[sport] = self.counts.requests.get(sport, 0) + 1
        try:
            response = await self._client.fetch(sport, endpoint, query, purpose="poller")
        except Exception:
            self.counts.failures[sport] = self.counts.failures.get(sport, 0) + 1
            raise
        for observer in self.observers:
            try:
                observer(response)
            except Exception:  # an observer's bug must not cost the data
                log.exception("fetch observer failed on %s %s", sport, endpoint)
        await self._share(sport, endpoint, query, response)
        return response.body

    async def _share(self, sport: str, endpoint: str, query: dict[str, str],
                     response: UpstreamResponse) -> None:
        spec = lookup_endpoint(sport, endpoint)
        kind = spec.kind if spec is not None else "static"
        ttl_s = self._cache.ttl_for(sport, endpoint, kind, query, response.body)
        # RawCache.put logs and swallows Redis errors: the cache is an optimisation here
        await self._cache.put(sport, endpoint, query, orjson.dumps(response.body), ttl_s,
                              response.fetched_at)
