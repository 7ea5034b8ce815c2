"""The read cache: per-user JSON answers in Redis, invalidated by generation.

Every user has a generation counter (``{prefix}cache:{user}:gen``); a cached answer is
stored under the generation current when its read *started*. A writer that changes what
a user sees (the OMS on a new order, settlement and the projector after each commit)
increments the counter after committing, which makes every older entry unreachable at
once. So a read that raced a write can never park a stale answer where later reads
find it: it is filed under the old generation. Entries expire after ``ttl`` seconds.

Redis is an accelerator only: when it fails, reads go to the read model (and Redis is
left alone for ``retry_after`` seconds), and invalidations that failed are retried
before the next ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import redis
from redis.asyncio import Redis as AsyncRedis

__all__ = ["UserCache", "Invalidator", "invalidate"]

log = logging.getLogger("brokercore.read.cache")

_GEN_TTL = 86_400  # far longer than any entry lives, so a lapsed counter is harmless

# One command for any number of users: each generation incremented, kept for the TTL.
_BUMP = """
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[1])
end
"""

# One round trip: the generation, and the entry filed under it.
_LOOKUP = """
local gen = redis.call('GET', KEYS[1]) or '0'
return {gen, redis.call('GET', ARGV[1] .. gen .. ':' .. ARGV[2])}
"""


def _gen_key(prefix: str, user: str) -> str:
    return f"{prefix}cache:{user}:gen"


def _gen_keys(prefix: str, users: Iterable[str]) -> list[str]:
    return [_gen_key(prefix, user) for user in sorted(set(users))]


class UserCache:
    """Cached reads for the query service (asyncio)."""

    def __init__(
        self, client: AsyncRedis, prefix: str, ttl: float = 30.0, retry_after: float = 1.0
    ):
        self.redis, self.prefix, self.ttl, self.retry_after = client, prefix, ttl, retry_after
        self._lookup = client.register_script(_LOOKUP)
        self._bump = client.register_script(_BUMP)
        self._down_until = 0.0
        self.hits = self.misses = self.errors = 0

    async def get(self, user: str, name: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached answer ``name`` of ``user``, or ``load()``'s (then cached)."""
        if time.monotonic() < self._down_until:
            return await load()
        try:
            gen, value = await self._lookup(
                keys=[_gen_key(self.prefix, user)], args=[f"{self.prefix}cache:{user}:", name]
            )
        except redis.RedisError as e:
            self._failed(e)
            return await load()
        if isinstance(value, bytes):
            self.hits += 1
            return value
        self.misses += 1
        answer = await load()
        try:
            key = f"{self.prefix}cache:{user}:{gen.decode()}:{name}"
            await self.redis.set(key, answer, px=int(self.ttl * 1000))
        except redis.RedisError as e:
            self._failed(e)
        return answer

    async def invalidate(self, users: Iterable[str]) -> None:
        """For asyncio writers (the OMS); a failure is logged, the entries expire."""
        keys = _gen_keys(self.prefix, users)
        if not keys:
            return
        try:
            await self._bump(keys=keys, args=[_GEN_TTL])
        except redis.RedisError as e:
            self._failed(e)

    def _failed(self, error: Exception) -> None:
        """Counted each time, logged once per ``retry_after`` at most (the OMS
        invalidates on every order: an outage is not a line per order)."""
        self.errors += 1
        if time.monotonic() >= self._down_until:
            log.warning("redis cache unavailable (%s); reading the read model", error)
        self._down_until = time.monotonic() + self.retry_after


class Invalidator:
    """Invalidation for the consumers' threads (sync Redis). Users whose invalidation
    failed are kept and tried again with the next call."""

    def __init__(self, client: redis.Redis, prefix: str):
        self.redis, self.prefix = client, prefix
        self.pending: set[str] = set()

    def __call__(self, users: Iterable[str]) -> bool:
        self.pending.update(users)
        if not self.pending:
            return True
        try:
            invalidate(self.redis, self.prefix, self.pending)
        except redis.RedisError as e:
            log.warning(
                "cache invalidation of %d users failed (%s); will retry", len(self.pending), e
            )
            return False
        self.pending.clear()
        return True


def invalidate(client: redis.Redis, prefix: str, users: Iterable[str]) -> None:
    keys = _gen_keys(prefix, users)
    if keys:
        client.register_script(_BUMP)(keys=keys, args=[_GEN_TTL])
