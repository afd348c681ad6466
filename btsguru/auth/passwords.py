"""Password hashing for console logins: argon2id through argon2-cffi.

Used by `auth.users` only. Hashing costs tens of milliseconds of CPU on purpose, so
callers on the IOLoop run these functions in a thread.
"""

from __future__ import annotations

from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# argon2-cffi's defaults are RFC 9106's second recommended profile (argon2id, 3 passes,
# 64 MiB, 4 lanes); `needs_rehash` upgrades stored hashes when a release raises them.
# The hasher holds only those parameters: immutable, safe to share between threads.
_HASHER: Final = PasswordHasher()


def hash_password(password: str) -> str:
    """The encoded argon2id hash of `password` (salt and parameters included)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash` (argument order as argon2's and
    Werkzeug's). Never raises for a wrong password or a malformed hash; argon2's
    comparison is constant-time."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether a hash that just verified was made with weaker parameters than today's
    and should be replaced by `hash_password(password)`."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True
