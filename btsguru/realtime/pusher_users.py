"""Pusher user authentication (`pusher:signin`) and what it opens: delivery to one user
through `#server-to-user-{id}` (the server SDKs' `sendToUser`) and closing all of a
user's connections (`terminateUserConnections`), cluster-wide (PUSHER.md section 11, the
contract's "Pusher extras").

Where it sits: `handlers.pusher` hands `pusher:signin` here; `realtime.pusher_channels`
asks `may_subscribe` before a socket takes a `#server-to-user-*` channel; the HTTP API
(`handlers.pusher_http`) publishes `sendToUser` events on that channel like any app
channel and `terminate` messages beside them.

- Sign-in: `user_data` (a JSON object with a non-empty string `id`) signed with the app
  secret over `socket_id::user::user_data`, either by the app's own backend or by
  `POST /v1/realtime/user-auth`, which makes `user_data` from the API key's user (so an
  API-key client cannot claim another id) and records which key signed it: revoking
  that key ends the connection as it ends its channels. A forged or malformed sign-in
  gets `pusher:error` 4009 and the close that Pusher sends.
- Only a socket signed in as `{id}` may subscribe to `#server-to-user-{id}` (checked in
  `realtime.pusher_channels`); only the server (the signed HTTP API) publishes there.
- Terminating: one message on the user's channel of the app bus, which every process
  with a socket signed in as that user listens to from its sign-in on; each such socket
  gets `pusher:error` 4009 and is closed with 4009 (pusher-js does not reconnect).
"""

from __future__ import annotations

from typing import Any

import orjson

from btsguru.config import Config
from btsguru.realtime.pusher_channels import ConnectionRefused
from btsguru.realtime.pusher_protocol import (
    UNAUTHORIZED,
    USER_ID_MAX_LENGTH,
    PusherProtocolError,
    frame,
    user_auth,
    verify_auth,
)
from btsguru.realtime.pusher_socket import TERMINATE_EVENT, PusherSocket
from btsguru.store.pusher import PusherState

USER_CHANNEL_PREFIX = "#server-to-user-"
SIGNIN_GRANT = "#signin"  # the grant name `/v1/realtime/user-auth` records for a socket


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


def terminate_message(user_id: str) -> dict[str, Any]:
    """What the HTTP API publishes on the user's channel to end the user's sockets."""
    return {"event": TERMINATE_EVENT, "channel": user_channel(user_id)}


class PusherUsers:
    def __init__(self, state: PusherState, config: Config) -> None:
        self.state = state
        self.config = config

    async def signin(self, conn: PusherSocket, data: Any) -> None:
        """`pusher:signin`: `pusher:signin_success`, or `ConnectionRefused` (4009)."""
        if not isinstance(data, dict) or not isinstance(data.get("auth"), str) \
                or not isinstance(data.get("user_data"), str):
            raise PusherProtocolError('pusher:signin needs data {"auth", "user_data"} '
                                      "(strings)", UNAUTHORIZED)
        user_data: str = data["user_data"]
        expected = user_auth(self.config.reverb_app_key,
                             self.config.reverb_app_secret.reveal(), conn.socket_id,
                             user_data)
        if not verify_auth(data["auth"], expected):
            raise ConnectionRefused(UNAUTHORIZED, "Invalid signature: pusher:signin's auth "
                                    "does not sign this user_data for this socket",
                                    "invalid signin")
        user_id = _user_id(user_data)
        if conn.signed_in is not None and conn.signed_in != user_id:
            raise PusherProtocolError("this connection is signed in as another user",
                                      UNAUTHORIZED)
        grant = await self.state.granted(conn.socket_id, SIGNIN_GRANT)
        if grant is not None and str(grant.get("user_id")) == user_id:
            key_id = grant.get("key_id")
            conn.signin_key = (int(grant["user_id"]), int(key_id)) if key_id else None
        if conn.signed_in is None:
            conn.signed_in = user_id
            await self.state.add_listener(user_channel(user_id), conn.on_user_message)
        conn.send(frame("pusher:signin_success", {"user_data": user_data},
                        data_is_json_string=False))

    async def closed(self, conn: PusherSocket) -> None:
        if conn.signed_in is not None:
            await self.state.remove_listener(user_channel(conn.signed_in),
                                             conn.on_user_message)


def _user_id(user_data: str) -> str:
    try:
        value = orjson.loads(user_data)
    except orjson.JSONDecodeError:
        value = None
    user_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(user_id, str) or not user_id or len(user_id) > USER_ID_MAX_LENGTH:
        raise ConnectionRefused(UNAUTHORIZED, "Invalid user_data: a JSON object with an "
                                f"\"id\" string of 1 to {USER_ID_MAX_LENGTH} characters",
                                "invalid user_data")
    return user_id
