"""Helpers for the upstream tests: Redis clients on the test's own prefix, the simulator
in-process on an ephemeral port, and its control API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from btsguru.backoff import Backoff
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config
from btsguru.store.redis import RedisStores, open_redis
from btsguru.upstream import CircuitBreaker, QuotaGovernor, UpstreamClient


def with_quota(config: Config, *, day: int = 7500, minute: int = 300) -> Config:
    return config.replace(upstream_daily_quota=day, upstream_minute_quota=minute)


@asynccontextmanager
async def redis_stores(config: Config) -> AsyncIterator[RedisStores]:
    stores = open_redis(config)
    try:
        yield stores
    finally:
        await stores.close()


class PinnedClock(SystemClock):
    """The real clock moved to read `start` now, running on from there: what a test gives
    the simulator (`simulator(clock=...)`) and the relay alike to pin the time of day it
    needs, instead of depending on when it runs."""

    def __init__(self, start: float) -> None:
        self._offset = start - time.time()

    def time(self) -> float:
        return time.time() + self._offset


@asynccontextmanager
async def simulator(*, clock: Clock | None = None, **options: Any) -> AsyncIterator[Any]:
    """The simulated upstream on an ephemeral port (generous quotas unless given); its
    dates follow `clock` (the real clock unless given)."""
    from btsguru.simulator import SimulatorOptions, start_simulator

    settings: dict[str, Any] = {"port": 0, "seed": 1}
    settings.update(options)
    server = await start_simulator(SimulatorOptions(**settings),
                                   clock=(clock or SystemClock()).time)
    try:
        yield server
    finally:
        await server.stop()


def point_at(config: Config, server: Any) -> Config:
    """Every sport's base URL on the simulator (paths are /{sport}/...)."""
    return config.replace(
        rapidapi_base_url_football=f"{server.url}/football",
        rapidapi_base_url_basketball=f"{server.url}/basketball",
        rapidapi_base_url_hockey=f"{server.url}/hockey",
        rapidapi_base_url_baseball=f"{server.url}/baseball",
        rapidapi_base_url_american_football=f"{server.url}/american-football")


async def sim_stats(server: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{server.url}/__sim/stats") as resp:
        assert resp.status == 200
        stats: dict[str, Any] = await resp.json()
        return stats


async def sim_requests(server: Any) -> int:
    return int((await sim_stats(server))["requests"])


async def sim_fault(server: Any, mode: str, count: int = 1, delay_s: float | None = None,
                    errors: dict[str, str] | None = None) -> None:
    """The next `count` upstream requests fail as `mode` says (errors200 may name the
    `errors` object to answer with)."""
    payload: dict[str, Any] = {"mode": mode, "count": count}
    if delay_s is not None:
        payload["delay_s"] = delay_s
    if errors is not None:
        payload["errors"] = errors
    async with aiohttp.ClientSession() as session, \
            session.post(f"{server.url}/__sim/fault", json=payload) as resp:
        assert resp.status in (200, 204), await resp.text()


@asynccontextmanager
async def upstream_client(config: Config, *, clock: Clock | None = None,
                          breaker: CircuitBreaker | None = None,
                          **client_options: Any) -> AsyncIterator[UpstreamClient]:
    """A client with its own Redis clients and governor; fast backoff unless given."""
    clock = clock or SystemClock()
    async with redis_stores(config) as stores:
        governor = QuotaGovernor(stores, config, clock)
        client_options.setdefault("backoff", Backoff(base_s=0.01, cap_s=0.05))
        client = UpstreamClient(config, stores, clock=clock, quota=governor, breaker=breaker,
                                **client_options)
        try:
            yield client
        finally:
            await client.close()
