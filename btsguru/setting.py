"""One setting: how it is declared (`setting`, a `Config` field with its environment
name, default and help), how its text is parsed (the `parse_*` functions: each takes the
raw string and returns the typed value or raises ValueError), and how a secret is kept
out of logs and reprs (`Secret`).

Where it sits: at the bottom of the configuration, which is below every service.
`config.Config` declares each setting with these and `config.load_config` parses the
environment through them; nothing else imports this module.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import field
from typing import Any
from urllib.parse import urlsplit

from btsguru.sports import SPORTS


class Secret:
    """A setting that must never be printed: `repr` and `str` hide it (Starlette's Secret)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


# -- parsers --


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_secret(raw: str) -> Secret:
    return Secret(raw.strip())


def parse_int(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ValueError(f"expected an integer {bounds}, got {value}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_url(*schemes: str, allow_empty: bool = True) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not value and allow_empty:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            expected = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"expected a URL starting with {expected}, got {mask_url(value)!r}")
        if parts.scheme not in ("memory", "sqlite", "unix") and not parts.hostname:
            raise ValueError(f"expected a URL with a host, got {mask_url(value)!r}")
        return value

    return parse


def parse_redis_url(raw: str) -> str:
    value = parse_url("redis", "rediss", "unix", "memory")(raw)
    parts = urlsplit(value)
    path = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and path and not (path.isdigit() and int(path) <= 15):
        raise ValueError(f"expected a database number 0-15 after the host, got {path!r}")
    return value


def parse_master_key(raw: str) -> Secret:
    """An encryption master key: 32 bytes, base64-encoded (empty: none)."""
    value = raw.strip()
    if not value:
        return Secret("")
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError("expected 32 bytes in base64 (e.g. `openssl rand -base64 32`), "
                         "got text that is not base64") from None
    if len(key) != 32:
        raise ValueError(f"expected 32 bytes in base64 (e.g. `openssl rand -base64 32`), "
                         f"got {len(key)} bytes")
    return Secret(value)


def parse_url_list(*schemes: str) -> Callable[[str], tuple[str, ...]]:
    """A comma list of URLs (empty: none)."""
    one = parse_url(*schemes, allow_empty=False)

    def parse(raw: str) -> tuple[str, ...]:
        return tuple(one(part) for part in raw.split(",") if part.strip())

    return parse


def parse_names(*allowed: str) -> Callable[[str], tuple[str, ...]]:
    """A comma list of names, each one of `allowed` (empty: all of them)."""
    def parse(raw: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in raw.split(",") if part.strip())
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; expected some of "
                             f"{', '.join(allowed)}")
        return names or tuple(allowed)

    return parse


def parse_host(raw: str) -> str:
    value = raw.strip()
    if not value or "/" in value or " " in value:
        raise ValueError(f"expected a host name, got {raw!r}")
    return value


def parse_optional_host(raw: str) -> str:
    return parse_host(raw) if raw.strip() else ""


def parse_addresses(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port[,host:port...]` (an IPv6 host in brackets: `[::1]:26379`); empty: none."""
    addresses: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or "/" in host or " " in host or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            raise ValueError(f"expected host:port[,host:port...], got {item!r}")
        if (host, int(port)) not in addresses:
            addresses.append((host, int(port)))
    return tuple(addresses)


def format_addresses(addresses: tuple[tuple[str, int], ...]) -> str:
    """The inverse of `parse_addresses`, for messages and descriptions."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


def parse_sports(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip().lower() for s in raw.split(",") if s.strip()))
    if not names:
        raise ValueError("expected a comma-separated list of sports, got nothing")
    unknown = [s for s in names if s not in SPORTS]
    if unknown:
        raise ValueError(f"unknown sport {unknown[0]!r}; known: {', '.join(SPORTS)}")
    return names


def mask_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return parts._replace(netloc=netloc).geturl()
    return url


def setting(env: str, default: str, help: str, parse: Callable[[str], Any] = parse_str,
            *, secret: bool = False) -> Any:
    """Declare one setting: its environment name, default (as the text a user would
    write in `.env`) and a line of help."""
    return field(metadata={"env": env, "default": default, "help": help, "parse": parse,
                           "secret": secret})


PORT = parse_int(1, 65535)
DB_INDEX = parse_int(0, 15)
