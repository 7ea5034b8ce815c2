"""Publishing the session scheduler's commands exactly once per symbol, day and transition.

Each step (brokercore.broker.session_plan) goes, in ONE Kafka transaction, to two
places: its command (PreOpen, Uncross, OpenSession, CloseSession) to ``orders``, on the
symbol's shard with the symbol as key (as the OMS sends orders), and an entry
(symbol, day, transition) to the session log, ``<prefix>session-log`` (one partition):
both are committed or neither is. Every scheduler of a deployment uses the same
transactional id, ``<prefix>brokercore-scheduler``.

What a publisher knows to be published is the log as read (read_committed) right after
its producer's ``init_transactions`` (on from where it read before: the log only grows),
plus what it committed since. That is complete:
``init_transactions`` fences every earlier producer of the id (an open transaction of
theirs is aborted, and they can never commit again); a transaction of theirs still
being committed (init_transactions can return before it is complete after a broker
crash: brokercore.kafka.resolved) is waited for, so the log read after it holds all
they committed; and a
scheduler that commits later has called ``init_transactions`` later, which fenced this
one, whose next commit then fails: it starts over (a new producer, the log read
again) and finds the other's entries. So a step in the log is never published again,
and two schedulers at once take turns, each publishing only what the other has not.

Failure modes: a scheduler killed between the transaction's start and its commit
leaves it open; the next ``init_transactions`` of the id (its restart, or the other
scheduler's next turn) aborts it, else the broker does after ``TRANSACTION_TIMEOUT_MS``,
and until then read_committed readers of that ``orders`` partition (the engine) wait.
Killed after the commit: the entry is there, nothing is sent twice. Kafka away: the
errors are transient (brokercore.faults.kafka_errors); the caller retries, and each try
starts from a fresh producer and log read. The log keeps 30 days, longer than the days
the plan looks back at.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from brokercore.broker.session_plan import Step, Transition
from brokercore.config import KafkaSettings
from brokercore.faults.kafka_errors import QUIET_KAFKA
from brokercore.kafka.messages import (
    CloseSession,
    Command,
    Halt,
    OpenSession,
    PreOpen,
    Reband,
    Uncross,
    encode,
)
from brokercore.kafka.placement import ShardPlan
from brokercore.kafka.resolved import require_resolved
from brokercore.kafka.topics import ensure_topics

__all__ = [
    "LogEntry",
    "SessionPublisher",
    "command_of",
    "ensure_session_log",
    "read_session_log",
    "session_log_topic",
    "scheduler_transactional_id",
]

log = logging.getLogger("brokercore.kafka.session_log")

_librdkafka = logging.getLogger("brokercore.kafka.session_log.librdkafka")
_librdkafka.setLevel(logging.CRITICAL + 1)
"""librdkafka's own lines: with two schedulers it reports each fencing as FATAL, which is
how they take turns; the publisher logs that itself, and every error reaches it as an
exception."""

TRANSACTION_TIMEOUT_MS = 10_000
"""How long an abandoned transaction holds up ``orders`` at most (the broker aborts it)."""
LOG_RETENTION = timedelta(days=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LogEntry(msgspec.Struct, array_like=True, frozen=True):
    """One published step, as the session log holds it; ``ts`` is its command's."""

    symbol: str
    day: str
    transition: str
    ts: int


def session_log_topic(settings: KafkaSettings) -> str:
    return settings.topic_prefix + "session-log"


def scheduler_transactional_id(settings: KafkaSettings) -> str:
    """The same for every scheduler of a deployment, so that each fences the others."""
    return settings.topic_prefix + "brokercore-scheduler"


def nanoseconds(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def command_of(step: Step) -> Command:
    """The ``orders`` command of a step, stamped with the step's planned time."""
    ts = nanoseconds(step.at)
    match step.transition:
        case Transition.PRE_OPEN:
            return PreOpen(step.symbol, ts)
        case Transition.UNCROSS:
            return Uncross(step.symbol, 0, ts)  # 0: the book's last trade price
        case Transition.OPEN:
            return OpenSession(step.symbol, ts)
        case Transition.CLOSE:
            return CloseSession(step.symbol, ts)
        case Transition.HALT:
            return Halt(step.symbol, ts)
        case Transition.REBAND:
            assert step.band is not None, step
            return Reband(step.symbol, *step.band, ts)
    raise AssertionError(step.transition)  # pragma: no cover


def ensure_session_log(settings: KafkaSettings, timeout: float = 30.0) -> None:
    """The platform's topics (brokercore.kafka.topics) and the session log."""
    ensure_topics(settings, timeout)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap, **QUIET_KAFKA})
    spec = NewTopic(
        session_log_topic(settings),
        num_partitions=1,
        replication_factor=1,
        config={"retention.ms": str(int(LOG_RETENTION.total_seconds() * 1000))},
    )
    try:
        admin.create_topics([spec], request_timeout=timeout)[spec.topic].result(timeout)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def read_session_log(
    settings: KafkaSettings, timeout: float = 30.0, start: int = OFFSET_BEGINNING
) -> list[LogEntry]:
    """Every committed entry of the session log, in order (from offset ``start``)."""
    return _read_log(settings, timeout, start)[0]


