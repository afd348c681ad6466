"""Hostile input on the native WebSocket, `/v1/ws` (issue 10, the contract's section 4):
random JSON messages (wrong op types, missing fields, nested junk, huge numbers,
non-string channels, invalid `since` ids), binary frames, invalid UTF-8, and frames
broken at the RFC 6455 level (reserved bits, unknown opcodes, unmasked, fragmented or
oversized control frames, stray continuations, lengths over 64 KiB), each on a fresh
connection over a raw socket.

The property: after the fuzzed frame, a `ping` op is answered with `pong` (the server
only replied with `{"op": "error", ...}` or the contract's messages), or the server
closed with a close frame carrying a documented code (4003, 4009, 4029, 1009, and
1002/1007 for protocol errors; 4001 for a bad key), an application close following its
`error`; never a hang, and nothing logged at error level. Meanwhile a bystander on another
connection follows a game whose goals are published through the bus during the
fuzzing and after it, and gets every event exactly once, in `seq` order. Scale with
`FUZZ_EXAMPLES` (see `fuzz_fixtures`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.security.fuzz_fixtures import (
    GAME_ID,
    LEAGUE_ID,
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

PING = text_frame('{"op":"ping"}')
# the contract's close codes (section 4) that a client's own input can earn, and RFC
# 6455's for a frame that breaks it. Not 1012 or 4010: those say the server is in
# trouble (restarting, or the client too slow), never what a bad message deserves.
CLOSE_CODES = {4003, 4009, 4029, 1009, 1002, 1003, 1007}
CLOSE_AFTER_ERROR = {4003, 4009, 4029}  # the server says why in an `error` first

VALID_CHANNELS = ["sports.football", f"sports.football.{LEAGUE_ID}",
                  f"sports.football.{LEAGUE_ID}.{GAME_ID}", "sports.hockey.1.2",
                  "sports.american-football"]
NEAR_MISSES = ["sports.football.039", "sports.football.0", "sports.FOOTBALL", "sports.curling",
               "sports.football.39.7001.1", "sports..", "private-sports.football", "sports",
               "sports.football.99999999999999999999", "sports.football.-1", "sports.football.1e3",
               " sports.football", "sports.football\x00", "sports.football." + "9" * 200, "",
               "x" * 300, "sports.football,sports.hockey", "sports.*", "sports.football.39.",
               "sports.\u0444\u0443\u0442\u0431\u043e\u043b"]
SINCE = ["1-0", "0-0", "99999999999999999999-0", "1723836667000-0", "-1-0", "abc", "", "1-",
         "1-99999999999999999999", "YmFza2V0YmFsbD0x", "=" * 10, "0" * 2000,
         base64.urlsafe_b64encode(b"football=1-0").decode().rstrip("="),
         base64.urlsafe_b64encode(b"football=garbage").decode(),
         base64.urlsafe_b64encode(b"curling=1-0,football=2-0").decode(),
         base64.urlsafe_b64encode("\u00e9=1-0".encode()).decode()]

channel_names = st.one_of(st.sampled_from(VALID_CHANNELS), st.sampled_from(NEAR_MISSES),
                          st.text(max_size=40), json_values)
ops = st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping", "publish", "SUBSCRIBE",
                                 "", "pong", "subscribed", "error"]), json_values)
structured = st.fixed_dictionaries({"op": ops}, optional={
    "channels": st.one_of(st.lists(channel_names, max_size=6), json_values,
                          st.integers(999, 1002).map(lambda n: ["sports.football"] * n)),
    "since": st.one_of(st.sampled_from(SINCE), json_values),
    "extra": json_values})
texts = st.one_of(
    structured.map(json.dumps), structured.map(json.dumps), json_values.map(json.dumps),
    st.text(max_size=100),
    # around the 64 KiB limit: under it an answer, over it 1009
    st.integers(MAX_FRAME - 64, MAX_FRAME + 64).map(
        lambda n: json.dumps({"op": "ping", "pad": "x" * (n - 24)})))
message_frames = st.tuples(st.sampled_from([0x1, 0x1, 0x2]), texts).map(
    lambda p: encode_frame(p[0], p[1].encode()))


def is_pong(message: Any) -> bool:
    return isinstance(message, dict) and message.get("op") == "pong"


def assert_message(message: Any) -> None:
    """One of the contract's server messages."""
    assert isinstance(message, dict), message
    if "op" not in message:
        assert set(message) == {"id", "channel", "event", "data"}, message
        return
    assert message["op"] in ("pong", "subscribed", "error"), message
    if message["op"] == "error":
        assert set(message) == {"op", "code", "message"}, message
        assert isinstance(message["code"], str) and isinstance(message["message"], str)
    elif message["op"] == "subscribed":
        assert isinstance(message["channel"], str) and isinstance(message["recovered"], bool)


def assert_outcome(outcome: Outcome, *, echoed_close: bool = False) -> None:
    """Answered, or closed with a documented code (`echoed_close`: the client sent a
    close frame, which the server echoes, code and all, as RFC 6455 5.5.1 says)."""
    for message in outcome.messages:
        assert_message(message)
    if outcome.answered:
        return
    assert outcome.closed, f"dropped without a close frame after {outcome.messages}"
    if echoed_close:
        return
    assert outcome.close_code in CLOSE_CODES, outcome
    if outcome.close_code in CLOSE_AFTER_ERROR:
        assert any(m.get("op") == "error" for m in outcome.messages), outcome


