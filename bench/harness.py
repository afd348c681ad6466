"""What every scenario needs: free ports, child processes that are always stopped, the
simulator and btsguru started as a user would start them, wrk runs, and the results table."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_packages(folder: Path, module: str) -> Path:
    """`node`, once `folder/node_modules/module` is there: `npm ci` from the folder's
    package-lock.json (the versions CI tested, checked by their integrity hashes) on first
    use. A lock file makes concurrent callers (parallel test workers) install once."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError(f"node and npm are needed for {module} (Debian: nodejs, npm)")
    with (folder / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "node_modules" / module).is_dir():
            done = subprocess.run([npm, "ci", "--prefix", str(folder), "--no-audit", "--no-fund"],
                                  capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"npm ci in {folder.name}/ failed: {done.stderr[-500:]}")
    return Path(node)


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


class ChildLog:
    """A child's standard error, read by a thread as it comes: a pipe nobody reads fills
    up (a server logs a warning per failed poll during an outage) and then blocks the
    child on its next log line. Keeps the last `keep` lines, for failure messages."""

    def __init__(self, process: subprocess.Popen[bytes], keep: int = 5000) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name=f"stderr of {process.pid}")
        self._thread.start()

    def _read(self) -> None:
        if self._process.stderr is None:
            return
        with contextlib.suppress(ValueError, OSError):  # closed under us at shutdown
            for raw in self._process.stderr:
                self.lines.append(raw.decode(errors="replace").rstrip())

    def close(self) -> None:
        """After the process ended: the rest of its output read, and the pipe closed."""
        self._thread.join(10)
        if self._process.stderr is not None:
            self._process.stderr.close()

    def text(self) -> str:
        return "\n".join(self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])

    def tracebacks(self) -> list[str]:
        """Each traceback as the log line that announced it and its last line (without
        the timestamp, so that repeats collapse)."""
        lines, out = list(self.lines), set()
        for at, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = at + 1
                while end < len(lines) and lines[end].startswith((" ", "\t")):
                    end += 1
                announced = lines[at - 1] if at else ""
                last = lines[end] if end < len(lines) else ""
                out.add(f"{announced.split(' ', 1)[-1][:160]} / {last[:160]}")
        return sorted(out)


