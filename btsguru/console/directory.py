"""The operators' user directory: search users by e-mail, page through them, count
their keys.

Beside the flow: `handlers.ops` lists and searches users here; changes go through
`auth.users.UserService` (tier, disabled), so the rules for a change live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import peewee

from btsguru.auth.users import UserInfo
from btsguru.db.models import ApiKey, Tier, User, from_db_time, is_storable_text
from btsguru.db.runner import DatabaseRunner

SEARCH_MAX_LENGTH = 254  # an e-mail address's longest


@dataclass(frozen=True)
class UserRow:
    user: UserInfo
    active_keys: int


@dataclass(frozen=True)
class UserPage:
    rows: list[UserRow]
    total: int  # matching users, all pages
    offset: int
    limit: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.rows) < self.total


class UserDirectory:
    def __init__(self, runner: DatabaseRunner) -> None:
        self._runner = runner

    async def search(self, query: str = "", *, limit: int = 50, offset: int = 0) -> UserPage:
        """Users whose e-mail contains `query` (case-insensitive; empty: everyone), in
        sign-up order."""
        text = query.strip().lower()[:SEARCH_MAX_LENGTH]
        if not is_storable_text(text):  # no e-mail holds a NUL; PostgreSQL refuses one
            return UserPage(rows=[], total=0, limit=max(1, limit), offset=max(0, offset))
        return await self._runner.read(_search, text, max(1, limit), max(0, offset))


# -- in the database threads --

def _search(text: str, limit: int, offset: int) -> UserPage:
    where = User.email.contains(text) if text else peewee.SQL("1 = 1")
    total = User.select().where(where).count()
    query = (User.select(User, Tier).join(Tier).where(where)
             .order_by(User.id).limit(limit).offset(offset))
    users = list(query)
    counts: dict[int, int] = {}
    if users:
        active = (ApiKey.select(ApiKey.user, peewee.fn.COUNT(ApiKey.id))
                  .where(ApiKey.user.in_([u.id for u in users]), ApiKey.revoked_at.is_null())
                  .group_by(ApiKey.user))
        counts = {int(user_id): int(n) for user_id, n in cast(Iterable[tuple[int, int]],
                                                              active.tuples())}
    rows = [UserRow(UserInfo(id=u.id, email=u.email, tier=u.tier.name,
                             is_admin=bool(u.is_admin), disabled=bool(u.disabled),
                             created_at=from_db_time(u.created_at)),
                    counts.get(u.id, 0)) for u in users]
    return UserPage(rows, total, offset, limit)
