"""What can go wrong when the relay asks the upstream, and how an answer is classified.

Sits between the wire and `UpstreamClient.fetch`: `classify_answer` turns one HTTP answer
(status + parsed body) into `None` (real data) or a `FetchError`. API-Sports reports most
failures inside an HTTP 200 (`errors` non-empty), a daily wall arrives as a 200 or a 429,
and the RapidAPI proxy answers with its own `{"message": ...}` bodies, so the verdict is
taken from the error key and message, never from the status alone
(API-SPORTS.md sections 2, 3 and 6).

Every error `fetch` raises is a `FetchError` with a `kind` and a `transient` flag, and is
also one of the user-facing families: `UpstreamFailure` (an `UpstreamError`, 502) when the
upstream failed, `QuotaExhausted` and `CircuitOpen` (`Unavailable`, 503 with Retry-After)
when the relay will not ask right now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from btsguru.errors import BtsguruError, Unavailable, UpstreamError

FailureKind = Literal[
    "timeout",        # no answer in time (transient)
    "connection",     # could not connect or the connection broke (transient)
    "server",         # 5xx / 499 from the upstream or its proxy (transient)
    "malformed",      # not JSON, or not the envelope (transient)
    "upstream_bug",   # 204, errors.bug / errors.time: "this is on our side" (transient)
    "minute_quota",   # the per-minute wall (transient: clears within 60 s)
    "day_quota",      # the daily wall (not transient: wait for 00:00 UTC)
    "auth",           # bad, missing or suspended key; not subscribed (operator must act)
    "request",        # the upstream refused this request: plan, parameter, endpoint
    "circuit_open",   # the relay's breaker is not letting calls through (transient)
]

# Kinds that say the upstream host itself is unhealthy: these feed the circuit breaker.
HOST_FAILURE_KINDS: frozenset[str] = frozenset(
    {"timeout", "connection", "server", "malformed", "upstream_bug"})


class FetchError(BtsguruError):
    """Base of every error `UpstreamClient.fetch` raises."""

    kind: FailureKind = "server"
    transient: bool = False

    def __init__(self, message: str, *, sport: str = "", endpoint: str = "",
                 http_status: int | None = None, upstream_message: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.sport = sport
        self.endpoint = endpoint
        self.http_status = http_status
        self.upstream_message = upstream_message


# A transient failure's 502 tells the user when to ask again (the contract: a JSON 502
# or 503 with Retry-After): about one live poll, by when the relay has asked again itself.
TRANSIENT_RETRY_AFTER_S = 5


class UpstreamFailure(UpstreamError, FetchError):
    """The upstream answered badly or not at all (502)."""

    code = "upstream_error"

    def __init__(self, message: str, *, kind: FailureKind, transient: bool, sport: str = "",
                 endpoint: str = "", http_status: int | None = None,
                 upstream_message: str | None = None) -> None:
        super().__init__(message, sport=sport, endpoint=endpoint, http_status=http_status,
                         upstream_message=upstream_message,
                         retry_after_s=TRANSIENT_RETRY_AFTER_S if transient else None)
        self.kind = kind
        self.transient = transient


class UpstreamAuthError(UpstreamFailure):
    """The upstream refused the relay's key: the operator must act; retrying cannot help."""

    code = "upstream_auth_failed"


class UpstreamRequestError(UpstreamFailure):
    """The upstream refused this particular request (plan limits, a bad parameter, an
    unknown endpoint); the same request will fail again, so it is reported as a 400."""

    status = 400
    code = "upstream_rejected_request"


class QuotaExhausted(Unavailable, FetchError):
    """No budget for this call: the relay's own governor has no token for it
    (`source="local"`), or the upstream said a wall was hit (`source="upstream"`)."""

    code = "upstream_quota_exhausted"

    def __init__(self, message: str, *, window: Literal["day", "minute"],
                 source: Literal["local", "upstream"], retry_after_s: int, sport: str = "",
                 endpoint: str = "", http_status: int | None = None,
                 upstream_message: str | None = None) -> None:
        super().__init__(message, sport=sport, endpoint=endpoint, http_status=http_status,
                         upstream_message=upstream_message, retry_after_s=retry_after_s)
        self.window = window
        self.source = source
        self.kind = "day_quota" if window == "day" else "minute_quota"
        self.transient = window == "minute"


class CircuitOpen(Unavailable, FetchError):
    """The sport's circuit breaker is open: nothing was sent and no token was taken."""

    code = "upstream_circuit_open"
    kind: FailureKind = "circuit_open"
    transient = True


