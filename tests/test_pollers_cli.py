"""`btsguru refresh` and `btsguru record`, run as a user runs them, against a simulator the
test starts; a recorded tape replays the same answers through `simulate --tape`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from btsguru.config import Config
from tests.cli_helpers import ROOT, cli_env, free_port, run_cli
from tests.waiting import wait_until_blocking

KEY = "cli-upstream-key-5f0e7d"


@contextmanager
def simulate(*args: str) -> Iterator[str]:
    """`btsguru simulate` in a subprocess; yields its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "btsguru", "simulate", "--port",
                                str(port), *args], cwd=ROOT, env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_blocking(lambda: _answers(url) or process.poll() is not None, 20,
                            "the simulator")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/__sim/stats", timeout=1).close()
        return True
    except OSError:
        return False


def _get(url: str, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
    query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
    request = urllib.request.Request(f"{url}{path}{'?' + query if query else ''}",
                                     headers={"x-apisports-key": "replay"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def _post(url: str, path: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     method="POST")
    urllib.request.urlopen(request, timeout=5).close()


def _env(config: Config, sim_url: str) -> dict[str, str]:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/0",
           "REDIS_CACHE_PREFIX": config.redis_cache_prefix,
           "DATABASE_URL": config.database_url, "RAPIDAPI_KEY": KEY}
    for sport in ("football", "basketball", "hockey", "baseball", "american-football"):
        env[f"RAPIDAPI_BASE_URL_{sport.upper().replace('-', '_')}"] = f"{sim_url}/{sport}"
    return env


def _migrated(config: Config, env: dict[str, str]) -> None:
    result = run_cli("migrate", env=env)
    assert result.returncode == 0, result.stderr


def test_refresh_fetches_and_summarizes(test_config):
    with simulate() as url:
        env = _env(test_config, url)
        _migrated(test_config, env)
        result = run_cli("refresh", "--sport", "football", "--scope", "all", env=env)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        for task in ("schedule", "live", "static", "standings"):
            assert f"football {task}:" in out, out
        summary = out.strip().splitlines()[-1]
        assert summary.startswith("done in ") and summary.endswith(" 0 failed"), summary
        requests = int(summary.split(": ")[1].split(" requests")[0])
        stats = json.loads(_get(url, "/__sim/stats")[1])
        assert requests == stats["requests"] > 5
        assert int(summary.split("requests, ")[1].split(" games")[0]) > 0

        again = run_cli("rapidapi:refresh", "--scope", "today", env=env)
        assert again.returncode == 0, again.stderr
        assert "american-football schedule:" in again.stdout


def test_refresh_exits_non_zero_when_a_fetch_fails(test_config):
    with simulate() as url:
        env = _env(test_config, url)
        _migrated(test_config, env)
        _post(url, "/__sim/fault", {"mode": "500", "count": 100})
        result = run_cli("refresh", "--sport", "basketball", "--scope", "live", env=env)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        # the log's warnings, then one line that says what failed
        line = [x for x in result.stderr.splitlines() if x.strip()][-1]
        assert line.startswith("btsguru: refresh: "), result.stderr
        assert "failed" in line and "500" in line
        assert "1 failed" in result.stdout.strip().splitlines()[-1]


def test_refresh_of_a_sport_not_relayed_is_a_usage_error(test_config):
    with simulate() as url:
        env = _env(test_config, url) | {"BTSGURU_SPORTS": "football"}
        result = run_cli("refresh", "--sport", "hockey", env=env)
        assert result.returncode == 2 and "BTSGURU_SPORTS" in result.stderr


def test_record_then_replay_the_tape(test_config, tmp_path: Path):
    tape = tmp_path / "football.jsonl"
    with simulate() as url:
        env = _env(test_config, url)
        _migrated(test_config, env)
        result = run_cli("record", "--out", str(tape), "--sport", "football",
                         "--duration", "3", env=env)
        assert result.returncode == 0, result.stderr
        assert f"to {tape}" in result.stdout.strip().splitlines()[-1]
    text = tape.read_text()
    assert KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    keys = {(ln["path"], json.dumps(ln["params"], sort_keys=True)) for ln in lines}
    assert ("/fixtures", '{"live": "all"}') in keys
    assert any(path == "/leagues" for path, _ in keys)
    assert sum(1 for path, _ in keys if path == "/fixtures" and "date" in _) == 3
    for line in lines:
        assert line["sport"] == "football" and line["status"] == 200
        assert isinstance(line["body"], dict) and "response" in line["body"]

    by_key: dict[tuple[str, str], list[dict[str, object]]] = {}
    for line in lines:
        by_key.setdefault((line["path"], json.dumps(line["params"], sort_keys=True)),
                          []).append(line["body"])
    with simulate("--tape", str(tape)) as replay:
        for (path, params), bodies in by_key.items():
            for body in [*bodies, bodies[-1]]:  # in order, then the last one repeats
                status, raw = _get(replay, f"/football{path}", json.loads(params))
                assert status == 200 and json.loads(raw) == body, path


def test_a_tape_line_never_carries_the_key():
    from btsguru.pollers.record import tape_line
    from btsguru.upstream.client import UpstreamResponse
    from btsguru.upstream.quota import RateLimitInfo

    secret = "s3cr3t-key-value"
    response = UpstreamResponse(
        sport="hockey", endpoint="games/events", params={"game": "7"}, status=200,
        body={"get": "games", "parameters": {"game": "7"}, "errors": [],
              "response": [{"comment": f"echo {secret}"}]},
        headers={"x-ratelimit-remaining": "9", "x-echo": f"key={secret}",
                 "set-cookie": "session=1"},
        fetched_at=0.0, elapsed_ms=1.0, limits=RateLimitInfo())
    line = json.loads(tape_line(response, [secret]))
    assert secret not in json.dumps(line)
    assert line["path"] == "/games/events" and line["params"] == {"game": "7"}
    assert line["headers"] == {"x-ratelimit-remaining": "9"}
    assert line["body"]["response"][0]["comment"] == "echo [redacted]"


def _stats(url: str) -> dict[str, object]:
    return json.loads(_get(url, "/__sim/stats")[1])


def test_poll_runs_until_sigterm_and_serve_no_pollers_does_not_poll(test_config):
    import redis

    with simulate() as url:
        env = _env(test_config, url) | {"SECRET_KEY": "s" * 32, "LOG_LEVEL": "info"}
        _migrated(test_config, env)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "btsguru", "serve", "--port",
                                   str(port), "--no-pollers"], cwd=ROOT, env=cli_env(env),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_blocking(lambda: _answers_health(port), 20, "serve --no-pollers")
        finally:
            server.terminate()
            _out, served = server.communicate(timeout=30)  # its own stop deadline is 25 s
        # an absence, proved by the whole run: `serve` starts its pollers (and logs it)
        # once it listens and before it waits for SIGTERM, so a serve that started them
        # has said so by the time it has stopped
        assert server.returncode == 0, served
        assert "serving on port" in served and "pollers started" not in served, served
        assert _stats(url)["requests"] == 0

        poller = subprocess.Popen([sys.executable, "-m", "btsguru", "poll"], cwd=ROOT,
                                  env=cli_env(env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_until_blocking(lambda: int(str(_stats(url)["requests"])) >= 20, 20, "polling")
        finally:
            poller.terminate()
            _out, err = poller.communicate(timeout=20)
        assert poller.returncode == 0, err
        assert "Traceback" not in err and "pollers stopped" in err
        queue = redis.Redis(host="127.0.0.1", port=6379, db=test_config.redis_queue_db)
        try:  # the leases were given back, for another process to take at once
            assert not list(queue.scan_iter(match=test_config.redis_cache_prefix
                                            + "poll:lease:*"))
            assert list(queue.scan_iter(match=test_config.redis_cache_prefix
                                        + "poll:state:*"))
        finally:
            queue.close()


def _answers_health(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
        return True
    except OSError:
        return False
