"""Per-user rate limits: a token bucket kept in Redis, shared by every API process.

The bucket refills continuously at ``rate`` tokens per second up to ``capacity``; a
request takes one token or is refused with the time until the next token. The update
is one Lua script, so concurrent requests of one user never both take the last token,
and the clock is Redis's own, so API processes with skewed clocks agree.

While Redis is away the limit fails safe, neither open nor shut: each process keeps the
same bucket per user in its own memory (``LocalBuckets``) and answers from it, and
Redis is left alone for a back-off (0.1 s doubling up to ``retry_cap``) after each
failure, so an outage costs a failed call a second and two log lines (it started, it
ended), not one per request. A user can then get the budget once per API process until
Redis is back, when the shared buckets take over again.
"""

from __future__ import annotations

import logging
import time

import redis
from redis.asyncio import Redis

from brokercore.faults.backoff import Backoff

__all__ = ["TokenBucket", "LocalBuckets"]

log = logging.getLogger("brokercore.edge.ratelimit")

_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class TokenBucket:
    def __init__(
        self,
        client: Redis,
        capacity: int,
        rate: float,
        prefix: str = "ratelimit:",
        retry_cap: float = 1.0,
    ):
        if capacity < 1 or rate <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and rate > 0")
        self.capacity = capacity
        self.rate = rate
        self.prefix = prefix
        self.local = LocalBuckets(capacity, rate)
        self.outage = Backoff(
            "redis (for the rate limit; limiting in this process)", log, cap=retry_cap
        )
        self._take = client.register_script(_TAKE)
        self._down_until = 0.0

    async def take(self, user_id: str) -> float:
        """0.0 if the request may go ahead, else the seconds to wait (Retry-After)."""
        if time.monotonic() >= self._down_until:
            try:
                wait = float(
                    await self._take(keys=[self.prefix + user_id], args=[self.capacity, self.rate])
                )
            except redis.RedisError as e:
                self._down_until = time.monotonic() + self.outage.failed(e)
            else:
                self.outage.recovered()
                return wait
        return self.local.take(user_id)


class LocalBuckets:
    """The same token buckets in this process's memory (monotonic clock), for while
    Redis is away. Past ``max_users`` buckets, the full ones are forgotten (that changes
    nothing), then the least recently used, down to half the bound: the memory stays
    bounded, at worst a forgotten user starts again from a full bucket."""

    def __init__(self, capacity: int, rate: float, max_users: int = 100_000):
        self.capacity, self.rate, self.max_users = capacity, rate, max_users
        self._buckets: dict[str, tuple[float, float]] = {}  # user: (tokens, at), by use

    def take(self, user_id: str) -> float:
        now = time.monotonic()
        tokens, at = self._buckets.pop(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[user_id] = (tokens, now)
        if len(self._buckets) > self.max_users:
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        kept = {
            user: (t, a)
            for user, (t, a) in self._buckets.items()
            if t + (now - a) * self.rate < self.capacity
        }
        for user in list(kept)[: max(0, len(kept) - self.max_users // 2)]:
            del kept[user]
        self._buckets = kept
