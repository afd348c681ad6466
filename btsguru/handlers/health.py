"""`/healthz` (the process runs) and `/readyz` (Redis and the database answer; where Redis
is: the topology and, with Sentinel, the master the sentinels name now)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from btsguru.db.runner import DatabaseRunner
from btsguru.errors import Unavailable
from btsguru.handlers.base import JsonHandler
from btsguru.store.redis import RedisStores

# A readiness probe must answer before a load balancer's own timeout (commonly 5 s).
READY_CHECK_TIMEOUT_S = 2.0


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    def initialize(self, redis: RedisStores, db: DatabaseRunner) -> None:
        self.redis = redis
        self.db = db

    async def get(self) -> None:
        checks = {"redis": await _check(self.redis.ping()),
                  "database": await _check(self.db.ping())}
        failed = sorted(name for name, result in checks.items() if result != "ok")
        redis = (await self.redis.status()).to_json()
        if failed:
            self.write_json({"status": "unavailable", "failed": failed, "checks": checks,
                             "redis": redis}, 503)
        else:
            self.write_json({"status": "ok", "checks": checks, "redis": redis})


async def _check(probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, READY_CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {READY_CHECK_TIMEOUT_S:g} s"
    except Unavailable as exc:
        return exc.message
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"
