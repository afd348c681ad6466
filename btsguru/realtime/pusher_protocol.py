"""The Pusher Channels protocol (version 7), its pure parts: signatures, channel name
rules, frames and the checks on client messages (`protocols/PUSHER.md`).

Where it sits: beside the hub; `realtime.pusher_channels` (the channel rules),
`realtime.pusher_socket`, `handlers.pusher` (the WebSocket endpoint) and
`handlers.pusher_http` (channel authorization and the HTTP API) call these. No I/O here.

Signatures are HMAC-SHA256 in lowercase hex, compared in constant time
(`hmac.compare_digest`), over exactly the bytes the peer sent: `channel_data` is never
re-serialized before it is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

PROTOCOL_VERSION = 7
ACTIVITY_TIMEOUT_S = 30  # the protocol's common self-hosted value; under proxy idle timeouts
PONG_TIMEOUT_S = 30  # a pinged connection silent this long is gone (closed with 4201)
CHANNEL_MAX_LENGTH = 164
EVENT_NAME_MAX_LENGTH = 200
EVENT_DATA_MAX_BYTES = 10 * 1024
CHANNELS_PER_PUBLISH = 100
EVENTS_PER_BATCH = 10
PRESENCE_MAX_MEMBERS = 100
USER_ID_MAX_LENGTH = 128
USER_INFO_MAX_BYTES = 1024
CLIENT_EVENTS_PER_S = 10
TIMESTAMP_WINDOW_S = 600  # the HTTP API's auth_timestamp must be within this of now

# Error and close codes (section 4).
APP_NOT_FOUND = 4001
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
CLIENT_EVENT_RATE = 4301

_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_\-=@,.;]{1,164}$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}([-+][0-9A-Za-z.\-]+)?\Z", re.ASCII)
GAME_PREFIX = "sports."


class PusherProtocolError(Exception):
    """A client message the protocol refuses: answered with `pusher:error`, the socket
    stays open (codes 4300+ and `None` never close)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# -- channel names --

def valid_channel(name: str) -> bool:
    return bool(_CHANNEL_RE.match(name)) or is_user_channel(name)


def is_user_channel(name: str) -> bool:
    """`#server-to-user-{user_id}`: the channel of the signed-in user it names."""
    return name.startswith("#server-to-user-") and 16 < len(name) <= CHANNEL_MAX_LENGTH


def is_presence(name: str) -> bool:
    return name.startswith("presence-")


def is_private(name: str) -> bool:
    """Private in the protocol's sense: needs a signature (presence included)."""
    return name.startswith("private-") or name.startswith("presence-")


def is_encrypted(name: str) -> bool:
    return name.startswith("private-encrypted-")


# Cache channels remember their last event (PUSHER.md section 11)
CACHE_PREFIXES = ("cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-")
# The Pusher names a game channel goes by: bare, private, presence, encrypted, and their
# cache forms (longest first where one prefix starts another)
_GAME_NAME_PREFIXES = ("", "private-encrypted-cache-", "private-encrypted-", "private-cache-",
                       "private-", "presence-cache-", "presence-", "cache-")


def is_cache(name: str) -> bool:
    return name.startswith(CACHE_PREFIXES)


def game_channel_of(name: str) -> str | None:
    """The game channel behind a Pusher name (`sports.x`, `private-sports.x`,
    `presence-sports.x`, `private-encrypted-sports.x` and their `cache-` forms ->
    `sports.x`), or None for an app's own channel."""
    for prefix in _GAME_NAME_PREFIXES:
        if name.startswith(prefix + GAME_PREFIX):
            return name[len(prefix):]
    return None


def cache_miss_frame(channel: str) -> bytes:
    return frame("pusher:cache_miss", None, channel)


# -- signatures --

def sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def channel_auth(key: str, secret: str, socket_id: str, channel: str,
                 channel_data: str | None = None) -> str:
    """`key:signature` for a private (or, with `channel_data`, presence) channel."""
    to_sign = f"{socket_id}:{channel}" if channel_data is None \
        else f"{socket_id}:{channel}:{channel_data}"
    return f"{key}:{sign(secret, to_sign)}"


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def verify_auth(auth: str, expected: str) -> bool:
    """Constant-time comparison of a client's `auth` with the one we compute."""
    return hmac.compare_digest(auth.encode(), expected.encode())


def body_md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def http_string_to_sign(method: str, path: str, query: Mapping[str, str | list[str]]) -> str:
    """Section 12: every parameter but `auth_signature`, keys lowercased and sorted,
    not URL-encoded, list values joined with commas."""
    items = []
    for name, value in query.items():
        if name.lower() == "auth_signature":
            continue
        items.append((name.lower(), ",".join(value) if isinstance(value, list) else value))
    text = "&".join(f"{k}={v}" for k, v in sorted(items))
    return f"{method.upper()}\n{path}\n{text}"


def http_signature(secret: str, method: str, path: str,
                   query: Mapping[str, str | list[str]]) -> str:
    return sign(secret, http_string_to_sign(method, path, query))


