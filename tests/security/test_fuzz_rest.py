"""Hostile input on the REST API (issue 10, the contract's section 3): fuzzed from the
OpenAPI document with schemathesis, and with hypothesis over what the document does not
describe: random paths under /v1, query strings of unicode, huge and negative numbers,
repeated parameters, impossible dates and percent-encoding garbage, random X-API-Key and
Authorization values and random methods.

The property: never a 5xx other than the documented 502/503, every error is the
contract's JSON `{"error": {"code", "message"}}` with a documented status, never an HTML
page or a traceback, nothing logged at error level inside the server, and the server
answers a health check at once afterwards. Scale with `FUZZ_EXAMPLES` (see
`fuzz_fixtures`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.security.fuzz_fixtures import (
    FuzzServer,
    fuzz_settings,
    fuzz_timeout,
    http_request,
    long_run_examples,
    serving,
)

pytestmark = fuzz_timeout()

DOCUMENTED_ERRORS = {400, 401, 403, 404, 405, 413, 429, 502, 503}  # CONTRACT section 3
ERROR_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
SCHEMATHESIS_CI_EXAMPLES = 8  # per operation: under 10 s for the whole document here

SPORTS = ["football", "basketball", "hockey", "baseball", "american-football"]
WORDS = ["live", "games", "standings", "raw", "usage", "sports", "realtime", "auth", "ws",
         "stream", "fixtures", "leagues", "teams", "odds", "status", "v1", "metrics"]
GARBAGE = ["%ZZ", "%", "%0", "%00", "%C3%28", "%FF", "%ff%fe", "%2e%2e", "..", ".", "%2F",
           "%u0041", "%E2%80%AE", "%EF%BB%BF", "a;b=c", "@", "!", "*", "~", "'", "$", ",",
           "%25", "+", "%20", "%0d%0a", "%3Cscript%3E"]
PARAMS = ["date", "league", "team", "status", "season", "id", "live", "api_key", "channels",
          "last_event_id", "timezone", "page", "from", "to", "search"]
DATES = ["2024-02-30", "2024-13-01", "0000-00-00", "99999-01-01", "2024-1-1", "yesterday",
         "2024-02-29", "-2024-01-01", "2024-01-01T00:00:00Z", "", "20240101", "2024/01/01",
         "9999-12-31", "0001-01-01", "2024-00-10", "%32%30%32%34-01-01"]
NUMBERS = ["0", "-0", "00", "1e3", "0x1F", "NaN", "inf", "-1", "1.5", "%201", "1%20",
           "%EF%BC%91", "18446744073709551616", "-9223372036854775809"]
METHODS = ["GET"] * 12 + ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                         "FOO", "get"]
KEY_TIERS = ["enterprise", "enterprise", "pro", "free"]
VALID = "\x00valid:"  # a placeholder for a real key, resolved once the server runs

unicode_text = st.text(max_size=24).map(lambda t: quote(t, safe=""))
numbers = st.one_of(st.integers(-10**30, 10**30).map(str), st.sampled_from(NUMBERS))
segments = st.one_of(st.sampled_from(SPORTS + WORDS), st.sampled_from(GARBAGE), numbers,
                     unicode_text)
values = st.one_of(numbers, st.sampled_from(DATES), st.sampled_from(GARBAGE), unicode_text,
                   st.sampled_from([*SPORTS, "live", "finished", "all", "LIVE"]),
                   st.integers(1, 5000).map(lambda n: "9" * n))  # huge, up to 5,000 digits
# latin-1 printable: what a client can put in a header (no CR or LF)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=80)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    def resolved_headers(self, server: FuzzServer) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {}
        for name, value in self.headers:
            prefix, valid, tier = value.partition(VALID)
            out[name] = (prefix + server.keys[tier] if valid else value).encode("latin-1")
        return out


@st.composite
def structured_paths(draw: st.DrawFn) -> str:
    """A path shaped like a real route, with random parts where the route has parameters."""
    sport = draw(st.sampled_from(SPORTS))  # random paths cover the unknown ones
    tail = draw(st.one_of(
        st.sampled_from(["games", "live", "games", "standings", "raw/fixtures", "raw/leagues",
                         "raw/standings", "raw/teams"]),
        segments.map(lambda s: f"games/{s}"), segments.map(lambda s: f"raw/{s}")))
    if draw(st.sampled_from([True, True, True, False])):
        return f"/v1/{sport}/{tail}"
    return draw(st.sampled_from(["/v1/sports", "/v1/usage", "/v1/realtime/auth", "/v1/ws",
                                 "/v1/stream"]))


random_paths = st.lists(segments, max_size=4).map(lambda parts: "/v1/" + "/".join(parts))
# mostly the routes' own shapes: a random path is a 404 before any handler sees it
paths = st.sampled_from([structured_paths()] * 3 + [random_paths]).flatmap(lambda s: s)


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(PARAMS), segments), values),
                          max_size=6))
    if pairs and draw(st.booleans()):
        pairs += pairs[:2]  # repeated parameters
    separator = draw(st.sampled_from(["&", "&", ";", "&&"]))
    text = separator.join(f"{name}={value}" if draw(st.booleans()) or not value else name
                          for name, value in pairs)
    return f"?{text}" if text else draw(st.sampled_from(["", "?", "?&", "?=", "?%"]))


valid_key = st.one_of(
    st.sampled_from(KEY_TIERS).map(lambda t: (("X-API-Key", VALID + t),)),
    st.sampled_from(KEY_TIERS).map(lambda t: (("Authorization", f"Bearer {VALID}{t}"),)))
auth_headers = st.sampled_from([valid_key] * 6 + [st.one_of(  # past the key check, mostly
    st.just(()),
    header_text.map(lambda v: (("X-API-Key", v),)),
    header_text.map(lambda v: (("Authorization", v),)),
    st.tuples(header_text, st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer"]))
    .map(lambda p: (("Authorization", p[1] + p[0]),)),
    st.tuples(header_text, st.sampled_from(KEY_TIERS)).map(
        lambda p: (("X-API-Key", p[0]), ("Authorization", f"Bearer {VALID}{p[1]}"))),
)]).flatmap(lambda s: s)
bodies = st.one_of(st.none(), st.binary(max_size=256),
                   st.tuples(segments, segments).map(
                       lambda p: f"socket_id={p[0]}&channel_name={p[1]}".encode()))
request_ids = st.one_of(st.just(()), header_text.map(lambda v: (("X-Request-Id", v),)))
requests = st.builds(
    lambda method, path, query, headers, request_id, body: Request(
        method, path + query, headers + request_id,
        body if method in ("POST", "PUT", "PATCH") else None),
    st.sampled_from(METHODS), paths, queries(), auth_headers, request_ids, bodies)


def assert_contract_answer(request: Request, status: int, content_type: str,
                           body: bytes) -> None:
    """The contract's rules for one answer from /v1."""
    assert 200 <= status < 300 or status in DOCUMENTED_ERRORS, (status, body[:300])
    if status == 200 and content_type.startswith("text/event-stream"):
        return  # a stream that opened: its body is the SSE tests' business
    assert content_type.startswith("application/json"), (status, content_type, body[:300])
    if request.method == "HEAD":
        assert body == b""
        return
    text = body.decode("utf-8")
    assert "Traceback" not in text and "<html" not in text.lower(), text[:300]
    payload = json.loads(text)
    if status >= 400:
        assert isinstance(payload, dict) and set(payload) == {"error"}, payload
        error = payload["error"]
        assert isinstance(error, dict) and set(error) == {"code", "message"}, payload
        assert isinstance(error["message"], str) and error["message"], payload
        assert isinstance(error["code"], str) and ERROR_CODE_RE.match(error["code"]), payload


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    with serving(tmp_path_factory.mktemp("fuzz-rest")) as running:
        yield running


