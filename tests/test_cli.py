"""The command line: error paths end as one line on stderr with a non-zero status."""

from __future__ import annotations

import pytest

from btsguru.sports import SPORTS
from tests.cli_helpers import run_cli


def assert_one_line_error(result, status):
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "serve", "poll", "sports:poll", "refresh", "rapidapi:refresh",
                    "migrate", "simulate", "record", "users", "keys"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["demo"], ["serve"], ["poll"], ["sports:poll"],
                                     ["refresh"], ["rapidapi:refresh"], ["migrate"],
                                     ["simulate"], ["record"], ["users", "create"],
                                     ["keys", "create"], ["keys", "list"], ["keys", "revoke"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: btsguru" in result.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    ([], "required: COMMAND"),
    (["fly"], "invalid choice: 'fly'"),
    (["serve", "--port", "99999"], "invalid port value"),
    (["serve", "--processes", "-1"], "invalid non-negative integer value"),
    (["simulate", "--speed", "0"], "invalid positive number value"),
    (["refresh", "--sport", "curling"], "invalid choice: 'curling'"),
    (["keys"], "required: ACTION"),
    (["record"], "required: --out"),
])
def test_bad_arguments(args, fragment):
    line = assert_one_line_error(run_cli(*args), 2)
    assert fragment in line


def test_bad_setting_names_the_variable():
    line = assert_one_line_error(run_cli("migrate", env={"REDIS_PORT": "x"}), 2)
    assert line.startswith("btsguru: configuration error: REDIS_PORT:")


def test_serve_without_an_upstream_key_is_a_clear_start_up_error():
    line = assert_one_line_error(run_cli("serve", env={"SECRET_KEY": "s" * 32}), 2)
    assert "RAPIDAPI_KEY: required" in line


@pytest.mark.parametrize("command", [["poll"], ["sports:poll"], ["refresh"],
                                     ["rapidapi:refresh", "--scope", "static"],
                                     ["record", "--out", "x.jsonl"]])
def test_upstream_commands_need_the_key(command):
    line = assert_one_line_error(run_cli(*command), 2)
    assert "RAPIDAPI_KEY: required" in line


def test_unreachable_redis_is_one_line(tmp_path):
    result = run_cli("serve", "--port", "0", env={
        "RAPIDAPI_KEY": "k", "SECRET_KEY": "s" * 32, "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}, timeout_s=40)
    line = assert_one_line_error(result, 1)
    assert "Redis" in line and "127.0.0.1:1" in line


def test_unreachable_database_is_one_line():
    result = run_cli("migrate", env={"DATABASE_URL": "mysql://root:pw@127.0.0.1:1/nothing"},
                     timeout_s=40)
    line = assert_one_line_error(result, 1)
    assert "pw" not in line.replace("pwd", "")
    assert "127.0.0.1:1" in line or "database" in line.lower()


def test_users_and_keys_round_trip(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "REDIS_URL": "memory://"}
    assert run_cli("migrate", env=env).returncode == 0
    again = run_cli("migrate", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout

    created = run_cli("users", "create", "Ann@Example.com", "--password", "correct horse",
                      "--tier", "pro", env=env)
    assert created.returncode == 0, created.stderr
    assert "ann@example.com" in created.stdout
    duplicate = run_cli("users", "create", "ann@example.com", env=env)
    assert "already exists" in assert_one_line_error(duplicate, 1)
    unknown_tier = run_cli("users", "create", "bob@example.com", "--tier", "gold", env=env)
    assert "gold" in assert_one_line_error(unknown_tier, 1)

    made = run_cli("keys", "create", "ann@example.com", "--name", "scores", "--scopes",
                   "rest,stream", env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("btg_") and len(secret) == 44

    listed = run_cli("keys", "list", "ann@example.com", env=env)
    assert listed.returncode == 0
    assert secret[:12] in listed.stdout and "scores" in listed.stdout
    assert secret not in listed.stdout

    assert "6" in assert_one_line_error(run_cli("keys", "revoke", secret[:5], env=env), 1)
    revoked = run_cli("keys", "revoke", secret[:8], env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in run_cli("keys", "list", "ann@example.com", env=env).stdout
    missing = run_cli("keys", "create", "nobody@example.com", env=env)
    assert_one_line_error(missing, 1)


def test_sports_are_the_contracts():
    assert SPORTS == ("football", "basketball", "hockey", "baseball", "american-football")


def test_a_taken_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_error(run_cli("simulate", "--port", str(port)), 1)
        assert f"cannot listen on 127.0.0.1:{port}" in line


def test_a_bad_tape_is_one_line(tmp_path):
    tape = tmp_path / "bad.jsonl"
    tape.write_text("{not json\n")
    line = assert_one_line_error(run_cli("simulate", "--port", "0", "--tape", str(tape)), 2)
    assert "bad.jsonl" in line or "tape" in line
