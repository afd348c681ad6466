"""The Pusher channel rules of one process: which channels a socket may subscribe to,
private and presence authorization, presence rosters, client events, and what a
socket's channels hold (`PusherSocket`).

Where it sits: `handlers.pusher` (the WebSocket endpoint: frames in, frames out) ->
**Pusher channels** -> the hub (game channels) and the app bus (`store.pusher`: app
channels, presence, client events). No Tornado here: a refusal is an exception the
endpoint renders (`SubscriptionRefused`, `ConnectionRefused`, `PusherProtocolError`).

- Game channels: `sports.*` (open to app-key clients unless `PUSHER_PUBLIC_CHANNELS` is
  false), `private-sports.*` and `presence-sports.*` (authorized by
  `POST /v1/realtime/auth`, which records which user the signature was made for). All
  three map onto the hub's game channel: one hub subscription per game channel, its
  events rendered under every Pusher name the socket uses (`PusherSocket.render`).
- Any other valid name is an app channel (a Laravel app's own); its private and presence
  forms are signed by the app's backend with the app secret. Their events, presence
  announcements and client events travel on the app bus.
- `#server-to-user-{id}`: only for a socket signed in as `{id}` (`realtime.pusher_users`).
- Limits: a private or presence game channel takes a stream slot of the user it was
  authorized for (the tier's `max_streams`; over it: error and close 4100, so clients
  retry after a second); `PUSHER_MAX_SUBSCRIPTIONS` channels of any kind per socket
  (more: `LimitReached`); `PRESENCE_MAX_MEMBERS` per presence channel; client events
  per socket per second (more: 4301, in band).
- Resume: the last event written on a user's private/presence game channel is saved per
  user and channel (`PusherState`, in batches and on unsubscribe or close), so a client
  that reconnects to any process gets what it missed from the history, or
  `game.snapshot` when the window has passed.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from btsguru.config import Config
from btsguru.errors import BtsguruError
from btsguru.realtime.channels import Channel, InvalidChannel, parse_channel
from btsguru.realtime.cursor import Cursor
from btsguru.realtime.hub import Hub
from btsguru.realtime.pusher_cache import CachedEvents
from btsguru.realtime.pusher_crypto import shared_secret
from btsguru.realtime.pusher_protocol import (
    CLIENT_EVENT_RATE,
    EVENT_DATA_MAX_BYTES,
    EVENT_NAME_MAX_LENGTH,
    OVER_CAPACITY,
    PRESENCE_MAX_MEMBERS,
    PusherProtocolError,
    SubscribeRequest,
    channel_auth,
    frame,
    game_channel_of,
    is_cache,
    is_encrypted,
    is_presence,
    is_private,
    is_user_channel,
    parse_channel_data,
    verify_auth,
)
from btsguru.realtime.pusher_socket import PusherSocket, PusherSub
from btsguru.realtime.webhooks import PusherWebhooks
from btsguru.store.history import parse_stream_id
from btsguru.store.pusher import PusherState


class SubscriptionRefused(Exception):
    """A subscribe refused: `pusher:subscription_error` for `channel`; the socket stays
    open (PUSHER.md section 6)."""

    def __init__(self, channel: str, message: str, status: int,
                 type: str = "AuthError") -> None:
        super().__init__(message)
        self.channel = channel
        self.message = message
        self.status = status
        self.type = type


class ConnectionRefused(Exception):
    """The socket must go: `pusher:error` with `code` and `message`, then a close with
    `code` and `reason`."""

    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


class PusherChannels:
    """Subscribe, unsubscribe, client events and cleanup for Pusher sockets; see the
    module docstring. Holds no state of its own: each socket's is in its `PusherSocket`,
    the cluster's in `PusherState` and the hub."""

    def __init__(self, hub: Hub, state: PusherState, config: Config) -> None:
        self.hub = hub
        self.state = state
        self.config = config
        self.webhooks = state.webhooks if isinstance(state.webhooks, PusherWebhooks) else None
        self.cached = CachedEvents(hub, state.cache, self.webhooks.cache_miss
                                   if self.webhooks is not None else None)

    # -- subscribe --

    async def subscribe(self, conn: PusherSocket, req: SubscribeRequest) -> None:
        """Subscribe `conn` to `req.channel`; success is written to it (for a game
        channel once the hub has caught it up). Raises `SubscriptionRefused` or
        `ConnectionRefused`."""
        name = req.channel
        if name in conn.channels:  # idempotent: success again, nothing added
            conn.send(await self._success(conn.channels[name]))
            return
        limit = self.config.pusher_max_subscriptions
        if len(conn.channels) >= limit:  # app channels too: each holds a listener and a count
            raise SubscriptionRefused(name, f"at most {limit} channels per connection",
                                      403, "LimitReached")
        if is_user_channel(name) and not (
                conn.signed_in is not None and name == "#server-to-user-" + conn.signed_in):
            # reserved for the signed-in user it names (PUSHER.md section 11)
            raise SubscriptionRefused(name, "#server-to-user- channels are for the user "
                                      "signed in with pusher:signin as that user", 403)
        if is_private(name) and not self._signed(conn, req):
            raise SubscriptionRefused(name, "Invalid signature", 401)
        game = game_channel_of(name)
        client_events = is_private(name) and not is_encrypted(name)
        channel = None
        user_id: int | None = None
        key_id: int | None = None
        if game is not None:
            channel, user_id, events_allowed, key_id = await self._authorize_game(
                conn, name, game)
            client_events = client_events and events_allowed
        member = None
        if is_presence(name):
            try:
                member = parse_channel_data(req.channel_data or "")
            except PusherProtocolError as exc:
                raise SubscriptionRefused(name, exc.message, 400,
                                          "InvalidChannelData") from None
            if user_id is not None and member.user_id != str(user_id):
                raise SubscriptionRefused(name, "channel_data is not this user's", 403)
        sub = PusherSub(name, game, user_id, member, client_events,
                        channel.sport if channel is not None else None, key_id=key_id,
                        secret=self._channel_key(name) if game is not None else None)
        await self._attach(conn, sub)
        if channel is None or game is None:
            cached = await self.cached.for_app_channel(conn, name) if is_cache(name) else None
            conn.send(await self._success(sub))
            if cached is not None:
                conn.send(cached)
            conn.mark_ready(sub)
            return
        frames, cursor = await self._game_start(conn, sub, channel)
        conn.pending.setdefault(game, []).append((name, frames))
        conn.aliases.setdefault(game, set()).add(name)
        try:
            await self.hub.subscribe(conn, [channel], cursor)
        except BtsguruError as exc:
            conn.pending.pop(game, None)
            await self.unsubscribe(conn, name)
            raise SubscriptionRefused(name, exc.message, exc.status, "LimitReached") from None

    async def _game_start(self, conn: PusherSocket, sub: PusherSub,
                          channel: Channel) -> tuple[list[bytes], Cursor | None]:
        """What a game channel's subscriber is sent once the hub has it (success, and on
        a cache channel the cached event), and where its hub subscription starts.

        Another name of this socket may already hold the hub's game channel (the bare
        name and `private-encrypted-` one, say): the hub then runs no catch-up for this
        name, so its `game.snapshot` is read and sent here, as a new subscriber gets it."""
        frames = [await self._success(sub)]
        assert sub.game is not None
        shared = any(other in conn.channels for other in conn.aliases.get(sub.game, ()))
        if is_cache(sub.name):  # the whole game (or the last event), never a replay
            cached = await self.cached.for_game_channel(sub.name, channel, sub.secret,
                                                        hub_sends_snapshot=not shared)
            return frames + ([cached] if cached is not None else []), None
        cursor = await self._resume_cursor(conn, sub, channel) \
            if sub.user_id is not None else None
        if shared and cursor is None and channel.game_id is not None:
            snapshot = await self.cached.snapshot(sub.name, channel, sub.secret)
            frames += [snapshot] if snapshot is not None else []
        return frames, cursor

    async def _resume_cursor(self, conn: PusherSocket, sub: PusherSub,
                             channel: Channel) -> Cursor | None:
        """Where the hub subscription of `sub`'s game channel must start so that `sub`
        gets what its user missed. When another name of this connection already holds
        that hub subscription (pusher-js resubscribes `private-` and `presence-` forms one
        after the other), the hub channel is subscribed again from the older position;
        the names that had the newer events skip them (`floor`)."""
        assert sub.user_id is not None and sub.game is not None
        position = await self.state.position(sub.user_id, sub.name)
        if position is None:
            return None
        others = [conn.channels[name] for name in conn.aliases.get(sub.game, ())
                  if name in conn.channels]
        delivered = conn.positions.get(channel.sport)
        if others and delivered is not None:
            try:
                mine, theirs = parse_stream_id(position), parse_stream_id(delivered)
            except ValueError:
                return None
            if mine >= theirs:
                return None  # nothing this name missed that the others have not had
            for other in others:
                other.floor = max(other.floor or theirs, theirs)
            await self.hub.unsubscribe(conn, [sub.game])
        elif others:
            return None  # the others are not past a snapshot: resubscribing would repeat it
        return Cursor({channel.sport: position})

    def _channel_key(self, name: str) -> bytes | None:
        """An encrypted game channel's key (the relay encrypts its events); None for the
        other game channels. Without a master key the channel is refused."""
        if not is_encrypted(name):
            return None
        master = self.config.pusher_encryption_master_key.reveal()
        if not master:
            raise SubscriptionRefused(name, "encrypted game channels need "
                                      "PUSHER_ENCRYPTION_MASTER_KEY on the server", 403)
        return shared_secret(master, name)

    def _signed(self, conn: PusherSocket, req: SubscribeRequest) -> bool:
        channel_data = req.channel_data if is_presence(req.channel) else None
        expected = channel_auth(self.config.reverb_app_key,
                                self.config.reverb_app_secret.reveal(), conn.socket_id,
                                req.channel, channel_data)
        return verify_auth(req.auth, expected)

    async def _authorize_game(self, conn: PusherSocket, name: str, game: str,
                              ) -> tuple[Channel, int | None, bool, int | None]:
        """The game channel, the user it was authorized for, whether client events are
        allowed and the API key behind the grant."""
        try:
            channel = parse_channel(game, self.hub.sports)
        except InvalidChannel as exc:
            raise SubscriptionRefused(name, exc.message, 400, "InvalidChannel") from None
        if not is_private(name):
            if not self.config.pusher_public_channels:
                raise SubscriptionRefused(
                    name, "public game channels are closed: subscribe to private-" + name +
                    " authorized by POST /v1/realtime/auth with an API key", 403)
            return channel, None, False, None
        grant = await self.state.granted(conn.socket_id, name)
        if grant is None:
            raise SubscriptionRefused(
                name, "game channels are authorized by POST /v1/realtime/auth "
                "with an API key", 403)
        user_id = int(grant["user_id"])
        if user_id not in conn.user_slots:
            if await self.hub.slots.acquire(user_id, int(grant["max_streams"])) is None:
                raise ConnectionRefused(OVER_CAPACITY, "Over capacity: the tier's "
                                        "concurrent connections are in use", "over capacity")
            conn.user_slots.add(user_id)
        key_id = grant.get("key_id")
        return channel, user_id, bool(grant.get("client_events")), \
            int(key_id) if key_id is not None else None

    async def _attach(self, conn: PusherSocket, sub: PusherSub) -> None:
        """Join the presence roster, listen on the app bus, count the subscriber."""
        name = sub.name
        if sub.member is not None:
            joined = await self.state.join(name, sub.member.user_id, sub.member.info_json,
                                           PRESENCE_MAX_MEMBERS)
            if joined < 0:
                raise SubscriptionRefused(name, f"presence channel full "
                                          f"({PRESENCE_MAX_MEMBERS} members)", 403,
                                          "LimitReached")
            if joined == 1:
                await self.state.publish(name, {
                    "event": "pusher_internal:member_added", "channel": name,
                    "except": conn.socket_id,
                    "data": orjson.dumps({"user_id": sub.member.user_id,
                                          "user_info": sub.member.user_info}).decode()})
                if self.webhooks is not None:
                    await self.webhooks.member_added(name, sub.member.user_id)
        conn.channels[name] = sub

        def listener(message: dict[str, Any]) -> None:
            conn.on_app_message(name, message)

        conn.listeners[name] = listener
        await self.state.add_listener(name, listener)
        if sub.user_id is not None:
            self.state.track_positions(conn.resume_positions)
        await self.state.count(name, 1)

    async def _success(self, sub: PusherSub) -> bytes:
        data: dict[str, Any] = {}
        if sub.member is not None:
            roster = await self.state.members(sub.name)
            data = {"presence": {"ids": list(roster), "hash": roster, "count": len(roster)}}
        return frame("pusher_internal:subscription_succeeded", data, sub.name)

    # -- unsubscribe --

    async def unsubscribe(self, conn: PusherSocket, name: str) -> None:
        """Stop delivery on `name` at once (no reply); unknown names are ignored."""
        sub = conn.channels.pop(name, None)
        if sub is None:
            return
        if sub.game is not None:
            aliases = conn.aliases.get(sub.game, set())
            aliases.discard(name)
            if not aliases:
                conn.aliases.pop(sub.game, None)
                await self.hub.unsubscribe(conn, [sub.game])
        await self._detach(conn, sub)

    async def _detach(self, conn: PusherSocket, sub: PusherSub) -> None:
        listener = conn.listeners.pop(sub.name, None)
        if listener is not None:
            await self.state.remove_listener(sub.name, listener)
        if sub.user_id is not None and sub.game is not None:
            channel = parse_channel(sub.game, self.hub.sports)
            position = conn.positions.get(channel.sport)
            if position is not None:
                await self.state.save_positions(sub.user_id, {sub.name: position})
        await self.state.count(sub.name, -1)
        if sub.member is not None and await self.state.leave(sub.name, sub.member.user_id):
            await self.state.publish(sub.name, {
                "event": "pusher_internal:member_removed", "channel": sub.name,
                "data": orjson.dumps({"user_id": sub.member.user_id}).decode()})
            if self.webhooks is not None:
                await self.webhooks.member_removed(sub.name, sub.member.user_id)

    # -- client events --

    async def client_event(self, conn: PusherSocket, event: str, channel: str | None,
                           data: Any) -> None:
        """Relay a `client-*` event to the channel's other subscribers, cluster-wide;
        `PusherProtocolError` (in band, the socket stays open) when refused."""
        sub = conn.channels.get(channel or "")
        if channel is None or sub is None:
            raise PusherProtocolError("Client event rejected: not subscribed to the channel")
        if not is_private(channel) or is_encrypted(channel):
            raise PusherProtocolError("Client event rejected: only private and presence "
                                      "channels accept client events")
        if not sub.client_events:
            raise PusherProtocolError("Client event rejected: client events are not "
                                      "enabled for this channel")
        if len(event) > EVENT_NAME_MAX_LENGTH:
            raise PusherProtocolError(f"Client event rejected: name longer than "
                                      f"{EVENT_NAME_MAX_LENGTH} characters")
        if len(orjson.dumps(data)) > EVENT_DATA_MAX_BYTES:
            raise PusherProtocolError("Client event rejected: data over 10 KB")
        if not conn.client_bucket.take(time.monotonic()):
            raise PusherProtocolError("Client event rate limit exceeded", CLIENT_EVENT_RATE)
        message: dict[str, Any] = {"event": event, "channel": channel, "data": data,
                                   "except": conn.socket_id}
        if sub.member is not None:
            message["user_id"] = sub.member.user_id
        await self.state.publish(channel, message)
        if self.webhooks is not None:
            self.webhooks.client_event(channel, event, data, conn.socket_id,
                                       message.get("user_id"))

    # -- closing --

    def closed(self, conn: PusherSocket) -> None:
        """`conn` closed (the hub has let it go): leave its channels and give back its
        users' stream slots, in the background."""
        self.state.spawn(self._cleanup(conn), f"cleanup of pusher socket {conn.socket_id}")

    async def _cleanup(self, conn: PusherSocket) -> None:
        self.state.untrack_positions(conn.resume_positions)
        for sub in list(conn.channels.values()):
            await self._detach(conn, sub)
        conn.channels.clear()
        for user_id in conn.user_slots:
            await self.hub.slots.release(user_id)
        conn.user_slots.clear()
