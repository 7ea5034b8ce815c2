"""CoalescingRedis on the real Redis: concurrent commands share pipelines and each is
answered as if it had been sent alone."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from brokercore.edge.ratelimit import TokenBucket
from brokercore.read.cache import UserCache
from brokercore.services.redis_batch import CoalescingRedis
from shared_servers import REDIS_URL


def test_concurrent_commands_share_pipelines_and_keep_their_order():
    key = f"t{uuid.uuid4()}:counter"

    async def scenario():
        async with CoalescingRedis.from_url(REDIS_URL) as client:
            answers = await asyncio.gather(*(client.incr(key) for _ in range(200)))
            await client.delete(key)
            return answers, client.pipelines, client.commands

    answers, pipelines, commands = asyncio.run(scenario())
    assert answers == list(range(1, 201)), "answered in the order they were issued"
    assert commands == 201 and pipelines < 10


def test_a_commands_error_is_its_own():
    text, number = f"t{uuid.uuid4()}:text", f"t{uuid.uuid4()}:number"

    async def scenario():
        async with CoalescingRedis.from_url(REDIS_URL) as client:
            await client.set(text, "not a number", ex=60)
            answers = await asyncio.gather(
                client.incr(number), client.incr(text), client.incr(number), return_exceptions=True
            )
            await client.delete(text, number)
            return answers

    first, refused, second = asyncio.run(scenario())
    assert (first, second) == (1, 2)
    assert isinstance(refused, redis.ResponseError)


def test_a_script_the_server_does_not_know_is_loaded_and_run():
    """NOSCRIPT comes back for each caller alone; each loads the script and runs it again."""
    script = f"-- {uuid.uuid4()}\nreturn tonumber(ARGV[1]) * 2"

    async def scenario():
        async with CoalescingRedis.from_url(REDIS_URL) as client:
            double = client.register_script(script)
            return await asyncio.gather(*(double(args=[n]) for n in range(20)))

    assert asyncio.run(scenario()) == [2 * n for n in range(20)]


def test_the_rate_limit_holds_through_shared_pipelines():
    async def scenario():
        async with CoalescingRedis.from_url(REDIS_URL) as client:
            bucket = TokenBucket(client, capacity=5, rate=1.0, prefix=f"t{uuid.uuid4()}:")
            return await asyncio.gather(*(bucket.take("alice") for _ in range(40)))

    waits = asyncio.run(scenario())
    assert waits.count(0.0) == 5 and all(0 < w <= 40 for w in waits if w)


def test_redis_away_reaches_every_caller_of_the_batch():
    async def scenario():
        async with CoalescingRedis.from_url("redis://127.0.0.1:1/0") as away:
            return await asyncio.gather(*(away.get("k") for _ in range(5)), return_exceptions=True)

    errors = asyncio.run(scenario())
    assert len(errors) == 5 and all(isinstance(e, redis.ConnectionError) for e in errors)


@pytest.mark.parametrize("n", [1, 3])
def test_the_cache_invalidation_bumps_each_users_generation(n):
    prefix = f"t{uuid.uuid4()}:"
    users = [f"u{i}" for i in range(n)]

    async def scenario():
        async with CoalescingRedis.from_url(REDIS_URL) as client:
            cache = UserCache(client, prefix)
            await asyncio.gather(cache.invalidate(users), cache.invalidate(users[:1]))
            keys = [f"{prefix}cache:{u}:gen" for u in users]
            values = [await client.get(k) for k in keys]
            ttls = [await client.ttl(k) for k in keys]
            await client.delete(*keys)
            return values, ttls

    values, ttls = asyncio.run(scenario())
    assert values == [b"2"] + [b"1"] * (n - 1)
    assert all(0 < ttl <= 86_400 for ttl in ttls)
