"""The base of every `/v1` handler: the HTTP side of the one admission
(`AccessService.admit`: key, scope and tier, rate limit, failed-auth and rejection
records), the rate-limit headers and usage counting; plus `GET /v1/usage`.

A `/v1` handler subclasses `ApiHandler`, declares what it is with class attributes
(`route_kind` for usage, `required_scope`, `requires_raw`, `accepts_query_key` for the
stream endpoints) and takes `access` in `initialize`. By the time its `get` runs the
caller is authenticated, authorized and within their limits (`self.principal`); it sets
`self.cache_hit = True` when it answered from the cache, and the request is counted in
`on_finish`; a stream (`route_kind = "stream"`) is counted when it is admitted instead,
since it may stay open for hours and usage must show within 10 s. Only requests that
passed the rate limit are counted: a 429 spends no quota and so does not show as usage.

The rate-limit headers ride on every response that passed authentication, errors
included: Tornado's `send_error` clears the headers, so `write_error` sets them again
(a 429 carries them on its error, `RateDecision.error`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from btsguru.auth.access import AccessService, Principal, request_key
from btsguru.auth.ratelimit import RateDecision
from btsguru.db.models import ROUTE_KINDS
from btsguru.errors import BadRequest
from btsguru.handlers.base import JsonHandler

USAGE_DEFAULT_DAYS = 30  # the contract: today and the last 30 days
USAGE_MAX_DAYS = 90


class ApiHandler(JsonHandler):
    """Authenticates, authorizes and rate-limits in `prepare`; counts in `on_finish`."""

    route_kind: ClassVar[str] = "other"  # one of ROUTE_KINDS, for usage
    required_scope: ClassVar[str] = "rest"  # "rest", "raw" or "stream"
    requires_raw: ClassVar[bool] = False  # the tier must include the raw proxy
    accepts_query_key: ClassVar[bool] = False  # `?api_key=` (stream endpoints only)

    def initialize(self, access: AccessService) -> None:
        self.access = access
        self.principal: Principal | None = None
        self.rate: RateDecision | None = None
        self.cache_hit = False
        self._admitted = False

    async def prepare(self) -> None:
        admission = await self.access.admit(
            self.api_key(), scope=self.required_scope, raw=self.requires_raw,
            client=self.request.remote_ip)
        self.principal, self.rate = admission.principal, admission.decision
        self._set_rate_headers()
        if self.route_kind == "stream":
            self.access.record(admission.principal, self.route_kind)
        else:
            self._admitted = True

    def api_key(self) -> str | None:
        """The key, in `request_key`'s precedence; the `api_key` query parameter counts
        on the stream endpoints only."""
        return request_key(self.request.headers, self.get_query_argument("api_key", None)
                           if self.accepts_query_key else None)

    def _set_rate_headers(self) -> None:
        if self.rate is not None:
            # straight into the response's headers: the values are ours (digits, quotes,
            # `;=,` and letters), so `set_header`'s per-value check would only cost time
            # on every request
            self._headers.update(self.rate.headers())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._set_rate_headers()
        super().write_error(status_code, **kwargs)

    def on_finish(self) -> None:
        if self._admitted and self.principal is not None:
            self.access.record(self.principal, self.route_kind, cache_hit=self.cache_hit)


class UsageHandler(ApiHandler):
    """`GET /v1/usage[?days=N]`: the caller's user's usage (all of the user's keys),
    today by route kind and one entry per UTC day, oldest first, today last."""

    route_kind = "other"

    async def get(self) -> None:
        assert self.principal is not None  # prepare() authenticated
        days = _days_argument(self.get_query_argument("days", None))
        usage = await self.access.usage_for_user(self.principal.user_id, days)
        today = usage[-1]
        self.write_json({"data": {
            "today": {kind: today.by_kind.get(kind, 0) for kind in ROUTE_KINDS},
            "days": [day.to_json() for day in usage],
        }})


def _days_argument(raw: str | None) -> int:
    if raw is None:
        return USAGE_DEFAULT_DAYS
    if not raw.isdigit() or not 1 <= int(raw) <= USAGE_MAX_DAYS:
        raise BadRequest(f"days: a whole number from 1 to {USAGE_MAX_DAYS}, got {raw!r}")
    return int(raw)


class _WithAccess(Protocol):
    @property
    def access(self) -> AccessService: ...


def api_routes(services: _WithAccess) -> list[Any]:
    """The routes this module serves, for `btsguru.app.make_app`."""
    return [
        (r"/v1/usage", UsageHandler, {"access": services.access}),
    ]
