"""API keys on real databases: the secret is never stored, authentication, revocation."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from btsguru.auth import keys as keys_module
from btsguru.auth.keys import (
    ApiKeyInfo,
    AuthenticatedKey,
    KeyService,
    generate_key,
    hash_key,
    key_prefix,
    parse_scopes,
)
from btsguru.auth.users import UserService
from btsguru.db.models import ApiKey, User
from btsguru.errors import BadRequest, Conflict, NotFound

EMAIL = "keys@example.com"


@pytest.fixture
def services(migrated_db):
    return UserService(migrated_db), KeyService(migrated_db)


async def make_user(users: UserService, email: str = EMAIL) -> None:
    await users.create_user(email, "correct horse battery")


def fixed_keys(monkeypatch, *keys: str) -> None:
    """Make the next create_key calls hand out these secrets, in order."""
    pending = list(keys)
    monkeypatch.setattr(keys_module, "generate_key", lambda: pending.pop(0))


def crafted(start: str) -> str:
    """A valid key that starts with `start`."""
    return start + generate_key()[len(start):]


# -- pure functions --

def test_generated_keys_have_the_documented_shape():
    seen = {generate_key() for _ in range(2000)}
    assert len(seen) == 2000
    for key in seen:
        assert re.fullmatch(r"btg_[0-9A-Za-z]{40}", key)
        assert len(key) == 44
    # Every base62 character turns up: the alphabet is the whole of it.
    assert set("".join(k[4:] for k in seen)) == set(
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_hash_and_prefix():
    key = "btg_" + "a1B2" * 10
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_key(key))
    assert key_prefix(key) == "btg_a1B2a1B2"


def test_parse_scopes():
    assert parse_scopes(None) == ("rest", "raw", "stream", "realtime-auth")
    assert parse_scopes("stream, rest,rest") == ("rest", "stream")
    assert parse_scopes(["realtime-auth"]) == ("realtime-auth",)
    with pytest.raises(BadRequest, match="valid scopes: rest, raw, stream, realtime-auth"):
        parse_scopes("rest,admin")
    with pytest.raises(BadRequest, match="at least one scope"):
        parse_scopes(" , ")


def test_infos_carry_no_secret():
    for cls in (ApiKeyInfo, AuthenticatedKey):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"key", "secret", "key_hash", "hash"}


# -- creating and storing --

async def test_the_secret_is_stored_nowhere(services, migrated_db, db_url):
    users, keys = services
    await make_user(users)
    info, secret = await keys.create_key(EMAIL, name="laptop")
    assert re.fullmatch(r"btg_[0-9A-Za-z]{40}", secret)
    assert info.prefix == secret[:12]

    def dump_everything() -> list[str]:
        database = migrated_db.database
        cells = []
        for table in database.get_tables():
            cursor = database.execute_sql(f"SELECT * FROM {table}")
            cells.extend(str(value) for row in cursor.fetchall() for value in row)
        return cells

    cells = await migrated_db.read(dump_everything)
    assert hash_key(secret) in cells  # the dump does see the key's row
    windows = {secret[i:i + 20] for i in range(len(secret) - 19)}
    for cell in cells:
        assert not any(w in cell for w in windows), "part of the secret is stored"
    if db_url.startswith("sqlite:"):
        path = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert not any(w.encode() in raw for w in windows)


async def test_create_key_validates(services):
    users, keys = services
    with pytest.raises(NotFound, match=r"no user nobody@example\.com"):
        await keys.create_key("nobody@example.com")
    await make_user(users)
    with pytest.raises(BadRequest, match="valid scopes: rest, raw, stream, realtime-auth"):
        await keys.create_key(EMAIL, scopes=["rest", "everything"])
    for days in (0, -1, 1.5, True):
        with pytest.raises(BadRequest, match="expires"):
            await keys.create_key(EMAIL, expires_days=days)
    with pytest.raises(BadRequest, match="key name"):
        await keys.create_key(EMAIL, name="  ")
    assert await keys.list_keys(EMAIL) == []


async def test_create_key_with_scopes_and_expiry(services):
    users, keys = services
    await make_user(users)
    before = datetime.now(UTC).replace(microsecond=0)
    info, secret = await keys.create_key(EMAIL.upper(), name="ci", expires_days=30,
                                         scopes="stream,rest")
    assert info.scopes == ("rest", "stream")
    assert info.name == "ci"
    assert info.expires_at is not None
    assert timedelta(days=30) <= info.expires_at - before <= timedelta(days=30, seconds=5)
    auth = await keys.authenticate(secret)
    assert auth is not None and auth.scopes == frozenset({"rest", "stream"})
    assert auth.expires_at == info.expires_at


async def test_list_keys(services):
    users, keys = services
    with pytest.raises(NotFound):
        await keys.list_keys(EMAIL)
    await make_user(users)
    first, _ = await keys.create_key(EMAIL, name="one")
    second, _ = await keys.create_key(EMAIL, name="two")
    await keys.revoke(first.prefix)
    listed = await keys.list_keys(" Keys@Example.com ")
    assert [k.name for k in listed] == ["one", "two"]
    assert listed[0].revoked_at is not None and listed[1].revoked_at is None
    assert listed[1] == second
    assert all(k.created_at.tzinfo is UTC for k in listed)
    user = await users.get_by_email(EMAIL)
    assert user is not None
    assert await keys.list_user_keys(user.id) == listed


# -- authenticating --

async def test_authenticate(services):
    users, keys = services
    await make_user(users)
    info, secret = await keys.create_key(EMAIL)
    auth = await keys.authenticate(secret)
    user = await users.get_by_email(EMAIL)
    assert user is not None
    assert auth == AuthenticatedKey(key_id=info.id, user_id=user.id, prefix=secret[:12],
                                    tier="free",
                                    scopes=frozenset({"rest", "raw", "stream", "realtime-auth"}),
                                    expires_at=None)
    await users.set_tier(EMAIL, "pro")
    auth = await keys.authenticate(secret)
    assert auth is not None and auth.tier == "pro"


async def test_unknown_and_malformed_keys_fail(services):
    users, keys = services
    await make_user(users)
    _, secret = await keys.create_key(EMAIL)
    other = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for candidate in (other, secret.lower() if secret != secret.lower() else other,
                      secret[:-1], secret + "x", "", "btg_", " " + secret):
        assert await keys.authenticate(candidate) is None


async def test_revoked_expired_and_disabled_fail(services, migrated_db):
    users, keys = services
    await make_user(users)
    revoked, revoked_secret = await keys.create_key(EMAIL, name="revoked")
    expired, expired_secret = await keys.create_key(EMAIL, name="expired", expires_days=1)
    _, live_secret = await keys.create_key(EMAIL, name="live")
    await keys.revoke(revoked.prefix)

    def expire() -> None:
        ApiKey.update(expires_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
                      ).where(ApiKey.id == expired.id).execute()

    await migrated_db.write(expire)
    assert await keys.authenticate(revoked_secret) is None
    assert await keys.authenticate(expired_secret) is None
    assert await keys.authenticate(live_secret) is not None
    await users.set_disabled(EMAIL, True)
    assert await keys.authenticate(live_secret) is None
    await users.set_disabled(EMAIL, False)
    assert await keys.authenticate(live_secret) is not None


async def test_touch_last_used(services):
    users, keys = services
    await make_user(users)
    a, _ = await keys.create_key(EMAIL, name="a")
    await keys.create_key(EMAIL, name="b")
    # in another zone and with microseconds, which MariaDB's DATETIME would truncate,
    # MySQL's round and PostgreSQL and SQLite keep: stored as whole UTC seconds on each
    when = datetime(2024, 8, 16, 22, 31, 7, 999_999, tzinfo=timezone(timedelta(hours=2)))
    await keys.touch_last_used([a.id, a.id], at=when)
    await keys.touch_last_used([])
    by_name = {k.name: k for k in await keys.list_keys(EMAIL)}
    assert by_name["a"].last_used_at == datetime(2024, 8, 16, 20, 31, 7, tzinfo=UTC)
    assert by_name["b"].last_used_at is None


# -- revoking by prefix --

async def test_revoke_by_prefix_lengths(services, monkeypatch):
    users, keys = services
    await make_user(users)
    secrets_ = [crafted("btg_Aaa"), crafted("btg_Bbb"), crafted("btg_Ccc")]
    fixed_keys(monkeypatch, *secrets_)
    for _ in secrets_:
        await keys.create_key(EMAIL)
    # 6, 12 and 14 characters (the contract's bounds and the stored length).
    assert (await keys.revoke(secrets_[0][:6])).prefix == secrets_[0][:12]
    assert (await keys.revoke(secrets_[1][:12])).prefix == secrets_[1][:12]
    assert (await keys.revoke(secrets_[2][:14])).prefix == secrets_[2][:12]
    for secret in secrets_:
        assert await keys.authenticate(secret) is None


async def test_revoke_rejects_bad_lengths(services):
    users, keys = services
    await make_user(users)
    _, secret = await keys.create_key(EMAIL)
    with pytest.raises(BadRequest, match="6 to 14 characters, got 5"):
        await keys.revoke(secret[:5])
    with pytest.raises(BadRequest, match="6 to 14 characters, got 15"):
        await keys.revoke(secret[:15])
    with pytest.raises(BadRequest, match="got 44"):
        await keys.revoke(secret)
    assert await keys.authenticate(secret) is not None


async def test_revoke_rejects_what_no_key_starts_with(services):
    users, keys = services
    await make_user(users)
    _, secret = await keys.create_key(EMAIL)
    # a NUL (which PostgreSQL refuses in text) or LIKE's wildcards are no key's start
    for prefix in (secret[:8] + "\x00", "btg_%%%%", secret[:6] + " x", "btg_é12"):
        with pytest.raises(BadRequest, match="letters, digits and _ only"):
            await keys.revoke(prefix)
    assert await keys.authenticate(secret) is not None


async def test_a_nul_in_an_address_finds_no_user(services):
    users, keys = services
    await make_user(users)
    with pytest.raises(NotFound):
        await keys.create_key(EMAIL + "\x00")
    with pytest.raises(NotFound):
        await keys.list_keys("\x00" + EMAIL)


async def test_revoke_unknown_ambiguous_and_twice(services, monkeypatch):
    users, keys = services
    await make_user(users)
    # Two keys share 7 characters; a third differs from the first only in case, which
    # a case-insensitive collation (MySQL's default) must not confuse.
    first, second, third = crafted("btg_Xy9a"), crafted("btg_Xy9b"), crafted("btg_xY9A")
    fixed_keys(monkeypatch, first, second, third)
    for _ in range(3):
        await keys.create_key(EMAIL)
    with pytest.raises(NotFound, match="no active key"):
        await keys.revoke("btg_zzzz")
    with pytest.raises(Conflict, match=r"ambiguous prefix btg_Xy9: 2 active keys.*more characters"):
        await keys.revoke("btg_Xy9")
    revoked = await keys.revoke(first[:8])
    assert revoked.prefix == first[:12] and revoked.revoked_at is not None
    # With the first revoked, the short prefix is no longer ambiguous.
    assert (await keys.revoke("btg_Xy9")).prefix == second[:12]
    with pytest.raises(NotFound, match="already revoked"):
        await keys.revoke(first[:12])
    assert await keys.authenticate(third) is not None
    assert (await keys.revoke("btg_xY9")).prefix == third[:12]


async def test_revoke_limited_to_a_user(services, monkeypatch):
    users, keys = services
    await make_user(users)
    await make_user(users, "other@example.com")
    mine, theirs = crafted("btg_Qq1a"), crafted("btg_Qq1b")
    fixed_keys(monkeypatch, mine, theirs)
    await keys.create_key(EMAIL)
    await keys.create_key("other@example.com")
    me = await users.get_by_email(EMAIL)
    assert me is not None
    with pytest.raises(NotFound):
        await keys.revoke(theirs[:12], user_id=me.id)
    assert (await keys.revoke("btg_Qq1", user_id=me.id)).prefix == mine[:12]
    assert await keys.authenticate(theirs) is not None


async def test_deleting_a_user_deletes_its_keys(services, migrated_db):
    users, keys = services
    await make_user(users)
    await keys.create_key(EMAIL)

    def delete_user() -> int:
        User.delete().where(User.email == EMAIL).execute()
        return ApiKey.select().count()

    assert await migrated_db.write(delete_user) == 0
