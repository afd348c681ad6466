"""deploy/install.sh in a scratch root: a real wheel (`pip wheel . --no-deps`) into a
really created virtualenv, `btsguru migrate` really run, and fake `systemctl` and
`useradd` on PATH that log what they are asked — the order of operations, the env file
never overwritten, and the rolling restart waiting for each instance's /healthz."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "deploy" / "install.sh"

# systemctl: logs its arguments; `list-units` answers $FAKE_UNITS; `restart btsguru@P`
# starts a stand-in server on P whose /healthz answers 200 only after a moment, and
# logs when it first did — so the log shows whether install.sh waited for it.
FAKE_SYSTEMCTL = r"""#!/usr/bin/env bash
echo "systemctl $*" >>"$FAKE_LOG"
case "$1" in
    list-units) for u in $FAKE_UNITS; do echo "$u loaded active running btsguru"; done ;;
    restart)
        port=$(echo "$2" | sed -n 's/^btsguru@\([0-9]*\)\.service$/\1/p')
        if [ -n "$port" ]; then
            setsid "$FAKE_PYTHON" "$FAKE_SERVER" "$port" </dev/null >/dev/null 2>&1 &
            echo $! >>"$FAKE_PIDS"
        fi ;;
esac
"""
FAKE_USERADD = """#!/usr/bin/env bash
echo "useradd $*" >>"$FAKE_LOG"
"""
STAND_IN = r"""import http.server, os, sys, time
port = int(sys.argv[1])
time.sleep(0.5)  # a restarting process: /healthz refused for a while
class H(http.server.BaseHTTPRequestHandler):
    seen = False
    def do_GET(self):
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')
        if ok and not H.seen:
            H.seen = True
            with open(os.environ["FAKE_LOG"], "a") as log:
                log.write(f"healthz {port} answered\n")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--quiet", "-w", str(out)],
                   check=True, capture_output=True, timeout=300)
    (found,) = out.glob("btsguru-*.whl")
    return found


