"""The per-user token bucket on the real Redis (scripts/redis/redis.sh, started by
`make test`)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from brokercore.edge.ratelimit import LocalBuckets, TokenBucket
from shared_servers import REDIS_URL


def run(coroutine):
    return asyncio.run(coroutine)


async def takes(bucket: TokenBucket, user: str, n: int) -> list[float]:
    return list(await asyncio.gather(*(bucket.take(user) for _ in range(n))))


def test_a_burst_gets_capacity_tokens_then_a_retry_after():
    async def scenario():
        async with Redis.from_url(REDIS_URL) as redis:
            bucket = TokenBucket(redis, capacity=5, rate=1.0, prefix=f"t{uuid.uuid4()}:")
            waits = await takes(bucket, "alice", 8)
            other = await bucket.take("bob")
            return waits, other

    waits, other = run(scenario())
    assert sorted(waits)[:5] == [0.0] * 5
    refused = [w for w in waits if w > 0]
    assert len(refused) == 3 and all(0 < w <= 1.0 for w in refused)
    assert other == 0.0, "buckets are per user"


def test_tokens_come_back_at_the_rate():
    async def scenario():
        async with Redis.from_url(REDIS_URL) as redis:
            bucket = TokenBucket(redis, capacity=2, rate=20.0, prefix=f"t{uuid.uuid4()}:")
            first = await takes(bucket, "alice", 3)
            await asyncio.sleep(0.2)  # 4 tokens' worth, capped at 2
            again = await takes(bucket, "alice", 3)
            return first, again

    first, again = run(scenario())
    assert sum(w > 0 for w in first) == 1 and sum(w > 0 for w in again) == 1


def test_a_bucket_needs_sane_parameters():
    async def scenario():
        async with Redis.from_url(REDIS_URL) as redis:
            for capacity, rate in ((0, 1.0), (1, 0.0)):
                with pytest.raises(ValueError):
                    TokenBucket(redis, capacity, rate)

    run(scenario())


def test_while_redis_is_away_each_process_limits_alone():
    """A Redis that refuses connections: the same bucket per user in this process, not
    everything allowed and not everything refused (tests/integration/test_http_edge.py restarts a
    real Redis under the services)."""

    async def scenario():
        async with Redis.from_url("redis://127.0.0.1:1/0") as away:
            bucket = TokenBucket(away, capacity=3, rate=1.0, prefix=f"t{uuid.uuid4()}:")
            return (
                [await bucket.take("alice") for _ in range(4)],
                await bucket.take("bob"),
                bucket.outage.failing,
            )

    alice, bob, failing = run(scenario())
    assert alice[:3] == [0.0] * 3 and 0 < alice[3] <= 1.0
    assert bob == 0.0 and failing


def test_local_buckets_stay_bounded_and_forget_the_least_recent():
    buckets = LocalBuckets(capacity=2, rate=0.001, max_users=10)
    for n in range(50):
        assert buckets.take(f"user{n}") == 0.0
    assert len(buckets._buckets) <= 10
    assert buckets.take("user49") == 0.0 and buckets.take("user49") > 0  # remembered
    assert buckets.take("user0") == 0.0 and buckets.take("user0") == 0.0  # forgotten
