"""Tiers: the limits a user's keys share (contract section 5), read from the database.

Beside the flow: the rate limiter, the stream handlers and the Pusher auth ask which
limits apply to a key's tier; the ops console changes them. The rows are seeded by
`btsguru.db.migrate` and afterwards belong to the operators. Callers on a hot path
cache `TierLimits` (they are immutable values), since every call here is a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from btsguru.db.models import DB_INT_MAX, Tier, from_db_time, is_storable_text, utc_now
from btsguru.db.runner import DatabaseRunner
from btsguru.errors import BadRequest, NotFound


@dataclass(frozen=True)
class TierLimits:
    """One tier's limits. REST: a token bucket of `rest_burst` tokens refilled at
    `rest_refill_per_s`, advertised as `rest_rate` requests per `rest_period_s`."""

    name: str
    rest_rate: int
    rest_period_s: int
    rest_burst: int
    rest_refill_per_s: float
    daily_quota: int | None  # None: unlimited
    max_streams: int  # concurrent stream connections per user
    max_subscriptions: int  # per connection
    client_messages_per_s: int  # per connection
    raw_proxy: bool
    private_channels: bool  # private- and presence- channels
    client_events: bool
    updated_at: datetime  # aware UTC


# The limits `update` accepts, with their minimum (the maximum of each, and of
# daily_quota, is DB_INT_MAX: what an INTEGER column holds on every backend); bool
# fields take only bools.
_INT_MINIMUMS: dict[str, int] = {
    "rest_rate": 1, "rest_period_s": 1, "rest_burst": 1, "max_streams": 0,
    "max_subscriptions": 0, "client_messages_per_s": 0,
}
_BOOL_LIMITS = ("raw_proxy", "private_channels", "client_events")
LIMIT_NAMES: tuple[str, ...] = (*_INT_MINIMUMS, "rest_refill_per_s", "daily_quota", *_BOOL_LIMITS)


def tier_limits(row: Tier) -> TierLimits:
    """A `Tier` row as a value (for services that joined the tier into their query)."""
    return TierLimits(
        name=row.name, rest_rate=row.rest_rate, rest_period_s=row.rest_period_s,
        rest_burst=row.rest_burst, rest_refill_per_s=float(row.rest_refill_per_s),
        daily_quota=row.daily_quota, max_streams=row.max_streams,
        max_subscriptions=row.max_subscriptions,
        client_messages_per_s=row.client_messages_per_s, raw_proxy=bool(row.raw_proxy),
        private_channels=bool(row.private_channels), client_events=bool(row.client_events),
        updated_at=from_db_time(row.updated_at),
    )


class TierService:
    def __init__(self, runner: DatabaseRunner) -> None:
        self._runner = runner

    async def get(self, name: str) -> TierLimits:
        """The tier `name`; `NotFound` if there is none."""
        return await self._runner.read(_get, name)

    async def all(self) -> list[TierLimits]:
        """Every tier, in the order they were created (free, pro, enterprise first)."""
        return await self._runner.read(_all)

    async def update(self, name: str, **limits: Any) -> TierLimits:
        """Change some of tier `name`'s limits (names in `LIMIT_NAMES`); returns the
        result. Changing `rest_rate` or `rest_period_s` without `rest_refill_per_s`
        recomputes the refill so the bucket keeps matching the advertised rate.
        `BadRequest` for an unknown limit or a bad value, `NotFound` for no tier."""
        changes = _validate(limits)
        return await self._runner.write(_update, name, changes)


def _validate(limits: dict[str, Any]) -> dict[str, Any]:
    if not limits:
        raise BadRequest("nothing to change: give at least one limit")
    changes: dict[str, Any] = {}
    for key, value in limits.items():
        if key in _INT_MINIMUMS:
            if not _is_int_in(value, _INT_MINIMUMS[key]):
                raise BadRequest(f"{key}: expected an integer from {_INT_MINIMUMS[key]} to "
                                 f"{DB_INT_MAX}, got {value!r}")
        elif key == "daily_quota":
            if value is not None and not _is_int_in(value, 0):
                raise BadRequest(f"daily_quota: expected an integer from 0 to {DB_INT_MAX} "
                                 f"or None (unlimited), got {value!r}")
        elif key == "rest_refill_per_s":
            # bounded, which also keeps out infinity: MySQL's DOUBLE cannot hold it
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0 < value <= DB_INT_MAX):
                raise BadRequest(f"rest_refill_per_s: expected a number > 0 and at most "
                                 f"{DB_INT_MAX}, got {value!r}")
            changes[key] = float(value)
            continue
        elif key in _BOOL_LIMITS:
            if not isinstance(value, bool):
                raise BadRequest(f"{key}: expected true or false, got {value!r}")
        else:
            raise BadRequest(f"unknown tier limit {key!r}; limits: {', '.join(LIMIT_NAMES)}")
        changes[key] = value
    return changes


def _is_int_in(value: Any, minimum: int) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and minimum <= value <= DB_INT_MAX)


def _row(name: str) -> Tier:
    row = Tier.get_or_none(Tier.name == name) if is_storable_text(name) else None
    if row is None or row.name != name:  # MySQL's collations ignore trailing spaces
        known = ", ".join(t.name for t in Tier.select(Tier.name).order_by(Tier.id))
        raise NotFound(f"unknown tier {name!r}; tiers: {known}")
    return row


def _get(name: str) -> TierLimits:
    return tier_limits(_row(name))


def _all() -> list[TierLimits]:
    return [tier_limits(row) for row in Tier.select().order_by(Tier.id)]


def _update(name: str, changes: dict[str, Any]) -> TierLimits:
    row = _row(name)
    if "rest_refill_per_s" not in changes and ({"rest_rate", "rest_period_s"} & changes.keys()):
        rate = changes.get("rest_rate", row.rest_rate)
        period_s = changes.get("rest_period_s", row.rest_period_s)
        changes = {**changes, "rest_refill_per_s": rate / period_s}
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = utc_now()
    row.save()
    return tier_limits(row)
