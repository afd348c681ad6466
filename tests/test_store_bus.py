"""The bus: Redis pub/sub between "processes" (separate clients), the channel hierarchy,
order, resubscribing after the connection is cut, and the in-memory bus."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio as aioredis

from btsguru.backoff import Backoff
from btsguru.store.bus import BusEvent, InMemoryBus, RedisBus, decode_message, encode_message
from btsguru.store.redis import open_redis
from tests.access_fixtures import migrated_sqlite
from tests.store_fixtures import goal, live, make_game, open_store
from tests.waiting import wait_until


@pytest.fixture
def runner(tmp_path):
    yield from migrated_sqlite(tmp_path)


@pytest.fixture
def buses(test_config, io_loop):
    opened = []

    def make(client_name=None):
        stores = open_redis(test_config)
        client = stores.reverb if client_name is None else aioredis.Redis(
            host="127.0.0.1", port=6379, db=test_config.redis_reverb_db,
            client_name=client_name)
        bus = RedisBus(client, stores.keys, backoff=Backoff(0.01, 0.05))
        opened.append((bus, stores, client))
        return bus

    yield make
    for bus, stores, client in opened:
        io_loop.run_sync(bus.close)
        io_loop.run_sync(stores.close)
        if client is not stores.reverb:
            io_loop.run_sync(client.aclose)


def event(n, channel="sports.football.39.1001", name="game.score"):
    return BusEvent.create(f"{1000 + n}-0", name, channel, {"seq": n})


async def test_a_subscriber_receives_what_another_process_published_in_order(buses):
    publisher, subscriber = buses(), buses()
    got: list[tuple[str, str, int]] = []

    def record(channel, ev):
        got.append((channel, ev.id, ev.data["seq"]))

    for channel in ("sports.football", "sports.football.39", "sports.football.39.1001"):
        await subscriber.subscribe(channel, record)
    for n in range(1, 51):
        await publisher.publish(event(n))
    await publisher.publish(event(99, channel="sports.football.140.7"))
    await publisher.publish(event(98, channel="sports.american-football.1.5"))
    await wait_until(lambda: len(got) >= 151)
    for channel in ("sports.football", "sports.football.39", "sports.football.39.1001"):
        assert [seq for ch, _, seq in got if ch == channel and seq < 90] == list(range(1, 51))
    assert [ch for ch, _, seq in got if seq == 99] == ["sports.football"]
    assert all(seq != 98 for _, _, seq in got)  # another sport, not a child of football
    assert len(got) == 151


async def test_unsubscribe_stops_delivery(buses):
    publisher, subscriber = buses(), buses()
    got, kept = [], []
    await subscriber.subscribe("sports.football.39", lambda ch, ev: got.append(ev.id))
    await subscriber.subscribe("sports.football", lambda ch, ev: kept.append(ev.id))
    await publisher.publish(event(1))
    await wait_until(lambda: len(got) == 1 and len(kept) == 1)
    callback = subscriber._subscriptions["sports.football.39"].callbacks[0]
    await subscriber.unsubscribe("sports.football.39", callback)
    await publisher.publish(event(2))
    await wait_until(lambda: len(kept) == 2)
    assert got == ["1001-0"]


async def test_the_bus_resubscribes_after_its_connection_is_killed(buses):
    name = f"btgtest-bus-{uuid.uuid4().hex[:8]}"
    publisher, subscriber = buses(), buses(client_name=name)
    reconnects, got = [], []
    subscriber.on_reconnect(lambda: reconnects.append(1))
    await subscriber.subscribe("sports.hockey", lambda ch, ev: got.append(ev.data["seq"]))
    await publisher.publish(event(1, channel="sports.hockey.5.6"))
    await wait_until(lambda: got == [1])
    admin = redis.Redis(host="127.0.0.1", port=6379)
    try:
        ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
        assert ids
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
    finally:
        admin.close()
    await wait_until(lambda: len(reconnects) > 0, timeout_s=10)
    n = 1

    async def delivered():
        nonlocal n
        n += 1
        await publisher.publish(event(n, channel="sports.hockey.5.6"))
        return len(got) > 1

    await wait_until(delivered, timeout_s=10, interval_s=0.05)
    assert got[0] == 1 and got[1:] == sorted(got[1:])


async def test_game_changes_reach_another_process_with_their_history_ids(test_config,
                                                                       runner, buses):
    writer = open_store(test_config, runner)
    try:
        listener = buses()
        got: list[BusEvent] = []
        await listener.subscribe("sports.football.39", lambda ch, ev: got.append(ev))
        game = make_game()
        await writer.games.ingest("football", [game])
        result = await writer.games.ingest("football",
                                           [live(game, 1, 0, 12, events=(goal(11),))])
        await wait_until(lambda: len(got) == len(result.changes) == 2)
        assert [(e.id, e.event, e.channel, e.data) for e in got] == [
            (c.id, c.event, "sports.football.39.1001", c.change.to_json())
            for c in result.changes]
    finally:
        await writer.close()


async def test_in_memory_bus_follows_the_hierarchy():
    bus = InMemoryBus()
    got = []
    await bus.subscribe("sports.football.39", lambda ch, ev: got.append((ch, ev.id)))
    await bus.subscribe("sports.football", lambda ch, ev: got.append((ch, ev.id)))
    await bus.publish(event(1))
    await bus.publish(event(2, channel="sports.football.3"))
    await bus.publish(event(3, channel="sports.footballx.39.1"))  # not a child
    assert got == [("sports.football.39", "1001-0"), ("sports.football", "1001-0"),
                   ("sports.football", "1002-0")]
    with pytest.raises(ValueError):
        await bus.subscribe("private-chat", lambda ch, ev: None)
    assert bus.redis_targets("sports.football") is None


def test_wire_format_round_trips_and_encodes_data_once():
    ev = BusEvent.create("1-2", "game.event", "sports.hockey.1.2", {"text": "a\nb"})
    back = decode_message(encode_message(ev.id, ev.event, ev.channel, ev.data_json))
    assert back == ev and back.data == {"text": "a\nb"}
