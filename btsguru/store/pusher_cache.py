"""What Pusher cache channels remember: the last event the server published on each app
channel (`cache-*`, `private-cache-*`, `presence-cache-*`), cluster-wide, for
`CACHE_TTL_S` (PUSHER.md section 11; Pusher holds it 30 minutes).

Where it sits: beside `store.pusher`. The HTTP API (`handlers.pusher_http`) remembers an
event here, then publishes it on the app bus; a new subscriber on any process gets the
remembered one right after `subscription_succeeded` (`realtime.pusher_cache`). Client
events never fill it (Pusher's rule). Game channels' cache forms need nothing here: their
cached event is the game's current state, read from the games store.

Each remembered message carries an `id`, so a subscriber that gets it from here and
then, racing, from the bus, is written it once.

Key: `{prefix}pusher-cache:{<channel>}`, the Pusher channel as the Cluster hash tag (the
slot of its presence keys and of its sharded bus channel).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from btsguru.store.redis import Keys, RedisClient

CACHE_TTL_S = 30 * 60


class ChannelCache:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def _key(self, channel: str) -> str:
        return self._keys.tagged("pusher-cache", channel)

    async def remember(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        """Keep `message` as `channel`'s last event; returns it with its `id` (publish
        that one)."""
        stored = {**message, "id": secrets.token_hex(8)}
        stored.pop("except", None)  # every later subscriber gets it, the publisher's too
        await self._redis.set(self._key(channel), orjson.dumps(stored), ex=CACHE_TTL_S)
        return {**message, "id": stored["id"]}

    async def cached(self, channel: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(channel))
        if raw is None:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None
