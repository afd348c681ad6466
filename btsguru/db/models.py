"""The database schema: peewee models for accounts, usage and the games the relay has seen.

Sits under `auth` (users, keys, tiers, usage roll-ups) and beside `store` (which
persists every game seen and the static league/team data here). Only services query
these models; handlers never do, and no peewee object leaves a service.

Time: every datetime column holds a *naive UTC* datetime. MySQL's DATETIME and
PostgreSQL's TIMESTAMP carry no zone and SQLite stores text, so naive values compare
and sort the same way on all three; services convert to aware UTC (`from_db_time`)
before anything leaves them. `utc_now()` and `to_db_time()` drop microseconds because
MySQL's DATETIME does (MariaDB truncates them, MySQL rounds), so a value read back
equals the value written on every backend.

Sizes: every indexed text column fits MySQL's 767-byte index prefix limit in utf8mb4
(4 bytes a character: 191 characters at most), so the schema loads on old row formats
too. Large JSON documents use `DocumentField` (MEDIUMTEXT on MySQL, where TEXT stops
at 64 KiB). INTEGER is 32-bit on MySQL and PostgreSQL (64-bit on SQLite): services
bound what they store by `DB_INT_MAX`. Fractions are `DoubleField`s: FloatField is a
single-precision FLOAT on MySQL and REAL on PostgreSQL.

Text is compared byte for byte on every backend: names people look things up by (an
e-mail, a tier, a key prefix) are `ExactCharField`s, which MySQL gets with a binary
collation instead of the database's default, which ignores case and accents
(`jose@` and `josé@` would be one account). Even that one ignores trailing spaces
(PAD SPACE), so a service that looks up a name it did not strip compares the row's
again. PostgreSQL refuses NUL characters in text that the others store, so services
keep them out (`is_storable_text`).

`database` is the one module-level global the style allows: a proxy that
`btsguru.db.connect_database` points at the configured database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee

database = peewee.DatabaseProxy()

# The contract's route kinds for usage accounting (section 3, `GET /v1/usage`).
ROUTE_KINDS: tuple[str, ...] = ("live", "games", "standings", "raw", "stream", "other")

# The contract's API key scopes (section 1, `keys create --scopes`).
KEY_SCOPES: tuple[str, ...] = ("rest", "raw", "stream", "realtime-auth")
DEFAULT_KEY_SCOPES = ",".join(KEY_SCOPES)

EMAIL_MAX_LENGTH = 191  # utf8mb4 index limit (767 bytes / 4); RFC 5321 allows 254
DB_INT_MAX = 2**31 - 1  # INTEGER's largest on MySQL and PostgreSQL (SQLite's is 64-bit)
# MySQL's collation for `ExactCharField`: utf8mb4 compared by code point, as
# PostgreSQL's deterministic collations and SQLite's BINARY compare equality; MySQL and
# MariaDB both have it.
MYSQL_EXACT_COLLATION = "utf8mb4_bin"


def utc_now() -> datetime:
    """Now, as stored: naive UTC, whole seconds."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def to_db_time(value: datetime) -> datetime:
    """An aware datetime (any zone) or a naive UTC one, as stored: naive UTC, whole
    seconds."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(microsecond=0)


def from_db_time(value: datetime) -> datetime:
    """A stored naive-UTC datetime as an aware UTC datetime."""
    return value.replace(tzinfo=UTC)


def is_storable_text(value: str) -> bool:
    """Whether every backend stores and compares `value` alike: PostgreSQL refuses NUL
    characters in text, which MySQL and SQLite keep."""
    return "\x00" not in value


if TYPE_CHECKING:
    _TextField = peewee.TextField[str]
    _CharField = peewee.CharField[str]
else:  # peewee's field classes are generic only in its stubs
    _TextField = peewee.TextField
    _CharField = peewee.CharField


def _on_mysql(field: peewee.Field) -> bool:
    db = field.model._meta.database
    db = getattr(db, "obj", db)  # the proxy's target
    return isinstance(db, peewee.MySQLDatabase)


class ExactCharField(_CharField):
    """VARCHAR compared byte for byte, as PostgreSQL and SQLite compare any text: with
    MySQL's binary collation, where the default ones ignore case and accents (but not
    its trailing spaces: see the module)."""

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        if _on_mysql(self):
            node.nodes.append(peewee.SQL(f"COLLATE {MYSQL_EXACT_COLLATION}"))
        return node


class DocumentField(_TextField):
    """JSON text (already encoded by the caller; bytes from orjson are accepted).

    MEDIUMTEXT on MySQL/MariaDB, whose TEXT holds only 64 KiB and a game with its
    events can grow past that; TEXT elsewhere, which has no such limit."""

    def ddl_datatype(self, ctx: Any) -> Any:
        if _on_mysql(self):
            return peewee.SQL("MEDIUMTEXT")
        return super().ddl_datatype(ctx)

    def db_value(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value).decode("utf-8")
        return value if value is None else str(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class SchemaVersion(BaseModel):
    """One row per applied migration step (`btsguru.db.migrate`)."""

    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(100)
    applied_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "schema_version"


class Tier(BaseModel):
    """A tier's limits (contract section 5). Operators edit these rows; `migrate`
    seeds the defaults once and never overwrites them.

    The REST limit is a token bucket: `rest_burst` tokens at most, refilled at
    `rest_refill_per_s`; `rest_rate` per `rest_period_s` is the same limit as users
    read it (`RateLimit-Policy`), so `rest_refill_per_s == rest_rate / rest_period_s`."""

    id = peewee.AutoField()
    name = ExactCharField(32, unique=True)
    rest_rate = peewee.IntegerField()
    rest_period_s = peewee.IntegerField(default=60)
    rest_burst = peewee.IntegerField()
    rest_refill_per_s = peewee.DoubleField()
    daily_quota = peewee.IntegerField(null=True)  # null: unlimited
    max_streams = peewee.IntegerField()
    max_subscriptions = peewee.IntegerField()
    client_messages_per_s = peewee.IntegerField()
    raw_proxy = peewee.BooleanField(default=False)
    private_channels = peewee.BooleanField(default=False)
    client_events = peewee.BooleanField(default=False)
    updated_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "tiers"


class User(BaseModel):
    id = peewee.AutoField()
    email = ExactCharField(EMAIL_MAX_LENGTH, unique=True)  # always lower-cased
    password_hash = peewee.CharField(255)  # argon2id, encoded
    tier = peewee.ForeignKeyField(Tier, backref="users", on_delete="RESTRICT")
    tier_id: int  # peewee's accessor for the foreign key's raw value (no query)
    is_admin = peewee.BooleanField(default=False)
    disabled = peewee.BooleanField(default=False)
    created_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "users"  # "user" is reserved in PostgreSQL


class ApiKey(BaseModel):
    """An API key: never the secret, only its SHA-256. Keys are 238 random bits, so a
    fast unsalted hash is safe and lets a lookup be one indexed equality (as GitHub's
    tokens and Laravel Sanctum do); `prefix` is the key's visible first 12
    characters, for people to tell keys apart and revoke them."""

    id = peewee.AutoField()
    user = peewee.ForeignKeyField(User, backref="api_keys", on_delete="CASCADE")
    user_id: int
    name = peewee.CharField(100)
    prefix = ExactCharField(16, index=True)
    key_hash = peewee.CharField(64, unique=True)
    scopes = peewee.CharField(100, default=DEFAULT_KEY_SCOPES)
    created_at = peewee.DateTimeField(default=utc_now)
    expires_at = peewee.DateTimeField(null=True)
    last_used_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "api_keys"


class UsageDaily(BaseModel):
    """Requests per key, UTC day and route kind (one of `ROUTE_KINDS`)."""

    id = peewee.AutoField()
    key = peewee.ForeignKeyField(ApiKey, backref="usage_daily", on_delete="CASCADE")
    key_id: int  # peewee's accessor for the foreign key's raw value (no query)
    day = peewee.DateField()
    kind = peewee.CharField(16)
    requests = peewee.BigIntegerField(default=0)
    cache_hits = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "usage_daily"
        indexes = ((("key", "day", "kind"), True),)


class UsageHourly(BaseModel):
    """Requests per key, UTC hour (truncated naive-UTC datetime) and route kind."""

    id = peewee.AutoField()
    key = peewee.ForeignKeyField(ApiKey, backref="usage_hourly", on_delete="CASCADE")
    key_id: int
    hour = peewee.DateTimeField()
    kind = peewee.CharField(16)
    requests = peewee.BigIntegerField(default=0)
    cache_hits = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "usage_hourly"
        indexes = ((("key", "hour", "kind"), True),)


class League(BaseModel):
    """A league as the upstream describes it; `id` is the upstream's id within `sport`."""

    sport = peewee.CharField(32)
    id = peewee.IntegerField()
    name = peewee.CharField(200)
    country = peewee.CharField(100, null=True)
    season = peewee.CharField(16, null=True)  # "2024" or "2024-2025", as the sport has it
    logo = peewee.CharField(500, null=True)
    data = DocumentField()
    updated_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "leagues"
        primary_key = peewee.CompositeKey("sport", "id")


