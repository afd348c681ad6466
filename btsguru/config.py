"""Configuration: read once from the environment and `.env` into a frozen `Config`.

Every setting is declared once, below, as a field of `Config` with its environment name,
default and a line of help (Datasette's `SETTINGS`); validation, `.env.example` and the
README table all come from these declarations, and a test keeps them in agreement.
How one setting is declared and parsed (`setting`, the parsers, `Secret`) is
`btsguru.setting`.
Only `btsguru.app` and `btsguru.cli` call `load_config`; everything else is handed the
`Config` it needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from btsguru.errors import ConfigError
from btsguru.setting import (
    DB_INDEX,
    PORT,
    Secret,
    mask_url,
    parse_addresses,
    parse_bool,
    parse_choice,
    parse_host,
    parse_int,
    parse_master_key,
    parse_names,
    parse_optional_host,
    parse_redis_url,
    parse_secret,
    parse_sports,
    parse_url,
    parse_url_list,
    setting,
)
from btsguru.sports import SPORTS

# `Secret` and `mask_url` are re-exported: secret settings' readers and the modules that
# log a URL take them from here, with the `Config`
__all__ = ["API_SPORTS_BASE_URLS", "Config", "Secret", "SettingInfo", "env_example",
           "load_config", "mask_url", "settings", "settings_markdown"]

# API-Sports' own hosts, used for a sport whose base URL is not configured.
API_SPORTS_BASE_URLS: Mapping[str, str] = {
    "football": "https://v3.football.api-sports.io",
    "basketball": "https://v1.basketball.api-sports.io",
    "hockey": "https://v1.hockey.api-sports.io",
    "baseball": "https://v1.baseball.api-sports.io",
    "american-football": "https://v1.american-football.api-sports.io",
}


# Pusher's webhook events (PUSHER.md section 13), in its order
WEBHOOK_EVENTS = ("channel_occupied", "channel_vacated", "member_added", "member_removed",
                  "client_event", "cache_miss", "subscription_count")


@dataclass(frozen=True)
class Config:
    # -- upstream (names from the original specification) --
    rapidapi_key: Secret = setting(
        "RAPIDAPI_KEY", "", "Upstream key (RapidAPI or API-Sports); required outside demo.",
        parse_secret, secret=True)
    rapidapi_host: str = setting(
        "RAPIDAPI_HOST", "v3.football.api-sports.io",
        "Football's upstream host; a *.rapidapi.com host selects RapidAPI headers.", parse_host)
    rapidapi_base_url: str = setting(
        "RAPIDAPI_BASE_URL", "https://v3.football.api-sports.io",
        "Football's base URL (on RapidAPI it includes /v3).", parse_url("http", "https"))
    rapidapi_base_url_football: str = setting(
        "RAPIDAPI_BASE_URL_FOOTBALL", "", "Football's base URL; overrides RAPIDAPI_BASE_URL.",
        parse_url("http", "https"))
    rapidapi_base_url_basketball: str = setting(
        "RAPIDAPI_BASE_URL_BASKETBALL", "", "Basketball's base URL (empty: API-Sports' host).",
        parse_url("http", "https"))
    rapidapi_base_url_hockey: str = setting(
        "RAPIDAPI_BASE_URL_HOCKEY", "", "Hockey's base URL (empty: API-Sports' host).",
        parse_url("http", "https"))
    rapidapi_base_url_baseball: str = setting(
        "RAPIDAPI_BASE_URL_BASEBALL", "", "Baseball's base URL (empty: API-Sports' host).",
        parse_url("http", "https"))
    rapidapi_base_url_american_football: str = setting(
        "RAPIDAPI_BASE_URL_AMERICAN_FOOTBALL", "",
        "American football's base URL (empty: API-Sports' host).", parse_url("http", "https"))
    upstream_daily_quota: int = setting(
        "UPSTREAM_DAILY_QUOTA", "7500",
        "Upstream requests per UTC day per sport host (API-Sports Pro: 7500).", parse_int(1))
    upstream_minute_quota: int = setting(
        "UPSTREAM_MINUTE_QUOTA", "300",
        "Upstream requests per 60-second window per sport host (Pro: 300).", parse_int(1))
    upstream_daily_quota_football: int = setting(
        "UPSTREAM_DAILY_QUOTA_FOOTBALL", "0", "Football's daily quota (0: UPSTREAM_DAILY_QUOTA).",
        parse_int(0))
    upstream_daily_quota_basketball: int = setting(
        "UPSTREAM_DAILY_QUOTA_BASKETBALL", "0",
        "Basketball's daily quota (0: UPSTREAM_DAILY_QUOTA).", parse_int(0))
    upstream_daily_quota_hockey: int = setting(
        "UPSTREAM_DAILY_QUOTA_HOCKEY", "0", "Hockey's daily quota (0: UPSTREAM_DAILY_QUOTA).",
        parse_int(0))
    upstream_daily_quota_baseball: int = setting(
        "UPSTREAM_DAILY_QUOTA_BASEBALL", "0", "Baseball's daily quota (0: UPSTREAM_DAILY_QUOTA).",
        parse_int(0))
    upstream_daily_quota_american_football: int = setting(
        "UPSTREAM_DAILY_QUOTA_AMERICAN_FOOTBALL", "0",
        "American football's daily quota (0: UPSTREAM_DAILY_QUOTA).", parse_int(0))
    upstream_minute_quota_football: int = setting(
        "UPSTREAM_MINUTE_QUOTA_FOOTBALL", "0",
        "Football's per-minute quota (0: UPSTREAM_MINUTE_QUOTA).", parse_int(0))
    upstream_minute_quota_basketball: int = setting(
        "UPSTREAM_MINUTE_QUOTA_BASKETBALL", "0",
        "Basketball's per-minute quota (0: UPSTREAM_MINUTE_QUOTA).", parse_int(0))
    upstream_minute_quota_hockey: int = setting(
        "UPSTREAM_MINUTE_QUOTA_HOCKEY", "0",
        "Hockey's per-minute quota (0: UPSTREAM_MINUTE_QUOTA).", parse_int(0))
    upstream_minute_quota_baseball: int = setting(
        "UPSTREAM_MINUTE_QUOTA_BASEBALL", "0",
        "Baseball's per-minute quota (0: UPSTREAM_MINUTE_QUOTA).", parse_int(0))
    upstream_minute_quota_american_football: int = setting(
        "UPSTREAM_MINUTE_QUOTA_AMERICAN_FOOTBALL", "0",
        "American football's per-minute quota (0: UPSTREAM_MINUTE_QUOTA).", parse_int(0))
    upstream_timeout_s: int = setting(
        "UPSTREAM_TIMEOUT_S", "8",
        "Seconds one upstream request may take (a user's whole wait is capped at 10).",
        parse_int(1, 10))
    sports: tuple[str, ...] = setting(
        "BTSGURU_SPORTS", ",".join(SPORTS), "Comma list of the sports to relay.", parse_sports)

    # -- Redis --
    redis_url: str = setting(
        "REDIS_URL", "",
        "Overrides the REDIS_HOST/PORT/PASSWORD variables; memory:// selects the embedded store.",
        parse_redis_url)
    redis_host: str = setting("REDIS_HOST", "127.0.0.1", "Redis host.", parse_host)
    redis_port: int = setting("REDIS_PORT", "6379", "Redis port.", PORT)
    redis_password: Secret = setting("REDIS_PASSWORD", "", "Redis password.", parse_secret,
                                     secret=True)
    redis_db: int = setting("REDIS_DB", "0",
                            "Database for keys, rate limits and usage counters.", DB_INDEX)
    redis_cache_db: int = setting("REDIS_CACHE_DB", "1",
                                  "Database for cached upstream responses.", DB_INDEX)
    redis_queue_db: int = setting("REDIS_QUEUE_DB", "2",
                                  "Database for poller leases, schedules and job state.", DB_INDEX)
    redis_reverb_db: int = setting(
        "REDIS_REVERB_DB", "3",
        "Database for real-time state (history, presence); pub/sub channels carry the prefix.",
        DB_INDEX)
    redis_cache_prefix: str = setting(
        "REDIS_CACHE_PREFIX", "btsguru:", "Prefix of every Redis key and pub/sub channel.")
    # -- Redis topologies (v2): at most one of REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES --
    redis_sentinels: tuple[tuple[str, int], ...] = setting(
        "REDIS_SENTINELS", "",
        "host:port[,host:port...] of Redis Sentinels: the master is found through them and "
        "followed across failovers (REDIS_PASSWORD and the database numbers still apply).",
        parse_addresses)
    redis_sentinel_master: str = setting(
        "REDIS_SENTINEL_MASTER", "mymaster", "The master's name as the sentinels know it.",
        parse_host)
    redis_sentinel_password: Secret = setting(
        "REDIS_SENTINEL_PASSWORD", "", "The sentinels' own password (empty: none).",
        parse_secret, secret=True)
    redis_cluster_nodes: tuple[tuple[str, int], ...] = setting(
        "REDIS_CLUSTER_NODES", "",
        "host:port[,host:port...] of Redis Cluster nodes (any reachable ones; the rest are "
        "discovered).",
        parse_addresses)

    # -- real-time (names from the original specification) --
    reverb_app_id: str = setting("REVERB_APP_ID", "btsguru", "Pusher app id (HTTP API path).")
    reverb_app_key: str = setting("REVERB_APP_KEY", "btsguru-key",
                                  "Pusher app key that clients connect with.")
    reverb_app_secret: Secret = setting(
        "REVERB_APP_SECRET", "", "Pusher app secret that signs channel auth and the HTTP API.",
        parse_secret, secret=True)
    reverb_server_host: str = setting(
        "REVERB_SERVER_HOST", "",
        "Address `serve` binds (Reverb's name); empty: REVERB_HOST.", parse_optional_host)
    reverb_server_port: int = setting(
        "REVERB_SERVER_PORT", "0", "Port `serve` binds (Reverb's name); 0: REVERB_PORT.",
        parse_int(0, 65535))
    reverb_host: str = setting(
        "REVERB_HOST", "127.0.0.1",
        "Address `serve` binds when REVERB_SERVER_HOST is unset (a Laravel app's clients use "
        "it as the public host).", parse_host)
    reverb_port: int = setting(
        "REVERB_PORT", "8080",
        "Port `serve` binds when REVERB_SERVER_PORT is unset (a Laravel app's clients use it "
        "as the public port).", PORT)
    pusher_public_channels: bool = setting(
        "PUSHER_PUBLIC_CHANNELS", "true",
        "Bare sports.* channels open to app-key Pusher clients.", parse_bool)
    pusher_public_per_ip: int = setting(
        "PUSHER_PUBLIC_PER_IP", "20",
        "Anonymous Pusher connections allowed per IP address.", parse_int(1))
    pusher_max_subscriptions: int = setting(
        "PUSHER_MAX_SUBSCRIPTIONS", "200",
        "Channels one Pusher connection may hold (more: subscription_error LimitReached).",
        parse_int(1))
    pusher_messages_per_s: int = setting(
        "PUSHER_MESSAGES_PER_S", "20",
        "Messages per second one anonymous Pusher connection may send (more: error 4301).",
        parse_int(1))
    pusher_client_events_per_s: int = setting(
        "PUSHER_CLIENT_EVENTS_PER_S", "10",
        "Client events per second per Pusher connection (more: error 4301).", parse_int(1))
    pusher_encryption_master_key: Secret = setting(
        "PUSHER_ENCRYPTION_MASTER_KEY", "",
        "32 bytes in base64: derives each private-encrypted-* channel's shared_secret, as "
        "Pusher does (empty: encrypted game channels are refused).",
        parse_master_key, secret=True)
    pusher_webhook_urls: tuple[str, ...] = setting(
        "PUSHER_WEBHOOK_URLS", "",
        "Comma list of URLs that get Pusher webhooks (empty: none are sent).",
        parse_url_list("http", "https"))
    pusher_webhook_events: tuple[str, ...] = setting(
        "PUSHER_WEBHOOK_EVENTS", "",
        "Comma list of the webhook events to send (empty: all of "
        + ", ".join(WEBHOOK_EVENTS) + ").", parse_names(*WEBHOOK_EVENTS))

    # -- HTTP limits: every connection, before any handler runs (server.http_server) --
    http_idle_timeout_s: int = setting(
        "HTTP_IDLE_TIMEOUT_S", "75",
        "Seconds a connection may take to send a request's headers, or idle between "
        "requests, before it is closed.", parse_int(1))
    http_body_timeout_s: int = setting(
        "HTTP_BODY_TIMEOUT_S", "30",
        "Seconds a request's whole body may take to arrive before the connection is closed.",
        parse_int(1))
    http_max_header_bytes: int = setting(
        "HTTP_MAX_HEADER_BYTES", "65536",
        "Request line and headers, in bytes (more: JSON 414 or 431).", parse_int(1024))
    http_max_body_bytes: int = setting(
        "HTTP_MAX_BODY_BYTES", "1048576", "Request body, in bytes (more: JSON 413).",
        parse_int(1024))

    # -- REST API (names from the original specification) --
    api_cache_enabled: bool = setting("API_CACHE_ENABLED", "true",
                                      "Cache upstream responses in Redis.", parse_bool)
    api_default_cache_duration: int = setting(
        "API_DEFAULT_CACHE_DURATION", "300",
        "Cache TTL in seconds for data without a more specific TTL.", parse_int(1))
    api_rate_limit: int = setting("API_RATE_LIMIT", "60",
                                  "Free tier: requests per API_RATE_LIMIT_DURATION.", parse_int(1))
    api_rate_limit_duration: int = setting(
        "API_RATE_LIMIT_DURATION", "60", "Free tier: the rate limit's window in seconds.",
        parse_int(1))

    # -- pollers: cadences (pollers/cadence.py); the daily budget stretches them when short --
    poll_live_interval_football_s: int = setting(
        "POLL_LIVE_INTERVAL_FOOTBALL_S", "15",
        "Seconds between football live polls while games are in play.", parse_int(1))
    poll_live_interval_basketball_s: int = setting(
        "POLL_LIVE_INTERVAL_BASKETBALL_S", "8",
        "Seconds between basketball live polls while games are in play.", parse_int(1))
    poll_live_interval_hockey_s: int = setting(
        "POLL_LIVE_INTERVAL_HOCKEY_S", "15",
        "Seconds between hockey live polls while games are in play.", parse_int(1))
    poll_live_interval_baseball_s: int = setting(
        "POLL_LIVE_INTERVAL_BASEBALL_S", "45",
        "Seconds between baseball live polls while games are in play.", parse_int(1))
    poll_live_interval_american_football_s: int = setting(
        "POLL_LIVE_INTERVAL_AMERICAN_FOOTBALL_S", "15",
        "Seconds between American football live polls while games are in play.", parse_int(1))
    poll_crucial_interval_football_s: int = setting(
        "POLL_CRUCIAL_INTERVAL_FOOTBALL_S", "10",
        "Football live polls in crucial moments (late, extra time, shoot-out).", parse_int(1))
    poll_crucial_interval_basketball_s: int = setting(
        "POLL_CRUCIAL_INTERVAL_BASKETBALL_S", "5",
        "Basketball live polls in crucial moments (last minutes, overtime).", parse_int(1))
    poll_crucial_interval_hockey_s: int = setting(
        "POLL_CRUCIAL_INTERVAL_HOCKEY_S", "10",
        "Hockey live polls in crucial moments (last minutes, overtime, shoot-out).",
        parse_int(1))
    poll_crucial_interval_baseball_s: int = setting(
        "POLL_CRUCIAL_INTERVAL_BASEBALL_S", "30",
        "Baseball live polls in crucial moments (9th inning on, close late).", parse_int(1))
    poll_crucial_interval_american_football_s: int = setting(
        "POLL_CRUCIAL_INTERVAL_AMERICAN_FOOTBALL_S", "10",
        "American football live polls in crucial moments (two-minute warning, OT).",
        parse_int(1))
    poll_idle_interval_s: int = setting(
        "POLL_IDLE_INTERVAL_S", "900",
        "Longest live-poll sleep with nothing in play (it wakes before the next start).",
        parse_int(1))
    poll_pregame_lead_s: int = setting(
        "POLL_PREGAME_LEAD_S", "120",
        "An idle live poller wakes this long before the next scheduled start.", parse_int(0))
    poll_schedule_interval_s: int = setting(
        "POLL_SCHEDULE_INTERVAL_S", "900",
        "Seconds between schedule polls (yesterday, today, tomorrow).", parse_int(1))
    poll_details_interval_s: int = setting(
        "POLL_DETAILS_INTERVAL_S", "300",
        "Seconds between event-detail polls of one game in play (hockey; at once on a goal).",
        parse_int(1))
    poll_standings_live_interval_s: int = setting(
        "POLL_STANDINGS_LIVE_INTERVAL_S", "3600",
        "Seconds between standings polls of a league with a game in play.", parse_int(1))
    poll_standings_idle_interval_s: int = setting(
        "POLL_STANDINGS_IDLE_INTERVAL_S", "86400",
        "Seconds between standings polls of a league with nothing in play.", parse_int(1))
    poll_static_interval_s: int = setting(
        "POLL_STATIC_INTERVAL_S", "21600",
        "Seconds between refreshes of leagues and teams.", parse_int(1))
    poll_budget_share_percent: int = setting(
        "POLL_BUDGET_SHARE_PERCENT", "80",
        "Share of each sport's daily quota the pollers plan to spend (the rest: user misses).",
        parse_int(1, 100))
    poll_backoff_base_s: int = setting(
        "POLL_BACKOFF_BASE_S", "5",
        "A poller failing, not by the upstream host, waits its cadence plus up to this, "
        "doubling per failure.",
        parse_int(1))
    poll_backoff_cap_s: int = setting(
        "POLL_BACKOFF_CAP_S", "300",
        "The most that backoff adds; after an upstream host failure a poller retries at its "
        "cadence.", parse_int(1))

    # -- storage and secrets --
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///btsguru.db",
        "sqlite:///FILE, mysql://user:pass@host/db or postgresql://user:pass@host/db.",
        parse_url("sqlite", "mysql", "postgresql", "postgres"))
    secret_key: Secret = setting(
        "SECRET_KEY", "", "Signs console cookies; required by serve (a long random string).",
        parse_secret, secret=True)

    # -- operations --
    alert_webhook_url: str = setting(
        "ALERT_WEBHOOK_URL", "", "Alerts are POSTed here as JSON (Slack-compatible `text`).",
        parse_url("http", "https"))
    metrics_token: Secret = setting(
        "METRICS_TOKEN", "", "When set, /metrics requires `Authorization: Bearer TOKEN`.",
        parse_secret, secret=True)
    log_format: str = setting("LOG_FORMAT", "text", "text, or json for JSON lines.",
                              parse_choice("text", "json"))
    log_level: str = setting("LOG_LEVEL", "info", "debug, info, warning or error.",
                             parse_choice("debug", "info", "warning", "error"))

    def upstream_base_url(self, sport: str) -> str:
        """The base URL of a sport's upstream (no trailing slash)."""
        attr = f"rapidapi_base_url_{sport.replace('-', '_')}"
        url: str = getattr(self, attr)
        if not url and sport == "football":
            url = self.rapidapi_base_url
        return (url or API_SPORTS_BASE_URLS[sport]).rstrip("/")

    @property
    def bind_host(self) -> str:
        """The address `serve` binds: Reverb's REVERB_SERVER_HOST, else REVERB_HOST (in a
        Laravel `.env` the latter is the address clients connect to, often a proxy's)."""
        return self.reverb_server_host or self.reverb_host

    @property
    def bind_port(self) -> int:
        """The port `serve` binds: REVERB_SERVER_PORT, else REVERB_PORT."""
        return self.reverb_server_port or self.reverb_port

    def upstream_daily_quota_for(self, sport: str) -> int:
        value: int = getattr(self, f"upstream_daily_quota_{sport.replace('-', '_')}")
        return value or self.upstream_daily_quota

    def upstream_minute_quota_for(self, sport: str) -> int:
        value: int = getattr(self, f"upstream_minute_quota_{sport.replace('-', '_')}")
        return value or self.upstream_minute_quota

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def require_upstream_key(self) -> None:
        if not self.rapidapi_key:
            raise ConfigError("RAPIDAPI_KEY: required (the upstream key); "
                              "set it in the environment or .env, or run `btsguru demo`")

    def require_secret_key(self) -> None:
        if len(self.secret_key.reveal()) < 16:
            raise ConfigError("SECRET_KEY: required, at least 16 characters "
                              "(it signs console cookies)")


