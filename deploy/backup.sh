#!/usr/bin/env bash
# Snapshot Redis and dump the database into one dated folder.
#
#   deploy/backup.sh [--env FILE] [--dest DIR]
#
# Reads REDIS_URL (or REDIS_HOST/REDIS_PORT/REDIS_PASSWORD) and DATABASE_URL from the
# environment, then from FILE (default /etc/btsguru/btsguru.env when readable; the
# environment wins, as it does for btsguru itself). Writes DIR/btsguru-YYYYmmddTHHMMSSZ/
# (default DIR /var/backups/btsguru) holding:
#   redis.rdb        every Redis database (redis-cli --rdb: works against a remote server)
#   database.sqlite3 | database.sql | database.pgdump   by DATABASE_URL's scheme
#   MANIFEST         what was saved, and from where (passwords masked)
# The folder is written as *.partial and renamed only when both parts succeeded, so a
# folder without the suffix is a complete backup. Prints its path; exits non-zero with
# one line on standard error naming what failed. Restore: README, "Back up and restore".
set -euo pipefail

PYTHON=${PYTHON:-python3}
env_file=/etc/btsguru/btsguru.env
env_file_given=0
dest=/var/backups/btsguru

die() { echo "backup.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --env) [ $# -ge 2 ] || die "--env needs a file"; env_file=$2; env_file_given=1; shift 2 ;;
        --dest) [ $# -ge 2 ] || die "--dest needs a directory"; dest=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=)"

# KEY=VALUE lines as systemd's EnvironmentFile= reads them; never `source`d, so a value
# is data, not shell. Variables already in the environment are kept.
if [ -r "$env_file" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in ''|'#'*|';'*) continue ;; esac
        key=${line%%=*}
        key=${key// /}
        [ "$key" != "$line" ] || continue
        value=${line#*=}
        case "$value" in \"*\") value=${value#\"}; value=${value%\"} ;; \'*\') value=${value#\'}; value=${value%\'} ;; esac
        case "$key" in
            DATABASE_URL|REDIS_URL|REDIS_HOST|REDIS_PORT|REDIS_PASSWORD)
                [ -n "${!key+x}" ] || export "$key=$value" ;;
        esac
    done < "$env_file"
elif [ "$env_file_given" = 1 ]; then
    die "cannot read the environment file $env_file"
fi

[ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set (in the environment or $env_file)"

# Split the URLs in Python (quoting, ports, percent-escapes) and hand back shell-quoted
# assignments; passwords go to the tools through their environment, never argv.
parsed=$("$PYTHON" - <<'PY'
import os, shlex, sys
from urllib.parse import parse_qs, unquote, urlsplit

def out(**kw):
    for k, v in kw.items():
        print(f"{k}={shlex.quote(str(v))}")

def masked(parts):
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{unquote(parts.username)}:***@" if parts.password else (
        f"{unquote(parts.username)}@" if parts.username else "")
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"

try:
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url:
        r = urlsplit(redis_url)
        if r.scheme not in ("redis", "rediss"):
            sys.exit(f"REDIS_URL: cannot back up a {r.scheme}:// store "
                     "(memory:// lives in one process); use redis:// or rediss://")
        out(redis_host=r.hostname or "127.0.0.1", redis_port=r.port or 6379,
            redis_password=unquote(r.password or ""), redis_user=unquote(r.username or ""),
            redis_tls=int(r.scheme == "rediss"), redis_where=masked(r))
    else:
        host = os.environ.get("REDIS_HOST") or "127.0.0.1"
        port = os.environ.get("REDIS_PORT") or "6379"
        out(redis_host=host, redis_port=int(port), redis_password=os.environ.get(
            "REDIS_PASSWORD", ""), redis_user="", redis_tls=0,
            redis_where=f"redis://{host}:{port}")
    d = urlsplit(os.environ["DATABASE_URL"])
    scheme = d.scheme.lower()
    if scheme == "sqlite":
        raw = d.netloc + d.path
        path = unquote(raw[1:] if raw.startswith("/") else raw)
        if not path or path == ":memory:":
            sys.exit("DATABASE_URL: sqlite needs a file path")
        out(db_kind="sqlite", db_path=path, db_where=f"sqlite:///{path}")
    elif scheme in ("mysql", "postgresql", "postgres"):
        name = unquote(d.path.lstrip("/"))
        if not name:
            sys.exit("DATABASE_URL: name the database after the host (.../btsguru)")
        out(db_kind="mysql" if scheme == "mysql" else "postgres", db_name=name,
            db_host=d.hostname or "127.0.0.1",
            db_port=d.port or (3306 if scheme == "mysql" else 5432),
            db_user=unquote(d.username or ""), db_password=unquote(d.password or ""),
            db_socket=parse_qs(d.query).get("unix_socket", [""])[0], db_where=masked(d))
    else:
        sys.exit(f"DATABASE_URL: unknown scheme {scheme}://; "
                 "use sqlite:///FILE, mysql://... or postgresql://...")
except ValueError as exc:
    sys.exit(f"bad URL: {exc}")
PY
) || die "cannot read the settings (see above)"
eval "$parsed"

mkdir -p "$dest" || die "cannot create $dest"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
final="$dest/btsguru-$stamp"
work="$final.partial"
[ ! -e "$final" ] || die "$final already exists (two backups in one second?)"
rm -rf "$work"
mkdir "$work" || die "cannot create $work"
# a failed run leaves nothing that looks like a backup
trap 'rm -rf "$work"' EXIT

# -- Redis: a consistent RDB snapshot streamed over the replication protocol --
command -v redis-cli >/dev/null || die "redis-cli not found (apt install redis-tools)"
redis_args=(-h "$redis_host" -p "$redis_port" --no-auth-warning)
[ -z "$redis_user" ] || redis_args+=(--user "$redis_user")
[ "$redis_tls" = 0 ] || redis_args+=(--tls)
# an empty REDISCLI_AUTH would still send AUTH: set it only with a password
[ -z "$redis_password" ] || export REDISCLI_AUTH="$redis_password"
if ! redis-cli "${redis_args[@]}" --rdb "$work/redis.rdb" >"$work/redis-cli.log" 2>&1; then
    die "Redis snapshot from $redis_where failed: $(tail -n 1 "$work/redis-cli.log")"
fi
rm -f "$work/redis-cli.log"
[ "$(head -c 5 "$work/redis.rdb" 2>/dev/null)" = "REDIS" ] \
    || die "Redis snapshot from $redis_where is not an RDB file"

# -- the database --
case "$db_kind" in
    sqlite)
        [ -f "$db_path" ] || die "SQLite database $db_path does not exist"
        # the online backup API: a consistent copy while btsguru keeps writing (WAL)
        "$PYTHON" - "$db_path" "$work/database.sqlite3" <<'PY' || die "SQLite backup of $db_path failed"
import sqlite3, sys
src = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
dst = sqlite3.connect(sys.argv[2])
try:
    src.backup(dst)
    ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
    if ok != "ok":
        sys.exit(f"integrity check of the copy: {ok}")
finally:
    dst.close()
    src.close()
PY
        ;;
    mysql)
        command -v mysqldump >/dev/null || die "mysqldump not found (apt install mariadb-client)"
        conn=(--host="$db_host" --port="$db_port")
        [ -z "$db_socket" ] || conn=(--socket="$db_socket")
        [ -z "$db_user" ] || conn+=(--user="$db_user")
        MYSQL_PWD="$db_password" mysqldump "${conn[@]}" --single-transaction --quick \
            --routines --triggers --default-character-set=utf8mb4 --databases "$db_name" \
            >"$work/database.sql" 2>"$work/dump.log" \
            || die "mysqldump of $db_where failed: $(tail -n 1 "$work/dump.log")"
        rm -f "$work/dump.log"
        ;;
    postgres)
        command -v pg_dump >/dev/null || die "pg_dump not found (apt install postgresql-client)"
        PGPASSWORD="$db_password" pg_dump --host="$db_host" --port="$db_port" \
            ${db_user:+--username="$db_user"} --format=custom --no-owner \
            --file="$work/database.pgdump" "$db_name" 2>"$work/dump.log" \
            || die "pg_dump of $db_where failed: $(tail -n 1 "$work/dump.log")"
        rm -f "$work/dump.log"
        ;;
esac

{
    echo "created $stamp"
    echo "redis $redis_where -> redis.rdb"
    echo "database $db_where -> $(cd "$work" && ls database.*)"
} >"$work/MANIFEST"
mv "$work" "$final"
trap - EXIT
echo "$final"
