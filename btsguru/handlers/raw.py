"""`GET /v1/{sport}/raw/{endpoint}`: the upstream's JSON for an allow-listed endpoint and
query, unchanged, served from the cache when fresh (`upstream.proxy` decides how).

Thin: parse and validate, ask the proxy, render the cache headers.
"""

from __future__ import annotations

from btsguru.auth.access import AccessService
from btsguru.errors import BadRequest, NotFound
from btsguru.handlers.api import ApiHandler
from btsguru.store.cache import CacheState
from btsguru.upstream.endpoints import lookup_endpoint, normalize_params
from btsguru.upstream.proxy import RawProxy

RAW_ROUTE = r"/v1/(?P<sport>[a-z-]+)/raw/(?P<endpoint>[a-z/]+)"


class RawHandler(ApiHandler):
    route_kind = "raw"
    required_scope = "raw"
    requires_raw = True

    def initialize(self, access: AccessService, proxy: RawProxy,  # type: ignore[override]
                   sports: tuple[str, ...]) -> None:
        super().initialize(access)
        self.proxy = proxy
        self.sports = sports

    async def get(self, sport: str, endpoint: str) -> None:
        if sport not in self.sports:
            raise NotFound(f"unknown sport {sport!r}; this relay serves: {', '.join(self.sports)}")
        found = lookup_endpoint(sport, endpoint)
        if found is None:
            raise NotFound(f"{endpoint!r} is not an endpoint the raw proxy serves for {sport}")
        try:
            query = {name: [v.decode() for v in values]
                     for name, values in self.request.query_arguments.items()}
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid UTF-8") from None
        params = normalize_params(found, query)
        answer = await self.proxy.get(sport, found, params)
        self.cache_hit = answer.state is not CacheState.MISS
        if not self.cache_hit and self.principal is not None:
            # counted for the alerter's cache-busting check (in-process, no I/O)
            self.access.watch.raw_miss(self.principal.key_id, self.principal.key_prefix,
                                       f"{sport}/{endpoint}?{sorted(params.items())}")
        self.set_header("X-Cache", answer.state.value)
        self.set_header("Age", str(answer.age_s))
        self.set_header("Cache-Control", f"max-age={answer.max_age_s}")
        self.set_header("Etag", answer.etag)  # so Tornado does not hash the body per hit
        self.finish(answer.body)