@dataclass(frozen=True)
class SettingInfo:
    env: str
    default: str
    help: str
    secret: bool


def settings() -> list[SettingInfo]:
    """Every setting, in declaration order: the source of `.env.example` and the README."""
    return [SettingInfo(f.metadata["env"], f.metadata["default"], f.metadata["help"],
                        f.metadata["secret"]) for f in dataclasses.fields(Config)]


def load_config(environ: Mapping[str, str] | None = None,
                env_file: str | Path | None = ".env") -> Config:
    """Read the settings from `environ` (default: the process environment) over the
    `.env` file; raise `ConfigError` naming the first bad variable."""
    values: dict[str, str | None] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update(dotenv_values(env_file))
    values.update(os.environ if environ is None else environ)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        meta = f.metadata
        raw = values.get(meta["env"])
        text = meta["default"] if raw is None else raw
        try:
            kwargs[f.name] = meta["parse"](text)
        except ValueError as exc:
            raise ConfigError(f"{meta['env']}: {exc}") from None
    topologies = [env for env, name in REDIS_TOPOLOGIES if kwargs[name]]
    if len(topologies) > 1:
        raise ConfigError(f"{' and '.join(topologies)}: set only one; each selects where "
                          "Redis is (one server, Sentinel or Cluster)")
    return Config(**kwargs)


# The settings that each select a Redis topology (the contract, section 2): one at most.
REDIS_TOPOLOGIES = (("REDIS_URL", "redis_url"), ("REDIS_SENTINELS", "redis_sentinels"),
                    ("REDIS_CLUSTER_NODES", "redis_cluster_nodes"))


def env_example() -> str:
    """The text of `.env.example`: every variable with its default and a comment."""
    lines = ["# btsguru configuration: every variable with its default.",
             "# Copy to .env and change what you need; the environment overrides this file.", ""]
    for s in settings():
        lines.append(f"# {s.help}")
        lines.append(f"{s.env}={s.default}")
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    """The README's configuration table."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in settings():
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows) + "\n"
