"""`serve` and `demo` as a user runs them, and the app's health routes and JSON errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import tornado.websocket
from tornado.httpclient import HTTPClientError

from btsguru.app import make_app, open_services
from tests.cli_helpers import ROOT, cli_env, free_port
from tests.conftest import make_test_config, purge_redis_prefix
from tests.waiting import wait_until_blocking


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except (OSError, urllib.error.URLError):
        return False
    return True


def start(args, env, cwd=ROOT):
    return subprocess.Popen([sys.executable, "-m", "btsguru", *args], cwd=cwd, env=cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(process, sig=signal.SIGTERM):
    process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the supervisor and its workers
        out, err = process.communicate()
        raise AssertionError(f"did not stop within 30 s after {sig!r}; stderr:\n{err}") \
            from None
    return process.returncode, out, err


def serve_env(config):
    return {"REDIS_URL": config.redis_url, "REDIS_CACHE_PREFIX": config.redis_cache_prefix,
            "DATABASE_URL": config.database_url, "RAPIDAPI_KEY": "k",
            "SECRET_KEY": config.secret_key.reveal()}


@pytest.mark.parametrize("processes", [1, 2])
def test_serve_answers_health_and_stops_cleanly_on_sigterm(tmp_path, processes):
    config = make_test_config(tmp_path)
    port = free_port()
    process = start(["serve", "--port", str(port), "--processes", str(processes)],
                    serve_env(config))
    try:
        wait_until_blocking(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 20,
                            "serve to answer")
        assert get_json(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        status, body = get_json(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert body["checks"] == {"redis": "ok", "database": "ok"}
        # each worker listens on its own socket (SO_REUSEPORT): the kernel spreads
        # connections over them instead of handing a burst to whoever wakes first
        wait_until_blocking(lambda: listeners(port) == processes, 20, "every worker to listen")
    finally:
        code, _out, err = stop(process)
        purge_redis_prefix(config)
    assert code == 0, err
    assert "Traceback" not in err


def listeners(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:`port`, from the kernel's table."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == wanted and line.split()[3] == "0A")


def test_demo_runs_with_no_servers_and_prints_what_a_newcomer_needs(tmp_path):
    port = free_port()
    process = start(["demo", "--port", str(port)], {"REDIS_URL": "redis://127.0.0.1:1/0"},
                    cwd=tmp_path)
    try:
        lines: list[str] = []
        wait_until_blocking(lambda: _read_until(process, lines, "health"), timeout_s=60,
                            what="the demo banner")
        text = "\n".join(lines)
        assert "demo@btsguru.local" in text and "btsguru-demo" in text
        key = next(line.split()[-1] for line in lines if "API key" in line)
        assert key.startswith("btg_") and len(key) == 44
        simulator = next(line.split()[2] for line in lines if "simulated upstream" in line)
        status, stats = get_json(f"{simulator}/__sim/stats")
        assert status == 200 and "requests" in stats
        assert get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert (tmp_path / "btsguru-demo.db").exists()
        # the printed curl line works: the demo key reaches the simulator through the relay
        rest = next(line for line in lines if "REST (raw proxy)" in line)
        url = rest.split("'")[-2]
        request = urllib.request.Request(url, headers={"X-API-Key": key})
        with urllib.request.urlopen(request, timeout=15) as response:
            assert response.status == 200
            # the demo's pollers may have fetched live fixtures into the cache already
            assert response.headers["X-Cache"] in ("MISS", "HIT")
            assert json.loads(response.read())["get"] == "fixtures"
        # the Pusher side: the printed endpoint greets a Pusher client, and a Laravel
        # backend publishes with the printed app id, key and secret (and not without)
        endpoint = next(line.split()[2] for line in lines if "Pusher (Reverb)" in line)
        assert asyncio.run(_pusher_greeting(endpoint)) == "pusher:connection_established"
        app = next(line.split() for line in lines if "Pusher app" in line)
        app_id, app_key, secret = app[app.index("id") + 1], app[app.index("key") + 1], \
            app[app.index("secret") + 1]
        assert len(secret) >= 32
        env_lines = {line.split()[-1].split("=")[0]: line.split()[-1].split("=", 1)[1]
                     for line in lines if "REVERB_" in line and "=" in line}
        assert env_lines == {"REVERB_APP_ID": app_id, "REVERB_APP_KEY": app_key,
                             "REVERB_APP_SECRET": secret, "REVERB_HOST": "127.0.0.1",
                             "REVERB_PORT": str(port), "REVERB_SCHEME": "http"}
        base = f"http://127.0.0.1:{port}"
        assert _pusher_publish(base, app_id, app_key, secret) == 200
        assert _pusher_publish(base, app_id, app_key, secret[::-1]) == 401
    finally:
        code, _out, err = stop(process, signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err


async def _pusher_greeting(url: str) -> str:
    conn = await asyncio.wait_for(tornado.websocket.websocket_connect(url), 10)
    try:
        message = await asyncio.wait_for(conn.read_message(), 10)
        assert isinstance(message, str)
        return str(json.loads(message)["event"])
    finally:
        conn.close()
        # the closing handshake, so that the socket is closed before the loop is
        while await asyncio.wait_for(conn.read_message(), 10) is not None:
            pass


def _pusher_publish(base: str, app_id: str, app_key: str, secret: str) -> int:
    """A publish as Laravel's Pusher driver signs it (Pusher's HTTP API, auth version
    1.0), written out here rather than taken from btsguru."""
    body = json.dumps({"name": "demo.check", "channels": ["demo-check"], "data": "{}"}).encode()
    path = f"/apps/{app_id}/events"
    query = {"auth_key": app_key, "auth_timestamp": str(int(time.time())),
             "auth_version": "1.0", "body_md5": hashlib.md5(body).hexdigest()}
    signed = "\n".join(["POST", path, "&".join(f"{k}={query[k]}" for k in sorted(query))])
    query["auth_signature"] = hmac.new(secret.encode(), signed.encode(),
                                       hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"{base}{path}?{urllib.parse.urlencode(query)}",
                                     data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_readmes_laravel_env_block_works_as_it_is(tmp_path):
    """The README's Laravel `.env` block, copied whole into the `.env` btsguru reads: it
    binds REVERB_SERVER_HOST/PORT (not the client-facing REVERB_HOST/PORT, 443), a
    Pusher client connects with the block's app key, and a backend publishes with its
    app id and secret. (The environment moves the bind port to a free one, as it may
    override any .env line, so that parallel tests do not fight over 8080.)"""
    block = subprocess.run(["bash", str(ROOT / ".ci" / "readme-block"), "laravel-env"],
                           capture_output=True, text=True, check=True).stdout
    (tmp_path / ".env").write_text(block)
    from btsguru.config import load_config

    laravel = load_config(environ={}, env_file=tmp_path / ".env")
    assert (laravel.bind_host, laravel.bind_port) == ("0.0.0.0", 8080)
    assert (laravel.reverb_host, laravel.reverb_port) == ("scores.example.com", 443)
    config = make_test_config(tmp_path)
    port = free_port()
    process = start(["serve", "--processes", "1"],
                    {**serve_env(config), "REVERB_SERVER_PORT": str(port)}, cwd=tmp_path)
    try:
        wait_until_blocking(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 20,
                            "serve to answer")
        endpoint = f"ws://127.0.0.1:{port}/app/{laravel.reverb_app_key}?protocol=7"
        greeting = asyncio.run(_pusher_greeting(endpoint))
        assert greeting == "pusher:connection_established"
        base = f"http://127.0.0.1:{port}"
        secret = laravel.reverb_app_secret.reveal()
        assert _pusher_publish(base, laravel.reverb_app_id, laravel.reverb_app_key, secret) == 200
        assert _pusher_publish(base, laravel.reverb_app_id, laravel.reverb_app_key, "wrong") == 401
    finally:
        code, _out, err = stop(process)
        purge_redis_prefix(config)
    assert code == 0, err


def _read_until(process, lines, marker):
    line = process.stdout.readline()
    if not line:
        raise AssertionError(f"demo exited: {process.stderr.read()}")
    lines.append(line.rstrip())
    return marker in line


# -- in-process: the app over real Redis and SQLite --

@pytest.fixture
def services(io_loop, tmp_path):
    config = make_test_config(tmp_path)
    from btsguru.db import close_database, connect_database
    from btsguru.db.migrate import migrate

    database = connect_database(config.database_url)
    migrate(database, free_rate=60, free_period_s=60)
    close_database(database)
    context = open_services(config)
    s = io_loop.run_sync(context.__aenter__)
    yield s
    io_loop.run_sync(lambda: context.__aexit__(None, None, None))
    purge_redis_prefix(config)


@pytest.fixture
def app(services):
    return make_app(services)


async def test_unknown_route_and_method_are_json(http_server_client):
    with pytest.raises(HTTPClientError) as info:
        await http_server_client.fetch("/v1/nope")
    assert info.value.code == 404
    body = json.loads(info.value.response.body)
    assert body["error"]["code"] == "not_found"
    assert info.value.response.headers["Content-Type"] == "application/json"

    with pytest.raises(HTTPClientError) as info:
        await http_server_client.fetch("/healthz", method="POST", body=b"")
    assert info.value.code == 405
    assert json.loads(info.value.response.body)["error"]["code"] == "method_not_allowed"


async def test_readyz_is_ok_when_both_answer(http_server_client):
    response = await http_server_client.fetch("/readyz")
    assert json.loads(response.body) == {
        "status": "ok", "checks": {"redis": "ok", "database": "ok"},
        "redis": {"topology": "single", "description": "redis://127.0.0.1:6379/0"}}


async def test_readyz_names_the_failed_dependency(tmp_path):
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    config = make_test_config(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    async with open_services(config) as s:
        server = HTTPServer(make_app(s))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        try:
            response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/readyz",
                                                     raise_error=False)
        finally:
            server.stop()
    assert response.code == 503
    body = json.loads(response.body)
    assert body["failed"] == ["redis"]
    assert body["checks"]["database"] == "ok"
    # refused at once, or still retrying when the probe's deadline passes
    assert "127.0.0.1:1" in body["checks"]["redis"] or "no answer" in body["checks"]["redis"]
