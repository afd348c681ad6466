"""The base of every JSON handler: error rendering, request ids and the no-cookie XSRF rule.

A handler subclasses `JsonHandler`, parses, calls one service and calls `write_json`.
Any `BtsguruError` raised becomes the contract's JSON error with its status; a Redis
error that no service turned into one (Redis restarting or unreachable) becomes the JSON
503 `unavailable` with `Retry-After`; anything else becomes a JSON 500 with no detail
(and one logged traceback) — never an HTML page.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import orjson
import tornado.web
import tornado.websocket
from redis.exceptions import RedisError
from tornado.httputil import HTTPServerRequest

from btsguru import metrics
from btsguru.errors import BtsguruError, Unavailable

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

# Reasons for the statuses Tornado renders itself (unknown route, wrong method).
_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "payload_too_large", 429: "rate_limited", 500: "internal_error",
          502: "upstream_error", 503: "unavailable"}
REDIS_RETRY_AFTER_S = 2  # Redis back from a restart answers within seconds


def redis_unavailable() -> Unavailable:
    """What a request that hit a Redis error is told (never the error: it names hosts)."""
    return Unavailable("a data store is unreachable; try again shortly",
                       retry_after_s=REDIS_RETRY_AFTER_S)


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
        if isinstance(exc, BtsguruError):
            if exc.retry_after_s is not None:
                self.set_header("Retry-After", str(exc.retry_after_s))
            body = exc.to_json()
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            message = exc.log_message % exc.args if exc.log_message and exc.args \
                else (exc.log_message or self._reason)
            body = {"error": {"code": _CODES.get(status_code, "error"), "message": message}}
        else:
            body = {"error": {"code": "internal_error",
                              "message": f"internal error (request id {self.request_id})"}}
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

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
    requests.inc()
    if status == 401:
        metrics.AUTH_FAILURES.inc()
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
