"""The README as a newcomer reads it: every shell example runs, in order, against the
demo that the README's first command starts, and works as written.

Every ```sh block of the README is run, except the two set-up commands between their
markers (CI runs the test command itself; the demo command's `btsguru demo` is what this
test starts) and a block right after a `<!-- not-run: REASON -->` comment, which must
give its reason. Only what a reader would change is changed: the demo's port for 8080,
a free port for the simulator's 8099, and the demo's key for `KEY=btg_...`. Each block
runs in bash with `set -euo pipefail` and with `curl` failing on an HTTP error (so a
404, as `GET /v1/football/games/1035037` was, fails the block); a stream (`curl -N`) runs
for a few seconds and must have been subscribed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import ROOT, cli_env, free_port
from tests.waiting import wait_until_blocking

README = ROOT / "README.md"
SET_UP = ("demo-command", "test-command")
STREAM_S = 5  # a stream example runs this long, then ends as Ctrl-C would


@dataclass
class Example:
    line: int  # where its block starts in the README
    code: str
    not_run: str | None  # the reason, for a block marked not to run


def examples(text: str) -> list[Example]:
    found = []
    lines = text.splitlines()
    marker = None
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("<!--"):
            marker = stripped
        elif stripped in ("```sh", "```bash"):
            start = index
            body = []
            index += 1
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            reason = None
            if marker and marker.startswith("<!-- not-run:"):
                reason = marker.removeprefix("<!-- not-run:").removesuffix("-->").strip()
            if not (marker and any(marker == f"<!-- {name} -->" for name in SET_UP)):
                found.append(Example(start + 1, "\n".join(body), reason))
        elif stripped:
            marker = None
        index += 1
    return found


def test_every_readme_example_is_found_and_each_exception_says_why():
    found = examples(README.read_text())
    assert len(found) >= 7
    assert all(e.not_run for e in found if e.not_run is not None)
    runnable = [e for e in found if e.not_run is None]
    assert any("/v1/football/standings" in e.code for e in runnable)
    assert not any("1035037" in e.code for e in found), "a fixed id the reader cannot get"


PRELUDE = f"""
set -euo pipefail
trap 'jobs=$(jobs -p); [ -z "$jobs" ] || kill $jobs' EXIT  # what an example started
curl() {{
    case " $* " in
        *" -N "*) command curl --fail-with-body --max-time {STREAM_S} "$@" || [ $? -eq 28 ] ;;
        *) command curl --fail-with-body "$@" ;;
    esac
}}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`btsguru demo` as the README's first command leaves it: its port and key."""
    cwd = tmp_path_factory.mktemp("readme-demo")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "btsguru", "demo", "--port", str(port)],
                               cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []

    def banner_read() -> bool:
        line = process.stdout.readline()
        if not line:
            raise AssertionError("the demo exited before its banner")
        lines.append(line)
        return "health" in line

    try:
        wait_until_blocking(banner_read, timeout_s=60, what="the demo's banner")
        key = next(line.split()[-1] for line in lines if "API key" in line)
        yield port, key, cwd
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=30)


def run_example(example: Example, port: int, key: str, cwd: Path) -> subprocess.CompletedProcess:
    code = example.code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    code = code.replace("8099", str(free_port()))
    code = re.sub(r"^KEY=btg_\.\.\.", f"KEY={shlex.quote(key)}", code, flags=re.M)
    env = {**cli_env(), "KEY": key,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(["bash", "-c", PRELUDE + code], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += "\n(the example did not end within 60 s)"
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _get(url: str, key: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.timeout(300)
def test_every_readme_example_works_as_written_against_the_demo(demo):
    port, key, cwd = demo
    base = f"http://127.0.0.1:{port}"

    def warm() -> bool:
        """What the examples read is there: the pollers' first live poll, and the table
        of a league in play (the standings come right after the first schedule run)."""
        status, live = _get(f"{base}/v1/football/live", key)
        if status != 200 or not live["data"]:
            return False
        league = live["data"][0]["league"]
        status, _ = _get(f"{base}/v1/football/standings?league={league['id']}"
                         f"&season={league['season']}", key)
        return status == 200

    wait_until_blocking(warm, timeout_s=60, interval_s=0.5, what="the demo's first polls")
    ran = 0
    for example in examples(README.read_text()):
        if example.not_run is not None:
            continue
        result = run_example(example, port, key, cwd)
        where = f"README line {example.line}:\n{example.code}"
        assert result.returncode == 0, f"{where}\n--- stdout\n{result.stdout[-1500:]}" \
            f"\n--- stderr\n{result.stderr[-1500:]}"
        assert "Traceback" not in result.stderr + result.stdout, where
        if "curl -N" in example.code:  # the stream was opened and subscribed
            assert ": subscribed" in result.stdout, f"{where}\n{result.stdout[:500]}"
        ran += 1
    assert ran >= 4  # the simulator, REST, reading games, a stream
