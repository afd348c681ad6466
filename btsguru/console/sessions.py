"""Console sessions: who is logged in, kept in Redis so that logging out, changing a
password or disabling a user ends sessions on every process at once.

Beside the flow: `handlers.console` reads the session id from a signed, HttpOnly,
SameSite=Lax cookie and asks this store for the user. A new id is issued at every login
(no session fixation) and after a password change. Only the SHA-256 of an id is used in
Redis key names, so a dump of Redis cannot be replayed as cookies (as with API keys).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from btsguru.clock import Clock
from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

SESSION_ID_BYTES = 32  # 256 bits: not guessable, whatever the number of live sessions
# An idle session ends after two weeks (each request slides it); none lives longer than
# thirty days however active, so a stolen cookie does not work forever.
SESSION_IDLE_S = 14 * 86_400
SESSION_MAX_AGE_S = 30 * 86_400


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    user_id: int
    created_at: float  # epoch seconds


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SessionStore:
    def __init__(self, redis: RedisStores, clock: Clock, *, idle_s: int = SESSION_IDLE_S,
                 max_age_s: int = SESSION_MAX_AGE_S) -> None:
        self._redis = redis.data
        self._keys = redis.keys
        self._clock = clock
        self.idle_s = idle_s
        self.max_age_s = max_age_s

    def _session_key(self, session_id: str) -> str:
        return self._keys.key("console", "session", _digest(session_id))

    def _user_key(self, user_id: int) -> str:
        return self._keys.key("console", "user-sessions", user_id)

    async def create(self, user_id: int) -> ConsoleSession:
        """A new session for `user_id`, with a fresh random id."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock.time()
        key = self._session_key(session_id)
        # Not one MULTI: the session and the user's index are in different Cluster slots.
        # None is needed: should either write fail, this raises and the id, known to
        # nobody else, is never handed out (an unindexed session cannot be used).
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"user_id": user_id, "created_at": f"{now:.3f}"})
            pipe.expire(key, self.idle_s)
            pipe.sadd(self._user_key(user_id), _digest(session_id))
            pipe.expire(self._user_key(user_id), self.max_age_s)
            await pipe.execute()
        return ConsoleSession(session_id, user_id, now)

    async def get(self, session_id: str) -> ConsoleSession | None:
        """The live session with this id (its idle timer restarted), or None."""
        key = self._session_key(session_id)
        raw = await self._redis.hgetall(key)
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            user_id = int(fields["user_id"])
            created_at = float(fields["created_at"])
        except (KeyError, ValueError):
            await self._redis.delete(key)
            return None
        if self._clock.time() - created_at > self.max_age_s:
            await self.delete(session_id)
            return None
        await self._redis.expire(key, self.idle_s)
        return ConsoleSession(session_id, user_id, created_at)

    async def delete(self, session_id: str) -> None:
        key = self._session_key(session_id)
        raw_user = await self._redis.hget(key, "user_id")
        # the session goes first; a digest left in the index names nothing
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(key)
            if raw_user is not None:
                pipe.srem(self._user_key(int(raw_user)), _digest(session_id))
            await pipe.execute()

    async def delete_user_sessions(self, user_id: int, *, keep: str | None = None) -> int:
        """End every session of `user_id` (but `keep`, a session id); returns how many."""
        keep_digest = _digest(keep) if keep else None
        members = await self._redis.smembers(self._user_key(user_id))
        digests = [d for d in map(_text, members) if d != keep_digest]
        if not digests:
            return 0
        # The sessions (one slot each in a Cluster) go first, and only then their digests
        # leave the index: a failure in between leaves them findable for the next try.
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.delete(self._keys.key("console", "session", digest))
            await pipe.execute()
        await self._redis.srem(self._user_key(user_id), *digests)
        log.info("ended %d console session(s) of user %d", len(digests), user_id)
        return len(digests)
