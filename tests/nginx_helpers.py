"""Debian's nginx in front of test servers, configured by `deploy/nginx.conf` itself.

`deploy/nginx.conf` is the production example (TLS on 443, hosts on 10.0.0.x). A test
runs a copy of it in which only what cannot work on this machine is replaced, each by a
targeted substitution that must match exactly as often as expected (a change to the
example that a substitution no longer recognises fails the test loudly instead of
running something else): the upstream's `server` lines (the test's servers, with the
example's own parameters), `listen`, `server_name`, the certificate lines and the access
log's path. Everything else (the balancing method, the map, the locations and their
proxy settings) is the example's. A minimal main file wraps it: `events {}` and an
`http {}` that `include`s the copy, with the pid file, the error log and the temp paths
in a scratch directory.

`nginx(upstreams)` runs it as a foreground child (`nginx -p DIR -c DIR/nginx.conf -g
'daemon off;'`) on a free unprivileged port, in a process group of its own that is
killed on exit however the test ends; `check_config()` runs `nginx -t` on the example
as written but for its certificate (a throwaway one) and paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.cli_helpers import free_port
from tests.waiting import wait_until_blocking

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
NGINX = "/usr/sbin/nginx"
START_TIMEOUT_S = 15.0
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# Each proxied stream holds two connections (client and upstream side).
WORKER_CONNECTIONS = 8192

_UPSTREAM_BLOCK = re.compile(r"^upstream btsguru \{\n(?P<body>.*?)^\}", re.M | re.S)
_SERVER_LINE = re.compile(r"^(?P<indent>[ \t]+)server 10\.0\.0\.\d+:\d+(?P<params>[^;\n]*);\n",
                          re.M)


def nginx_binary() -> str | None:
    if Path(NGINX).exists():
        return NGINX
    return shutil.which("nginx")


def _replace(text: str, pattern: str, replacement: str, *, count: int = 1) -> str:
    """`text` with each match of `pattern` (multi-line regex) replaced; exactly `count`
    matches or a loud failure naming the pattern."""
    new, found = re.subn(pattern, lambda _m: replacement, text, flags=re.M)
    if found != count:
        raise AssertionError(f"deploy/nginx.conf: expected {count} match(es) of {pattern!r}, "
                             f"found {found}; update tests/nginx_helpers.py with the example")
    return new


def render_site(text: str, upstreams: Sequence[str], port: int, access_log: Path) -> str:
    """`deploy/nginx.conf` (its text) for a test: plain HTTP on 127.0.0.1:`port`, the
    upstream's servers `upstreams` (`host:port`), the access log at `access_log`."""
    block = _UPSTREAM_BLOCK.search(text)
    if block is None:
        raise AssertionError("deploy/nginx.conf: no `upstream btsguru { ... }` block")
    servers = list(_SERVER_LINE.finditer(block["body"]))
    if len(servers) < 2 or len({m["params"] for m in servers}) != 1:
        raise AssertionError("deploy/nginx.conf: expected several `server 10.0.0.x:PORT ...;` "
                             f"lines with the same parameters in the upstream, found {servers}")
    indent, params = servers[0]["indent"], servers[0]["params"]
    ours = "".join(f"{indent}server {address}{params};\n" for address in upstreams)
    body = _SERVER_LINE.sub("", block["body"])
    # ours where the example's first line was
    first = servers[0].start()
    body = body[:first] + ours + body[first:]
    text = text[:block.start("body")] + body + text[block.end("body"):]
    text = _replace(text, r"^[ \t]*listen 443 ssl http2;$", f"    listen 127.0.0.1:{port};")
    text = _replace(text, r"^[ \t]*server_name relay\.example\.com;$",
                    "    server_name 127.0.0.1;")
    text = _replace(text, r"^[ \t]*ssl_certificate[ \t]+\S+;\n", "")
    text = _replace(text, r"^[ \t]*ssl_certificate_key[ \t]+\S+;\n", "")
    text = _replace(text, r"^([ \t]*access_log )/var/log/nginx/btsguru\.access\.log( \w+;)$",
                    f"    access_log {access_log} combined_no_query;")
    leftover = re.findall(r"^[ \t]*(?:listen 443|ssl_\w+|server 10\.).*$", text, re.M)
    if leftover:
        raise AssertionError(f"production-only lines left in the rendered config: {leftover}")
    return text


