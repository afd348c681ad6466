"""The one way the relay talks to API-Sports (or the simulator standing in for it).

First stage of the flow: the pollers (and, on a cache miss, the REST handlers' services)
call `UpstreamClient.fetch`; it returns the parsed envelope or raises a `FetchError`.
Each call goes, in order, through
1. the sport's circuit breaker (`breaker.py`): a failing host is not asked at all, but
   for the pollers' calls, which may probe it at their cadence;
2. the quota governor (`quota.py`): a token per attempt, taken before anything is sent;
   users never wait for one, pollers may, for a bounded time;
3. one aiohttp request with the auth headers the host needs and nothing else (the
   upstream may reject extra headers), under a connect and a total timeout;
4. classification (`errors.py`): a 200 is not success until its `errors` is empty;
   rate-limit headers are read on every answer and fed back to the governor, and a
   daily or per-minute wall is reported to it;
5. retries of transient failures only, with exponential backoff and full jitter, each
   with its own token, and for users within the contract's 10 s (section 6). A poller's
   call is not retried after a host failure: its next run, one cadence later, is the
   retry, so a failing poller never asks more often than a healthy one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.backoff import Backoff
from btsguru.clock import Clock
from btsguru.config import Config
from btsguru.errors import BadRequest, Unavailable
from btsguru.sports import SPORTS
from btsguru.store.redis import RedisStores
from btsguru.store.series import SeriesRecorder
from btsguru.upstream.breaker import CircuitBreaker
from btsguru.upstream.errors import (
    HOST_FAILURE_KINDS,
    FetchError,
    QuotaExhausted,
    UpstreamFailure,
    classify_answer,
)
from btsguru.upstream.quota import (
    Purpose,
    QuotaGovernor,
    QuotaToken,
    RateLimitInfo,
    parse_rate_limits,
    seconds_until_utc_midnight,
)

log = logging.getLogger(__name__)

AuthMode = Literal["rapidapi", "apisports"]

USER_DEADLINE_S = 10.0  # contract section 6: a user's request never waits longer on the upstream
CONNECT_TIMEOUT_S = 3.0  # a host that does not accept a connection in 3 s is not going to
REQUEST_TIMEOUT_S = 8.0  # one attempt; live endpoints answer in well under a second
# A poller waits at most this long for a token: one full window, so a minute wall always
# clears within one wait.
POLLER_TOKEN_WAIT_S = 65.0
MAX_ATTEMPTS = 3
# An attempt with less time than this left before the user's deadline is not started.
MIN_ATTEMPT_S = 0.5
# `endpoint` is a path of the upstream API ("fixtures", "games/h2h"); anything else
# (a scheme, "..", a query) is refused before it reaches a URL.
_ENDPOINT_RE = re.compile(r"^/?[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")


def is_rapidapi_host(host: str | None) -> bool:
    host = (host or "").lower().rstrip(".")
    return host == "rapidapi.com" or host.endswith(".rapidapi.com")


def auth_mode(base_url: str, rapidapi_host: str | None = None) -> tuple[AuthMode, str]:
    """Which credentials a base URL takes, and the host to name in `X-RapidAPI-Host`.

    The mode follows the host (contract section 2): a `*.rapidapi.com` host gets the
    RapidAPI headers with that host. `rapidapi_host` is football's `RAPIDAPI_HOST`: when it
    names a RapidAPI host it is the one sent, whatever the base URL's host (the original
    specification's meaning of the setting; it also lets a proxy or the simulator stand
    in for RapidAPI). Any other host gets `x-apisports-key`.
    """
    if rapidapi_host and is_rapidapi_host(rapidapi_host):
        return "rapidapi", rapidapi_host.lower()
    host = urlsplit(base_url).hostname or ""
    if is_rapidapi_host(host):
        return "rapidapi", host.lower()
    return "apisports", host.lower()


def auth_headers(base_url: str, api_key: str, rapidapi_host: str | None = None) -> dict[str, str]:
    """The only headers the relay adds to an upstream request."""
    mode, host = auth_mode(base_url, rapidapi_host)
    if mode == "rapidapi":
        return {"X-RapidAPI-Key": api_key, "X-RapidAPI-Host": host}
    return {"x-apisports-key": api_key}


@dataclass(frozen=True)
class UpstreamResponse:
    """One successful upstream answer: the parsed envelope and what came with it."""

    sport: str
    endpoint: str
    params: Mapping[str, str]
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(repr=False)
    fetched_at: float
    elapsed_ms: float
    limits: RateLimitInfo


class UpstreamClient:
    """Fetches from the upstream within the budget (see the module docstring).

    One aiohttp session per client (one client per process, built by the composition
    root), created on first use on the running loop and closed by `close()`; a session
    passed in is the caller's to close.
    """

    def __init__(self, config: Config, redis: RedisStores, *, clock: Clock,
                 quota: QuotaGovernor, session: aiohttp.ClientSession | None = None,
                 breaker: CircuitBreaker | None = None, backoff: Backoff | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 user_deadline_s: float = USER_DEADLINE_S,
                 poller_token_wait_s: float = POLLER_TOKEN_WAIT_S,
                 max_attempts: int = MAX_ATTEMPTS,
                 series: SeriesRecorder | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._config = config
        self._redis = redis
        self._clock = clock
        self.quota = quota
        self.breaker = breaker or CircuitBreaker(clock)
        self.backoff = backoff or Backoff()
        self._session = session
        self._owns_session = session is None
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.user_deadline_s = user_deadline_s
        self.poller_token_wait_s = poller_token_wait_s
        self.max_attempts = max_attempts
        self._series = series  # the ops page's requests per minute, cluster-wide

    # -- lifecycle --

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # created here, not in __init__: a session binds to the running loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s,
                                              sock_connect=self.connect_timeout_s),
                raise_for_status=False)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- what the client would send --

    def base_url(self, sport: str) -> str:
        return self._config.upstream_base_url(sport)

    def headers_for(self, sport: str) -> dict[str, str]:
        """The auth headers for a sport's host (football also honours `RAPIDAPI_HOST`)."""
        host_override = self._config.rapidapi_host if sport == "football" else None
        return auth_headers(self.base_url(sport), self._config.rapidapi_key.reveal(),
                            host_override)

    # -- fetching --

    async def fetch(self, sport: str, endpoint: str, params: Mapping[str, str], *,
                    purpose: Purpose) -> UpstreamResponse:
        """GET `<base>/<endpoint>?<params>` for `sport` within the budget.

        A poller's call (`purpose="poller"`) may be the breaker's probe during its
        cool-down (see `breaker.py`) and is not retried after a host failure.

        Raises `CircuitOpen` (nothing sent), `QuotaExhausted` (no token; for users at
        once, for pollers after a bounded wait; or the upstream reported a wall),
        `UpstreamFailure` and its subclasses (the upstream failed; `transient` says
        whether asking again later can help), `BadRequest` for an unusable endpoint.
        """
        if sport not in SPORTS:
            raise BadRequest(f"unknown sport {sport!r}")
        if not _ENDPOINT_RE.match(endpoint):
            raise BadRequest(f"not an upstream endpoint: {endpoint!r}")
        endpoint = endpoint.lstrip("/")
        query = {str(k): str(v) for k, v in params.items()}
        started = self._clock.monotonic()
        deadline = started + self.user_deadline_s if purpose == "user" else None
        attempt = 0
        while True:
            attempt += 1
            delay_s = 0.0
            self.breaker.before_call(sport, scheduled=purpose == "poller")
            verdict_given = False
            try:
                token = await self._take_token(sport, endpoint, purpose, deadline)
                watch = metrics.Stopwatch()
                try:
                    response = await self._attempt(sport, endpoint, query, token, deadline)
                except FetchError as exc:
                    _count_request(sport, endpoint, exc.kind, watch, exc)
                    if self._series is not None:
                        self._series.upstream_request(sport)
                    if exc.kind in HOST_FAILURE_KINDS:
                        self.breaker.record_failure(sport)
                    else:
                        # the host answered; a refusal is not ill health
                        self.breaker.record_success(sport)
                    verdict_given = True
                    self._log_failure(exc, sport, endpoint, query, attempt, token)
                    retry_in_s = self._retry_delay_s(exc, sport, purpose, attempt, deadline)
                    if retry_in_s is None:
                        raise
                    delay_s = retry_in_s
                else:
                    _count_request(sport, endpoint, "ok", watch, None)
                    if self._series is not None:
                        self._series.upstream_request(sport)
                    self.breaker.record_success(sport)
                    verdict_given = True
                    return response
            finally:
                if not verdict_given:
                    self.breaker.release(sport)
            await self._clock.sleep(delay_s)

    def _retry_delay_s(self, exc: FetchError, sport: str, purpose: Purpose, attempt: int,
                       deadline: float | None) -> float | None:
        """How long to wait before the next attempt, or None to give up with `exc`."""
        if not exc.transient or attempt >= self.max_attempts:
            return None
        if purpose == "poller" and exc.kind in HOST_FAILURE_KINDS:
            return None  # the poller's next run is the retry, at its cadence
        if self.breaker.state(sport) != "closed":
            return None  # this failure opened the breaker: report it, not CircuitOpen
        if exc.kind == "minute_quota":
            # the governor now holds the window shut: users do not wait for budget, and a
            # poller's next token wait is the right pause, no backoff on top
            return None if purpose == "user" else 0.0
        delay_s = self.backoff.compute(attempt)
        if deadline is not None and (
                self._clock.monotonic() + delay_s + MIN_ATTEMPT_S > deadline):
            return None
        return delay_s

    async def _take_token(self, sport: str, endpoint: str, purpose: Purpose,
                          deadline: float | None) -> QuotaToken:
        try:
            if purpose == "user":
                decision = await self.quota.try_acquire(sport, "user")
            else:
                decision = await self.quota.wait_token(sport, self.poller_token_wait_s,
                                                       "poller")
        except (RedisError, OSError) as exc:
            # no budget check, no request: the quota is the one rule that never bends
            raise Unavailable(f"{sport} /{endpoint}: cannot check the upstream budget "
                              f"(Redis: {exc})") from None
        if decision.token is not None:
            metrics.QUOTA_TOKENS.labels(sport, purpose).inc()
            return decision.token
        window = decision.window
        reserved = decision.reason.endswith("_reserved")
        what = {
            "day": "the day's upstream budget is spent",
            "minute": "the per-minute upstream budget is spent",
        }[window]
        if reserved:
            what += " for user requests (the rest is kept for live data)"
        elif decision.reason == "minute_spent":
            what = "the upstream reported its per-minute limit; pausing"
        raise QuotaExhausted(
            f"{sport} /{endpoint}: {what}; retry in {decision.retry_after_s:.0f} s",
            window=window, source="local", sport=sport, endpoint=endpoint,
            retry_after_s=max(1, math.ceil(decision.retry_after_s)))

    async def _attempt(self, sport: str, endpoint: str, query: dict[str, str],
                       token: QuotaToken, deadline: float | None) -> UpstreamResponse:
        """One request, sent with `token`; returns the data or raises its `FetchError`."""
        timeout_s = self.request_timeout_s
        if deadline is not None:
            timeout_s = max(0.05, min(timeout_s, deadline - self._clock.monotonic()))
        url = f"{self.base_url(sport)}/{endpoint}"
        session = self._session_now()
        started = self._clock.monotonic()
        try:
            async with session.get(
                    url, params=query, headers=self.headers_for(sport), allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout_s,
                                                  sock_connect=min(self.connect_timeout_s,
                                                                   timeout_s))) as resp:
                raw = await resp.read()
                status = resp.status
                headers = {k.lower(): v for k, v in resp.headers.items()}
        except TimeoutError:
            raise UpstreamFailure(
                f"{sport} /{endpoint}: the upstream did not answer within {timeout_s:.1f} s",
                kind="timeout", transient=True, sport=sport, endpoint=endpoint) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(
                f"{sport} /{endpoint}: could not reach the upstream ({type(exc).__name__}: "
                f"{exc})", kind="connection", transient=True, sport=sport,
                endpoint=endpoint) from None
        elapsed_ms = (self._clock.monotonic() - started) * 1000
        limits = parse_rate_limits(headers)
        try:
            await self.quota.note_limits(sport, limits, token)
        except (RedisError, OSError) as exc:
            # the answer is in hand; losing one report only loosens the next check a little
            log.warning("upstream %s: could not record the rate-limit headers: %s", sport, exc)
        body: Any
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        error = classify_answer(status, body, sport=sport, endpoint=endpoint)
        if error is not None:
            if isinstance(error, QuotaExhausted) and error.window == "day":
                error.retry_after_s = max(1, math.ceil(
                    seconds_until_utc_midnight(self._clock.time())))
                await self.quota.mark_day_spent(sport)
            elif isinstance(error, QuotaExhausted):
                await self.quota.mark_minute_spent(sport)
            raise error
        assert isinstance(body, dict)  # classify_answer vouched for the envelope
        log.debug("upstream %s /%s %s: %d in %.0f ms, %d left today (upstream: day %s, "
                  "minute %s)", sport, endpoint, _query_text(query), status, elapsed_ms,
                  token.day_left, _or_dash(limits.day_remaining),
                  _or_dash(limits.minute_remaining))
        return UpstreamResponse(sport=sport, endpoint=endpoint, params=dict(query),
                                status=status, body=body, headers=headers,
                                fetched_at=self._clock.time(), elapsed_ms=elapsed_ms,
                                limits=limits)

    def _log_failure(self, exc: FetchError, sport: str, endpoint: str, query: dict[str, str],
                     attempt: int, token: QuotaToken) -> None:
        # the auth kind needs an operator; the rest is degraded service, retried or served
        # stale (STYLE.md: error means someone must act)
        level = logging.ERROR if exc.kind == "auth" else logging.WARNING
        # exc.message starts with "<sport> /<endpoint>: "
        log.log(level, "upstream failure: %s [%s, kind %s, status %s, attempt %d/%d, "
                "%d left today]", exc.message, _query_text(query), exc.kind,
                _or_dash(exc.http_status), attempt, self.max_attempts, token.day_left)


def _query_text(query: Mapping[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(query.items())) or "-"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _count_request(sport: str, endpoint: str, outcome: str, watch: metrics.Stopwatch,
                   exc: FetchError | None) -> None:
    metrics.UPSTREAM_REQUESTS.labels(sport, endpoint, outcome).inc()
    metrics.UPSTREAM_LATENCY.labels(sport).observe(watch.elapsed_s())
    if isinstance(exc, QuotaExhausted) and exc.source != "local":
        metrics.UPSTREAM_RATE_LIMITED.labels(sport, exc.window).inc()
