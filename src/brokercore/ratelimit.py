"""Per-user rate limits: a token bucket kept in Redis, shared by every API process.

The bucket refills continuously at ``rate`` tokens per second up to ``capacity``; a
request takes one token or is refused with the time until the next token. The update
is one Lua script, so concurrent requests of one user never both take the last token,
and the clock is Redis's own, so API processes with skewed clocks agree.
"""

from __future__ import annotations

from redis.asyncio import Redis

__all__ = ["TokenBucket"]

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
    def __init__(self, redis: Redis, capacity: int, rate: float, prefix: str = "ratelimit:"):
        if capacity < 1 or rate <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and rate > 0")
        self.capacity = capacity
        self.rate = rate
        self.prefix = prefix
        self._take = redis.register_script(_TAKE)

    async def take(self, user_id: str) -> float:
        """0.0 if the request may go ahead, else the seconds to wait (Retry-After)."""
        wait = await self._take(keys=[self.prefix + user_id], args=[self.capacity, self.rate])
        return float(wait)
