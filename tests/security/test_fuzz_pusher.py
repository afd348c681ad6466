"""Hostile input on the Pusher endpoint, `/app/{key}?protocol=7` (issue 10,
`protocols/PUSHER.md`): random and malformed Pusher messages (no `event`, `data` as a
string or an object or junk, bad channel names, client events without a subscription,
private and presence channels without a valid signature, huge payloads), frames broken
at the RFC 6455 level, and random connect queries, each on a fresh connection over a
raw socket.

The property, as the protocol asks: a malformed message or an unknown event gets
`pusher:error` (code null or one of Pusher's) or `pusher:subscription_error` and the
socket stays open (a `pusher:ping` after it is answered); only a frame over 64 KiB
(1009), a broken frame (1002/1007) or a refused connect (the `pusher:error` code, then
the same close code) closes it. Never a hang, nothing logged at error level, and a
bystander on `sports.football` gets every goal published through the bus during and
after the fuzzing, each once, in `seq` order. Scale with `FUZZ_EXAMPLES`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.security.fuzz_fixtures import (
    MAX_FRAME,
    Bystander,
    FuzzClient,
    FuzzServer,
    Outcome,
    encode_frame,
    fuzz_settings,
    fuzz_timeout,
    game_seqs,
    json_values,
    publishing_while,
    raw_frames,
    sends_close,
    serving,
    text_frame,
)

pytestmark = fuzz_timeout()

PING = text_frame('{"event":"pusher:ping","data":{}}')
QUERY = "protocol=7&client=js&version=8.4.0&flash=false"
# PUSHER.md section 4: the codes a server may send and close with
PUSHER_CODES = {4000, 4001, 4003, 4004, 4005, 4006, 4007, 4008, 4009, 4100, 4200, 4201, 4202,
                4301}
# what an established socket may be closed with for its input: RFC 6455's codes only
# (Pusher's say the app, the server or the connect query is at fault, and 4300+ never close)
CLOSE_CODES = {1002, 1007, 1009}
SERVER_EVENTS = {"pusher:connection_established", "pusher_internal:subscription_succeeded",
                 "pusher:pong", "pusher:ping", "pusher:cache_miss", "pusher:signin_success",
                 "pusher_internal:member_added", "pusher_internal:member_removed",
                 "pusher_internal:subscription_count"}

CHANNELS = ["sports.football", "sports.football.39", "private-sports.football",
            "presence-sports.football.39", "sports.curling", "sports.football.039",
            "private-chat", "presence-room", "private-encrypted-x", "cache-x", "match-981",
            "#server-to-user-1", "#server-to-user-", "a b", "x" * 165, "", "sports.football!",
            "\u00e9", "private-", "presence-", "private-sports.", "sports.football\x00"]
EVENTS = ["pusher:subscribe", "pusher:subscribe", "pusher:unsubscribe", "pusher:ping",
          "pusher:pong", "pusher:signin", "pusher:unknown", "client-typing", "client-",
          "client-" + "x" * 250, "game.score", "pusher_internal:subscription_succeeded",
          "pusher:error", ""]
AUTHS = ["", "btsguru-key:deadbeef", "btsguru-key:" + "0" * 64, "wrong:" + "f" * 64, ":", "x"]
CHANNEL_DATA = ['{"user_id":"u-17","user_info":{"name":"Ana"}}', '{"user_id":1}', "{}",
                '{"user_id":""}', '{"user_id":"' + "u" * 200 + '"}', "not json", "[]",
                '{"user_id":"u","user_info":"' + "i" * 2000 + '"}']

channels = st.one_of(st.sampled_from(CHANNELS), st.text(max_size=30), json_values)
subscribe_data = st.fixed_dictionaries({"channel": channels}, optional={
    "auth": st.one_of(st.sampled_from(AUTHS), json_values),
    "channel_data": st.one_of(st.sampled_from(CHANNEL_DATA), json_values)})
datas = st.one_of(
    subscribe_data, subscribe_data.map(json.dumps),  # data as an object and as a string
    json_values,
    # client event data around the 10 KB limit
    st.integers(10 * 1024 - 32, 10 * 1024 + 32).map(lambda n: {"x": "y" * n}))
messages = st.fixed_dictionaries({}, optional={
    "event": st.one_of(st.sampled_from(EVENTS), st.text(max_size=20), json_values),
    "channel": channels, "data": datas})
texts = st.one_of(
    messages.map(json.dumps), messages.map(json.dumps), messages.map(json.dumps),
    json_values.map(json.dumps), st.text(max_size=100),
    st.integers(MAX_FRAME - 64, MAX_FRAME + 64).map(
        lambda n: json.dumps({"event": "pusher:ping", "data": {"pad": "x" * (n - 46)}})))
message_frames = st.lists(st.tuples(st.sampled_from([0x1, 0x1, 0x2]), texts),
                          min_size=1, max_size=3).map(
    lambda frames: b"".join(encode_frame(op, text.encode()) for op, text in frames))


def is_pong(message: Any) -> bool:
    return isinstance(message, dict) and message.get("event") == "pusher:pong"


def assert_message(message: Any) -> None:
    """A frame a Pusher client understands."""
    assert isinstance(message, dict) and isinstance(message.get("event"), str), message
    event = message["event"]
    if event == "pusher:error":
        data = message["data"]
        assert isinstance(data, dict) and isinstance(data.get("message"), str), message
        assert data.get("code") is None or data["code"] in PUSHER_CODES, message
    elif event == "pusher:subscription_error":
        assert isinstance(message["channel"], str), message
        assert isinstance(message["data"], dict) and isinstance(message["data"]["status"], int)
    elif event not in SERVER_EVENTS:  # an event on a channel: its data a JSON string
        assert isinstance(message.get("channel"), str) and isinstance(message["data"], str), \
            message


def assert_outcome(outcome: Outcome, *, may_close: bool, echoed_close: bool = False) -> None:
    for message in outcome.messages:
        assert_message(message)
    if outcome.answered:
        return
    assert outcome.closed, f"dropped without a close frame after {outcome.messages}"
    assert may_close, f"closed ({outcome.close_code}) where the protocol keeps it open"
    if not echoed_close:
        assert outcome.close_code in CLOSE_CODES, outcome


def fuzz_once(server: FuzzServer, data: bytes, *, may_close: bool,
              echoed_close: bool = False, query: str = QUERY) -> Outcome:
    """`data` then a `pusher:ping` on a fresh, established connection."""
    client = FuzzClient(server.port, f"/app/{server.config.reverb_app_key}?{query}")
    try:
        hello = client.outcome(lambda m: True)
        assert hello.answered and hello.messages[0]["event"] == \
            "pusher:connection_established", hello
        client.send_bytes(data)
        client.send_bytes(PING)
        outcome = client.outcome(is_pong)
    finally:
        client.close()
    assert_outcome(outcome, may_close=may_close, echoed_close=echoed_close)
    assert server.server_errors() == []
    return outcome


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    # every example is a new connection from one address: the per-IP limit is lifted
    # so that the fuzzing reaches the protocol, not the capacity check
    with serving(tmp_path_factory.mktemp("fuzz-pusher"), PUSHER_PUBLIC_PER_IP="100000",
                 PUSHER_MESSAGES_PER_S="1000") as running:
        yield running


@pytest.fixture(scope="module")
def bystander(server: FuzzServer) -> Iterator[Bystander]:
    """A pusher-js-like client on the public `sports.football` for the whole module; it
    answers the server's `pusher:ping`."""
    client = FuzzClient(server.port, f"/app/{server.config.reverb_app_key}?{QUERY}")
    client.send_bytes(text_frame(json.dumps({"event": "pusher:subscribe",
                                             "data": {"auth": "", "channel": "sports.football"}})))
    pong = text_frame('{"event":"pusher:pong","data":{}}')
    watcher = Bystander(client, lambda m: pong if m.get("event") == "pusher:ping" else None)
    watcher.wait_for(lambda ms: any(m.get("event") == "pusher_internal:subscription_succeeded"
                                    for m in ms))
    yield watcher
    watcher.close()


