"""The OpenAPI 3.1 document of the REST API (contract section 3), written as data.

Beside the flow: served as `GET /openapi.json` and read by the `/docs` page. A test
compares its paths with the routes `make_app` serves, so the document cannot drift from
the application. Streams (native WebSocket, SSE) and the Pusher endpoint are not REST and
are described in `info.description`.
"""

from __future__ import annotations

from typing import Any

from btsguru import __name__ as _package
from btsguru.sports import SPORTS
from btsguru.store.history import HISTORY_WINDOW_TEXT

API_VERSION = "1.0.0"

PHASES = ["scheduled", "live", "break", "finished", "interrupted", "postponed", "cancelled"]
ROUTE_KINDS = ["live", "games", "standings", "raw", "stream", "other"]

DESCRIPTION = """\
A real-time sports data relay over API-Sports. Authenticate with `X-API-Key: KEY` or
`Authorization: Bearer KEY`. Errors are always JSON:
`{"error": {"code": "<snake_case>", "message": "..."}}`. Every authenticated `/v1`
response carries `RateLimit-Policy`, `RateLimit`, `RateLimit-Limit`,
`RateLimit-Remaining`, `RateLimit-Reset`, `X-RateLimit-Limit` and
`X-RateLimit-Remaining`; a 429 also carries `Retry-After`.

## Streams

Game channels: `sports.{sport}`, `sports.{sport}.{league_id}`,
`sports.{sport}.{league_id}.{game_id}`; a subscriber of a channel receives the events of
every channel below it. Events: `game.snapshot`, `game.started`, `game.score`,
`game.status`, `game.event`, `game.finished`, `game.updated`, each with a per-game `seq`
that increases by one, so a client detects a gap.

* **Native WebSocket** `GET /v1/ws?api_key=KEY`: JSON text frames.
  `{"op": "subscribe", "channels": [...], "since": "ID"}`, `{"op": "unsubscribe",
  "channels": [...]}`, `{"op": "ping"}`; the server answers `subscribed` (with
  `recovered`), `pong`, `error`, and events `{"id", "channel", "event", "data"}`. Close
  codes: 4001 bad key, 4003 forbidden channel, 4008 too many connections, 4009 too many
  subscriptions, 4029 rate limited, 4010 too slow (reconnect and resume), 1012 server
  restarting (reconnect and resume), 1009 frame too large.
* **Server-Sent Events** `GET /v1/stream?channels=C1,C2&api_key=KEY`:
  `text/event-stream` with `id:`, `event:` and one `data:` line of JSON per event, a
  heartbeat comment at least every 15 s; `Last-Event-ID` (or `last_event_id`) resumes
  within the history window (HISTORY_WINDOW), else `game.snapshot` again.
* **Pusher protocol 7** `GET /app/{REVERB_APP_KEY}?protocol=7`: an unmodified
  `pusher-js` or Laravel Echo client works against it; private and presence channels
  are authorized by `POST /v1/realtime/auth` (alias `/broadcasting/auth`), and the
  Pusher HTTP API (`POST /apps/{app_id}/events`, `batch_events`, `GET .../channels`)
  publishes with Pusher's signature.

`/metrics` serves Prometheus text (every metric named `btsguru_...`), with
`Authorization: Bearer METRICS_TOKEN` when a token is configured.
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_AUTH_ERRORS = {
    "401": _error("Missing, unknown, expired or revoked API key."),
    "403": _error("The key's tier or scopes do not allow this route."),
    "429": _error("Rate limited; see Retry-After."),
}
_SPORT = {"name": "sport", "in": "path", "required": True,
          "schema": {"type": "string", "enum": list(SPORTS)},
          "description": "An unknown sport is 404."}
_ID_QUERY = {"type": "string", "pattern": r"^[1-9]\d{0,17}$"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _data(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["data", *extra], "properties": {"data": schema,
                                                                           **extra}}


def _get(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
         errors: dict[str, Any] | None = None, secured: bool = True,
         tag: str = "data") -> dict[str, Any]:
    responses = {"200": ok, **(errors or {})}
    if secured:
        responses.update(_AUTH_ERRORS)
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if not secured:
        op["security"] = []
    return op


_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "pattern": "^[a-z_]+$"},
                       "message": {"type": "string"}}}}},
    "Team": {"type": "object", "required": ["id", "name", "score"], "properties": {
        "id": _NULLABLE_INT, "name": {"type": "string"}, "score": _NULLABLE_INT}},
    "Game": {"type": "object",
             "required": ["id", "sport", "league", "start_time", "status", "home", "away",
                          "seq"],
             "properties": {
                 "id": {"type": "integer"}, "sport": {"type": "string"},
                 "league": {"type": "object", "properties": {
                     "id": _NULLABLE_INT, "name": _NULLABLE_STR, "country": _NULLABLE_STR,
                     "season": {"type": ["integer", "string", "null"]}}},
                 "start_time": _NULLABLE_STR,
                 "status": {"type": "object", "required": ["phase", "code"], "properties": {
                     "phase": {"type": "string", "enum": PHASES},
                     "code": {"type": "string"}, "detail": _NULLABLE_STR,
                     "clock": _NULLABLE_STR, "period": _NULLABLE_INT,
                     "server_time": _NULLABLE_STR}},
                 "home": _ref("Team"), "away": _ref("Team"),
                 "periods": {"type": "array", "items": {"type": "object"}},
                 "events": {"type": "array", "items": {"type": "object"}},
                 "seq": {"type": "integer", "minimum": 0},
                 "updated_at": _NULLABLE_STR}},
    "SportLine": {"type": "object",
                  "required": ["sport", "live_games", "poll_interval_s", "last_poll_at",
                               "data_age_s"],
                  "properties": {"sport": {"type": "string"},
                                 "live_games": {"type": "integer"},
                                 "poll_interval_s": {"type": ["number", "null"]},
                                 "last_poll_at": _NULLABLE_STR,
                                 "data_age_s": {"type": ["number", "null"]}}},
    "StandingRow": {"type": "object",
                    "required": ["rank", "team", "points", "played", "won", "drawn", "lost",
                                 "scored", "conceded", "group"],
                    "properties": {
                        "rank": _NULLABLE_INT,
                        "team": {"type": "object", "properties": {
                            "id": _NULLABLE_INT, "name": _NULLABLE_STR}},
                        "points": _NULLABLE_INT, "played": _NULLABLE_INT,
                        "won": _NULLABLE_INT, "drawn": _NULLABLE_INT, "lost": _NULLABLE_INT,
                        "scored": _NULLABLE_INT, "conceded": _NULLABLE_INT,
                        "group": _NULLABLE_STR}},
    "Usage": {"type": "object", "required": ["today", "days"], "properties": {
        "today": {"type": "object", "properties": {k: {"type": "integer"}
                                                   for k in ROUTE_KINDS}},
        "days": {"type": "array", "items": {"type": "object"}}}},
}

PATHS: dict[str, Any] = {
    "/healthz": {"get": _get("Liveness", _ok({"type": "object"}), secured=False,
                             tag="operations")},
    "/readyz": {"get": _get("Readiness: Redis and the database answer",
                            _ok({"type": "object"}),
                            errors={"503": _ok({"type": "object"}, "Something failed")},
                            secured=False, tag="operations")},
    "/v1/sports": {"get": _get("Each sport's live games and data freshness",
                               _ok(_data({"type": "array", "items": _ref("SportLine")})))},
    "/v1/{sport}/live": {"get": _get(
        "Games live or at a break",
        _ok(_data({"type": "array", "items": _ref("Game")}, meta={
            "type": "object", "properties": {"as_of": _NULLABLE_STR,
                                             "stale": {"type": "boolean"}}})),
        params=[_SPORT], errors={"400": _error("Unknown parameter."),
                                 "404": _error("Unknown sport.")})},
    "/v1/{sport}/games": {"get": _get(
        "Games by date, league, team and phase",
        _ok(_data({"type": "array", "items": _ref("Game")})),
        params=[_SPORT,
                _query("date", {"type": "string", "format": "date"}, "YYYY-MM-DD (UTC)"),
                _query("league", _ID_QUERY, "League id"),
                _query("team", _ID_QUERY, "Team id"),
                _query("status", {"type": "string", "enum": PHASES}, "Game phase")],
        errors={"400": _error("Invalid parameter."), "404": _error("Unknown sport.")})},
    "/v1/{sport}/games/{id}": {"get": _get(
        "One game, with its events where the sport has them",
        _ok(_data(_ref("Game"))),
        params=[_SPORT, {"name": "id", "in": "path", "required": True, "schema": _ID_QUERY}],
        errors={"400": _error("Invalid id."), "404": _error("Unknown sport or game.")})},
    "/v1/{sport}/standings": {"get": _get(
        "League tables", _ok(_data({"type": "array", "items": _ref("StandingRow")})),
        params=[_SPORT, _query("league", _ID_QUERY, "League id"),
                _query("season", {"type": "string", "pattern": r"^\d{4}(-\d{4})?$"},
                       "Season")],
        errors={"400": _error("Invalid parameter."), "404": _error("Unknown sport.")})},
    "/v1/{sport}/raw/{endpoint}": {"get": _get(
        "The upstream's JSON for an allow-listed endpoint, cached",
        {"description": "The API-Sports envelope, unchanged; headers X-Cache "
                        "(HIT, MISS, STALE), Age and Cache-Control.",
         "headers": {"X-Cache": {"schema": {"type": "string",
                                            "enum": ["HIT", "MISS", "STALE"]}}},
         "content": {"application/json": {"schema": {"type": "object"}}}},
        params=[_SPORT, {"name": "endpoint", "in": "path", "required": True,
                         "schema": {"type": "string", "pattern": "^[a-z/]+$"}}],
        errors={"400": _error("Invalid parameter."),
                "404": _error("Unknown sport or endpoint not on the allow-list."),
                "502": _error("The upstream failed."),
                "503": _error("The upstream budget is spent or the breaker is open.")})},
    "/v1/usage": {"get": _get(
        "The caller's usage, per day and route kind", _ok(_data(_ref("Usage"))),
        params=[_query("days", {"type": "integer", "minimum": 1, "maximum": 90},
                       "Days of history (default 30)")],
        errors={"400": _error("Invalid days.")}, tag="account")},
    "/v1/realtime/auth": {"post": {
        "summary": "Pusher channel authorization (private-sports.*, presence-sports.*)",
        "tags": ["realtime"],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["socket_id", "channel_name"],
                "properties": {"socket_id": {"type": "string"},
                               "channel_name": {"type": "string"}}}}}},
        "responses": {"200": _ok({"type": "object", "required": ["auth"], "properties": {
            "auth": {"type": "string"}, "channel_data": {"type": "string"},
            "shared_secret": {"type": "string", "description":
                              "private-encrypted-sports.* only: the channel's key, base64"}}}),
            "400": _error("Invalid socket id or channel."), **_AUTH_ERRORS}}},
    "/v1/realtime/user-auth": {"post": {
        "summary": "Pusher user sign-in (pusher:signin) for the key's user",
        "description": "pusher-js's `userAuthentication` endpoint: `user_data` is made "
                       "here from the API key's user (`id` is the user's id), so a client "
                       "signs in as its own user and no other.",
        "tags": ["realtime"],
        "requestBody": {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object", "required": ["socket_id"],
                "properties": {"socket_id": {"type": "string"}}}}}},
        "responses": {"200": _ok({"type": "object", "required": ["auth", "user_data"],
                                  "properties": {"auth": {"type": "string"},
                                                 "user_data": {"type": "string"}}}),
                      "400": _error("Invalid socket id."), **_AUTH_ERRORS}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics", "tags": ["operations"],
        "security": [{"metricsToken": []}],
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      "401": _error("METRICS_TOKEN is set and was not given.")}}},
}
# Answered before routing, for every path (`server.http_server`, HTTP_MAX_HEADER_BYTES)
_REQUEST_LIMITS = {
    "414": _error("The URI, query string included, is longer than the server accepts."),
    "431": _error("The request's headers are larger than the server accepts."),
}
for _item in PATHS.values():
    for _operation in _item.values():
        _operation["responses"].update(_REQUEST_LIMITS)
PATHS["/broadcasting/auth"] = PATHS["/v1/realtime/auth"]


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The whole document; `server_url` (the request's origin) fills `servers`."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": _package, "version": API_VERSION,
                 "description": DESCRIPTION.replace("HISTORY_WINDOW", HISTORY_WINDOW_TEXT)},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "metricsToken": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}, {"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
