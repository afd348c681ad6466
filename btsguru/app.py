"""The composition root: reads nothing itself, but builds every service once from the
`Config` it is given and hands each handler exactly what it needs.

`open_services` opens resources in an `AsyncExitStack` and pushes each close at once, so
shutdown unwinds in the reverse order (Zulip's Tornado server); `make_app` is the one
routing table, used by `serve`, `demo` and the tests alike. It also builds the views
that hold no resource of their own: the one `SportsView` (REST and the hot path share
it), the console's services and the `/metrics` scrape-time gauges. Nothing else in the
package builds a service, and no handler or collector is given the whole `Services`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web

from btsguru.alerts import Alerter, WebhookSender
from btsguru.auth.access import AccessService
from btsguru.auth.keys import KeyService
from btsguru.auth.tiers import TierService
from btsguru.auth.users import UserService
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config, mask_url
from btsguru.console.directory import UserDirectory
from btsguru.console.ops import OpsReporter
from btsguru.console.sessions import SessionStore
from btsguru.console.streams import StreamCounts
from btsguru.console.throttle import LoginThrottle
from btsguru.console.timeline import OpsTimeline
from btsguru.console.usage import UsageReporter
from btsguru.db import connect_database
from btsguru.db.runner import DatabaseRunner
from btsguru.handlers.api import api_routes
from btsguru.handlers.base import NotFoundHandler, log_request
from btsguru.handlers.console import ConsoleServices, console_routes
from btsguru.handlers.console_base import ConsoleContext, ConsolePages
from btsguru.handlers.docs import DocsHandler, OpenApiHandler
from btsguru.handlers.health import HealthHandler, ReadyHandler
from btsguru.handlers.hot import HotPath, HotPathApplication
from btsguru.handlers.metrics import MetricsHandler, StateGauges
from btsguru.handlers.pusher import PusherHandler
from btsguru.handlers.pusher_http import pusher_http_routes
from btsguru.handlers.raw import RAW_ROUTE, RawHandler
from btsguru.handlers.rest import SportsView, rest_routes
from btsguru.handlers.sse import StreamHandler
from btsguru.handlers.ws import WebSocketHandler
from btsguru.pollers.service import Pollers
from btsguru.pollers.state import PollerStateReader
from btsguru.realtime.hub import Hub
from btsguru.realtime.revocation import StreamRevoker
from btsguru.realtime.slots import StreamSlots
from btsguru.realtime.webhooks import PusherWebhooks
from btsguru.store.bus import Bus, RedisBus
from btsguru.store.cache import RawCache
from btsguru.store.games import GameStore
from btsguru.store.history import EventHistory
from btsguru.store.hot import HotCache
from btsguru.store.pusher import PusherState, new_process_id
from btsguru.store.redis import RedisStores, open_redis
from btsguru.store.series import SeriesRecorder, SeriesStore
from btsguru.store.standings import StandingsStore
from btsguru.upstream.client import UpstreamClient
from btsguru.upstream.proxy import RawProxy
from btsguru.upstream.quota import QuotaGovernor

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def _assets_root() -> Path:
    """templates/ and static/: beside the package in a checkout (or an editable install),
    under <prefix>/share/btsguru when installed from a wheel."""
    installed = Path(sys.prefix) / "share" / "btsguru"
    return ROOT if (ROOT / "templates").is_dir() or not installed.is_dir() else installed


TEMPLATES = _assets_root() / "templates"
STATIC = _assets_root() / "static"


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
    bus: Bus
    history: EventHistory
    games: GameStore
    standings: StandingsStore
    poller_state: PollerStateReader
    pollers: Pollers
    hub: Hub
    alerts: Alerter
    pusher: PusherState
    hot: HotCache
    series: SeriesRecorder
    webhooks: PusherWebhooks | None = None  # None: no PUSHER_WEBHOOK_URLS

    def start_background(self) -> None:
        """Start the services' own tasks (usage flush and rollup, invalidations, the ops
        page's series): for the long-running commands, not for one-shot CLI commands."""
        self.series.start()
        self.access.start()
        self.hot.start()
        self.hub.start()
        self.alerts.start()
        self.pusher.start()
        if self.webhooks is not None:
            self.webhooks.start(self.pusher.occupancy.total, self.pusher.members)


