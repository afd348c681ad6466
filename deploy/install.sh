#!/usr/bin/env bash
# Install (or upgrade) btsguru on a VM from a built wheel, then restart it without an outage.
#
#   deploy/install.sh --wheel dist/btsguru-X.Y.Z-py3-none-any.whl
#                     [--prefix /opt/btsguru] [--env-file FILE] [--ports "8081 8082"]
#                     [--root /] [--health-timeout 60] [--lock requirements/runtime.txt]
#
# Steps, in order:
#   1. the `btsguru` system user (useradd, when missing) and /var/lib/btsguru, /etc/btsguru;
#   2. the virtualenv PREFIX/venv (created when missing); the dependencies from the lock
#      (--lock, requirements/runtime.txt of this checkout: pinned and hash-checked, the
#      versions CI tested), then the wheel without dependencies of its own; templates/
#      and static/ come with the wheel, under PREFIX/venv/share/btsguru;
#   3. the units from systemd/ beside this script into /etc/systemd/system (their
#      /opt/btsguru paths rewritten for another --prefix), then `systemctl daemon-reload`;
#      deploy/backup.sh as PREFIX/backup.sh, for cron;
#   4. /etc/btsguru/btsguru.env from --env-file, only when it does not exist yet: an
#      existing file is never overwritten. Without either, stops here and says so;
#   5. `btsguru migrate` with that environment (as the btsguru user);
#   6. restarts the running `btsguru@PORT` instances (or --ports) one at a time, waiting
#      for each one's /healthz before the next: while one drains (its stream clients are
#      told to reconnect) the others serve, so clients move over without an outage.
#      btsguru.service and btsguru-poller.service are restarted if they run.
# --root installs the system files under another root (a scratch root in the tests);
# the virtualenv goes where --prefix says.
set -euo pipefail

wheel=""
prefix=/opt/btsguru
env_source=""
ports=""
root=""
health_timeout_s=60
user=btsguru
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lock=$here/../requirements/runtime.txt

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) die "$1 needs a value" ;; esac
    case "$1" in
        --wheel) wheel=$2 ;;
        --prefix) prefix=$2 ;;
        --env-file) env_source=$2 ;;
        --ports) ports=$2 ;;
        --root) root=${2%/} ;;
        --health-timeout) health_timeout_s=$2 ;;
        --lock) lock=$2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
    shift 2
done

[ -n "$wheel" ] || die "--wheel FILE is required (build one with: pip wheel . --no-deps -w dist)"
[ -f "$wheel" ] || die "wheel $wheel does not exist"
case "$(basename "$wheel")" in btsguru-*.whl) ;; *) die "$wheel is not a btsguru wheel" ;; esac
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ -z "$env_source" ] || [ -r "$env_source" ] || die "cannot read --env-file $env_source"
[ -d "$here/../systemd" ] || die "no systemd/ beside $here: run this script from a checkout"
[ -r "$lock" ] || die "cannot read the lock $lock (--lock FILE)"
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")

venv=$prefix/venv
etc=$root/etc/btsguru
env_file=$etc/btsguru.env
state=$root/var/lib/btsguru
units=$root/etc/systemd/system
user_exists() { id -u "$user" >/dev/null 2>&1; }

# 1. the user and the directories
if ! user_exists; then
    say "creating the system user $user"
    useradd --system --home-dir /var/lib/btsguru --shell /usr/sbin/nologin "$user" \
        || die "useradd $user failed"
fi
mkdir -p "$state" "$etc" "$units" || die "cannot create $state, $etc or $units"
# the owner is set once the user exists (useradd above made it, except in a scratch root)
if user_exists; then
    chown "$user:$user" "$state" && chown "root:$user" "$etc" && chmod 0750 "$etc" \
        || die "cannot give $state and $etc to $user"
fi

# 2. the virtualenv and the wheel
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtualenv $venv"
    "${PYTHON:-python3}" -m venv "$venv" || die "cannot create the virtualenv $venv"
fi
say "installing the dependencies from $(basename "$lock") into $venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$lock" \
    || die "pip could not install the locked dependencies from $lock into $venv"
say "installing $(basename "$wheel") into $venv"
# --force-reinstall: the same version number rebuilt still replaces the old files;
# --no-deps: every dependency came from the lock above
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "$wheel" || die "pip could not install $wheel into $venv"
"$venv/bin/python" -c 'import sys; from btsguru import app
sys.exit(0 if (app.TEMPLATES / "base.html").is_file() and (app.STATIC / "htmx").is_dir() else 1)' \
    || die "the installed btsguru does not find its templates/ and static/"

# 3. the units
for unit in "$here"/../systemd/*.service "$here"/../systemd/*.timer; do
    sed "s|/opt/btsguru|$prefix|g" "$unit" >"$units/$(basename "$unit")" \
        || die "cannot write $units/$(basename "$unit")"
done
install -m 0755 "$here/backup.sh" "$prefix/backup.sh" || die "cannot write $prefix/backup.sh"
say "units installed in $units"
systemctl daemon-reload || die "systemctl daemon-reload failed"

# 4. the environment file: the operator's settings are never replaced
if [ -e "$env_file" ]; then
    say "kept the existing $env_file"
elif [ -n "$env_source" ]; then
    install -m 0640 "$env_source" "$env_file" || die "cannot write $env_file"
    if user_exists; then chown "root:$user" "$env_file" || die "cannot chown $env_file"; fi
    say "installed $env_file"
else
    die "no $env_file: write it (see .env.example) or pass --env-file FILE, then rerun"
fi

# 5. the schema, with the service's environment (systemd's EnvironmentFile= wins over the
# caller's environment, and so does it here), from the service's working directory
say "running btsguru migrate"
as_user=()
if [ "$(id -u)" = 0 ] && user_exists; then as_user=(runuser -u "$user" --); fi
(cd "$state" && "${as_user[@]}" "$venv/bin/python" - "$env_file" "$venv/bin/btsguru" <<'PY'
import os, sys
from dotenv import dotenv_values
env = dict(os.environ)
env.update({k: v for k, v in dotenv_values(sys.argv[1]).items() if v is not None})
os.execve(sys.argv[2], [sys.argv[2], "migrate"], env)
PY
) || die "btsguru migrate failed: nothing was restarted"

# 6. rolling restart
if [ -z "$ports" ]; then
    ports=$(systemctl list-units --type=service --state=active --plain --no-legend \
                'btsguru@*.service' | sed -n 's/^btsguru@\([0-9]\{1,5\}\)\.service.*/\1/p' \
                | tr '\n' ' ')
fi
for port in $ports; do
    case "$port" in *[!0-9]*|'') die "bad port $port" ;; esac
    say "restarting btsguru@$port"
    systemctl restart "btsguru@$port.service" || die "systemctl restart btsguru@$port failed"
    if ! "$venv/bin/python" - "$port" "$health_timeout_s" <<'PY'
import sys, time, urllib.request
port, timeout_s = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout_s
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            if resp.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
    then
        die "btsguru@$port did not answer /healthz within $health_timeout_s s; the instances" \
            "after it were not restarted (journalctl -u btsguru@$port)"
    fi
    say "btsguru@$port is healthy"
done
# the single-process and poller units, only where they run (try-restart leaves others off)
systemctl try-restart btsguru.service btsguru-poller.service \
    || die "systemctl try-restart btsguru.service btsguru-poller.service failed"
say "done"
