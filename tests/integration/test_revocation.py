"""Revoked sessions on the real Redis (brokercore.edge.revocation): what ``revoke_sessions``
writes, and each process's copy refreshed in the background. The set is the platform's
one key, shared with other tests: each test uses sids of its own and asserts only them."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from brokercore.edge.revocation import REVOKED_SESSIONS, RevokedSessions, revoke_sessions
from shared_servers import REDIS_URL


def sid() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_a_revocation_keeps_its_latest_time_and_expired_ones_are_dropped():
    kept, lowered, expired = sid(), sid(), sid()

    async def scenario():
        redis = Redis.from_url(REDIS_URL)
        try:
            now = time.time()
            await revoke_sessions(redis, [kept, lowered], now + 100)
            await revoke_sessions(redis, [lowered], now + 10)  # an earlier time changes nothing
            await revoke_sessions(redis, [expired], now - 1)  # already past: dropped at once
            scores = [await redis.zscore(REVOKED_SESSIONS, s) for s in (kept, lowered, expired)]
            await redis.zrem(REVOKED_SESSIONS, kept, lowered)
            return now, scores
        finally:
            await redis.aclose()

    now, scores = asyncio.run(scenario())
    assert scores == [now + 100, now + 100, None]


def test_each_process_copy_follows_the_set_in_the_background():
    first, later, past = sid(), sid(), sid()

    async def scenario():
        redis = Redis.from_url(REDIS_URL)
        revoked = RevokedSessions(redis, interval=0.05)
        try:
            await revoke_sessions(redis, [first], time.time() + 60)
            await redis.zadd(REVOKED_SESSIONS, {past: time.time() - 1})  # no longer revoked
            await revoked.open()
            at_open = {first, past} & revoked.sids
            await revoke_sessions(redis, [later], time.time() + 60)
            for _ in range(400):
                if later in revoked:
                    break
                await asyncio.sleep(0.05)
            return at_open, {first, later, past} & revoked.sids
        finally:
            await revoked.close()
            await redis.zrem(REVOKED_SESSIONS, first, later, past)
            await redis.aclose()

    at_open, after = asyncio.run(scenario())
    assert at_open == {first}
    assert after == {first, later}
