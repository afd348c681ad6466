"""API keys: creating, listing, revoking and authenticating them.

Beside the flow: the base handler authenticates every `/v1` request and stream with
`KeyService.authenticate`; the CLI and the console create, list and revoke keys.

A key is `btg_` and 40 base62 characters from `secrets` (238 random bits, 44
characters). Only its SHA-256 is stored: a key is far too random to guess, so a slow
salted hash would buy nothing and cost every request (GitHub's tokens and Laravel
Sanctum do the same). The first 12 characters (`btg_` + 8) are stored as the key's
`prefix`, for people to tell keys apart and to revoke one. The secret is returned
once, by `create_key`, and never logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from btsguru.db.models import (
    KEY_SCOPES,
    ApiKey,
    Tier,
    User,
    from_db_time,
    is_storable_text,
    to_db_time,
    utc_now,
)
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import BadRequest, Conflict, NotFound

KEY_PREFIX = "btg_"  # says what the string is, and lets secret scanners find leaked keys
KEY_RANDOM_CHARS = 40
KEY_LENGTH = len(KEY_PREFIX) + KEY_RANDOM_CHARS  # 44
STORED_PREFIX_LENGTH = 12  # "btg_" and 8 random characters: 47 bits, to tell keys apart
# The contract: a prefix given to revoke is at least 6 characters and at most a third
# of the key, so that it can never give away enough of the secret to matter.
REVOKE_PREFIX_MIN = 6
REVOKE_PREFIX_MAX = KEY_LENGTH // 3  # 14
KEY_NAME_MAX = 100
MAX_EXPIRES_DAYS = 36_500  # a century: longer is "never", which is expires_days=None

_ALPHABET = string.digits + string.ascii_letters  # base62
_KEY_RE = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{KEY_RANDOM_CHARS}}}")
_PREFIX_RE = re.compile(r"[0-9A-Za-z_]+")  # what the start of a key can hold


def generate_key() -> str:
    """A new secret key: `btg_` and 40 base62 characters."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(KEY_RANDOM_CHARS))


