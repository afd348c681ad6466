"""Users: the accounts that own API keys and share a tier's limits.

Beside the flow: the CLI (`users create`) and the console (sign-up, login, the
operators' user list) call this service. E-mail addresses are stored lower-cased, so
`Ann@Example.com` and `ann@example.com` are one user. Passwords are argon2id hashes
(`auth.passwords`), computed in a thread since each costs tens of milliseconds of CPU.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import peewee

from btsguru.auth.passwords import hash_password, needs_rehash, verify_password
from btsguru.db.models import (
    EMAIL_MAX_LENGTH,
    Tier,
    User,
    from_db_time,
    is_storable_text,
    utc_now,
)
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import BadRequest, Conflict, NotFound

PASSWORD_MIN_LENGTH = 8  # NIST SP 800-63B's minimum for a chosen password
PASSWORD_MAX_LENGTH = 1024  # bounds the work one login attempt can ask of argon2
GENERATED_PASSWORD_BYTES = 12  # 96 random bits, 16 URL-safe characters

# Shape only (one @, a dotted domain, no spaces): deliverability is the mail
# server's business, and stricter patterns reject real addresses.
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


@dataclass(frozen=True)
class UserInfo:
    id: int
    email: str
    tier: str
    is_admin: bool
    disabled: bool
    created_at: datetime  # aware UTC


def normalize_email(email: str) -> str:
    """The stored form of `email` (trimmed, lower-cased); `BadRequest` if it is not
    shaped like an address."""
    value = email.strip().lower()
    if not _EMAIL_RE.fullmatch(value) or not value.isprintable():  # no NUL, no controls
        raise BadRequest(f"not an e-mail address: {email.strip()!r}")
    if len(value) > EMAIL_MAX_LENGTH:
        raise BadRequest(f"e-mail address longer than {EMAIL_MAX_LENGTH} characters")
    return value


def check_password(password: str) -> None:
    """`BadRequest` unless `password` is acceptable for an account."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise BadRequest(f"password too short: at least {PASSWORD_MIN_LENGTH} characters")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise BadRequest(f"password too long: at most {PASSWORD_MAX_LENGTH} characters")


