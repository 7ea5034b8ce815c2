"""Helpers for the tests that run engine daemons against the real development Kafka.

Every test gets its own topic prefix, so topics, groups and transactional ids never
collide between tests or runs. Daemons run as real subprocesses (`brokercore engine`),
so that kill -9 means what it says.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
from confluent_kafka.admin import AdminClient

from brokercore.config import KafkaSettings
from brokercore.engine.instruments import Instrument
from brokercore.kafka.codec import CommandDecoder, EventEncoder, SymbolTable, commands_from_records
from brokercore.kafka.messages import DeadLetter, Event, EventBatch, ShardSnapshot, encode
from brokercore.kafka.topics import ensure_topics, partition_of
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from brokercore.runtime.shard import read_snapshot
from processes import LoggedProcess
from shared_servers import KAFKA_BOOTSTRAP

# Four symbols, two on each of two shards (CRC-32 partitioning).
SYMBOLS = {"RELIANCE": 1, "TCS": 2, "HDFCBANK": 3, "ITC": 4}


CREATED: list[KafkaSettings] = []
"""The deployments made since ``delete_created_topics`` last ran."""


def new_settings(shards: int, bootstrap: str = KAFKA_BOOTSTRAP) -> KafkaSettings:
    """A deployment of its own on the cluster: a fresh topic prefix, its topics created."""
    settings = KafkaSettings(bootstrap, f"t{uuid.uuid4().hex[:12]}-", shards)
    ensure_topics(settings)
    CREATED.append(settings)
    return settings


def delete_created_topics() -> None:
    """Delete the topics of the deployments made since the last call (their services may
    have made more under the same prefix). Left in place, they pile up: a broker that has
    served a few thousand tests holds tens of thousands of partitions and runs out of
    file descriptors."""
    while CREATED:
        settings = CREATED.pop()
        admin = AdminClient({"bootstrap.servers": settings.bootstrap})
        try:
            names = [
                name
                for name in admin.list_topics(timeout=3).topics
                if name.startswith(settings.topic_prefix)
            ]
            if names:
                for future in admin.delete_topics(names, operation_timeout=10).values():
                    future.result(timeout=15)
        except KafkaException:
            pass  # a broker the test stopped, or a topic already gone: nothing to free


def instruments(session_orders: int = 200_000) -> list[Instrument]:
    return [
        Instrument(name, i, MID - HALF_BAND, MID + HALF_BAND, session_orders=session_orders)
        for name, i in SYMBOLS.items()
    ]


def write_instruments(path: Path, items: Sequence[Instrument]) -> Path:
    path.write_text(
        "".join(
            f'[[instrument]]\nsymbol = "{i.symbol}"\nid = {i.symbol_id}\nlow = {i.low}\n'
            f"high = {i.high}\nsession_orders = {i.session_orders}\n\n"
            for i in items
        )
    )
    return path


def flow(n: int, seed: int = 7) -> list:
    """n wire commands (limits, markets, cancels) over SYMBOLS, deterministic."""
    names = {i: name for name, i in SYMBOLS.items()}
    records = np.concatenate(list(order_flow(list(names), n, seed)))
    records["ts"] = np.arange(1, n + 1)
    return commands_from_records(records, names)


class OrderProducer:
    """Publishes wire commands (or raw payloads) to `orders`, each on its symbol's shard."""

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self._producer = Producer(
            {"bootstrap.servers": settings.bootstrap, "enable.idempotence": True, "linger.ms": 2}
        )

    def send(self, commands: Iterable, flush: bool = True, timeout: float = 30) -> None:
        for command in commands:
            self.send_raw(
                encode(command), partition_of(command.symbol, self.settings.shards), flush=False
            )
        if flush:
            self.flush(timeout)

    def send_raw(self, payload: bytes, partition: int, flush: bool = True) -> None:
        while True:
            try:
                self._producer.produce(self.settings.orders_topic, payload, partition=partition)
                break
            except BufferError:
                self._producer.poll(0.05)
        if flush:
            self.flush()

    def flush(self, timeout: float = 30) -> None:
        if self._producer.flush(timeout):
            raise RuntimeError(f"orders were not delivered to Kafka in {timeout} s")


