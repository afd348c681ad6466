"""Database chaos (issue 10): the database server (MariaDB, then PostgreSQL) unreachable
for a while under a running `btsguru serve` with its pollers, through a TCP proxy the
test cuts and restores (tests/chaos/tcp_proxy.py): the connections in use are reset and
new ones refused, as a crashed or partitioned database looks to its clients.

What must hold: the hot paths keep working for a key the server already knows (REST
live and raw, a new stream connection, events on an open stream); what needs the
database answers a clear 503 (`/v1/usage` as JSON with `Retry-After`, a console login
as a page, an unknown key, `/readyz` naming the database); nothing exits; and afterwards
the usage roll-up catches up with exactly the requests that were made, however many
roll-ups run (no double counting; the test runs it as one more process would, since the
roll-up has no leader, rather than wait up to a minute for the server's own). Bounded
(about a minute); `CHAOS_LONG=1` keeps the database away for two minutes instead of 12 s.

The first tests walk the auth cache's stale-if-error (auth/access.py) through an outage
step by step, in-process on a fake clock: known keys served, bounded in time, unknown
keys refused with 503, invalidations and revocations still applied, a hung database not
waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from bench.harness import processes, report
from btsguru.auth.access import (
    AUTH_CACHE_TTL_S,
    AUTH_STALE_IF_ERROR_S,
    STALE_RETRY_S,
    STALE_WAIT_S,
    AccessService,
)
from btsguru.auth.keys import AuthenticatedKey, KeyService
from btsguru.auth.tiers import TierService
from btsguru.auth.usage import UsageService
from btsguru.clock import FakeClock, SystemClock
from btsguru.config import Config, load_config
from btsguru.db import close_database, connect_database
from btsguru.db.models import ApiKey, UsageDaily, User
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import Unauthorized, Unavailable
from btsguru.store.redis import open_redis
from tests.access_fixtures import CountingKeys, make_account, migrated_sqlite
from tests.chaos.tcp_proxy import TcpProxy
from tests.chaos.upstream_helpers import (
    LONG,
    SPORT,
    Prober,
    Relay,
    Story,
    start_relay,
    upstream,
)
from tests.conftest import SERVER_ENGINES
from tests.waiting import STACK_INTERVAL_S, wait_until

pytestmark = pytest.mark.timeout(600 if LONG else 150)

OUTAGE_S = 120.0 if LONG else 12.0  # three times the auth cache's TTL, at least
WARM_UP_S = 40.0
RECONNECT_S = 30.0  # the database is back and the server has noticed (`/readyz`)
PASSWORD = "bench-password"  # bench_user's
EMAIL = "chaos@example.com"  # start_relay's user


# -- the auth cache through an outage, step by step (in-process, on a fake clock) --

class FlakyKeys(CountingKeys):
    """The real key lookups while the database is "up"; "down" fails at once as a
    refused connection does, "hung" waits until `released` as a partitioned one does."""

    def __init__(self, runner: DatabaseRunner) -> None:
        super().__init__(runner)
        self.mode = "up"
        self.released = asyncio.Event()

    async def authenticate(self, key: str) -> AuthenticatedKey | None:
        if self.mode == "down":
            self.lookups += 1
            raise Unavailable("database unavailable: connection refused (test)")
        if self.mode == "hung":
            self.lookups += 1
            await self.released.wait()
            raise Unavailable("database unavailable: lost connection (test)")
        return await super().authenticate(key)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[DatabaseRunner]:
    yield from migrated_sqlite(tmp_path)


@contextlib.asynccontextmanager
async def access_over(config: Config, runner: DatabaseRunner,
                      ) -> AsyncIterator[tuple[AccessService, FlakyKeys, FakeClock]]:
    clock, keys, stores = FakeClock(), FlakyKeys(runner), open_redis(config)
    access = AccessService(stores, keys, TierService(runner), config, clock, runner)
    try:
        yield access, keys, clock
    finally:
        keys.released.set()
        await access.stop()
        await stores.close()


async def test_a_known_key_outlives_a_database_outage(test_config: Config,
                                                      runner: DatabaseRunner) -> None:
    known = await make_account(runner, "known@example.com")
    stranger = await make_account(runner, "stranger@example.com")
    async with access_over(test_config, runner) as (access, keys, clock):
        principal = await access.authenticate(known.key)
        keys.mode = "down"
        clock.advance(AUTH_CACHE_TTL_S + 1)  # the entry has expired: the database is asked
        assert await access.authenticate(known.key) == principal
        asked = keys.lookups
        clock.advance(STALE_RETRY_S / 2)
        assert await access.authenticate(known.key) == principal
        assert access.cached_principal(known.key) == principal  # the hot path too
        assert keys.lookups == asked, "retried sooner than STALE_RETRY_S"
        clock.advance(STALE_RETRY_S)
        assert await access.authenticate(known.key) == principal
        assert keys.lookups == asked + 1
        with pytest.raises(Unavailable):  # never seen: only the database can tell
            await access.authenticate(stranger.key)
        clock.advance(AUTH_STALE_IF_ERROR_S)
        with pytest.raises(Unavailable):  # trusted for a bounded time only
            await access.authenticate(known.key)


async def test_invalidation_and_revocation_still_apply(test_config: Config,
                                                       runner: DatabaseRunner) -> None:
    account = await make_account(runner, "revoked@example.com")
    async with access_over(test_config, runner) as (access, keys, clock):
        await access.authenticate(account.key)
        keys.mode = "down"
        clock.advance(AUTH_CACHE_TTL_S + 1)
        await access.authenticate(account.key)  # served stale
        await access.invalidate_key(account.key_hash)  # through Redis: no database needed
        with pytest.raises(Unavailable):
            await access.authenticate(account.key)
        keys.mode = "up"
        await KeyService(runner).revoke(account.key[:8])
        with pytest.raises(Unauthorized):
            await access.authenticate(account.key)


async def test_a_hung_database_does_not_hold_a_known_key(test_config: Config,
                                                         runner: DatabaseRunner) -> None:
    account = await make_account(runner, "hung@example.com")
    async with access_over(test_config, runner) as (access, keys, clock):
        principal = await access.authenticate(account.key)
        keys.mode = "hung"
        clock.advance(AUTH_CACHE_TTL_S + 1)
        started = time.monotonic()
        assert await access.authenticate(account.key) == principal
        waited = time.monotonic() - started
        assert STALE_WAIT_S * 0.9 <= waited < STALE_WAIT_S + 1, waited
        started = time.monotonic()  # and the next request does not wait at all
        assert await access.authenticate(account.key) == principal
        assert time.monotonic() - started < 0.2


# -- the whole server through an outage --

def proxied(url: str, port: int) -> str:
    """`url` (any server's: mysql://, postgresql://) with its host and port replaced by
    the proxy's; the scheme, the credentials and the database stay."""
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Usage:
    """Every request the test makes with the key, by the route kind usage counts."""

    def __init__(self) -> None:
        self.made: Counter[str] = Counter()

    def add_prober(self, prober: Prober) -> None:
        for answer in prober.answers:
            assert answer.status != 0, f"{answer.path}: no answer"
            self.made["live" if answer.path.endswith("/live") else "raw"] += 1

    @property
    def total(self) -> int:
        return sum(self.made.values())


async def get(session: aiohttp.ClientSession, url: str, key: str | None = None,
              ) -> tuple[int, dict[str, str], Any]:
    headers = {"X-API-Key": key} if key else {}
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=15)) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, dict(r.headers), body


