"""The database layer on real databases: connecting, migrating, the schema, the runner."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from urllib.parse import urlsplit

import peewee
import pytest

from btsguru.db import close_database, connect_database, models
from btsguru.db import migrate as migrate_module
from btsguru.db.migrate import STEPS, migrate, schema_version
from btsguru.db.models import ApiKey, GameRecord, League, Tier, UsageDaily, User, utc_now
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import ConfigError, Unavailable
from tests.conftest import SERVER_ENGINES

EXPECTED_TABLES = {"schema_version", "tiers", "users", "api_keys", "usage_daily",
                   "usage_hourly", "leagues", "teams", "games"}
FIRST_RUN = [step.label for step in STEPS] + [
    "seed tier free", "seed tier pro", "seed tier enterprise"]

# The contract's section 5, column by column.
CONTRACT_TIERS = {
    # name: (rate, period_s, burst, refill/s, per day, streams, subs, msgs/s, raw, private)
    "free": (60, 60, 60, 1.0, 1_000, 2, 10, 5, False, False),
    "pro": (600, 60, 100, 10.0, 50_000, 50, 100, 20, True, True),
    "enterprise": (6_000, 60, 1_000, 100.0, None, 1_000, 1_000, 100, True, True),
}


def tier_rows(database: peewee.Database) -> dict[str, tuple[object, ...]]:
    with database.connection_context():
        return {t.name: (t.rest_rate, t.rest_period_s, t.rest_burst, t.rest_refill_per_s,
                         t.daily_quota, t.max_streams, t.max_subscriptions,
                         t.client_messages_per_s, bool(t.raw_proxy), bool(t.private_channels))
                for t in Tier.select()}


# -- connecting --

def test_unknown_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown scheme 'redis://'"):
        connect_database("redis://127.0.0.1/0")


def test_sqlite_in_memory_is_refused():
    with pytest.raises(ConfigError, match="file path"):
        connect_database("sqlite:///:memory:")


def test_sqlite_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        connect_database(f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")


def test_sqlite_connection_settings(sqlite_url):
    database = connect_database(sqlite_url)
    try:
        with database.connection_context():
            assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
            assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 10_000
        assert models.database.obj is database
    finally:
        close_database(database)


@pytest.mark.mariadb
def test_mysql_unreachable_server_is_unavailable():
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as caught:
        connect_database("mysql://root:sup3rsecret@127.0.0.1:1/btsguru")
    assert "sup3rsecret" not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 30


@pytest.mark.mariadb
def test_mysql_unknown_database_is_a_config_error():
    with pytest.raises(ConfigError, match="does not exist"):
        connect_database("mysql://root@127.0.0.1:3306/btsguru_no_such_database_here")


@pytest.mark.mariadb
def test_mysql_refused_password_is_not_shown():
    with pytest.raises(ConfigError, match="refused the credentials") as caught:
        connect_database("mysql://root:hunter2pass@127.0.0.1:3306/mysql")
    assert "hunter2pass" not in str(caught.value)
    assert "****" in str(caught.value)


@pytest.mark.postgres
def test_postgres_unreachable_server_is_unavailable():
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as caught:
        connect_database("postgresql://postgres:sup3rsecret@127.0.0.1:1/btsguru")
    assert "sup3rsecret" not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 30


@pytest.mark.postgres
def test_postgres_unknown_database_is_a_config_error(postgres_url):
    missing = postgres_url.rsplit("/", 1)[0] + "/btsguru_no_such_database_here"
    with pytest.raises(ConfigError, match="does not exist"):
        connect_database(missing)


@pytest.mark.postgres
def test_postgres_unknown_user_is_a_config_error(postgres_url):
    # MySQL denies access to an unknown user; PostgreSQL's trust rule says it does not
    # exist: both are a configuration to fix, not a server to wait for.
    parts = urlsplit(postgres_url)
    wrong = f"postgresql://btsguru_nobody:hunter2pass@{parts.netloc.split('@')[1]}{parts.path}"
    with pytest.raises(ConfigError, match="refused the credentials") as caught:
        connect_database(wrong)
    assert "hunter2pass" not in str(caught.value)


@pytest.mark.parametrize("engine, query, expected", [
    pytest.param("mariadb", "SELECT @@session.time_zone", "+00:00", marks=pytest.mark.mariadb),
    pytest.param("postgres", "SHOW timezone", "UTC", marks=pytest.mark.postgres),
])
def test_server_sessions_run_in_utc(engine, query, expected, request):
    # DATETIME/TIMESTAMP hold naive UTC: whatever the server's own zone, NOW() agrees
    database = connect_database(request.getfixturevalue(f"{engine}_url"))
    try:
        with database.connection_context():
            assert database.execute_sql(query).fetchone()[0] == expected
    finally:
        close_database(database)


# -- migrating --

def test_migrate_creates_seeds_and_is_idempotent(db_url):
    database = connect_database(db_url)
    try:
        assert schema_version(database) == 0
        assert migrate(database, free_rate=60, free_period_s=60) == FIRST_RUN
        assert migrate(database, free_rate=60, free_period_s=60) == []
        assert schema_version(database) == STEPS[-1].version
        assert set(database.get_tables()) >= EXPECTED_TABLES
        assert tier_rows(database) == CONTRACT_TIERS
        with database.connection_context():
            versions = [(r.version, r.name) for r in models.SchemaVersion.select()]
            assert all(not t.client_events for t in Tier.select())
        assert versions == [(s.version, s.name) for s in STEPS]
    finally:
        close_database(database)


def test_operator_edits_survive_remigration(db_url):
    database = connect_database(db_url)
    try:
        migrate(database)
        with database.connection_context():
            Tier.update(rest_rate=123, daily_quota=None, raw_proxy=True).where(
                Tier.name == "free").execute()
            Tier.create(name="custom", rest_rate=1, rest_period_s=1, rest_burst=1,
                        rest_refill_per_s=1.0, daily_quota=7, max_streams=1,
                        max_subscriptions=1, client_messages_per_s=1)
        # A different free rate (the operator changed API_RATE_LIMIT) must not
        # overwrite the row either: the database is the authority once seeded.
        assert migrate(database, free_rate=5, free_period_s=1) == []
        rows = tier_rows(database)
        assert rows["free"][0] == 123
        assert rows["free"][4] is None
        assert rows["free"][8] is True
        assert rows["custom"][4] == 7
        assert rows["pro"] == CONTRACT_TIERS["pro"]
    finally:
        close_database(database)


def test_free_tier_follows_api_rate_limit(sqlite_url):
    database = connect_database(sqlite_url)
    try:
        migrate(database, free_rate=100, free_period_s=50)
        assert tier_rows(database)["free"][:4] == (100, 50, 100, 2.0)
    finally:
        close_database(database)


def test_a_deleted_default_tier_is_seeded_again(sqlite_url):
    database = connect_database(sqlite_url)
    try:
        migrate(database)
        with database.connection_context():
            Tier.delete().where(Tier.name == "enterprise").execute()
        assert migrate(database) == ["seed tier enterprise"]
        assert tier_rows(database)["enterprise"] == CONTRACT_TIERS["enterprise"]
    finally:
        close_database(database)


def test_concurrent_migrations_apply_once(db_url):
    database = connect_database(db_url)
    barrier = threading.Barrier(3, timeout=10)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(migrate(database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert sorted(results, key=len) == [[], [], FIRST_RUN]
        assert set(tier_rows(database)) == {"free", "pro", "enterprise"}
    finally:
        close_database(database)


@contextmanager
def migration_lock_held(url: str) -> Iterator[None]:
    """Another process holding the migration lock, on its own connection."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        other = sqlite3.connect(parts.path[1:], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # SQLite's lock is its write lock
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
    elif parts.scheme == "mysql":
        import pymysql

        other = pymysql.connect(host=parts.hostname, port=parts.port, user="root",
                                password="", database=parts.path[1:], autocommit=True)
        with other.cursor() as cursor:
            cursor.execute(f"SELECT GET_LOCK({migrate_module.MYSQL_LOCK_NAME}, 0)")
            assert cursor.fetchone()[0] == 1
        try:
            yield
        finally:
            other.close()
    else:
        import psycopg2

        other = psycopg2.connect(host=parts.hostname, port=parts.port, user="postgres",
                                 dbname=parts.path[1:])
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute(f"SELECT pg_advisory_lock({migrate_module.PG_LOCK_KEYS})",
                           (migrate_module.PG_LOCK_CLASS,))
        try:
            yield
        finally:
            other.close()


