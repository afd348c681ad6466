"""Usage counting: in-process buffer -> Redis totals -> database rows, exactly once.

What reaches the database (the roll-up, and the reads that merge its rows) runs on every
backend (`migrated_db`/`db_url`); what is about Redis alone runs on SQLite.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest
import redis.exceptions

from btsguru.auth.usage import UsageService, _key_id
from btsguru.clock import FakeClock, SystemClock
from btsguru.db.models import UsageDaily, UsageHourly
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import Unavailable
from btsguru.store.redis import open_redis
from tests.access_fixtures import add_key, make_account, migrated_sqlite
from tests.conftest import SERVER_ENGINES


@pytest.fixture
def runner(tmp_path):
    """SQLite only: for the tests about Redis."""
    yield from migrated_sqlite(tmp_path)


def db_totals(model):
    def read():
        rows = model.select()
        return sorted((_key_id(r), str(r.day if model is UsageDaily else r.hour), r.kind,
                       r.requests, r.cache_hits) for r in rows)
    return read


def today_iso() -> str:
    return datetime.now(UTC).date().isoformat()


async def test_counts_reach_redis_in_one_flush_and_read_back_exactly(test_config, migrated_db):
    a = await make_account(migrated_db, "a@example.com")
    a2 = await add_key(migrated_db, "a@example.com")
    b = await make_account(migrated_db, "b@example.com")
    stores = open_redis(test_config)
    usage = UsageService(stores.data, stores.keys, migrated_db, SystemClock())
    try:
        for _ in range(7):
            usage.record(a.user_id, a.key_id, "live")
        for _ in range(3):
            usage.record(a.user_id, a.key_id, "raw", cache_hit=True)
        usage.record(a.user_id, a2.key_id, "games")
        usage.record(a.user_id, a2.key_id, "no-such-kind")  # counted as other
        usage.record(b.user_id, b.key_id, "live")
        assert usage.buffered == 13
        assert await usage.flush() == 13
        assert usage.buffered == 0
        assert await usage.flush() == 0

        days = await usage.usage_for_user(a.user_id)
        assert len(days) == 30 and days[-1].day.isoformat() == today_iso()
        today = days[-1]
        assert today.requests == 12 and today.cache_hits == 3
        assert dict(today.by_kind) == {"live": 7, "games": 1, "standings": 0, "raw": 3,
                                       "stream": 0, "other": 1}
        assert sum(d.requests for d in days[:-1]) == 0
        only_a2 = (await usage.usage_for_key(a2.key_id))[-1]
        assert only_a2.requests == 2 and only_a2.by_kind["games"] == 1
        assert (await usage.usage_for_user(b.user_id))[-1].requests == 1
    finally:
        await stores.close()


async def test_a_failed_flush_keeps_the_counts_for_the_next(test_config, runner, tmp_path):
    a = await make_account(runner, "a@example.com")
    broken = open_redis(test_config.replace(redis_url="redis://127.0.0.1:1/0"))
    stores = open_redis(test_config)
    try:
        usage = UsageService(broken.data, broken.keys, runner, SystemClock())
        for _ in range(4):
            usage.record(a.user_id, a.key_id, "live")
        with pytest.raises(redis.exceptions.ConnectionError):
            await usage.flush()
        assert usage.buffered == 4
        usage._redis = stores.data  # the same process, Redis back
        assert await usage.flush() == 4
        assert (await usage.usage_for_user(a.user_id))[-1].by_kind["live"] == 4
    finally:
        await stores.close()
        await broken.close()


async def test_rollup_writes_exact_totals_and_racing_rollups_never_double_count(
        test_config, migrated_db):
    a = await make_account(migrated_db, "a@example.com")
    stores_a, stores_b = open_redis(test_config), open_redis(test_config)
    process_a = UsageService(stores_a.data, stores_a.keys, migrated_db, SystemClock())
    process_b = UsageService(stores_b.data, stores_b.keys, migrated_db, SystemClock())
    try:
        total = 0
        for round_ in range(5):
            for i in range(10 + round_):
                (process_a if i % 2 else process_b).record(a.user_id, a.key_id, "live",
                                                           cache_hit=i % 3 == 0)
                total += 1
            await asyncio.gather(process_a.flush(), process_b.flush())
            # both "processes" roll up at once, twice
            await asyncio.gather(process_a.rollup(), process_b.rollup(), process_a.rollup())
        daily = await migrated_db.read(db_totals(UsageDaily))
        assert [(k, kind, r) for k, _day, kind, r, _c in daily] == [(a.key_id, "live", total)]
        hourly = await migrated_db.read(db_totals(UsageHourly))
        assert sum(r for *_rest, r, _c in hourly) == total
        hits = sum(1 for round_ in range(5) for i in range(10 + round_) if i % 3 == 0)
        assert daily[0][4] == hits
        # DB rows and the Redis totals they came from are merged, not added.
        assert (await process_a.usage_for_user(a.user_id))[-1].requests == total
    finally:
        await stores_a.close()
        await stores_b.close()


class MeetingRunner(DatabaseRunner):
    """A runner whose writes wait, inside their transaction, until `parties` writes of
    runners sharing `barrier` are inside theirs: two processes' roll-ups that overlap."""

    def __init__(self, database, barrier: threading.Barrier) -> None:
        super().__init__(database)
        self.barrier = barrier

    def _run_write(self, fn, args):
        def met(*fn_args):
            self.database.execute_sql("SELECT 1")  # the transaction has begun on the server
            self.barrier.wait()
            return fn(*fn_args)
        return super()._run_write(met, args)


