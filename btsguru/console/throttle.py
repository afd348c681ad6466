"""Login and sign-up throttling for the console, per account and per client address.

Beside the flow: `handlers.console` asks `LoginThrottle.blocked` before checking a
password and reports each failure. Counters are fixed windows in Redis (`INCR` and an
expiry set by the first failure), shared by every process. Accounts are counted by the
SHA-256 of the e-mail as typed (lower-cased), whether or not such an account exists, so
the throttle itself never tells which addresses have accounts; the messages users see
are the same for both.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from btsguru.store.redis import RedisStores

log = logging.getLogger(__name__)

# OWASP's guidance: a handful of tries per account before a pause, a wider allowance per
# address (an office or a carrier NAT shares one) to stop spraying many accounts.
ACCOUNT_MAX_FAILURES = 5
ACCOUNT_WINDOW_S = 15 * 60
IP_MAX_FAILURES = 30
IP_WINDOW_S = 15 * 60
SIGNUP_MAX_PER_IP = 10  # accounts one address may create per window
SIGNUP_WINDOW_S = 60 * 60


@dataclass(frozen=True)
class ThrottleLimits:
    account_max: int = ACCOUNT_MAX_FAILURES
    account_window_s: int = ACCOUNT_WINDOW_S
    ip_max: int = IP_MAX_FAILURES
    ip_window_s: int = IP_WINDOW_S
    signup_max: int = SIGNUP_MAX_PER_IP
    signup_window_s: int = SIGNUP_WINDOW_S


def _account(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, redis: RedisStores, limits: ThrottleLimits | None = None) -> None:
        self._redis = redis.data
        self._keys = redis.keys
        self.limits = limits or ThrottleLimits()

    def _account_key(self, email: str) -> str:
        return self._keys.key("console", "throttle", "account", _account(email))

    def _ip_key(self, ip: str) -> str:
        return self._keys.key("console", "throttle", "ip", ip)

    def _signup_key(self, ip: str) -> str:
        return self._keys.key("console", "throttle", "signup", ip)

    async def blocked(self, email: str, ip: str) -> int | None:
        """Seconds until a login for `email` from `ip` may be tried again, or None."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in (self._account_key(email), self._ip_key(ip)):
                pipe.get(key)
                pipe.ttl(key)
            account, account_ttl, by_ip, ip_ttl = await pipe.execute()
        waits = []
        if account is not None and int(account) >= self.limits.account_max:
            waits.append(max(1, int(account_ttl)))
        if by_ip is not None and int(by_ip) >= self.limits.ip_max:
            waits.append(max(1, int(ip_ttl)))
        return max(waits) if waits else None

    async def failed(self, email: str, ip: str) -> None:
        """Count a failed login (wrong password, unknown or disabled account alike)."""
        # one MULTI per counter (a counter must never lose its expiry); the two counters
        # need not change together, and in a Redis Cluster they live in different slots
        for key, window_s in ((self._account_key(email), self.limits.account_window_s),
                              (self._ip_key(ip), self.limits.ip_window_s)):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, window_s, nx=True)
                await pipe.execute()

    async def succeeded(self, email: str) -> None:
        """A good password clears the account's count (not the address's: one success
        must not reset a spray across other accounts)."""
        await self._redis.delete(self._account_key(email))

    async def signup_allowed(self, ip: str) -> int | None:
        """Count a sign-up from `ip`; seconds to wait when over the limit, else None."""
        key = self._signup_key(ip)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.limits.signup_window_s, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        if int(count) > self.limits.signup_max:
            log.info("sign-up throttled for %s (%d in the window)", ip, count)
            return max(1, int(ttl))
        return None
