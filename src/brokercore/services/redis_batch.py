"""A Redis client whose commands from concurrent requests share round trips.

An API process under load has many requests at the same step at once: each takes its
rate-limit token (one EVALSHA) and, once its order is committed, invalidates its user's
cached reads (INCR, EXPIRE). Sent one by one, every command costs a connection taken
from the pool and given back, a write, a read and a wake-up. ``CoalescingRedis`` queues
them instead and sends whatever is queued as one pipeline (one write, one read, one
connection); what arrives while a pipeline is out goes in the next, so batches grow
with the load by themselves and a lone command goes at once (no timer).

Nothing changes for a caller: each command is still atomic on the server and answered
on its own, in the order the commands were issued (one pipeline at a time), a command's
error (NOSCRIPT, a wrong type) is that caller's alone, and a connection error or
timeout reaches every caller of the batch, as it would have reached each of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
from redis.asyncio import Redis

__all__ = ["CoalescingRedis"]

log = logging.getLogger("brokercore.redis_batch")


class CoalescingRedis(Redis):
    """``redis.asyncio.Redis`` whose commands are sent in shared pipelines (scripts and
    every command method go through ``execute_command``; ``pipeline()`` is unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._queued: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.pipelines = self.commands = 0  # sent so far: their ratio is the batch size

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((args, options, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            self.pipelines += 1
            self.commands += len(batch)
            try:
                async with self.pipeline(transaction=False) as pipe:
                    for args, options, _ in batch:
                        pipe.execute_command(*args, **options)
                    results = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:  # shutdown: nobody is left waiting
                for _, _, answer in [*batch, *self._queued]:
                    answer.cancel()
                self._queued = []
                raise
            except Exception as e:  # the connection's failure is every caller's
                for _, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(e)
                if not isinstance(e, redis.RedisError):  # a bug: logged, the next batch goes on
                    log.exception("a Redis pipeline of %d commands failed", len(batch))
                continue
            for (_, _, answer), result in zip(batch, results, strict=True):
                if answer.done():  # its caller was cancelled
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
