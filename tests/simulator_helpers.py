"""Helpers for the simulator's tests: run it in-process on a free port and speak HTTP to it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from btsguru.simulator import SimulatorOptions, SimulatorServer, start_simulator

KEY = {"x-apisports-key": "test-key"}
LIST_ENDPOINT = {"football": "fixtures", "basketball": "games", "hockey": "games",
                 "baseball": "games", "american-football": "games"}


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[SimulatorServer]:
    server = await start_simulator(SimulatorOptions(port=0, **options))
    try:
        yield server
    finally:
        await server.stop()


async def fetch(server: SimulatorServer, path: str, *, headers: dict[str, str] | None = None,
                method: str = "GET", body: Any = None,
                timeout_s: float = 20) -> HTTPResponse:
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
    return await AsyncHTTPClient().fetch(
        server.url + path, method=method, headers=KEY if headers is None else headers,
        body=raw, raise_error=False, request_timeout=timeout_s)


async def get_json(server: SimulatorServer, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await fetch(server, path, **kwargs)
    return response.code, json.loads(response.body)


async def control(server: SimulatorServer, route: str, body: Any = None) -> tuple[int, Any]:
    method = "GET" if route in ("stats", "clock") else "POST"
    response = await AsyncHTTPClient().fetch(
        f"{server.url}/__sim/{route}", method=method,
        body=None if method == "GET" else json.dumps(body if body is not None else {}),
        raise_error=False)
    return response.code, json.loads(response.body)


def utc_day(offset_days: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(days=offset_days)).strftime("%Y-%m-%d")


def status_of(sport: str, item: dict[str, Any]) -> str:
    status = item["game"]["status"] if sport == "american-football" else (
        item["fixture"]["status"] if sport == "football" else item["status"])
    return str(status["short"])