def hash_key(key: str) -> str:
    """What is stored for `key`: the SHA-256 of its UTF-8 bytes, in lower-case hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """The visible part of `key` that is stored beside its hash."""
    return key[:STORED_PREFIX_LENGTH]


def parse_scopes(scopes: Iterable[str] | str | None) -> tuple[str, ...]:
    """Validate scopes (an iterable, or comma-separated text); None means all of them.
    Returns them deduplicated in the canonical order; `BadRequest` for an unknown one."""
    if scopes is None:
        return KEY_SCOPES
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    wanted = {s.strip().lower() for s in items if s.strip()}
    unknown = sorted(wanted - set(KEY_SCOPES))
    if unknown:
        raise BadRequest(f"unknown scope {unknown[0]!r}; valid scopes: {', '.join(KEY_SCOPES)}")
    if not wanted:
        raise BadRequest(f"give at least one scope; valid scopes: {', '.join(KEY_SCOPES)}")
    return tuple(s for s in KEY_SCOPES if s in wanted)


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: never the secret nor its hash. Times are aware UTC."""

    id: int
    user_id: int
    prefix: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime) -> bool:
        """Not revoked and not expired at `now` (aware)."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class AuthenticatedKey:
    """A key that authenticated: whose it is and what it may do."""

    key_id: int
    user_id: int
    prefix: str  # safe to log, unlike the key
    tier: str
    scopes: frozenset[str]
    expires_at: datetime | None  # aware UTC


class KeyService:
    def __init__(self, runner: DatabaseRunner) -> None:
        self._runner = runner

    async def create_key(self, email: str, name: str = "default",
                         expires_days: int | None = None,
                         scopes: Iterable[str] | str | None = None) -> tuple[ApiKeyInfo, str]:
        """Create a key for the user `email`; returns its description and the secret,
        which is not stored and cannot be shown again. `NotFound` for an unknown user,
        `BadRequest` for a bad name, expiry (whole days, at least 1) or scope."""
        name = name.strip()
        if not name or len(name) > KEY_NAME_MAX or not name.isprintable():
            raise BadRequest(f"a key name is 1 to {KEY_NAME_MAX} printable characters")
        if expires_days is not None and (isinstance(expires_days, bool)
                                         or not isinstance(expires_days, int)
                                         or not 1 <= expires_days <= MAX_EXPIRES_DAYS):
            raise BadRequest(f"expires: a whole number of days from 1 to {MAX_EXPIRES_DAYS}, "
                             f"got {expires_days!r}")
        scope_list = parse_scopes(scopes)
        secret = generate_key()
        info = await self._runner.write(_create, email.strip().lower(), name, expires_days,
                                        scope_list, secret)
        return info, secret

    async def list_keys(self, email: str) -> list[ApiKeyInfo]:
        """Every key of the user `email`, revoked ones included, oldest first;
        `NotFound` for an unknown user."""
        return await self._runner.read(_list_by_email, email.strip().lower())

    async def list_user_keys(self, user_id: int) -> list[ApiKeyInfo]:
        """Every key of user `user_id`, oldest first (empty for an unknown user)."""
        return await self._runner.read(_list_by_user, user_id)

    async def revoke(self, prefix: str, *, user_id: int | None = None) -> ApiKeyInfo:
        """Revoke the one unrevoked key that starts with `prefix` (6 to 14 of its first
        characters; only 12 are stored, so the first 12 decide). With `user_id`, only
        that user's keys are candidates (the console). `BadRequest` for a prefix of
        the wrong length, `NotFound` when no unrevoked key matches, `Conflict` when
        more than one does."""
        prefix = prefix.strip()
        if not REVOKE_PREFIX_MIN <= len(prefix) <= REVOKE_PREFIX_MAX:
            raise BadRequest(f"a key prefix is the key's first {REVOKE_PREFIX_MIN} to "
                             f"{REVOKE_PREFIX_MAX} characters, got {len(prefix)}")
        if not _PREFIX_RE.fullmatch(prefix):
            raise BadRequest("a key prefix is the start of a key: letters, digits and _ only")
        return await self._runner.write(_revoke, prefix[:STORED_PREFIX_LENGTH], user_id)

    async def authenticate(self, key: str) -> AuthenticatedKey | None:
        """The key's owner and rights, or None for a key that is unknown, revoked,
        expired or whose user is disabled."""
        if not _KEY_RE.fullmatch(key):
            return None  # not one of ours: no need to ask the database
        return await self._runner.read(_authenticate, hash_key(key))

    async def active_key_ids(self, key_ids: Iterable[int]) -> set[int]:
        """Which of `key_ids` would still authenticate (not revoked, not expired, their
        user enabled): one query, for re-checking the keys of open streams."""
        ids = sorted(set(key_ids))
        return await self._runner.read(_active_ids, ids) if ids else set()

    async def touch_last_used(self, key_ids: Iterable[int],
                              at: datetime | None = None) -> None:
        """Record that these keys were used (at `at`, default now); callers batch this
        off the request path."""
        ids = sorted(set(key_ids))
        if ids:
            when = utc_now() if at is None else to_db_time(at)
            await self._runner.write(_touch, ids, when)


# -- in the database threads --

def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id, user_id=row.user_id, prefix=row.prefix, name=row.name,
        scopes=tuple(s for s in row.scopes.split(",") if s),
        created_at=from_db_time(row.created_at),
        expires_at=_from_db(row.expires_at), last_used_at=_from_db(row.last_used_at),
        revoked_at=_from_db(row.revoked_at),
    )


def _from_db(value: datetime | None) -> datetime | None:
    return None if value is None else from_db_time(value)


def _user_id(email: str) -> int:
    user = User.get_or_none(User.email == email) if is_storable_text(email) else None
    if user is None:
        raise NotFound(f"no user {email}")
    return user.id


def _create(email: str, name: str, expires_days: int | None, scopes: tuple[str, ...],
            secret: str) -> ApiKeyInfo:
    now = utc_now()
    row = ApiKey.create(
        user=_user_id(email), name=name, prefix=key_prefix(secret), key_hash=hash_key(secret),
        scopes=",".join(scopes), created_at=now,
        expires_at=None if expires_days is None else now + timedelta(days=expires_days),
    )
    return _info(row)


def _list_by_email(email: str) -> list[ApiKeyInfo]:
    return _list_by_user(_user_id(email))


def _list_by_user(user_id: int) -> list[ApiKeyInfo]:
    query = ApiKey.select().where(ApiKey.user == user_id).order_by(ApiKey.created_at, ApiKey.id)
    return [_info(row) for row in query]


def _revoke(prefix: str, user_id: int | None) -> ApiKeyInfo:
    # peewee's startswith ignores case (ILIKE on PostgreSQL, SQLite's LIKE), while
    # base62 does not: the query finds candidates and the comparison below decides.
    query = ApiKey.select().where(ApiKey.prefix.startswith(prefix))
    if user_id is not None:
        query = query.where(ApiKey.user == user_id)
    matches = [row for row in query if row.prefix.startswith(prefix)]
    live = [row for row in matches if row.revoked_at is None]
    if not live:
        already = " (a matching key is already revoked)" if matches else ""
        raise NotFound(f"no active key starts with {prefix}{already}")
    if len(live) > 1:
        raise Conflict(f"ambiguous prefix {prefix}: {len(live)} active keys start with it; "
                       "give more characters")
    row = live[0]
    row.revoked_at = utc_now()
    row.save(only=[ApiKey.revoked_at])
    return _info(row)


def _authenticate(digest: str) -> AuthenticatedKey | None:
    row = (ApiKey.select(ApiKey, User, Tier).join(User).join(Tier)
           .where(ApiKey.key_hash == digest).get_or_none())
    if row is None or row.key_hash != digest or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utc_now():
        return None
    user = row.user
    if user.disabled:
        return None
    return AuthenticatedKey(
        key_id=row.id, user_id=user.id, prefix=row.prefix, tier=user.tier.name,
        scopes=frozenset(s for s in row.scopes.split(",") if s),
        expires_at=_from_db(row.expires_at),
    )


def _active_ids(ids: list[int]) -> set[int]:
    now = utc_now()
    query = (ApiKey.select(ApiKey.id).join(User)
             .where(ApiKey.id.in_(ids), ApiKey.revoked_at.is_null(),
                    ApiKey.expires_at.is_null() | (ApiKey.expires_at > now),
                    User.disabled == False))  # noqa: E712 - peewee builds SQL from ==
    return {row.id for row in query}


def _touch(ids: list[int], when: datetime) -> None:
    ApiKey.update(last_used_at=when).where(ApiKey.id.in_(ids)).execute()
