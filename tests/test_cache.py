"""The raw cache: compact entries in real Redis and TTLs by kind of data and phase."""

from __future__ import annotations

import orjson

from btsguru.clock import FakeClock
from btsguru.store.cache import (
    FINISHED_TTL_S,
    LIVE_TTL_S,
    SCHEDULE_TTL_S,
    STALE_KEEP_S,
    STANDINGS_TTL_S,
    STATIC_TTL_S,
    RawCache,
    decode_entry,
    encode_entry,
)
from btsguru.store.redis import open_redis

NOW = 1_764_331_200.0  # 2025-11-28T12:00:00Z


def fixture_item(short: str) -> dict:
    return {"fixture": {"id": 1, "status": {"short": short}}, "goals": {"home": 1, "away": 0}}


def game_item(short: str) -> dict:
    return {"id": 1, "status": {"short": short, "long": "x"}}


def test_entries_round_trip_and_are_compact():
    body = orjson.dumps({"response": [fixture_item("2H") for _ in range(200)]})
    blob = encode_entry(body, NOW, 45)
    entry = decode_entry(blob)
    assert entry is not None
    assert (entry.body, entry.fetched_at, entry.ttl_s) == (body, NOW, 45)
    assert len(blob) * 5 < len(body)
    assert decode_entry(b"junk") is None
    assert decode_entry(blob[:-3]) is None


def test_freshness_and_age():
    entry = decode_entry(encode_entry(b"{}", NOW, 30))
    assert entry.is_fresh(NOW + 29.9) and not entry.is_fresh(NOW + 30)
    assert entry.age_s(NOW + 12.7) == 12


def test_ttl_policy_by_kind_and_phase(test_config):
    cache = RawCache(open_redis(test_config), test_config, FakeClock(NOW))
    envelope = lambda items: {"response": items}  # noqa: E731
    assert cache.ttl_for("football", "fixtures", "games", {"live": "all"}, envelope([])) == \
        LIVE_TTL_S["football"]
    assert cache.ttl_for("basketball", "games", "games", {"date": "2025-11-28"},
                         envelope([game_item("Q3"), game_item("NS")])) == LIVE_TTL_S["basketball"]
    assert cache.ttl_for("basketball", "games", "games", {"date": "2025-11-28"},
                         envelope([game_item("NS")])) == SCHEDULE_TTL_S
    assert cache.ttl_for("football", "fixtures", "games", {"id": "1"},
                         envelope([fixture_item("FT")])) == FINISHED_TTL_S
    assert cache.ttl_for("hockey", "games", "games", {"date": "2025-11-20"}, envelope([])) == \
        FINISHED_TTL_S
    assert cache.ttl_for("football", "standings", "standings", {"league": "39"}, {}) == \
        STANDINGS_TTL_S
    assert cache.ttl_for("football", "leagues", "static", {}, {}) == STATIC_TTL_S
    af = {"game": {"id": 5, "status": {"short": "Q2"}}}
    assert cache.ttl_for("american-football", "games", "games", {"date": "2025-11-28"},
                         envelope([af])) == LIVE_TTL_S["american-football"]
    # an unknown status code is taken as live: better too fresh than stale
    assert cache.ttl_for("baseball", "games", "games", {"date": "2025-11-28"},
                         envelope([game_item("IN10")])) == LIVE_TTL_S["baseball"]


async def test_put_get_in_real_redis_keeps_entries_past_freshness(test_config):
    clock = FakeClock(NOW)
    stores = open_redis(test_config)
    cache = RawCache(stores, test_config, clock)
    try:
        params = {"date": "2025-11-28", "league": "39"}
        assert await cache.get("football", "fixtures", params) is None
        await cache.put("football", "fixtures", params, b'{"response":[]}', 45)
        entry = await cache.get("football", "fixtures", dict(reversed(params.items())))
        assert entry is not None and entry.body == b'{"response":[]}'
        ttl = await stores.cache.ttl(cache.key_for("football", "fixtures", params))
        assert 45 + STALE_KEEP_S - 5 <= ttl <= 45 + STALE_KEEP_S
        key = cache.key_for("football", "fixtures", params)
        assert key.startswith(test_config.redis_cache_prefix)
        assert "2025-11-28" not in key  # digest, bounded length
    finally:
        await stores.close()


async def test_disabled_cache_stores_nothing(test_config):
    config = test_config.replace(api_cache_enabled=False)
    stores = open_redis(config)
    cache = RawCache(stores, config, FakeClock(NOW))
    try:
        await cache.put("football", "status", {}, b"{}", 60)
        assert await cache.get("football", "status", {}) is None
        assert await stores.cache.exists(cache.key_for("football", "status", {})) == 0
    finally:
        await stores.close()
