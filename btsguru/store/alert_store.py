"""The alerts' records: what an alert is, its raise and resolve events, and where the
firing set and the recent events are kept in Redis (`AlertStore`).

Where it sits: in the store, under `btsguru.alerts` (the alerter that decides what fires)
and the ops console (which shows the recent events).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from btsguru.store.redis import RedisStores

Severity = Literal["warning", "critical"]

RECENT_ALERTS = 200  # events kept for the console (a busy day's worth)


@dataclass(frozen=True)
class Alert:
    """A condition that holds now. `id` names the alert and its subject, so a sport's
    staleness and another sport's are separate alerts."""

    id: str
    name: str
    severity: Severity
    message: str
    subject: str = ""


@dataclass(frozen=True)
class AlertRow:
    """One line of the ops console's recent alerts (`AlertStore.rows`)."""

    at: datetime  # aware UTC
    level: str
    message: str


@dataclass(frozen=True)
class AlertEvent:
    status: Literal["firing", "resolved"]
    alert: Alert
    at: float  # epoch seconds on the alerter's clock

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "at": iso(self.at), **asdict(self.alert)}

    def text(self) -> str:
        """Slack's `text`: one readable line."""
        if self.status == "resolved":
            return f":white_check_mark: RESOLVED {self.alert.name}: {self.alert.message}"
        mark = ":rotating_light:" if self.alert.severity == "critical" else ":warning:"
        return f"{mark} {self.alert.severity.upper()} {self.alert.name}: {self.alert.message}"


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlertStore:
    """The firing set and the recent events in Redis (the `data` database).

    Earlier versions kept them under untagged names (`alerts:firing`, `alerts:recent`):
    those are still read, so an alert raised before an upgrade is neither raised again
    nor forgotten (its resolve deletes it from both), and the console's recent events
    run on into the older ones. Nothing is written there any more."""

    def __init__(self, redis: RedisStores) -> None:
        self._redis = redis.data
        self._firing = redis.keys.tagged("alerts", "alerts", "firing")
        self._recent = redis.keys.tagged("alerts", "alerts", "recent")
        self._legacy_firing = redis.keys.key("alerts", "firing")
        self._legacy_recent = redis.keys.key("alerts", "recent")

    async def firing(self) -> dict[str, Alert]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._legacy_firing)
            pipe.hgetall(self._firing)
            legacy, current = await pipe.execute()
        found = {}
        for key, blob in (legacy | current).items():
            fields = orjson.loads(blob)
            found[key.decode() if isinstance(key, bytes) else str(key)] = Alert(
                id=fields["id"], name=fields["name"], severity=fields["severity"],
                message=fields["message"], subject=fields.get("subject", ""))
        return found

    async def record(self, event: AlertEvent) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            if event.status == "firing":
                pipe.hset(self._firing, event.alert.id, orjson.dumps(asdict(event.alert)))
            else:
                pipe.hdel(self._firing, event.alert.id)
            pipe.lpush(self._recent, orjson.dumps(event.to_json()))
            pipe.ltrim(self._recent, 0, RECENT_ALERTS - 1)
            await pipe.execute()
        if event.status == "resolved":  # raised by an earlier version, maybe
            await self._redis.hdel(self._legacy_firing, event.alert.id)

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        blobs = await self._redis.lrange(self._recent, 0, limit - 1)
        if len(blobs) < limit:  # then the events of an earlier version, older still
            blobs += await self._redis.lrange(self._legacy_recent, 0, limit - len(blobs) - 1)
        return [orjson.loads(blob) for blob in blobs]

    async def rows(self) -> list[AlertRow]:
        """For the ops console: newest first; a resolve shows at info."""
        rows = []
        for entry in await self.recent():
            level = "info" if entry["status"] == "resolved" else entry["severity"]
            prefix = "resolved: " if entry["status"] == "resolved" else ""
            rows.append(AlertRow(
                at=datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC),
                level=level, message=f"{prefix}{entry['name']}: {entry['message']}"))
        return rows
