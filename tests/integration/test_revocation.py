"""Revoked sessions on the real Redis (brokercore.edge.revocation): what ``revoke_sessions``
writes, and each process's copy refreshed in the background, each test under a key
prefix of its own (a deployment's BROKERCORE_REDIS_PREFIX)."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from brokercore.edge.revocation import REVOKED_SESSIONS, RevokedSessions, revoke_sessions
from shared_servers import REDIS_URL


def sid() -> str:
    return f"test-{uuid.uuid4().hex}"


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


def test_a_revocation_keeps_its_latest_time_and_expired_ones_are_dropped():
    kept, lowered, expired = sid(), sid(), sid()
    ours = prefix()

    async def scenario():
        redis = Redis.from_url(REDIS_URL)
        try:
            now = time.time()
            await revoke_sessions(redis, ours, [kept, lowered], now + 100)
            await revoke_sessions(redis, ours, [lowered], now + 10)  # an earlier time: no change
            await revoke_sessions(redis, ours, [expired], now - 1)  # already past: dropped at once
            key = ours + REVOKED_SESSIONS
            scores = [await redis.zscore(key, s) for s in (kept, lowered, expired)]
            other = await redis.zscore(prefix() + REVOKED_SESSIONS, kept)  # another deployment
            await redis.delete(key)
            return now, scores, other
        finally:
            await redis.aclose()

    now, scores, other = asyncio.run(scenario())
    assert scores == [now + 100, now + 100, None]
    assert other is None


def test_each_process_copy_follows_the_set_in_the_background():
    first, later, past = sid(), sid(), sid()
    ours = prefix()

    async def scenario():
        redis = Redis.from_url(REDIS_URL)
        revoked = RevokedSessions(redis, ours, interval=0.05)
        try:
            await revoke_sessions(redis, ours, [first], time.time() + 60)
            await redis.zadd(ours + REVOKED_SESSIONS, {past: time.time() - 1})  # not any more
            await revoked.open()
            at_open = {first, past} & revoked.sids
            await revoke_sessions(redis, ours, [later], time.time() + 60)
            for _ in range(400):
                if later in revoked:
                    break
                await asyncio.sleep(0.05)
            return at_open, {first, later, past} & revoked.sids
        finally:
            await revoked.close()
            await redis.delete(ours + REVOKED_SESSIONS)
            await redis.aclose()

    at_open, after = asyncio.run(scenario())
    assert at_open == {first}
    assert after == {first, later}