class Team(BaseModel):
    sport = peewee.CharField(32)
    id = peewee.IntegerField()
    name = peewee.CharField(200)
    logo = peewee.CharField(500, null=True)
    league_id = peewee.IntegerField(null=True)
    data = DocumentField()
    updated_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "teams"
        primary_key = peewee.CompositeKey("sport", "id")


class GameRecord(BaseModel):
    """Every game the relay has seen, whatever its phase: `data` is the normalized
    Game's JSON; the other columns are copies of its fields for queries."""

    sport = peewee.CharField(32)
    id = peewee.IntegerField()
    league_id = peewee.IntegerField()
    start_time = peewee.DateTimeField()
    phase = peewee.CharField(16)
    status_code = peewee.CharField(16)
    home_team_id = peewee.IntegerField(null=True)
    away_team_id = peewee.IntegerField(null=True)
    data = DocumentField()
    updated_at = peewee.DateTimeField(default=utc_now)

    class Meta:
        table_name = "games"
        primary_key = peewee.CompositeKey("sport", "id")
        indexes = (
            (("sport", "start_time"), False),
            (("sport", "league_id"), False),
        )


# In dependency order: a table comes after the tables it references.
MODELS: tuple[type[BaseModel], ...] = (
    SchemaVersion, Tier, User, ApiKey, UsageDaily, UsageHourly, League, Team, GameRecord,
)
