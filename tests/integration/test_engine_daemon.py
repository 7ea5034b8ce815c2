"""Engine daemons on the real development Kafka: what they publish equals the engine run
directly, duplicates are suppressed, bad input is dead-lettered or rejected, and a
graceful stop plus restart continues from the snapshot exactly."""

from __future__ import annotations

from functools import partial

import pytest
from confluent_kafka import KafkaException, Producer

from brokercore.engine.records import EventType, Reason, Side
from brokercore.kafka.daemon import EngineDaemon, transient
from brokercore.kafka.messages import CancelOrder, Event, EventBatch, NewOrder, encode
from kafka_support import (
    Daemon,
    OrderProducer,
    assert_no_gap_no_duplicate,
    books_of,
    by_symbol,
    direct_run,
    flow,
    instruments,
    new_settings,
    newest_snapshots,
    read_dead_letters,
    read_events,
    same_book,
)


@pytest.fixture
def daemons(tmp_path):
    started = []

    def start(settings, shard, instruments_file, *options):
        daemon = Daemon(
            settings,
            shard,
            instruments_file,
            tmp_path / f"shard{shard}-{len(started)}.log",
            *options,
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def test_events_equal_the_engine_run_directly_per_symbol(daemons, instruments_file):
    settings = new_settings(shards=2)
    commands = flow(6000)
    running = [daemons(settings, shard, instruments_file) for shard in range(2)]
    for daemon in running:
        daemon.wait_for("active from")
    # Every order in `again` is published a second time: one set of events per order.
    again = [c for c in commands[:3000] if isinstance(c, NewOrder)][::5]
    published = commands[:3000] + again + commands[3000:]
    OrderProducer(settings).send(published)
    expected, books = direct_run(settings, instruments(), published)
    total = sum(map(len, expected.values()))
    assert total == sum(map(len, direct_run(settings, instruments(), commands)[0].values()))

    events = read_events(settings, expected=total)

    assert by_symbol(events) == expected
    assert_no_gap_no_duplicate(events)
    assert sum(map(len, events.values())) == total
    assert set(events) == {0, 1}, "both shards published"
    for daemon in running:
        assert daemon.terminate() == 0, daemon.text()[-2000:]
    snapshots = newest_snapshots(settings)
    for shard in range(2):
        restored = books_of(snapshots[shard])
        assert restored and all(same_book(book, books[symbol]) for symbol, book in restored.items())
        assert snapshots[shard].events == len(events[shard])


def test_bad_messages_are_dead_lettered_or_rejected_and_the_shard_goes_on(
    daemons, instruments_file
):
    settings = new_settings(shards=1)
    daemon = daemons(settings, 0, instruments_file)
    daemon.wait_for("active from")
    producer = OrderProducer(settings)
    bad = [
        b"\xc1 not msgpack at all",
        encode({"type": "new", "order_id": 1}),  # fields missing
        encode({"type": "launch", "symbol": "TCS"}),  # unknown type
        encode({"type": "cancel", "order_id": 2**63, "account": 1, "symbol": "TCS"}),
        encode(["new", 1, 2, 3]),  # wrong shape
        b"",
    ]
    producer.send([NewOrder(1, 7, "TCS", Side.SELL, 10, price=10_000, ts=1)])
    for payload in bad:
        producer.send_raw(payload, 0)
    producer.send(
        [
            NewOrder(2, 8, "NOSUCH", Side.BUY, 1, price=10_000, ts=2),  # unknown symbol
            NewOrder(3, 8, "TCS", Side.BUY, 4, price=10_000, ts=3),
            CancelOrder(1, 7, "TCS", ts=4),
        ]
    )

    events = read_events(settings, expected=5)[0]
    letters = read_dead_letters(settings, expected=len(bad))

    assert [(e.symbol, e.type, e.reason, e.order_id) for e in events] == [
        ("TCS", EventType.ACCEPTED, Reason.NONE, 1),
        ("NOSUCH", EventType.REJECTED, Reason.UNKNOWN_SYMBOL, 2),
        ("TCS", EventType.ACCEPTED, Reason.NONE, 3),
        ("TCS", EventType.TRADE, Reason.NONE, 3),
        ("TCS", EventType.CANCELLED, Reason.USER_CANCEL, 1),
    ]
    assert [letter.payload for letter in letters] == bad
    assert [letter.offset for letter in letters] == list(range(1, 1 + len(bad)))
    assert all(letter.reason and letter.topic == settings.orders_topic for letter in letters)
    assert daemon.process.poll() is None, "the daemon kept running"


def test_graceful_stop_then_restart_continues_from_the_snapshot(daemons, instruments_file):
    settings = new_settings(shards=1)
    commands = flow(4000, seed=11)
    producer = OrderProducer(settings)
    first = daemons(settings, 0, instruments_file, "--snapshot-every", "700")
    first.wait_for("active from")
    producer.send(commands[:2500])
    expected_first, _ = direct_run(settings, instruments(), commands[:2500])
    read_events(settings, expected=sum(map(len, expected_first.values())))
    assert first.terminate() == 0
    producer.send(commands[2500:])  # while no daemon runs

    second = daemons(settings, 0, instruments_file, "--snapshot-every", "700")
    second.wait_for("active from")
    expected, books = direct_run(settings, instruments(), commands)
    events = read_events(settings, expected=sum(map(len, expected.values())))

    assert "from the snapshot at input offset 2500" in second.text()
    assert by_symbol(events) == expected
    assert_no_gap_no_duplicate(events)
    assert second.terminate() == 0
    final = books_of(newest_snapshots(settings)[0])
    assert all(same_book(book, books[symbol]) for symbol, book in final.items())


def test_a_snapshot_is_written_every_n_commands(daemons, instruments_file):
    settings = new_settings(shards=1)
    daemon = daemons(settings, 0, instruments_file, "--snapshot-every", "500")
    daemon.wait_for("active from")
    OrderProducer(settings).send(flow(3000, seed=3))
    daemon.wait_for("3,000 orders in")
    snapshots = newest_snapshots(settings)
    assert 0 in snapshots
    assert snapshots[0].next_offset >= 500
    assert daemon.terminate() == 0


def _events(settings, transactional_id: str, seqs: range, commit: bool = True) -> Producer:
    """A transaction on shard 0's events partition holding one batch of ACCEPTED events
    numbered ``seqs``, committed or left open (the producer is returned to end it)."""
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap, "transactional.id": transactional_id}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    events = [
        Event(
            seq,
            "RELIANCE",
            EventType.ACCEPTED,
            Reason.NONE,
            0,
            Side.BUY,
            seq,
            seq,
            seq,
            1,
            100,
            1,
            1,
            0,
            0,
            0,
        )
        for seq in seqs
    ]
    producer.produce(settings.events_topic, encode(EventBatch(0, events)), partition=0)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    return producer


def test_the_last_published_event_waits_until_no_transaction_is_unresolved():
    """A daemon going live reads the last committed event of its partition to know what
    not to publish again. After a kill -9 of the broker, Kafka 4.4 gave the new producer
    its epoch before writing the markers of the transaction its predecessor was
    committing (docs/kafka.md): read then, that transaction's events were missed and
    published twice. While the partition's last stable offset is below its high
    watermark the answer is refused as transient (and retried), never given early."""
    settings = new_settings(shards=1)
    daemon = EngineDaemon(settings, 0, instruments(), log=lambda line: None)
    last_event = partial(daemon._retrying, "reading", daemon._last_published_event)
    assert last_event() == 0  # (retried while the new topic gets its leader)
    _events(settings, f"{settings.topic_prefix}first", range(1, 3))
    assert last_event() == 2

    committing = _events(settings, f"{settings.topic_prefix}second", range(3, 5), commit=False)
    with pytest.raises(KafkaException) as refused:
        daemon._last_published_event()
    assert transient(refused.value) and "is not resolved yet" in str(refused.value)

    committing.commit_transaction(30)
    assert last_event() == 4
