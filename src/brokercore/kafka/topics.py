"""The platform's Kafka topics: creating them, and a symbol's home partition."""

from __future__ import annotations

import time
import zlib

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from brokercore.config import KafkaSettings

__all__ = ["partition_of", "ensure_topics", "topic_partitions", "SNAPSHOT_MAX_BYTES"]

SNAPSHOT_MAX_BYTES = 256 << 20
"""Largest snapshot message the snapshots topic (and the engine's producer) accept."""


def partition_of(symbol: str, partitions: int) -> int:
    """The home shard (= partition of orders/events/snapshots) of a symbol: CRC-32 of
    its UTF-8 name modulo the partition count, the same in every process and language.
    The placement plan (brokercore.kafka.placement) keeps a symbol there unless its
    volume says otherwise: route by the plan, not by this."""
    return zlib.crc32(symbol.encode()) % partitions


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has on the cluster; None if it does not exist (a
    deployment not started yet). KafkaException when the cluster does not answer."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # All topics: asking for this one by name could make the broker auto-create it.
    found = admin.list_topics(timeout=timeout).topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def _specs(settings: KafkaSettings) -> list[NewTopic]:
    n = settings.shards
    return [
        NewTopic(settings.orders_topic, num_partitions=n, replication_factor=1),
        NewTopic(settings.events_topic, num_partitions=n, replication_factor=1),
        NewTopic(
            settings.snapshots_topic,
            num_partitions=n,
            replication_factor=1,
            config={
                "cleanup.policy": "compact",
                "max.message.bytes": str(SNAPSHOT_MAX_BYTES),
                "segment.ms": "600000",
                "min.cleanable.dirty.ratio": "0.1",
            },
        ),
        NewTopic(settings.dead_letter_topic, num_partitions=1, replication_factor=1),
        NewTopic(settings.leases_topic, num_partitions=1, replication_factor=1),
        NewTopic(settings.notification_dead_letter_topic, num_partitions=1, replication_factor=1),
        NewTopic(settings.postback_dead_letter_topic, num_partitions=1, replication_factor=1),
    ]


def ensure_topics(settings: KafkaSettings, timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet; an existing topic with another partition
    count than ``settings.shards`` is an error (symbols would land on the wrong shard)."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    specs = _specs(settings)
    for future in admin.create_topics(specs, request_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + timeout
    while True:  # a topic just created may take a moment to show in the metadata
        metadata = admin.list_topics(timeout=timeout)
        missing = [
            spec.topic
            for spec in specs
            if spec.topic not in metadata.topics or metadata.topics[spec.topic].error is not None
        ]
        if not missing:
            break
        if time.monotonic() > deadline:  # transient (brokercore.kafka.daemon retries it)
            raise KafkaException(
                KafkaError(
                    KafkaError._UNKNOWN_TOPIC, f"topics not available after {timeout} s: {missing}"
                )
            )
        time.sleep(0.1)
    for spec in specs:
        found = metadata.topics[spec.topic]
        if len(found.partitions) != spec.num_partitions:
            raise ValueError(
                f"topic {spec.topic} has {len(found.partitions)} partitions, "
                f"the configuration says {spec.num_partitions}"
            )