def _require_resolved_log(settings: KafkaSettings, timeout: float) -> None:
    """brokercore.kafka.resolved's check of the log, with consumers made for it."""
    committed, uncommitted = (
        Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": f"brokercore-scheduler-{uuid.uuid4().hex}",
                "isolation.level": isolation,
                **QUIET_KAFKA,
            }
        )
        for isolation in ("read_committed", "read_uncommitted")
    )
    try:
        log = TopicPartition(session_log_topic(settings), 0)
        require_resolved(committed, uncommitted, log, timeout)
    finally:
        committed.close()
        uncommitted.close()


def _read_log(settings: KafkaSettings, timeout: float, start: int) -> tuple[list[LogEntry], int]:
    """The committed entries from offset ``start`` on, and the offset after them."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"brokercore-scheduler-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **QUIET_KAFKA,
        }
    )
    decoder = msgspec.msgpack.Decoder(LogEntry)
    entries: list[LogEntry] = []
    deadline = time.monotonic() + timeout
    try:
        consumer.assign([TopicPartition(session_log_topic(settings), 0, start)])
        while True:
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, "the session log was not read to its end")
                )
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                entries.append(decoder.decode(message.value() or b""))
            elif error.code() == KafkaError._PARTITION_EOF:
                end = message.offset()
                return entries, start if end is None else end  # reading again is harmless
            else:
                raise KafkaException(error)
    finally:
        consumer.close()


class SessionPublisher:
    """Publishes steps exactly once (the module docstring says how)."""

    def __init__(self, settings: KafkaSettings, plan: ShardPlan, timeout: float = 30.0):
        self.settings = settings
        self.plan = plan
        self.timeout = timeout
        self._producer: Producer | None = None
        self._known: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        self._read_to = OFFSET_BEGINNING  # the log is known up to here

    @property
    def published(self) -> dict[str, dict[tuple[str, str], int]]:
        """Per symbol, the (day, transition) pairs known to be published, with their
        commands' ts (read from the log when the publisher last started, plus its own
        since)."""
        self._ensure_started()
        return self._known

    def publish(self, steps: Sequence[Step]) -> list[Step]:
        """Publish the steps not published yet, in their order, in one transaction;
        returns those it published. Fenced by another scheduler (or its transaction
        aborted), it publishes nothing and returns []: the caller looks at ``published``
        again (read afresh) and decides anew, since the other may have published some of
        them, and with them changed what is due. Any other KafkaException is raised
        (the producer dropped: the next call starts afresh)."""
        self._ensure_started()
        todo = [s for s in steps if (s.day, s.transition) not in self._known[s.symbol]]
        if not todo:
            return []
        try:
            self._transaction(todo)
        except KafkaException as e:
            error: KafkaError = e.args[0]
            self._drop(abort=not error.fatal())
            if not (error.fatal() or error.txn_requires_abort()):
                raise
            log.info("session publisher: %s; starting over", error.str())
            time.sleep(random.uniform(0.0, 0.2))  # two schedulers: break the tie
            return []
        for s in todo:
            self._known[s.symbol][s.day, s.transition] = nanoseconds(s.at)
        return todo

    def close(self) -> None:
        self._drop()

    def _transaction(self, steps: Iterable[Step]) -> None:
        producer = self._producer
        assert producer is not None
        producer.begin_transaction()
        orders, log_topic = self.settings.orders_topic, session_log_topic(self.settings)
        for step in steps:
            key = step.symbol.encode()
            command = command_of(step)
            producer.produce(
                orders, encode(command), key=key, partition=self.plan.shard_of(step.symbol)
            )
            entry = LogEntry(step.symbol, step.day, step.transition, command.ts)
            producer.produce(log_topic, encode(entry), key=key, partition=0)
        producer.commit_transaction(self.timeout)

    def _ensure_started(self) -> None:
        if self._producer is not None:
            return
        producer = Producer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "transactional.id": scheduler_transactional_id(self.settings),
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 0,
                "logger": _librdkafka,
            }
        )
        try:
            producer.init_transactions(self.timeout)
            # A step a fenced scheduler was still committing is waited for and read,
            # not published again (brokercore.kafka.resolved).
            _require_resolved_log(self.settings, self.timeout)
            # What was read before stays true (the log only grows): read on from there.
            entries, self._read_to = _read_log(self.settings, self.timeout, self._read_to)
        except BaseException:
            producer.close()
            raise
        for entry in entries:
            self._known[entry.symbol][entry.day, entry.transition] = entry.ts
        self._producer = producer

    def _drop(self, abort: bool = True) -> None:
        """Let the producer go; ``abort``: close it, aborting an open transaction (a
        fenced one cannot: it is just released)."""
        producer, self._producer = self._producer, None
        if producer is not None and abort:
            producer.close()
