"""`btsguru record`: what the upstream answered the pollers, as a tape `simulate --tape`
replays.

Where it sits: an observer on the pollers' `Fetcher` (every successful upstream answer
passes through it). One JSON line per answer, in the tape format of the contract
(section 7, `simulator/tape.py`): `{"sport", "path" (without the sport prefix, e.g.
"/fixtures"), "params", "status", "headers", "body"}`.

The API key never reaches the tape: it travels in request headers, which are not
recorded; response headers that echo it (or set cookies) are dropped; and as a last
guard every line is searched for each secret and has it replaced before it is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from btsguru.errors import BtsguruError
from btsguru.upstream.client import UpstreamResponse

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
# Response headers a tape does not keep: cookies are credentials of their own, and the
# connection's framing belongs to the recording, not the answer.
_DROPPED = frozenset({"set-cookie", "content-length", "content-encoding", "transfer-encoding",
                      "connection", "keep-alive", "date"})


class CannotRecord(BtsguruError):
    code = "cannot_record"


def tape_line(response: UpstreamResponse, secrets: Iterable[str] = ()) -> bytes:
    """One tape line (with its newline) for an upstream answer, secrets removed."""
    hidden = [s for s in secrets if s]
    headers = {name: value for name, value in response.headers.items()
               if name.lower() not in _DROPPED and not any(s in value for s in hidden)}
    line: dict[str, Any] = {
        "sport": response.sport, "path": "/" + response.endpoint.lstrip("/"),
        "params": dict(response.params), "status": response.status, "headers": headers,
        "body": response.body}
    raw = orjson.dumps(line)
    for secret in hidden:
        encoded = orjson.dumps(secret)[1:-1]  # as it would appear inside a JSON string
        if encoded in raw:
            raw = raw.replace(encoded, REDACTED.encode())
    return raw + b"\n"


class TapeWriter:
    """Appends tape lines to a file as answers arrive (a line is complete or absent)."""

    def __init__(self, path: str | Path, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self._secrets = tuple(s for s in secrets if s)
        self._file: IO[bytes] | None = None
        self.lines = 0
        self.by_sport: dict[str, int] = {}

    def __enter__(self) -> TapeWriter:
        try:
            self._file = self.path.open("wb")
        except OSError as exc:
            raise CannotRecord(f"cannot write the tape {self.path}: "
                               f"{exc.strerror or exc}") from None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, response: UpstreamResponse) -> None:
        if self._file is None:
            raise RuntimeError("the tape is not open")
        self._file.write(tape_line(response, self._secrets))
        self._file.flush()
        self.lines += 1
        self.by_sport[response.sport] = self.by_sport.get(response.sport, 0) + 1