def render_main(scratch: Path, site: Path) -> str:
    """The main file around the site: pid, error log and temp paths in `scratch`."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = 2 * WORKER_CONNECTIONS + 100
    if hard != resource.RLIM_INFINITY:
        files = min(files, hard)
    temp = "\n".join(f"    {name}_temp_path {scratch / name};" for name in TEMP_PATHS)
    return (f"worker_processes 1;\nworker_rlimit_nofile {files};\n"
            f"pid {scratch / 'nginx.pid'};\nerror_log {scratch / 'error.log'} warn;\n"
            f"events {{ worker_connections {WORKER_CONNECTIONS}; }}\n"
            f"http {{\n{temp}\n    include {site};\n}}\n")


@dataclass
class Nginx:
    """A running nginx: its base URL, its process and its scratch directory."""

    port: int
    process: subprocess.Popen[bytes]
    scratch: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.scratch / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_counts(self) -> Counter[tuple[str, int]]:
        """(path, status) -> requests, from the access log (`combined_no_query`: a
        stream's line is written when it ends)."""
        path = self.scratch / "access.log"
        counts: Counter[tuple[str, int]] = Counter()
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                found = re.search(r'"\w+ (\S+) [^"]*" (\d{3}) ', line)
                if found:
                    counts[found[1], int(found[2])] += 1
        return counts

    def config(self) -> str:
        return (self.scratch / "btsguru.conf").read_text()


def _listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # fast shutdown, master and workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # any worker left behind
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _scratch() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="btsguru-nginx-"))
    # run as root, nginx's workers are `nobody`: they must reach the temp paths (which
    # the master creates and hands to them)
    scratch.chmod(0o755)
    return scratch


@contextlib.contextmanager
def nginx(upstreams: Sequence[str]) -> Iterator[Nginx]:
    """nginx with `deploy/nginx.conf` in front of `upstreams` (`host:port`); see the
    module. Its error log is in the failure message when it does not start."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (Debian: nginx-light; .ci/run installs it)")
    scratch = _scratch()
    port = free_port()
    site = scratch / "btsguru.conf"
    site.write_text(render_site(DEPLOY_CONF.read_text(), upstreams, port,
                                scratch / "access.log"))
    main = scratch / "nginx.conf"
    main.write_text(render_main(scratch, site))
    process = subprocess.Popen([binary, "-p", str(scratch), "-c", str(main),
                                "-e", str(scratch / "error.log"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    running = Nginx(port, process, scratch)
    try:
        wait_until_blocking(lambda: process.poll() is not None or _listens(port),
                            START_TIMEOUT_S, lambda: f"nginx on port {port}: "
                                                     f"{running.error_log()[-2000:]}")
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited ({process.returncode}): "
                               f"{running.error_log()[-2000:]}")
        yield running
    finally:
        _stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


def check_config() -> str:
    """`nginx -t` on `deploy/nginx.conf` as written, but for a throwaway self-signed
    certificate and the access log's path; nginx's answer (raises when it refuses)."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (Debian: nginx-light; .ci/run installs it)")
    scratch = _scratch()
    try:
        cert, key = scratch / "cert.pem", scratch / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=relay.example.com", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        text = DEPLOY_CONF.read_text()
        text = _replace(text, r"^([ \t]*ssl_certificate[ \t]+)\S+;$",
                        f"    ssl_certificate {cert};")
        text = _replace(text, r"^([ \t]*ssl_certificate_key[ \t]+)\S+;$",
                        f"    ssl_certificate_key {key};")
        text = _replace(text, r"^([ \t]*access_log )/var/log/nginx/btsguru\.access\.log( \w+;)$",
                        f"    access_log {scratch / 'access.log'} combined_no_query;")
        site = scratch / "btsguru.conf"
        site.write_text(text)
        main = scratch / "nginx.conf"
        main.write_text(render_main(scratch, site))
        done = subprocess.run([binary, "-t", "-p", str(scratch), "-c", str(main),
                               "-e", str(scratch / "error.log")],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise AssertionError(f"nginx -t refused deploy/nginx.conf: {done.stderr.strip()}")
        return done.stderr
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
