"""Tiers as data: reading the seeded limits and changing them."""

from __future__ import annotations

import pytest

from btsguru.auth.tiers import TierLimits, TierService
from btsguru.errors import BadRequest, NotFound


@pytest.fixture
def tiers(migrated_db):
    return TierService(migrated_db)


async def test_get_and_all(tiers):
    free = await tiers.get("free")
    assert isinstance(free, TierLimits)
    assert (free.rest_rate, free.rest_period_s, free.rest_burst, free.rest_refill_per_s,
            free.daily_quota, free.max_streams, free.max_subscriptions,
            free.client_messages_per_s, free.raw_proxy, free.private_channels,
            free.client_events) == (60, 60, 60, 1.0, 1_000, 2, 10, 5, False, False, False)
    enterprise = await tiers.get("enterprise")
    assert enterprise.daily_quota is None
    assert [t.name for t in await tiers.all()] == ["free", "pro", "enterprise"]
    with pytest.raises(NotFound, match="unknown tier 'gold'; tiers: free, pro, enterprise"):
        await tiers.get("gold")


async def test_update(tiers):
    before = await tiers.get("pro")
    after = await tiers.update("pro", rest_rate=1200, daily_quota=None, client_events=True)
    assert (after.rest_rate, after.rest_period_s, after.rest_refill_per_s) == (1200, 60, 20.0)
    assert after.daily_quota is None and after.client_events is True
    assert after.rest_burst == before.rest_burst
    assert after.updated_at >= before.updated_at
    assert await tiers.get("pro") == after
    # An explicit refill wins over the computed one.
    explicit = await tiers.update("pro", rest_period_s=30, rest_refill_per_s=7)
    assert (explicit.rest_period_s, explicit.rest_refill_per_s) == (30, 7.0)
    assert await tiers.get("free") != after


async def test_limits_read_back_exactly_as_written(tiers):
    # a single-precision column (MySQL's FLOAT, PostgreSQL's REAL) would give back
    # 1.66667 or 1.6666666, and a datetime its microseconds or not
    computed = await tiers.update("pro", rest_rate=100, rest_period_s=60)
    assert computed.rest_refill_per_s == 100 / 60
    assert await tiers.get("pro") == computed
    for refill in (0.1, 1e-300, 2_147_483_647):
        written = await tiers.update("pro", rest_refill_per_s=refill)
        assert (await tiers.get("pro")).rest_refill_per_s == written.rest_refill_per_s == refill
    largest = await tiers.update("pro", rest_rate=2_147_483_647, daily_quota=2_147_483_647)
    assert await tiers.get("pro") == largest


@pytest.mark.parametrize("limits, message", [
    ({}, "nothing to change"),
    ({"colour": "red"}, "unknown tier limit 'colour'"),
    ({"rest_rate": 0}, "rest_rate: expected an integer from 1 to 2147483647"),
    ({"max_streams": -1}, "max_streams: expected an integer from 0"),
    ({"max_streams": True}, "max_streams: expected an integer"),
    ({"daily_quota": "lots"}, "daily_quota"),
    ({"rest_refill_per_s": 0}, "rest_refill_per_s: expected a number > 0"),
    ({"raw_proxy": 1}, "raw_proxy: expected true or false"),
    # what a 32-bit INTEGER (MySQL, PostgreSQL) cannot hold, SQLite's 64-bit one could
    ({"rest_rate": 2**31}, "rest_rate: expected an integer from 1 to 2147483647, got 2147483648"),
    ({"daily_quota": 2**31}, "daily_quota: expected an integer from 0 to 2147483647"),
    # MySQL's DOUBLE holds no infinity (PostgreSQL's and SQLite's do), NaN compares false
    ({"rest_refill_per_s": float("inf")}, "rest_refill_per_s: expected a number > 0 and at most"),
    ({"rest_refill_per_s": float("nan")}, "rest_refill_per_s: expected a number > 0"),
])
async def test_update_rejects_bad_limits(tiers, limits, message):
    with pytest.raises(BadRequest, match=message):
        await tiers.update("free", **limits)
    assert (await tiers.get("free")).rest_rate == 60


async def test_update_unknown_tier(tiers):
    with pytest.raises(NotFound):
        await tiers.update("gold", max_streams=3)


async def test_tier_names_are_exact(tiers):
    # MySQL's default collation ignores case and NUL, its binary one trailing spaces;
    # PostgreSQL refuses NUL in text
    for name in ("FREE", "Free", "free\x00", "fr\x00ee", "free ", "free  "):
        with pytest.raises(NotFound, match="unknown tier"):
            await tiers.get(name)
        with pytest.raises(NotFound):
            await tiers.update(name, max_streams=3)
    assert (await tiers.get("free")).max_streams == 2
