"""Configuration from ``BROKERCORE_*`` environment variables, read in this one place.

Command-line flags override these; the defaults serve the development Kafka that
``scripts/kafka/kafka.sh start`` runs on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EngineOptions", "KafkaSettings"]


@dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is and how the platform's topics are named and split.

    ``shards`` is the partition count of ``orders``, ``events`` and ``snapshots``:
    shard K owns partition K of each. ``topic_prefix`` keeps several deployments (or
    test runs) apart on one cluster.
    """

    bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = ""
    shards: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KafkaSettings:
        defaults = cls()
        try:
            shards = int(env.get("BROKERCORE_SHARDS", defaults.shards))
        except ValueError:
            raise ValueError("BROKERCORE_SHARDS must be an integer") from None
        settings = cls(bootstrap=env.get("BROKERCORE_KAFKA_BOOTSTRAP", defaults.bootstrap),
                       topic_prefix=env.get("BROKERCORE_TOPIC_PREFIX", defaults.topic_prefix),
                       shards=shards)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.shards < 1:
            raise ValueError("the number of shards must be at least 1")

    @property
    def orders_topic(self) -> str:
        return self.topic_prefix + "orders"

    @property
    def events_topic(self) -> str:
        return self.topic_prefix + "events"

    @property
    def snapshots_topic(self) -> str:
        return self.topic_prefix + "snapshots"

    @property
    def dead_letter_topic(self) -> str:
        return self.topic_prefix + "orders.dead-letters"

    @property
    def leases_topic(self) -> str:
        """One partition; the daemons of shard K form the group that leases it."""
        return self.topic_prefix + "engine-leases"

    def engine_group(self, shard: int) -> str:
        """The consumer group whose committed offsets are shard K's input position."""
        return f"{self.topic_prefix}brokercore-engine-{shard}"

    def lease_group(self, shard: int) -> str:
        return f"{self.topic_prefix}brokercore-engine-lease-{shard}"

    def transactional_id(self, shard: int) -> str:
        """The same for every daemon of a shard, so a new one fences its predecessor."""
        return f"{self.topic_prefix}brokercore-engine-{shard}"


@dataclass(frozen=True)
class EngineOptions:
    """Tuning of one engine daemon (brokercore.daemon); the CLI flags set them."""

    core: int | None = None             # CPU core of the matcher thread
    linger: float = 0.005               # seconds the publisher gathers before a commit
    poll_batch: int = 10_000            # messages per consume() call
    max_marks: int = 64                 # matcher batches per transaction at most
    snapshot_every: int = 200_000       # commands between snapshots ...
    snapshot_interval: float = 30.0     # ... or seconds, whichever comes first
    ring_capacity: int = 1 << 16
    lease_session: float = 1.5          # seconds without heartbeat before the lease lapses
    transactions: bool = True           # False only to measure their price (not safe)
