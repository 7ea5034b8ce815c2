"""Publishing the transactional outbox to Kafka (hop 2 of the exactly-once chain).

Rows are written by the OMS in the same transaction as their order; this publishes
them with an idempotent producer, each to the partition the row names, and marks them
published once the broker has acknowledged them. Nothing here waits for Kafka on a
request's behalf: ``submit`` hands a row to the producer, which keeps it (for
``delivery_timeout``) while the broker is away and sends it as soon as it is back. A
row that is still unpublished a while later (an OMS that died before sending it, a
producer queue that was full) is sent again by ``run``, the OMS's background sweep,
and the reconciler re-publishes orders the engine has not confirmed; the engine drops
a second copy of an order or a cancel, so publishing those twice is harmless; an
AMEND is sent again only while its modify is still unanswered (``_without_answered_amends``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple, TypeAlias

from confluent_kafka import KafkaError, KafkaException, Producer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from brokercore.faults.backoff import Backoff, transient
from brokercore.faults.kafka_errors import QUIET_KAFKA, transient_kafka
from brokercore.kafka.messages import AmendOrder, command_decoder

__all__ = ["OutboxPublisher", "OutboxRow"]

log = logging.getLogger("brokercore.entry.outbox")

_COLUMNS = "b.outbox_id, b.topic, b.partition, b.key, b.payload"


class OutboxRow(NamedTuple):
    outbox_id: int
    topic: str
    partition: int | None
    key: bytes | None
    payload: bytes


_Delivery: TypeAlias = "asyncio.Future[KafkaError | Exception | None]"
"""A row's delivery: the error that stopped it, or None once the broker acknowledged it."""