def fuzz_once(server: FuzzServer, data: bytes, *, echoed_close: bool = False) -> Outcome:
    """`data` then a ping on a fresh connection of the enterprise user."""
    client = FuzzClient(server.port, f"/v1/ws?api_key={server.keys['enterprise']}")
    try:
        client.send_bytes(data)
        client.send_bytes(PING)
        outcome = client.outcome(is_pong)
    finally:
        client.close()
    assert_outcome(outcome, echoed_close=echoed_close)
    assert server.server_errors() == []
    return outcome


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with serving(tmp_path_factory.mktemp("fuzz-ws")) as running:
        yield running


@pytest.fixture(scope="module")
def bystander(server: FuzzServer) -> Iterator[Bystander]:
    """A pro user following the bystanders' league for the whole module."""
    client = FuzzClient(server.port, f"/v1/ws?api_key={server.keys['pro']}")
    client.send_bytes(text_frame(json.dumps({"op": "subscribe",
                                             "channels": [f"sports.football.{LEAGUE_ID}"]})))
    watcher = Bystander(client)
    watcher.wait_for(lambda messages: any(m.get("op") == "subscribed" for m in messages))
    yield watcher
    watcher.close()


def test_random_json_messages_are_answered_or_closed_with_a_documented_code(
        server: FuzzServer, bystander: Bystander) -> None:
    @fuzz_settings(300)
    @given(frame=message_frames)
    def fuzz(frame: bytes) -> None:
        fuzz_once(server, frame)

    with publishing_while(server):
        fuzz()


def test_random_frames_break_nothing_but_their_own_connection(
        server: FuzzServer, bystander: Bystander) -> None:
    @fuzz_settings(250)
    @given(data=raw_frames())
    def fuzz(data: bytes) -> None:
        fuzz_once(server, data, echoed_close=sends_close(data))

    with publishing_while(server):
        fuzz()


@pytest.mark.parametrize(("data", "code"), [
    (encode_frame(0x9, b"x", fin=False), 1002),  # a fragmented control frame
    (encode_frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
    (encode_frame(0x1, b'{"op":"ping"}', rsv=4), 1002),  # a reserved bit, no extension
    (encode_frame(0x3, b"x"), 1002),  # a reserved opcode
    (encode_frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
    (encode_frame(0x1, b'{"op":', fin=False), 1002),  # a new message inside another (PING)
    (encode_frame(0x1, b'{"op":"\xff"}'), 1007),  # text that is not UTF-8
    (encode_frame(0x1, b"", declared=MAX_FRAME + 1), 1009),  # over 64 KiB, on the header
    (text_frame(json.dumps({"op": "subscribe", "channels": ["sports.curling"]})), 4003),
], ids=["fragmented-ping", "long-ping", "rsv", "opcode-3", "stray-continuation",
        "interleaved", "invalid-utf8", "over-64k", "invalid-channel"])
def test_each_broken_frame_is_closed_with_its_code(server: FuzzServer, data: bytes,
                                                   code: int) -> None:
    assert fuzz_once(server, data).close_code == code


def test_junk_in_a_valid_frame_is_an_error_and_the_connection_stays(server: FuzzServer) -> None:
    for junk in ("not json", "[]", '{"op": 1}', '{"op": "subscribe", "channels": [1]}',
                 '{"op": "subscribe", "channels": ["sports.football"], "since": "x"}',
                 '{"op": "subscribe", "channels": ["sports.football"], "since": 10}',
                 # beyond what Redis takes as a stream id: once read as a Redis outage (1012)
                 '{"op": "subscribe", "channels": ["sports.football"], '
                 '"since": "99999999999999999999-0"}',
                 '{"op": "subscribe", "channels": ["sports.football"], '
                 '"since": "18446744073709551615-18446744073709551615"}',
                 '{"op": "subscribe", "channels": ["sports.football"], "since": "'
                 + base64.urlsafe_b64encode(b"football=1-99999999999999999999").decode() + '"}',
                 # digits that are not ASCII, a line break inside a cursor: not ids either
                 '{"op": "subscribe", "channels": ["sports.football"], '
                 '"since": "\u0661-\u0660"}',
                 '{"op": "subscribe", "channels": ["sports.football"], "since": "'
                 + base64.urlsafe_b64encode(b"football=1-0\n").decode() + '"}',
                 '{"op": "hello"}', '{"op": "ping", "n": 1e999}', '{"op":' + "[" * 5000):
        outcome = fuzz_once(server, text_frame(junk))
        assert outcome.answered and [m["op"] for m in outcome.messages] == ["error", "pong"], \
            (junk, outcome)


@given(key=st.one_of(st.text(max_size=60), st.sampled_from(["", "%00", "btg_", "x" * 5000])))
@fuzz_settings(40)
def test_random_api_keys_are_closed_with_4001(server: FuzzServer, key: str) -> None:
    client = FuzzClient(server.port, f"/v1/ws?api_key={quote(key)}")
    try:
        client.send_bytes(PING)
        outcome = client.outcome(is_pong)
    finally:
        client.close()
    assert outcome.closed and outcome.close_code == 4001, outcome
    assert server.server_errors() == []


def test_the_bystander_got_every_event_in_order(server: FuzzServer,
                                                bystander: Bystander) -> None:
    """After the fuzzing (this module's earlier tests) one more goal: the bystander has
    every event published during and after it, each once, in `seq` order."""
    assert server.publish_goal() >= 1
    total = server.published
    assert total >= 5, "the fuzzing ran too briefly to publish during it"

    def data_of(message: Any) -> Any:
        return message.get("data")

    got = bystander.wait_for(lambda messages: len(game_seqs(messages, data_of)) >= total)
    assert game_seqs(got, data_of) == list(range(1, total + 1))
    assert not bystander.ended and bystander.close_code is None
    assert server.healthy()