class UserService:
    def __init__(self, runner: DatabaseRunner) -> None:
        self._runner = runner
        self._dummy_hash: str | None = None  # for logins to unknown addresses

    async def create_user(self, email: str, password: str | None = None, tier: str = "free",
                          admin: bool = False) -> tuple[UserInfo, str | None]:
        """Create a user; returns it and, when `password` is None, the password that was
        generated for it (shown once). `BadRequest` for a malformed address, a short
        password or an unknown tier; `Conflict` when the address is taken."""
        address = normalize_email(email)
        generated = None
        if password is None:
            password = generated = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        check_password(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        user = await self._runner.write(_create, address, password_hash, tier, admin)
        return user, generated

    async def get_by_email(self, email: str) -> UserInfo | None:
        return await self._runner.read(_get_by_email, email.strip().lower())

    async def get_by_id(self, user_id: int) -> UserInfo | None:
        return await self._runner.read(_get_by_id, user_id)

    async def list_users(self, limit: int = 100, offset: int = 0) -> list[UserInfo]:
        """Users in the order they signed up."""
        return await self._runner.read(_list, limit, offset)

    async def set_tier(self, email: str, tier: str) -> UserInfo:
        """`NotFound` for an unknown user, `BadRequest` for an unknown tier."""
        return await self._runner.write(_set_tier, email.strip().lower(), tier)

    async def set_disabled(self, email: str, disabled: bool) -> UserInfo:
        """A disabled user cannot log in and none of its keys authenticate."""
        return await self._runner.write(_set_flag, email.strip().lower(), "disabled", disabled)

    async def set_admin(self, email: str, admin: bool) -> UserInfo:
        return await self._runner.write(_set_flag, email.strip().lower(), "is_admin", admin)

    async def set_password(self, email: str, password: str) -> UserInfo:
        check_password(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        return await self._runner.write(_set_password_hash, email.strip().lower(),
                                        password_hash)

    async def verify_login(self, email: str, password: str) -> UserInfo | None:
        """The user when `password` is right and the account is enabled, else None.
        Takes as long for an unknown address as for a wrong password, so that timing
        does not tell which addresses have accounts."""
        address = email.strip().lower()
        found = await self._runner.read(_get_credentials, address)
        if len(password) > PASSWORD_MAX_LENGTH:
            return None
        if found is None:
            await asyncio.to_thread(verify_password, await self._dummy(), password)
            return None
        user, password_hash = found
        if not await asyncio.to_thread(verify_password, password_hash, password):
            return None
        if user.disabled:
            return None
        if needs_rehash(password_hash):
            new_hash = await asyncio.to_thread(hash_password, password)
            await self._runner.write(_set_password_hash, address, new_hash)
        return user

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_hex(16))
        return self._dummy_hash


# -- in the database threads --

def _info(row: User, tier_name: str | None = None) -> UserInfo:
    return UserInfo(id=row.id, email=row.email,
                    tier=tier_name if tier_name is not None else row.tier.name,
                    is_admin=bool(row.is_admin), disabled=bool(row.disabled),
                    created_at=from_db_time(row.created_at))


def _users() -> peewee.ModelSelect[User]:
    return User.select(User, Tier).join(Tier)


def _tier(name: str) -> Tier:
    tier = Tier.get_or_none(Tier.name == name) if is_storable_text(name) else None
    if tier is None or tier.name != name:  # MySQL's collations ignore trailing spaces
        known = ", ".join(t.name for t in Tier.select(Tier.name).order_by(Tier.id))
        raise BadRequest(f"unknown tier {name!r}; tiers: {known}")
    return tier


def _by_email(email: str) -> User | None:
    # an address with a NUL was never stored (normalize_email); PostgreSQL would refuse
    # even to compare it
    return _users().where(User.email == email).get_or_none() if is_storable_text(email) else None


def _row(email: str) -> User:
    row = _by_email(email)
    if row is None:
        raise NotFound(f"no user {email}")
    return row


def _create(email: str, password_hash: str, tier: str, admin: bool) -> UserInfo:
    tier_row = _tier(tier)
    if User.select().where(User.email == email).exists():
        raise Conflict(f"user {email} already exists")
    try:
        with User._meta.database.atomic():  # a savepoint: the failure below leaves the
            row = User.create(email=email, password_hash=password_hash, tier=tier_row,
                              is_admin=admin, created_at=utc_now())  # writer usable
    except peewee.IntegrityError:
        # Another process created it between the check and the insert.
        raise Conflict(f"user {email} already exists") from None
    return _info(row, tier_row.name)


def _get_by_email(email: str) -> UserInfo | None:
    row = _by_email(email)
    return None if row is None else _info(row)


def _get_by_id(user_id: int) -> UserInfo | None:
    row = _users().where(User.id == user_id).get_or_none()
    return None if row is None else _info(row)


def _list(limit: int, offset: int) -> list[UserInfo]:
    return [_info(row) for row in _users().order_by(User.id).limit(limit).offset(offset)]


def _get_credentials(email: str) -> tuple[UserInfo, str] | None:
    row = _by_email(email)
    return None if row is None else (_info(row), row.password_hash)


def _set_tier(email: str, tier: str) -> UserInfo:
    row = _row(email)
    tier_row = _tier(tier)
    row.tier = tier_row
    row.save(only=[User.tier])
    return _info(row, tier_row.name)


def _set_flag(email: str, flag: str, value: bool) -> UserInfo:
    row = _row(email)
    setattr(row, flag, value)
    row.save(only=[getattr(User, flag)])
    return _info(row)


def _set_password_hash(email: str, password_hash: str) -> UserInfo:
    row = _row(email)
    row.password_hash = password_hash
    row.save(only=[User.password_hash])
    return _info(row)
