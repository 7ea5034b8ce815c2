"""A Kafka consumer whose position lives in Postgres, beside what it writes (hop 5).

Settlement and the projector both read ``events`` this way: each batch of messages is
handed to an ``Applier``, which writes it *and* the next offsets in one Postgres
transaction (``claim_offsets`` and ``store_offsets`` do the offset half), so a batch
counts entirely or not at all and a re-delivered message is skipped. Kafka's group
offsets are never used. ``run_pg_consumer`` is the long-running loop around it; it
waits out a restart of Postgres or Kafka instead of dying.

Several processes of one consumer split the topic's partitions: they join one Kafka
consumer group (``subscribe``), and a process that is given partitions starts each at the
offset stored in Postgres. A takeover is safe because of the per-batch offsets: a batch
still in the hands of a process that lost its partitions (killed, or paused past its
session) finds its offsets moved on by the new owner and is skipped (``claim_offsets``
locks the offset rows, so the two never apply one message both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, Self, TypeVar

import msgspec
import psycopg

from brokercore.faults.backoff import Backoff, transient
from brokercore.faults.kafka_errors import QUIET_KAFKA, transient_kafka
from brokercore.kafka.messages import EventBatch

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka import Message as KafkaMessage

__all__ = [
    "Applier",
    "Stats",
    "Message",
    "claim_offsets",
    "store_offsets",
    "stored_offsets",
    "run_pg_consumer",
]

log = logging.getLogger("brokercore.consumers.pg_consumer")


class Message(NamedTuple):
    """One message of the events topic."""

    partition: int
    offset: int
    batch: EventBatch
    timestamp_ms: int = 0  # Kafka's timestamp of it (the engine's producer sets it)


class Stats(Protocol):
    """What batches did: stats add up with ``+`` and count the events applied."""

    events: int

    def __add__(self, other: Self) -> Self: ...


S = TypeVar("S", bound=Stats)


class Applier(Protocol[S]):
    """What a Postgres-offset consumer does with a batch."""

    consumer: str  # its name in consumer_offsets
    topic: str

    def new_stats(self) -> S:
        """Zero stats."""

    def apply(self, conn: psycopg.Connection, messages: Sequence[Message]) -> S:
        """Write the batch and its offsets in one transaction; returns its stats."""

    def committed(self, stats: S) -> None:
        """Called after each batch's transaction committed (caches, pub/sub)."""

    def describe(self, stats: S) -> str:
        """A one-line summary of stats, with units."""


def claim_offsets(
    conn: psycopg.Connection, consumer: str, topic: str, messages: Sequence[Message]
) -> tuple[list[Message], dict[int, int]]:
    """Lock the consumer's offset rows of the batch's partitions (inside the caller's
    transaction); the messages not yet applied, and the next offset of each partition
    that moves. Two processes of one consumer take turns on these locks."""
    partitions = sorted({m.partition for m in messages})
    if not partitions:
        return [], {}
    conn.execute(
        "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset) "
        "SELECT %s, %s, p, 0 FROM unnest(%s::int[]) AS p ON CONFLICT DO NOTHING",
        (consumer, topic, partitions),
    )
    stored: dict[int, int] = dict(
        conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = %s AND "
            "topic = %s AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
            (consumer, topic, partitions),
        ).fetchall()
    )
    nxt, fresh = dict(stored), []
    for message in messages:
        if message.offset >= nxt[message.partition]:
            fresh.append(message)
            nxt[message.partition] = message.offset + 1
    return fresh, {p: o for p, o in nxt.items() if o != stored[p]}


def store_offsets(
    conn: psycopg.Connection, consumer: str, topic: str, offsets: dict[int, int]
) -> None:
    """Move the claimed offset rows (same transaction as ``claim_offsets``)."""
    if offsets:
        conn.execute(
            "UPDATE consumer_offsets c SET next_offset = v.o, updated_at = now() "
            "FROM unnest(%s::int[], %s::bigint[]) AS v (p, o) "
            "WHERE c.consumer = %s AND c.topic = %s AND c.partition = v.p",
            (list(offsets), list(offsets.values()), consumer, topic),
        )


def stored_offsets(conn: psycopg.Connection, consumer: str, topic: str) -> dict[int, int]:
    """partition -> next offset this consumer stored for the topic."""
    return dict(
        conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets "
            "WHERE consumer = %s AND topic = %s",
            (consumer, topic),
        ).fetchall()
    )


