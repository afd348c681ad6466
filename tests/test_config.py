"""Configuration: parsing, one-line errors naming the variable, secrets hidden, docs in sync."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from btsguru.config import (
    API_SPORTS_BASE_URLS,
    Config,
    Secret,
    env_example,
    load_config,
    settings,
    settings_markdown,
)
from btsguru.errors import ConfigError
from btsguru.sports import SPORTS

ROOT = Path(__file__).resolve().parent.parent


def load(**env: str) -> Config:
    return load_config(environ=env, env_file=None)


def test_defaults_follow_the_contract():
    c = load()
    assert c.reverb_host == "127.0.0.1"
    assert c.reverb_port == 8080
    assert c.api_cache_enabled is True
    assert (c.api_rate_limit, c.api_rate_limit_duration) == (60, 60)
    assert c.sports == SPORTS
    assert c.database_url.startswith("sqlite:///")
    assert c.log_format == "text"
    assert c.pusher_public_channels is True


def test_reverbs_server_names_choose_the_bind_address_and_the_old_names_are_the_fallback():
    # a Laravel .env: REVERB_HOST/PORT are where clients connect, the SERVER ones the bind
    c = load(REVERB_HOST="scores.example.com", REVERB_PORT="443",
             REVERB_SERVER_HOST="0.0.0.0", REVERB_SERVER_PORT="8081")
    assert (c.bind_host, c.bind_port) == ("0.0.0.0", 8081)
    assert (c.reverb_host, c.reverb_port) == ("scores.example.com", 443)
    c = load(REVERB_HOST="10.1.2.3", REVERB_PORT="9000")
    assert (c.bind_host, c.bind_port) == ("10.1.2.3", 9000)
    assert (load().bind_host, load().bind_port) == ("127.0.0.1", 8080)
    c = load(REVERB_SERVER_PORT="7000")
    assert (c.bind_host, c.bind_port) == ("127.0.0.1", 7000)


def test_original_specification_names_are_read_as_written():
    c = load(RAPIDAPI_KEY="k", RAPIDAPI_HOST="api-football-v1.p.rapidapi.com",
             RAPIDAPI_BASE_URL="https://api-football-v1.p.rapidapi.com/v3",
             REDIS_HOST="redis.internal", REDIS_PASSWORD="pw", REDIS_PORT="6380",
             REDIS_DB="4", REDIS_CACHE_DB="5", REDIS_QUEUE_DB="6", REDIS_REVERB_DB="7",
             REDIS_CACHE_PREFIX="x:", REVERB_APP_ID="42", REVERB_APP_KEY="appkey",
             REVERB_APP_SECRET="appsecret", REVERB_HOST="0.0.0.0", REVERB_PORT="9000",
             API_CACHE_ENABLED="false", API_DEFAULT_CACHE_DURATION="120", API_RATE_LIMIT="30",
             API_RATE_LIMIT_DURATION="10")
    assert c.rapidapi_key.reveal() == "k"
    assert c.rapidapi_host == "api-football-v1.p.rapidapi.com"
    assert (c.redis_host, c.redis_port, c.redis_password.reveal()) == ("redis.internal", 6380, "pw")
    assert (c.redis_db, c.redis_cache_db, c.redis_queue_db, c.redis_reverb_db) == (4, 5, 6, 7)
    assert c.redis_cache_prefix == "x:"
    assert (c.reverb_app_id, c.reverb_app_key, c.reverb_app_secret.reveal()) == \
        ("42", "appkey", "appsecret")
    assert (c.reverb_host, c.reverb_port) == ("0.0.0.0", 9000)
    assert c.api_cache_enabled is False
    assert (c.api_default_cache_duration, c.api_rate_limit, c.api_rate_limit_duration) == \
        (120, 30, 10)
    assert c.upstream_base_url("football") == "https://api-football-v1.p.rapidapi.com/v3"


def test_per_sport_base_urls_and_quotas():
    c = load(RAPIDAPI_BASE_URL_AMERICAN_FOOTBALL="http://127.0.0.1:9/american-football/",
             UPSTREAM_DAILY_QUOTA="100", UPSTREAM_DAILY_QUOTA_HOCKEY="50",
             UPSTREAM_MINUTE_QUOTA="10", UPSTREAM_MINUTE_QUOTA_BASEBALL="3")
    assert c.upstream_base_url("american-football") == "http://127.0.0.1:9/american-football"
    assert c.upstream_base_url("basketball") == API_SPORTS_BASE_URLS["basketball"]
    assert c.upstream_base_url("football") == "https://v3.football.api-sports.io"
    assert c.upstream_daily_quota_for("hockey") == 50
    assert c.upstream_daily_quota_for("football") == 100
    assert c.upstream_minute_quota_for("baseball") == 3
    assert c.upstream_minute_quota_for("hockey") == 10
    # the per-sport variable wins over the football-only original name
    c = load(RAPIDAPI_BASE_URL="https://a.example/v3",
             RAPIDAPI_BASE_URL_FOOTBALL="https://b.example")
    assert c.upstream_base_url("football") == "https://b.example"


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("REDIS_PORT", "abc", "expected an integer"),
    ("REDIS_PORT", "70000", "between 1 and 65535"),
    ("REDIS_CACHE_DB", "16", "between 0 and 15"),
    ("API_CACHE_ENABLED", "maybe", "expected true or false"),
    ("LOG_FORMAT", "xml", "expected one of text, json"),
    ("BTSGURU_SPORTS", "football,curling", "unknown sport 'curling'"),
    ("BTSGURU_SPORTS", " , ", "got nothing"),
    ("DATABASE_URL", "oracle://x/y", "expected a URL starting with"),
    ("REDIS_URL", "http://localhost", "expected a URL starting with"),
    ("REDIS_URL", "redis://localhost/abc", "database number"),
    ("RAPIDAPI_BASE_URL_HOCKEY", "ftp://x", "expected a URL"),
    ("UPSTREAM_DAILY_QUOTA", "0", ">= 1"),
    ("REVERB_HOST", "a b", "host name"),
    ("REVERB_SERVER_HOST", "a/b", "host name"),
    ("REVERB_SERVER_PORT", "70000", "between 0 and 65535"),
])
def test_bad_values_fail_with_one_line_naming_the_variable(name, value, fragment):
    with pytest.raises(ConfigError) as info:
        load(**{name: value})
    message = info.value.message
    assert message.startswith(f"{name}: ")
    assert fragment in message
    assert "\n" not in message


def test_secrets_never_appear_in_repr_or_logs(caplog):
    c = load(RAPIDAPI_KEY="sekret-upstream", REDIS_PASSWORD="sekret-redis",
             REVERB_APP_SECRET="sekret-app", SECRET_KEY="sekret-cookie-signing-key",
             METRICS_TOKEN="sekret-metrics")
    text = repr(c) + str(c)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("config %s %r", c, c)
    for secret in ("sekret-upstream", "sekret-redis", "sekret-app", "sekret-cookie",
                   "sekret-metrics"):
        assert secret not in text
        assert secret not in caplog.text
    assert c.metrics_token.reveal() == "sekret-metrics"
    assert repr(Secret("x")) == "Secret('**********')"


def test_a_password_in_a_url_is_masked_in_errors():
    with pytest.raises(ConfigError) as info:
        load(DATABASE_URL="oracle://user:hunter2@db/x")
    assert "hunter2" not in info.value.message


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("REVERB_PORT=9001\nREDIS_HOST=from-file\n# comment\nLOG_FORMAT=json\n")
    c = load_config(environ={"REDIS_HOST": "from-env"}, env_file=env_file)
    assert c.reverb_port == 9001
    assert c.redis_host == "from-env"
    assert c.log_format == "json"


def test_config_is_frozen():
    c = load()
    with pytest.raises(AttributeError):
        c.reverb_port = 1  # type: ignore[misc]
    assert c.replace(reverb_port=1).reverb_port == 1


def test_required_settings_fail_clearly():
    c = load()
    with pytest.raises(ConfigError, match=r"^RAPIDAPI_KEY: required"):
        c.require_upstream_key()
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: required"):
        c.require_secret_key()
    load(RAPIDAPI_KEY="k", SECRET_KEY="x" * 16).require_upstream_key()


def test_every_setting_is_declared_once_with_help():
    names = [s.env for s in settings()]
    assert len(names) == len(set(names))
    assert all(s.help.strip() for s in settings())
    for sport in SPORTS:
        suffix = sport.upper().replace("-", "_")
        assert f"RAPIDAPI_BASE_URL_{suffix}" in names
        assert f"UPSTREAM_DAILY_QUOTA_{suffix}" in names


def test_env_example_lists_every_setting():
    assert (ROOT / ".env.example").read_text() == env_example(), \
        "regenerate: python -c 'from btsguru.config import env_example; " \
        "print(env_example(), end=\"\")' > .env.example"


def test_readme_configuration_table_matches_the_declarations():
    readme = (ROOT / "README.md").read_text()
    assert settings_markdown() in readme, \
        "regenerate the README's table: python -c 'from btsguru.config import " \
        "settings_markdown; print(settings_markdown())'"