def webhook_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def new_socket_id() -> str:
    """Two random integers joined by a dot: unique across the cluster with
    overwhelming probability (about 2^63 values)."""
    return f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**9)}"


def check_version(query: Mapping[str, str]) -> tuple[int, str] | None:
    """The connect query's problem as (code, message), or None when it is acceptable."""
    protocol = query.get("protocol")
    if not protocol:
        return NO_PROTOCOL, "No protocol version supplied"
    # isdigit() alone admits digits int() refuses (a superscript one)
    if not (protocol.isascii() and protocol.isdigit()) or not 5 <= int(protocol) <= \
            PROTOCOL_VERSION:
        return UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol[:20]}"
    version = query.get("version")
    if version is not None and not _VERSION_RE.match(version):
        return INVALID_VERSION, "Invalid version string format"
    return None


# -- frames --

def frame(event: str, data: Any = None, channel: str | None = None, *,
          data_is_json_string: bool = True, extra: Mapping[str, Any] | None = None) -> bytes:
    """A server frame. `data` goes out as a JSON-encoded string (what clients expect),
    unless it is already a string (a publisher's data: sent exactly as given)."""
    message: dict[str, Any] = {"event": event}
    if channel is not None:
        message["channel"] = channel
    if data is not None:
        if isinstance(data, str) or not data_is_json_string:
            message["data"] = data
        else:
            message["data"] = orjson.dumps(data).decode()
    if extra:
        message.update(extra)
    return orjson.dumps(message)


def error_frame(code: int | None, message: str) -> bytes:
    return frame("pusher:error", {"code": code, "message": message}, data_is_json_string=False)


def subscription_error(channel: str, error: str, status: int, type: str = "AuthError") -> bytes:
    return frame("pusher:subscription_error", {"type": type, "error": error, "status": status},
                 channel, data_is_json_string=False)


def event_data_string(data_json: bytes) -> bytes:
    """An event's `data` as the JSON string clients expect: a publisher's string is sent
    as it is, anything else is its JSON text (encoded once per event)."""
    if data_json.startswith(b'"'):
        return data_json
    return orjson.dumps(data_json.decode())


def event_frame(event: str, channel: str, data_string_json: bytes) -> bytes:
    """`{"event","channel","data"}` by concatenation; `data_string_json` is a JSON string."""
    return b"".join((b'{"event":', orjson.dumps(event), b',"channel":', orjson.dumps(channel),
                     b',"data":', data_string_json, b"}"))


# -- client messages --

@dataclass(frozen=True)
class ClientMessage:
    event: str
    channel: str | None
    data: Any


def parse_message(raw: str | bytes) -> ClientMessage:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PusherProtocolError("Invalid JSON", None) from None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise PusherProtocolError('Expected a JSON object with an "event"', None)
    channel = message.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise PusherProtocolError('"channel" must be a string', None)
    data = message.get("data")
    if isinstance(data, str) and message["event"].startswith("pusher:"):
        # some clients send pusher:* data JSON-encoded; accept both forms
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(data)
    return ClientMessage(message["event"], channel, data)


@dataclass(frozen=True)
class SubscribeRequest:
    channel: str
    auth: str
    channel_data: str | None


def parse_subscribe(data: Any) -> SubscribeRequest:
    if not isinstance(data, dict) or not isinstance(data.get("channel"), str):
        raise PusherProtocolError('pusher:subscribe needs data {"channel": NAME}', None)
    channel = data["channel"]
    if not valid_channel(channel):
        raise PusherProtocolError(f"Invalid channel name {channel[:80]!r}", None)
    auth = data.get("auth") or ""
    channel_data = data.get("channel_data")
    if not isinstance(auth, str) or (channel_data is not None
                                     and not isinstance(channel_data, str)):
        raise PusherProtocolError('"auth" and "channel_data" must be strings', None)
    return SubscribeRequest(channel, auth, channel_data)


@dataclass(frozen=True)
class Member:
    user_id: str
    user_info: Any  # any JSON (None when absent)

    @property
    def info_json(self) -> bytes:
        return orjson.dumps(self.user_info)


def parse_channel_data(text: str) -> Member:
    """The presence member in `channel_data`; a number `user_id` is kept as a string."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise PusherProtocolError("channel_data is not JSON", None) from None
    if not isinstance(data, dict):
        raise PusherProtocolError("channel_data must be a JSON object", None)
    user_id = data.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, str | int) or user_id == "":
        raise PusherProtocolError("channel_data needs a user_id", None)
    user_id = str(user_id)
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise PusherProtocolError(f"user_id longer than {USER_ID_MAX_LENGTH} characters", None)
    info = data.get("user_info")
    if len(orjson.dumps(info)) > USER_INFO_MAX_BYTES:
        raise PusherProtocolError(f"user_info larger than {USER_INFO_MAX_BYTES} bytes", None)
    return Member(user_id, info)
