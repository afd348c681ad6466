"""Tape replay: answer upstream requests from recorded responses (`simulate --tape`).

Where it sits: used by `server` instead of `api` when a tape is loaded; authentication,
quota and faults still apply around it. A tape is JSON Lines, one recorded response a
line: `{"sport", "path", "params", "status", "headers", "body"}` (CONTRACT section 7).
Successive requests for the same (sport, path, params) get that key's lines in order,
the last one repeating; a line with `"params": null` answers any query on its sport and
path that has no exact line (its own lines in order as well).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from btsguru.errors import ConfigError
from btsguru.sports import SPORTS

# Headers of the recording that would lie about this response: its framing, and the
# budget, which the simulator counts itself.
_DROPPED_HEADERS = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
    "date", "x-ratelimit-requests-limit", "x-ratelimit-requests-remaining",
    "x-ratelimit-requests-reset", "x-ratelimit-limit", "x-ratelimit-remaining",
    "x-ratelimit-reset",
})

TapeKey = tuple[str, str, tuple[tuple[str, str], ...] | None]


@dataclass(frozen=True, slots=True)
class TapeEntry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _params_key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), v if isinstance(v, str) else orjson.dumps(v).decode())
                        for k, v in params.items()))


def _entry(raw: Any, where: str) -> tuple[TapeKey, TapeEntry]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each line must be a JSON object")
    sport = raw.get("sport")
    if sport not in SPORTS:
        raise ConfigError(f"{where}: sport must be one of {', '.join(SPORTS)}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip("/"):
        raise ConfigError(f"{where}: path must be an endpoint path such as \"/fixtures\"")
    params = raw.get("params")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{where}: params must be an object or null")
    status = raw.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ConfigError(f"{where}: status must be an HTTP status code")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str | int | float)
                                                for v in headers.values()):
        raise ConfigError(f"{where}: headers must be an object of strings")
    if "body" not in raw:
        raise ConfigError(f"{where}: body is missing")
    body = raw["body"]
    # A string body is replayed verbatim (a recorded non-JSON answer); anything else is JSON.
    encoded = body.encode() if isinstance(body, str) else orjson.dumps(body)
    kept = tuple((str(k), str(v)) for k, v in headers.items()
                 if str(k).lower() not in _DROPPED_HEADERS)
    key: TapeKey = (sport, "/" + path.strip("/"),
                    None if params is None else _params_key(params))
    return key, TapeEntry(status, kept, encoded)


class Tape:
    """The loaded tape and a cursor per key."""

    def __init__(self, lines: dict[TapeKey, list[TapeEntry]], source: str) -> None:
        self.lines = lines
        self.source = source
        self._cursor: dict[TapeKey, int] = {}

    @classmethod
    def load(cls, path: str) -> Tape:
        """Read a tape, or raise ConfigError with a one-line reason."""
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read tape {path}: {exc.strerror or exc}") from None
        lines: dict[TapeKey, list[TapeEntry]] = {}
        count = 0
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"tape {path} line {number}"
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not JSON ({exc})") from None
            key, entry = _entry(raw, where)
            lines.setdefault(key, []).append(entry)
            count += 1
        if count == 0:
            raise ConfigError(f"tape {path} has no recorded responses")
        return cls(lines, path)

    def rewind(self) -> None:
        self._cursor.clear()

    def next(self, sport: str, path: str, params: dict[str, str]) -> TapeEntry | None:
        """The next recorded answer for this request, or None when nothing matches."""
        key: TapeKey = (sport, path, _params_key(params))
        entries = self.lines.get(key)
        if entries is None:
            key = (sport, path, None)
            entries = self.lines.get(key)
            if entries is None:
                return None
        at = self._cursor.get(key, 0)
        self._cursor[key] = at + 1
        return entries[min(at, len(entries) - 1)]
