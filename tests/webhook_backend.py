"""A Laravel-like app backend for the Pusher webhook tests, on a free local port: it signs
pusher-js's private and presence channels with the official `pusher` server SDK
(`/auth?user=<id>`), and records the webhooks POSTed to `/hook/<name>`, answering each
name as told: `ok` (200), `fail` (500) or `hang` (no answer until `release()`)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.config import Config
from tests.pusher_node import sdk


@dataclass
class Hit:
    name: str
    headers: dict[str, str]  # names lower-cased, as a Node or PHP backend reads them
    body: bytes
    at: float  # monotonic, when it arrived
    status: int = 0  # what was answered (0 while hanging)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body)["events"])


class _Hook(tornado.web.RequestHandler):
    def initialize(self, backend: Backend) -> None:
        self.backend = backend

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self, name: str) -> None:
        hit = Hit(name, {k.lower(): v for k, v in self.request.headers.get_all()},
                  self.request.body, time.monotonic())
        self.backend.hits.append(hit)
        mode = self.backend.modes.get(name, "ok")
        if mode == "hang":
            await self.backend.released.wait()
        hit.status = 500 if mode == "fail" else 200
        self.set_status(hit.status)
        self.finish()


class _Auth(tornado.web.RequestHandler):
    def initialize(self, backend: Backend) -> None:
        self.backend = backend

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode()).items()}
        user = self.get_query_argument("user")
        command: dict[str, Any] = {"op": "authorizeChannel", "socketId": form["socket_id"],
                                   "channel": form["channel_name"]}
        if form["channel_name"].startswith("presence-"):
            command["presenceData"] = {"user_id": user, "user_info": {"name": user.upper()}}
        self.write(await sdk(self.backend.node, self.backend.app, command))


class Backend:
    def __init__(self, node: Path, config: Config) -> None:
        self.node = node
        self.app = SimpleNamespace(config=config, port=0)  # what `sdk` reads
        self.hits: list[Hit] = []
        self.modes: dict[str, str] = {}
        self.released = asyncio.Event()
        self._server = HTTPServer(tornado.web.Application([
            (r"/hook/([a-z0-9-]+)", _Hook, {"backend": self}),
            (r"/auth", _Auth, {"backend": self})]))
        sockets = bind_sockets(0, "127.0.0.1")
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def auth_url(self, user: str) -> str:
        return f"http://127.0.0.1:{self.port}/auth?user={user}"

    def release(self) -> None:
        self.released.set()

    def answered(self, name: str) -> list[Hit]:
        """The POSTs to `name` answered 2xx, in order of arrival."""
        return [h for h in self.hits if h.name == name and 200 <= h.status < 300]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for h in self.answered(name) for e in h.events]

    async def validate(self, hit: Hit) -> list[dict[str, Any]]:
        """The official SDK's `webhook(...).isValid()` must hold; its `getEvents()`."""
        got = await sdk(self.node, self.app, {"op": "webhook", "headers": hit.headers,
                                              "body": hit.body.decode()})
        assert got["valid"] is True, hit
        return list(got["events"])

    def close(self) -> None:
        self.released.set()
        self._server.stop()


def with_config(config: Config, **fields: Any) -> Config:
    """`config` with other webhook settings (the backend's port is known only now)."""
    return replace(config, **fields)