async def console_login(base_url: str) -> int:
    """The status of a console login with the right password (a fresh cookie jar)."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(f"{base_url}/console/login") as r:
            assert r.status == 200, await r.text()
        xsrf = next(c.value for c in jar if c.key == "_xsrf")
        async with session.post(f"{base_url}/console/login", allow_redirects=False,
                                data={"_xsrf": xsrf, "email": EMAIL,
                                      "password": PASSWORD}) as r:
            return r.status


async def stream_admitted(base_url: str, key: str) -> bool:
    """A new SSE connection with `key` is admitted (its `: subscribed` comment)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{base_url}/v1/stream", params={"channels": f"sports.{SPORT}", "api_key": key},
            timeout=aiohttp.ClientTimeout(total=10)) as r:
        if r.status != 200:
            return False
        async for raw in r.content:
            if raw.startswith(b": subscribed"):
                return True
    return False


async def usage_today(session: aiohttp.ClientSession, relay: Relay) -> int:
    status, _, body = await get(session, f"{relay.stack.base_url}/v1/usage?days=1",
                                relay.stack.api_key)
    assert status == 200, body
    return sum(body["data"]["today"].values())


def test_proxied_keeps_all_but_the_address() -> None:
    assert proxied("mysql://root@127.0.0.1:3306/btsguru_x", 4000) == \
        "mysql://root@127.0.0.1:4000/btsguru_x"
    assert proxied("postgresql://postgres:pw@db.example:5432/b?sslmode=disable", 4001) == \
        "postgresql://postgres:pw@127.0.0.1:4001/b?sslmode=disable"
    assert proxied("postgres://db.example/b", 4002) == "postgres://127.0.0.1:4002/b"


