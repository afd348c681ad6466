"""The Redis client factory: logical databases honoured, prefixed channels, memory://."""

from __future__ import annotations

import asyncio

import pytest
import redis

from btsguru.errors import Unavailable
from btsguru.store.redis import open_redis
from tests.conftest import make_test_config, purge_redis_prefix


async def test_each_client_uses_its_own_logical_database(tmp_path):
    config = make_test_config(tmp_path, REDIS_DB="0", REDIS_CACHE_DB="1", REDIS_QUEUE_DB="2",
                              REDIS_REVERB_DB="3")
    stores = open_redis(config)
    try:
        for name, client in zip(("data", "cache", "queue", "reverb"), stores.all(), strict=True):
            await client.set(stores.keys.key("which"), name)
        for db, name in enumerate(("data", "cache", "queue", "reverb")):
            direct = redis.Redis(host="127.0.0.1", port=6379, db=db)
            assert direct.get(stores.keys.key("which")) == name.encode()
            direct.close()
    finally:
        await stores.close()
        purge_redis_prefix(config)


async def test_redis_url_path_selects_the_main_database(tmp_path):
    config = make_test_config(tmp_path, REDIS_URL="redis://127.0.0.1:6379/5")
    stores = open_redis(config)
    try:
        await stores.data.set(stores.keys.key("x"), "1")
        direct = redis.Redis(host="127.0.0.1", port=6379, db=5)
        assert direct.get(stores.keys.key("x")) == b"1"
        direct.delete(stores.keys.key("x"))
        direct.close()
    finally:
        await stores.close()


def test_key_and_channel_names_carry_the_prefix(tmp_path):
    config = make_test_config(tmp_path, REDIS_CACHE_PREFIX="acme:")
    keys = open_redis(config).keys
    assert keys.key("quota", "football", "day") == "acme:quota:football:day"
    # pub/sub ignores the database number, so channels are told apart by the prefix alone
    assert keys.channel("games", "football") == "acme:bus:games:football"


async def test_pubsub_crosses_databases_only_by_channel_name(tmp_path):
    a = open_redis(make_test_config(tmp_path, REDIS_REVERB_DB="3"))
    b = open_redis(make_test_config(tmp_path, REDIS_REVERB_DB="4"))
    pubsub = b.reverb.pubsub()
    try:
        await pubsub.subscribe(b.keys.channel("x"))
        await a.reverb.publish(a.keys.channel("x"), "other prefix")  # different prefix: unseen
        await a.reverb.publish(b.keys.channel("x"), "same name")  # different db, same name: seen
        messages = []
        async def collect():
            while len(messages) < 1:
                m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m:
                    messages.append(m["data"])
        await asyncio.wait_for(collect(), 5)
        assert messages == [b"same name"]
    finally:
        await pubsub.aclose()
        await a.close()
        await b.close()


async def test_memory_store_runs_the_same_code_without_a_server(tmp_path):
    stores = open_redis(make_test_config(tmp_path, REDIS_URL="memory://"))
    assert stores.embedded
    await stores.ping()
    await stores.cache.set("k", "cache")
    assert await stores.data.get("k") is None  # separate logical databases
    assert await stores.cache.get("k") == b"cache"
    script = "return redis.call('incrby', KEYS[1], ARGV[1])"
    assert await stores.data.eval(script, 1, "n", 5) == 5  # Lua, for the rate limiter
    pubsub = stores.reverb.pubsub()
    await pubsub.subscribe("c")
    await stores.data.publish("c", "hello")
    message = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    assert message is not None and message["data"] == b"hello"
    await pubsub.aclose()
    await stores.close()


async def test_unreachable_redis_is_a_clear_unavailable(tmp_path):
    stores = open_redis(make_test_config(tmp_path, REDIS_URL="redis://127.0.0.1:1/0"))
    with pytest.raises(Unavailable) as info:
        await stores.ping()
    assert "127.0.0.1:1" in info.value.message
    await stores.close()
