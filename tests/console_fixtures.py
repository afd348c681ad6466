"""Helpers for the console tests: the whole app on a real socket over real Redis and
SQLite, and a small browser-like client (cookies, the XSRF token, form posts)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from typing import Any

import aiohttp
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from btsguru.app import Services, make_app, open_services
from btsguru.config import Config
from btsguru.db import close_database, connect_database
from btsguru.db.migrate import migrate
from tests.conftest import make_test_config, purge_redis_prefix

PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "ops@example.com"


@dataclass
class Page:
    status: int
    url: str
    text: str
    headers: Any

    def has(self, fragment: str) -> bool:
        return fragment in self.text

    def find(self, pattern: str) -> str:
        match = re.search(pattern, self.text, re.S)
        assert match, f"{pattern!r} not in page {self.url} ({self.status}):\n{self.text[:3000]}"
        return unescape(match.group(1))


class Client:
    """One browser: its own cookie jar."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    def xsrf(self) -> str:
        for cookie in self.session.cookie_jar:
            if cookie.key == "_xsrf":
                return cookie.value
        raise AssertionError("no _xsrf cookie yet: GET a page first")

    def cookie(self, name: str) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None

    async def get(self, path: str, *, headers: dict[str, str] | None = None,
                  follow: bool = True) -> Page:
        async with self.session.get(self.base + path, headers=headers,
                                    allow_redirects=follow) as resp:
            return Page(resp.status, str(resp.url), await resp.text(), resp.headers)

    async def post(self, path: str, data: dict[str, str] | None = None, *,
                   xsrf: bool = True, headers: dict[str, str] | None = None,
                   follow: bool = True) -> Page:
        form = dict(data or {})
        if xsrf:
            if self.cookie("_xsrf") is None:
                await self.get("/console/login")
            form["_xsrf"] = self.xsrf()
        async with self.session.post(self.base + path, data=form, headers=headers,
                                     allow_redirects=follow) as resp:
            return Page(resp.status, str(resp.url), await resp.text(), resp.headers)

    async def signup(self, email: str, password: str = PASSWORD) -> Page:
        await self.get("/console/signup")
        return await self.post("/console/signup", {"email": email, "password": password})

    async def login(self, email: str, password: str = PASSWORD) -> Page:
        await self.get("/console/login")
        return await self.post("/console/login", {"email": email, "password": password})

    async def create_key(self, name: str) -> tuple[Page, str]:
        page = await self.post("/console/keys", {"name": name})
        return page, page.find(r'id="new-secret"[^>]*value="([^"]+)"')


@dataclass
class Console:
    url: str
    services: Services
    config: Config
    clients: list[Client]

    def client(self) -> Client:
        client = Client(self.url)
        self.clients.append(client)
        return client

    async def admin(self) -> Client:
        await self.services.users.create_user(ADMIN_EMAIL, PASSWORD, admin=True)
        client = self.client()
        page = await client.login(ADMIN_EMAIL)
        assert page.status == 200, page.text
        return client


def migrate_file(config: Config) -> None:
    database = connect_database(config.database_url)
    migrate(database)
    close_database(database)


@contextlib.asynccontextmanager
async def console_app(tmp_path: Any, config: Config | None = None, *,
                      background: bool = False, pollers: bool = False,
                      **env: str) -> AsyncIterator[Console]:
    """The app on an ephemeral port; `background` starts the services' own tasks (usage
    flush, the hub), `pollers` the pollers too (point the config at a simulator)."""
    config = config or make_test_config(tmp_path, **env)
    migrate_file(config)
    try:
        async with open_services(config) as s:
            if background or pollers:
                s.start_background()
            if pollers:
                await s.pollers.start()
            server = HTTPServer(make_app(s), xheaders=True)
            sockets = bind_sockets(0, "127.0.0.1")
            server.add_sockets(sockets)
            console = Console(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", s, config, [])
            try:
                yield console
            finally:
                for client in console.clients:
                    await client.close()
                server.stop()
    finally:
        purge_redis_prefix(config)
