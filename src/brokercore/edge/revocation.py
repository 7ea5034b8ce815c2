"""Revoked sessions: the refresh-token families (a token's ``sid``) whose access tokens
every service must refuse before they expire.

One Redis sorted set, ``REVOKED_SESSIONS`` under the deployment's key prefix
(BROKERCORE_REDIS_PREFIX, as every key of the platform): member = sid, score = the unix time until
which it stays revoked (the access tokens' longest lifetime past the revocation; after
that no token of the session is valid anyway). The identity service writes it on logout
and on refresh-token reuse (``revoke_sessions``); each service process keeps a copy in
memory (``RevokedSessions``), refreshed in the background every second, so a request
costs no Redis round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from redis import RedisError
from redis.asyncio import Redis

from brokercore.faults.backoff import Backoff

__all__ = ["REVOKED_SESSIONS", "RevokedSessions", "revoke_sessions"]

log = logging.getLogger("brokercore.edge.revocation")

REVOKED_SESSIONS = "auth:revoked-sessions"
"""The sorted set of revoked sids (score: revoked until, unix seconds)."""


async def revoke_sessions(redis: Redis, prefix: str, sids: Iterable[str], until: float) -> None:
    """Revoke the sessions ``sids`` until the unix time ``until`` (members already
    revoked for longer keep their later time), and drop the members whose time has
    passed, in one transaction."""
    key, members = prefix + REVOKED_SESSIONS, {sid: until for sid in sids}
    async with redis.pipeline(transaction=True) as pipe:
        if members:
            pipe.zadd(key, members, gt=True)
        pipe.zremrangebyscore(key, "-inf", time.time())
        await pipe.execute()


class RevokedSessions:
    """This process's copy of the revoked sids, read from Redis at ``open`` and then
    every ``interval`` seconds by a background task. While Redis is away the last copy
    stays in force (a revocation made meanwhile takes effect when Redis is back)."""

    def __init__(self, redis: Redis, prefix: str, interval: float = 1.0):
        self.redis = redis
        self.key = prefix + REVOKED_SESSIONS
        self.interval = interval
        self.sids: frozenset[str] = frozenset()
        self.outage = Backoff("redis (for the revoked sessions; using the last copy)", log)
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, sid: object) -> bool:
        return sid in self.sids

    async def refresh(self) -> None:
        """Read the sids still revoked now."""
        members = await self.redis.zrangebyscore(self.key, time.time(), "+inf")
        self.sids = frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def open(self) -> None:
        """The first copy (if Redis answers: else logged, and read by the task), then
        the refreshing task."""
        try:
            await self.refresh()
        except RedisError as e:
            self.outage.failed(e)
        self._task = asyncio.create_task(self._poll(), name="revoked-sessions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except RedisError as e:
                delay = max(self.interval, self.outage.failed(e))
            else:
                self.outage.recovered()
                delay = self.interval
