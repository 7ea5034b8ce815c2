"""Whether what a read_committed reader sees of a partition is final.

A producer that restarts reads what its transactional.id committed before, so that it
never publishes a thing twice. ``init_transactions`` fences the older producers of the
id, but after a kill -9 of the broker (Kafka 4.4) the partition can still hold a
transaction of theirs that is not resolved: its records are written but not readable,
so the partition's last stable offset (the end a read_committed reader sees) is below
its high watermark (docs/kafka.md). Either the coordinator completes it a moment later,
or it hangs: the coordinator has no record of it, and it stays open until the next
marker of the same producer id ends it -- which the new producer's first commit would
be, committing the hung records with it (published twice: chaos saw it). Where only
that id writes transactionally, a gap can only be such a transaction: the reader waits
for it, and ends one that hangs with an abort of its own (``EngineDaemon``).
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

__all__ = ["require_resolved", "unresolved", "unresolved_error"]


def unresolved(
    committed: Consumer, uncommitted: Consumer, partition: TopicPartition, timeout: float
) -> tuple[int, int] | None:
    """(last stable offset, high watermark) of ``partition`` while a transaction on it
    is not resolved, else None. ``committed`` and ``uncommitted``: consumers of each
    isolation level, made fresh by the caller (a long-lived client kept the leader
    epochs of before a broker restart and was refused, FENCED_LEADER_EPOCH, for good)."""
    stable = committed.get_watermark_offsets(partition, timeout=timeout)[1]
    written = uncommitted.get_watermark_offsets(partition, timeout=timeout)[1]
    return (stable, written) if stable < written else None


def require_resolved(
    committed: Consumer, uncommitted: Consumer, partition: TopicPartition, timeout: float
) -> None:
    """Return if ``partition`` holds no transaction that is not resolved yet; else raise
    a retriable KafkaException (CONCURRENT_TRANSACTIONS) that says so."""
    gap = unresolved(committed, uncommitted, partition, timeout)
    if gap is not None:
        raise unresolved_error(partition, *gap)


def unresolved_error(partition: TopicPartition, stable: int, written: int) -> KafkaException:
    """The transient error that says a transaction on ``partition`` is not resolved."""
    return KafkaException(
        KafkaError(
            KafkaError.CONCURRENT_TRANSACTIONS,
            f"a transaction on {partition.topic} [{partition.partition}] is not resolved "
            f"yet (stable up to offset {stable} of {written})",
            retriable=True,
        )
    )
