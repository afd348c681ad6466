"""The Pusher endpoint's HTTP side: channel authorization for game channels
(`POST /v1/realtime/auth`, alias `POST /broadcasting/auth`, the path Laravel Echo uses)
and the HTTP API a Laravel backend publishes with (`/apps/{REVERB_APP_ID}/...`,
`protocols/PUSHER.md` section 12).

Where it sits: beside the hub. Publishes to a bare `sports.*` channel go through the
event history (an id, resume, every transport); every other channel goes on the app bus
(`store.pusher`). Requests are checked as Pusher does, plus a few things Reverb skips:
the `auth_timestamp` window (±600 s), `body_md5`, a constant-time signature compare,
and an optional `Idempotency-Key` header that makes a retried publish a no-op.
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from typing import Any, ClassVar

import orjson

from btsguru.config import Config
from btsguru.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from btsguru.handlers.api import ApiHandler
from btsguru.handlers.base import JsonHandler
from btsguru.realtime.channels import InvalidChannel, parse_channel
from btsguru.realtime.hub import Hub
from btsguru.realtime.pusher_crypto import shared_secret
from btsguru.realtime.pusher_protocol import (
    CHANNELS_PER_PUBLISH,
    EVENT_DATA_MAX_BYTES,
    EVENT_NAME_MAX_LENGTH,
    EVENTS_PER_BATCH,
    TIMESTAMP_WINDOW_S,
    USER_ID_MAX_LENGTH,
    body_md5,
    channel_auth,
    game_channel_of,
    http_signature,
    is_cache,
    is_encrypted,
    is_presence,
    user_auth,
    valid_channel,
)
from btsguru.realtime.pusher_users import SIGNIN_GRANT, terminate_message, user_channel
from btsguru.store.history import EventHistory
from btsguru.store.pusher import PusherState

SOCKET_ID_RE = re.compile(r"^\d+\.\d+$")
IDEMPOTENCY_KEY_MAX_LENGTH = 128


class SignatureError(Unauthorized):
    code = "invalid_signature"


class RealtimeAuthHandler(ApiHandler):
    """Signs `private-sports.*` / `presence-sports.*` subscriptions for the caller's user;
    other private channels are the app backend's to sign, with the app secret."""

    route_kind: ClassVar[str] = "other"
    required_scope: ClassVar[str] = "realtime-auth"

    def initialize(self, access: Any, hub: Hub, state: PusherState,  # type: ignore[override]
                   config: Config) -> None:
        super().initialize(access)
        self.hub = hub
        self.state = state
        self.config = config

    async def post(self) -> None:
        assert self.principal is not None
        socket_id = self.get_body_argument("socket_id", "").strip()
        name = self.get_body_argument("channel_name", "").strip()
        if not SOCKET_ID_RE.match(socket_id):
            raise BadRequest("socket_id: expected the socket id Pusher gave the client")
        game = game_channel_of(name)
        if game is None or name == game or not valid_channel(name):
            raise Forbidden("this endpoint authorizes private-sports.* and presence-sports.* "
                            "channels; sign other private channels in your app's backend")
        try:
            parse_channel(game, self.hub.sports)
        except InvalidChannel as exc:
            raise BadRequest(exc.message) from None
        tier = self.principal.tier
        if not tier.private_channels:
            raise Forbidden(f"the {tier.name} tier does not include private and presence "
                            "channels")
        key, secret = self.config.reverb_app_key, self.config.reverb_app_secret.reveal()
        body: dict[str, str] = {}
        channel_data = None
        if is_presence(name):
            # made here from the user, never taken from the client
            channel_data = orjson.dumps({"user_id": str(self.principal.user_id),
                                         "user_info": {"tier": tier.name}}).decode()
            body["channel_data"] = channel_data
        body["auth"] = channel_auth(key, secret, socket_id, name, channel_data)
        if is_encrypted(name):  # the relay encrypts this channel's events with it
            master = self.config.pusher_encryption_master_key.reveal()
            if not master:
                raise Forbidden("private-encrypted-sports.* channels need "
                                "PUSHER_ENCRYPTION_MASTER_KEY set on the server")
            body["shared_secret"] = base64.b64encode(shared_secret(master, name)).decode()
        await self.state.grant(socket_id, name, {
            "user_id": self.principal.user_id, "max_streams": tier.max_streams,
            "client_events": tier.client_events,
            # the subscription lasts only as long as this key (realtime.revocation)
            "key_id": self.principal.key_id})
        self.write_json(body)