def run_pg_consumer(
    applier: Applier[S],
    bootstrap: str,
    database_url: str,
    name: str,
    stop_event: threading.Event | None = None,
    *,
    max_messages: int = 1000,
    max_wait: float = 0.05,
    linger: float = 0.02,
    log_every: float = 1.0,
    session_timeout_ms: int = 6000,
    say: Callable[[str], None] | None = None,
) -> S:
    """Consume ``applier.topic`` (read_committed) from the offsets stored in Postgres and
    apply it, one transaction per batch (what arrives within ``linger`` s of the batch's
    first message, up to ``max_messages``; an idle consumer waits ``max_wait`` s at a
    time), until ``stop_event`` is set; returns the total stats. The partitions are the
    ones the consumer group gives this process (all of them when it runs alone); a
    process silent for ``session_timeout_ms`` loses its partitions to the others.

    Postgres or Kafka going away (a restart, a lost connection, a deadlock) is waited
    out with back-off (``brokercore.faults.backoff``): the batch in hand is kept and applied
    again on a new connection, which is safe because a batch and its offsets commit
    together (messages already stored are skipped). Any other error is raised with
    nothing of its batch stored, so a restart resumes exactly where it stopped.
    """
    from confluent_kafka import Consumer  # here: applying batches needs no Kafka client

    say = say or log.info
    stop = stop_event or threading.Event()
    topic = applier.topic
    decoder = msgspec.msgpack.Decoder(EventBatch)
    totals = applier.new_stats()
    postgres = _Postgres(database_url, Backoff(f"{name}: Postgres", log))
    kafka = Backoff(f"{name}: Kafka", log)
    broker_errors: list[KafkaError] = []  # error_cb's, seen after each read
    consumer = Consumer(
        {
            **QUIET_KAFKA,
            "error_cb": broker_errors.append,
            "bootstrap.servers": bootstrap,
            "group.id": f"{applier.consumer}.{topic}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": 10,
            "reconnect.backoff.max.ms": 1000,  # back within a second of the broker
            "session.timeout.ms": session_timeout_ms,  # a dead process's partitions move
            "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
            "auto.offset.reset": "error",  # a stored offset that is gone: stop, loudly
        }
    )
    batch: list[Message] = []  # read, not yet stored: kept through failures
    window, last = applier.new_stats(), time.monotonic()
    try:
        if _partitions(consumer, topic, stop):
            rebalance = _Rebalance(postgres, applier, stop, say, name)
            consumer.subscribe(
                [topic],
                on_assign=rebalance.assign,
                on_revoke=rebalance.revoke,
                on_lost=rebalance.revoke,
            )
        while not stop.is_set():
            try:
                if not batch:
                    limits = (max_messages, max_wait, linger)
                    batch = _read(consumer, decoder, limits, kafka, broker_errors)
                if batch:
                    stats = applier.apply(postgres.connection(), batch)
                    batch = []
                    applier.committed(stats)
                    window += stats
                postgres.backoff.recovered()
            except Exception as e:
                if not transient(e):
                    raise
                if isinstance(e, psycopg.Error):
                    postgres.failed(e, stop)
                else:
                    kafka.wait(e, stop)
            if time.monotonic() - last >= log_every:
                seconds = time.monotonic() - last
                totals += window
                say(
                    f"{name}: {window.events / seconds:,.0f} events/s; last "
                    f"{seconds:.1f} s: {applier.describe(window)}; total "
                    f"{totals.events} events"
                )
                window, last = applier.new_stats(), time.monotonic()
        totals += window
    finally:
        consumer.close()
        postgres.close()
    say(f"{name}: stopped; {applier.describe(totals)}")
    return totals