def test_a_migration_lock_held_elsewhere_is_unavailable_after_the_wait(db_url, monkeypatch):
    monkeypatch.setattr(migrate_module, "LOCK_WAIT_S", 1)
    database = connect_database(db_url)
    try:
        with migration_lock_held(db_url):
            started = time.monotonic()
            with pytest.raises(Unavailable, match="another migration has held the lock for 1 s"):
                migrate(database)
            assert 0.9 <= time.monotonic() - started < 8
        assert migrate(database) == FIRST_RUN  # nothing was half done
    finally:
        close_database(database)


# What step 1 made of the columns step 2 changes, per backend: MySQL compared them in
# the database's collation and kept the refill as a FLOAT, PostgreSQL as a REAL.
FIRST_RELEASE_COLUMNS = {
    "mysql": [
        "ALTER TABLE tiers CHANGE name name VARCHAR(32) NOT NULL COLLATE utf8mb4_unicode_ci, "
        "CHANGE rest_refill_per_s rest_refill_per_s FLOAT NOT NULL",
        "ALTER TABLE users CHANGE email email VARCHAR(191) NOT NULL "
        "COLLATE utf8mb4_unicode_ci",
        "ALTER TABLE api_keys CHANGE prefix prefix VARCHAR(16) NOT NULL "
        "COLLATE utf8mb4_unicode_ci",
    ],
    "postgresql": ["ALTER TABLE tiers ALTER COLUMN rest_refill_per_s TYPE REAL"],
    "sqlite": [],
}


