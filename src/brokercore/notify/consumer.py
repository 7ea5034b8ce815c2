"""The notifier's consumer of ``events``: each batch handed to the router
(``brokercore.notify.router.Notifier``), in-app notifications published before the next
batch is read, each push its own asyncio task (its retries wait without holding up
anyone else's notifications). Every second it also delivers what other processes'
transactions owe (a GTT's end: ``brokercore.notify.owed``).

Its position is its Kafka consumer group's committed offsets, not offsets in Postgres
like settlement's and the projector's (``brokercore.consumers.pg_consumer``): what it does
with a message (Redis publishes, pushes that end out of order, minutes later after their
retries) cannot commit in one Postgres transaction with the message's offset. So the
offsets are committed only up to the first message whose pushes are not all delivered or
dead-lettered: a crash re-delivers (at-least-once; clients dedupe on the notification's
id) and never skips one. Outages of Postgres, Redis or Kafka are waited out with the
shared back-off (``brokercore.faults.backoff``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any

import msgspec
import psycopg
import redis as redis_errors
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.faults.backoff import Backoff
from brokercore.faults.kafka_errors import QUIET_KAFKA
from brokercore.kafka.messages import EventBatch
from brokercore.notify.dead_letters import DeadLetters
from brokercore.notify.owed import OWED_EVERY, OwedNotifications
from brokercore.notify.postbacks import Breaker, Postbacks
from brokercore.notify.push import HttpPushProvider
from brokercore.notify.router import Delivery, Notifier, Received

__all__ = ["notifier_group_id", "PendingOffsets", "run_notifier"]

log = logging.getLogger("brokercore.notifier")


def notifier_group_id(prefix: str) -> str:
    """The notifier's Kafka consumer group on ``events`` (its committed offsets)."""
    return f"{prefix}brokercore-notifier"


