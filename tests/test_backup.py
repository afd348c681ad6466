"""deploy/backup.sh against the real Redis and a SQLite database, then the README's
restore steps: the RDB loaded by a throwaway redis-server, the SQLite copy put back."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
BACKUP = ROOT / "deploy" / "backup.sh"
REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("redis-server") is None,
    reason="needs redis-cli and redis-server")


def run_backup(tmp_path: Path, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "REDIS_PORT",
                        "REDIS_PASSWORD")}
    return subprocess.run([str(BACKUP), "--env", str(env_file), "--dest",
                           str(tmp_path / "backups"), *args],
                          env=env, capture_output=True, text=True, timeout=90, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"btgtest:{uuid.uuid4().hex[:12]}:backup:"
    yield name
    for db in (0, 1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        keys = list(client.scan_iter(match=name + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def rows(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT name, tier FROM users ORDER BY name").fetchall()
    finally:
        conn.close()


def test_backup_then_restore_redis_and_sqlite(tmp_path, prefix):
    live = redis.Redis(host="127.0.0.1", port=6379, db=0)
    cache = redis.Redis(host="127.0.0.1", port=6379, db=1)
    live.hset(prefix + "user:1", mapping={"name": "ada", "tier": "pro"})
    cache.set(prefix + "cache:leagues", b"\x00compressed\xff", ex=3600)
    db_path = tmp_path / "data" / "btsguru.db"
    db_path.parent.mkdir()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=wal")  # as btsguru runs it: the copy must see the WAL
    conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, tier INTEGER)")
    conn.executemany("INSERT INTO users VALUES (?, ?)", [("ada", 2), ("bob", 1)])
    conn.commit()  # left open: a live writer, its rows still in the WAL
    env_file = tmp_path / "btsguru.env"
    env_file.write_text(f"# as /etc/btsguru/btsguru.env\nDATABASE_URL=sqlite:///{db_path}\n"
                        f'REDIS_URL="{REDIS_URL}"\nSECRET_KEY=not-read\n')

    done = run_backup(tmp_path, env_file)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path / "backups"
    assert folder.name.startswith("btsguru-20") and folder.name.endswith("Z")
    assert sorted(p.name for p in folder.iterdir()) == ["MANIFEST", "database.sqlite3",
                                                        "redis.rdb"]
    assert "database.sqlite3" in (folder / "MANIFEST").read_text()

    # trouble after the backup: a key lost, a row changed
    live.delete(prefix + "user:1")
    conn.execute("UPDATE users SET tier = 0")
    conn.execute("INSERT INTO users VALUES ('eve', 9)")
    conn.commit()
    conn.close()
    live.close()
    cache.close()

    # restore the database (README): stop btsguru, drop the WAL files, copy the backup back
    for extra in ("-wal", "-shm"):
        Path(f"{db_path}{extra}").unlink(missing_ok=True)
    shutil.copyfile(folder / "database.sqlite3", db_path)
    assert rows(db_path) == [("ada", 2), ("bob", 1)]

    # restore Redis (README): a redis-server started from the RDB, nothing saved back
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--dbfilename", "redis.rdb", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        restored = redis.Redis(host="127.0.0.1", port=port, db=0)
        deadline = time.monotonic() + 30
        while True:  # a big RDB takes a moment to load: poll until the server answers
            try:
                if restored.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            assert time.monotonic() < deadline, "redis-server did not load the RDB"
            time.sleep(0.05)
        assert restored.hgetall(prefix + "user:1") == {b"name": b"ada", b"tier": b"pro"}
        restored_cache = redis.Redis(host="127.0.0.1", port=port, db=1)
        assert restored_cache.get(prefix + "cache:leagues") == b"\x00compressed\xff"
        assert 0 < restored_cache.ttl(prefix + "cache:leagues") <= 3600
        restored_cache.close()
        restored.close()
    finally:
        server.terminate()
        server.wait(10)


def test_backup_fails_clearly_and_leaves_no_folder(tmp_path):
    db_path = tmp_path / "btsguru.db"
    sqlite3.connect(db_path).close()
    env_file = tmp_path / "btsguru.env"

    env_file.write_text(f"DATABASE_URL=sqlite:///{db_path}\nREDIS_URL=redis://127.0.0.1:"
                        f"{free_port()}/0\n")
    done = run_backup(tmp_path, env_file)
    assert done.returncode != 0
    assert done.stderr.startswith("backup.sh: Redis snapshot from redis://127.0.0.1:")
    assert not list((tmp_path / "backups").iterdir())  # no partial folder left behind

    env_file.write_text(f"DATABASE_URL=oracle://scott:tiger@db/x\nREDIS_URL={REDIS_URL}\n")
    done = run_backup(tmp_path, env_file)
    assert done.returncode != 0 and "DATABASE_URL: unknown scheme oracle://" in done.stderr
    assert "tiger" not in done.stderr

    env_file.write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'missing.db'}\n"
                        f"REDIS_URL={REDIS_URL}\n")
    done = run_backup(tmp_path, env_file)
    assert done.returncode != 0 and "missing.db does not exist" in done.stderr
    assert not list((tmp_path / "backups").iterdir())

    done = run_backup(tmp_path, tmp_path / "absent.env")
    assert done.returncode != 0 and "cannot read the environment file" in done.stderr


@pytest.mark.skipif(shutil.which("mysqldump") is None, reason="no mysqldump")
def test_backup_dumps_mariadb(tmp_path):
    name = f"btgtest_backup_{uuid.uuid4().hex[:8]}"
    admin = ["mysql", "-uroot", "-h127.0.0.1", "-P3306"]
    try:
        made = subprocess.run([*admin, "-e", f"CREATE DATABASE {name}; CREATE TABLE {name}.t "
                               f"(a INT); INSERT INTO {name}.t VALUES (42)"],
                              capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.skip("no mysql client")
    if made.returncode != 0:
        pytest.skip(f"MariaDB unreachable: {made.stderr.strip()}")
    try:
        env_file = tmp_path / "btsguru.env"
        env_file.write_text(f"DATABASE_URL=mysql://root@127.0.0.1:3306/{name}\n"
                            f"REDIS_URL={REDIS_URL}\n")
        done = run_backup(tmp_path, env_file)
        assert done.returncode == 0, done.stderr
        dump = (Path(done.stdout.strip()) / "database.sql").read_text()
        assert f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{name}`" in dump
        assert "INSERT INTO `t` VALUES" in dump and "(42)" in dump
    finally:
        subprocess.run([*admin, "-e", f"DROP DATABASE IF EXISTS {name}"],
                       capture_output=True, timeout=30, check=False)
