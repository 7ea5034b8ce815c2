"""The shard runtime: a matcher thread between two rings must change nothing about what
the engine computes, lose nothing on a graceful stop, and restore + replay exactly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokercore import EVENT_DTYPE, EventType, OrderBook, Reason
from brokercore.engine.instruments import Instrument, load_instruments
from brokercore.engine.records import MarkKind
from brokercore.runtime._ringbuffer import WaitStrategy
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from brokercore.runtime.shard import Shard
from support import event_tuples, order_tuples

SYMBOLS = (1, 2, 5)
INSTRUMENTS = [Instrument(f"S{i}", i, MID - HALF_BAND, MID + HALF_BAND) for i in SYMBOLS]


def flow(n: int, seed: int = 3) -> np.ndarray:
    return np.concatenate(list(order_flow(SYMBOLS, n, seed, chunk=4_096)))


def direct_run(commands: np.ndarray) -> tuple[np.ndarray, dict[int, OrderBook]]:
    """What the engine gives for the commands, one book per symbol, no shard involved."""
    books = {i.symbol_id: i.new_book() for i in INSTRUMENTS}
    events = [books[int(c["symbol"])].process(commands[k : k + 1]) for k, c in enumerate(commands)]
    return np.concatenate([np.zeros(0, EVENT_DTYPE), *events]), books


def run_shard(shard: Shard, commands: np.ndarray, batch: int = 500) -> np.ndarray:
    """Submit every command from this thread while draining events, then stop."""
    shard.start()
    events = []
    for lo in range(0, len(commands), batch):
        while not shard.try_submit(commands[lo : lo + batch]):
            events.append(shard.poll_events(timeout=0.01))
    shard.stop()
    while len(chunk := shard.poll_events(timeout=5)):
        events.append(chunk)
    shard.join(timeout=30)
    return np.concatenate(events) if events else np.zeros(0, EVENT_DTYPE)


def assert_same_books(books: dict[int, OrderBook], expected: dict[int, OrderBook]) -> None:
    assert books.keys() == expected.keys()
    for symbol, book in books.items():
        assert order_tuples(book.orders()) == order_tuples(expected[symbol].orders())
        assert book.seq == expected[symbol].seq


@pytest.mark.parametrize("wait", list(WaitStrategy))
def test_shard_events_equal_the_engine_run_directly(wait):
    commands = flow(6_000)
    shard = Shard.from_instruments(INSTRUMENTS, wait=wait, ring_capacity=1_024, max_batch=64)
    events = run_shard(shard, commands)
    expected, books = direct_run(commands)
    assert event_tuples(events) == event_tuples(expected)
    assert_same_books(dict(shard.books), books)
    assert shard.last_error is None
    assert shard.health()["commands_applied"] == len(commands)


def test_graceful_stop_applies_everything_submitted_and_loses_no_event():
    commands = flow(3_000)
    shard = Shard.from_instruments(INSTRUMENTS, ring_capacity=4_096)
    shard.submit(commands)  # all queued before the matcher starts
    shard.start()
    shard.stop()  # at once: nothing may be dropped
    events = []
    while len(chunk := shard.poll_events(timeout=5)):
        events.append(chunk)
    shard.join(timeout=30)
    assert event_tuples(np.concatenate(events)) == event_tuples(direct_run(commands)[0])
    with pytest.raises(RuntimeError):
        shard.submit(commands[:1])  # closed for new commands


@settings(max_examples=15, deadline=None)  # each example runs real threads
@given(cut=st.integers(0, 4_000), seed=st.integers(0, 3))
def test_restore_and_replay_from_a_running_snapshot_equals_an_uninterrupted_run(cut, seed):
    commands = flow(4_000, seed)
    uninterrupted, final_books = direct_run(commands)

    first = Shard.from_instruments(INSTRUMENTS, ring_capacity=8_192)
    first.submit(commands[:cut])
    first.start()
    snapshot = first.snapshot()  # taken wherever the matcher is
    first.stop()
    while len(first.poll_events(timeout=5)):
        pass
    first.join(timeout=30)

    second = Shard.restore(snapshot, ring_capacity=1_024)
    done = second.commands_applied
    assert 0 <= done <= cut
    replayed = run_shard(second, commands[done:])
    already = len(direct_run(commands[:done])[0])
    assert event_tuples(replayed) == event_tuples(uninterrupted[already:])
    assert_same_books(dict(second.books), final_books)


def test_unknown_symbol_is_rejected_and_the_shard_goes_on():
    commands = flow(20)
    commands["symbol"][3] = 999
    shard = Shard.from_instruments(INSTRUMENTS)
    events = run_shard(shard, commands)
    rejected = events[
        (events["type"] == EventType.REJECTED) & (events["reason"] == Reason.UNKNOWN_SYMBOL)
    ]
    assert len(rejected) == 1
    assert (rejected["symbol"][0], rejected["order_id"][0], rejected["seq"][0]) == (
        999,
        commands["order_id"][3],
        0,
    )
    valid = np.delete(commands, 3)
    kept = events[events["reason"] != Reason.UNKNOWN_SYMBOL]
    assert event_tuples(kept) == event_tuples(direct_run(valid)[0])


def test_books_refuse_other_threads_while_the_matcher_owns_them():
    shard = Shard.from_instruments(INSTRUMENTS)
    book = shard.books[1]
    shard.start()
    with pytest.raises(RuntimeError, match="in use"):
        book.limit(1, 1, MID, 1)
    shard.stop()
    shard.join(timeout=30)
    assert book.limit(1, 1, MID, 1) == 1  # back to the caller once stopped


def test_health_reports_sequences_and_counters():
    commands = flow(1_000)
    shard = Shard.from_instruments(INSTRUMENTS, ring_capacity=2_048)
    shard.submit(commands)
    health = shard.health()
    assert (health["commands_submitted"], health["input_fill"], health["running"]) == (
        1_000,
        1_000,
        False,
    )
    events = run_shard(shard, commands[:0])
    health = shard.health()
    assert health["commands_applied"] == 1_000
    assert health["events_published"] == health["events_read"] == len(events) > 1_000
    assert (health["input_fill"], health["output_fill"], health["last_error"]) == (0, 0, None)


def test_instruments_load_from_a_toml_file(tmp_path):
    path = tmp_path / "instruments.toml"
    path.write_text(
        '[[instrument]]\nsymbol = "ACME"\nid = 7\nlow = 900\nhigh = 1100\n'
        'lot_size = 10\nstp = "DECREMENT"\n'
    )
    [acme] = load_instruments(path)
    book = acme.new_book()
    assert (acme.symbol, book.symbol, book.low, book.high, book.lot_size, book.stp.name) == (
        "ACME",
        7,
        900,
        1100,
        10,
        "DECREMENT",
    )
    path.write_text('[[instrument]]\nsymbol = "ACME"\nlow = 900\nhigh = 1100\n')
    with pytest.raises(ValueError, match=r"instrument ACME \(#1\): id: missing"):
        load_instruments(path)


def test_a_symbol_configured_twice_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        Shard.from_instruments(INSTRUMENTS + INSTRUMENTS[:1])


def test_corrupt_shard_snapshot_is_refused():
    snapshot = Shard.from_instruments(INSTRUMENTS).snapshot()
    for bad in (snapshot[:-1], snapshot[:10], b"x" + snapshot[1:]):
        with pytest.raises(ValueError):
            Shard.restore(bad)


def test_cli_runs_a_shard_and_prints_a_summary():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brokercore.cli",
            "shard",
            "--orders",
            "20000",
            "--core",
            "0",
            "--symbols",
            "AAA,BBB",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout
    assert "20,000" in summary and "M orders/s" in summary and "p99" in summary
    assert "ring fill" in summary and "ACCEPTED" in summary


def test_marks_tell_which_events_belong_to_which_commands_and_where_snapshots_fall():
    """Each mark's counts cut the event stream exactly after the events of the commands
    it counts; a requested snapshot arrives as a mark at the point it reflects."""
    commands = flow(3_000, seed=8)
    shard = Shard.from_instruments(INSTRUMENTS, ring_capacity=1_024, max_batch=50, marks=True)
    shard.start()
    events, marks, snapshots = [], [], []
    for lo in range(0, len(commands), 300):
        shard.submit(commands[lo : lo + 300])
        if lo == 1_500:
            shard.request_snapshot()
        while (batch := shard.poll_marks(timeout=0.2)).size:
            marks += batch.tolist()
            if (owed := int(batch["events"][-1]) - sum(map(len, events))) > 0:
                events.append(shard.poll_events(owed))
    shard.stop()
    while (batch := shard.poll_marks(timeout=1)).size:
        marks += batch.tolist()
    events.append(shard.poll_events(timeout=1))
    shard.join(timeout=30)
    events = np.concatenate(events)
    kinds, applied, published = zip(*marks, strict=True)
    assert applied[-1] == len(commands) and published[-1] == len(events)
    assert list(applied) == sorted(applied) and list(published) == sorted(published)
    for kind, n_commands, n_events in marks:
        expected, books = direct_run(commands[:n_commands])
        assert event_tuples(events[:n_events]) == event_tuples(expected)
        if kind == MarkKind.SNAPSHOT:
            snapshots.append((n_commands, books))
    assert len(snapshots) == 1
    n_commands, books = snapshots[0]
    restored = Shard.restore(shard.take_snapshot())
    assert restored.base == n_commands
    assert_same_books(dict(restored.books), books)
