"""Publishing the transactional outbox to Kafka (hop 2 of the exactly-once chain).

Rows are written by the OMS in the same transaction as their order; this publishes
them with an idempotent producer, each to the partition the row names, and marks them
published once the broker has acknowledged them. A row that is not acknowledged (Kafka
down, a crash in between) stays unpublished and the reconciler publishes it again
later; the engine drops a second copy of an order, so publishing twice is harmless.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import NamedTuple

from confluent_kafka import KafkaException, Producer
from psycopg_pool import AsyncConnectionPool

__all__ = ["OutboxPublisher", "OutboxRow"]


class OutboxRow(NamedTuple):
    outbox_id: int
    topic: str
    partition: int | None
    key: bytes | None
    payload: bytes


class OutboxPublisher:
    def __init__(self, pool: AsyncConnectionPool, bootstrap: str, *,
                 delivery_timeout: float = 5.0):
        self.pool = pool
        self.delivery_timeout = delivery_timeout
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 1,
            "message.timeout.ms": int(delivery_timeout * 1000),
        })
        self._acked: list[int] = []             # acknowledged, not yet marked published
        self._marking: asyncio.Task | None = None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="outbox-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Runs the producer's delivery callbacks (they resolve the awaiting futures)."""
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def aclose(self) -> None:
        if self._marking is not None:
            await self._marking
        self._closed.set()
        self._poller.join()
        self._producer.flush(self.delivery_timeout)

    async def publish(self, rows: list[OutboxRow]) -> list[int]:
        """Publish rows just written (by a transaction that committed); returns the ids
        now acknowledged (the others stay for the reconciler)."""
        return await self._send(rows)

    async def publish_stale(self, older_than: timedelta, limit: int = 10_000) -> list[int]:
        """Re-publish commands of orders still PENDING whose row is older than
        ``older_than`` (published or not: an acknowledged message may still have been
        lost before the engine read it), and unpublished rows of any other order."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT b.outbox_id, b.topic, b.partition, b.key, b.payload FROM outbox b "
                "WHERE b.created_at < now() - %s AND (b.published_at IS NULL OR EXISTS ("
                "  SELECT 1 FROM orders o WHERE o.order_id = b.order_id "
                "  AND o.status = 'PENDING')) ORDER BY b.outbox_id LIMIT %s",
                (older_than, limit))).fetchall()
        return await self._send(rows)

    async def _send(self, rows) -> list[int]:
        if not rows:
            return []
        loop = asyncio.get_running_loop()
        waiting = []
        for outbox_id, topic, partition, key, payload in rows:
            future = loop.create_future()
            waiting.append((outbox_id, future))
            self._producer.produce(
                topic, bytes(payload), bytes(key) if key is not None else None,
                partition=partition if partition is not None else -1,
                on_delivery=_resolver(loop, future))
        done = []
        for outbox_id, future in waiting:
            try:
                await asyncio.wait_for(future, self.delivery_timeout + 1)
                done.append(outbox_id)
            except (KafkaException, asyncio.TimeoutError):
                pass                        # stays unpublished: the reconciler retries
        if done:
            self._acked += done
            if self._marking is None or self._marking.done():
                self._marking = asyncio.create_task(self._mark_acked())
        return done

    async def _mark_acked(self) -> None:
        """Marks acknowledged rows published, many per statement: a round trip per
        order would cost about as much as the order's own transaction. A row left
        unmarked (a crash first) is only published once more by the reconciler."""
        while self._acked:
            await asyncio.sleep(0.005)
            ids, self._acked = self._acked, []
            async with self.pool.connection() as conn:
                await conn.execute("UPDATE outbox SET published_at = now() "
                                   "WHERE outbox_id = ANY(%s)", (ids,))


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    def delivered(error, message):
        if error is not None:
            loop.call_soon_threadsafe(_settle, future, KafkaException(error))
        else:
            loop.call_soon_threadsafe(_settle, future, None)
    return delivered


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