def _read_all(
    topic: str,
    partitions: int,
    decode,
    settings: KafkaSettings,
    until=lambda values: False,
    timeout: float = 60.0,
) -> list:
    """Every committed value of the topic, decoded, read until ``until(values)`` holds
    and every partition is at its end, or until ``timeout``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": uuid.uuid4().hex,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    values, at_end, deadline = [], set(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                if len(at_end) == partitions and until(values):
                    break
                continue
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(message.error())
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            values.append((message.partition(), decode(message.value())))
    finally:
        consumer.close()
    return values


_batch_decoder = msgspec.msgpack.Decoder(EventBatch)


def read_events(
    settings: KafkaSettings, expected: int | None = None, timeout: float = 90.0
) -> dict[int, list[Event]]:
    """The committed events, per shard in stream order; waits for ``expected`` events."""
    batches = _read_all(
        settings.events_topic,
        settings.shards,
        _batch_decoder.decode,
        settings,
        until=lambda values: expected is None or sum(len(b.events) for _, b in values) >= expected,
        timeout=timeout,
    )
    per_shard = defaultdict(list)
    for partition, batch in batches:
        assert batch.shard == partition, "an event batch on another shard's partition"
        per_shard[partition] += batch.events
    return dict(per_shard)


def read_dead_letters(settings: KafkaSettings, expected: int = 0) -> list[DeadLetter]:
    decoder = msgspec.msgpack.Decoder(DeadLetter)
    return [
        letter
        for _, letter in _read_all(
            settings.dead_letter_topic,
            1,
            decoder.decode,
            settings,
            until=lambda values: len(values) >= expected,
        )
    ]


def newest_snapshots(settings: KafkaSettings) -> dict[int, ShardSnapshot]:
    decoder = msgspec.msgpack.Decoder(ShardSnapshot)
    newest = {}
    for _, snapshot in _read_all(
        settings.snapshots_topic,
        settings.shards,
        decoder.decode,
        settings,
        until=lambda values: True,
    ):
        newest[snapshot.shard] = snapshot
    return newest


# --- what the engine produces directly ---------------------------------------------------


def direct_run(settings: KafkaSettings, items: Sequence[Instrument], commands: Sequence):
    """Per symbol, the published events (as wire tuples without shard_seq) of applying
    the commands to fresh books directly, and the final books."""
    books = {i.symbol_id: i.new_book() for i in items}
    names = {i.symbol_id: i.symbol for i in items}
    per_symbol = defaultdict(list)
    for shard in range(settings.shards):
        owned = {
            i.symbol: i.symbol_id for i in items if partition_of(i.symbol, settings.shards) == shard
        }
        table = SymbolTable(owned)
        mine = [
            (n, encode(c))
            for n, c in enumerate(commands)
            if partition_of(c.symbol, settings.shards) == shard
        ]
        records, _, dead = CommandDecoder(table, "direct", shard).decode(mine)
        assert not dead
        encoder = EventEncoder(table, shard)
        for symbol_id in set(records["symbol"].tolist()):
            events = books[symbol_id].process(records[records["symbol"] == symbol_id])
            kept = encoder._published(events)
            per_symbol[names[symbol_id]] += [tuple(row[1:]) for row in kept.tolist()]
    return dict(per_symbol), books


def by_symbol(events: dict[int, list[Event]]) -> dict[str, list[tuple]]:
    """Wire events grouped per symbol, as tuples comparable with direct_run()."""
    per_symbol = defaultdict(list)
    for stream in events.values():
        for e in stream:
            per_symbol[e.symbol].append(msgspec.structs.astuple(e)[2:])
    return dict(per_symbol)


def assert_no_gap_no_duplicate(events: dict[int, list[Event]]) -> None:
    for shard, stream in events.items():
        seqs = [e.shard_seq for e in stream]
        if seqs != list(range(1, len(seqs) + 1)):
            at = next(i for i, seq in enumerate(seqs) if seq != i + 1)
            repeats = len(seqs) - len(set(seqs))
            raise AssertionError(
                f"shard {shard}: shard_seq is not 1..{len(seqs)} without gap or repeat: "
                f"{repeats} repeated, the first wrong at position {at}: "
                f"{seqs[max(0, at - 3) : at + 4]} (the events around it: "
                f"{stream[max(0, at - 2) : at + 3]})"
            )


def books_of(snapshot: ShardSnapshot) -> dict:
    return read_snapshot(snapshot.books)[0]


def same_book(a, b) -> bool:
    return a.seq == b.seq and a.is_open == b.is_open and np.array_equal(a.orders(), b.orders())


# --- daemons as processes ------------------------------------------------------------------


class Daemon(LoggedProcess):
    """`brokercore engine` for one shard, as a subprocess logging to its own file."""

    def __init__(
        self, settings: KafkaSettings, shard: int, instruments_file: Path, log: Path, *options: str
    ):
        super().__init__(
            [
                "engine",
                "--shard",
                str(shard),
                "--shards",
                str(settings.shards),
                "--bootstrap",
                settings.bootstrap,
                "--topic-prefix",
                settings.topic_prefix,
                "--instruments",
                str(instruments_file),
                *options,
            ],
            log,
        )


def run_service_briefly(name: str, env: dict, log: Path) -> tuple[int, str]:
    """``brokercore service name`` with ``env``, until it logs that it is assigned ("from
    offsets") and 1.5 s more (time enough to re-apply anything), then SIGTERM: its exit
    code and output."""
    service = LoggedProcess(["service", name], log, env)
    try:
        service.wait_for("from offsets")
        time.sleep(1.5)
        code = service.terminate(30)
    finally:
        service.close()
    return code, service.text()


def run_until_stored(run, args: tuple, conn, consumer: str, topic: str, end: int) -> list[str]:
    """``run(*args, stop_event=, say=)`` (a Postgres-offset consumer) in a thread until it
    has stored ``end`` as its next offset of partition 0 of ``topic``, then stopped: what
    it said."""
    from brokercore.consumers.pg_consumer import stored_offsets

    stop, lines = threading.Event(), []
    runner = threading.Thread(
        target=run, args=args, kwargs=dict(stop_event=stop, say=lines.append), daemon=True
    )
    runner.start()
    deadline = time.monotonic() + 60
    while stored_offsets(conn, consumer, topic).get(0) != end:
        assert runner.is_alive() and time.monotonic() < deadline, lines
        time.sleep(0.05)
    stop.set()
    runner.join(30)
    assert not runner.is_alive()
    assert any("stopped" in line for line in lines), lines
    return lines


# --- load and whole-run checks --------------------------------------------------------------


class Load:
    """Publishes commands at a steady rate from a background thread, until the block
    ends (or the commands run out); ``sent`` is what it published. A chunk not delivered
    within ``patience`` seconds (Kafka away) is an error, raised at the end of the block."""

    def __init__(
        self, settings, commands, rate: float = 2_000, chunk: int = 100, patience: float = 30
    ):
        self._producer = OrderProducer(settings)
        self._commands, self._rate, self._chunk = commands, rate, chunk
        self._patience = patience
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        self._stop = threading.Event()
        self.sent: list = []

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(0, len(self._commands), self._chunk):
            delay = start + i / self._rate - time.monotonic()
            if self._stop.wait(max(delay, 0)):
                return
            self._producer.send(self._commands[i : i + self._chunk], timeout=self._patience)
            self.sent = self._commands[: i + self._chunk]

    def __enter__(self):
        self._running = self._thread.submit(self._run)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.shutdown()
        self._running.result()  # what went wrong in the thread, raised here

    @property
    def done(self) -> bool:
        return self._running.done()


def check_run(settings, commands, final_daemon):
    """The whole run's events (one shard) equal the engine run directly, without gap or
    duplicate; after a graceful stop of the daemon that ends it (once it is active), its
    final snapshot equals the direct run's books."""
    final_daemon.wait_for("active from")
    expected, books = direct_run(settings, instruments(), commands)
    events = read_events(settings, expected=sum(map(len, expected.values())), timeout=180)
    assert_no_gap_no_duplicate(events)
    assert by_symbol(events) == expected
    assert final_daemon.terminate() == 0, final_daemon.text()[-3000:]
    final = books_of(newest_snapshots(settings)[0])  # written by the graceful stop
    assert final.keys() == books.keys()  # one shard: every symbol
    assert all(same_book(book, books[symbol]) for symbol, book in final.items())
