"""The one error hierarchy of btsguru.

Every error a user can cause or see subclasses `BtsguruError` and carries how each
transport reports it: the HTTP status and JSON `code` on `/v1`, the close code on the
native WebSocket and the Pusher error code. Each transport translates them in one place,
so users never see a traceback.

The JSON error body is made by `error_json` alone (the HTTP side of every transport
renders through `handlers.base.render_error`, which uses it).
"""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger(__name__)

# The JSON `code` of a status answered without a `BtsguruError` (Tornado's own 404 and
# 405, a WebSocket endpoint asked without a handshake, a request over a size limit).
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 414: "uri_too_long",
              429: "rate_limited", 431: "header_fields_too_large", 500: "internal_error",
              502: "upstream_error", 503: "unavailable"}


def error_json(code: str, message: str) -> bytes:
    """The contract's JSON error body: `{"error": {"code": ..., "message": ...}}`."""
    return orjson.dumps({"error": {"code": code, "message": message}})


class BtsguruError(Exception):
    """Base of every error that reaches a user."""

    status: int = 500
    code: str = "internal_error"
    ws_close_code: int = 1011
    pusher_code: int = 4200  # generic: reconnect immediately
    retry_after_s: int | None = None

    def __init__(self, message: str, *, retry_after_s: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        # extra HTTP headers of the answer (a 429's rate-limit headers)
        self.headers: dict[str, str] = headers or {}

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def json_body(self) -> bytes:
        return error_json(self.code, self.message)


class ConfigError(BtsguruError):
    """A setting has a bad value; raised at start, names the variable."""

    code = "config_error"


class BadRequest(BtsguruError):
    status = 400
    code = "bad_request"
    ws_close_code = 4000
    pusher_code = 4009


class Unauthorized(BtsguruError):
    status = 401
    code = "unauthorized"
    ws_close_code = 4001
    pusher_code = 4009


class Forbidden(BtsguruError):
    status = 403
    code = "forbidden"
    ws_close_code = 4003
    pusher_code = 4009


class NotFound(BtsguruError):
    status = 404
    code = "not_found"
    ws_close_code = 4004
    pusher_code = 4001


class Conflict(BtsguruError):
    status = 409
    code = "conflict"


class PayloadTooLarge(BtsguruError):
    status = 413
    code = "payload_too_large"
    ws_close_code = 1009
    pusher_code = 4009


class UriTooLong(BtsguruError):
    status = 414
    code = "uri_too_long"


class HeaderFieldsTooLarge(BtsguruError):
    status = 431
    code = "header_fields_too_large"


class RateLimited(BtsguruError):
    status = 429
    code = "rate_limited"
    ws_close_code = 4029
    pusher_code = 4301


class UpstreamError(BtsguruError):
    """The upstream failed and nothing cached can stand in."""

    status = 502
    code = "upstream_error"


class Unavailable(BtsguruError):
    """A dependency (upstream budget, Redis, database) cannot serve right now."""

    status = 503
    code = "unavailable"
    ws_close_code = 1012
    pusher_code = 4100


def store_unavailable(what: str, exc: BaseException, *, retry_after_s: int = 2) -> Unavailable:
    """The `Unavailable` a user sees when Redis failed under `what` (e.g. "the event
    history"): the driver's text names hosts, ports and keys, so it goes to the log only."""
    log.warning("%s is unavailable: %s", what, exc)
    return Unavailable(f"{what} is unavailable; try again shortly", retry_after_s=retry_after_s)
