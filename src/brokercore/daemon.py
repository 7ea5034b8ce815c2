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
A fatal Kafka error, a lost lease or a failed thread ends the daemon with exit code 1;
a restart recovers from the snapshot and the committed offsets, never re-emitting or
losing an event.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from brokercore.codec import CommandDecoder, EventEncoder, SymbolTable
from brokercore.config import EngineOptions, KafkaSettings
from brokercore.journal import InputJournal
from brokercore.messages import ShardSnapshot, encode
from brokercore.records import EVENT_DTYPE, MarkKind
from brokercore.shard import Instrument, Shard, read_snapshot
from brokercore.topics import SNAPSHOT_MAX_BYTES, ensure_topics, partition_of

__all__ = ["EngineDaemon", "EngineOptions"]

_NO_OFFSET = -1001          # librdkafka's OFFSET_INVALID: nothing committed yet


class DaemonFailed(RuntimeError):
    pass


class _Lease:
    """Membership of shard K's lease group: the member assigned the one partition of
    the leases topic is the active daemon. Liveness only; fencing gives safety."""

    def __init__(self, settings: KafkaSettings, shard: int, session: float):
        self.held = False
        self.lost = False
        self._consumer = Consumer({
            "bootstrap.servers": settings.bootstrap,
            "group.id": settings.lease_group(shard),
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": int(session * 1000),
            "heartbeat.interval.ms": max(100, int(session * 1000) // 5),
            "enable.auto.commit": False,
        })
        self._consumer.subscribe([settings.leases_topic], on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._revoked)

    def _assigned(self, consumer, partitions):
        if partitions:
            self.held = True

    def _revoked(self, consumer, partitions):
        if partitions and self.held:
            self.held = False
            self.lost = True

    def poll(self, timeout: float) -> None:
        self._consumer.poll(timeout)        # the group callbacks run in here

    def close(self) -> None:
        """Give the lease up (a standby takes over at once); not a loss."""
        self.held = False
        self._consumer.close()


class EngineDaemon:
    """One shard's daemon; ``run()`` blocks until ``stop()`` (or a failure)."""

    def __init__(self, settings: KafkaSettings, shard: int,
                 instruments: Sequence[Instrument], options: EngineOptions = EngineOptions(),
                 log: Callable[[str], None] | None = None):
        if not 0 <= shard < settings.shards:
            raise ValueError(f"shard {shard} is not one of the {settings.shards} shards")
        self.settings = settings
        self.shard_id = shard
        self.options = options
        self.instruments = [i for i in instruments
                            if partition_of(i.symbol, settings.shards) == shard]
        self.symbols = SymbolTable({i.symbol: i.symbol_id for i in self.instruments})
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._orders = TopicPartition(settings.orders_topic, shard)
        self.stats = {"orders_in": 0, "events_out": 0, "transactions": 0,
                      "dead_letters": 0, "snapshots": 0, "replayed": 0}
        self.role = "starting"
        self._slowest_transaction = 0.0

    def stop(self) -> None:
        """Graceful stop (safe from a signal handler): no new input, commit, snapshot."""
        self._stop.set()

    def log(self, line: str) -> None:
        self._log(f"engine shard {self.shard_id}: {line}")

    # --- Kafka clients ---------------------------------------------------------------

    def _input_consumer(self) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.settings.bootstrap,
            "group.id": self.settings.engine_group(self.shard_id),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
            # librdkafka stops fetching for fetch.queue.backoff.ms (default 1 s) once
            # its local queue is full; the consumer thread drains it much faster.
            "fetch.queue.backoff.ms": 5,
        })

    def _committed_offset(self, timeout: float = 30.0) -> int | None:
        """The input offset the shard's last committed transaction reached (0 if none);
        None if Kafka cannot say within ``timeout``: while the active daemon's last
        transaction is open (or a dead one's, until it is fenced or times out) the
        committed offset is not stable yet, and the broker holds the answer back."""
        try:
            offset = self._consumer.committed([self._orders], timeout=timeout)[0].offset
        except KafkaException as e:
            if e.args[0].code() == KafkaError._TIMED_OUT:
                return None
            raise
        return 0 if offset == _NO_OFFSET else offset

    def _producer(self) -> Producer:
        config = {
            "bootstrap.servers": self.settings.bootstrap,
            "linger.ms": 1,
            "message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1 << 21,
        }
        if self.options.transactions:
            config.update({"transactional.id": self.settings.transactional_id(self.shard_id),
                           # A dead daemon's open transaction holds back every
                           # read_committed consumer until a successor fences it or
                           # this times out.
                           "transaction.timeout.ms": 10_000,
                           # The first request of a transaction right after a commit is
                           # often told CONCURRENT_TRANSACTIONS; the default 100 ms back-off
                           # before its retry would be most of a transaction's latency.
                           "retry.backoff.ms": 2,
                           "retry.backoff.max.ms": 20})
        else:
            config["enable.idempotence"] = True
        return Producer(config)

    def _newest_snapshot(self) -> ShardSnapshot | None:
        consumer = Consumer({
            "bootstrap.servers": self.settings.bootstrap,
            "group.id": f"{self.settings.engine_group(self.shard_id)}-snapshot-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": SNAPSHOT_MAX_BYTES,
            "max.partition.fetch.bytes": SNAPSHOT_MAX_BYTES,
            "receive.message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
        })
        consumer.assign([TopicPartition(self.settings.snapshots_topic, self.shard_id,
                                        OFFSET_BEGINNING)])
        newest, decoder = None, msgspec.msgpack.Decoder(ShardSnapshot)
        try:
            while True:
                message = consumer.poll(10)
                if message is None:
                    raise DaemonFailed("no answer from Kafka while reading snapshots")
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return newest
                    raise KafkaException(message.error())
                try:
                    snapshot = decoder.decode(message.value())
                except msgspec.DecodeError as e:
                    self.log(f"skipping an undecodable snapshot at offset "
                             f"{message.offset()}: {e}")
                    continue
                if snapshot.shard == self.shard_id:
                    newest = snapshot
        finally:
            consumer.close()

    # --- set-up and silent replay ------------------------------------------------------

    def _start_shard(self) -> None:
        snapshot = self._newest_snapshot()
        books, applied, self._position, events = {}, 0, 0, 0
        if snapshot is not None:
            books, applied = read_snapshot(snapshot.books)
            self._position, events = snapshot.next_offset, snapshot.events
        for instrument in self.instruments:     # instruments added since the snapshot
            books.setdefault(instrument.symbol_id, instrument.new_book())
        self.log(f"{len(books)} books; " + (
            f"from the snapshot at input offset {self._position}, event {events}"
            if snapshot else "no snapshot: from the start of the input"))
        self.shard = Shard(books, core=self.options.core, marks=True,
                           ring_capacity=self.options.ring_capacity,
                           commands_applied=applied)
        self.shard.start()
        self.encoder = EventEncoder(self.symbols, self.shard_id, shard_seq=events)
        self.decoder = CommandDecoder(self.symbols, self.settings.orders_topic, self.shard_id)
        self._consumer = self._input_consumer()
        self._consumer.assign([TopicPartition(self._orders.topic, self.shard_id,
                                              self._position)])
        self._commands = 0          # submitted by this run (the matcher counts the same)
        self._marked = 0            # commands covered by the marks read
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
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(message.error())
                    if message.offset() >= target:
                        self._position = target     # only transaction markers were left
                    continue
                if message.offset() < target:
                    batch.append((message.offset(), message.value()))
                else:
                    overshot = True
            if batch:
                records, _, _ = self.decoder.decode(batch)
                self.shard.submit(records)
                self._commands += len(records)
                self._position = batch[-1][0] + 1
                self.stats["replayed"] += len(batch)
            self._drain_silently(self._commands)
        if overshot:        # read past the target: live consumption starts at it
            self._consumer.seek(TopicPartition(self._orders.topic, self.shard_id,
                                               self._position))

    def _drain_silently(self, commands: int) -> None:
        while self._marked < commands:
            for mark in self.shard.poll_marks(timeout=1.0):
                self.encoder.count(self._read_events(int(mark["events"])))
                self._marked = int(mark["commands"])
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.shard.last_error is not None:
            raise DaemonFailed("the matcher failed") from self.shard.last_error
        if self._failure is not None:
            raise DaemonFailed("a daemon thread failed") from self._failure

    # --- live --------------------------------------------------------------------------

    def _next_messages(self) -> list:
        """What is there now, up to poll_batch; if nothing, wait up to 50 ms for the first
        message (a batch read with a timeout would wait for a full batch instead)."""
        messages = self._consumer.consume(self.options.poll_batch, timeout=0)
        if not messages:
            messages = self._consumer.consume(1, timeout=0.05)
        return messages

    def _consume_loop(self) -> None:
        """Consumer thread: orders -> journal + input ring, until stop. It alone uses
        the consumer meanwhile (a call from another thread would block while it is in
        consume()), so without transactions it also commits the offsets."""
        try:
            while not self._stop.is_set():
                messages = self._next_messages()
                if self._offset_to_commit is not None:
                    self._consumer.commit(offsets=[TopicPartition(
                        self._orders.topic, self.shard_id, self._offset_to_commit)],
                        asynchronous=True)
                    self._offset_to_commit = None
                batch = []
                for message in messages:
                    if message.error():
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            continue
                        raise KafkaException(message.error())
                    batch.append((message.offset(), message.value()))
                if not batch:
                    continue
                records, offsets, dead = self.decoder.decode(batch)
                self._journal.append(offsets, batch[-1][0] + 1, dead)
                if len(records):
                    self.shard.submit(records)
                self.stats["orders_in"] += len(records)
        except BaseException as e:
            self._failure = e
            self._stop.set()
        finally:
            self.shard.stop()           # the matcher drains what it has, then closes

    def _publish_loop(self) -> None:
        """Publisher thread: events + dead letters + snapshots + offsets, transaction by
        transaction, until the shard has drained after stop."""
        try:
            last_snapshot_at, last_snapshot_time = self._marked, time.monotonic()
            snapshot_pending = False
            while True:
                marks = self._gather_marks()
                if marks is None:
                    break
                committed = self._commit(marks)
                if committed and any(marks["kind"] == MarkKind.SNAPSHOT):
                    snapshot_pending = False
                    last_snapshot_at, last_snapshot_time = self._marked, time.monotonic()
                due = (self._marked - last_snapshot_at >= self.options.snapshot_every
                       or (self._marked > last_snapshot_at and time.monotonic()
                           - last_snapshot_time >= self.options.snapshot_interval))
                if due and not snapshot_pending and self.shard.running:
                    self.shard.request_snapshot()
                    snapshot_pending = True
            self.shard.join()
            self._commit_final_snapshot()
        except BaseException as e:
            self._failure = e
            self._stop.set()

    def _gather_marks(self) -> np.ndarray | None:
        """The next marks to commit (empty when idle); None once the shard is drained."""
        marks = self.shard.poll_marks(self.options.max_marks, timeout=0.1)
        if not len(marks) and not self.shard.running:       # closed: what is left
            marks = self.shard.poll_marks(self.options.max_marks, timeout=0)
            if not len(marks):
                return None
        if self.options.linger > 0:
            deadline = time.monotonic() + self.options.linger
            parts = [marks]
            while (time.monotonic() < deadline
                   and sum(map(len, parts)) < self.options.max_marks):
                more = self.shard.poll_marks(self.options.max_marks,
                                             timeout=max(0.0, deadline - time.monotonic()))
                if not len(more):
                    break
                parts.append(more)
            marks = np.concatenate(parts)
        return marks

    def _commit(self, marks: np.ndarray) -> bool:
        """One transaction for these marks (or, idle, for dead letters alone)."""
        snapshots = []
        for mark in marks[marks["kind"] == MarkKind.SNAPSHOT]:
            # Its events come first, so that shard_seq is the snapshot's own.
            payloads_before = self.encoder.encode(self._read_events(int(mark["events"])))
            self._marked = int(mark["commands"])
            self._advance()
            snapshots.append((payloads_before, ShardSnapshot(
                self.shard_id, self._done_offset, self.encoder.shard_seq,
                self.shard.take_snapshot())))
        payloads = [p for before, _ in snapshots for p in before]
        if len(marks):
            payloads += self.encoder.encode(self._read_events(int(marks["events"][-1])))
            self._marked = int(marks["commands"][-1])
        self._advance()
        if not payloads and not self._dead and not snapshots and (
                self._done_offset == self._committed):
            return False
        self._transact(payloads, [snapshot for _, snapshot in snapshots])
        self.stats["events_out"] = self.encoder.shard_seq
        return True

    def _advance(self) -> None:
        """Take from the journal what the commands marked so far make done."""
        offset, dead = self._journal.advance(self._marked)
        self._dead += dead
        if offset is not None:
            self._done_offset = offset

    def _transact(self, payloads: list[bytes], snapshots: list[ShardSnapshot]) -> None:
        """Produce everything and commit it with the input offset, atomically; an
        abortable error retries the whole transaction, anything else is fatal."""
        settings, producer = self.settings, self._producer_client
        partition = self.shard_id
        started = time.perf_counter()
        for attempt in range(5):
            try:
                if self.options.transactions:
                    producer.begin_transaction()
                for payload in payloads:
                    self._produce(settings.events_topic, payload, partition)
                for letter in self._dead:
                    self._produce(settings.dead_letter_topic, encode(letter), 0,
                                  key=f"{letter.topic}/{letter.partition}/{letter.offset}")
                for snapshot in snapshots:
                    self._produce(settings.snapshots_topic, encode(snapshot), partition,
                                  key=str(self.shard_id))
                if self.options.transactions:
                    producer.send_offsets_to_transaction(
                        [TopicPartition(self._orders.topic, partition, self._done_offset)],
                        self._group_metadata, 30)
                    self._commit_transaction(producer)
                else:
                    producer.flush()
                    self._offset_to_commit = self._done_offset    # by the consumer thread
                break
            except KafkaException as e:
                error = e.args[0]
                if not (self.options.transactions and error.txn_requires_abort()):
                    raise
                self.log(f"transaction aborted ({error}); retrying it")
                producer.abort_transaction(30)
        else:
            raise DaemonFailed("a transaction failed five times in a row")
        self.stats["transactions"] += 1
        self._slowest_transaction = max(self._slowest_transaction,
                                        time.perf_counter() - started)
        self.stats["dead_letters"] += len(self._dead)
        self.stats["snapshots"] += len(snapshots)
        self._dead = []
        self._committed = self._done_offset

    @staticmethod
    def _commit_transaction(producer: Producer) -> None:
        while True:
            try:
                producer.commit_transaction(30)
                return
            except KafkaException as e:
                if not e.args[0].retriable():
                    raise

    def _produce(self, topic: str, value: bytes, partition: int, key: str | None = None):
        while True:
            try:
                self._producer_client.produce(topic, value, key, partition=partition)
                return
            except BufferError:             # local queue full: let deliveries drain
                self._producer_client.poll(0.01)

    def _commit_final_snapshot(self) -> None:
        """After a graceful drain: every command is committed; record where that is."""
        self._advance()
        self._transact([], [ShardSnapshot(self.shard_id, self._done_offset,
                                          self.encoder.shard_seq, self.shard.snapshot())])

    # --- run ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stop(); 0 after a graceful stop, 1 after a failure."""
        ensure_topics(self.settings)
        self._start_shard()
        lease = _Lease(self.settings, self.shard_id, self.options.lease_session)
        try:
            self._wait_for_lease(lease)
            if self._stop.is_set():
                self.shard.stop()
                return 0
            self._producer_client = self._producer()
            if self.options.transactions:
                self._producer_client.init_transactions(60)    # fences the predecessor
            committed = self._committed_offset()
            if committed is None:
                raise DaemonFailed("Kafka did not give the committed input offset")
            self._catch_up(committed)
            self._go_live(lease)
        except BaseException as e:
            self._stop.set()
            self.log(f"failed: {e!r}" + (f" (after {self._failure!r})" if self._failure
                                         else ""))
            return 1
        finally:
            lease.close()
            self._consumer.close()
        if self._failure is not None or lease.lost:
            self.log("lost the lease" if lease.lost else f"failed: {self._failure!r}")
            return 1
        self.log(f"stopped: {self._summary()}")
        return 0

    def _wait_for_lease(self, lease: _Lease) -> None:
        self.role = "standby"
        announced = False
        while not self._stop.is_set():
            lease.poll(0.2)
            if lease.held:
                return
            if not announced:
                self.log("standby: waiting for the lease, replaying committed input")
                announced = True
            committed = self._committed_offset(timeout=0.5)
            if committed is not None:
                self._catch_up(committed)

    def _go_live(self, lease: _Lease) -> None:
        self.role = "active"
        self._journal = InputJournal(self._commands)
        self._done_offset = self._committed = self._position
        self._dead = []
        self._offset_to_commit: int | None = None
        # Taken now: the call blocks while another thread is inside consume(). With
        # assign() (no group membership) the metadata never changes.
        self._group_metadata = self._consumer.consumer_group_metadata()
        self.log(f"active from input offset {self._position}, event {self.encoder.shard_seq}")
        threads = [threading.Thread(target=self._consume_loop, name="engine-consumer",
                                    daemon=True),
                   threading.Thread(target=self._publish_loop, name="engine-publisher",
                                    daemon=True)]
        for thread in threads:
            thread.start()
        next_report = time.monotonic() + 1.0
        while any(t.is_alive() for t in threads):
            lease.poll(0.1)
            if lease.lost:
                self._stop.set()        # its transactions are fenced anyway
            if self.shard.last_error is not None and self._failure is None:
                self._failure = self.shard.last_error
                self._stop.set()
            if time.monotonic() >= next_report:
                self.log(self._summary())
                next_report += 1.0
        for thread in threads:
            thread.join()

    def _summary(self) -> str:
        """Counters so far, and the slowest transaction since the last summary."""
        s = self.stats
        slowest, self._slowest_transaction = self._slowest_transaction, 0.0
        return (f"{self.role}: {s['orders_in']:,} orders in, {s['events_out']:,} events out, "
                f"{s['transactions']:,} transactions (slowest {slowest * 1000:.1f} ms), "
                f"{s['dead_letters']} dead letters, {s['snapshots']} snapshots, "
                f"{s['replayed']:,} replayed")