@pytest.mark.parametrize("engine", SERVER_ENGINES)
async def test_database_unreachable_for_a_while(engine: str,
                                                request: pytest.FixtureRequest) -> None:
    """Each database server in turn. SQLite is left out: it is a file inside the
    server's process, with no network between them to cut."""
    direct_url: str = request.getfixturevalue(f"{engine}_url")
    port = urlsplit(direct_url).port
    assert port is not None, direct_url
    with TcpProxy("127.0.0.1", port) as proxy, processes() as group:
        async with upstream() as (server, _log):
            relay = await asyncio.to_thread(start_relay, group, server.url,
                                            DATABASE_URL=proxied(direct_url, proxy.port))
            try:
                figures = await outage(relay, proxy, direct_url)
            finally:
                assert relay.process.poll() is None, relay.stderr.text()
    print(figures)
    report(f"chaos-database-{engine}", [figures], {"long": LONG, "engine": engine})


async def outage(relay: Relay, proxy: TcpProxy, direct_url: str) -> dict[str, Any]:
    base, key = relay.stack.base_url, relay.stack.api_key
    usage = Usage()
    async with aiohttp.ClientSession() as session:
        story, prober = Story(), Prober(base, key)
        story.start(session, base, key)
        usage.made["stream"] += 1
        await asyncio.wait_for(story.connected.wait(), 10)
        await wait_until(lambda: _live(session, relay, usage), WARM_UP_S, "warm-up",
                         interval_s=STACK_INTERVAL_S)
        prober.start(session)
        await wait_until(lambda: len(prober.answers) >= 12, 10, "traffic before the cut",
                         interval_s=STACK_INTERVAL_S)

        proxy.cut()
        cut_at = time.monotonic()
        events_before = len(story.events)
        during = await _during_outage(session, relay, usage)
        await wait_until(lambda: time.monotonic() - cut_at >= OUTAGE_S, OUTAGE_S + 1,
                         "the outage's length", interval_s=STACK_INTERVAL_S)
        served = prober.since(cut_at)
        events_during = len(story.events) - events_before
        proxy.restore()
        restored_at = time.monotonic()
        ready_s = await wait_until(lambda: _ready(session, base), RECONNECT_S,
                                   "/readyz after the database came back",
                                   interval_s=STACK_INTERVAL_S)
        login_after = await console_login(base)
        await prober.stop()
        await story.stop()
        usage.add_prober(prober)
        after = prober.since(restored_at)

        # /v1/usage shows every request made (each call shows those before it)
        shown: list[int] = []

        async def usage_caught_up() -> bool:
            shown.append(await usage_today(session, relay))
            usage.made["other"] += 1
            return shown[-1] == usage.total - 1

        # generous: the flush and the roll-up share two cores with the parallel run
        await wait_until(usage_caught_up, 60,
                         lambda: f"/v1/usage showing every request (it showed "
                                 f"{shown[-1]} of {usage.total - 1}: {dict(usage.made)})",
                         interval_s=STACK_INTERVAL_S)
        rolled = await _rollup(relay, direct_url, usage.total)

    assert [a for a in served if a.status != 200] == [], "a hot path failed without the DB"
    assert len(served) >= OUTAGE_S / 0.5, f"only {len(served)} answers during the outage"
    assert events_during > 0, "the open stream delivered nothing during the outage"
    assert during["stream_admitted"], "a new stream with a known key was refused"
    assert during["usage_status"] == 503 and during["usage_retry_after"], during
    assert during["usage_json"] == "unavailable", during
    assert during["unknown_key_status"] == 503, during
    assert during["readyz"] == (503, ["database"]), during
    assert during["console_login"] == 503, during
    assert login_after in (302, 303), f"console login after recovery: {login_after}"
    assert all(a.status == 200 for a in after)
    assert rolled["rolled_up"] == usage.total, (rolled, usage.made)
    assert rolled["by_kind"] == {k: v for k, v in usage.made.items() if v}, (rolled, usage.made)
    return {"outage_s": round(OUTAGE_S, 1), "served_during_outage": len(served),
            "slowest_during_outage_s": round(max(a.seconds for a in served), 3),
            "events_during_outage": events_during, "db_ready_after_s": round(ready_s, 2),
            "requests_made": usage.total, "usage_counted": rolled["rolled_up"],
            "rollups_run": rolled["rollups"], "proxy_refused": proxy.refused,
            **{f"during_{k}": v for k, v in during.items()}}