def test_random_messages_get_pusher_errors_and_the_socket_stays_open(
        server: FuzzServer, bystander: Bystander) -> None:
    @fuzz_settings(300)
    @given(data=message_frames)
    def fuzz(data: bytes) -> None:
        fuzz_once(server, data, may_close=len(data) > MAX_FRAME)

    with publishing_while(server):
        fuzz()


def test_random_frames_break_nothing_but_their_own_connection(
        server: FuzzServer, bystander: Bystander) -> None:
    @fuzz_settings(200)
    @given(data=raw_frames())
    def fuzz(data: bytes) -> None:
        fuzz_once(server, data, may_close=True, echoed_close=sends_close(data))

    with publishing_while(server):
        fuzz()


@pytest.mark.parametrize(("message", "expected"), [
    ({"data": {}}, "pusher:error"),  # no event
    ({"event": "pusher:subscribe", "data": "sports.football"}, "pusher:error"),
    ({"event": "pusher:subscribe", "data": {"channel": "a b"}}, "pusher:error"),
    ({"event": "pusher:subscribe", "data": {"channel": 7}}, "pusher:error"),
    ({"event": "pusher:subscribe", "data": json.dumps({"channel": "private-chat"})},
     "pusher:subscription_error"),  # data as a string, no auth
    ({"event": "pusher:subscribe", "data": {"channel": "private-sports.football",
                                            "auth": "btsguru-key:" + "0" * 64}},
     "pusher:subscription_error"),
    ({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": "",
                                            "channel_data": '{"user_id":"u-1"}'}},
     "pusher:subscription_error"),
    ({"event": "client-typing", "channel": "private-chat", "data": {}}, "pusher:error"),
    ({"event": "client-typing", "channel": "sports.football", "data": {}}, "pusher:error"),
    ({"event": "pusher:unknown", "data": {}}, "pusher:error"),
    ({"event": "pusher:unsubscribe", "data": []}, "pusher:error"),
    # another user's channel (PUSHER.md section 11): reserved for that signed-in user
    ({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-1"}},
     "pusher:subscription_error"),
], ids=["no-event", "data-not-object", "bad-name", "channel-not-string", "private-no-auth",
        "private-forged", "presence-no-auth", "client-event-unsubscribed",
        "client-event-public", "unknown-event", "unsubscribe-junk", "server-to-user"])