def test_a_first_release_database_is_upgraded(db_url):
    database = connect_database(db_url)
    try:
        migrate(database, free_rate=100, free_period_s=60)
        with database.connection_context():
            for statement in FIRST_RELEASE_COLUMNS[urlsplit(db_url).scheme]:
                database.execute_sql(statement)
            models.SchemaVersion.delete().where(models.SchemaVersion.version > 1).execute()
            Tier.create(name="custom", rest_rate=10, rest_period_s=60, rest_burst=1,
                        rest_refill_per_s=0.3, max_streams=1, max_subscriptions=1,
                        client_messages_per_s=1)
        assert schema_version(database) == 1
        assert migrate(database, free_rate=100, free_period_s=60) == [
            step.label for step in STEPS[1:]]
        assert schema_version(database) == STEPS[-1].version
        with database.connection_context():
            refills = {t.name: t.rest_refill_per_s for t in Tier.select()}
            assert refills == {"free": 100 / 60, "pro": 10.0, "enterprise": 100.0,
                               "custom": 0.3}
            free = Tier.get(Tier.name == "free")
            assert Tier.get_or_none(Tier.name == "FREE") is None
            jose = User.create(email="jose@example.com", password_hash="x", tier=free)
            User.create(email="josé@example.com", password_hash="x", tier=free)  # another
            assert User.select().where(User.email == "JOSE@example.com").count() == 0
            for n, prefix in enumerate(("btg_abcdefgh", "btg_ABCDEFGH")):
                ApiKey.create(user=jose, name="k", prefix=prefix, key_hash=str(n) * 64)
            assert ApiKey.select().where(ApiKey.prefix == "btg_abcdefgh").count() == 1
    finally:
        close_database(database)


# -- the schema --

def test_large_documents_and_utf8mb4_round_trip(migrated_db):
    big = '{"events": [' + ",".join(['{"player": "Łukasz ⚽ 🏆"}'] * 4000) + "]}"
    assert len(big.encode()) > 70_000  # past MySQL's TEXT

    def write() -> None:
        GameRecord.create(sport="football", id=1035037, league_id=39,
                          start_time=datetime(2024, 8, 16, 19), phase="live",
                          status_code="2H", home_team_id=33, away_team_id=36,
                          data=big.encode())  # orjson gives bytes
        League.create(sport="football", id=39, name="Premier League 🏴", country="England",
                      season="2024", data="{}")
        # Same upstream id in another sport is another game.
        GameRecord.create(sport="hockey", id=1035037, league_id=57, start_time=utc_now(),
                          phase="scheduled", status_code="NS", data="{}")

    def read() -> tuple[str, str, int]:
        game = GameRecord.get((GameRecord.sport == "football") & (GameRecord.id == 1035037))
        league = League.get((League.sport == "football") & (League.id == 39))
        return game.data, league.name, GameRecord.select().count()

    async def scenario():
        await migrated_db.write(write)
        return await migrated_db.read(read)

    data, name, count = asyncio.run(scenario())
    assert data == big
    assert name == "Premier League 🏴"
    assert count == 2


