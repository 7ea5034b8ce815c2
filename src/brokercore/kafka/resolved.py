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

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

__all__ = ["require_resolved"]


def require_resolved(
    committed: Consumer, uncommitted: Consumer, partition: TopicPartition, timeout: float
) -> None:
    """Return if ``partition`` holds no transaction that is not resolved yet; else raise
    a retriable KafkaException (CONCURRENT_TRANSACTIONS) that says so. ``committed`` and
    ``uncommitted``: consumers of each isolation level (their ends are the partition's
    last stable offset and high watermark), made fresh by the caller: a long-lived
    client kept the leader epochs of before a broker restart and was refused
    (FENCED_LEADER_EPOCH) for good."""
    stable = committed.get_watermark_offsets(partition, timeout=timeout)[1]
    written = uncommitted.get_watermark_offsets(partition, timeout=timeout)[1]
    if stable < written:
        raise KafkaException(
            KafkaError(
                KafkaError.CONCURRENT_TRANSACTIONS,
                f"a transaction on {partition.topic} [{partition.partition}] is not resolved "
                f"yet (stable up to offset {stable} of {written})",
                retriable=True,
            )
        )
