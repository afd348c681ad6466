"""The composition root: reads nothing itself, but builds every service once from the
`Config` it is given and hands each handler exactly what it needs.

`open_services` opens resources in an `AsyncExitStack` and pushes each close at once, so
shutdown unwinds in the reverse order (Zulip's Tornado server); `make_app` is the one
routing table, used by `serve`, `demo` and the tests alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web

from btsguru.auth.access import AccessService
from btsguru.auth.keys import KeyService
from btsguru.auth.tiers import TierService
from btsguru.auth.users import UserService
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config, mask_url
from btsguru.db import connect_database
from btsguru.db.runner import DatabaseRunner
from btsguru.handlers.api import api_routes
from btsguru.handlers.base import NotFoundHandler, log_request
from btsguru.handlers.health import HealthHandler, ReadyHandler
from btsguru.handlers.raw import RAW_ROUTE, RawHandler
from btsguru.store.cache import RawCache
from btsguru.store.redis import RedisStores, open_redis
from btsguru.upstream.client import UpstreamClient
from btsguru.upstream.proxy import RawProxy
from btsguru.upstream.quota import QuotaGovernor

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"


@dataclass(frozen=True)
class Services:
    config: Config
    clock: Clock
    redis: RedisStores
    db: DatabaseRunner
    users: UserService
    keys: KeyService
    tiers: TierService
    access: AccessService
    quota: QuotaGovernor
    upstream: UpstreamClient
    cache: RawCache
    proxy: RawProxy

    def start_background(self) -> None:
        """Start the services' own tasks (usage flush and rollup, invalidations): for the
        long-running commands, not for one-shot CLI commands."""
        self.access.start()


@contextlib.asynccontextmanager
async def open_services(config: Config, clock: Clock | None = None) -> AsyncIterator[Services]:
    """Open Redis and the database and build the services over them; close all on exit,
    in reverse order (each close is pushed as soon as its resource is open)."""
    clock = clock or SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        redis = open_redis(config)
        stack.push_async_callback(redis.close)
        database = connect_database(config.database_url)
        db = DatabaseRunner(database)
        stack.callback(db.close)
        log.debug("services: redis %s, database %s", redis.description,
                  mask_url(config.database_url))
        keys, tiers = KeyService(db), TierService(db)
        access = AccessService(redis, keys, tiers, config, clock, db)
        stack.push_async_callback(access.stop)
        quota = QuotaGovernor(redis, config, clock)
        upstream = UpstreamClient(config, redis, clock=clock, quota=quota,
                                  request_timeout_s=float(config.upstream_timeout_s))
        stack.push_async_callback(upstream.close)
        cache = RawCache(redis, config, clock)
        proxy = RawProxy(cache, upstream, redis, clock)
        stack.push_async_callback(proxy.close)
        yield Services(config=config, clock=clock, redis=redis, db=db, users=UserService(db),
                       keys=keys, tiers=tiers, access=access, quota=quota, upstream=upstream,
                       cache=cache, proxy=proxy)


def make_app(s: Services, **settings: Any) -> tornado.web.Application:
    """The routing table of the whole server."""
    routes: list[Any] = [
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler, {"redis": s.redis, "db": s.db}),
        *api_routes(s),
        (RAW_ROUTE, RawHandler, {"access": s.access, "proxy": s.proxy,
                                 "sports": s.config.sports}),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        template_path=str(TEMPLATES),
        static_path=str(STATIC),
        cookie_secret=s.config.secret_key.reveal() or None,
        xsrf_cookies=True,
        **settings,
    )
