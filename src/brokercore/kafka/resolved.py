"""Whether what a read_committed reader sees of a partition is final.

A producer that restarts reads what its transactional.id committed before, so that it
never publishes a thing twice. ``init_transactions`` fences the older producers of the
id, but it can return before a transaction one of them was committing is complete:
after a kill -9 of the broker, Kafka 4.4 reloaded such a transaction as PrepareCommit,
handed out the new epoch, and wrote the transaction's markers 0.75 s later
(docs/kafka.md). Until then the transaction's records are written but not readable:
the partition's last stable offset (the end a read_committed reader sees) is below its
high watermark. Where only that id writes transactionally, such a gap can only be a
transaction still being completed, so the reader waits for it (a transient error).
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

__all__ = ["require_resolved"]

_LATEST: Callable[[], OffsetSpec] = OffsetSpec.latest  # (the class method is unannotated)


def require_resolved(admin: AdminClient, partition: TopicPartition, timeout: float) -> None:
    """Return if ``partition`` holds no transaction that is not resolved yet; else raise
    a retriable KafkaException (CONCURRENT_TRANSACTIONS) that says so. ``admin`` is one
    the caller keeps: librdkafka 2.16 aborted the process destroying a client while
    the broker was away."""
    stable, written = (
        _end(admin, partition, level, timeout)
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
    )
    if stable < written:
        raise KafkaException(
            KafkaError(
                KafkaError.CONCURRENT_TRANSACTIONS,
                f"a transaction on {partition.topic} [{partition.partition}] is not resolved "
                f"yet (stable up to offset {stable} of {written})",
                retriable=True,
            )
        )


def _end(
    admin: AdminClient, partition: TopicPartition, level: IsolationLevel, timeout: float
) -> int:
    """The partition's end as a reader of ``level`` sees it."""
    futures = admin.list_offsets(
        {partition: _LATEST()}, isolation_level=level, request_timeout=timeout
    )
    return int(next(iter(futures.values())).result(timeout + 1).offset)
