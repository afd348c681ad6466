"""Helpers for the access, rate-limit and usage tests: a migrated SQLite database behind a
runner, the account services, and an `AccessService` over real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from btsguru.auth.access import AccessService
from btsguru.auth.keys import AuthenticatedKey, KeyService, hash_key
from btsguru.auth.tiers import TierService
from btsguru.auth.users import UserService
from btsguru.clock import Clock, SystemClock
from btsguru.config import Config
from btsguru.db import connect_database
from btsguru.db.migrate import migrate
from btsguru.db.models import ApiKey, Tier, utc_now
from btsguru.db.runner import DatabaseRunner
from btsguru.store.redis import RedisStores, open_redis

PASSWORD = "correct horse battery staple"


def migrated_sqlite(tmp_path: Path) -> Iterator[DatabaseRunner]:
    """A migrated SQLite database of its own (free tier 60 per 60 s), for a module's
    `runner` fixture: `yield from migrated_sqlite(tmp_path)`."""
    database = connect_database(f"sqlite:///{tmp_path / 'access.sqlite3'}")
    migrate(database, free_rate=60, free_period_s=60)
    db = DatabaseRunner(database)
    yield db
    db.close()


class CountingKeys(KeyService):
    """The real KeyService, counting the lookups that reach it."""

    def __init__(self, runner: DatabaseRunner) -> None:
        super().__init__(runner)
        self.lookups = 0

    async def authenticate(self, key: str) -> AuthenticatedKey | None:
        self.lookups += 1
        return await super().authenticate(key)


@dataclass
class Node:
    """One "process": its own Redis clients and services over the shared Redis and DB."""

    stores: RedisStores
    keys: CountingKeys
    tiers: TierService
    access: AccessService

    async def close(self) -> None:
        await self.access.stop()
        await self.stores.close()


def open_node(config: Config, runner: DatabaseRunner, clock: Clock | None = None,
              **options: float) -> Node:
    stores = open_redis(config)
    keys = CountingKeys(runner)
    tiers = TierService(runner)
    access = AccessService(stores, keys, tiers, config, clock or SystemClock(), runner,
                           **options)  # type: ignore[arg-type]
    return Node(stores, keys, tiers, access)


@dataclass(frozen=True)
class Account:
    user_id: int
    key_id: int
    key: str

    @property
    def key_hash(self) -> str:
        return hash_key(self.key)


async def make_account(runner: DatabaseRunner, email: str, *, tier: str = "free",
                       scopes: str | None = None, expires_days: int | None = None) -> Account:
    users = UserService(runner)
    user, _ = await users.create_user(email, PASSWORD, tier=tier)
    info, secret = await KeyService(runner).create_key(email, "test", expires_days, scopes)
    return Account(user.id, info.id, secret)


async def add_key(runner: DatabaseRunner, email: str, scopes: str | None = None) -> Account:
    info, secret = await KeyService(runner).create_key(email, "another", None, scopes)
    return Account(info.user_id, info.id, secret)


async def make_tier(runner: DatabaseRunner, name: str, *, burst: int, refill_per_s: float,
                    daily_quota: int | None, raw_proxy: bool = True) -> None:
    def create() -> None:
        Tier.create(name=name, rest_rate=max(1, round(refill_per_s * 60)), rest_period_s=60,
                    rest_burst=burst, rest_refill_per_s=refill_per_s, daily_quota=daily_quota,
                    max_streams=5, max_subscriptions=10, client_messages_per_s=5,
                    raw_proxy=raw_proxy, private_channels=False, client_events=False,
                    updated_at=utc_now())

    await runner.write(create)


async def expire_key(runner: DatabaseRunner, key_id: int) -> None:
    def update() -> None:
        ApiKey.update(expires_at=utc_now() - timedelta(minutes=1)).where(
            ApiKey.id == key_id).execute()

    await runner.write(update)
