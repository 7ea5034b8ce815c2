"""Configuration from ``BROKERCORE_*`` environment variables, read in this one place.

Command-line flags override these; the defaults serve the development Kafka that
``scripts/kafka/kafka.sh start`` runs on loopback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "CALENDARS",
    "DEFAULT_DATABASE_URL",
    "Calendar",
    "EngineOptions",
    "KafkaSettings",
    "ServiceSettings",
]

Calendar = Literal["exchange", "always-open"]
"""The trading calendars (BROKERCORE_CALENDAR): the sessions in the instruments file, or
every instant open (the development stack's, so orders trade at night and at weekends)."""
CALENDARS: tuple[Calendar, ...] = typing.get_args(Calendar)

DEFAULT_DATABASE_URL = "postgresql://brokercore:brokercore@127.0.0.1:15432/brokercore"
"""The development server that ``scripts/postgres/postgres.sh start`` runs."""

_Settings = TypeVar("_Settings", bound="DataclassInstance")
_AT_FIELD = re.compile(r"`\$\.(\w+)`$")
_WHAT: dict[object, str] = {
    int: "an integer",
    float: "a number",
    Decimal: "a decimal number",
    str: "a string",
}


def _variable(name: str) -> dict[str, str]:
    """Field metadata naming a setting's variable when it is not BROKERCORE_<FIELD>."""
    return {"variable": name}


def _from_env(cls: type[_Settings], env: Mapping[str, str], **derived: Any) -> _Settings:
    """The settings dataclass ``cls`` with each field read from its variable
    (BROKERCORE_<FIELD> unless the field's metadata names another) and converted from
    text by msgspec; unset variables keep the defaults. ``derived`` are the fields the
    caller works out itself (from several variables, or a file a variable names)."""
    variables = {
        f.name: f.metadata.get("variable", f"BROKERCORE_{f.name.upper()}")
        for f in dataclasses.fields(cls)
        if f.name not in derived
    }
    given = {name: env[variable] for name, variable in variables.items() if variable in env}
    try:
        return msgspec.convert({**given, **derived}, cls, strict=False)
    except msgspec.ValidationError as e:
        at = _AT_FIELD.search(str(e))
        if at is None or at.group(1) not in given:
            raise
        name = at.group(1)
        kind = typing.get_type_hints(cls)[name]
        what = (
            f"one of {', '.join(typing.get_args(kind))}"
            if typing.get_origin(kind) is Literal
            else _WHAT.get(kind, str(kind))
        )
        raise ValueError(
            f"invalid BROKERCORE_* setting: {variables[name]} must be {what}, not {given[name]!r}"
        ) from None


@dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is and how the platform's topics are named and split.

    ``shards`` is the partition count of ``orders``, ``events`` and ``snapshots``:
    shard K owns partition K of each. ``topic_prefix`` keeps several deployments (or
    test runs) apart on one cluster.
    """

    bootstrap: str = field(
        default="127.0.0.1:19092", metadata=_variable("BROKERCORE_KAFKA_BOOTSTRAP")
    )
    topic_prefix: str = ""
    shards: int = 4
    shard_plan: str | None = None  # a plan file (brokercore.kafka.placement); None: computed

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KafkaSettings:
        settings = _from_env(cls, env)
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
    def postback_dead_letter_topic(self) -> str:
        """Postbacks that failed every retry (services/notifier)."""
        return self.topic_prefix + "postbacks.dead-letters"

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

    core: int | None = None  # CPU core of the matcher thread
    # seconds the publisher gathers before a commit: each transaction costs the broker
    # ~6 requests and a marker per partition, whatever it carries
    linger: float = 0.015
    poll_batch: int = 10_000  # messages per consume() call
    max_marks: int = 64  # matcher batches per transaction at most
    snapshot_every: int = 200_000  # commands between snapshots ...
    snapshot_interval: float = 30.0  # ... or seconds, whichever comes first
    ring_capacity: int = 1 << 16
    lease_session: float = 1.5  # seconds without heartbeat before the lease lapses
    transactions: bool = True  # False only to measure their price (not safe)


def _day_seconds(text: str | None) -> tuple[float, ...]:
    """BROKERCORE_DAY_SECONDS's four numbers (unset or empty: the default day's)."""
    if not text:
        return ServiceSettings.day_seconds
    try:
        seconds = tuple(float(part) for part in text.split(","))
    except ValueError:
        seconds = ()
    if len(seconds) != 4 or not all(0 < s < float("inf") for s in seconds):
        raise ValueError(
            "invalid BROKERCORE_* setting: BROKERCORE_DAY_SECONDS must be four positive "
            f"numbers of seconds PRE_OPEN,UNCROSS_WINDOW,TRADING,CLOSED, not {text!r}"
        )
    return seconds


DEV_JWT_SECRET = "brokercore-development-secret-not-for-production!!"
"""The HS256 secret of dev mode (BROKERCORE_DEV_MODE=1): public, so never in production."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the services (OMS, settlement, reconciler) connect to and enforce."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_prefix: str = "brokercore:"  # namespace of this deployment's keys
    instruments: str = "config/instruments.toml"
    calendar: Calendar = "exchange"
    jwt_issuer: str = "brokercore-dev"
    jwt_audience: str = "brokercore"
    jwt_hs256_secret: str | None = None
    jwt_rs256_public_key: str | None = None  # PEM text
    jwks_url: str | None = None  # the identity provider's JWKS (brokercore.edge.jwks)
    jwks_refresh: float = 60.0  # seconds between fetches of it
    dev_mode: bool = False
    rate_limit_burst: int = 20  # orders a user may send at once ...
    rate_limit_per_second: float = 10.0  # ... and per second after that
    read_rate_limit_burst: int = 60  # reads (query, notifications) at once ...
    read_rate_limit_per_second: float = 30.0  # ... and per second after that
    db_pool_timeout: float = 5.0  # seconds a request waits for a connection
    replica_url: str | None = None  # a streaming read replica (brokercore.read.replica)
    replica_max_lag: float = 2.0  # seconds behind the primary past which it is not read
    max_body_bytes: int = 16 * 1024
    fee_bps: Decimal = Decimal(0)  # brokerage in basis points of the value
    fee_fixed_paise: int = 0  # plus this per order that trades
    max_order_modifications: int = 25  # modify requests one order may take (as Kite)
    # a market order's default protection (0 < p <= 20)
    market_protection_percent: Decimal = Decimal(5)
    cache_ttl: float = 30.0  # seconds a cached read answer lives
    gtt_expiry_days: int = 365  # a GTT's life when none is asked, and its longest
    push_url: str | None = None  # the push provider's HTTP endpoint
    push_retry_base: float = 1.0  # seconds before the first push retry ...
    push_retry_cap: float = 60.0  # ... doubling up to this
    push_attempts: int = 6  # then the notification is dead-lettered (postbacks too)
    postback_timeout: float = 5.0  # seconds a postback endpoint has to answer
    postback_per_url: int = 4  # postbacks in flight to one registration at most
    postback_ca_file: str | None = None  # PEM CAs trusted besides the system's
    postback_private_hosts: bool = False  # whether URLs may name loopback/private IPs
    postback_breaker_failures: int = 10  # postbacks dead-lettered in a row pause a URL ...
    postback_breaker_pause: float = 300.0  # ... for these seconds (dead-lettered untried)
    payment_provider_url: str | None = None  # where the funds service sends payouts
    payment_webhook_secret: str | None = None  # HMAC key of the provider's callbacks
    payout_retry_base: float = 1.0  # seconds before a payout is sent again ...
    payout_retry_cap: float = 60.0  # ... doubling up to this, until the provider takes it
    dead_letter_retry_interval: float = 300.0  # seconds between the reconciler's retries
    ws_queue_size: int = 1000  # messages a slow WebSocket may fall behind
    ws_heartbeat: float = 15.0  # seconds between pings; 2 missed = gone
    day: Literal["calendar", "compressed"] = "calendar"  # the session scheduler's days
    # a compressed day's seconds (BROKERCORE_DAY_SECONDS="60,20,240,60"): pre-open, the
    # uncross's window at its end, trading, closed; the scheduler's and the OMS's
    day_seconds: tuple[float, float, float, float] = (60.0, 20.0, 240.0, 60.0)
    scheduler_secret: str | None = None  # the key of the uncross moments (session_plan)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServiceSettings:
        """Every field from its BROKERCORE_<FIELD> variable; besides, dev mode is on only
        for BROKERCORE_DEV_MODE=1 (and then the HS256 secret defaults to the public
        development one), the RS256 public key is read from the file that
        BROKERCORE_JWT_RS256_PUBLIC_KEY_FILE names, and an empty secret, push URL,
        postback CA file, replica URL or JWKS URL is none."""
        dev_mode = env.get("BROKERCORE_DEV_MODE", "0") == "1"
        public_key_file = env.get("BROKERCORE_JWT_RS256_PUBLIC_KEY_FILE")
        return _from_env(
            cls,
            env,
            dev_mode=dev_mode,
            jwt_hs256_secret=(
                env.get("BROKERCORE_JWT_HS256_SECRET") or (DEV_JWT_SECRET if dev_mode else None)
            ),
            jwt_rs256_public_key=(Path(public_key_file).read_text() if public_key_file else None),
            push_url=env.get("BROKERCORE_PUSH_URL") or None,
            postback_ca_file=env.get("BROKERCORE_POSTBACK_CA_FILE") or None,
            payment_provider_url=env.get("BROKERCORE_PAYMENT_PROVIDER_URL") or None,
            payment_webhook_secret=env.get("BROKERCORE_PAYMENT_WEBHOOK_SECRET") or None,
            scheduler_secret=env.get("BROKERCORE_SCHEDULER_SECRET") or None,
            day_seconds=_day_seconds(env.get("BROKERCORE_DAY_SECONDS")),
            replica_url=env.get("BROKERCORE_REPLICA_URL") or None,
            jwks_url=env.get("BROKERCORE_JWKS_URL") or None,
        )
