"""Users and passwords on real databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher

from btsguru.auth.passwords import hash_password, needs_rehash, verify_password
from btsguru.auth.users import UserInfo, UserService, normalize_email
from btsguru.db.models import User
from btsguru.errors import BadRequest, Conflict, NotFound

PASSWORD = "correct horse battery"


@pytest.fixture
def users(migrated_db):
    return UserService(migrated_db)


# -- passwords --

def test_password_hashing():
    stored = hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert stored != hash_password(PASSWORD)  # salted
    assert verify_password(stored, PASSWORD) is True
    assert verify_password(stored, PASSWORD + " ") is False
    assert verify_password("not a hash", PASSWORD) is False
    assert needs_rehash(stored) is False
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    assert verify_password(weak, PASSWORD) is True
    assert needs_rehash(weak) is True


def test_normalize_email():
    assert normalize_email("  Ann.Lee+btg@Example.COM ") == "ann.lee+btg@example.com"
    for bad in ("", "ann", "ann@", "@example.com", "ann@example", "a b@example.com",
                "ann@@example.com", "ann@example..com", "ann@.example.com"):
        with pytest.raises(BadRequest, match="not an e-mail address"):
            normalize_email(bad)
    with pytest.raises(BadRequest, match="longer than 191"):
        normalize_email("a" * 180 + "@example.com")
    for control in ("ann\x00@example.com", "ann\x07@example.com", "ann@exam\x00ple.com"):
        with pytest.raises(BadRequest, match="not an e-mail address"):
            normalize_email(control)


# -- the service --

async def test_create_user_and_read_it_back(users):
    user, generated = await users.create_user("  Ann@Example.COM ", PASSWORD, tier="pro",
                                              admin=True)
    assert generated is None
    assert user.email == "ann@example.com"
    assert (user.tier, user.is_admin, user.disabled) == ("pro", True, False)
    assert user.created_at.tzinfo is UTC
    assert abs(user.created_at - datetime.now(UTC)) < timedelta(seconds=10)
    assert await users.get_by_email("ANN@example.com") == user
    assert await users.get_by_id(user.id) == user
    assert await users.get_by_email("bob@example.com") is None
    assert await users.get_by_id(user.id + 1000) is None
    assert await users.list_users() == [user]


async def test_duplicate_email_is_a_conflict(users):
    await users.create_user("ann@example.com", PASSWORD)
    with pytest.raises(Conflict, match=r"^user ann@example\.com already exists$"):
        await users.create_user("ANN@example.com ", "another password")
    assert len(await users.list_users()) == 1


async def test_addresses_are_compared_exactly(users):
    # MySQL's default collation ignores accents and case: josé@ would be jose@ there
    jose, _ = await users.create_user("jose@example.com", PASSWORD)
    jose_accented, _ = await users.create_user("josé@example.com", PASSWORD)
    assert jose.id != jose_accented.id
    assert await users.get_by_email("JOSÉ@example.com") == jose_accented
    assert await users.get_by_email("jose@example.com") == jose
    assert await users.verify_login("josé@example.com", PASSWORD) == jose_accented
    strasse, _ = await users.create_user("strasse@example.com", PASSWORD)
    assert (await users.create_user("straße@example.com", PASSWORD))[0].id != strasse.id
    assert len(await users.list_users()) == 4


async def test_a_nul_in_an_address_finds_nobody(users):
    # PostgreSQL refuses NUL in text outright; the others would look it up
    await users.create_user("ann@example.com", PASSWORD)
    assert await users.get_by_email("ann\x00@example.com") is None
    assert await users.verify_login("ann@example.com\x00", PASSWORD) is None
    with pytest.raises(NotFound):
        await users.set_tier("ann@example.com\x00", "pro")
    with pytest.raises(BadRequest, match="unknown tier"):
        await users.set_tier("ann@example.com", "pro\x00")
    with pytest.raises(BadRequest, match="not an e-mail address"):
        await users.create_user("ann\x00@example.com", PASSWORD)
    assert (await users.get_by_email("ann@example.com")).tier == "free"


async def test_create_user_validates(users):
    with pytest.raises(BadRequest, match="not an e-mail address"):
        await users.create_user("not-an-address", PASSWORD)
    with pytest.raises(BadRequest, match="at least 8 characters"):
        await users.create_user("ann@example.com", "short")
    with pytest.raises(BadRequest, match="unknown tier 'gold'; tiers: free, pro, enterprise"):
        await users.create_user("ann@example.com", PASSWORD, tier="gold")
    assert await users.list_users() == []


async def test_generated_password(users):
    user, generated = await users.create_user("gen@example.com")
    assert generated is not None and len(generated) >= 16
    assert user.tier == "free" and not user.is_admin
    assert await users.verify_login("gen@example.com", generated) == user
    _, other = await users.create_user("gen2@example.com")
    assert other != generated


async def test_password_is_stored_hashed(users, migrated_db):
    await users.create_user("ann@example.com", PASSWORD)

    def raw_row() -> tuple:
        cursor = migrated_db.database.execute_sql("SELECT * FROM users")
        return cursor.fetchone()

    row = await migrated_db.read(raw_row)
    assert not any(PASSWORD in str(value) for value in row)
    assert any(str(value).startswith("$argon2id$") for value in row)


async def test_verify_login(users):
    user, _ = await users.create_user("ann@example.com", PASSWORD)
    assert await users.verify_login(" Ann@Example.com", PASSWORD) == user
    assert await users.verify_login("ann@example.com", PASSWORD.upper()) is None
    assert await users.verify_login("nobody@example.com", PASSWORD) is None
    assert await users.verify_login("ann@example.com", "x" * 5000) is None
    disabled = await users.set_disabled("ann@example.com", True)
    assert disabled.disabled is True
    assert await users.verify_login("ann@example.com", PASSWORD) is None
    await users.set_disabled("ann@example.com", False)
    assert await users.verify_login("ann@example.com", PASSWORD) is not None


async def test_login_upgrades_a_weak_hash(users, migrated_db):
    await users.create_user("ann@example.com", PASSWORD)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    await migrated_db.write(
        lambda: User.update(password_hash=weak).where(User.email == "ann@example.com").execute())
    assert await users.verify_login("ann@example.com", PASSWORD) is not None
    stored = await migrated_db.read(lambda: User.get(User.email == "ann@example.com").password_hash)
    assert stored != weak
    assert needs_rehash(stored) is False
    assert verify_password(stored, PASSWORD)


async def test_set_tier_admin_and_password(users):
    await users.create_user("ann@example.com", PASSWORD)
    assert (await users.set_tier("ANN@example.com", "enterprise")).tier == "enterprise"
    assert (await users.get_by_email("ann@example.com")).tier == "enterprise"
    with pytest.raises(BadRequest, match="unknown tier"):
        await users.set_tier("ann@example.com", "platinum")
    for inexact in ("PRO", "pro "):  # tier names are exact too
        with pytest.raises(BadRequest, match=f"unknown tier '{inexact}'"):
            await users.set_tier("ann@example.com", inexact)
    with pytest.raises(NotFound, match=r"no user bob@example\.com"):
        await users.set_tier("bob@example.com", "pro")
    assert (await users.set_admin("ann@example.com", True)).is_admin is True
    await users.set_password("ann@example.com", "a brand new password")
    assert await users.verify_login("ann@example.com", PASSWORD) is None
    assert isinstance(await users.verify_login("ann@example.com", "a brand new password"),
                      UserInfo)
    with pytest.raises(BadRequest, match="too short"):
        await users.set_password("ann@example.com", "1234567")


async def test_the_operators_directory_finds_users_alike_on_every_engine(users, migrated_db):
    from btsguru.console.directory import UserDirectory

    directory = UserDirectory(migrated_db)
    for email in ("ann@example.com", "bob@example.com", "ann.b@other.org"):
        await users.create_user(email, "a-long-password")
    page = await directory.search("ANN")
    assert [row.user.email for row in page.rows] == ["ann@example.com", "ann.b@other.org"]
    assert page.total == 2
    # a NUL in the search box is no match (PostgreSQL refuses NUL in text: not a 500)
    page = await directory.search("ann\x00")
    assert (page.rows, page.total) == ([], 0)