def test_install_migrates_then_restarts_one_at_a_time(tmp_path, wheel):
    scratch, prefix, bin_dir = tmp_path / "root", tmp_path / "opt" / "btsguru", tmp_path / "bin"
    bin_dir.mkdir()
    log, pids = tmp_path / "calls.log", tmp_path / "pids"
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("useradd", FAKE_USERADD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    # The virtualenv is really created (as install.sh would), before install.sh runs, so
    # that its dependencies can come from this checkout's venv through a .pth line instead
    # of PyPI: a test never reaches the internet. The wheel itself is installed by pip.
    venv = prefix / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps-from-checkout.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    db_path = tmp_path / "state" / "btsguru.db"
    db_path.parent.mkdir()
    env_source = tmp_path / "btsguru.env"
    env_source.write_text(f"DATABASE_URL=sqlite:///{db_path}\nSECRET_KEY=install-test-secret\n")
    a, b = free_ports(2)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_PIDS": str(pids), "FAKE_PYTHON": sys.executable,
           "FAKE_SERVER": str(tmp_path / "stand_in.py"),
           "FAKE_UNITS": f"btsguru@{a}.service btsguru@{b}.service",
           "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1", "DATABASE_URL": "sqlite:////nowhere/x.db"}
    try:
        with log.open("a") as out:
            done = subprocess.run(
                [str(INSTALL), "--wheel", str(wheel), "--prefix", str(prefix), "--root",
                 str(scratch), "--env-file", str(env_source), "--health-timeout", "20"],
                env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=300,
                check=False)
        calls = log.read_text().splitlines()
        assert done.returncode == 0, done.stderr + "\n".join(calls)
        # migrate's own output, where it ran: after the units, before any restart
        start = calls.index("install.sh: running btsguru migrate")
        end = next(i for i, line in enumerate(calls) if line.startswith("systemctl list-units"))
        assert "applied 0001 initial schema" in calls[start + 1:end]
        order = [line for line in calls[:start + 1] + calls[end:]
                 if not line.startswith("install.sh: units")]
        assert order[0] == "install.sh: creating the system user btsguru"
        assert order[1].startswith("useradd --system --home-dir /var/lib/btsguru")
        # the virtualenv exists already (above): the locked dependencies, then the wheel
        assert order[2] == f"install.sh: installing the dependencies from runtime.txt into {venv}"
        assert order[3].startswith("install.sh: installing btsguru-0")
        assert order[order.index("systemctl daemon-reload") - 1].startswith(
            "install.sh: installing btsguru-0")
        assert order[order.index("systemctl daemon-reload"):] == [
            "systemctl daemon-reload", f"install.sh: installed {scratch}/etc/btsguru/btsguru.env",
            "install.sh: running btsguru migrate",
            "systemctl list-units --type=service --state=active --plain --no-legend "
            "btsguru@*.service",
            f"install.sh: restarting btsguru@{a}", f"systemctl restart btsguru@{a}.service",
            f"healthz {a} answered", f"install.sh: btsguru@{a} is healthy",
            f"install.sh: restarting btsguru@{b}", f"systemctl restart btsguru@{b}.service",
            f"healthz {b} answered", f"install.sh: btsguru@{b} is healthy",
            "systemctl try-restart btsguru.service btsguru-poller.service",
            "install.sh: done"]
        # migrate ran with the env file's database (it wins over the caller's environment)
        conn = sqlite3.connect(db_path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        tiers = conn.execute("SELECT COUNT(*) FROM tiers").fetchone()[0]
        conn.close()
        assert {"users", "api_keys", "tiers"} <= tables and tiers >= 1
        # the units point at the prefix; the package and its assets come from the wheel
        unit = (scratch / "etc/systemd/system/btsguru@.service").read_text()
        assert f"ExecStart={prefix}/venv/bin/btsguru serve --port %i" in unit
        assert f"ExecStartPre={prefix}/venv/bin/btsguru migrate" in unit
        assert "=/opt/btsguru/" not in unit
        assert os.access(prefix / "backup.sh", os.X_OK)
        assert {p.name for p in (scratch / "etc/systemd/system").iterdir()} >= {
            "btsguru.service", "btsguru@.service", "btsguru-poller.service",
            "btsguru-refresh.service", "btsguru-refresh.timer"}
        probe = subprocess.run(
            [str(venv / "bin/python"), "-c",
             "import btsguru.app as a; print(a.__file__); print(a.TEMPLATES); print(a.STATIC)"],
            capture_output=True, text=True, check=True, cwd=tmp_path)
        module, templates, static = probe.stdout.split()
        assert module.startswith(str(site))  # the wheel's copy, not the checkout's
        assert templates == f"{venv}/share/btsguru/templates"
        assert (Path(templates) / "base.html").is_file()
        assert (Path(static) / "htmx").is_dir() and (Path(static) / "swagger-ui").is_dir()

        # a second run (an upgrade): the operator's env file is kept as it is
        (scratch / "etc/btsguru/btsguru.env").write_text(
            env_source.read_text() + "LOG_FORMAT=json\n")
        env_source.write_text("DATABASE_URL=sqlite:////elsewhere.db\n")
        log.write_text("")
        with log.open("a") as out:
            done = subprocess.run(
                [str(INSTALL), "--wheel", str(wheel), "--prefix", str(prefix), "--root",
                 str(scratch), "--env-file", str(env_source), "--ports", str(a)],
                env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=300,
                check=False)
        assert done.returncode == 0, done.stderr
        assert "LOG_FORMAT=json" in (scratch / "etc/btsguru/btsguru.env").read_text()
        calls = log.read_text().splitlines()
        assert f"install.sh: kept the existing {scratch}/etc/btsguru/btsguru.env" in calls
        assert calls.index("install.sh: running btsguru migrate") < \
            calls.index(f"systemctl restart btsguru@{a}.service")
    finally:
        for pid in (pids.read_text().split() if pids.exists() else []):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)


def test_install_refuses_clearly(tmp_path, wheel):
    done = subprocess.run([str(INSTALL), "--wheel", str(tmp_path / "nope.whl")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "nope.whl does not exist" in done.stderr
    done = subprocess.run([str(INSTALL), "--wheel", str(wheel), "--prefix", "relative"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "--prefix must be an absolute path" in done.stderr
