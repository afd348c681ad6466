"""Cached REST hits (issue 9, target 4): `GET /v1/football/raw/leagues` (a cached upstream
answer) and `GET /v1/football/live` (the normalized live list), authenticated,
rate-limited and counted, at 1 and at 2 server processes, against a bare Tornado
hello-world handler with the same number of processes, in the same run.

The target: throughput >= 0.7x hello's and p99 <= 2x hello's, at each process count.
Also measured, for scale: nginx `proxy_cache` in front of the simulator (Debian's nginx,
one worker per process of the row it sits beside), serving the same upstream path.

Each row: requests/s, p50, p99 (wrk, 50 connections, one thread), the ratio to hello at
the same process count and pass/fail against the target. The live list holds the
simulator's live football games (one `btsguru refresh --scope live` before the runs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    Processes,
    WrkResult,
    btsguru,
    free_port,
    processes,
    report,
    start_stack,
    wait_http,
    wrk,
)

THROUGHPUT_TARGET = 0.7  # x hello's requests/s
P99_TARGET = 2.0  # x hello's p99
CONNECTIONS = 50
NGINX = "/usr/sbin/nginx"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers), response.read()


def _upstream(simulator_url: str, path: str) -> int:
    _headers, body = _get(f"{simulator_url}/__sim/stats")
    return int(json.loads(body)["by_path"].get(path, 0))


def _shape_bench_tier(env: dict[str, str]) -> None:
    """The stack lifts the bench user's limits (10**9 a second, a one-second bucket); give
    the bucket the enterprise tier's shape instead — it fills in 10 s, as the seeded Pro
    and Enterprise tiers do (the free tier: 60 s) — so the rate limiter works as it does
    for real users: its leases last 4% of the fill time (see `btsguru.auth.ratelimit`),
    and a one-second bucket would make them shorter than one turn of a busy IOLoop."""
    subprocess.run([sys.executable, "-c", (
        "import asyncio;from btsguru.db import connect_database;from btsguru.db.runner import "
        "DatabaseRunner;from btsguru.auth.tiers import TierService;"
        f"r=DatabaseRunner(connect_database({env['DATABASE_URL']!r}));"
        "asyncio.run(TierService(r).update('enterprise', rest_rate=10**9, rest_period_s=10));"
        "r.close()")], check=True, env={**os.environ, **env})


def _start_hello(group: Processes, processes_n: int) -> str:
    port = free_port()
    group.start([sys.executable, "-m", "bench.hello", str(port), str(processes_n)])
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    return url


def _start_server(group: Processes, env: dict[str, str], processes_n: int) -> str:
    """Another `btsguru serve` on the stack's Redis and database."""
    port = free_port()
    group.start([sys.executable, "-m", "btsguru", "serve", "--port", str(port),
                 "--processes", str(processes_n), "--no-pollers"], env=env)
    base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{base_url}/healthz")
    return base_url