class _Postgres:
    """The loop's connection, opened when needed, dropped when lost."""

    def __init__(self, url: str, backoff: Backoff):
        self.url = url
        self.backoff = backoff
        self.conn: psycopg.Connection | None = None

    def connection(self) -> psycopg.Connection:
        if self.conn is None:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        return self.conn

    def failed(self, e: psycopg.Error, stop: threading.Event) -> None:
        """After a transient error: a lost connection is closed (the next attempt opens
        another); wait out the back-off."""
        self.conn = _unless_broken(self.conn)
        self.backoff.wait(e, stop)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class _Rebalance:
    """The consumer group's callbacks (run inside the consumer's reads): partitions
    given to this process start at their offsets stored in Postgres."""

    def __init__(
        self,
        postgres: _Postgres,
        applier: Applier[S],
        stop: threading.Event,
        say: Callable[[str], None],
        name: str,
    ):
        self.postgres = postgres
        self.consumer = applier.consumer
        self.topic = applier.topic
        self.stop = stop
        self.say = say
        self.name = name

    def assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start each partition at its stored offset (waiting out Postgres: nothing of
        them can be applied before it is back anyway). Stopped first: none taken."""
        from confluent_kafka import OFFSET_BEGINNING

        start = self._stored()
        if start is None:
            consumer.assign([])
            return
        for tp in partitions:
            tp.offset = start.get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.say(
            f"{self.name}: {self.topic} partitions {[tp.partition for tp in partitions]} "
            f"from offsets {[start.get(tp.partition, 0) for tp in partitions]}"
        )

    def revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Nothing to undo: a batch of these partitions still in hand is applied next,
        and ``claim_offsets`` skips what their new owner applied first."""
        self.say(f"{self.name}: {self.topic} partitions {[tp.partition for tp in partitions]} gone")

    def _stored(self) -> dict[int, int] | None:
        while not self.stop.is_set():
            try:
                return stored_offsets(self.postgres.connection(), self.consumer, self.topic)
            except psycopg.Error as e:
                if not transient(e):
                    raise
                self.postgres.failed(e, self.stop)
        return None


def _read(
    consumer: Consumer,
    decoder: msgspec.msgpack.Decoder[EventBatch],
    limits: tuple[int, float, float],
    kafka: Backoff,
    broker_errors: list[KafkaError],
) -> list[Message]:
    """The next batch (``_next_batch`` within ``limits``), decoded. A broker that is away
    shows as errors (error messages, or ``broker_errors`` from the error callback) while
    librdkafka reconnects by itself: they are noted (logged once per outage) and passed
    over; any other error is raised."""
    from confluent_kafka import KafkaError, KafkaException

    batch: list[Message] = []
    errors: list[KafkaError] = []
    for message in _next_batch(consumer, *limits):
        error = message.error()
        if error is None:
            batch.append(_decoded(message, decoder))
        elif error.code() != KafkaError._PARTITION_EOF:
            errors.append(error)
    errors += broker_errors
    broker_errors.clear()
    for error in errors:
        if not transient_kafka(error):
            raise KafkaException(error)
        kafka.failed(error)
    if batch:
        kafka.recovered()
    return batch


def _decoded(message: KafkaMessage, decoder: msgspec.msgpack.Decoder[EventBatch]) -> Message:
    """A consumed message (one that is not an error has a partition, offset and value)."""
    partition, offset, value = message.partition(), message.offset(), message.value()
    assert partition is not None and offset is not None and value is not None
    return Message(partition, offset, decoder.decode(value), message.timestamp()[1])


def _unless_broken(conn: psycopg.Connection | None) -> psycopg.Connection | None:
    """The connection, unless it is lost (then closed: the next attempt opens another)."""
    if conn is not None and (conn.closed or conn.broken):
        conn.close()
        return None
    return conn


def _next_batch(
    consumer: Consumer, max_messages: int, max_wait: float, linger: float
) -> list[KafkaMessage]:
    """The first message within ``max_wait`` s, and what follows it within ``linger`` s,
    up to ``max_messages``. A consumer as fast as the engines would otherwise apply each
    message (~15 events) alone, and a transaction's fixed statements then dominate
    (benchmarks/bench_consumers.py --rate 600 --commands-per-message 8, Postgres CPU per
    event: settlement 260-418 µs with no linger, ~313 at 20 ms, ~200 at 50 ms; the
    projector 330-422, ~241, 139-195; lag p99 36-317, 68-97, 108-179 ms). In the whole
    stack (benchmarks/bench_open.py) 20 ms changes neither CPU nor latency measurably;
    50 ms cuts the two consumers' CPU there by ~20 % but pushes the projector's to-row
    p99 past the 500 ms budget, hence 20 ms."""
    batch: list[KafkaMessage] = consumer.consume(max_messages, 0)
    if not batch and (first := consumer.poll(max_wait)) is not None:
        batch = [first]
    if batch and len(batch) < max_messages and linger > 0:
        batch += consumer.consume(max_messages - len(batch), linger)
    return batch


def _partitions(consumer: Consumer, topic: str, stop: threading.Event) -> list[int]:
    """The topic's partitions, waiting (until stopped) for the topic to exist."""
    while True:
        found = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if stop.wait(0.5):
            return []
