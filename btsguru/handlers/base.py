"""The base of every JSON handler: error rendering, request ids and the no-cookie XSRF rule.

A handler subclasses `JsonHandler`, parses, calls one service and calls `write_json`.
Any `BtsguruError` raised becomes the contract's JSON error with its status; a Redis
error that no service turned into one (Redis restarting or unreachable) becomes the JSON
503 `unavailable` with `Retry-After`; anything else becomes a JSON 500 with no detail
(and one logged traceback) — never an HTML page.

`render_error` is the one place an error becomes an HTTP answer's body and headers: the
JSON handlers, the WebSocket endpoints (a request that is no handshake) and the server's
own size limits (`server.RequestLimits`) all render through it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
import tornado.web
import tornado.websocket
from redis.exceptions import RedisError
from tornado.httputil import HTTPServerRequest

from btsguru import metrics
from btsguru.errors import HTTP_CODES, BtsguruError, Unavailable, error_json

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

REDIS_RETRY_AFTER_S = 2  # Redis back from a restart answers within seconds


def redis_unavailable() -> Unavailable:
    """What a request that hit a Redis error is told (never the error: it names hosts)."""
    return Unavailable("a data store is unreachable; try again shortly",
                       retry_after_s=REDIS_RETRY_AFTER_S)


@dataclass(frozen=True)
class ErrorAnswer:
    """An error as HTTP: the JSON body and the headers it needs (`Retry-After`, a 429's
    rate-limit headers); the status is the caller's."""

    body: bytes
    headers: dict[str, str]


def render_error(status_code: int, exc: BaseException | None, *, reason: str,
                 request_id: str = "") -> ErrorAnswer:
    """The contract's JSON error for `exc` answered with `status_code`: a `BtsguruError`
    as it says; a Tornado `HTTPError` under 500 (unknown route, wrong method, no
    handshake) with its message, or `reason`; anything else a 500 with no detail."""
    if isinstance(exc, BtsguruError):
        headers = dict(exc.headers)
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
        return ErrorAnswer(exc.json_body(), headers)
    if isinstance(exc, tornado.web.HTTPError) and status_code < 500:
        message = exc.log_message % exc.args if exc.log_message and exc.args \
            else (exc.log_message or reason)
        return ErrorAnswer(error_json(HTTP_CODES.get(status_code, "error"), message), {})
    detail = f" (request id {request_id})" if request_id else ""
    return ErrorAnswer(error_json("internal_error", f"internal error{detail}"), {})


class JsonHandler(tornado.web.RequestHandler):
    """Base for `/v1`, health and the Pusher HTTP API: JSON in, JSON out."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.request_id = self.request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
        self.set_header("X-Request-Id", self.request_id)

    def check_xsrf_cookie(self) -> None:
        """API-key and signature authenticated routes carry no cookie."""

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        answer = render_error(status_code, exc, reason=self._reason,
                              request_id=self.request_id)
        for name, value in answer.headers.items():
            self.set_header(name, value)
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json")
        self.finish(answer.body)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RedisError):
            exc = redis_unavailable()
            kwargs["exc_info"] = (type(exc), exc, None)
        if isinstance(exc, BtsguruError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, RedisError):
            log.info("%s %s -> 503: Redis: %s (request id %s)", self.request.method,
                     self.request.path, value, self.request_id)
            return
        if isinstance(value, BtsguruError):
            # answered with the contract's JSON; degraded service (502/503) is the
            # alerter's to report, not one warning per request
            log.log(logging.INFO if value.status >= 500 else logging.DEBUG,
                    "%s %s -> %d %s: %s (request id %s)", self.request.method,
                    self.request.path, value.status, value.code, value.message, self.request_id)
            return
        super().log_exception(typ, value, tb)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The application's access log: internal errors at error, everything else at debug
    (an access log per request is a proxy's job, and metrics count them)."""
    # a stream's "latency" is its lifetime: it would drown the request histogram
    timed = getattr(handler, "route_kind", "") != "stream" and \
        not isinstance(handler, tornado.websocket.WebSocketHandler)
    log_answer(type(handler).__name__, handler.get_status(), handler.request,
               getattr(handler, "request_id", "-"), timed=timed)


def log_answer(name: str, status: int, request: HTTPServerRequest, request_id: str, *,
               timed: bool = True) -> None:
    """`log_request` for an answer given by `name` (a handler, or the hot path)."""
    requests, latency = metrics.http_series(name, str(status))
    requests.inc()  # (a refused key is counted by the admission, `auth.access`)
    if timed:
        latency.observe(request.request_time())
    level = logging.ERROR if status == 500 else logging.DEBUG
    if access_log.isEnabledFor(level):
        # the path, never the query: stream URLs carry `api_key=`
        access_log.log(level, "%d %s %s (%s) %.1f ms request id %s", status, request.method,
                       request.path, request.remote_ip, 1000.0 * request.request_time(),
                       request_id)


class NotFoundHandler(JsonHandler):
    """The application's default handler: a JSON 404 for every unknown path."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such route: %s", self.request.path)