@pytest.mark.parametrize("engine", SERVER_ENGINES)
async def test_overlapping_rollups_of_two_processes_insert_each_row_once(
        test_config, engine, request):
    # Both transactions find no row and insert the same ones: one must wait for the
    # other and raise the rows to its totals instead. Each round has rows of its own (a
    # new key), since only new rows make the two insert at once.
    from btsguru.db import connect_database
    from btsguru.db.migrate import migrate

    database = connect_database(request.getfixturevalue(f"{engine}_url"))
    migrate(database)
    barrier = threading.Barrier(2, timeout=20)
    runner_a, runner_b = MeetingRunner(database, barrier), MeetingRunner(database, barrier)
    setup = DatabaseRunner(database)  # writes that meet nobody
    stores = open_redis(test_config)
    try:
        account = await make_account(setup, "a@example.com")
        usage_a = UsageService(stores.data, stores.keys, runner_a, SystemClock())
        usage_b = UsageService(stores.data, stores.keys, runner_b, SystemClock())
        key_ids = []
        for round_ in range(ROUNDS := 6):
            key = await add_key(setup, "a@example.com")
            key_ids.append(key.key_id)
            for kind in ("live", "games", "raw", "stream"):
                for _ in range(round_ + 1):
                    usage_a.record(account.user_id, key.key_id, kind, cache_hit=kind == "raw")
            await usage_a.flush()
            await asyncio.gather(usage_a.rollup(), usage_b.rollup())
        daily = await runner_a.read(db_totals(UsageDaily))
        assert [(k, kind, r, c) for k, _d, kind, r, c in daily] == sorted(
            (key_ids[n], kind, n + 1, n + 1 if kind == "raw" else 0)
            for n in range(ROUNDS) for kind in ("live", "games", "raw", "stream"))
        hourly = await runner_a.read(db_totals(UsageHourly))
        assert sum(r for *_rest, r, _c in hourly) == 4 * sum(range(1, ROUNDS + 1))
    finally:
        await stores.close()
        for runner in (setup, runner_a, runner_b):
            runner.close()