@contextlib.asynccontextmanager
async def open_services(config: Config, clock: Clock | None = None) -> AsyncIterator[Services]:
    """Open Redis and the database and build the services over them; close all on exit,
    in reverse order (each close is pushed as soon as its resource is open)."""
    clock = clock or SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        redis = open_redis(config)
        stack.push_async_callback(redis.close)
        # the ops page's time series: every service below records into it; its last
        # flush runs after they have all stopped, just before Redis closes
        series = SeriesRecorder(SeriesStore(redis), clock)
        stack.push_async_callback(series.close)
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
                                  request_timeout_s=float(config.upstream_timeout_s),
                                  series=series)
        stack.push_async_callback(upstream.close)
        hot = HotCache(redis, clock)  # in-process copies of hot answers, kept coherent
        stack.push_async_callback(hot.stop)
        cache = RawCache(redis, config, clock, hot=hot, series=series)
        proxy = RawProxy(cache, upstream, redis, clock)
        stack.push_async_callback(proxy.close)
        bus = RedisBus(redis.reverb, redis.keys)
        stack.push_async_callback(bus.close)
        history = EventHistory(redis, bus)
        games = GameStore(redis, db, clock, bus, hot=hot, series=series)
        stack.push_async_callback(games.close)  # its last database save runs before db.close
        standings = StandingsStore(redis)
        poller_state = PollerStateReader(redis, clock)
        # started by `serve` (unless --no-pollers) and `poll`; stopped before the stores
        # it writes to close (a no-op when never started)
        pollers = Pollers(config, clock, redis, upstream, cache, quota, games, standings,
                          series=series)
        stack.push_async_callback(pollers.stop)
        hub = Hub(bus, history, games, StreamSlots(redis.reverb, redis.keys), config.sports,
                  series=series)
        series.watch_connections(lambda: Counter(c.kind for c in hub.connections.values()))
        stack.push_async_callback(hub.close)  # before the bus and the store it reads
        # a revoked key's or disabled user's open streams close too, not only its requests
        revoker = StreamRevoker(lambda: list(hub.connections.values()), access.active_key_ids)
        access.on_invalidation(revoker.invalidated)
        stack.push_async_callback(revoker.close)
        process_id = new_process_id()
        # webhooks only when there are URLs (else the subscribe path pays nothing); they
        # close after the Pusher state, whose last departures they still queue
        webhooks = PusherWebhooks(redis.reverb, redis.keys, config, clock,
                                  consumer=process_id) if config.pusher_webhook_urls else None
        if webhooks is not None:
            stack.push_async_callback(webhooks.close)
        pusher = PusherState(redis.reverb, redis.keys, process_id=process_id,
                             webhooks=webhooks)
        stack.push_async_callback(pusher.close)  # after the hub closed its connections
        alerts = Alerter(
            config.sports, clock, redis, quota=quota, tasks=poller_state,
            breaker_state=upstream.breaker.state, database_ping=db.ping,
            webhook=WebhookSender(config.alert_webhook_url, clock)
            if config.alert_webhook_url else None,
            pusher_webhooks=webhooks.queue if webhooks is not None else None)
        stack.push_async_callback(alerts.stop)  # first to stop: it reads everything else
        yield Services(config=config, clock=clock, redis=redis, db=db, users=UserService(db),
                       keys=keys, tiers=tiers, access=access, quota=quota, upstream=upstream,
                       cache=cache, proxy=proxy, bus=bus, history=history, games=games,
                       standings=standings, poller_state=poller_state,
                       pollers=pollers, hub=hub, alerts=alerts, pusher=pusher, hot=hot,
                       series=series, webhooks=webhooks)


def console_services(s: Services) -> ConsoleServices:
    """The console's own services (sessions, login throttle, usage and ops reports): views
    over Redis and the database, built here like every other service."""
    ctx = ConsoleContext(ConsolePages(TEMPLATES), SessionStore(s.redis, s.clock), s.users)
    streams = StreamCounts(s.redis.reverb, s.redis.keys, process_id=s.hub.slots.process_id,
                           local=s.hub)
    return ConsoleServices(
        ctx=ctx, throttle=LoginThrottle(s.redis),
        usage=UsageReporter(s.access, s.tiers, s.redis, s.db, s.clock, streams),
        ops=OpsReporter(s.config.sports, s.quota, s.cache.counters, s.clock,
                        pollers=s.poller_state, streams=streams.rows,
                        alerts=s.alerts.store.rows, redis=s.redis.status),
        timeline=OpsTimeline(SeriesStore(s.redis), s.quota, s.config.sports, s.clock),
        directory=UserDirectory(s.db), keys=s.keys, access=s.access, tiers=s.tiers,
        games=s.games, hub=s.hub, sports=s.config.sports, app_key=s.config.reverb_app_key)


def state_gauges(s: Services) -> StateGauges:
    """What `/metrics` refreshes at scrape time, from the few services that keep it."""
    return StateGauges(
        s.config.sports, s.clock, redis_ping=s.redis.ping, database_ping=s.db.ping,
        breaker_state=s.upstream.breaker.state, quota=s.quota, pollers=s.poller_state,
        connections=lambda: list(s.hub.connections.values()))


def make_app(s: Services, **settings: Any) -> tornado.web.Application:
    """The routing table of the whole server."""
    # one view for `/v1/sports`, `/v1/{sport}/live` and the hot path's cached live lists
    sports_view = SportsView(s.games, s.poller_state, s.clock, s.hot)
    routes: list[Any] = [
        # the hottest routes first: Tornado tries each pattern in order, on every request
        (RAW_ROUTE, RawHandler, {"access": s.access, "proxy": s.proxy,
                                 "sports": s.config.sports}),
        *rest_routes(access=s.access, sports=s.config.sports, view=sports_view,
                     games=s.games, standings=s.standings, clock=s.clock),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler, {"redis": s.redis, "db": s.db}),
        (r"/metrics", MetricsHandler, {"gauges": state_gauges(s),
                                       "token": s.config.metrics_token}),
        (r"/openapi.json", OpenApiHandler),
        (r"/docs", DocsHandler),
        *api_routes(s),
        (r"/v1/ws", WebSocketHandler, {"hub": s.hub, "access": s.access}),
        (r"/v1/stream", StreamHandler, {"access": s.access, "hub": s.hub}),
        (r"(?:/[^/]+)*/app/(?P<key>[^/]+)", PusherHandler,
         {"hub": s.hub, "state": s.pusher, "config": s.config,
          "auth_failed": s.access.failed_authentication}),
        *pusher_http_routes(s.hub, s.pusher, s.history, s.config, s.access),
        *console_routes(console_services(s)),
    ]
    hot_path = HotPath(s.access, s.proxy, sports_view, s.config.sports, s.hot)
    return HotPathApplication(
        routes,
        hot_path=hot_path,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        template_path=str(TEMPLATES),
        static_path=str(STATIC),
        cookie_secret=s.config.secret_key.reveal() or None,
        xsrf_cookies=True,
        # the token reaches forms and htmx through the page, never through script
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},
        **settings,
    )
