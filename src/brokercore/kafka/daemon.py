"""The engine daemon of one shard: Kafka ``orders`` in, Kafka ``events`` out, exactly once.

Threads: a consumer (read_committed) decodes partition K of ``orders`` into the shard's
input ring; the shard's matcher (pinned to a core) matches; a publisher reads events and
the matcher's progress marks and commits, in one Kafka transaction, the events of whole
commands, the dead letters before them, any snapshot taken among them, and the input
offset they reach (``send_offsets_to_transaction``). All daemons of shard K share one
transactional.id, so a newcomer fences its predecessor.

Life cycle (``run``):
1. load the newest snapshot of shard K (or start empty) and start the matcher;
2. wait for the shard's lease (a consumer group on a one-partition topic hands it to
   one daemon): meanwhile, as a hot standby, replay ``orders`` silently up to the
   committed offset, again and again;
3. with the lease: fence the predecessor (init_transactions), replay silently up to the
   now final committed offset, then go live;
4. on stop (SIGTERM): finish what was consumed, commit it, write a snapshot, exit 0.

Kafka faults (a broker restarting, a coordinator not ready on a brand-new broker): every
start-up step retries transient errors with bounded back-off and gives up loudly on
anything else. While live, an abortable transaction is aborted and retried; any other
Kafka failure (a fatal or fenced producer, a transaction call that keeps timing out, a
lapsed lease) ends the live session: its shard, clients and threads are dropped and the
daemon starts over from step 1 in the same process -- a new producer, recovery from the
committed state, exactly as a fresh start. Only a lease taken by another daemon (this
one was a zombie), a failed matcher, a thread that will not stop or a start-up step
that keeps failing end the daemon with exit code 1; a restart recovers from the
snapshot and the committed offsets, never re-emitting or losing an event. Every
blocking librdkafka call has a timeout, so SIGTERM is answered within STOP_TIMEOUT
seconds (plus one call) even when Kafka is away. docs/kafka.md has the details.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import msgspec
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from brokercore.config import EngineOptions, KafkaSettings
from brokercore.engine._engine import OrderBook
from brokercore.engine.instruments import Instrument
from brokercore.engine.records import EVENT_DTYPE, MarkKind
from brokercore.faults.kafka_errors import transient_kafka
from brokercore.kafka.codec import CommandDecoder, EventEncoder, SymbolTable
from brokercore.kafka.journal import InputJournal
from brokercore.kafka.messages import DeadLetter, EventBatch, ShardSnapshot, encode
from brokercore.kafka.placement import shard_plan
from brokercore.kafka.resolved import unresolved, unresolved_error
from brokercore.kafka.topics import SNAPSHOT_MAX_BYTES, ensure_topics
from brokercore.runtime.shard import Shard, read_snapshot

__all__ = ["EngineDaemon", "EngineOptions", "LeaseMembers", "STOP_TIMEOUT", "lease_members"]

_NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: nothing committed yet
_T = TypeVar("_T")

BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds between retries of a transient error
GIVE_UP_AFTER = 120.0  # a start-up step retries transient errors this long, then fails
CALL_TIMEOUT = 2.0  # the timeout given to every blocking librdkafka call ...
REQUEST_TIMEOUT = 10.0  # ... which one request may overrun up to this (socket.timeout.ms)
TRANSACTION_PATIENCE = 10.0  # a transaction call retried this long, then a rebuild
STOP_TIMEOUT = 5.0  # after SIGTERM: time for the final commit, else exit 1 without
# A transaction on the events partition still unresolved this long after a session
# first saw it hangs (the coordinator resolves one it knows within twice the
# transaction timeout): _abort_hanging ends it.
HANGING_AFTER = 25.0


def transient(error: BaseException | KafkaError) -> bool:
    """Whether waiting and trying again can cure ``error`` (a KafkaException, its
    KafkaError, or a future that did not resolve in time)."""
    return transient_kafka(error) or isinstance(error, TimeoutError)


class DaemonFailed(RuntimeError):
    pass


class _Stopped(Exception):
    """stop() was called before the daemon went live: nothing to commit."""


class _Halted(Exception):
    """The live session was ended (its failure is recorded) while this thread waited."""


class _SessionLost(RuntimeError):
    """The live session cannot go on (Kafka fault, lapsed lease); a new one can."""


class _Lease:
    """Membership of shard K's lease group: the member assigned the one partition of
    the leases topic is the active daemon. Liveness only; fencing gives safety."""

    def __init__(self, settings: KafkaSettings, shard: int, session: float):
        self.held = False
        self.session = session
        self._group = settings.lease_group(shard)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": self._group,
                "client.id": f"engine-{shard}-{socket.gethostname()}-pid{os.getpid()}",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": int(session * 1000),
                "heartbeat.interval.ms": max(100, int(session * 1000) // 5),
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe(
            [settings.leases_topic],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )
        self._admin = AdminClient({"bootstrap.servers": settings.bootstrap})

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            self.held = True

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            self.held = False

    def poll(self, timeout: float) -> None:
        self._consumer.poll(timeout)  # the group callbacks run in here

    def holder(self) -> str | None:
        """The member id of another daemon holding the lease now, or None (nobody else
        does, or Kafka cannot say now). A member the coordinator still remembers from
        before its own restart shows here until its session lapses."""
        try:
            group = self._admin.describe_consumer_groups(
                [self._group], request_timeout=CALL_TIMEOUT
            )[self._group].result(CALL_TIMEOUT + 1)
        except Exception as e:
            if transient(e):
                return None
            raise
        mine = self._consumer.memberid()
        return next(
            (
                member.member_id
                for member in group.members
                if member.member_id != mine
                and member.assignment is not None
                and member.assignment.topic_partitions
            ),
            None,
        )

    def close(self) -> None:
        """Give the lease up (a standby takes over at once); not a loss."""
        self.held = False
        self._consumer.close()


@dataclass(frozen=True)
class LeaseMembers:
    """The daemons of a shard by client id (``engine-K-HOST-pidN``): the one holding the
    lease, and the hot standbys."""

    active: list[str]
    standby: list[str]


def lease_members(
    admin: AdminClient, settings: KafkaSettings, timeout: float = CALL_TIMEOUT
) -> dict[int, LeaseMembers]:
    """shard -> its daemons, from the lease groups as the group coordinator sees them
    (a daemon killed a moment ago stays a member until its lease session lapses)."""
    groups = [settings.lease_group(k) for k in range(settings.shards)]
    futures = admin.describe_consumer_groups(groups, request_timeout=timeout)
    found = {}
    for shard, group in enumerate(groups):
        members = futures[group].result(timeout + 1).members
        holds = [bool(m.assignment and m.assignment.topic_partitions) for m in members]
        found[shard] = LeaseMembers(
            sorted(m.client_id for m, held in zip(members, holds, strict=True) if held),
            sorted(m.client_id for m, held in zip(members, holds, strict=True) if not held),
        )
    return found


class EngineDaemon:
    """One shard's daemon; ``run()`` blocks until ``stop()`` (or a failure)."""

    def __init__(
        self,
        settings: KafkaSettings,
        shard: int,
        instruments: Sequence[Instrument],
        options: EngineOptions | None = None,
        log: Callable[[str], None] | None = None,
    ):
        if not 0 <= shard < settings.shards:
            raise ValueError(f"shard {shard} is not one of the {settings.shards} shards")
        self.settings = settings
        self.shard_id = shard
        self.options = options or EngineOptions()
        self.plan = shard_plan(settings, instruments)  # the same as the OMS's
        self.instruments = [i for i in instruments if self.plan.shard_of(i.symbol) == shard]
        self.symbols = SymbolTable({i.symbol: i.symbol_id for i in self.instruments})
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._halt = threading.Event()  # a new one per live session: set, it ends it
        self._failure: BaseException | None = None  # why the live session ended
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None  # of the input, per session
        self._producer_client: Producer | None = None  # transactional, per session
        self._retired: list[Producer | Consumer] = []  # never destroyed (_discard, _look)
        self._unresolved_since: float | None = None  # see _last_published_event
        self._snapshot_reader: Consumer | None = None  # see _newest_snapshot
        self._dead: list[DeadLetter] = []  # to publish with the next transaction
        self._offset_to_commit: int | None = None  # without transactions
        self._group_metadata: Any = None  # the input consumer's, for transactions
        self._was_active = False
        self._orders = TopicPartition(settings.orders_topic, shard)
        self.stats = {
            "orders_in": 0,
            "events_out": 0,
            "transactions": 0,
            "dead_letters": 0,
            "snapshots": 0,
            "replayed": 0,
            "recoveries": 0,
        }
        self.role = "starting"
        self._slowest_transaction = 0.0

    def stop(self) -> None:
        """Graceful stop (safe from a signal handler): no new input, commit, snapshot."""
        self._stop.set()

    def log(self, line: str) -> None:
        self._log(f"engine shard {self.shard_id}: {line}")

    # --- riding out Kafka faults ---------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()`` until it succeeds: a transient Kafka error is logged and retried
        after a back-off doubling from BACKOFF_FIRST to BACKOFF_MAX seconds, for up to
        GIVE_UP_AFTER seconds until the daemon has first been live (a deployment that
        never worked fails loudly) and as long as it takes after that (Kafka is away
        for a while: there is nothing better to do); any other error is raised at once.
        _Stopped once stop() is called."""
        give_up_after = None if self._was_active else GIVE_UP_AFTER
        delay, started = BACKOFF_FIRST, time.monotonic()
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return call()
            except Exception as e:
                if not transient(e):
                    raise
                waited = time.monotonic() - started
                if give_up_after is not None and waited + delay > give_up_after:
                    raise DaemonFailed(
                        f"{what}: Kafka still failing after {waited:.0f} s ({_reason(e)})"
                    ) from e
                self.log(f"{what}: {_reason(e)}; retrying in {delay:.1f} s")
            if self._stop.wait(delay):
                raise _Stopped
            delay = min(delay * 2, BACKOFF_MAX)

    def _fail(self, error: BaseException) -> None:
        """End the live session because of ``error`` (the first one is the reason)."""
        if self._failure is None:
            self._failure = error
        self._halt.set()

    @staticmethod
    def _until_done(call: Callable[[float], _T], halt: threading.Event) -> _T:
        """A transaction call, ``call(CALL_TIMEOUT)``, repeated while it fails with a
        retriable error (librdkafka resumes the operation) for TRANSACTION_PATIENCE
        seconds; then, or on any other error, its error is raised; _Halted if the
        session was halted meanwhile. (librdkafka may overrun CALL_TIMEOUT: seen over
        12 s in send_offsets_to_transaction while the broker restarted.)"""
        deadline = time.monotonic() + TRANSACTION_PATIENCE
        while True:
            try:
                result = call(CALL_TIMEOUT)
            except KafkaException as e:
                if halt.is_set():
                    raise _Halted from e
                if not e.args[0].retriable() or time.monotonic() > deadline:
                    raise
                continue
            if halt.is_set():
                raise _Halted
            return result

    # --- Kafka clients ---------------------------------------------------------------

    @property
    def _input(self) -> Consumer:
        """The live session's input consumer (made by _start_shard)."""
        if self._consumer is None:
            raise RuntimeError("no input consumer: the shard is not started")
        return self._consumer

    @property
    def _session_producer(self) -> Producer:
        """The live session's transactional producer (made by _activate)."""
        if self._producer_client is None:
            raise RuntimeError("no producer: the session is not active")
        return self._producer_client

    def _input_consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": self.settings.engine_group(self.shard_id),
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                # The broker answers a fetch as soon as a record arrives (fetch.min.bytes
                # 1): the wait only bounds how often an idle partition is asked again.
                "fetch.wait.max.ms": 200,
                # librdkafka stops fetching for fetch.queue.backoff.ms (default 1 s) once
                # its local queue is full; the consumer thread drains it much faster.
                "fetch.queue.backoff.ms": 5,
            }
        )

    def _committed_offset(
        self, timeout: float = CALL_TIMEOUT, consumer: Consumer | None = None
    ) -> int:
        """The input offset the shard's last committed transaction reached (0 if none).
        Asked by the read_committed input consumer: while the active daemon's last
        transaction is open (or a dead one's, until it is fenced or times out) the
        committed offset is not stable yet, the broker holds the answer back and this
        times out (a transient error)."""
        found = (consumer or self._input).committed([self._orders], timeout=timeout)[0]
        if found.error is not None:
            raise KafkaException(found.error)
        return 0 if found.offset == _NO_OFFSET else found.offset

    def _final_committed_offset(self) -> int:
        """The committed offset once init_transactions has returned: no older producer
        of the shard's transactional.id can commit anything more then. It is read
        without waiting for stability (read_uncommitted), because a kill -9 of the
        broker can leave a pending offset of an aborted transaction behind that never
        resolves (seen with Kafka 4.4: "not stable" for minutes, for ever); it can lag
        the last transaction, which _catch_up_to_event makes up for."""
        with self._look(self.settings.engine_group(self.shard_id), "read_uncommitted") as reader:
            return self._committed_offset(CALL_TIMEOUT, reader)

    @contextmanager
    def _look(self, group: str, isolation: str) -> Iterator[Consumer]:
        """A fresh consumer of ``group`` for one look at the shard's partitions (assign,
        never subscribe; a reused one kept the leader epochs of before a broker restart
        and was refused with FENCED_LEADER_EPOCH for good). Closed after a look that
        worked; kept, never destroyed, after one that failed: librdkafka 2.16 aborted
        the process (rd_kafka_enq_once_del_source_return) destroying a client whose
        call had failed while the broker was away."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": group,
                "isolation.level": isolation,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            yield consumer
        except BaseException:
            self._retired.append(consumer)
            raise
        consumer.close()

    def _producer(self) -> Producer:
        config = {
            "bootstrap.servers": self.settings.bootstrap,
            "linger.ms": 1,
            "message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1 << 21,
        }
        if self.options.transactions:
            config.update(
                {
                    "transactional.id": self.settings.transactional_id(self.shard_id),
                    # A dead daemon's open transaction holds back every
                    # read_committed consumer until a successor fences it or
                    # this times out.
                    "transaction.timeout.ms": 10_000,
                    # librdkafka caps it at transaction.timeout.ms anyway; a
                    # transaction call may block this long whatever its timeout.
                    "socket.timeout.ms": int(REQUEST_TIMEOUT * 1000),
                    # The first request of a transaction right after a commit is
                    # often told CONCURRENT_TRANSACTIONS; the default 100 ms back-off
                    # before its retry would be most of a transaction's latency.
                    "retry.backoff.ms": 2,
                    "retry.backoff.max.ms": 20,
                }
            )
        else:
            config["enable.idempotence"] = True
        return Producer(config)

    def _newest_snapshot(self) -> ShardSnapshot | None:
        """The newest snapshot of this shard, read from the start of its partition by
        one consumer made once per daemon and never closed: librdkafka 2.16 aborted the
        process (rd_kafka_enq_once_del_source_return) closing one while the broker was
        away, between two tries of this read."""
        if self._snapshot_reader is None:
            self._snapshot_reader = Consumer(
                {
                    "bootstrap.servers": self.settings.bootstrap,
                    "group.id": f"{self.settings.engine_group(self.shard_id)}-snapshot-reader",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.max.bytes": SNAPSHOT_MAX_BYTES,
                    "max.partition.fetch.bytes": SNAPSHOT_MAX_BYTES,
                    "receive.message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
                }
            )
        consumer = self._snapshot_reader
        consumer.assign(
            [TopicPartition(self.settings.snapshots_topic, self.shard_id, OFFSET_BEGINNING)]
        )
        newest, decoder = None, msgspec.msgpack.Decoder(ShardSnapshot)
        deadline = time.monotonic() + TRANSACTION_PATIENCE
        try:
            while True:
                if self._stop.is_set():
                    raise _Stopped
                message = consumer.poll(0.5)
                if message is None:
                    if time.monotonic() > deadline:
                        raise KafkaException(
                            KafkaError(
                                KafkaError._TIMED_OUT,
                                "no answer from Kafka while reading snapshots",
                            )
                        )
                    continue
                deadline = time.monotonic() + TRANSACTION_PATIENCE
                error = message.error()
                if error:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return newest
                    raise KafkaException(error)
                try:
                    snapshot = decoder.decode(message.value() or b"")
                except msgspec.DecodeError as e:
                    self.log(f"skipping an undecodable snapshot at offset {message.offset()}: {e}")
                    continue
                if snapshot.shard == self.shard_id:
                    newest = snapshot
        finally:
            consumer.unassign()

    # --- set-up and silent replay ------------------------------------------------------

    def _start_shard(self) -> None:
        snapshot = self._retrying("reading the newest snapshot", self._newest_snapshot)
        books: dict[int, OrderBook] = {}
        applied, self._position, events = 0, 0, 0
        if snapshot is not None:
            books, applied = read_snapshot(snapshot.books)
            self._position, events = snapshot.next_offset, snapshot.events
        # Only the plan's books: a symbol moved away leaves its copy behind (kafka/move.py).
        own = {instrument.symbol_id: instrument for instrument in self.instruments}
        books = {
            symbol: book if (book := books.get(symbol)) is not None else instrument.new_book()
            for symbol, instrument in own.items()  # (new: an instrument added since)
        }
        self.log(
            f"{len(books)} books; "
            + (
                f"from the snapshot at input offset {self._position}, event {events}"
                if snapshot
                else "no snapshot: from the start of the input"
            )
        )
        self.shard = Shard(
            books,
            core=self.options.core,
            marks=True,
            ring_capacity=self.options.ring_capacity,
            commands_applied=applied,
        )
        self.shard.start()
        self.encoder = EventEncoder(self.symbols, self.shard_id, shard_seq=events)
        self.decoder = CommandDecoder(self.symbols, self.settings.orders_topic, self.shard_id)
        self._consumer = self._input_consumer()
        self._consumer.assign([TopicPartition(self._orders.topic, self.shard_id, self._position)])
        self._commands = 0  # submitted by this run (the matcher counts the same)
        self._marked = 0  # commands covered by the marks read
        self._events_read = 0

    def _read_events(self, upto: int) -> np.ndarray:
        """The shard's events up to (this run's) count ``upto``; they are published
        before the mark that announces them, so they are there."""
        parts = [np.empty(0, EVENT_DTYPE)]
        while self._events_read < upto:
            events = self.shard.poll_events(upto - self._events_read, timeout=1.0)
            if not len(events) and not self.shard.running:
                raise DaemonFailed("the shard stopped before publishing marked events")
            self._events_read += len(events)
            parts.append(events)
        return parts[-1] if len(parts) <= 2 else np.concatenate(parts[1:])

    def _catch_up(self, target: int) -> None:
        """Apply ``orders`` up to offset ``target`` silently: count the events (their
        shard_seq must continue) without publishing them."""
        overshot = False
        while self._position < target and not self._stop.is_set():
            messages = self._next_messages()
            batch = []
            for message in messages:
                error, offset = message.error(), message.offset()
                if error:
                    if error.code() == KafkaError._PARTITION_EOF:
                        assert offset is not None  # an end of partition says where
                        if offset >= target:
                            self._position = target  # only transaction markers left
                    elif not transient(error):  # else: librdkafka goes on
                        raise KafkaException(error)
                    continue
                assert offset is not None  # so has every fetched message
                if offset < target:
                    batch.append((offset, message.value()))
                else:
                    overshot = True
            if batch:
                records, _, _ = self.decoder.decode(batch)
                self.shard.submit(records)
                self._commands += len(records)
                self._position = batch[-1][0] + 1
                self.stats["replayed"] += len(batch)
            self._drain_silently(self._commands)
        if overshot:  # read past the target: live consumption starts at it
            self._input.seek(TopicPartition(self._orders.topic, self.shard_id, self._position))

    def _last_published_event(self) -> int:
        """The shard_seq of the last event committed to the shard's ``events`` partition
        (0 if none), read from its end backwards (read_committed: aborted transactions
        and their markers are skipped). Only this shard's daemons write there, and
        init_transactions has fenced every earlier one; but one of their transactions
        can be unresolved there (brokercore.kafka.resolved), and until it is, the answer
        is not final: a transient error, retried. One still unresolved HANGING_AFTER
        seconds after this session first saw it hangs: _abort_hanging ends it."""
        topic = TopicPartition(self.settings.events_topic, self.shard_id)
        group = f"{self.settings.engine_group(self.shard_id)}-events-reader"
        decode = msgspec.msgpack.Decoder(EventBatch).decode
        with (
            self._look(group, "read_committed") as consumer,
            self._look(group, "read_uncommitted") as uncommitted,
        ):
            gap = unresolved(consumer, uncommitted, topic, CALL_TIMEOUT)
            if gap is not None:
                now = time.monotonic()
                if self._unresolved_since is None:
                    self._unresolved_since = now
                elif now - self._unresolved_since > HANGING_AFTER:
                    self._abort_hanging(*gap)
                    self._unresolved_since = None
                raise unresolved_error(topic, *gap)
            low, high = consumer.get_watermark_offsets(topic, timeout=CALL_TIMEOUT)
            start, step = high, 64
            while start > low:
                start, step = max(low, start - step), step * 8
                consumer.assign([TopicPartition(topic.topic, topic.partition, start)])
                last, deadline = None, time.monotonic() + TRANSACTION_PATIENCE
                while True:
                    message = consumer.poll(0.5)
                    if message is None:
                        if time.monotonic() > deadline:
                            raise KafkaException(
                                KafkaError(KafkaError._TIMED_OUT, "no answer reading events")
                            )
                        continue
                    error = message.error()
                    if error:
                        if error.code() == KafkaError._PARTITION_EOF:
                            break
                        raise KafkaException(error)
                    last = message.value()
                consumer.unassign()
                if last is not None:
                    return int(decode(last).events[-1].shard_seq)
            return 0

    def _abort_hanging(self, stable: int, written: int) -> None:
        """End a hung transaction on the events partition with an abort of this
        session's producer: an empty batch written there in a transaction that is then
        aborted. Its ABORT marker, of the same producer id, ends the hung transaction
        too (the partition keeps one open transaction per producer id), so the hung
        events are never committed; this session publishes them, once."""
        self.log(
            f"a transaction on the events partition is still unresolved after "
            f"{HANGING_AFTER:.0f} s (stable up to offset {stable} of {written}): it hangs; "
            "ending it with an abort"
        )
        producer = self._session_producer
        try:
            producer.begin_transaction()
        except KafkaException:
            pass  # still in the transaction of an attempt that failed: abort that one
        producer.produce(
            self.settings.events_topic,
            encode(EventBatch(self.shard_id, [])),
            partition=self.shard_id,
        )
        if producer.flush(CALL_TIMEOUT):  # written, so that the marker goes there
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "the empty batch was not written")
            )
        producer.abort_transaction(CALL_TIMEOUT)

    def _catch_up_to_event(self, published: int) -> None:
        """Apply ``orders`` silently, one command at a time, until the shard's events
        reach ``published``. The committed input offset can lag the events committed
        with it: after a broker restart the group coordinator makes a transaction's
        offset visible a moment after the transaction completed, and the offset is read
        without waiting for that (_final_committed_offset). Publishing the commands
        behind it again would repeat their events; the events partition says how far
        the shard really got, and transactions hold whole commands, so the replay stops
        exactly there."""
        if self.encoder.shard_seq >= published:
            return
        self.log(
            f"the committed input offset {self._position} is behind the published events "
            f"({self.encoder.shard_seq} of {published}): replaying up to the last one"
        )
        while self.encoder.shard_seq < published:
            if self._stop.is_set():
                raise _Stopped
            for message in self._next_messages():
                if self.encoder.shard_seq >= published:
                    break  # the rest is live input: the seek below goes back to it
                error, offset = message.error(), message.offset()
                assert offset is not None  # a message or an end of partition says where
                if error:
                    if error.code() == KafkaError._PARTITION_EOF and offset <= self._position:
                        raise DaemonFailed(
                            f"the events partition reaches event {published}, but the input "
                            f"ends at offset {offset} with event {self.encoder.shard_seq}"
                        )
                    if error.code() != KafkaError._PARTITION_EOF and not transient(error):
                        raise KafkaException(error)
                    continue
                if offset < self._position:
                    continue
                records, _, _ = self.decoder.decode([(offset, message.value())])
                self._position = offset + 1
                if len(records):
                    self.shard.submit(records)
                    self._commands += len(records)
                    self.stats["replayed"] += 1
                    self._drain_silently(self._commands)
        if self.encoder.shard_seq != published:
            raise DaemonFailed(
                f"replaying the input gives event {self.encoder.shard_seq}, not the published "
                f"{published}: a transaction held part of a command"
            )
        self._input.seek(TopicPartition(self._orders.topic, self.shard_id, self._position))

    def _drain_silently(self, commands: int) -> None:
        while self._marked < commands:
            for mark in self.shard.poll_marks(timeout=1.0):
                self.encoder.count(self._read_events(int(mark["events"])))
                self._marked = int(mark["commands"])
            if self.shard.last_error is not None:
                raise DaemonFailed("the matcher failed") from self.shard.last_error

    # --- live --------------------------------------------------------------------------

    def _next_messages(self) -> list[Message[Any, Any]]:
        """What is there now, up to poll_batch; if nothing, wait up to 50 ms for the first
        message (a batch read with a timeout would wait for a full batch instead)."""
        messages = self._input.consume(self.options.poll_batch, timeout=0)
        if not messages:
            messages = self._input.consume(1, timeout=0.05)
        return messages

    def _consume_loop(self) -> None:
        """Consumer thread: orders -> journal + input ring, until stop. It alone uses
        the consumer meanwhile (a call from another thread would block while it is in
        consume()), so without transactions it also commits the offsets."""
        halt, shard = self._halt, self.shard
        try:
            while not (self._stop.is_set() or halt.is_set()):
                messages = self._next_messages()
                if self._offset_to_commit is not None:
                    self._input.commit(
                        offsets=[
                            TopicPartition(
                                self._orders.topic, self.shard_id, self._offset_to_commit
                            )
                        ],
                        asynchronous=True,
                    )
                    self._offset_to_commit = None
                batch = []
                for message in messages:
                    error = message.error()
                    if error:
                        if error.code() == KafkaError._PARTITION_EOF or transient(error):
                            continue  # librdkafka reconnects and fetches on
                        raise KafkaException(error)
                    offset = message.offset()
                    assert offset is not None  # every fetched message has one
                    batch.append((offset, message.value()))
                if not batch:
                    continue
                records, offsets, dead = self.decoder.decode(batch)
                self._journal.append(offsets, batch[-1][0] + 1, dead)
                if len(records):
                    self.shard.submit(records)
                self.stats["orders_in"] += len(records)
        except BaseException as e:  # noqa: BLE001 - the session's failure, for _serve
            if halt is self._halt:
                self._fail(e)
        finally:
            shard.stop()  # the matcher drains what it has, then closes

    def _publish_loop(self) -> None:
        """Publisher thread: events + dead letters + snapshots + offsets, transaction by
        transaction, until the shard has drained after stop. Halted, it commits nothing
        more and drains its shard, so that the matcher can finish. A Kafka call may hold
        it past the end of its session: then it touches nothing of a newer session (its
        producer is fenced by the newer one's)."""
        halt, shard = self._halt, self.shard
        try:
            last_snapshot_at, last_snapshot_time = self._marked, time.monotonic()
            snapshot_pending = False
            while True:
                if halt.is_set():
                    return
                marks = self._gather_marks()
                if marks is None:
                    break
                committed = self._commit(marks, halt)
                if committed and any(marks["kind"] == MarkKind.SNAPSHOT):
                    snapshot_pending = False
                    last_snapshot_at, last_snapshot_time = self._marked, time.monotonic()
                due = self._marked - last_snapshot_at >= self.options.snapshot_every or (
                    self._marked > last_snapshot_at
                    and time.monotonic() - last_snapshot_time >= self.options.snapshot_interval
                )
                if due and not snapshot_pending and self.shard.running:
                    self.shard.request_snapshot()
                    snapshot_pending = True
            self.shard.join()
            self._commit_final_snapshot(halt)
        except BaseException as e:  # noqa: BLE001 - the session's failure, for _serve
            if halt is self._halt:
                self._fail(e)
        finally:
            while halt.is_set() and (
                shard.running
                or len(shard.poll_events(timeout=0.1))
                or len(shard.poll_marks(timeout=0))
            ):
                pass

    def _gather_marks(self) -> np.ndarray | None:
        """The next marks to commit (empty when idle); None once the shard is drained."""
        marks = self.shard.poll_marks(self.options.max_marks, timeout=0.1)
        if not len(marks) and not self.shard.running:  # closed: what is left
            marks = self.shard.poll_marks(self.options.max_marks, timeout=0)
            if not len(marks):
                return None
        if self.options.linger > 0:
            deadline = time.monotonic() + self.options.linger
            parts = [marks]
            while time.monotonic() < deadline and sum(map(len, parts)) < self.options.max_marks:
                more = self.shard.poll_marks(
                    self.options.max_marks, timeout=max(0.0, deadline - time.monotonic())
                )
                if not len(more):
                    break
                parts.append(more)
            marks = np.concatenate(parts)
        return marks

    def _commit(self, marks: np.ndarray, halt: threading.Event) -> bool:
        """One transaction for these marks (or, idle, for dead letters alone)."""
        snapshots = []
        for mark in marks[marks["kind"] == MarkKind.SNAPSHOT]:
            # Its events come first, so that shard_seq is the snapshot's own.
            payloads_before = self.encoder.encode(self._read_events(int(mark["events"])))
            self._marked = int(mark["commands"])
            self._advance()
            snapshots.append(
                (
                    payloads_before,
                    ShardSnapshot(
                        self.shard_id,
                        self._done_offset,
                        self.encoder.shard_seq,
                        self.shard.take_snapshot(),
                    ),
                )
            )
        payloads = [p for before, _ in snapshots for p in before]
        if len(marks):
            payloads += self.encoder.encode(self._read_events(int(marks["events"][-1])))
            self._marked = int(marks["commands"][-1])
        self._advance()
        if (
            not payloads
            and not self._dead
            and not snapshots
            and (self._done_offset == self._committed)
        ):
            return False
        self._transact(payloads, [snapshot for _, snapshot in snapshots], halt)
        self.stats["events_out"] = self.encoder.shard_seq
        return True

    def _advance(self) -> None:
        """Take from the journal what the commands marked so far make done."""
        offset, dead = self._journal.advance(self._marked)
        self._dead += dead
        if offset is not None:
            self._done_offset = offset

    def _transact(
        self, payloads: list[bytes], snapshots: list[ShardSnapshot], halt: threading.Event
    ) -> None:
        """Produce everything and commit it with the input offset, atomically. An
        abortable error aborts and retries the whole transaction (up to five times);
        anything else ends the live session (the daemon recovers in a new one)."""
        settings, producer = self.settings, self._session_producer
        partition = self.shard_id
        started = time.perf_counter()
        for _ in range(5):
            if halt.is_set():
                raise _Halted
            try:
                if self.options.transactions:
                    producer.begin_transaction()
                for payload in payloads:
                    self._produce(producer, halt, settings.events_topic, payload, partition)
                for letter in self._dead:
                    self._produce(
                        producer,
                        halt,
                        settings.dead_letter_topic,
                        encode(letter),
                        0,
                        key=f"{letter.topic}/{letter.partition}/{letter.offset}",
                    )
                for snapshot in snapshots:
                    self._produce(
                        producer,
                        halt,
                        settings.snapshots_topic,
                        encode(snapshot),
                        partition,
                        key=str(self.shard_id),
                    )
                if self.options.transactions:
                    offsets = [TopicPartition(self._orders.topic, partition, self._done_offset)]
                    self._until_done(
                        partial(
                            producer.send_offsets_to_transaction, offsets, self._group_metadata
                        ),
                        halt,
                    )
                    self._until_done(producer.commit_transaction, halt)
                else:
                    if producer.flush(TRANSACTION_PATIENCE) and not halt.is_set():
                        raise KafkaException(
                            KafkaError(KafkaError._MSG_TIMED_OUT, "events not delivered in time")
                        )
                    self._offset_to_commit = self._done_offset  # by the consumer thread
                break
            except KafkaException as e:
                error = e.args[0]
                if halt.is_set():
                    raise _Halted from e
                if not (self.options.transactions and error.txn_requires_abort()):
                    raise
                self.log(f"transaction aborted ({error}); retrying it")
                self._until_done(producer.abort_transaction, halt)
        else:
            raise _SessionLost("a transaction failed five times in a row")
        if halt.is_set():
            raise _Halted
        self.stats["transactions"] += 1
        self._slowest_transaction = max(self._slowest_transaction, time.perf_counter() - started)
        self.stats["dead_letters"] += len(self._dead)
        self.stats["snapshots"] += len(snapshots)
        self._dead = []
        self._committed = self._done_offset

    @staticmethod
    def _produce(
        producer: Producer,
        halt: threading.Event,
        topic: str,
        value: bytes,
        partition: int,
        key: str | None = None,
    ) -> None:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:  # local queue full: let deliveries drain
                if halt.is_set():
                    raise _Halted from None
                producer.poll(0.01)

    def _commit_final_snapshot(self, halt: threading.Event) -> None:
        """After a graceful drain: every command is committed; record where that is."""
        self._advance()
        self._transact(
            [],
            [
                ShardSnapshot(
                    self.shard_id, self._done_offset, self.encoder.shard_seq, self.shard.snapshot()
                )
            ],
            halt,
        )

    # --- run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stop(); 0 after a graceful stop, 1 after a failure."""
        lease = None
        try:
            self._retrying(
                "creating the topics",
                lambda: ensure_topics(self.settings, timeout=CALL_TIMEOUT * 2),
            )
            lease = _Lease(self.settings, self.shard_id, self.options.lease_session)
            self._serve(lease)
        except _Stopped:
            self.log("stopped while not live (nothing to commit)")
            return 0
        except BaseException as e:  # noqa: BLE001 - any failure is exit code 1, logged
            self.log(f"failed: {e!r}")
            return 1
        finally:
            self._close(lease)
        self.log(f"stopped: {self._summary()}")
        return 0

    def _serve(self, lease: _Lease) -> None:
        """Live sessions, each from the committed state, until a graceful stop is done;
        raises what ends the daemon."""
        delay = BACKOFF_FIRST
        while True:
            self._start_shard()
            self._wait_for_lease(lease)
            self._activate()
            transactions = self.stats["transactions"]
            failure = self._go_live(lease)
            if failure is None:
                return
            if self._stop.is_set() or not isinstance(failure, (KafkaException, _SessionLost)):
                raise failure
            self.stats["recoveries"] += 1
            self.role = "recovering"
            if self.stats["transactions"] > transactions:
                delay = BACKOFF_FIRST  # that session got work done: not a fault loop
            self.log(
                f"live session ended ({_reason(failure)}): recovering from the "
                f"committed state in {max(delay, lease.session):.1f} s"
            )
            del failure  # its traceback holds the session's producer
            self._discard()
            # Meanwhile a zombie (paused past its lease) learns that its lease is gone.
            self._pause(lease, max(delay, lease.session))
            delay = min(delay * 2, BACKOFF_MAX)

    def _pause(self, lease: _Lease, seconds: float) -> None:
        """Wait, keeping the lease's group membership served."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise _Stopped
            lease.poll(0.1)

    def _wait_for_lease(self, lease: _Lease) -> None:
        """As a hot standby: replay committed input until the lease is ours. A daemon
        that was active gives up once another daemon has held the lease for four lease
        sessions (a member the coordinator remembers from before a restart of its own
        lapses within one)."""
        self.role = "standby"
        announced, rival, rival_since, next_check = False, None, 0.0, 0.0
        while True:
            if self._stop.is_set():
                raise _Stopped
            lease.poll(0.2)
            if lease.held:
                return
            if not announced:
                self.log("standby: waiting for the lease, replaying committed input")
                announced = True
            if self._was_active and time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                holder = lease.holder()
                if holder is None or holder != rival:
                    rival, rival_since = holder, time.monotonic()
                elif time.monotonic() - rival_since > 4 * lease.session:
                    raise DaemonFailed(f"lost the lease to another daemon ({holder})")
            try:
                committed = self._committed_offset(timeout=0.5)
            except KafkaException as e:
                if not transient(e):
                    raise
            else:
                self._catch_up(committed)

    def _activate(self) -> None:
        """With the lease: fence the predecessor, replay up to the now final committed
        offset."""
        producer = self._producer_client = self._producer()
        self._unresolved_since = None
        if self.options.transactions:
            self._retrying(
                "initialising transactions", lambda: producer.init_transactions(CALL_TIMEOUT)
            )
        committed = (
            self._final_committed_offset if self.options.transactions else (self._committed_offset)
        )
        self._catch_up(self._retrying("reading the committed input offset", committed))
        published = self._retrying("reading the last published event", self._last_published_event)
        self._catch_up_to_event(published)

    def _go_live(self, lease: _Lease) -> BaseException | None:
        """Consume, match and publish until a graceful stop is done (None) or the
        session fails: its failure (the threads are left to _discard)."""
        self.role = "active"
        self._was_active = True
        self._failure = None
        self._halt = threading.Event()
        self._journal = InputJournal(self._commands)
        self._done_offset = self._committed = self._position
        self._dead = []
        self._offset_to_commit = None
        # Taken now: the call blocks while another thread is inside consume(). With
        # assign() (no group membership) the metadata never changes.
        self._group_metadata = self._input.consumer_group_metadata()
        self.log(f"active from input offset {self._position}, event {self.encoder.shard_seq}")
        self._threads = [
            threading.Thread(target=self._publish_loop, name="engine-publisher", daemon=True),
            threading.Thread(target=self._consume_loop, name="engine-consumer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        next_report, stop_deadline = time.monotonic() + 1.0, None
        while self._failure is None and any(t.is_alive() for t in self._threads):
            lease.poll(0.1)
            if not lease.held:
                self._fail(_SessionLost("the lease lapsed"))
            if self.shard.last_error is not None:
                self._fail(DaemonFailed(f"the matcher failed: {self.shard.last_error!r}"))
            if self._stop.is_set() and stop_deadline is None:
                stop_deadline = time.monotonic() + STOP_TIMEOUT
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self._fail(
                    DaemonFailed(
                        f"stopping: the final commit did not complete within {STOP_TIMEOUT:.0f} s"
                        f" (Kafka away?); a restart recovers from the last committed state"
                    )
                )
            if time.monotonic() >= next_report:
                self.log(self._summary())
                next_report += 1.0
        return self._failure

    def _discard(self) -> None:
        """Drop the failed live session (nothing more of it is committed) so that a new
        one can start from the committed state. A publisher stuck in a Kafka call is
        left behind (it ends when the call returns); a consumer thread that will not
        end is a DaemonFailed."""
        self._halt.set()
        self.shard.stop()  # a consumer thread waiting for ring room wakes up
        publisher, consumer = self._threads
        _join(consumer, REQUEST_TIMEOUT + CALL_TIMEOUT)
        try:
            _join(publisher, REQUEST_TIMEOUT + CALL_TIMEOUT)
        except DaemonFailed as e:
            self.log(f"left behind: {e}")
        self._input.close()
        # Kept, never destroyed: librdkafka aborts the process when a producer with a
        # transaction call in flight is destroyed (rd_kafka_enq_once_del_source_return
        # assertion, seen after a broker restart). It is fenced by the next session.
        self._retired.append(self._session_producer)
        self._consumer = self._producer_client = self._failure = None

    def _close(self, lease: _Lease | None) -> None:
        """At the end: give the lease up (a standby takes over at once) and close the
        input consumer, unless a thread of a failed session still uses it."""
        self._halt.set()
        if lease is not None:
            lease.close()
        if self._threads:
            self._threads[1].join(CALL_TIMEOUT)  # the consumer thread
        if self._consumer is not None and not (self._threads and self._threads[1].is_alive()):
            self._consumer.close()

    def _summary(self) -> str:
        """Counters so far, and the slowest transaction since the last summary."""
        s = self.stats
        slowest, self._slowest_transaction = self._slowest_transaction, 0.0
        return (
            f"{self.role}: {s['orders_in']:,} orders in, {s['events_out']:,} events out, "
            f"{s['transactions']:,} transactions (slowest {slowest * 1000:.1f} ms), "
            f"{s['dead_letters']} dead letters, {s['snapshots']} snapshots, "
            f"{s['replayed']:,} replayed, {s['recoveries']} recoveries"
        )


def _join(thread: threading.Thread, timeout: float) -> None:
    """Wait for ``thread`` to end; DaemonFailed, saying where it is stuck, if it does not."""
    thread.join(timeout)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
        where = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
        raise DaemonFailed(
            f"the {thread.name} thread did not stop in {timeout:.0f} s; it is at:\n{where}"
        )


def _reason(error: BaseException) -> str:
    """An error in a log line: the KafkaError's text, else repr()."""
    if isinstance(error, KafkaException) and isinstance(error.args[0], KafkaError):
        return str(error.args[0])
    return repr(error)
