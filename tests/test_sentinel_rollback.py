"""A real Sentinel failover that loses writes (issue 19, item 3). The replica replicates
through a proxy that the test cuts: the master's next writes (a goal's events, upstream
tokens) never reach it. Then the master is SIGKILLed and the sentinels promote the
replica, which has the game one goal behind and the budget short of those tokens.

The relay process, not restarted, must answer the rollback: the next write of the game
is one `game.snapshot` numbered after everything it had sent (a subscriber sees every
seq once, in order, the snapshot included), the upstream tokens come back, and both
rollbacks are counted. `tests/test_rollback.py` covers the same answers in detail on one
Redis; this one shows that a promoted replica really looks like that."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from btsguru import metrics
from btsguru.sports.base import Phase
from tests.conftest import make_test_config
from tests.realtime_helpers import WsClient, events, relay
from tests.redis_topologies import client, sentinel_set
from tests.store_fixtures import goal, make_game
from tests.waiting import wait_until

SPORT = "football"
RECOVERY_LIMIT_S = 15.0


def counted(what: str) -> float:
    return metrics.REGISTRY.get_sample_value("btsguru_redis_rollbacks_total",
                                             {"what": what}) or 0.0


def replicated(master: int, replica: int) -> bool:
    """The replica has everything the master wrote so far."""
    with client(master) as m, client(replica) as r:
        return r.info("replication").get("slave_repl_offset") \
            == m.info("replication")["master_repl_offset"]


def playing(home: int, minute: int):
    goals = tuple(goal(m) for m in range(1, home + 1))
    return [make_game(1001, phase=Phase.LIVE, code="1H", home=home, away=0,
                      clock=str(minute), period=1, events=goals)]


async def test_a_promoted_replica_that_missed_writes_is_answered_not_believed(tmp_path):
    with sentinel_set(replication_proxy=True) as sentinels:
        assert sentinels.replication is not None
        config = make_test_config(tmp_path, **sentinels.env())
        async with relay(tmp_path, config) as r:
            s = r.services
            ws = await WsClient.connect(r.ws_url, r.keys["pro"])
            try:
                await ws.subscribe("sports.football.39")
                assert (await ws.recv())["op"] == "subscribed"
                await s.games.ingest(SPORT, [make_game(1001)])
                kept = (await s.games.ingest(SPORT, playing(0, 1))).changes[-1].seq
                assert [await s.quota.acquire(SPORT, "poller") for _ in range(3)] == [True] * 3
                master, replica = sentinels.master_port(), sentinels.replica_port()
                assert master is not None
                await wait_until(lambda: replicated(master, replica), 10,
                                 what="the replica in sync")

                sentinels.replication.cut()  # from here on, the master's writes are lost
                lost = await s.games.ingest(SPORT, playing(1, 10))
                high = lost.changes[-1].seq
                assert high > kept
                assert [await s.quota.acquire(SPORT, "poller") for _ in range(2)] == [True] * 2
                await ws.recv_until(lambda m: m.get("data", {}).get("seq") == high)

                games_before, quota_before = counted("game"), counted("quota")
                old = sentinels.kill_master()
                killed = time.monotonic()
                sentinels.wait_promoted(old)

                async def written() -> bool:
                    try:
                        return bool(await s.games.ingest(SPORT, playing(2, 20)))
                    except (RedisError, OSError):
                        return False  # still following the promotion

                await wait_until(written, RECOVERY_LIMIT_S, what="a write on the new master")
                snapshot = (await ws.recv_until(
                    lambda m: m.get("event") == "game.snapshot"))[-1]
                back_s = time.monotonic() - killed
                assert snapshot["data"]["seq"] == high + 1
                assert snapshot["data"]["home"]["score"] == 2
                assert counted("game") == games_before + 1
                stored = await s.games.get(SPORT, 1001)
                assert stored is not None and stored.seq == high + 1

                # the budget: the first take after finds this process's tokens gone, puts
                # them back and holds everyone a moment
                decision = await s.quota.try_acquire(SPORT, "poller")
                assert decision.token is None and decision.reason == "settling"
                assert (await s.quota.snapshot(SPORT)).day_used == 5
                assert counted("quota") == quota_before + 1

                nxt = await s.games.ingest(SPORT, playing(3, 30))
                last = nxt.changes[-1].seq
                got = events(await ws.recv_until(
                    lambda m: m.get("data", {}).get("seq") == last))
                seqs = [e["data"]["seq"] for e in got]
                assert seqs == list(range(high + 2, last + 1)), seqs
                assert back_s < RECOVERY_LIMIT_S + 10
            finally:
                ws.close()
