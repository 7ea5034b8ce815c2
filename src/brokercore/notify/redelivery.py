"""The dead letters, once more: the reconciler's pass over the pushes or the postbacks
the notifier dead-lettered (``brokercore.notify.dead_letters``), each sent again; one
that fails again goes back on its topic with its attempts counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from brokercore.notify.dead_letters import DeadLetters, PostbackDeadLetter, PushDeadLetter
from brokercore.notify.push import PushFailed

__all__ = [
    "Redelivery",
    "redeliver_dead_letters",
    "redelivery_group_id",
    "postback_redelivery_group_id",
]

log = logging.getLogger("brokercore.notify.redelivery")


def redelivery_group_id(prefix: str) -> str:
    """The Kafka consumer group (its committed offsets) of the reconciler's passes over
    the notifications' dead-letter topic."""
    return f"{prefix}brokercore-notification-retry"


def postback_redelivery_group_id(prefix: str) -> str:
    """The same, of the postbacks' dead-letter topic."""
    return f"{prefix}brokercore-postback-retry"


Letter = TypeVar("Letter", PushDeadLetter, PostbackDeadLetter)


@dataclass
class Redelivery:
    """What one pass over the dead letters did."""

    delivered: int = 0
    failed: int = 0  # failed again: back on the topic, attempts + 1
    unreadable: int = 0  # not a dead letter of its kind: logged and passed over

    def __add__(self, other: Redelivery) -> Redelivery:
        return Redelivery(
            self.delivered + other.delivered,
            self.failed + other.failed,
            self.unreadable + other.unreadable,
        )


async def redeliver_dead_letters(
    bootstrap: str,
    topic: str,
    group: str,
    kind: type[Letter],
    send: Callable[[Letter], Awaitable[None]],
    dead_letters: DeadLetters,
    concurrency: int = 16,
) -> Redelivery:
    """One pass over the dead letters (of ``kind``) that are on ``topic`` when it starts,
    from ``group``'s committed offsets: each is sent once more (``send``, PushFailed if
    not taken), one that fails again goes back on the topic with its attempts counted,
    and the group's offsets are committed past every letter done (up to the first whose
    re-dead-lettering failed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        letters = await asyncio.to_thread(_read_letters, consumer, topic)
        slots, stats = asyncio.Semaphore(concurrency), Redelivery()
        decoder = msgspec.msgpack.Decoder(kind)

        async def retry(value: bytes) -> None:
            try:
                letter = decoder.decode(value)
            except msgspec.DecodeError as e:
                log.error("unreadable dead letter on %s passed over: %s", topic, e)
                stats.unreadable += 1
                return
            async with slots:
                try:
                    await send(letter)
                    stats.delivered += 1
                    return
                except PushFailed as e:
                    error = str(e)
            await dead_letters.put(
                msgspec.structs.replace(
                    letter,
                    attempts=letter.attempts + 1,
                    last_error=error,
                    failed_at=datetime.now(UTC).isoformat(),
                )
            )
            stats.failed += 1

        results = await asyncio.gather(
            *(retry(value) for _, _, value in letters), return_exceptions=True
        )
        done: dict[int, int] = {}
        stuck: set[int] = set()
        for (partition, offset, _), result in zip(letters, results, strict=True):
            if isinstance(result, BaseException):
                log.error("dead letter %s/%s kept for the next pass: %s", partition, offset, result)
                stuck.add(partition)
            elif partition not in stuck:
                done[partition] = offset + 1
        if done:
            await asyncio.to_thread(
                consumer.commit,
                offsets=[TopicPartition(topic, p, o) for p, o in sorted(done.items())],
                asynchronous=False,
            )
        return stats
    finally:
        await asyncio.to_thread(consumer.close)


def _read_letters(
    consumer: Consumer, topic: str, timeout: float = 30.0
) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of the messages between the group's committed offsets
    and the ends of the partitions as they are now (so letters put back during the pass
    wait for the next one)."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    committed = consumer.committed(
        [TopicPartition(topic, p) for p in metadata.partitions], timeout=timeout
    )
    start, end = {}, {}
    for tp in committed:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=timeout
        )
        begin = max(tp.offset, low)  # none committed yet: OFFSET_INVALID (< 0)
        if begin < high:
            start[tp.partition], end[tp.partition] = begin, high
    if not start:
        return []
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    letters: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} took over {timeout} s")
        message = consumer.poll(0.5)
        if message is None:
            continue
        partition, offset, error = message.partition(), message.offset(), message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                end.pop(partition, None)
                continue
            raise KafkaException(error)
        if partition is None or offset is None:
            continue  # only an error message lacks them
        if partition in end and offset < end[partition]:
            letters.append((partition, offset, message.value() or b""))
            if offset + 1 >= end[partition]:
                end.pop(partition)
    return letters
