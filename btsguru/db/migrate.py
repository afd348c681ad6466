"""Creates and upgrades the schema, and seeds the default tiers (`btsguru migrate`).

Runs before anything else touches the database: at `serve`/`demo` start and as
systemd's pre-start, so it must be safe to repeat and safe to race. Steps are numbered
and each one is recorded in `schema_version` once applied; a second run applies
nothing. Concurrent runs (several hosts starting at once) are serialized by a lock:
MySQL's `GET_LOCK`, PostgreSQL's advisory lock, SQLite's write lock.

How steps evolve: a fresh database gets every table as the models define them now and
is stamped with every step at once (as Alembic's `create_all` + `stamp head` does),
so an upgrade step only ever runs on a database that predates it. A new step appends
to `STEPS` and changes tables with `playhouse.migrate`; never edit a shipped step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import peewee

from btsguru.db import models
from btsguru.db.models import MODELS, SchemaVersion, Tier, utc_now
from btsguru.errors import Unavailable

log = logging.getLogger(__name__)

LOCK_NAME = "btsguru_migrate"
LOCK_WAIT_S = 60  # a migration takes seconds; a minute means a stuck peer, not a queue
# pg_advisory_lock takes a 64-bit key; any fixed number unique to this application.
PG_LOCK_KEY = 0x62747367757275  # "btsguru" in ASCII


@dataclass(frozen=True)
class Step:
    version: int
    name: str
    apply: Callable[[peewee.Database], None]

    @property
    def label(self) -> str:
        return f"{self.version:04d} {self.name}"


def _create_schema(database: peewee.Database) -> None:
    database.create_tables(MODELS, safe=True)


STEPS: tuple[Step, ...] = (
    Step(1, "initial schema", _create_schema),
)


def default_tiers(free_rate: int, free_period_s: int) -> list[dict[str, Any]]:
    """The contract's section 5 defaults. The free tier's REST rate comes from
    `API_RATE_LIMIT` per `API_RATE_LIMIT_DURATION` and may burst to the whole rate,
    like the fixed window it replaces; the others burst as the contract says."""
    return [
        dict(name="free", rest_rate=free_rate, rest_period_s=free_period_s,
             rest_burst=free_rate, rest_refill_per_s=free_rate / free_period_s,
             daily_quota=1_000, max_streams=2, max_subscriptions=10,
             client_messages_per_s=5, raw_proxy=False, private_channels=False,
             client_events=False),
        dict(name="pro", rest_rate=600, rest_period_s=60, rest_burst=100,
             rest_refill_per_s=10.0, daily_quota=50_000, max_streams=50,
             max_subscriptions=100, client_messages_per_s=20, raw_proxy=True,
             private_channels=True, client_events=False),
        dict(name="enterprise", rest_rate=6_000, rest_period_s=60, rest_burst=1_000,
             rest_refill_per_s=100.0, daily_quota=None, max_streams=1_000,
             max_subscriptions=1_000, client_messages_per_s=100, raw_proxy=True,
             private_channels=True, client_events=False),
    ]


def migrate(database: peewee.Database, *, free_rate: int = 60,
            free_period_s: int = 60) -> list[str]:
    """Bring `database` to the current schema and seed missing default tiers.

    Returns what it did, in order (`"0001 initial schema"`, `"seed tier free"`, ...);
    an empty list when the database was already current. Existing tier rows are never
    changed, so operators' edits survive."""
    if free_rate < 1 or free_period_s < 1:
        raise ValueError("free_rate and free_period_s must be at least 1")
    _bind(database)
    done: list[str] = []
    with database.connection_context(), _migration_lock(database):
        database.create_tables([SchemaVersion], safe=True)
        applied = {row.version for row in SchemaVersion.select(SchemaVersion.version)}
        if not applied:
            with database.atomic():
                _create_schema(database)
                for step in STEPS:
                    _record(step)
                    done.append(step.label)
        else:
            for step in STEPS:
                if step.version in applied:
                    continue
                # One transaction per step where the backend makes DDL transactional
                # (SQLite, PostgreSQL); MySQL commits DDL implicitly, so a failed
                # step there is retried from its start, which steps must tolerate.
                with database.atomic():
                    step.apply(database)
                    _record(step)
                done.append(step.label)
        with database.atomic():
            done.extend(_seed_tiers(free_rate, free_period_s))
    for label in done:
        log.info("migrate: %s", label)
    return done


def schema_version(database: peewee.Database) -> int:
    """The highest applied step, 0 for a database never migrated."""
    _bind(database)
    with database.connection_context():
        if not database.table_exists(SchemaVersion._meta.table_name):
            return 0
        latest = SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar()
        return int(latest or 0)


def _bind(database: peewee.Database) -> None:
    bound = models.database.obj
    if bound is None:
        models.database.initialize(database)
    elif bound is not database:
        raise RuntimeError("the models are bound to another database; "
                           "migrate the one connect_database returned")


def _record(step: Step) -> None:
    SchemaVersion.create(version=step.version, name=step.name, applied_at=utc_now())


def _seed_tiers(free_rate: int, free_period_s: int) -> list[str]:
    existing = {tier.name for tier in Tier.select(Tier.name)}
    seeded = []
    for values in default_tiers(free_rate, free_period_s):
        if values["name"] in existing:
            continue
        Tier.create(**values, updated_at=utc_now())
        seeded.append(f"seed tier {values['name']}")
    return seeded


@contextmanager
def _migration_lock(database: peewee.Database) -> Iterator[None]:
    """Hold the database-wide migration lock on the current connection."""
    if isinstance(database, peewee.MySQLDatabase):
        got = database.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_WAIT_S)).fetchone()[0]
        if got != 1:
            raise Unavailable(f"another migration has held the lock for {LOCK_WAIT_S} s")
        try:
            yield
        finally:
            database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
    elif isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql(  # type: ignore[no-untyped-call]
            f"SET lock_timeout = '{LOCK_WAIT_S}s'")
        database.execute_sql(  # type: ignore[no-untyped-call]
            "SELECT pg_advisory_lock(%s)", (PG_LOCK_KEY,))
        try:
            yield
        finally:
            database.execute_sql(  # type: ignore[no-untyped-call]
                "SELECT pg_advisory_unlock(%s)", (PG_LOCK_KEY,))
            database.execute_sql("SET lock_timeout = 0")  # type: ignore[no-untyped-call]
    elif isinstance(database, peewee.SqliteDatabase):
        # SQLite's DDL is transactional: one IMMEDIATE transaction takes the write lock
        # up front (waiting out the busy timeout) and makes the whole run atomic.
        with database.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        yield
