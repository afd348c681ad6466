"""`btsguru demo`: everything in one process on embedded defaults.

SQLite in a local file, the embedded Redis-compatible store, and the simulated upstream
started in-process on a free port, with every sport's base URL pointed at it. The demo
user is created idempotently (its password is reset to the documented one on each run)
and gets one fresh API key per run, since a key's secret can only be shown once.
"""

from __future__ import annotations

import asyncio
import secrets

import tornado.netutil

from btsguru.app import Services
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from btsguru.server import print_line, serve_sockets
from btsguru.sports import SPORTS

DEMO_EMAIL = "demo@btsguru.local"
DEMO_PASSWORD = "btsguru-demo"  # noqa: S105 - documented in the README; the demo is local-only
DEMO_DATABASE_URL = "sqlite:///btsguru-demo.db"
DEMO_KEY_NAME = "demo"


def demo_config(config: Config, simulator_url: str) -> Config:
    base_urls = {f"rapidapi_base_url_{s.replace('-', '_')}": f"{simulator_url}/{s}"
                 for s in SPORTS}
    return config.replace(
        redis_url="memory://",
        database_url=DEMO_DATABASE_URL,
        rapidapi_key=type(config.rapidapi_key)("demo-upstream-key"),
        rapidapi_host="127.0.0.1",
        secret_key=type(config.secret_key)(secrets.token_urlsafe(32)),
        # a Laravel backend publishes with the app secret: the demo always has one (the
        # one set in the environment or .env, else a fresh one, printed in the banner)
        reverb_app_secret=config.reverb_app_secret or type(config.reverb_app_secret)(
            secrets.token_hex(16)),
        **base_urls,
    )


async def prepare_demo_user(s: Services) -> str:
    """Create the demo user (or reset its password) and return a fresh API key."""
    from btsguru.errors import Conflict

    try:
        await s.users.create_user(DEMO_EMAIL, DEMO_PASSWORD, tier="pro", admin=True)
    except Conflict:
        await s.users.set_password(DEMO_EMAIL, DEMO_PASSWORD)
    for key in await s.keys.list_keys(DEMO_EMAIL):
        if key.name == DEMO_KEY_NAME and not key.revoked_at:
            await s.keys.revoke(key.prefix)
    _info, secret = await s.keys.create_key(DEMO_EMAIL, name=DEMO_KEY_NAME)
    return secret


def run_demo(config: Config, host: str, port: int) -> int:
    asyncio.run(_demo(config, host, port))
    return 0


async def _demo(config: Config, host: str, port: int) -> None:
    from btsguru.simulator import SimulatorOptions, start_simulator

    simulator = await start_simulator(SimulatorOptions(host="127.0.0.1", port=0, seed=1))
    try:
        secret_generated = not config.reverb_app_secret
        config = demo_config(config, simulator.url)
        database = connect_database(config.database_url)
        try:  # start-up, before the server accepts anyone: blocking here is harmless
            migrate(database, free_rate=config.api_rate_limit,
                    free_period_s=config.api_rate_limit_duration)
        finally:
            close_database(database)

        async def on_ready(s: Services, bound_port: int) -> None:
            key = await prepare_demo_user(s)
            _print_banner(simulator.url, host, bound_port, key, config, secret_generated)

        await serve_sockets(config, tornado.netutil.bind_sockets(port, host), on_ready=on_ready)
    finally:
        await simulator.stop()


def _print_banner(simulator_url: str, host: str, port: int, key: str, config: Config,
                  secret_generated: bool) -> None:
    base = f"http://{host}:{port}"
    for line in (
        "btsguru demo is running (Ctrl-C stops it).",
        f"  simulated upstream  {simulator_url}  (API-Sports shape; /__sim/stats)",
        f"  console             {base}/console   email {DEMO_EMAIL}  password {DEMO_PASSWORD}",
        f"  API key             {key}",
        f"  API docs            {base}/docs",
        f"  REST (raw proxy)    curl -H 'X-API-Key: {key}' '{base}/v1/football/raw/fixtures"
        "?live=all'",
        f"  live games          curl -H 'X-API-Key: {key}' {base}/v1/football/live",
        f"  usage               curl -H 'X-API-Key: {key}' {base}/v1/usage",
        f"  WebSocket           ws://{host}:{port}/v1/ws?api_key={key}",
        f"  SSE                 curl -N '{base}/v1/stream?channels=sports.football&api_key={key}'",
        *_pusher_lines(host, port, config, secret_generated),
        f"  health              {base}/healthz  {base}/readyz",
    ):
        print_line(line)


def _pusher_lines(host: str, port: int, config: Config, secret_generated: bool) -> list[str]:
    """The Pusher (Reverb) side: the endpoint, the app's credentials, and what a Laravel
    app needs to use this demo as its Reverb server."""
    app_id, app_key = config.reverb_app_id, config.reverb_app_key
    secret = config.reverb_app_secret.reveal()
    return [
        f"  Pusher (Reverb)     ws://{host}:{port}/app/{app_key}?protocol=7",
        f"  Pusher app          id {app_id}  key {app_key}  secret {secret}"
        + ("  (new each run: set REVERB_APP_SECRET to keep one)" if secret_generated else ""),
        "  Laravel .env        BROADCAST_CONNECTION=reverb",
        f"                      REVERB_APP_ID={app_id}",
        f"                      REVERB_APP_KEY={app_key}",
        f"                      REVERB_APP_SECRET={secret}",
        f"                      REVERB_HOST={host}",
        f"                      REVERB_PORT={port}",
        "                      REVERB_SCHEME=http",
        f"  Laravel Echo        new Echo({{broadcaster: \"reverb\", key: \"{app_key}\", "
        f"wsHost: \"{host}\", wsPort: {port}, forceTLS: false, enabledTransports: [\"ws\"]}})",
    ]