def test_usage_rows_are_unique_per_key_day_kind(migrated_db):
    def setup() -> int:
        tier = Tier.get(Tier.name == "free")
        user = models.User.create(email="u@example.com", password_hash="x", tier=tier)
        key = models.ApiKey.create(user=user, name="k", prefix="btg_12345678",
                                   key_hash="0" * 64)
        UsageDaily.create(key=key, day=date(2024, 8, 16), kind="live", requests=3)
        return key.id

    def duplicate(key_id: int) -> None:
        UsageDaily.create(key=key_id, day=date(2024, 8, 16), kind="live", requests=1)

    async def scenario():
        key_id = await migrated_db.write(setup)
        with pytest.raises(peewee.IntegrityError):
            await migrated_db.write(duplicate, key_id)
        return await migrated_db.read(lambda: [(u.key_id, u.requests)
                                               for u in UsageDaily.select()])

    key_id_rows = asyncio.run(scenario())
    assert len(key_id_rows) == 1 and key_id_rows[0][1] == 3


# -- the runner --

async def test_runner_calls_run_off_the_loop_thread(migrated_db):
    loop_thread = threading.get_ident()
    read_thread = await migrated_db.read(threading.get_ident)
    write_thread = await migrated_db.write(threading.get_ident)
    assert read_thread != loop_thread
    assert write_thread != loop_thread
    assert read_thread != write_thread


async def test_reads_run_concurrently(migrated_db):
    # Two reads that each wait for the other: only parallel threads can finish this.
    barrier = threading.Barrier(2, timeout=5)

    def meet() -> int:
        barrier.wait()
        return Tier.select().count()

    assert list(await asyncio.gather(migrated_db.read(meet), migrated_db.read(meet))) == [3, 3]


async def test_writes_are_serialized_in_order(migrated_db):
    lock = threading.Lock()
    active = 0
    max_active = 0
    order: list[int] = []
    threads: set[int] = set()

    def step(i: int) -> None:
        nonlocal active, max_active
        with lock:
            active += 1
            max_active = max(max_active, active)
        # A read-modify-write that would lose updates if two ran at once.
        tier = Tier.get(Tier.name == "free")
        time.sleep(0.002)  # widen the window a concurrent writer would need
        tier.max_streams += 1
        tier.save()
        order.append(i)
        threads.add(threading.get_ident())
        with lock:
            active -= 1

    await asyncio.gather(*(migrated_db.write(step, i) for i in range(20)))
    assert max_active == 1
    assert order == list(range(20))
    assert len(threads) == 1
    assert await migrated_db.read(lambda: Tier.get(Tier.name == "free").max_streams) == 22


async def test_a_failed_write_rolls_back(migrated_db):
    def half_done() -> None:
        Tier.update(max_streams=999).where(Tier.name == "free").execute()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await migrated_db.write(half_done)
    assert await migrated_db.read(lambda: Tier.get(Tier.name == "free").max_streams) == 2


async def test_connection_failures_surface_as_unavailable(migrated_db):
    def broken() -> None:
        raise peewee.OperationalError("server has gone away")

    with pytest.raises(Unavailable, match="server has gone away"):
        await migrated_db.read(broken)
    await migrated_db.ping()


async def test_ping_after_close_is_unavailable(sqlite_url):
    runner = DatabaseRunner(connect_database(sqlite_url))
    await runner.ping()
    runner.close()
    with pytest.raises(Unavailable, match="closed"):
        await runner.ping()


def kill_mariadb_connection(connection_id: int) -> None:
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"KILL {int(connection_id)}")
    finally:
        admin.close()


def kill_postgres_connection(backend_pid: int) -> None:
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
            assert cursor.fetchone()[0] is True
    finally:
        admin.close()


KILLERS: dict[str, tuple[str, Callable[[int], None]]] = {
    "mariadb": ("SELECT CONNECTION_ID()", kill_mariadb_connection),
    "postgres": ("SELECT pg_backend_pid()", kill_postgres_connection),
}


@pytest.mark.parametrize("engine", SERVER_ENGINES)
async def test_a_connection_killed_by_the_server_is_replaced(engine, request):
    runner = DatabaseRunner(connect_database(request.getfixturevalue(f"{engine}_url")))
    query, kill = KILLERS[engine]

    def connection_id() -> int:
        return runner.database.execute_sql(query).fetchone()[0]

    try:
        first = await runner.write(connection_id)
        kill(first)
        second = await runner.write(connection_id)  # a transaction, on a new connection
        assert second != first
        kill(second)
        assert await runner.read(connection_id) not in (first, second)  # and a read
        await runner.ping()
    finally:
        runner.close()