def test_each_malformed_message_gets_its_error_and_the_socket_stays(
        server: FuzzServer, message: dict[str, Any], expected: str) -> None:
    outcome = fuzz_once(server, text_frame(json.dumps(message)), may_close=False)
    assert [m["event"] for m in outcome.messages] == [expected, "pusher:pong"], outcome


@pytest.mark.parametrize(("data", "code"), [
    (encode_frame(0x9, b"x", fin=False), 1002),
    (encode_frame(0x1, b"{}", rsv=2), 1002),
    (encode_frame(0xB, b"x"), 1002),
    (encode_frame(0x1, b'{"event":"\xc3\x28"}'), 1007),
    (encode_frame(0x1, b"", declared=MAX_FRAME + 1), 1009),
], ids=["fragmented-ping", "rsv", "opcode-11", "invalid-utf8", "over-64k"])
def test_each_broken_frame_is_closed_with_its_code(server: FuzzServer, data: bytes,
                                                   code: int) -> None:
    assert fuzz_once(server, data, may_close=True).close_code == code


@given(key=st.one_of(st.just(None), st.text(max_size=20)),
       protocol=st.one_of(st.none(), st.sampled_from(["7", "5", "8", "0", "", "7.0", "-7",
                                                      "99999999999999999999"]),
                          st.text(max_size=8)),
       version=st.one_of(st.none(), st.sampled_from(["8.4.0", "8", "x.y", "8.4.0-rc1",
                                                     "1.2.3.4.5", ""]), st.text(max_size=12)))
@fuzz_settings(60)
@example(key=None, protocol="\u00b9", version=None)  # isdigit(), yet not an int: once a crash
@example(key=None, protocol="7", version="8.4.0\n")
def test_random_connect_queries_are_established_or_refused_with_their_code(
        server: FuzzServer, key: str | None, protocol: str | None, version: str | None) -> None:
    params = [f"{name}={quote(value, safe='')}" for name, value
              in (("protocol", protocol), ("version", version)) if value is not None]
    app_key = server.config.reverb_app_key if key is None else quote(key, safe="") or "x"
    client = FuzzClient(server.port, f"/app/{app_key}?{'&'.join(params)}")
    try:
        client.send_bytes(PING)
        outcome = client.outcome(is_pong)
    finally:
        client.close()
    for message in outcome.messages:
        assert_message(message)
    if outcome.answered:
        assert outcome.messages[0]["event"] == "pusher:connection_established"
        return
    assert outcome.closed and outcome.close_code in {4001, 4006, 4007, 4008}, outcome
    assert [m["data"]["code"] for m in outcome.messages] == [outcome.close_code], outcome
    assert server.server_errors() == []


def test_the_bystander_got_every_event_in_order(server: FuzzServer,
                                                bystander: Bystander) -> None:
    """After the fuzzing (this module's earlier tests) one more goal: the bystander has
    every event published during and after it, each once, in `seq` order."""
    assert server.publish_goal() >= 1
    total = server.published
    assert total >= 5, "the fuzzing ran too briefly to publish during it"

    def data_of(message: Any) -> Any:
        return json.loads(message["data"]) if isinstance(message.get("data"), str) else None

    got = bystander.wait_for(lambda messages: len(game_seqs(messages, data_of)) >= total)
    assert game_seqs(got, data_of) == list(range(1, total + 1))
    assert not bystander.ended and bystander.close_code is None
    assert server.healthy()
