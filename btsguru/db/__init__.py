"""The database: connecting from `DATABASE_URL`, the schema (`models`), its migrations
(`migrate`) and the executor that keeps peewee off the IOLoop (`runner`).

The composition root calls `connect_database(config.database_url)` once; that points
the models' proxy at the database. Every later query runs through a `DatabaseRunner`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import peewee
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase, PooledSqliteDatabase
from playhouse.shortcuts import ReconnectMixin

from btsguru.config import mask_url
from btsguru.db import models
from btsguru.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10  # well inside the contract's 30 s for "unreachable database"
SQLITE_BUSY_TIMEOUT_S = 10  # a writer waits this long for another process's write lock
# Connections per process: 4 reader threads + 1 writer + the thread that migrates,
# with headroom; a thread waits up to POOL_WAIT_S for one before failing.
POOL_MAX_CONNECTIONS = 16
POOL_WAIT_S = 10
# Recycle pooled connections before MySQL's wait_timeout (8 h by default) or a
# proxy's idle timeout can cut them.
POOL_STALE_S = 1800

# MySQL client error numbers (the first argument of pymysql's OperationalError).
_MYSQL_ACCESS_DENIED = 1045
_MYSQL_UNKNOWN_DATABASE = 1049
# How PostgreSQL refuses a login that only a configuration change lets in (MySQL says
# "access denied" to each): a wrong password, no pg_hba.conf rule for the client, an
# unknown user (which PostgreSQL reports as such where a trust rule skips the password).
_PG_REFUSED = re.compile(r'authentication failed|no pg_hba\.conf entry|role ".*" does not exist')


class _MySQLDatabase(ReconnectMixin, PooledMySQLDatabase):  # type: ignore[misc]
    """Pooled, and retries a statement once on a connection the server dropped."""


def connect_database(url: str) -> peewee.Database:
    """Open the database `url` names, check that it answers, and bind the models to it.

    `sqlite:///relative/path`, `sqlite:////absolute/path`,
    `mysql://user:pass@host[:port]/db` (pymysql, utf8mb4) and
    `postgresql://` or `postgres://user:pass@host[:port]/db` (psycopg2).
    Raises `ConfigError` for a URL that cannot work (unknown scheme, unknown database,
    refused credentials) and `Unavailable` for a server that does not answer; the
    message is one line and never contains the password."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        db = _sqlite(parts.netloc + parts.path)
    elif scheme == "mysql":
        db = _mysql(url)
    elif scheme in ("postgresql", "postgres"):
        db = _postgres(url)
    else:
        raise ConfigError(f"DATABASE_URL: unknown scheme {scheme + '://' if scheme else url!r}; "
                          "use sqlite:///FILE, mysql://... or postgresql://...")
    _check_connection(db, url)
    models.database.initialize(db)
    log.debug("database: %s", mask_url(url))
    return db


def close_database(db: peewee.Database) -> None:
    """Close every pooled connection (the last step of shutdown)."""
    close_all = getattr(db, "close_all", None)
    if close_all is not None:
        close_all()
    elif not db.is_closed():
        db.close()


def _sqlite(raw_path: str) -> peewee.Database:
    # sqlite:///x.db is the relative path x.db, sqlite:////x.db the absolute /x.db
    # (SQLAlchemy's convention).
    path = unquote(raw_path[1:] if raw_path.startswith("/") else raw_path)
    if not path or path == ":memory:":
        raise ConfigError("DATABASE_URL: sqlite needs a file path (sqlite:///btsguru.db); "
                          "an in-memory database would be a different one in every thread")
    parent = Path(path).parent
    if not parent.is_dir():
        raise ConfigError(f"DATABASE_URL: directory {str(parent)!r} does not exist")
    db: peewee.Database = PooledSqliteDatabase(
        path,
        timeout=SQLITE_BUSY_TIMEOUT_S,
        check_same_thread=False,  # the pool hands a connection to one thread at a time
        max_connections=POOL_MAX_CONNECTIONS,
        stale_timeout=None,
        pragmas={
            "journal_mode": "wal",  # readers do not block the writer, nor it them
            "foreign_keys": 1,
            "busy_timeout": SQLITE_BUSY_TIMEOUT_S * 1000,
            "synchronous": "normal",  # durable across crashes of the process in WAL mode
        },
    )
    return db


def _server_params(url: str, default_port: int) -> tuple[str, dict[str, object]]:
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if not name or "/" in name:
        raise ConfigError(f"DATABASE_URL: name the database after the host "
                          f"(…/btsguru), got {mask_url(url)!r}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"DATABASE_URL: bad port in {mask_url(url)!r}") from None
    params: dict[str, object] = {"host": parts.hostname or "127.0.0.1", "port": port}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    return name, params


def _mysql(url: str) -> peewee.Database:
    name, params = _server_params(url, 3306)
    query = parse_qs(urlsplit(url).query)
    if "unix_socket" in query:
        params["unix_socket"] = query["unix_socket"][0]
    db: peewee.Database = _MySQLDatabase(
        name,
        charset="utf8mb4",
        connect_timeout=CONNECT_TIMEOUT_S,
        # DATETIME columns hold naive UTC; make NOW() and friends agree.
        init_command="SET time_zone = '+00:00'",
        max_connections=POOL_MAX_CONNECTIONS,
        stale_timeout=POOL_STALE_S,
        timeout=POOL_WAIT_S,
        **params,
    )
    return db


def _postgres(url: str) -> peewee.Database:
    name, params = _server_params(url, 5432)
    db: peewee.Database = PooledPostgresqlDatabase(
        name,
        connect_timeout=CONNECT_TIMEOUT_S,
        options="-c timezone=UTC",  # TIMESTAMP columns hold naive UTC
        max_connections=POOL_MAX_CONNECTIONS,
        stale_timeout=POOL_STALE_S,
        timeout=POOL_WAIT_S,
        **params,
    )
    return db


def _check_connection(db: peewee.Database, url: str) -> None:
    try:
        with db.connection_context():
            db.execute_sql("SELECT 1")  # type: ignore[no-untyped-call]
    except peewee.PeeweeException as exc:  # the driver's errors, wrapped by peewee
        raise _connection_error(exc, url) from None


def _connection_error(exc: Exception, url: str) -> ConfigError | Unavailable:
    """One line for a failed connection: a ConfigError for what only a configuration
    change fixes, Unavailable for a server that may come back."""
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    text = " ".join(str(cause).split())  # psycopg2 spreads its messages over lines
    parts = urlsplit(url)
    if parts.password:
        text = text.replace(parts.password, "****").replace(unquote(parts.password), "****")
    where = mask_url(url)
    code = cause.args[0] if cause.args and isinstance(cause.args[0], int) else None
    lowered = text.lower()
    if code == _MYSQL_ACCESS_DENIED or _PG_REFUSED.search(lowered):
        return ConfigError(f"DATABASE_URL: the server refused the credentials ({where}): {text}")
    if code == _MYSQL_UNKNOWN_DATABASE or ("database" in lowered
                                           and "does not exist" in lowered):
        return ConfigError(f"DATABASE_URL: the database does not exist ({where}); "
                           f"create it first: {text}")
    if parts.scheme == "sqlite":
        return ConfigError(f"DATABASE_URL: cannot open the SQLite file ({where}): {text}")
    return Unavailable(f"database unreachable ({where}): {text}")
