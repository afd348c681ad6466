"""A Sentinel failover under a running relay (issue 19, item 1): `SENTINEL FAILOVER` (the
replica promoted, the old master demoted) and a SIGKILL of the master. The same process,
not restarted, writes to the new master, takes a lease there (a Lua script the new
master has never seen), delivers events on the bus again, names the new master on
`/readyz` and the ops page, raises the `redis_failover` alert and counts the failover.

Each case has a Sentinel set of its own (`tests.redis_topologies`): a killed master
leaves no replica for another failover."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError
from tornado.httpclient import AsyncHTTPClient

from btsguru.app import console_services
from btsguru.metrics import REGISTRY
from btsguru.pollers.lease import Leases
from btsguru.sports.base import Phase
from tests.conftest import make_test_config
from tests.realtime_helpers import WsClient, events, relay
from tests.redis_topologies import SentinelSet, client, sentinel_set
from tests.store_fixtures import make_game
from tests.waiting import STACK_INTERVAL_S, wait_until

# The bound for events to flow again after a promotion.
RECOVERY_LIMIT_S = 15.0


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with sentinel_set() as group:
        yield group


def failovers_counted() -> float:
    return REGISTRY.get_sample_value("btsguru_redis_failovers_total") or 0.0


async def ready(url: str) -> tuple[int, dict]:
    response = await AsyncHTTPClient().fetch(f"{url}/readyz", raise_error=False,
                                             request_timeout=10)
    return response.code, json.loads(response.body)


def game(home: int) -> list:
    return [make_game(1001, phase=Phase.LIVE, code="1H", home=home, away=0,
                      clock=str(10 + home), period=1)]


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill"])
async def test_the_relay_follows_the_master_across_a_failover(tmp_path, sentinels, how):
    config = make_test_config(tmp_path, **sentinels.env())
    async with relay(tmp_path, config) as r:
        s = r.services
        old = sentinels.master_port()
        assert old is not None
        ws = await WsClient.connect(r.ws_url, r.keys["pro"])
        try:
            await ws.subscribe("sports.football.39")
            assert (await ws.recv())["op"] == "subscribed"
            await s.games.ingest("football", [make_game(1001)])  # scheduled: no event
            first = (await s.games.ingest("football", game(1))).events
            assert first >= 1
            await ws.recv_until(lambda m: m.get("data", {}).get("seq") == first)
            assert (await ready(r.http_url))[1]["redis"]["master"] == f"127.0.0.1:{old}"
            counted = failovers_counted()

            started = time.monotonic()
            if how == "sigkill":
                sentinels.kill_master()
            else:
                sentinels.failover()
            new = sentinels.wait_promoted(old)
            promoted_s = time.monotonic() - started

            # writes land on the new master. The first ones may fail, or (a forced
            # failover) still be taken by the old master until the sentinels demote it,
            # and be lost then: replication is asynchronous.
            probe = config.redis_cache_prefix + "probe"
            attempts = []

            async def written_to_new_master() -> bool:
                attempts.append(f"{how}-{len(attempts)}")
                try:
                    await s.redis.data.set(probe, attempts[-1])
                except (RedisError, OSError):
                    return False
                with client(new, db=config.redis_db) as direct:
                    return bool(direct.get(probe) == attempts[-1].encode())

            await wait_until(written_to_new_master, RECOVERY_LIMIT_S,
                             "a write to reach the new master", interval_s=STACK_INTERVAL_S)
            writes_s = time.monotonic() - started
            with client(new, db=config.redis_db) as direct:
                assert direct.info("replication")["role"] == "master"

            # the bus delivers again: the next change reaches the subscriber
            second = (await s.games.ingest("football", game(2))).events
            assert second >= 1
            got = events(await ws.recv_until(
                lambda m: m.get("event") == "game.score" and m["data"]["changes"].get(
                    "home.score") == 2, timeout_s=RECOVERY_LIMIT_S))
            events_s = time.monotonic() - started
            assert got[-1]["channel"] == "sports.football.39"

            # a lease (a Lua script the new master has never run) can be taken there
            leases = Leases(s.redis, s.clock)
            assert await leases.refresh(["sentinel-check"]) == {"sentinel-check": True}
            with client(new, db=config.redis_queue_db) as direct:
                assert direct.get(leases.key("sentinel-check")) == leases.token.encode()

            # /readyz, the ops page, the metric and the alert name the move
            status, body = await ready(r.http_url)
            assert status == 200, body
            assert body["redis"]["master"] == f"127.0.0.1:{new}"
            assert body["redis"]["failovers"] == 1
            assert failovers_counted() == counted + 1
            report = await console_services(s).ops.report()
            assert report.redis is not None and report.redis.master == f"127.0.0.1:{new}"
            raised = [e for e in await s.alerts.check_once()
                      if e.alert.name == "redis_failover"]
            assert [(e.status, e.alert.id) for e in raised] == \
                [("firing", f"redis_failover:127.0.0.1:{new}")]
            assert f"moved from 127.0.0.1:{old} to 127.0.0.1:{new}" in raised[0].alert.message
            assert "redis_failover" in (await s.alerts.store.firing())[raised[0].alert.id].id
        finally:
            ws.close()
        print(f"\n{how}: promoted after {promoted_s:.1f} s, writes after {writes_s:.1f} s, "
              f"events after {events_s:.1f} s")
        assert events_s < promoted_s + RECOVERY_LIMIT_S