async def test_a_stale_snapshot_applied_late_never_lowers_the_total(test_config, migrated_db):
    a = await make_account(migrated_db, "a@example.com")
    stores = open_redis(test_config)
    usage = UsageService(stores.data, stores.keys, migrated_db, SystemClock())
    try:
        for _ in range(3):
            usage.record(a.user_id, a.key_id, "games")
        await usage.flush()
        names = sorted(n.decode() for n in await stores.data.smembers(usage.pending_key))
        stale = await usage._read(names)  # a slow process read this ...
        for _ in range(5):
            usage.record(a.user_id, a.key_id, "games")
        await usage.flush()
        await usage.rollup()  # ... another applied the newer totals ...
        from btsguru.auth.usage import _apply
        await migrated_db.write(_apply, stale.daily, stale.hourly)  # ... then the slow one wrote
        daily = await migrated_db.read(db_totals(UsageDaily))
        assert [r for *_rest, r, _c in daily] == [8]
    finally:
        await stores.close()


async def test_counters_survive_a_database_outage(test_config, db_url):
    from btsguru.db import connect_database
    from btsguru.db.migrate import migrate

    database = connect_database(db_url)
    migrate(database)
    first = DatabaseRunner(database)
    a = await make_account(first, "a@example.com")
    stores = open_redis(test_config)
    usage = UsageService(stores.data, stores.keys, first, SystemClock())
    try:
        for _ in range(6):
            usage.record(a.user_id, a.key_id, "standings")
        await usage.flush()
        first.close()  # the database goes away
        with pytest.raises(Unavailable):
            await usage.rollup()
        assert await stores.data.scard(usage.pending_key) == 2  # still waiting, day and hour
        second = DatabaseRunner(database)  # and comes back
        usage._runner = second
        try:
            assert await usage.rollup() == 2
            daily = await second.read(db_totals(UsageDaily))
            assert [r for *_rest, r, _c in daily] == [6]
        finally:
            second.close()
    finally:
        await stores.close()


async def test_closed_periods_leave_the_pending_set_and_late_counts_still_add(
        test_config, migrated_db):
    a = await make_account(migrated_db, "a@example.com")
    stores = open_redis(test_config)
    yesterday = time.time() - 86_400
    clock = FakeClock(start=yesterday)
    usage = UsageService(stores.data, stores.keys, migrated_db, clock)
    try:
        for _ in range(4):
            usage.record(a.user_id, a.key_id, "live")
        await usage.flush()
        await usage.rollup()  # yesterday is not over in this clock: stays pending
        assert await stores.data.scard(usage.pending_key) == 2
        clock.advance(2 * 86_400)
        await usage.rollup()  # over and applied unchanged: forgotten
        assert await stores.data.scard(usage.pending_key) == 0

        late = UsageService(stores.data, stores.keys, migrated_db, FakeClock(start=yesterday))
        late.record(a.user_id, a.key_id, "live")  # a straggler from a stalled process
        await late.flush()
        await usage.rollup()
        daily = await migrated_db.read(db_totals(UsageDaily))
        day = datetime.fromtimestamp(yesterday, UTC).date().isoformat()
        assert [(d, r) for _k, d, _kind, r, _c in daily] == [(day, 5)]
        assert await stores.data.scard(usage.pending_key) == 0
    finally:
        await stores.close()


async def test_usage_of_a_deleted_key_does_not_block_the_rollup(test_config, migrated_db):
    a = await make_account(migrated_db, "a@example.com")
    b = await make_account(migrated_db, "b@example.com")
    stores = open_redis(test_config)
    usage = UsageService(stores.data, stores.keys, migrated_db, SystemClock())
    try:
        usage.record(a.user_id, a.key_id, "live")
        usage.record(b.user_id, b.key_id, "live")
        usage.record(b.user_id, 999_999, "live")  # a key deleted since
        await usage.flush()
        assert await usage.rollup() == 4
        daily = await migrated_db.read(db_totals(UsageDaily))
        assert sorted(k for k, *_rest in daily) == sorted([a.key_id, b.key_id])
    finally:
        await stores.close()