class UserAuthHandler(ApiHandler):
    """Signs `pusher:signin` for the caller's user (pusher-js's `userAuthentication`
    endpoint): `user_data` is made here, `{"id": "<user id>", "user_info": {...}}`, so a
    client with an API key signs in as its own user and no other."""

    route_kind: ClassVar[str] = "other"
    required_scope: ClassVar[str] = "realtime-auth"

    def initialize(self, access: Any, state: PusherState,  # type: ignore[override]
                   config: Config) -> None:
        super().initialize(access)
        self.state = state
        self.config = config

    async def post(self) -> None:
        assert self.principal is not None
        socket_id = self.get_body_argument("socket_id", "").strip()
        if not SOCKET_ID_RE.match(socket_id):
            raise BadRequest("socket_id: expected the socket id Pusher gave the client")
        user_data = orjson.dumps({"id": str(self.principal.user_id),
                                  "user_info": {"tier": self.principal.tier.name}}).decode()
        await self.state.grant(socket_id, SIGNIN_GRANT, {
            "user_id": self.principal.user_id, "key_id": self.principal.key_id})
        self.write_json({"auth": user_auth(self.config.reverb_app_key,
                                           self.config.reverb_app_secret.reveal(),
                                           socket_id, user_data),
                         "user_data": user_data})