class OutboxPublisher:
    """One producer and the rows on their way through it. ``pool`` should check its
    connections (``AsyncConnectionPool.check_connection``) so that a Postgres restart
    costs a retry, not the process."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        bootstrap: str,
        *,
        delivery_timeout: float = 300.0,
        sweep_after: timedelta = timedelta(seconds=30),
        mark_every: float = 0.1,
    ):
        self.pool = pool
        self.bootstrap = bootstrap
        self.delivery_timeout = delivery_timeout
        self.sweep_after = sweep_after
        self.mark_every = mark_every
        self._broker = Backoff("outbox publisher: Kafka", log)
        self._producer = self._new_producer()
        self._fatal: KafkaError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: dict[int, list[_Delivery]] = {}  # id -> publish() waiting
        self._results: deque[tuple[int, KafkaError | None]] = deque()  # from the producer
        self._acked: list[int] = []  # acknowledged, not yet marked published
        self._marking: asyncio.Task[None] | None = None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="outbox-poller", daemon=True)
        self._poller.start()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **QUIET_KAFKA,
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,  # fewer, fuller produce requests; no request waits on them
                "message.timeout.ms": int(self.delivery_timeout * 1000),
                "reconnect.backoff.max.ms": 1000,  # sends within a second of the broker's return
                "error_cb": self._error,
            }
        )

    def _error(self, error: KafkaError) -> None:
        """The producer's errors (its poll thread): a broker away is logged once per
        outage; a fatal error makes the next ``submit`` build a new producer."""
        if error.fatal():
            self._fatal = error
        elif transient_kafka(error):
            self._broker.failed(error)
        else:
            log.warning("outbox producer: %s", error)

    def _poll(self) -> None:
        """Runs the producer's delivery callbacks; the results of each poll go to the
        loop together (one wake-up per poll, not one per row)."""
        while not self._closed.is_set():
            self._producer.poll(0.2)  # returns as soon as a delivery is reported
            if self._results and self._loop is not None:
                self._loop.call_soon_threadsafe(self._delivered)

    async def aclose(self, grace: float = 5.0) -> None:
        """Give the rows on their way ``grace`` s to be acknowledged and marked; any left
        stay unpublished in the outbox, to be sent again later."""
        await asyncio.to_thread(self._producer.flush, grace)
        self._delivered()  # the acknowledgements flushed
        self._closed.set()
        await asyncio.to_thread(self._poller.join)
        if self._marking is not None:
            try:
                await asyncio.wait_for(self._marking, grace)
            except TimeoutError:
                log.warning(
                    "%d acknowledged outbox rows not marked published (Postgres "
                    "away): they will be published again",
                    len(self._acked),
                )

    def submit(self, rows: list[OutboxRow]) -> None:
        """Hand rows to Kafka without waiting for it; each acknowledged row is marked
        published. A row already on its way is not sent twice."""
        self._send(rows, waiting=False)

    async def publish(self, rows: list[OutboxRow], wait: float = 10.0) -> list[int]:
        """Publish rows and wait up to ``wait`` s for the broker; the ids acknowledged
        (the others stay on their way, or unpublished)."""
        futures = self._send(rows, waiting=True)
        if futures:
            await asyncio.wait(futures.values(), timeout=wait)
        return [i for i, f in futures.items() if f.done() and f.result() is None]

    async def publish_stale(self, older_than: timedelta, limit: int = 10_000) -> list[int]:
        """Re-publish commands of orders still PENDING whose row is older than
        ``older_than`` (published or not: an acknowledged message may still have been
        lost before the engine read it), and unpublished rows of any other order."""
        return await self.publish(
            await self._rows(
                f"SELECT {_COLUMNS} FROM outbox b WHERE b.created_at < now() - %s AND ("
                "b.published_at IS NULL OR EXISTS (SELECT 1 FROM orders o WHERE "
                "o.order_id = b.order_id AND o.status = 'PENDING')) ORDER BY b.outbox_id LIMIT %s",
                (older_than, limit),
            )
        )

    async def run(self, every: float = 5.0, batch: int = 1000) -> None:
        """The OMS's background sweep, until cancelled: every ``every`` s, rows still
        unpublished ``sweep_after`` after they were written are sent again, ``batch`` at
        a time. A Postgres outage is waited out with back-off."""
        backoff = Backoff("outbox sweep: Postgres", log)
        after = 0
        while True:
            try:
                rows = await self._rows(
                    f"SELECT {_COLUMNS} FROM outbox b WHERE b.published_at IS NULL AND "
                    "b.outbox_id > %s AND b.created_at < now() - %s ORDER BY b.outbox_id "
                    "LIMIT %s",
                    (after, self.sweep_after, batch),
                )
            except Exception as e:  # a sweep never dies
                if not transient(e):
                    log.exception("outbox sweep failed")
                await backoff.pause(e)
                continue
            backoff.recovered()
            self.submit(rows)
            after = rows[-1].outbox_id if len(rows) == batch else 0
            if not after:
                await asyncio.sleep(every)

    async def _rows(self, query: str, params: tuple[object, ...]) -> list[OutboxRow]:
        async with self.pool.connection() as conn:
            rows = [
                OutboxRow(i, t, p, k, bytes(v))
                for i, t, p, k, v in await (await conn.execute(query, params)).fetchall()
            ]
            return await _without_answered_amends(conn, rows)

    def _send(self, rows: list[OutboxRow], waiting: bool) -> dict[int, _Delivery]:
        """Produce the rows not already on their way; with ``waiting``, a future per row
        that gets the delivery's error (None once acknowledged)."""
        loop = self._loop = asyncio.get_running_loop()
        if self._fatal is not None:
            self._rebuild()
        futures = {row.outbox_id: loop.create_future() for row in rows} if waiting else {}
        for outbox_id, topic, partition, key, payload in rows:
            waiters = [futures[outbox_id]] if waiting else []
            if outbox_id in self._in_flight:
                self._in_flight[outbox_id] += waiters
                continue
            try:
                self._producer.produce(
                    topic,
                    bytes(payload),
                    bytes(key) if key is not None else None,
                    partition=partition if partition is not None else -1,
                    on_delivery=self._on_delivery(outbox_id),
                )
            except (BufferError, KafkaException) as e:  # a full queue, a broken producer
                log.warning("outbox row %d stays unpublished for now: %s", outbox_id, e)
                for future in waiters:
                    future.set_result(e)
                continue
            self._in_flight[outbox_id] = waiters
        return futures

    def _on_delivery(self, outbox_id: int) -> Callable[[KafkaError | None, object], None]:
        def delivered(error: KafkaError | None, message: object) -> None:
            self._results.append((outbox_id, error))  # the producer's thread: no loop here

        return delivered

    def _delivered(self) -> None:
        """The deliveries reported so far (on the loop): their waiters answered, the
        acknowledged rows queued to be marked published."""
        acked = len(self._acked)
        while self._results:
            outbox_id, error = self._results.popleft()
            for future in self._in_flight.pop(outbox_id, ()):
                if not future.done():
                    future.set_result(error)
            if error is None:
                self._acked.append(outbox_id)
        if len(self._acked) > acked:
            self._broker.recovered()
            if self._marking is None or self._marking.done():
                self._marking = asyncio.create_task(self._mark_acked())

    def _rebuild(self) -> None:
        """A fatal producer error (its idempotence state is lost): a new producer; what
        the old one held is purged, so those rows are swept up again later."""
        log.error("the outbox producer failed (%s): making a new one", self._fatal)
        old, self._producer, self._fatal = self._producer, self._new_producer(), None
        old.purge()
        old.flush(0)  # their callbacks: no longer in flight

    async def _mark_acked(self) -> None:
        """Marks acknowledged rows published, those of ``mark_every`` seconds in one
        statement: a statement per order (or per few) would cost about as much as the
        order's own transaction. Postgres away: tried again with back-off; a row left
        unmarked (a crash first) is only published once more."""
        backoff = Backoff("outbox marking: Postgres", log)
        while self._acked:
            await asyncio.sleep(self.mark_every)
            ids, self._acked = self._acked, []
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "UPDATE outbox SET published_at = now() WHERE outbox_id = ANY(%s)", (ids,)
                    )
                backoff.recovered()
            except Exception as e:
                if not transient(e):
                    raise
                self._acked = ids + self._acked
                await backoff.pause(e)


_COMMAND = command_decoder()


async def _without_answered_amends(conn: AsyncConnection, rows: list[OutboxRow]) -> list[OutboxRow]:
    """The rows to send again, less the AMENDs the engine has answered. A second copy of
    an order or a cancel is harmless (the engine drops it), but a second AMEND is applied
    again, and fills between the two copies would add to the order. An order has one
    modify in flight at most, so an unpublished AMEND whose order has none pending was
    answered, hence delivered (its OMS died before marking it): it is marked published,
    not sent."""
    amends = {
        row.outbox_id: command.order_id
        for row in rows
        if isinstance(command := _COMMAND.decode(row.payload), AmendOrder)
    }
    if not amends:
        return rows
    pending = {
        order_id
        for (order_id,) in await (
            await conn.execute(
                "SELECT order_id FROM orders WHERE order_id = ANY(%s) AND modify_pending",
                (list(set(amends.values())),),
            )
        ).fetchall()
    }
    answered = {i for i, order_id in amends.items() if order_id not in pending}
    if answered:
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE outbox_id = ANY(%s) "
            "AND published_at IS NULL",
            (list(answered),),
        )
        log.info("outbox: %d AMEND(s) the engine already answered marked published", len(answered))
    return [row for row in rows if row.outbox_id not in answered]
