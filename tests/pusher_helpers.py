"""Helpers for the Pusher endpoint tests: a raw Pusher client over tornado.websocket, and
signed HTTP API requests as a Pusher server library makes them."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import tornado.websocket

from btsguru.realtime.pusher_protocol import body_md5, http_signature
from tests.realtime_helpers import TIMEOUT_S, Relay, WsClient


@dataclass
class PusherClient(WsClient):
    """A raw Pusher client: the native client's reading (recv, recv_until, closed) with
    Pusher's connect, send and subscribe."""

    socket_id: str = ""

    @classmethod
    async def connect(cls, r: Relay, key: str | None = None, query: str = "protocol=7&client=js"
                      "&version=8.4.0&flash=false", *, established: bool = True) -> PusherClient:
        app_key = key or r.config.reverb_app_key
        url = f"ws://127.0.0.1:{r.port}/app/{app_key}?{query}"
        conn = await asyncio.wait_for(tornado.websocket.websocket_connect(url), TIMEOUT_S)
        client = cls(conn)
        if established:
            hello = await client.recv()
            assert hello is not None and hello["event"] == "pusher:connection_established", hello
            client.socket_id = json.loads(hello["data"])["socket_id"]
        return client

    async def send(self, event: str, data: Any = None, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if channel is not None:
            message["channel"] = channel
        await self.conn.write_message(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.conn.write_message(text)

    async def expect(self, event: str, channel: str | None = None) -> dict[str, Any]:
        got = await self.recv_until(lambda m: m.get("event") == event and
                                    (channel is None or m.get("channel") == channel))
        return got[-1]

    async def subscribe(self, channel: str, auth: str = "", channel_data: str | None = None,
                        ) -> None:
        data: dict[str, Any] = {"channel": channel, "auth": auth}
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send("pusher:subscribe", data)

    def close(self) -> None:
        self.conn.close()


def signed_query(r: Relay, method: str, path: str, body: bytes = b"",
                 params: dict[str, str] | None = None, *, timestamp: int | None = None,
                 secret: str | None = None) -> str:
    query = {"auth_key": r.config.reverb_app_key,
             "auth_timestamp": str(timestamp if timestamp is not None else int(time.time())),
             "auth_version": "1.0", **(params or {})}
    if body:
        query["body_md5"] = body_md5(body)
    query["auth_signature"] = http_signature(
        secret if secret is not None else r.config.reverb_app_secret.reveal(), method, path,
        query)
    return urlencode(query)


async def api(r: Relay, method: str, path: str, payload: Any = None,
              params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
              **sign: Any) -> tuple[int, Any]:
    body = json.dumps(payload).encode() if payload is not None else b""
    url = f"{r.http_url}{path}?{signed_query(r, method, path, body, params, **sign)}"
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=body or None, headers={"Content-Type": "application/json",
                                                     **(headers or {})}) as response:
        return response.status, await response.json(content_type=None)


async def realtime_auth(r: Relay, api_key: str, socket_id: str, channel: str,
                        path: str = "/v1/realtime/auth") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{r.http_url}{path}", data={"socket_id": socket_id, "channel_name": channel},
            headers={"X-API-Key": api_key}) as response:
        return response.status, await response.json(content_type=None)
