"""Failed logins, counted in Redis per email and per client address, so that guessing
passwords costs an attacker time whichever they vary.

After ``EMAIL_FAILURES`` failures within ``WINDOW`` seconds an email is locked for
``WINDOW`` seconds (counted from the failure that locked it); an address may fail
``ADDRESS_FAILURES`` times per window. The email is counted as typed (lower-cased),
whether it belongs to a user or not, so a lockout says nothing about which emails exist.
Each count is a Redis key whose expiry is its window: one INCR and, when a window starts
or the lock closes, an EXPIRE, in one script (atomic, Redis's clock).
"""

from __future__ import annotations

from redis.asyncio import Redis

__all__ = ["WINDOW", "EMAIL_FAILURES", "ADDRESS_FAILURES", "LoginThrottle"]

WINDOW = 900
EMAIL_FAILURES = 5
ADDRESS_FAILURES = 20

_FAIL = """
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 or count == tonumber(ARGV[i]) then
    redis.call('EXPIRE', key, ARGV[#ARGV])
  end
end
"""


class LoginThrottle:
    def __init__(self, redis: Redis, prefix: str):
        self.redis = redis
        self.prefix = prefix + "login-failures:"
        self._fail = redis.register_script(_FAIL)

    def _keys(self, email: str, address: str) -> list[str]:
        return [self._email_key(email), f"{self.prefix}address:{address}"]

    def _email_key(self, email: str) -> str:
        return f"{self.prefix}email:{email}"

    async def wait(self, email: str, address: str) -> int:
        """0 if a login for ``email`` from ``address`` may be tried, else the seconds
        until it may (Retry-After)."""
        keys = self._keys(email, address)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.ttl(key)
            email_count, email_ttl, address_count, address_ttl = await pipe.execute()
        waits = [
            max(1, int(ttl))
            for count, ttl, limit in (
                (email_count, email_ttl, EMAIL_FAILURES),
                (address_count, address_ttl, ADDRESS_FAILURES),
            )
            if count is not None and int(count) >= limit
        ]
        return max(waits, default=0)

    async def failed(self, email: str, address: str) -> None:
        """Count a failed login (a wrong password or second factor)."""
        await self._fail(
            keys=self._keys(email, address), args=[EMAIL_FAILURES, ADDRESS_FAILURES, WINDOW]
        )

    async def succeeded(self, email: str) -> None:
        """A login that passed (its second factor too) forgets the email's failures (not
        the address's)."""
        await self.redis.delete(self._email_key(email))
