"""The `btsguru` command: each subcommand a small function over the same services.

Every failure a user can cause (a bad argument, a bad setting, an unreachable Redis or
database) ends as one line on standard error and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

from btsguru import __version__
from btsguru.config import Config, load_config
from btsguru.errors import BtsguruError, ConfigError
from btsguru.logs import setup_logging
from btsguru.sports import SPORTS

log = logging.getLogger(__name__)

T = TypeVar("T")

# Exit statuses: 0 success, 1 a failure at run time, 2 bad usage or configuration.
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line: one line on stderr, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> Parser:
    parser = Parser(prog="btsguru", description="Real-time sports data relay for API-Sports.")
    parser.add_argument("--version", action="version", version=f"btsguru {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("demo", help="everything in one process on embedded defaults")
    p.add_argument("--port", type=_port, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("serve", help="the production server (REST, streams, console, metrics)")
    p.add_argument("--host", help="address to bind (default REVERB_SERVER_HOST, else "
                   "REVERB_HOST)")
    p.add_argument("--port", type=_port, help="port to bind (default REVERB_SERVER_PORT, "
                   "else REVERB_PORT)")
    p.add_argument("--processes", type=_count, default=1,
                   help="worker processes sharing the port; 0 means one per core")
    p.add_argument("--no-pollers", action="store_true", help="serve only; poll elsewhere")
    p.set_defaults(run=cmd_serve)

    for name in ("poll", "sports:poll"):
        p = sub.add_parser(name, help="pollers only, no HTTP" + (" (alias)" if ":" in name else ""))
        p.set_defaults(run=cmd_poll)

    for name in ("refresh", "rapidapi:refresh"):
        p = sub.add_parser(name, help="one pass of fetching into the cache and the database"
                           + (" (alias)" if ":" in name else ""))
        p.add_argument("--sport", choices=SPORTS)
        p.add_argument("--scope", choices=("live", "today", "static", "all"), default="all")
        p.set_defaults(run=cmd_refresh)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (safe twice)")
    p.set_defaults(run=cmd_migrate)

    p = sub.add_parser("simulate", help="the simulated API-Sports upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8099)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--speed", type=_positive_float, default=1.0,
                   help="simulated seconds per real second")
    p.add_argument("--quota-day", type=_count_positive, default=1_000_000,
                   help="requests per UTC day per sport")
    p.add_argument("--quota-minute", type=_count_positive, default=100_000,
                   help="requests per 60 s per sport")
    p.add_argument("--tape", help="replay this JSON Lines tape instead of simulating")
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser("record", help="record the real upstream into a tape for simulate --tape")
    p.add_argument("--out", required=True)
    p.add_argument("--sport", choices=SPORTS)
    p.add_argument("--duration", type=_count_positive, default=300, metavar="SECONDS")
    p.set_defaults(run=cmd_record)

    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    users_sub.required = True
    p = users_sub.add_parser("create", help="create a user")
    p.add_argument("email")
    p.add_argument("--password", help="at least 8 characters (default: generated and printed)")
    p.add_argument("--tier", default="free")
    p.add_argument("--admin", action="store_true")
    p.set_defaults(run=cmd_users_create)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    keys_sub.required = True
    p = keys_sub.add_parser("create", help="create a key; printed once, on the last line")
    p.add_argument("email")
    p.add_argument("--name", default="default")
    p.add_argument("--expires", type=_count_positive, metavar="DAYS")
    p.add_argument("--scopes", help="comma list of rest, raw, stream, realtime-auth")
    p.set_defaults(run=cmd_keys_create)
    p = keys_sub.add_parser("list", help="list a user's keys (never the secret)")
    p.add_argument("email")
    p.set_defaults(run=cmd_keys_list)
    p = keys_sub.add_parser("revoke", help="revoke a key by its prefix")
    p.add_argument("prefix")
    p.set_defaults(run=cmd_keys_revoke)
    return parser


# -- argument types: argparse turns their ValueError into a one-line usage error --

def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _count_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


for _fn, _name in ((_port, "port"), (_count, "non-negative integer"),
                   (_count_positive, "positive integer"), (_positive_float, "positive number")):
    _fn.__name__ = _name  # argparse names the type in its message: "invalid port value"


# -- commands --

def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from btsguru.demo import run_demo

    try:
        return run_demo(config, args.host, args.port)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {args.host}:{args.port}: "
                           f"{exc.strerror or exc}") from None


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from btsguru.server import run_server

    config.require_upstream_key()
    config.require_secret_key()
    if config.redis_url.startswith("memory://") and args.processes != 1:
        raise ConfigError("REDIS_URL: the embedded store (memory://) is private to one "
                          "process; use a Redis server with --processes")
    _check_reachable(config)
    host = args.host or config.bind_host
    port = config.bind_port if args.port is None else args.port
    try:
        return run_server(config, host, port, args.processes, pollers=not args.no_pollers)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_poll(config: Config, args: argparse.Namespace) -> int:
    """Pollers only, no HTTP: until SIGTERM or SIGINT, then a clean stop (leases given
    back, so another process takes over at once)."""
    config.require_upstream_key()
    _check_reachable(config)

    async def poll() -> int:
        from btsguru.app import open_services

        stop = _stop_on_signals()
        async with open_services(config) as s:
            s.series.start()  # the ops page's requests and failures, from this process too
            await s.pollers.start()
            try:
                await stop.wait()
                log.info("stopping the pollers (pid %d)", os.getpid())
            finally:
                await s.pollers.stop()
        return 0

    return _run(poll())


def cmd_refresh(config: Config, args: argparse.Namespace) -> int:
    """One pass of fetching; exit 0 when every fetch succeeded, 1 otherwise."""
    import time

    from btsguru.server import print_line

    config.require_upstream_key()
    sports = _chosen_sports(config, args.sport)
    _check_reachable(config)

    async def refresh() -> int:
        from btsguru.app import open_services

        started = time.monotonic()
        async with open_services(config) as s:
            print_line(f"refresh {args.scope}: {', '.join(sports)}")
            summary = await s.pollers.refresh(args.scope, sports=sports, progress=print_line)
        print_line(f"done in {time.monotonic() - started:.1f} s: {summary.requests} requests, "
                   f"{summary.games} games, {summary.events} events "
                   f"({summary.game_events} in-game), {summary.failures} failed")
        if not summary.ok:
            _fail(f"btsguru: refresh: {summary.failures} upstream "
                  f"fetch{'es' if summary.failures > 1 else ''} failed; first: "
                  f"{summary.errors[0]}")
            return EXIT_FAILURE
        return 0

    return _run(refresh())


def cmd_record(config: Config, args: argparse.Namespace) -> int:
    """Poll the upstream (live, schedule and static data, at the pollers' cadence) for
    `--duration` seconds, writing every answer to a tape `simulate --tape` replays."""
    import uuid

    from btsguru.server import print_line

    config.require_upstream_key()
    sports = _chosen_sports(config, args.sport)
    _check_reachable(config)

    async def record() -> int:
        from btsguru.app import open_services
        from btsguru.pollers.record import TapeWriter
        from btsguru.pollers.service import Pollers

        stop = _stop_on_signals()
        async with open_services(config) as s:
            # a schedule of its own (not the cluster's), no leases: a recording polls
            # whatever the running pollers do
            pollers = Pollers(config, s.clock, s.redis, s.upstream, s.cache, s.quota, s.games,
                              None, sports=sports, kinds=("live", "schedule", "static"),
                              use_leases=False, namespace=f"record:{uuid.uuid4().hex[:8]}")
            with TapeWriter(args.out, secrets=[config.rapidapi_key.reveal()]) as tape:
                pollers.fetcher.observers.append(tape.write)
                print_line(f"recording {', '.join(sports)} for {args.duration} s to {args.out}")
                await pollers.start()
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), args.duration)
                finally:
                    await pollers.stop()
        per_sport = ", ".join(f"{sport} {n}" for sport, n in sorted(tape.by_sport.items()))
        print_line(f"recorded {tape.lines} responses ({per_sport or 'none'}) to {args.out}")
        return 0

    return _run(record())


def _chosen_sports(config: Config, sport: str | None) -> list[str]:
    if sport is None:
        return list(config.sports)
    if sport not in config.sports:
        raise ConfigError(f"BTSGURU_SPORTS: {sport} is not among the relayed sports "
                          f"({', '.join(config.sports)})")
    return [sport]


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (on the running loop)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from btsguru.db import close_database, connect_database
    from btsguru.db.migrate import migrate

    database = connect_database(config.database_url)
    try:
        applied = migrate(database, free_rate=config.api_rate_limit,
                          free_period_s=config.api_rate_limit_duration)
    finally:
        close_database(database)
    if applied:
        for step in applied:
            print(f"applied {step}")
    else:
        print("schema is up to date")
    return 0


def cmd_simulate(config: Config, args: argparse.Namespace) -> int:
    from btsguru.simulator import SimulatorOptions, run_simulator

    options = SimulatorOptions(host=args.host, port=args.port, seed=args.seed, speed=args.speed,
                               quota_day=args.quota_day, quota_minute=args.quota_minute,
                               tape=args.tape)
    try:
        _run(run_simulator(options))
    except OSError as exc:
        raise CannotListen(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    return 0


def cmd_users_create(config: Config, args: argparse.Namespace) -> int:
    async def create() -> int:
        from btsguru.app import open_services

        async with open_services(config) as s:
            user, password = await s.users.create_user(args.email, args.password,
                                                       tier=args.tier, admin=args.admin)
        print(f"created user {user.email} (id {user.id}, tier {user.tier}"
              f"{', admin' if user.is_admin else ''})")
        if password is not None:
            print(f"password: {password}")
        return 0

    return _run(create())


def cmd_keys_create(config: Config, args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()] if args.scopes else None

    async def create() -> int:
        from btsguru.app import open_services

        async with open_services(config) as s:
            info, secret = await s.keys.create_key(args.email, name=args.name,
                                                   expires_days=args.expires, scopes=scopes)
        expires = f", expires {info.expires_at:%Y-%m-%d}" if info.expires_at else ""
        print(f"created key {info.prefix}… ({info.name}, scopes {','.join(info.scopes)}"
              f"{expires}); it is shown once:")
        print(secret)
        return 0

    return _run(create())


def cmd_keys_list(config: Config, args: argparse.Namespace) -> int:
    async def list_keys() -> int:
        from btsguru.app import open_services

        async with open_services(config) as s:
            keys = await s.keys.list_keys(args.email)
        if not keys:
            print(f"{args.email} has no keys")
            return 0
        print(f"{'PREFIX':<14} {'NAME':<20} {'SCOPES':<28} {'CREATED':<17} {'EXPIRES':<17} "
              f"{'LAST USED':<17} STATE")
        for k in keys:
            state = "revoked" if k.revoked_at else "active"
            print(f"{k.prefix:<14} {k.name[:20]:<20} {','.join(k.scopes):<28} "
                  f"{_when(k.created_at):<17} {_when(k.expires_at):<17} "
                  f"{_when(k.last_used_at):<17} {state}")
        return 0

    return _run(list_keys())


def cmd_keys_revoke(config: Config, args: argparse.Namespace) -> int:
    async def revoke() -> int:
        from btsguru.app import open_services

        async with open_services(config) as s:
            info = await s.keys.revoke(args.prefix)
            await s.access.invalidate_user(info.user_id)  # every server drops it at once
        print(f"revoked key {info.prefix}… ({info.name})")
        return 0

    return _run(revoke())


# -- plumbing --

class CannotListen(BtsguruError):
    """The address is taken or not ours to bind."""

    code = "cannot_listen"


class NotReady(BtsguruError):
    """A command whose machinery lands in a later issue: said plainly, exit 1."""

    code = "not_ready"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _check_reachable(config: Config) -> None:
    """Fail fast, in one line, when Redis or the database cannot be reached."""
    async def check() -> None:
        from btsguru.app import open_services

        async with open_services(config) as s:
            await s.redis.ping()
            await s.db.ping()

    _run(check())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config = load_config()
        setup_logging(config.log_format, config.log_level)
        run: Callable[[Config, argparse.Namespace], int] = args.run
        return run(config, args)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        _fail(f"btsguru: configuration error: {exc.message}")
        return EXIT_USAGE
    except BtsguruError as exc:
        _fail(f"btsguru: error: {exc.message}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("BTSGURU_DEBUG"):
            raise
        _fail(f"btsguru: unexpected error: {type(exc).__name__}: {exc} "
              "(set BTSGURU_DEBUG=1 for the traceback)")
        return EXIT_FAILURE


def _fail(line: str) -> None:
    sys.stderr.write(line.replace("\n", " ") + "\n")
