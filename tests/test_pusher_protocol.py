"""The Pusher protocol's pure parts against the reference's test vectors (PUSHER.md)."""

from __future__ import annotations

import json
import re

import pytest

from btsguru.realtime.pusher_protocol import (
    PusherProtocolError,
    body_md5,
    channel_auth,
    check_version,
    event_data_string,
    event_frame,
    game_channel_of,
    http_signature,
    http_string_to_sign,
    new_socket_id,
    parse_channel_data,
    parse_message,
    parse_subscribe,
    user_auth,
    valid_channel,
    verify_auth,
    webhook_signature,
)

KEY, SECRET, SOCKET = "7f3c1e9a2b", "d41f0c8e5a7b", "123456.7890123"


def test_private_channel_vector() -> None:
    assert channel_auth(KEY, SECRET, SOCKET, "private-match-981") == \
        "7f3c1e9a2b:53f76e78f300b221b266c4d797e79ba030fea7890398e7f0fc44563717ef1554"


def test_presence_channel_vector() -> None:
    data = '{"user_id":"u-17","user_info":{"name":"Ana"}}'
    assert channel_auth(KEY, SECRET, SOCKET, "presence-match-981", data) == \
        "7f3c1e9a2b:a4eefe5292738fb479fb52deb9552fa49c508d405412a0b95ab29b5c3fd80695"


def test_user_signin_vector() -> None:
    assert user_auth(KEY, SECRET, SOCKET, '{"id":"u-17","name":"Ana"}') == \
        "7f3c1e9a2b:a468e72fdefe16350e405a971bef9ddf9abf376310fcd98375f64622adada590"


def test_http_post_vector() -> None:
    body = b'{"name":"score-update","channels":["match-981"],"data":"{\\"home\\":2,\\"away\\":1}"}'
    assert body_md5(body) == "f55e662d215c14d63f4cbcf6725d52db"
    query = {"auth_key": KEY, "auth_timestamp": "1767225600", "auth_version": "1.0",
             "body_md5": body_md5(body), "auth_signature": "ignored"}
    assert http_string_to_sign("POST", "/apps/4242/events", query) == (
        "POST\n/apps/4242/events\nauth_key=7f3c1e9a2b&auth_timestamp=1767225600"
        "&auth_version=1.0&body_md5=f55e662d215c14d63f4cbcf6725d52db")
    assert http_signature(SECRET, "POST", "/apps/4242/events", query) == \
        "0a3f5fa7bb37851fbfd5e54726d43ee24579e89458dd5b9afcaabbec89d0354f"


def test_http_get_vector_sorts_keys() -> None:
    query = {"info": "user_count", "filter_by_prefix": "presence-", "auth_version": "1.0",
             "auth_timestamp": "1767225600", "auth_key": KEY}
    assert http_signature(SECRET, "GET", "/apps/4242/channels", query) == \
        "0fdc78197fe8fc7d9b853d992dcab029e4b7bf26df90532288e862128557de47"


def test_webhook_vector() -> None:
    body = b'{"time_ms":1767225600123,"events":[{"name":"channel_occupied","channel":"match-981"}]}'
    assert webhook_signature(SECRET, body) == \
        "f414972eb2600e7bfc94f58d15e3c1318ab7f1da26f4894d6ddf10402cd29728"


def test_verify_auth_is_exact() -> None:
    good = channel_auth(KEY, SECRET, SOCKET, "private-x")
    assert verify_auth(good, good)
    assert not verify_auth(good[:-1] + ("1" if good.endswith("0") else "0"), good)
    assert not verify_auth("", good)


@pytest.mark.parametrize(("name", "ok"), [
    ("match-981", True), ("private-match-981", True), ("presence-sports.football", True),
    ("a" * 164, True), ("a" * 165, False), ("", False), ("bad name", False),
    ("sports.football.39", True), ("x/y", False), ("#server-to-user-u-17", True),
])
def test_channel_names(name: str, ok: bool) -> None:
    assert valid_channel(name) is ok


@pytest.mark.parametrize(("name", "game"), [
    ("sports.football", "sports.football"), ("private-sports.football.39", "sports.football.39"),
    ("presence-sports.hockey.1.2", "sports.hockey.1.2"), ("private-orders", None),
    ("match-981", None),
])
def test_game_channel_of(name: str, game: str | None) -> None:
    assert game_channel_of(name) == game


def test_socket_ids_have_the_protocol_form() -> None:
    ids = {new_socket_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"\d+\.\d+", i) for i in ids)


@pytest.mark.parametrize(("query", "code"), [
    ({}, 4008), ({"protocol": "9"}, 4007), ({"protocol": "x"}, 4007),
    ({"protocol": "7", "version": "8.6.0"}, None), ({"protocol": "7", "version": "$$"}, 4006),
])
def test_check_version(query: dict[str, str], code: int | None) -> None:
    problem = check_version(query)
    assert (problem[0] if problem else None) == code


def test_event_data_is_a_json_string() -> None:
    assert json.loads(event_data_string(b'{"home":2}')) == '{"home":2}'
    assert event_data_string(b'"as given"') == b'"as given"'
    wire = json.loads(event_frame("game.score", "sports.football", event_data_string(b'{"a":1}')))
    assert wire == {"event": "game.score", "channel": "sports.football", "data": '{"a":1}'}


def test_parse_messages() -> None:
    with pytest.raises(PusherProtocolError):
        parse_message("not json")
    with pytest.raises(PusherProtocolError):
        parse_message('{"data": {}}')
    sub = parse_subscribe(parse_message(
        '{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}').data)
    assert (sub.channel, sub.auth, sub.channel_data) == ("private-a", "k:s", None)
    with pytest.raises(PusherProtocolError):
        parse_subscribe({"channel": "bad name"})


def test_channel_data() -> None:
    member = parse_channel_data('{"user_id": 17, "user_info": {"name": "Ana"}}')
    assert (member.user_id, member.user_info) == ("17", {"name": "Ana"})
    for bad in ('{"user_info": {}}', "[]", "nope", '{"user_id": "' + "x" * 129 + '"}'):
        with pytest.raises(PusherProtocolError):
            parse_channel_data(bad)
