"""Shared fixtures: real Redis (one key prefix per test), real databases, the app."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from btsguru.config import Config, load_config
from tests.cli_helpers import OFFLINE_UPSTREAMS

# the order and grouping of the parallel run (pytest-xdist): longest first, see the module
pytest_plugins = ["tests.scheduling"]

REDIS_TEST_URL = "redis://127.0.0.1:6379/0"
# every key prefix the tests, the benchmarks' stacks and the chaos relays write under
TEST_PREFIXES = ("btgtest:", "btgbench:", "btgchaos:")


def pytest_configure(config: pytest.Config) -> None:
    """Before the run (in the controller only, not in each xdist worker): remove what an
    earlier run that was cut short left in the shared Redis, so that no test SCANs past
    the leftovers of the ones before it."""
    if hasattr(config, "workerinput"):
        return
    for db in range(4):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=2)
        try:
            for prefix in TEST_PREFIXES:
                batch = list(client.scan_iter(match=prefix + "*", count=5000))
                for start in range(0, len(batch), 5000):
                    client.unlink(*batch[start:start + 5000])
        except redis.RedisError:
            return  # no Redis here: the tests that need it say so themselves
        finally:
            client.close()


def make_test_config(tmp_path: Path, **overrides: str) -> Config:
    """A config on the real Redis with a key prefix of its own and a fresh SQLite file."""
    env = {
        "REDIS_URL": REDIS_TEST_URL,
        "REDIS_CACHE_PREFIX": f"btgtest:{uuid.uuid4().hex[:12]}:",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'btsguru-test.db'}",
        "SECRET_KEY": "test-secret-key-0123456789abcdef",
        "RAPIDAPI_KEY": "test-upstream-key",
        "REVERB_APP_SECRET": "test-app-secret",
    }
    env.update(OFFLINE_UPSTREAMS)  # never the internet; tests point sports at the simulator
    env.update(overrides)
    return load_config(environ=env, env_file=None)


def purge_redis_prefix(config: Config) -> None:
    """Delete every key under the config's prefix in each of its databases."""
    for db in {config.redis_db, config.redis_cache_db, config.redis_queue_db,
               config.redis_reverb_db}:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            keys = list(client.scan_iter(match=config.redis_cache_prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture
def test_config(tmp_path: Path) -> Iterator[Config]:
    config = make_test_config(tmp_path)
    yield config
    purge_redis_prefix(config)


# -- databases: a fresh one per test, on every backend this machine runs -------------
# (owned by the db/auth work: btsguru/db, btsguru/auth)

MARIADB_TEST_HOST = "127.0.0.1"
MARIADB_TEST_PORT = 3306
POSTGRES_TEST_HOST = "127.0.0.1"
POSTGRES_TEST_PORT = 5432
T = TypeVar("T")


def scratch_database_name() -> str:
    return f"btsguru_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'btsguru-test.sqlite3'}"


def _admin_connection(engine: str, where: str, marker: str, connect: Callable[[], T],
                     errors: type[Exception]) -> T:
    """`connect()`, or fail the test (not skip it): a database the suite promises to test
    must answer."""
    try:
        return connect()
    except errors as exc:
        detail = " ".join(str(exc).split())
    pytest.fail(f"{engine} at {where} is unreachable ({detail}); start it (.ci/run does) "
                f"or leave its tests out with -m 'not {marker}'", pytrace=False)


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A new, empty MariaDB database (root, no password), dropped afterwards; the test
    fails when no MariaDB server answers."""
    import pymysql

    admin = _admin_connection(
        "MariaDB", f"{MARIADB_TEST_HOST}:{MARIADB_TEST_PORT} (user root)", "mariadb",
        lambda: pymysql.connect(host=MARIADB_TEST_HOST, port=MARIADB_TEST_PORT, user="root",
                                password="", connect_timeout=5, autocommit=True),
        pymysql.MySQLError)
    name = scratch_database_name()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                           "COLLATE utf8mb4_unicode_ci")
        yield f"mysql://root@{MARIADB_TEST_HOST}:{MARIADB_TEST_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database (user postgres, trust auth), dropped afterwards;
    the test fails when no PostgreSQL server answers."""
    import psycopg2

    admin = _admin_connection(
        "PostgreSQL", f"{POSTGRES_TEST_HOST}:{POSTGRES_TEST_PORT} (user postgres)", "postgres",
        lambda: psycopg2.connect(host=POSTGRES_TEST_HOST, port=POSTGRES_TEST_PORT,
                                 user="postgres", dbname="postgres", connect_timeout=5),
        psycopg2.Error)
    admin.autocommit = True
    name = scratch_database_name()
    try:
        with admin.cursor() as cursor:
            # from template0, which nobody connects to: concurrent creations (xdist) do
            # not trip over each other the way copies of a busy template1 can
            cursor.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        yield f"postgresql://postgres@{POSTGRES_TEST_HOST}:{POSTGRES_TEST_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


DB_ENGINES = ("sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb),
              pytest.param("postgres", marks=pytest.mark.postgres))
SERVER_ENGINES = DB_ENGINES[1:]  # the ones with a network between them and btsguru


@pytest.fixture(params=DB_ENGINES)
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database, once per backend (`-m "not mariadb"` or
    `-m "not postgres"` leaves one out)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def migrated_db(db_url: str):
    """A connected, migrated database (models bound to it) behind a DatabaseRunner."""
    from btsguru.db import connect_database
    from btsguru.db.migrate import migrate
    from btsguru.db.runner import DatabaseRunner

    database = connect_database(db_url)
    migrate(database, free_rate=60, free_period_s=60)
    runner = DatabaseRunner(database)
    yield runner
    runner.close()