class PendingOffsets:
    """Per partition, the messages read but not yet safe to commit, in offset order, each
    with the number of pushes it still owes. Thread-safe: the consumer's rebalance
    callbacks run in the thread that polls it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[int, deque[list[int]]] = {}

    def add(self, partition: int, offset: int, owed: int) -> list[int]:
        entry = [offset, owed]
        with self._lock:
            self._partitions.setdefault(partition, deque()).append(entry)
        return entry

    def settle(self, entry: list[int]) -> None:
        """One push of the entry's message is done (an entry dropped meanwhile is
        settled harmlessly: nothing refers to it any more)."""
        with self._lock:
            entry[1] -= 1

    def ready(self) -> dict[int, int]:
        """partition -> next offset to commit, for each partition whose front moved."""
        ready: dict[int, int] = {}
        with self._lock:
            for partition, queue in self._partitions.items():
                while queue and queue[0][1] == 0:
                    ready[partition] = queue.popleft()[0] + 1
        return ready

    def drop(self, partitions: list[int]) -> None:
        with self._lock:
            for partition in partitions:
                self._partitions.pop(partition, None)


async def run_notifier(
    settings: ServiceSettings,
    kafka: KafkaSettings,
    stop: threading.Event,
    *,
    from_beginning: bool = False,
    concurrency: int = 64,
    max_pending: int = 10_000,
    grace: float = 5.0,
) -> int:
    """Notify until ``stop`` is set; returns how many messages it handled. At most
    ``max_pending`` pushes wait at once (then reading pauses); on stop, pushes in flight
    get ``grace`` seconds."""
    provider = HttpPushProvider(settings.push_url) if settings.push_url else None
    if provider is None:
        log.warning("no BROKERCORE_PUSH_URL: in-app notifications only")
    topic = kafka.events_topic
    pool = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=4,
        open=False,
        check=AsyncConnectionPool.check_connection,
    )
    redis = Redis.from_url(settings.redis_url)
    dead_letters = DeadLetters(kafka.bootstrap, kafka.notification_dead_letter_topic)
    postbacks = Postbacks(
        DeadLetters(kafka.bootstrap, kafka.postback_dead_letter_topic),
        timeout=settings.postback_timeout,
        per_url=settings.postback_per_url,
        ca_file=settings.postback_ca_file,
        breaker=Breaker(settings.postback_breaker_failures, settings.postback_breaker_pause),
    )
    notifier = Notifier(
        pool,
        redis,
        settings.redis_prefix,
        load_market(settings.instruments),
        provider,
        dead_letters,
        retry_base=settings.push_retry_base,
        retry_cap=settings.push_retry_cap,
        attempts=settings.push_attempts,
        concurrency=concurrency,
        events_topic=topic,
        postbacks=postbacks,
    )
    pending = PendingOffsets()
    consumer = Consumer(
        {
            **QUIET_KAFKA,  # a broker away: logged once per outage below
            "bootstrap.servers": kafka.bootstrap,
            "group.id": notifier_group_id(kafka.topic_prefix),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            # a response per 16 KiB or 50 ms, not one per engine transaction
            "fetch.min.bytes": 16_384,
            "fetch.wait.max.ms": 50,
            "session.timeout.ms": 10_000,
        }
    )  # a notifier that died hands over in 10 s

    def commit(offsets: dict[int, int]) -> dict[int, int]:
        """Commit the offsets; those committed."""
        if offsets:
            try:
                consumer.commit(
                    offsets=[TopicPartition(topic, p, o) for p, o in sorted(offsets.items())],
                    asynchronous=False,
                )
            except KafkaException as e:  # a rebalance: the next owner re-delivers
                log.warning("committing %s failed: %s", offsets, e)
                return {}
        return offsets

    def revoked(owner: Consumer, partitions: list[TopicPartition]) -> None:
        commit(pending.ready())
        lost(owner, partitions)

    def lost(_owner: Consumer, partitions: list[TopicPartition]) -> None:
        pending.drop([tp.partition for tp in partitions])

    consumer.subscribe([topic], on_revoke=revoked, on_lost=lost)
    decoder = msgspec.msgpack.Decoder(EventBatch)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    handled, last_log, owed_at = 0, time.monotonic(), 0.0
    owed = OwedNotifications(notifier)
    stores = Backoff("notifier: Redis or Postgres", log)
    broker = Backoff("notifier: Kafka", log)

    async def deliver(push: Delivery, entry: list[int] | None) -> None:
        await notifier.deliver(push)
        if entry is not None:
            pending.settle(entry)

    def start(push: Delivery, entry: list[int] | None) -> None:
        launch(deliver(push, entry))

    def launch(delivering: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(delivering)
        tasks.add(task)
        task.add_done_callback(finished)

    async def send_owed() -> None:
        """What other processes' transactions owe (brokercore.notify.owed); with Redis
        or Postgres down, the next time."""
        try:
            for delivering in await owed.take():
                launch(delivering)
        except (redis_errors.RedisError, psycopg.OperationalError) as e:
            stores.failed(e)

    async def handle(messages: Sequence[Received]) -> list[list[Delivery]]:
        """``notifier.handle``, tried again with back-off while Redis or Postgres fail
        (nothing is committed meanwhile). An attempt that failed may have moved alerts:
        their fires, kept in alert_fires, go out again first (at-least-once)."""
        for attempt in itertools.count():
            try:
                if attempt:
                    for push in await notifier.unsent_fires():
                        start(push, None)
                pushes = await notifier.handle(messages)
                stores.recovered()
                return pushes
            except (redis_errors.RedisError, psycopg.OperationalError) as e:
                if stop.is_set():
                    raise
                await stores.pause(e)
        raise AssertionError("unreachable")

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            failures.append(error)

    try:
        await pool.open(wait=True)
        log.info("notifier: %s, group %s", topic, notifier_group_id(kafka.topic_prefix))
        for push in await notifier.unsent_fires():
            start(push, None)
        while not stop.is_set():
            if failures:
                raise failures[0]
            messages: list[Received] = []
            for message in await asyncio.to_thread(consumer.consume, 500, 0.2):
                error, partition, offset = message.error(), message.partition(), message.offset()
                if error is not None or partition is None or offset is None:
                    if error is not None and error.fatal():
                        raise KafkaException(error)
                    broker.failed(error or "a message without a position")  # retried anyway
                    continue
                broker.recovered()
                try:
                    batch = decoder.decode(message.value() or b"")
                except msgspec.DecodeError as e:
                    log.error("undecodable message %s/%s passed over: %s", partition, offset, e)
                    pending.add(partition, offset, 0)
                    continue
                messages.append((partition, offset, batch))
            if messages:
                for (partition, offset, _), pushes in zip(
                    messages, await handle(messages), strict=True
                ):
                    entry = pending.add(partition, offset, len(pushes))
                    for push in pushes:
                        start(push, entry)
                handled += len(messages)
            await notifier.forget_fires(await asyncio.to_thread(commit, pending.ready()))
            if time.monotonic() - owed_at >= OWED_EVERY:
                owed_at = time.monotonic()
                await send_owed()
            while len(tasks) >= max_pending:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info(
                    "notifier: %d messages; %d published, %d pushed, %d posted, "
                    "%d dead-lettered, %d pushes and postbacks in flight, %d batches told "
                    "before the projector's updates",
                    handled,
                    notifier.published,
                    notifier.pushed,
                    notifier.posted,
                    notifier.dead_lettered,
                    len(tasks),
                    notifier.overtaken,
                )
        if tasks:
            await asyncio.wait(list(tasks), timeout=grace)
    finally:
        for task in list(tasks):
            task.cancel()  # not committed: re-delivered after a restart
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await notifier.forget_fires(await asyncio.to_thread(commit, pending.ready()))
        finally:
            await asyncio.to_thread(consumer.close)
            await asyncio.to_thread(dead_letters.close)
            await asyncio.to_thread(postbacks.dead_letters.close)
            await postbacks.aclose()
            if provider is not None:
                await provider.aclose()
            await redis.aclose()
            await pool.close()
    log.info(
        "notifier stopped: %d messages; %d published, %d pushed, %d posted, %d dead-lettered",
        handled,
        notifier.published,
        notifier.pushed,
        notifier.posted,
        notifier.dead_lettered,
    )
    return handled
