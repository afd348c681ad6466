"""How a Redis node's answer or failure is said in one line, for the Sentinel and Cluster
start-up errors, `/readyz` and the ops page (`store.sentinel`, `store.cluster`)."""

from __future__ import annotations

import os
import re
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError


def as_text(value: Any) -> str:
    """A reply field (bytes from the wire, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def node_failure(exc: BaseException, timeout_s: float) -> str:
    """A node's failure in a few words: redis-py's connect errors repeat the address,
    which the caller names itself; `timeout_s` is the wait that ran out."""
    text = one_line(exc)
    found = re.match(r"Error (\d+) connecting", text)
    if found:
        return os.strerror(int(found.group(1))).lower()
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return f"no answer within {timeout_s:g} s"
    return text or type(exc).__name__