def error_messages(errors: Any) -> dict[str, str]:
    """The upstream `errors` field as {key: message}.

    It is `[]` or `{}` on success, an object on failure, and rarely a non-empty list
    (of strings or of objects); list strings get the key "" (unknown)."""
    found: dict[str, str] = {}
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            found[str(key)] = str(value)
    elif isinstance(errors, list):
        for item in errors:
            if isinstance(item, Mapping):
                found.update(error_messages(item))
            elif item not in (None, ""):
                found.setdefault("", str(item))
    elif errors not in (None, "", 0, False):
        found[""] = str(errors)
    return found


def _says_daily(message: str) -> bool:
    text = message.lower()
    return "daily" in text or "for the day" in text or "per day" in text


@dataclass(frozen=True)
class _Answer:
    """One upstream answer being classified: builds the error it stands for."""

    status: int
    sport: str
    endpoint: str

    def failure(self, kind: FailureKind, transient: bool, what: str,
                message: str | None = None) -> UpstreamFailure:
        cls: type[UpstreamFailure] = UpstreamFailure
        if kind == "auth":
            cls = UpstreamAuthError
        elif kind == "request":
            cls = UpstreamRequestError
        return cls(self._text(what, message), kind=kind, transient=transient,
                   sport=self.sport, endpoint=self.endpoint, http_status=self.status,
                   upstream_message=message)

    def wall(self, window: Literal["day", "minute"], message: str | None) -> QuotaExhausted:
        what = ("the upstream's daily quota is spent until 00:00 UTC" if window == "day"
                else "the upstream's per-minute limit was hit")
        # a daily wall's retry_after_s is filled in by the client, which knows the clock
        return QuotaExhausted(self._text(what, message), window=window, source="upstream",
                              retry_after_s=0 if window == "day" else 60, sport=self.sport,
                              endpoint=self.endpoint, http_status=self.status,
                              upstream_message=message)

    def _text(self, what: str, message: str | None) -> str:
        text = f"{self.sport} /{self.endpoint.lstrip('/')}: {what}"
        return text + (f" (upstream said: {message})" if message else "")


def classify_answer(status: int, body: Any, *, sport: str,
                    endpoint: str) -> UpstreamFailure | QuotaExhausted | None:
    """`None` when (status, body) is real data; otherwise the error it stands for.

    `body` is the parsed JSON, or `None` when the body was empty or not JSON.
    """
    answer = _Answer(status, sport, endpoint)
    if isinstance(body, Mapping):
        errors = error_messages(body.get("errors"))
        if errors:
            return _classify_errors(errors, answer)
        if "response" not in body and isinstance(body.get("message"), str):
            # the RapidAPI proxy (or a 499/500 page) answering on its own
            return _classify_message(str(body["message"]), answer)

    if status == 204:
        return answer.failure("upstream_bug", True,
                              "the upstream answered 204 (a bug on its side)")
    if status >= 500 or status == 499:
        return answer.failure("server", True, f"the upstream answered HTTP {status}")
    if status == 429:
        return answer.wall("minute", None)
    if status in (401, 403):
        return answer.failure("auth", False, f"the upstream refused the key (HTTP {status})")
    if status >= 400:
        return answer.failure("request", False,
                              f"the upstream refused the request (HTTP {status})")
    if not isinstance(body, Mapping) or "response" not in body:
        return answer.failure("malformed", True,
                              f"the upstream's HTTP {status} body is not the API-Sports envelope")
    return None


def _classify_errors(errors: dict[str, str],
                     answer: _Answer) -> UpstreamFailure | QuotaExhausted:
    keys = {key.lower() for key in errors}
    every = "; ".join(f"{k}: {v}" if k else v for k, v in errors.items())
    status = answer.status
    if "requests" in keys or any(_says_daily(m) for m in errors.values()):
        return answer.wall("day", every)
    if "ratelimit" in keys:
        return answer.wall("minute", every)
    if "token" in keys or "access" in keys:
        return answer.failure("auth", False, "the upstream refused the key", every)
    if "bug" in keys or "time" in keys:
        return answer.failure("upstream_bug", True,
                              "the upstream reported an error on its side", every)
    if status == 429:
        return answer.wall("minute", every)
    if status >= 500 or status == 499:
        return answer.failure("server", True, f"the upstream answered HTTP {status}", every)
    # plan, endpoint, or a parameter's name: this request cannot succeed as sent
    return answer.failure("request", False, "the upstream refused the request", every)


def _classify_message(message: str, answer: _Answer) -> UpstreamFailure | QuotaExhausted:
    status = answer.status
    if _says_daily(message):
        return answer.wall("day", message)
    if status == 429:
        return answer.wall("minute", message)
    if status in (401, 403):
        return answer.failure("auth", False, f"the upstream refused the key (HTTP {status})",
                              message)
    if status >= 500 or status == 499 or status < 400:
        return answer.failure("server", True, f"the upstream answered HTTP {status}", message)
    return answer.failure("request", False,
                          f"the upstream refused the request (HTTP {status})", message)