@dataclass
class Processes:
    """Children started by a scenario; all stopped on exit, whatever happens. Each one's
    standard error is read as it comes (`log`)."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, ChildLog] = field(default_factory=dict)
    # run after the children stopped (a stack's Redis keys, say), last added first
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, args: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(args), env={**os.environ, **(env or {})}, cwd=cwd or ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.children.append(process)
        self.logs[process.pid] = ChildLog(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> ChildLog:
        return self.logs[process.pid]

    def stop_all(self) -> None:
        for process in self.children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.children:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs.values():
            log.close()
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as exc:  # a cleanup must not hide the scenario's own error
                print(f"bench: a cleanup failed: {exc!r}", file=sys.stderr)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()


def btsguru(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "btsguru", *args], env={**os.environ, **env},
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"btsguru {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def bench_user(env: dict[str, str], email: str, *, max_streams: int | None = None) -> str:
    """Migrate the scratch database, create an enterprise user whose rate limit is lifted
    (a benchmark measures the server, not the tier; `max_streams` lifts its stream
    limit too) and return a new API key of theirs."""
    btsguru("migrate", env=env)
    btsguru("users", "create", email, "--password", "bench-password", "--tier", "enterprise",
            env=env)
    subprocess.run([sys.executable, "-c", (
        "import asyncio;from btsguru.db import connect_database;from btsguru.db.runner import "
        "DatabaseRunner;from btsguru.auth.tiers import TierService;"
        f"r=DatabaseRunner(connect_database('{env['DATABASE_URL']}'));"
        "asyncio.run(TierService(r).update('enterprise', rest_rate=10**9, rest_period_s=1, "
        "rest_burst=10**9, daily_quota=None"
        f"{'' if max_streams is None else f', max_streams={max_streams}'}));r.close()")],
        check=True, cwd=ROOT, env={**os.environ, **env})
    return btsguru("keys", "create", email, env=env).strip().splitlines()[-1]


@dataclass
class Stack:
    """The simulator and a btsguru server on a scratch database and Redis prefix."""

    env: dict[str, str]
    base_url: str
    simulator_url: str
    api_key: str
    server: subprocess.Popen[bytes] | None = None  # `btsguru serve` (its log: `Processes.log`)


def purge_redis_prefix(env: dict[str, str]) -> None:
    """Delete every key under the stack's REDIS_CACHE_PREFIX, in each of its logical
    databases: a scenario's keys (histories kept for days) must not pile up in a Redis
    that the next runs share and SCAN."""
    import redis

    if env.get("REDIS_SENTINELS") or env.get("REDIS_CLUSTER_NODES") or env.get(
            "REDIS_URL") == "":
        return  # a Sentinel set or a Cluster of the scenario's own: thrown away whole
    url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = env["REDIS_CACHE_PREFIX"]
    dbs = {int(env.get(name, default)) for name, default in (
        ("REDIS_DB", "0"), ("REDIS_CACHE_DB", "1"), ("REDIS_QUEUE_DB", "2"),
        ("REDIS_REVERB_DB", "3"))}
    for db in dbs:
        client = redis.Redis.from_url(url, db=db)
        try:
            batch = []
            for key in client.scan_iter(match=prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()


def start_stack(group: Processes, *, processes_n: int = 1, pollers: bool = False,
                max_streams: int | None = None, settings: dict[str, str] | None = None,
                simulator_args: Sequence[str] = (), upstream_url: str | None = None,
                email: str = "bench@example.com") -> Stack:
    """`max_streams`: lift the bench user's stream limit too (many clients); `settings`:
    btsguru settings of the scenario's own (environment variables; `REDIS_URL` there
    points the stack at a Redis of the scenario's own); `simulator_args`: options of
    `btsguru simulate` (e.g. `--speed`); `upstream_url`: an upstream already running
    (a test's in-process simulator) instead of a `btsguru simulate` of the stack's own;
    `email`: the user the API key belongs to. Blocking: from a coroutine whose loop runs
    the upstream, call it through `asyncio.to_thread`."""
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-"))
    port = free_port()
    if upstream_url is None:
        sim_port = free_port()
        upstream_url = f"http://127.0.0.1:{sim_port}"
        group.start([sys.executable, "-m", "btsguru", "simulate", "--port", str(sim_port),
                     *simulator_args])
        wait_http(f"{upstream_url}/__sim/stats")
    env = {
        "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        # one prefix per stack: two stacks of one scenario must not share leases
        "REDIS_CACHE_PREFIX": f"btgbench:{os.getpid()}:{port}:",
        "RAPIDAPI_KEY": "bench", "RAPIDAPI_HOST": "127.0.0.1",
        "SECRET_KEY": "bench-secret-key-0123456789",
        "LOG_LEVEL": "warning",
        **(settings or {}),
    }
    for sport in ("FOOTBALL", "BASKETBALL", "HOCKEY", "BASEBALL", "AMERICAN_FOOTBALL"):
        env[f"RAPIDAPI_BASE_URL_{sport}"] = f"{upstream_url}/{sport.lower().replace('_', '-')}"
    group.cleanups.append(lambda: purge_redis_prefix(env))
    key = bench_user(env, email, max_streams=max_streams)
    server = group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port),
                          "--processes", str(processes_n),
                          *([] if pollers else ["--no-pollers"])], env=env)
    base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{base_url}/healthz")
    return Stack(env, base_url, upstream_url, key, server)


def metrics_text(stack: Stack) -> str:
    """The server's `/metrics` page (with the stack's `METRICS_TOKEN`, when it sets one)."""
    token = stack.env.get("METRICS_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{stack.base_url}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode())


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, *, seconds: int, connections: int = 50, threads: int = 1,
        headers: dict[str, str] | None = None) -> WrkResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(rps, p50, p99, int(bad.group(1)) if bad else 0, requests)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def report(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """Print the table and write `bench/results/NAME.json`."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row[c]).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"scenario": name, "machine": machine(), "rows": rows,
                                **(extra or {})}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def _cell(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)
