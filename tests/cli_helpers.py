"""Running the real `btsguru` command in a subprocess, as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Variables a developer's shell may carry that would leak into the command under test.
_SCRUB = ("REDIS_URL", "DATABASE_URL", "RAPIDAPI_KEY", "SECRET_KEY", "REDIS_CACHE_PREFIX",
          "LOG_FORMAT", "BTSGURU_DEBUG")


# Nothing in the tests may reach the internet: unless a test points a sport at the
# simulator, its upstream is a closed local port (connection refused at once).
OFFLINE_UPSTREAMS = {
    f"RAPIDAPI_BASE_URL_{sport.upper().replace('-', '_')}": f"http://127.0.0.1:9/{sport}"
    for sport in ("football", "basketball", "hockey", "baseball", "american-football")}


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(OFFLINE_UPSTREAMS)
    env.update(extra or {})
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
            timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "btsguru", *args], capture_output=True,
                          text=True, env=cli_env(env), cwd=cwd or ROOT, timeout=timeout_s,
                          check=False)


def run_bench(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS` in a process group of its own, the whole group killed however
    the call ends (a timeout, a test cut short): a benchmark's servers, simulators and
    client processes never outlive its test, to load the rest of the run."""
    process = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = "", f"bench {' '.join(args)}: no result within {timeout_s} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
