"""One Pusher connection as the hub sees it: the Pusher channels it holds, each hub
event rendered under every Pusher name it subscribed with, and the app channels'
messages (`store.pusher`) written in order after their `subscription_succeeded`.

Where it sits: hub -> **Pusher socket** -> the WebSocket. `realtime.pusher_channels`
decides what a socket may subscribe to and keeps its channels here; `handlers.pusher`
supplies the socket writes (`PusherConnection` adds `handlers.ws.WebSocketConnection`).
No Tornado here.

A game channel (`sports.*`, `private-sports.*`, `presence-sports.*`) maps onto one hub
subscription whatever the number of Pusher names a socket uses for it (`aliases`); the
frame for a name is built once per event for every connection (`render`'s `shared`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from btsguru.auth.access import Principal
from btsguru.realtime.connection import (
    CLOSE_RESTARTING,
    CLOSE_TOO_SLOW,
    MAX_QUEUE_BYTES,
    Connection,
    EventFacts,
    TokenBucket,
)
from btsguru.realtime.frames import ws_frame
from btsguru.realtime.pusher_crypto import encrypted_data
from btsguru.realtime.pusher_protocol import (
    CLIENT_EVENTS_PER_S,
    RECONNECT,
    UNAUTHORIZED,
    Member,
    error_frame,
    event_data_string,
    event_frame,
)
from btsguru.store.bus import BusEvent
from btsguru.store.history import parse_stream_id

# A user's channel on the app bus carries this to end the user's sockets
# (`realtime.pusher_users`, which publishes it from the HTTP API)
TERMINATE_EVENT = "pusher_internal:terminate_connections"

# The native transport's close codes mean "give up" to a Pusher client (4001-4099);
# these become Pusher's "reconnect now".
_RECONNECT_CODES = {CLOSE_TOO_SLOW, CLOSE_RESTARTING}


@dataclass
class PusherSub:
    """One Pusher channel of one connection."""

    name: str
    game: str | None  # the hub's game channel behind it
    user_id: int | None  # the user a private/presence game channel was authorized for
    member: Member | None
    client_events: bool
    sport: str | None = None  # of the game channel: its key in `Connection.positions`
    key_id: int | None = None  # the API key that authorized it (through its grant)
    # events up to this history position were already written under this name (a second
    # name of a game channel resubscribed the hub channel to replay for itself)
    floor: tuple[int, int] | None = None
    secret: bytes | None = None  # an encrypted game channel's key: events go out encrypted
    ready: bool = False  # subscription_succeeded sent: app-bus messages may follow
    held: list[tuple[str | None, bytes]] = field(default_factory=list)  # (id, frame)


class PusherSocket(Connection):
    """A connection speaking Pusher frames; a transport supplies the socket writes."""

    kind = "pusher"

    def __init__(self, principal: Principal, socket_id: str,
                 client_events_per_s: int = CLIENT_EVENTS_PER_S) -> None:
        super().__init__(principal)
        self.socket_id = socket_id
        self.channels: dict[str, PusherSub] = {}
        self.aliases: dict[str, set[str]] = {}  # hub channel -> Pusher names
        # hub channel -> (Pusher name, its success and what follows it: a cached event)
        self.pending: dict[str, list[tuple[str, list[bytes]]]] = {}
        self.cache_sent: dict[str, str] = {}  # app channel -> id of the cached event sent
        self.signed_in: str | None = None  # the user id of pusher:signin
        self.signin_key: tuple[int, int] | None = None  # (user, key) of an API-key sign-in
        self.user_slots: set[int] = set()
        self.client_bucket = TokenBucket(client_events_per_s, client_events_per_s)
        self.listeners: dict[str, Any] = {}

    def resume_positions(self) -> dict[tuple[int, str], str]:
        """(user, Pusher channel) -> the last event id written, for the private/presence
        game channels of this connection (`PusherState` saves them in batches)."""
        out = {}
        for sub in self.channels.values():
            if sub.user_id is not None and sub.game is not None:
                position = self.positions.get(sub.sport or "")
                if position is not None:
                    out[(sub.user_id, sub.name)] = position
        return out

    def key_ids(self) -> set[int]:
        """The keys that authorized this socket's private and presence game channels, and
        its sign-in."""
        keys = {sub.key_id for sub in self.channels.values() if sub.key_id}
        return keys | {self.signin_key[1]} if self.signin_key else keys

    def user_ids(self) -> set[int]:
        users = {sub.user_id for sub in self.channels.values()
                 if sub.key_id and sub.user_id is not None}
        return users | {self.signin_key[0]} if self.signin_key else users

    def on_user_message(self, message: dict[str, Any]) -> None:
        """The signed-in user's channel on the app bus: a terminate ends this socket."""
        if message.get("event") == TERMINATE_EVENT and not self.closed:
            message_text = "Connection terminated: the app's backend ended this user's " \
                           "connections"
            self.send(error_frame(UNAUTHORIZED, message_text))
            self.close(UNAUTHORIZED, message_text[:100])

    def revoked(self) -> None:
        """As Pusher ends a terminated user's connections: error, then close, 4009."""
        message = "Connection unauthorized: the API key that authorized a channel was " \
                  "revoked or its user disabled"
        self.send(error_frame(UNAUTHORIZED, message))
        self.close(UNAUTHORIZED, message)

    def _transport_close(self, code: int, reason: str) -> None:
        # the hub's close codes, in the Pusher meaning that makes clients come back
        super()._transport_close(RECONNECT if code in _RECONNECT_CODES else code, reason)

    def render(self, sub_name: str, event: BusEvent, facts: EventFacts,
               shared: dict[Any, bytes]) -> bytes:
        data = shared.get("pusher-data")
        if data is None:
            data = shared["pusher-data"] = event_data_string(event.data_json)
        parts = []
        pos = None
        for name in sorted(self.aliases.get(sub_name, ())):
            pusher_sub = self.channels.get(name)
            floor = pusher_sub.floor if pusher_sub is not None else None
            if floor is not None:
                if pos is None:
                    with contextlib.suppress(ValueError):  # a snapshot's: not a position
                        pos = parse_stream_id(event.id)
                if pos is not None and pos <= floor:
                    continue
            key = ("pusher", name)
            wire = shared.get(key)
            if wire is None:
                secret = pusher_sub.secret if pusher_sub is not None else None
                wire = shared[key] = ws_frame(event_frame(
                    event.event, name,
                    data if secret is None else encrypted_data(secret, event.data_json)))
            parts.append(wire)
        return b"".join(parts)

    def control(self, message: dict[str, Any]) -> None:
        if message.get("op") != "subscribed":
            return
        for name, frames in self.pending.pop(str(message.get("channel")), []):
            for payload in frames:
                self.send_frame(ws_frame(payload))
            sub = self.channels.get(name)
            if sub is not None:
                self.mark_ready(sub)

    def send(self, payload: bytes) -> None:
        self.send_frame(ws_frame(payload))

    def mark_ready(self, sub: PusherSub) -> None:
        sub.ready = True
        held, sub.held = sub.held, []
        for id, payload in held:
            if id is None or id != self.cache_sent.get(sub.name):  # not sent as cached
                self.send_frame(payload)

    def on_app_message(self, name: str, message: dict[str, Any]) -> None:
        """An app-bus message for channel `name` (see `store.pusher`)."""
        if self.closed or message.get("except") == self.socket_id:
            return
        sub = self.channels.get(name)
        if sub is None:
            return
        id = message.get("id")
        if id is not None and sub.ready and id == self.cache_sent.get(name):
            return  # it went out as the cached event
        if message.get("event") == TERMINATE_EVENT:
            return  # for `on_user_message`, not for the client
        wire = message.get("\x00wire")  # the message dict is shared by local subscribers
        if not isinstance(wire, bytes):
            body = {k: message[k] for k in ("event", "channel", "data", "user_id")
                    if k in message}
            wire = message["\x00wire"] = ws_frame(orjson.dumps(body))
        if not sub.ready:
            sub.held.append((id if isinstance(id, str) else None, wire))
        elif self._queued_bytes > MAX_QUEUE_BYTES:
            self.close_too_slow("fell behind on an app channel")
        else:
            self.send_frame(wire)
