"""Configuration from ``BROKERCORE_*`` environment variables, read in this one place.

Command-line flags override these; the defaults serve the development Kafka that
``scripts/kafka/kafka.sh start`` runs on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CALENDARS", "EngineOptions", "KafkaSettings"]

CALENDARS = ("exchange", "always-open")
"""The trading calendars (BROKERCORE_CALENDAR): the sessions in the instruments file, or
every instant open (the development stack's, so orders trade at night and at weekends)."""


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
    def notification_dead_letter_topic(self) -> str:
        """Notifications whose push failed every retry (services/notifier)."""
        return self.topic_prefix + "notifications.dead-letters"

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
    """Tuning of one engine daemon (brokercore.kafka.daemon); the CLI flags set them."""

    core: int | None = None             # CPU core of the matcher thread
    linger: float = 0.005               # seconds the publisher gathers before a commit
    poll_batch: int = 10_000            # messages per consume() call
    max_marks: int = 64                 # matcher batches per transaction at most
    snapshot_every: int = 200_000       # commands between snapshots ...
    snapshot_interval: float = 30.0     # ... or seconds, whichever comes first
    ring_capacity: int = 1 << 16
    lease_session: float = 1.5          # seconds without heartbeat before the lease lapses
    transactions: bool = True           # False only to measure their price (not safe)


DEV_JWT_SECRET = "brokercore-development-secret-not-for-production!!"
"""The HS256 secret of dev mode (BROKERCORE_DEV_MODE=1): public, so never in production."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the services (OMS, settlement, reconciler) connect to and enforce."""

    database_url: str = "postgresql://brokercore:brokercore@127.0.0.1:15432/brokercore"
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_prefix: str = "brokercore:"           # namespace of this deployment's keys
    instruments: str = "config/instruments.toml"
    calendar: str = "exchange"                  # one of CALENDARS
    jwt_issuer: str = "brokercore-dev"
    jwt_audience: str = "brokercore"
    jwt_hs256_secret: str | None = None
    jwt_rs256_public_key: str | None = None     # PEM text
    dev_mode: bool = False
    rate_limit_burst: int = 20                  # orders a user may send at once ...
    rate_limit_per_second: float = 10.0         # ... and per second after that
    read_rate_limit_burst: int = 60             # reads (query, notifications) at once ...
    read_rate_limit_per_second: float = 30.0    # ... and per second after that
    db_pool_timeout: float = 5.0                # seconds a request waits for a connection
    max_body_bytes: int = 16 * 1024
    fee_bps: str = "0"                          # brokerage in basis points of the value
    fee_fixed_paise: int = 0                    # plus this per order that trades
    cache_ttl: float = 30.0                     # seconds a cached read answer lives
    push_url: str | None = None                 # the push provider's HTTP endpoint
    push_retry_base: float = 1.0                # seconds before the first push retry ...
    push_retry_cap: float = 60.0                # ... doubling up to this
    push_attempts: int = 6                      # then the notification is dead-lettered
    dead_letter_retry_interval: float = 300.0   # seconds between the reconciler's retries
    ws_queue_size: int = 1000                   # messages a slow WebSocket may fall behind
    ws_heartbeat: float = 15.0                  # seconds between pings; 2 missed = gone

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServiceSettings:
        d = cls()
        public_key_file = env.get("BROKERCORE_JWT_RS256_PUBLIC_KEY_FILE")
        dev_mode = env.get("BROKERCORE_DEV_MODE", "0") == "1"
        secret = env.get("BROKERCORE_JWT_HS256_SECRET") or (DEV_JWT_SECRET if dev_mode else None)
        calendar = env.get("BROKERCORE_CALENDAR", d.calendar)
        if calendar not in CALENDARS:
            raise ValueError(f"invalid BROKERCORE_* setting: BROKERCORE_CALENDAR must be one "
                             f"of {', '.join(CALENDARS)}, not {calendar!r}")
        try:
            return cls(
                database_url=env.get("BROKERCORE_DATABASE_URL", d.database_url),
                redis_url=env.get("BROKERCORE_REDIS_URL", d.redis_url),
                redis_prefix=env.get("BROKERCORE_REDIS_PREFIX", d.redis_prefix),
                instruments=env.get("BROKERCORE_INSTRUMENTS", d.instruments),
                calendar=calendar,
                jwt_issuer=env.get("BROKERCORE_JWT_ISSUER", d.jwt_issuer),
                jwt_audience=env.get("BROKERCORE_JWT_AUDIENCE", d.jwt_audience),
                jwt_hs256_secret=secret,
                jwt_rs256_public_key=(open(public_key_file).read() if public_key_file
                                      else None),
                dev_mode=dev_mode,
                rate_limit_burst=int(env.get("BROKERCORE_RATE_LIMIT_BURST",
                                             d.rate_limit_burst)),
                rate_limit_per_second=float(env.get("BROKERCORE_RATE_LIMIT_PER_SECOND",
                                                    d.rate_limit_per_second)),
                read_rate_limit_burst=int(env.get("BROKERCORE_READ_RATE_LIMIT_BURST",
                                                  d.read_rate_limit_burst)),
                read_rate_limit_per_second=float(env.get(
                    "BROKERCORE_READ_RATE_LIMIT_PER_SECOND", d.read_rate_limit_per_second)),
                db_pool_timeout=float(env.get("BROKERCORE_DB_POOL_TIMEOUT",
                                              d.db_pool_timeout)),
                max_body_bytes=int(env.get("BROKERCORE_MAX_BODY_BYTES", d.max_body_bytes)),
                fee_bps=env.get("BROKERCORE_FEE_BPS", d.fee_bps),
                fee_fixed_paise=int(env.get("BROKERCORE_FEE_FIXED_PAISE", d.fee_fixed_paise)),
                cache_ttl=float(env.get("BROKERCORE_CACHE_TTL", d.cache_ttl)),
                push_url=env.get("BROKERCORE_PUSH_URL") or None,
                push_retry_base=float(env.get("BROKERCORE_PUSH_RETRY_BASE", d.push_retry_base)),
                push_retry_cap=float(env.get("BROKERCORE_PUSH_RETRY_CAP", d.push_retry_cap)),
                push_attempts=int(env.get("BROKERCORE_PUSH_ATTEMPTS", d.push_attempts)),
                dead_letter_retry_interval=float(env.get(
                    "BROKERCORE_DEAD_LETTER_RETRY_INTERVAL", d.dead_letter_retry_interval)),
                ws_queue_size=int(env.get("BROKERCORE_WS_QUEUE_SIZE", d.ws_queue_size)),
                ws_heartbeat=float(env.get("BROKERCORE_WS_HEARTBEAT", d.ws_heartbeat)),
            )
        except ValueError as e:
            raise ValueError(f"invalid BROKERCORE_* setting: {e}") from None
