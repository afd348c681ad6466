"""The hot path: cached hits of `/v1/{sport}/raw/{endpoint}` and `/v1/{sport}/live`,
answered without a `RequestHandler`.

Where it sits: in front of the routing table (`HotPathApplication.find_handler`). When
everything a `200` needs is already in this process — the caller's key in the auth
cache, a token in the rate limiter's lease, the answer in the hot cache (`store.hot`) —
the response is written at once from those bytes, with the same status, headers and
body as `RawHandler`/`LiveHandler` would write (tests/test_hot_path.py compares them),
and is counted (usage, metrics, the access log) the same way. Anything else — no key or
an unknown one, a scope or tier that forbids, a refusal, a miss, a stale entry, a bad
parameter, a `HEAD`, a request id sent by the client — goes to the handlers as before,
with nothing spent or counted here: this path only ever answers 200.

Why a second path: issue 9 asks a cached hit to cost about what Tornado's hello world
costs (>= 0.7x its throughput). Measured on this project's 2-core machine (2026-11-29,
in-process, no sockets), a bare hello `RequestHandler` costs ~50 us, and the handlers'
own work for a hit (key, lease, cache lookup, 15 headers) ~60 us more, of which ~35 us
is the `RequestHandler` machinery around it (per-request object, default headers, a
task for `_execute`, `set_header`'s checks, `flush`): the same answer written here
costs about half.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import tornado
import tornado.web
from tornado import httputil

from btsguru.auth.access import AccessService, Principal, request_key
from btsguru.errors import BtsguruError
from btsguru.handlers.base import log_answer
from btsguru.handlers.raw import RAW_ROUTE
from btsguru.handlers.rest import SportsView
from btsguru.store.hot import HotCache
from btsguru.upstream.endpoints import lookup_endpoint, normalize_params
from btsguru.upstream.proxy import RawProxy

_RAW = re.compile(RAW_ROUTE)
_LIVE = re.compile(r"/v1/(?P<sport>[a-z][a-z-]*)/live")
_SERVER = f"TornadoServer/{tornado.version}"  # as every RequestHandler sends it
_OK = httputil.ResponseStartLine("", 200, "OK")


class HotPath:
    """Decides, without waiting, whether a request is a hit it can answer in full."""

    def __init__(self, access: AccessService, proxy: RawProxy, view: SportsView,
                 sports: tuple[str, ...], hot: HotCache) -> None:
        self._access = access
        self._proxy = proxy
        self._view = view
        self._sports = frozenset(sports)
        self._hot = hot
        self._date: tuple[int, str] = (0, "")  # the Date header, formatted once a second

    def answer(self, request: httputil.HTTPServerRequest) -> httputil.HTTPMessageDelegate | None:
        """The delegate that writes the answer, or None: the handlers decide."""
        if request.method != "GET" or not self._hot.listening.is_set() \
                or "X-Request-Id" in request.headers:
            return None
        path = request.path
        if path.endswith("/live"):
            return self._live(request)
        if "/raw/" in path:
            return self._raw(request)
        return None

    def _live(self, request: httputil.HTTPServerRequest) -> _Answer | None:
        match = _LIVE.fullmatch(request.path)
        if match is None or match["sport"] not in self._sports or request.query:
            return None
        rendered = self._view.peek_live(match["sport"])
        if rendered is None:
            return None
        admission = self._access.admit_local(request_key(request.headers), scope="rest")
        if admission is None:
            return None
        body, etag = rendered
        headers = self._headers("no-store", admission.decision.headers())
        headers["Etag"] = etag
        return _Answer(request, headers, body, "LiveHandler", admission.principal, "live",
                       self._access)

    def _raw(self, request: httputil.HTTPServerRequest) -> _Answer | None:
        match = _RAW.fullmatch(request.path)
        if match is None or match["sport"] not in self._sports:
            return None
        sport = match["sport"]
        endpoint = lookup_endpoint(sport, match["endpoint"])
        if endpoint is None:
            return None
        try:
            params = normalize_params(endpoint, {
                name: [v.decode() for v in values]
                for name, values in request.query_arguments.items()})
        except (BtsguruError, UnicodeDecodeError):
            return None  # the handler answers the 400
        answer = self._proxy.peek(sport, endpoint, params)
        if answer is None:
            return None
        admission = self._access.admit_local(request_key(request.headers), scope="raw",
                                             raw=True)
        if admission is None:
            return None
        self._proxy.count_hit()
        headers = self._headers(f"max-age={answer.max_age_s}", admission.decision.headers())
        headers["X-Cache"] = answer.state.value
        headers["Age"] = str(answer.age_s)
        headers["Etag"] = answer.etag
        return _Answer(request, headers, answer.body, "RawHandler", admission.principal, "raw",
                       self._access, cache_hit=True)

    def _headers(self, cache_control: str, rate: dict[str, str]) -> httputil.HTTPHeaders:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, httputil.format_timestamp(now))
        # the order RequestHandler writes them in: its defaults, JsonHandler's, the rest
        headers = httputil.HTTPHeaders({
            "Server": _SERVER, "Content-Type": "application/json", "Date": self._date[1],
            "Cache-Control": cache_control, "X-Request-Id": _request_id()})
        headers.update(rate)
        return headers


def _request_id() -> str:
    return secrets.token_hex(8)  # as JsonHandler makes them


class _Answer(httputil.HTTPMessageDelegate):
    """Writes one ready answer when the request has been read; counts it."""

    def __init__(self, request: httputil.HTTPServerRequest, headers: httputil.HTTPHeaders,
                 body: bytes, name: str, principal: Principal, kind: str,
                 access: AccessService, *, cache_hit: bool = False) -> None:
        self._request = request
        self._headers = headers
        self._body = body
        self._name = name
        self._principal = principal
        self._kind = kind
        self._access = access
        self._cache_hit = cache_hit

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        return None

    def data_received(self, chunk: bytes) -> None:
        return None  # a GET's body, if any, is ignored, as the handlers ignore it

    def finish(self) -> None:
        self._headers["Content-Length"] = str(len(self._body))
        connection = self._request.connection
        assert connection is not None
        connection.write_headers(_OK, self._headers, self._body)
        connection.finish()
        self._access.record(self._principal, self._kind, cache_hit=self._cache_hit)
        log_answer(self._name, 200, self._request, self._headers["X-Request-Id"])

    def on_connection_close(self) -> None:
        return None


class HotPathApplication(tornado.web.Application):
    """The application, with the hot path tried before the routing table."""

    def __init__(self, handlers: Any, hot_path: HotPath | None = None,
                 **settings: Any) -> None:
        super().__init__(handlers, **settings)
        self.hot_path = hot_path

    def find_handler(self, request: httputil.HTTPServerRequest,
                     **kwargs: Any) -> Any:
        if self.hot_path is not None:
            answer = self.hot_path.answer(request)
            if answer is not None:
                return answer
        return super().find_handler(request, **kwargs)
