"""Consumer lag: how far each consumer's committed position is behind the end of a partition.

lag = high watermark - committed offset, per partition. A consumer that has committed
nothing yet on a partition is measured from the partition's first offset. Transaction
markers occupy offsets too, so an idle transactional partition shows a lag of a
marker or so. Positions are read before the ends, so a reading never understates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

__all__ = ["LAG_BOUND", "KafkaLagProbe", "PartitionLag", "over_bound", "summary"]

LAG_BOUND = 1_000
"""Messages behind on one partition past which the operator is warned."""

_NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: nothing committed
# The first offset and the high watermark (OffsetSpec's class methods are unannotated).
_EARLIEST_AND_LATEST: tuple[Callable[[], OffsetSpec], ...] = (
    OffsetSpec.earliest,
    OffsetSpec.latest,
)


@dataclass(frozen=True)
class PartitionLag:
    """One consumer on one partition; ``position`` is None when it committed nothing."""

    consumer: str
    topic: str
    partition: int
    start: int  # the partition's first offset (low watermark)
    end: int  # its high watermark
    position: int | None

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.start if self.position is None else self.position))

    def describe(self) -> str:
        return f"{self.consumer} on {self.topic} partition {self.partition}: lag {self.lag:,}"


def over_bound(lags: Iterable[PartitionLag], bound: int = LAG_BOUND) -> list[PartitionLag]:
    """The readings past ``bound``, the largest lag first."""
    return sorted((lag for lag in lags if lag.lag > bound), key=lambda lag: -lag.lag)


class KafkaLagProbe:
    """Reads watermarks and consumer groups' committed offsets through one AdminClient."""

    def __init__(self, bootstrap: str, timeout: float = 5.0):
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.timeout = timeout

    def watermarks(self, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        """partition -> (first offset, high watermark)."""
        found: dict[int, list[int]] = {}
        for spec in _EARLIEST_AND_LATEST:
            futures = self.admin.list_offsets(
                {TopicPartition(topic, p): spec() for p in range(partitions)},
                isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=self.timeout,
            )
            for tp, future in futures.items():
                found.setdefault(tp.partition, []).append(future.result(self.timeout).offset)
        return {p: (offsets[0], offsets[1]) for p, offsets in found.items()}

    def group_positions(
        self, group: str, topic: str, partitions: Iterable[int]
    ) -> dict[int, int | None]:
        """partition -> the offset ``group`` committed on ``topic`` (None: nothing)."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions]
        )
        future = self.admin.list_consumer_group_offsets(
            [request], require_stable=False, request_timeout=self.timeout
        )[group]
        result = future.result(self.timeout)
        return {
            tp.partition: None if tp.offset == _NO_OFFSET else tp.offset
            for tp in result.topic_partitions
        }

    def lags(
        self,
        consumer: str,
        topic: str,
        positions: Mapping[int, int | None],
        ends: Mapping[int, tuple[int, int]],
    ) -> list[PartitionLag]:
        """The lag of ``consumer`` on each partition of ``ends`` (``watermarks``)."""
        return [
            PartitionLag(consumer, topic, p, start, end, positions.get(p))
            for p, (start, end) in sorted(ends.items())
        ]


def summary(name: str, lags: Sequence[PartitionLag]) -> str:
    """A consumer's (or a group of consumers') readings in one line: the total and the
    worst partition."""
    worst = max(lags, key=lambda lag: (lag.lag, -lag.partition))
    return (
        f"{name}: lag {sum(lag.lag for lag in lags):,} on {worst.topic}, "
        f"at most {worst.lag:,} (partition {worst.partition})"
    )
