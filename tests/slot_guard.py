"""A check that every Lua script, transaction and multi-key command stays in one Redis
Cluster hash slot, run against the code paths of a single Redis.

Redis Cluster refuses a script whose KEYS, a MULTI whose commands or a multi-key command
whose keys span slots (CROSSSLOT). `SlotGuard` patches redis-py's asyncio client for the
length of a test and records every such operation whose keys map to more than one slot
(`redis.crc.key_slot`, the function the cluster client routes with), without stopping
it: the test runs on, and asserts `guard.violations == []` at the end.

What it sees: commands sent on their own (`Redis.execute_command`) and the commands of a
pipeline when it executes (`Pipeline.execute`): per command, EVAL/EVALSHA's KEYS and the
keys of multi-key commands; per transaction pipeline, the keys of all its commands
together. A script that builds key names from ARGV inside Lua is beyond any client-side
check: the Cluster launcher's tests (`tests/redis_cluster.py`) run scripts on a cluster.
Pipelines with `transaction=False` may span slots (the cluster client splits them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio.client import Pipeline, Redis
from redis.crc import key_slot

# Commands whose arguments after the name are all keys.
ALL_KEYS = frozenset({
    "DEL", "UNLINK", "EXISTS", "TOUCH", "MGET", "WATCH", "SINTER", "SUNION", "SDIFF",
    "SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE", "PFCOUNT", "PFMERGE", "RENAME",
    "RENAMENX", "RPOPLPUSH", "SINTERCARD"})
# Commands whose first two arguments are keys.
TWO_KEYS = frozenset({"SMOVE", "LMOVE", "BLMOVE", "COPY", "GEOSEARCHSTORE",
                      "ZRANGESTORE"})
# Blocking pops: every argument but the trailing timeout is a key.
ALL_BUT_LAST = frozenset({"BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"})
# destination, numkeys, keys...
STORE_NUMKEYS = frozenset({"ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"})
# numkeys, keys...
NUMKEYS_FIRST = frozenset({"ZUNION", "ZINTER", "ZDIFF", "ZINTERCARD", "LMPOP", "ZMPOP"})
# name or sha, numkeys, keys..., args...
SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
# Commands with no key at all (a transaction's keys ignore them).
KEYLESS = frozenset({"PUBLISH", "PING", "ECHO", "TIME", "SCRIPT", "MULTI", "EXEC",
                     "DISCARD", "UNWATCH", "INFO", "CLIENT", "SELECT", "DBSIZE", "COMMAND"})


def _name(value: Any) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).upper()


def _encoded(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    return str(key).encode()


def command_keys(args: Sequence[Any]) -> list[bytes]:
    """The keys of one command (its name first), as the cluster would route them."""
    if not args:
        return []
    name, rest = _name(args[0]), list(args[1:])
    if len(name.split()) > 1:  # "SCRIPT LOAD", "CLIENT SETNAME": keyless
        return []
    if name in SCRIPTS:
        count = int(rest[1])
        return [_encoded(k) for k in rest[2:2 + count]]
    if name in ALL_KEYS:
        return [_encoded(k) for k in rest]
    if name in ("MSET", "MSETNX"):
        return [_encoded(k) for k in rest[::2]]
    if name in TWO_KEYS:
        return [_encoded(k) for k in rest[:2]]
    if name in ALL_BUT_LAST:
        return [_encoded(k) for k in rest[:-1]]
    if name in STORE_NUMKEYS:
        return [_encoded(rest[0])] + [_encoded(k) for k in rest[2:2 + int(rest[1])]]
    if name in NUMKEYS_FIRST:
        return [_encoded(k) for k in rest[1:1 + int(rest[0])]]
    if name in KEYLESS or not rest:
        return []
    return [_encoded(rest[0])]  # every other command of this code base: one key, first


@dataclass(frozen=True)
class Violation:
    what: str  # "EVALSHA", "MULTI", "DEL", ...
    keys: tuple[str, ...]
    slots: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.what} spans slots {list(self.slots)}: {list(self.keys)}"


@dataclass
class SlotGuard:
    """What the patched client saw (see the module)."""

    violations: list[Violation] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)  # "EVALSHA", "MULTI", "DEL:2", ...

    def check(self, what: str, keys: Sequence[bytes]) -> None:
        slots = sorted({key_slot(k) for k in keys})
        if len(slots) > 1:
            self.violations.append(Violation(
                what, tuple(k.decode(errors="replace") for k in keys), tuple(slots)))

    def command(self, args: Sequence[Any]) -> None:
        if not args:
            return
        name = _name(args[0])
        keys = command_keys(args)
        if name in SCRIPTS:
            self.seen[name] += 1
            self.check(name, keys)
        elif len(keys) > 1:
            self.seen[f"{name}:{len(keys)}"] += 1
            self.check(name, keys)

    def transaction(self, stack: Sequence[Sequence[Any]]) -> None:
        self.seen["MULTI"] += 1
        keys = [k for args in stack for k in command_keys(args)]
        self.check("MULTI [" + " ".join(_name(a[0]) for a in stack) + "]", keys)

    def assert_clean(self) -> None:
        assert not self.violations, "cross-slot operations:\n" + "\n".join(
            str(v) for v in self.violations)


@contextmanager
def guarding(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlotGuard]:
    """Patch redis-py's asyncio `Redis` and `Pipeline` to report to a `SlotGuard`."""
    guard = SlotGuard()
    execute_command = Redis.execute_command
    execute = Pipeline.execute

    async def checked_command(self: Redis, *args: Any, **options: Any) -> Any:
        guard.command(args)
        return await execute_command(self, *args, **options)

    async def checked_execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        stack = [args for args, _options in self.command_stack]
        for args in stack:
            guard.command(args)
        if (self.is_transaction or self.explicit_transaction) and stack:
            guard.transaction(stack)
        return await execute(self, raise_on_error)

    with monkeypatch.context() as patch:
        patch.setattr(Redis, "execute_command", checked_command)
        patch.setattr(Pipeline, "execute", checked_execute)
        yield guard
