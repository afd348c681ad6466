"""Creates and upgrades the schema, and seeds the default tiers (`btsguru migrate`).

Runs before anything else touches the database: at `serve`/`demo` start and as
systemd's pre-start, so it must be safe to repeat and safe to race. Steps are numbered
and each one is recorded in `schema_version` once applied; a second run applies
nothing. Concurrent runs (several hosts starting at once) are serialized by a lock:
MySQL's `GET_LOCK`, PostgreSQL's advisory lock, SQLite's write lock.

How steps evolve: a fresh database gets every table as the models define them now and
is stamped with every step at once (as Alembic's `create_all` + `stamp head` does),
so an upgrade step only ever runs on a database that predates it. A new step appends
to `STEPS` and changes tables with `playhouse.migrate` (or, where that is wrong for a
backend, the DDL the models give); never edit a shipped step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import peewee
from playhouse.migrate import PostgresqlMigrator

from btsguru.db import models
from btsguru.db.models import MODELS, ApiKey, SchemaVersion, Tier, User, utc_now
from btsguru.errors import Unavailable

log = logging.getLogger(__name__)

LOCK_WAIT_S = 60  # a migration takes seconds; a minute means a stuck peer, not a queue
# The lock is per database, not per server: MySQL's named locks and PostgreSQL's
# advisory locks are server-wide, and two deployments (or two test databases) on one
# server must not wait for each other's migrations.
MYSQL_LOCK_NAME = "CONCAT('btsguru_migrate:', SHA1(DATABASE()))"  # 56 characters, <= 64
# pg_advisory_lock(int4, int4): a class unique to this application, and the database
PG_LOCK_CLASS = 0x62747367  # "btsg" in ASCII
PG_LOCK_KEYS = "%s, hashtext(current_database())"


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


def _exact_names_and_double_refill(database: peewee.Database) -> None:
    """MySQL: e-mails, tier names and key prefixes compare byte for byte
    (`ExactCharField`; the default collation made `jose@` and `josé@` one account) and
    the refill becomes a DOUBLE (FLOAT read 100/60 back as 1.66667). PostgreSQL: the
    refill becomes a DOUBLE PRECISION (REAL read it back as 1.6666666). SQLite compared
    exactly and its REAL is a double already."""
    if isinstance(database, peewee.MySQLDatabase):
        changes: tuple[tuple[type[models.BaseModel], tuple[peewee.Field, ...]], ...] = (
            (Tier, (Tier.name, Tier.rest_refill_per_s)), (User, (User.email,)),
            (ApiKey, (ApiKey.prefix,)))
        for model, fields in changes:
            # CHANGE, not playhouse's MODIFY: a field's DDL starts with its name
            ctx: Any = database.get_sql_context()
            ctx.literal("ALTER TABLE ").sql(peewee.Entity(model._meta.table_name))
            for n, field in enumerate(fields):
                ctx.literal(", CHANGE " if n else " CHANGE ").sql(
                    peewee.Entity(field.column_name)).literal(" ").sql(field.ddl(ctx))
            database.execute(ctx)  # type: ignore[no-untyped-call]
    elif isinstance(database, peewee.PostgresqlDatabase):
        PostgresqlMigrator(database).alter_column_type(
            Tier._meta.table_name, Tier.rest_refill_per_s.column_name,
            Tier.rest_refill_per_s).run()
    else:
        return
    # The widened values are the single-precision ones (1.66666662693...): back to the 7
    # significant digits such a float holds, which is what an operator typed, and to the
    # exact rate over period where that is what the refill was.
    for tier in Tier.select(Tier.id, Tier.rest_rate, Tier.rest_period_s, Tier.rest_refill_per_s):
        ratio = tier.rest_rate / tier.rest_period_s
        refill = float(f"{tier.rest_refill_per_s:.7g}")
        if math.isclose(refill, ratio, rel_tol=1e-6):
            refill = ratio
        if refill != tier.rest_refill_per_s:
            Tier.update(rest_refill_per_s=refill).where(Tier.id == tier.id).execute()


STEPS: tuple[Step, ...] = (
    Step(1, "initial schema", _create_schema),
    Step(2, "exact names and a double refill", _exact_names_and_double_refill),
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


def _migration_lock(database: peewee.Database) -> AbstractContextManager[None]:
    """The database-wide migration lock, held on the current connection; entering it
    raises `Unavailable` after waiting `LOCK_WAIT_S`, on every backend."""
    if isinstance(database, peewee.MySQLDatabase):
        return _mysql_lock(database)
    if isinstance(database, peewee.PostgresqlDatabase):
        return _postgres_lock(database)
    if isinstance(database, peewee.SqliteDatabase):
        return _sqlite_lock(database)
    return nullcontext()


def _held() -> Unavailable:
    return Unavailable(f"another migration has held the lock for {LOCK_WAIT_S} s")


def _sql(database: peewee.Database, query: str, params: tuple[Any, ...] = ()) -> Any:
    return database.execute_sql(query, params)  # type: ignore[no-untyped-call]


@contextmanager
def _mysql_lock(database: peewee.Database) -> Iterator[None]:
    if _sql(database, f"SELECT GET_LOCK({MYSQL_LOCK_NAME}, %s)",
            (LOCK_WAIT_S,)).fetchone()[0] != 1:
        raise _held()
    try:
        yield
    finally:
        _sql(database, f"SELECT RELEASE_LOCK({MYSQL_LOCK_NAME})")


@contextmanager
def _postgres_lock(database: peewee.Database) -> Iterator[None]:
    _sql(database, f"SET lock_timeout = '{LOCK_WAIT_S}s'")  # the lock and the DDL's locks
    try:
        try:
            _sql(database, f"SELECT pg_advisory_lock({PG_LOCK_KEYS})", (PG_LOCK_CLASS,))
        except peewee.OperationalError as exc:
            if "lock timeout" not in str(exc):
                raise
            raise _held() from None
        try:
            yield
        finally:
            _sql(database, f"SELECT pg_advisory_unlock({PG_LOCK_KEYS})", (PG_LOCK_CLASS,))
    finally:
        _sql(database, "RESET lock_timeout")  # the connection goes back to the pool


@contextmanager
def _sqlite_lock(database: peewee.Database) -> Iterator[None]:
    # SQLite's DDL is transactional: one IMMEDIATE transaction takes the write lock up
    # front and makes the whole run atomic. It waits as long as the servers' locks do,
    # not the connection's usual busy timeout.
    busy_ms = int(_sql(database, "PRAGMA busy_timeout").fetchone()[0])
    _sql(database, f"PRAGMA busy_timeout = {LOCK_WAIT_S * 1000}")
    try:
        with ExitStack() as transaction:
            try:
                transaction.enter_context(database.atomic(lock_type="IMMEDIATE"))
            except peewee.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                raise _held() from None
            yield
    finally:
        _sql(database, f"PRAGMA busy_timeout = {busy_ms}")
