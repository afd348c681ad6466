"""Redis behind Sentinel (issue 19, item 1): the configuration, the app's services on a
real Sentinel set (a master, a replica, three sentinels started from `redis-server` by
`tests.redis_topologies`), and bad input — unreachable sentinels, a wrong master name —
as one line at start-up and a JSON 503 while running. The failovers are
`test_sentinel_failover.py`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from btsguru.config import load_config
from btsguru.errors import ConfigError
from btsguru.store.redis import open_redis
from tests.cli_helpers import free_port, run_cli
from tests.conftest import make_test_config
from tests.realtime_helpers import relay
from tests.redis_topologies import SentinelSet, client, sentinel_set
from tests.test_cli import assert_one_line_error
from tests.topology_checks import events_on_every_transport, fetch_json

STARTUP_LIMIT_S = 30.0  # the contract's bound for a command to report an unreachable Redis


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    with sentinel_set() as group:
        yield group


def serve_env(tmp_path, **extra: str) -> dict[str, str]:
    return {"RAPIDAPI_KEY": "k", "SECRET_KEY": "s" * 32, "REDIS_URL": "",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **extra}


def closed_ports(n: int) -> str:
    return ",".join(f"127.0.0.1:{free_port()}" for _ in range(n))


# -- configuration --

def test_sentinel_settings_parse(tmp_path):
    config = make_test_config(tmp_path, REDIS_URL="",
                              REDIS_SENTINELS=" 10.0.0.1:26379, [::1]:26380,10.0.0.1:26379",
                              REDIS_SENTINEL_PASSWORD="hush")
    assert config.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert config.redis_sentinel_master == "mymaster"
    assert "hush" not in repr(config)
    stores = open_redis(config)
    assert stores.topology == "sentinel"
    assert stores.description == "sentinel mymaster via 10.0.0.1:26379,[::1]:26380"
    # the sentinels get their own password, the data nodes REDIS_PASSWORD (none here)
    assert stores.master is not None
    assert [s.connection_pool.connection_kwargs.get("password")
            for s in stores.master.sentinel.sentinels] == ["hush", "hush"]
    assert stores.data.connection_pool.connection_kwargs.get("password") is None
    assert stores.queue.connection_pool.connection_kwargs["db"] == config.redis_queue_db


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.1:0", "host:port", ":26379",
                                   "10.0.0.1:26379,nohost"])
def test_a_bad_sentinel_list_names_the_variable(value):
    with pytest.raises(ConfigError) as info:
        load_config(environ={"REDIS_SENTINELS": value}, env_file=None)
    assert info.value.message.startswith("REDIS_SENTINELS: expected host:port")


@pytest.mark.parametrize(("env", "names"), [
    ({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_SENTINELS": "127.0.0.1:26379"},
     "REDIS_URL and REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_CLUSTER_NODES": "127.0.0.1:7000"},
     "REDIS_SENTINELS and REDIS_CLUSTER_NODES"),
    ({"REDIS_URL": "memory://", "REDIS_SENTINELS": "127.0.0.1:26379",
      "REDIS_CLUSTER_NODES": "127.0.0.1:7000"},
     "REDIS_URL and REDIS_SENTINELS and REDIS_CLUSTER_NODES"),
])
def test_two_topologies_are_an_error_naming_them(env, names):
    with pytest.raises(ConfigError) as info:
        load_config(environ=env, env_file=None)
    assert info.value.message.startswith(f"{names}: set only one")


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["keys", "list", "a@b.c"]])
def test_two_topologies_stop_every_command(tmp_path, command):
    result = run_cli(*command, env=serve_env(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0",
                                             REDIS_SENTINELS="127.0.0.1:26379"))
    line = assert_one_line_error(result, 2)
    assert line == ("btsguru: configuration error: REDIS_URL and REDIS_SENTINELS: set only "
                    "one; each selects where Redis is (one server, Sentinel or Cluster)")


# -- bad input at start-up: one line, non-zero, within the bound --

@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["poll"]])
def test_unreachable_sentinels_are_one_line_at_start_up(tmp_path, command):
    addresses = closed_ports(3)
    started = time.monotonic()
    result = run_cli(*command, env=serve_env(tmp_path, REDIS_SENTINELS=addresses),
                     timeout_s=STARTUP_LIMIT_S + 10)
    took_s = time.monotonic() - started
    line = assert_one_line_error(result, 1)
    assert line.startswith(f"btsguru: error: Redis sentinel mymaster via {addresses}: "
                           f"no sentinel answers at {addresses} (REDIS_SENTINELS): "), line
    assert line.endswith("; ".join(f"{a} connection refused" for a in addresses.split(",")))
    assert took_s < STARTUP_LIMIT_S


def test_a_wrong_master_name_is_one_line_at_start_up(tmp_path, sentinels):
    result = run_cli("serve", "--port", "0",
                     env=serve_env(tmp_path, REDIS_SENTINELS=sentinels.sentinels,
                                   REDIS_SENTINEL_MASTER="nosuchmaster"),
                     timeout_s=STARTUP_LIMIT_S + 10)
    line = assert_one_line_error(result, 1)
    assert line == (f"btsguru: error: Redis sentinel nosuchmaster via {sentinels.sentinels}: "
                    f"the sentinels at {sentinels.sentinels} know no master named "
                    "'nosuchmaster' (REDIS_SENTINEL_MASTER); they know: mymaster")


# -- bad input while running: JSON 503 --

@pytest.mark.parametrize("case", ["unreachable", "wrong-name"])
async def test_requests_get_json_503_when_no_master_is_found(tmp_path, sentinels, case):
    env = ({"REDIS_SENTINELS": closed_ports(2)} if case == "unreachable" else
           {"REDIS_SENTINELS": sentinels.sentinels, "REDIS_SENTINEL_MASTER": "nosuchmaster"})
    config = make_test_config(tmp_path, REDIS_URL="", **env)
    async with relay(tmp_path, config) as r:
        started = time.monotonic()
        status, body = await fetch_json(f"{r.http_url}/v1/football/games/1001",
                                        **{"X-API-Key": r.keys["pro"]})
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        status, ready = await fetch_json(f"{r.http_url}/readyz")
        assert time.monotonic() - started < 10  # refused or "no such master": no waiting
        assert status == 503 and ready["failed"] == ["redis"], ready
        assert ready["redis"] == {"topology": "sentinel", "description": r.services.redis.
                                  description, "master": None, "failovers": 0}
        expected = ("no sentinel answers" if case == "unreachable"
                    else "know no master named 'nosuchmaster'")
        assert expected in ready["checks"]["redis"], ready


# -- the services on Sentinel --

def keys_under(port: int, prefix: str, db: int) -> list[bytes]:
    with client(port, db=db) as c:
        return list(c.scan_iter(match=prefix + "*", count=1000))


async def test_rest_and_streams_work_on_the_sentinel_master(tmp_path, sentinels):
    config = make_test_config(tmp_path, **sentinels.env())
    async with relay(tmp_path, config) as r:
        master = sentinels.master_port()
        status, ready = await fetch_json(f"{r.http_url}/readyz")
        assert status == 200, ready
        assert ready["redis"] == {"topology": "sentinel",
                                  "description": f"sentinel mymaster via {sentinels.sentinels}",
                                  "master": f"127.0.0.1:{master}", "failovers": 0}
        await events_on_every_transport(r, goals=1)
        # the data is on the Sentinel-managed master, in the configured databases, and
        # nothing of it reached the shared test Redis on 6379
        prefix = config.redis_cache_prefix
        assert keys_under(master, prefix, config.redis_reverb_db)
        assert keys_under(master, prefix, config.redis_db)
        with redis.Redis(host="127.0.0.1", port=6379, db=config.redis_reverb_db) as shared:
            assert not list(shared.scan_iter(match=prefix + "*"))
        ops = await r.services.redis.status()
        assert (ops.topology, ops.master, ops.failovers) == \
            ("sentinel", f"127.0.0.1:{master}", 0)
