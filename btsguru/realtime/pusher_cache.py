"""Cache channels (`cache-*`, `private-cache-*`, `presence-cache-*`): what a new
subscriber is sent right after `pusher_internal:subscription_succeeded` (PUSHER.md
section 11, the contract's "Pusher extras").

Where it sits: `realtime.pusher_channels` asks here while it subscribes a socket; the
answers come from the games store, the event history (through the hub) and the app
channels' cache (`store.pusher_cache`).

- A game's channel (`cache-sports.football.39.1035037`): the whole current game as
  `game.snapshot`. The hub sends it as it does on every game channel; only when this
  socket already follows the game under another name (so no new catch-up runs) is it
  read and sent here. No game: `pusher:cache_miss`.
- A sport's or a league's channel (`cache-sports.football.39`): the last event published
  on it (the newest in the history that it covers), else what the HTTP API published on
  that very name, else `pusher:cache_miss`.
- An app channel: the last event the server published on it (30 minutes), else
  `pusher:cache_miss`. Client events never fill it.

Every `pusher:cache_miss` sent is reported to `on_miss` (the `cache_miss` webhook).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from btsguru.realtime.catchup import SNAPSHOT_EVENT
from btsguru.realtime.channels import Channel
from btsguru.realtime.hub import Hub
from btsguru.realtime.pusher_crypto import encrypted_data
from btsguru.realtime.pusher_protocol import cache_miss_frame, event_data_string, event_frame
from btsguru.realtime.pusher_socket import PusherSocket
from btsguru.sports.base import game_to_json
from btsguru.store.pusher_cache import ChannelCache


class CachedEvents:
    """`on_miss(channel)` hears each `pusher:cache_miss` sent (the `cache_miss` webhook)."""

    def __init__(self, hub: Hub, cache: ChannelCache,
                 on_miss: Callable[[str], None] | None = None) -> None:
        self._hub = hub
        self._cache = cache
        self._on_miss = on_miss

    def _miss(self, name: str) -> bytes:
        if self._on_miss is not None:
            self._on_miss(name)
        return cache_miss_frame(name)

    async def for_app_channel(self, conn: PusherSocket, name: str) -> bytes:
        """The frame to send after success on app channel `name`."""
        cached = await self._cache.cached(name)
        if cached is None:
            return self._miss(name)
        conn.cache_sent[name] = str(cached.get("id"))
        data = cached.get("data")
        data_json = orjson.dumps(data if isinstance(data, str) else "")
        return event_frame(str(cached.get("event")), name, data_json)

    async def snapshot(self, name: str, channel: Channel,
                       secret: bytes | None) -> bytes | None:
        """`game.snapshot` of a game's channel `name`, as its frame (None: no such game)."""
        assert channel.game_id is not None
        game = await self._hub.games.get(channel.sport, channel.game_id)
        if game is None or (channel.league_id is not None
                            and game.league.id != channel.league_id):
            return None
        return event_frame(SNAPSHOT_EVENT, name, _data(orjson.dumps(game_to_json(game)), secret))

    async def for_game_channel(self, name: str, channel: Channel, secret: bytes | None, *,
                               hub_sends_snapshot: bool) -> bytes | None:
        """The frame to send after success on game channel `name` (None: the hub's
        `game.snapshot` is the cached event); `secret`: an encrypted channel's key."""
        if channel.game_id is not None:
            snapshot = await self.snapshot(name, channel, secret)
            if snapshot is None:
                return self._miss(name)
            return None if hub_sends_snapshot else snapshot
        last = await self._hub.history.last_on(channel.name)
        if last is not None:
            return event_frame(last.event, name, _data(last.data_json, secret))
        cached = await self._cache.cached(name)
        if cached is not None and isinstance(cached.get("data"), str):
            return event_frame(str(cached.get("event")), name,
                               orjson.dumps(cached["data"]))
        return self._miss(name)


def _data(data_json: bytes, secret: bytes | None) -> bytes:
    """An event's `data` string as written to a game channel (encrypted or not)."""
    return event_data_string(data_json) if secret is None \
        else encrypted_data(secret, data_json)