def key_of(tier: str) -> tuple[tuple[str, str], ...]:
    return (("X-API-Key", VALID + tier),)


@fuzz_settings(500)
@given(request=requests)
# the shapes that once broke the contract, or that a random run may not reach
@example(Request("GET", "/v1/ws", key_of("enterprise"), None))
@example(Request("POST", "/v1/ws", (), b"x"))
@example(Request("GET", "/v1/stream?channels=%ff", key_of("enterprise"), None))
@example(Request("GET", "/v1/football/games/99999999999999999999999999", key_of("pro"), None))
@example(Request("GET", "/v1/football/games/-1", key_of("pro"), None))
@example(Request("GET", "/v1/football/games?date=2024-02-30&date=x&league=-5",
                 key_of("pro"), None))
@example(Request("GET", "/v1/football/games/%C3%28", key_of("pro"), None))
@example(Request("GET", "/v1/football/raw/fixtures?date=%ff", key_of("pro"), None))
@example(Request("GET", "/v1/football/raw/fixtures?live=all", key_of("free"), None))
@example(Request("GET", "/v1/usage", (("Authorization", "Bearer \xff\xfe"),), None))
@example(Request("OPTIONS", "/v1/sports", key_of("pro"), None))
def test_random_requests_under_v1_get_a_documented_json_answer(server: FuzzServer,
                                                               request: Request) -> None:
    status, headers, body = http_request(server.port, request.method, request.target,
                                         request.resolved_headers(server), request.body)
    assert_contract_answer(request, status, headers.get("Content-Type", ""), body)
    assert server.server_errors() == []


def test_the_server_is_responsive_after_the_fuzzing(server: FuzzServer) -> None:
    """Runs after the fuzzing in this module (pytest keeps the file's order)."""
    assert server.healthy()
    status, _headers, body = http_request(server.port, "GET", "/v1/sports",
                                          {"X-API-Key": server.keys["pro"]}, timeout_s=2.0)
    assert status == 200 and len(json.loads(body)["data"]) == len(SPORTS)
    assert server.server_errors() == []


SCHEMATHESIS = Path(sys.executable).parent / "st"


@pytest.mark.skipif(shutil.which("st", path=str(SCHEMATHESIS.parent)) is None,
                    reason="schemathesis is not installed")
def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: FuzzServer,
                                                           tmp_path: Path) -> None:
    """Every operation of /openapi.json, its examples and random inputs: no 5xx, and
    every status, content type and body is the one the document declares."""
    wanted = long_run_examples()
    url = f"http://127.0.0.1:{server.port}"
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks",
         "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "-n", str(wanted or SCHEMATHESIS_CI_EXAMPLES),
         *([] if wanted else ["--seed", "1"]), "--generation-database", "none",
         "--header", f"X-API-Key: {server.keys['pro']}", "--exclude-path", "/metrics",
         "--exclude-path", "/v1/realtime/auth", "--exclude-path", "/broadcasting/auth",
         "--request-timeout", "20", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=3000 if wanted else 110,
        check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]
    assert re.search(r"\b(9|1[0-9]) passed", text), text[-3000:]  # every operation ran
    assert server.server_errors() == []
