"""The simulated upstream's HTTP face: API-Sports on `/{sport}/...`, control on `/__sim/`.

Where it sits: the top of `btsguru simulate` (and the upstream of every test, demo and
benchmark). `Simulator` holds the state (simulated clock, quota per sport, queued
faults, request counters, the tape) and `make_app()` serves it with Tornado. An
upstream request goes: count it -> authenticate as API-Sports or the RapidAPI proxy
would -> injected fault -> quota (not `/status`) -> answer from the tape or the seeded
world -> rate-limit headers. Every step answers with the real upstream's wording and
HTTP status; nothing here shares code with the relay's upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from btsguru.simulator.api import Clock, UpstreamAPI, envelope
from btsguru.simulator.catalog import Catalog
from btsguru.simulator.games import Schedule
from btsguru.simulator.quota import Fault, FaultQueue, SportQuota, parse_fault
from btsguru.simulator.tape import Tape
from btsguru.sports import SPORTS

if TYPE_CHECKING:
    from btsguru.simulator import SimulatorOptions

log = logging.getLogger(__name__)

MISSING_KEY_MESSAGE = ("Error/Missing application key. Go to "
                 "https://www.api-football.com/documentation-v3 to learn how to get your "
                 "API application key.")
DAY_MESSAGE = ("You have reached the request limit for the day, Go to "
               "https://dashboard.api-football.com to upgrade your plan.")
MINUTE_MESSAGE = ("Too many requests. You have exceeded the limit of requests per minute of "
                  "your subscription.")
PROXY_429_MESSAGE = ("Too many requests. You have reached your per-minute request limit. "
                     "Please wait a few seconds before retrying or upgrade your plan for "
                     "higher limits.")
FAILURE_MESSAGE = "Something went wrong while fetching details. Try again later."
RAPIDAPI_KEY_MESSAGE = ("Invalid API key. Go to https://docs.rapidapi.com/docs/keys for more "
                        "info.")
BUG_MESSAGE = ("This is on our side, please report us this bug on "
               "https://dashboard.api-football.com")
GARBAGE_BODY = b'{"get":"fixtures","parameters":{"live":"all"},"errors":[],"results":3,' \
    b'"response":[{"fixture":{"id":10'  # cut off mid-object, as a dropped connection leaves it
MAX_ADVANCE_S = 10 * 366 * 86400
VERSION_SEGMENTS = frozenset({"v1", "v2", "v3"})  # RapidAPI's football paths carry "/v3"


class Simulator:
    """The simulated upstream's state; a pure function of the seed plus what tests do."""

    def __init__(self, options: SimulatorOptions, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self._clock = clock
        self.catalog = Catalog(options.seed)
        self.schedule = Schedule(self.catalog)
        self.api = UpstreamAPI(self.catalog, self.schedule)
        self.tape = Tape.load(options.tape) if options.tape else None
        self.faults = FaultQueue()
        # Set when the server stops, so requests held by a "timeout" fault let go at once;
        # `_idle` is set while no request is held.
        self.closing = asyncio.Event()
        self._held = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.reset()

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Mark a request as held by a fault until its answer is written."""
        self._held += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._held -= 1
            if self._held == 0:
                self._idle.set()

    async def release_held(self, timeout_s: float = 5.0) -> None:
        """Let every held request answer now (before its connection is closed)."""
        self.closing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)

    def reset(self) -> None:
        """Back to the seed's initial state: clock, counters, faults, quotas, tape."""
        self._started_real = self._clock()
        self.advanced_s = 0.0
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.faults.clear()
        self.quotas = {sport: SportQuota(self.options.quota_day, self.options.quota_minute)
                       for sport in SPORTS}
        if self.tape is not None:
            self.tape.rewind()

    def now(self) -> Clock:
        real = self._clock()
        sim = real + self.advanced_s + (self.options.speed - 1) * (real - self._started_real)
        return Clock(real, sim)

    def advance(self, seconds: float) -> None:
        self.advanced_s += seconds

    def count(self, path: str) -> None:
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1

    def stats(self) -> dict[str, Any]:
        """Every upstream request served (`requests`, `by_path`), and per sport what its
        quota saw (`SportQuota.stats`: the busiest 60-second window, the refusals)."""
        return {"requests": self.requests, "by_path": dict(self.by_path),
                "by_sport": {sport: quota.stats() for sport, quota in self.quotas.items()}}

    def make_app(self) -> tornado.web.Application:
        deps = {"sim": self}
        return tornado.web.Application([
            (r"/__sim/stats", StatsHandler, deps),
            (r"/__sim/clock", ClockHandler, deps),
            (r"/__sim/advance", AdvanceHandler, deps),
            (r"/__sim/fault", FaultHandler, deps),
            (r"/__sim/reset", ResetHandler, deps),
            (r"/__sim/.*", UnknownControlHandler, deps),
            (r"/.*", UpstreamHandler, deps),
        ], log_function=_log_request)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Per-request lines are debug: a demo or benchmark makes thousands of them.
    log.debug("%d %s %.2f ms", handler.get_status(), handler.request.uri,
              1000 * handler.request.request_time())


class BaseHandler(tornado.web.RequestHandler):
    sim: Simulator

    def initialize(self, sim: Simulator) -> None:
        self.sim = sim

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(body if isinstance(body, bytes) else orjson.dumps(body))

    def check_xsrf_cookie(self) -> None:  # a machine API: no cookies, no forms
        return None

    def compute_etag(self) -> None:  # the upstream never answers 304
        return None


class ControlHandler(BaseHandler):
    """`/__sim/*`: the control API for tests and benchmarks (no authentication)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json(status_code, {"error": self._reason})

    def json_body(self) -> Any:
        if not self.request.body.strip():
            return {}
        try:
            return orjson.loads(self.request.body)
        except orjson.JSONDecodeError:
            raise tornado.web.HTTPError(400, reason="body is not JSON") from None


class UnknownControlHandler(ControlHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(404, reason="unknown control route")

    post = get


class StatsHandler(ControlHandler):
    def get(self) -> None:
        self.send_json(200, self.sim.stats())


class ClockHandler(ControlHandler):
    def get(self) -> None:
        clock = self.sim.now()
        self.send_json(200, {
            "real_now": datetime.fromtimestamp(clock.real_now, UTC).isoformat(),
            "sim_now": datetime.fromtimestamp(clock.sim_now, UTC).isoformat(),
            "offset_s": round(clock.sim_now - clock.real_now, 3),
            "speed": self.sim.options.speed,
        })


class AdvanceHandler(ControlHandler):
    def post(self) -> None:
        body = self.json_body()
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or not 0 <= seconds <= MAX_ADVANCE_S):
            raise tornado.web.HTTPError(
                400, reason="seconds must be a number of seconds >= 0 (at most ten years)")
        self.sim.advance(float(seconds))
        clock = self.sim.now()
        self.send_json(200, {"advanced_s": self.sim.advanced_s,
                             "sim_now": datetime.fromtimestamp(clock.sim_now, UTC).isoformat()})


class FaultHandler(ControlHandler):
    def post(self) -> None:
        try:
            fault = parse_fault(self.json_body())
        except ValueError as exc:
            raise tornado.web.HTTPError(400, reason=str(exc)) from None
        self.sim.faults.push(fault)
        self.send_json(200, {"queued": self.sim.faults.pending()})


class ResetHandler(ControlHandler):
    def post(self) -> None:
        self.sim.reset()
        self.send_json(200, {"reset": True})


class UpstreamHandler(BaseHandler):
    """Everything else: the API-Sports API of one sport per path prefix."""

    def set_default_headers(self) -> None:
        self.set_header("Server", "nginx")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code >= 500:
            self.send_json(500, {"message": FAILURE_MESSAGE})
        else:  # e.g. 405 for a verb Tornado itself refuses (HEAD)
            self.send_json(status_code, {"message": self._reason})

    async def get(self) -> None:
        try:
            await self._serve()
        except Exception:
            log.exception("simulated upstream failed on %s", self.request.uri)
            if not self._finished:
                self.clear()
                self.send_json(500, {"message": FAILURE_MESSAGE})

    async def _not_get(self) -> None:
        self._count()
        self.send_json(405, {"message": "Method not allowed. Only GET is accepted."})

    post = put = delete = patch = options = _not_get

    def _route(self) -> tuple[str, str]:
        parts = [p for p in self.request.path.split("/") if p]
        sport = parts[0] if parts else ""
        rest = parts[1:]
        if rest and rest[0] in VERSION_SEGMENTS:
            rest = rest[1:]
        return sport, "/".join(rest)

    def _count(self) -> None:
        sport, endpoint = self._route()
        self.sim.count(f"/{sport}/{endpoint}" if sport in SPORTS else self.request.path)

    def _params(self) -> dict[str, str]:
        return {name: values[-1].decode("utf-8", "replace")
                for name, values in self.request.query_arguments.items()}

    def _auth(self) -> str | None:
        """"direct" or "rapidapi" when accepted; else the refusal is already sent."""
        headers = self.request.headers
        if headers.get("x-apisports-key", "").strip():
            return "direct"
        if "x-rapidapi-key" in headers:
            if headers.get("x-rapidapi-key", "").strip() and \
                    headers.get("x-rapidapi-host", "").strip():
                return "rapidapi"
            self.send_json(401, {"message": RAPIDAPI_KEY_MESSAGE},
                           {"X-RapidAPI-Proxy-Response": "true", "Server": "RapidAPI-1.2.8"})
            return None
        return ""

    async def _serve(self) -> None:
        sim = self.sim
        sport, endpoint = self._route()
        self._count()
        if sport not in SPORTS:
            self.send_json(404, {"message": "API doesn't exists"})
            return
        params = self._params()
        mode = self._auth()
        if mode is None:
            return
        if mode == "":
            self.send_json(200, envelope(sport, endpoint, params,
                                         {"token": MISSING_KEY_MESSAGE}, []))
            return
        fault = sim.faults.take()
        if fault is not None and await self._fault(fault, sport, endpoint, params):
            return
        clock = sim.now()
        quota = sim.quotas[sport]
        if endpoint != "status":  # /status never counts against the quota
            spent = quota.take(clock.real_now)
            if spent is not None:
                key, text, status = ("requests", DAY_MESSAGE, 200) if spent == "day" else \
                    ("rateLimit", MINUTE_MESSAGE, 429)
                self.send_json(status, envelope(sport, endpoint, params, {key: text}, []),
                               self._budget_headers(mode, quota, clock.real_now))
                return
        headers = self._budget_headers(mode, quota, clock.real_now)
        if sim.tape is not None:
            entry = sim.tape.next(sport, "/" + endpoint, params)
            if entry is not None:
                self.set_status(entry.status)
                self.set_header("Content-Type", "application/json")
                for name, value in entry.headers:
                    self.set_header(name, value)
                for name, value in headers.items():
                    self.set_header(name, value)
                self.finish(entry.body)
                return
            body = envelope(sport, endpoint, params, [], [])
        else:
            body = sim.api.answer(sport, endpoint, params, clock,
                                  requests_today=quota.used_today(clock.real_now),
                                  limit_day=quota.day_limit)
        self.send_json(200, orjson.dumps(body), headers)

    def _budget_headers(self, mode: str, quota: SportQuota, now: float) -> dict[str, str]:
        headers = quota.headers(now)
        if mode == "rapidapi":
            headers.update(quota.resets(now))
            headers.update({"Server": "RapidAPI-1.2.8", "X-RapidAPI-Version": "1.2.8",
                            "X-RapidAPI-Region": "AWS - eu-central-1"})
        return headers

    async def _fault(self, fault: Fault, sport: str, endpoint: str,
                     params: dict[str, str]) -> bool:
        """Apply an injected fault; True when it has answered the request itself."""
        if fault.mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sim.closing.wait(), timeout=fault.delay_s)
            return False
        if fault.mode == "timeout":
            async with self.sim.holding():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.sim.closing.wait(), timeout=fault.delay_s)
                self.send_json(499, {"message": FAILURE_MESSAGE})
        elif fault.mode == "500":
            self.send_json(500, {"message": FAILURE_MESSAGE})
        elif fault.mode == "429":
            self.send_json(429, envelope(sport, endpoint, params,
                                         {"rateLimit": PROXY_429_MESSAGE}, []))
        elif fault.mode == "garbage":
            self.send_json(200, GARBAGE_BODY)
        else:  # errors200: the documented upstream-side bug, inside an HTTP 200
            errors = fault.errors or {
                "time": datetime.fromtimestamp(self.sim.now().real_now, UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"),
                "bug": BUG_MESSAGE, "report": "info@api-football.com"}
            self.send_json(200, envelope(sport, endpoint, params, errors, []))
        return True