@contextmanager
def nginx_cache(upstream_url: str, workers: int) -> Iterator[str | None]:
    """nginx with `proxy_cache` in front of `upstream_url`, from a config of its own in a
    scratch directory; yields its base URL (None when nginx is not installed)."""
    if not Path(NGINX).exists() and shutil.which("nginx") is None:
        yield None
        return
    binary = NGINX if Path(NGINX).exists() else str(shutil.which("nginx"))
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-bench-nginx-"))
    port = free_port()
    temp_paths = "\n".join(f"    {name}_temp_path {scratch / name};" for name in
                           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (scratch / "nginx.conf").write_text(f"""
daemon off;
worker_processes {workers};
pid {scratch / 'nginx.pid'};
error_log {scratch / 'error.log'} warn;
{'user root;' if _is_root() else ''}
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp_paths}
    proxy_cache_path {scratch / 'cache'} levels=1:2 keys_zone=bench:10m max_size=100m
                     inactive=60m use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream_url};
            proxy_set_header x-apisports-key bench;
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
""")
    process = subprocess.Popen([binary, "-p", str(scratch), "-c", str(scratch / "nginx.conf"),
                                "-e", str(scratch / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"nginx exited: {err.strip()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not listen within 10 s")


def _row(target: str, processes_n: int, result: WrkResult, hello: WrkResult | None,
         judged: bool = True) -> dict[str, Any]:
    ratio = result.requests_per_s / hello.requests_per_s if hello else 1.0
    p99_ratio = result.p99_ms / hello.p99_ms if hello and hello.p99_ms else 1.0
    if hello is None or not judged:
        verdict = "reference"
    else:
        verdict = "pass" if ratio >= THROUGHPUT_TARGET and p99_ratio <= P99_TARGET else "FAIL"
    return {"target": target, "processes": processes_n, "req/s": result.requests_per_s,
            "p50 ms": result.p50_ms, "p99 ms": result.p99_ms, "non-2xx": result.non_2xx,
            "ratio": round(ratio, 3), "p99 ratio": round(p99_ratio, 3), "result": verdict}


def run(full: bool) -> None:
    seconds = 15 if full else 3
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"seconds": seconds, "connections": CONNECTIONS,
                             "targets": {"throughput x hello": THROUGHPUT_TARGET,
                                         "p99 x hello": P99_TARGET}}
    with processes() as group:
        stack = start_stack(group)
        _shape_bench_tier(stack.env)
        headers = {"X-API-Key": stack.api_key}
        btsguru("refresh", "--sport", "football", "--scope", "live", env=stack.env)
        raw_path, live_path = "/v1/football/raw/leagues", "/v1/football/live"
        first, _ = _get(stack.base_url + raw_path, headers)
        again, raw_body = _get(stack.base_url + raw_path, headers)
        assert again["X-Cache"] == "HIT", again["X-Cache"]
        _, live_body = _get(stack.base_url + live_path, headers)
        extra.update(first_answer=first["X-Cache"],
                     live_games=len(json.loads(live_body)["data"]),
                     raw_bytes=len(raw_body), live_bytes=len(live_body))
        nginx_fetches = 0
        servers = {1: stack.base_url}
        servers[2] = _start_server(group, stack.env, 2)
        for processes_n, base_url in servers.items():
            hello_url = _start_hello(group, processes_n)
            wrk(hello_url, seconds=1)  # warm-up: the first connections cost more
            hello = wrk(hello_url, seconds=seconds, connections=CONNECTIONS)
            rows.append(_row("tornado hello (reference)", processes_n, hello, None))
            for label, path in (("GET /v1/football/raw/leagues (HIT)", raw_path),
                                ("GET /v1/football/live", live_path)):
                wrk(base_url + path, seconds=1, headers=headers)  # warm every process
                result = wrk(base_url + path, seconds=seconds, connections=CONNECTIONS,
                             headers=headers)
                rows.append(_row(label, processes_n, result, hello))
            # one miss, then hits only, whatever the number of processes (nginx's own
            # fetches are not the relay's)
            extra["upstream_requests"] = _upstream(stack.simulator_url, "/football/leagues") \
                - nginx_fetches
            with nginx_cache(stack.simulator_url, processes_n) as nginx_url:
                if nginx_url is not None:
                    before = _upstream(stack.simulator_url, "/football/leagues")
                    cached_path = "/football/leagues"
                    _get(nginx_url + cached_path)
                    warm_headers, _ = _get(nginx_url + cached_path)
                    extra["nginx_cache"] = warm_headers.get("X-Cache")
                    result = wrk(nginx_url + cached_path, seconds=seconds,
                                 connections=CONNECTIONS)
                    rows.append(_row("nginx proxy_cache (scale)", processes_n, result, hello,
                                     judged=False))
                    nginx_fetches += _upstream(stack.simulator_url, "/football/leagues") - before
    report("rest_hits", rows, extra)