class PusherApiHandler(JsonHandler):
    """Base of `/apps/{id}/...`: the app id and the request signature."""

    def initialize(self, hub: Hub, state: PusherState, history: EventHistory,
                   config: Config) -> None:
        self.hub = hub
        self.state = state
        self.history = history
        self.config = config

    def prepare(self) -> None:
        app_id = self.path_kwargs.get("app_id", "")
        if app_id != self.config.reverb_app_id:
            raise NotFound(f"unknown app {app_id[:40]!r}")
        query = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        if query.get("auth_key") != self.config.reverb_app_key:
            raise SignatureError("unknown auth_key")
        stamp = query.get("auth_timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > TIMESTAMP_WINDOW_S:
            raise SignatureError("auth_timestamp is missing or more than 600 s from now")
        body = self.request.body or b""
        if body and query.get("body_md5") != body_md5(body):
            raise SignatureError("body_md5 does not match the body")
        expected = http_signature(self.config.reverb_app_secret.reveal(), self.request.method
                                  or "GET", self.request.path, query)
        if not hmac.compare_digest(query.get("auth_signature", "").encode(), expected.encode()):
            raise SignatureError("invalid auth_signature")

    def _json_body(self) -> dict[str, Any]:
        try:
            body = orjson.loads(self.request.body or b"{}")
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    async def _publish(self, item: dict[str, Any]) -> dict[str, Any]:
        name, data = item.get("name"), item.get("data")
        if not isinstance(name, str) or not name or len(name) > EVENT_NAME_MAX_LENGTH:
            raise BadRequest(f"name: an event name of 1 to {EVENT_NAME_MAX_LENGTH} characters")
        if not isinstance(data, str):
            data = orjson.dumps(data).decode() if data is not None else ""
        if len(data.encode()) > EVENT_DATA_MAX_BYTES:
            raise PayloadTooLarge("data: at most 10 KB")
        channels = _channels(item)
        socket_id = item.get("socket_id")
        for channel in channels:
            if channel.startswith("sports."):
                try:
                    parsed = parse_channel(channel, self.hub.sports)
                except InvalidChannel as exc:
                    raise BadRequest(exc.message) from None
                try:
                    value: Any = orjson.loads(data)
                except orjson.JSONDecodeError:
                    value = data
                await self.history.append(parsed.sport, name, channel, value)
            else:
                message: dict[str, Any] = {"event": name, "channel": channel, "data": data}
                if isinstance(socket_id, str):
                    message["except"] = socket_id
                if is_cache(channel):  # remembered for the channel's next subscribers
                    message = await self.state.cache.remember(channel, message)
                await self.state.publish(channel, message)
        return await self._info(item.get("info"), channels)

    async def _info(self, info: Any, channels: list[str]) -> dict[str, Any]:
        if not isinstance(info, str) or not info:
            return {}
        counts = await self.state.channel_counts()
        out: dict[str, Any] = {}
        for channel in channels:
            entry: dict[str, Any] = {}
            if "subscription_count" in info:
                entry["subscription_count"] = counts.get(channel, 0)
            if "user_count" in info and is_presence(channel):
                entry["user_count"] = len(await self.state.members(channel))
            out[channel] = entry
        return {"channels": out}

    async def _once(self) -> bool:
        key = self.request.headers.get("Idempotency-Key") or \
            self.request.headers.get("X-Idempotency-Key")
        if not key:
            return True
        if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise BadRequest("Idempotency-Key: at most 128 characters")
        return await self.state.first_use(key)


def _channels(item: dict[str, Any]) -> list[str]:
    channels = item.get("channels")
    if channels is None and isinstance(item.get("channel"), str):
        channels = [item["channel"]]
    if not isinstance(channels, list) or not channels or \
            not all(isinstance(c, str) and valid_channel(c) for c in channels):
        raise BadRequest("channels: a list of valid channel names (or one channel)")
    if len(channels) > CHANNELS_PER_PUBLISH:
        raise BadRequest(f"channels: at most {CHANNELS_PER_PUBLISH}")
    return channels


class EventsHandler(PusherApiHandler):
    async def post(self, app_id: str) -> None:
        body = self._json_body()
        if not await self._once():
            self.write_json({})
            return
        self.write_json(await self._publish(body))


class BatchEventsHandler(PusherApiHandler):
    async def post(self, app_id: str) -> None:
        batch = self._json_body().get("batch")
        if not isinstance(batch, list) or not all(isinstance(i, dict) for i in batch):
            raise BadRequest("batch: a list of events")
        if len(batch) > EVENTS_PER_BATCH:
            raise BadRequest(f"batch: at most {EVENTS_PER_BATCH} events")
        if not await self._once():
            self.write_json({"batch": [{} for _ in batch]})
            return
        self.write_json({"batch": [await self._publish(item) for item in batch]})


class ChannelsHandler(PusherApiHandler):
    async def get(self, app_id: str) -> None:
        prefix = self.get_query_argument("filter_by_prefix", "")
        info = self.get_query_argument("info", "")
        if "user_count" in info and not prefix.startswith("presence-"):
            raise BadRequest("info=user_count needs filter_by_prefix=presence-")
        out: dict[str, Any] = {}
        for name, n in sorted((await self.state.channel_counts()).items()):
            if not name.startswith(prefix):
                continue
            entry: dict[str, Any] = {}
            if "user_count" in info:
                entry["user_count"] = len(await self.state.members(name))
            if "subscription_count" in info:
                entry["subscription_count"] = n
            out[name] = entry
        self.write_json({"channels": out})


class ChannelHandler(PusherApiHandler):
    async def get(self, app_id: str, name: str) -> None:
        if not valid_channel(name):
            raise BadRequest("invalid channel name")
        info = self.get_query_argument("info", "")
        count = (await self.state.channel_counts()).get(name, 0)
        out: dict[str, Any] = {"occupied": count > 0}
        if "subscription_count" in info:
            out["subscription_count"] = count
        if "user_count" in info:
            if not is_presence(name):
                raise BadRequest("user_count is only for presence channels")
            out["user_count"] = len(await self.state.members(name))
        self.write_json(out)


class ChannelUsersHandler(PusherApiHandler):
    async def get(self, app_id: str, name: str) -> None:
        if not is_presence(name):
            raise BadRequest("users are only listed for presence channels")
        self.write_json({"users": [{"id": uid} for uid in await self.state.members(name)]})


class TerminateHandler(PusherApiHandler):
    """`terminateUserConnections`: every socket signed in as the user, on every process,
    gets 4009 (an unknown user or one with no socket: nothing to do, `{}` all the same)."""

    async def post(self, app_id: str, user_id: str) -> None:
        if not user_id or len(user_id) > USER_ID_MAX_LENGTH:
            raise BadRequest(f"user id: 1 to {USER_ID_MAX_LENGTH} characters")
        await self.state.publish(user_channel(user_id), terminate_message(user_id))
        self.write_json({})


def pusher_http_routes(hub: Hub, state: PusherState, history: EventHistory, config: Config,
                       access: Any) -> list[Any]:
    api = {"hub": hub, "state": state, "history": history, "config": config}
    auth = {"access": access, "hub": hub, "state": state, "config": config}
    app = r"(?:/[^/]+)*/apps/(?P<app_id>[^/]+)"  # a proxy may put a prefix in front
    return [
        (r"/v1/realtime/auth", RealtimeAuthHandler, auth),
        (r"/broadcasting/auth", RealtimeAuthHandler, auth),
        (r"/v1/realtime/user-auth", UserAuthHandler,
         {"access": access, "state": state, "config": config}),
        (app + r"/events", EventsHandler, api),
        (app + r"/batch_events", BatchEventsHandler, api),
        (app + r"/channels", ChannelsHandler, api),
        (app + r"/channels/(?P<name>[^/]+)", ChannelHandler, api),
        (app + r"/channels/(?P<name>[^/]+)/users", ChannelUsersHandler, api),
        (app + r"/users/(?P<user_id>[^/]+)/terminate_connections", TerminateHandler, api),
    ]