async def _live(session: aiohttp.ClientSession, relay: Relay, usage: Usage) -> bool:
    status, _, body = await get(session, f"{relay.stack.base_url}/v1/{SPORT}/live",
                                relay.stack.api_key)
    usage.made["live"] += 1
    return status == 200 and bool(body["data"]) and not body["meta"]["stale"]


async def _ready(session: aiohttp.ClientSession, base: str) -> bool:
    status, _, _ = await get(session, f"{base}/readyz")
    return status == 200


async def _during_outage(session: aiohttp.ClientSession, relay: Relay,
                         usage: Usage) -> dict[str, Any]:
    """What needs the database, and a new stream, once the auth cache has had to ask it
    (its TTL is 4 s: wait past it first, by the readiness check's own failure)."""
    base, key = relay.stack.base_url, relay.stack.api_key
    await wait_until(lambda: _not_ready(session, base), 10, "/readyz failing",
                     interval_s=STACK_INTERVAL_S)
    await asyncio.sleep(5)  # past the auth cache's TTL: the key must now be served stale
    status, _, ready = await get(session, f"{base}/readyz")
    admitted = await stream_admitted(base, key)
    usage.made["stream"] += 1
    usage_status, usage_headers, usage_body = await get(session, f"{base}/v1/usage", key)
    usage.made["other"] += 1
    # the key's own prefix with another secret: only the database can say it is unknown
    unknown = key[:-6] + ("aaaaaa" if not key.endswith("aaaaaa") else "bbbbbb")
    unknown_status, _, _ = await get(session, f"{base}/v1/{SPORT}/live", unknown)
    return {"readyz": (status, ready.get("failed")), "stream_admitted": admitted,
            "usage_status": usage_status, "usage_retry_after": "Retry-After" in usage_headers,
            "usage_json": usage_body["error"]["code"] if isinstance(usage_body, dict) else None,
            "unknown_key_status": unknown_status,
            "console_login": await console_login(base)}


async def _not_ready(session: aiohttp.ClientSession, base: str) -> bool:
    return not await _ready(session, base)


async def _rollup(relay: Relay, direct_url: str, expected: int) -> dict[str, Any]:
    """Once the server has flushed `expected` requests to Redis, roll them up from this
    process too (any process may: the roll-up has no leader), three times over, and read
    what the database holds for the key: each run must leave the same totals."""
    config = load_config(environ={**relay.stack.env, "DATABASE_URL": direct_url},
                         env_file=None)
    database = connect_database(direct_url)
    runner = DatabaseRunner(database)
    stores = open_redis(config)
    usage = UsageService(stores.data, stores.keys, runner, SystemClock())
    try:
        key_id, user_id = await runner.read(_key_of_user, EMAIL)
        day = datetime.now(UTC).strftime("%Y%m%d")

        async def flushed() -> bool:
            fields = await stores.data.hgetall(usage.day_hash(day, user_id))
            requests = 0
            for name, value in fields.items():
                text = name.decode() if isinstance(name, bytes) else name
                requests += int(value) if text.endswith(":r") else 0
            return requests == expected

        await wait_until(flushed, 10, "the server's usage flush", interval_s=STACK_INTERVAL_S)
        totals = []
        for _ in range(3):
            await usage.rollup()
            totals.append(await runner.read(_rows_of_key, key_id))
        assert totals[0] == totals[1] == totals[2], totals
        return {"rolled_up": sum(totals[0].values()), "by_kind": totals[0], "rollups": 3}
    finally:
        await stores.close()
        runner.close()
        close_database(database)


def _key_of_user(email: str) -> tuple[int, int]:
    key = ApiKey.select().join(User).where(User.email == email).get()
    return int(key.id), int(key.user_id)


def _rows_of_key(key_id: int) -> dict[str, int]:
    return {row.kind: int(row.requests) for row in
            UsageDaily.select().where(UsageDaily.key == key_id, UsageDaily.requests > 0)}
