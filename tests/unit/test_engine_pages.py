"""Where the compiled book's large blocks get their pages (src/brokercore/engine/_memory.h):
page faults counted with getrusage, event arrays compared, nothing timed. Transparent
huge pages are off for this process during each test (PR_SET_THP_DISABLE), so that a
fault is one 4 KiB page whatever the host's THP settings."""

from __future__ import annotations

import ctypes
import resource
from collections.abc import Iterator

import numpy as np
import pytest

from brokercore import COMMAND_DTYPE, EventType, Op, OrderBook, Reason, Side, Tif

SPARE_MIN = 8 << 20  # _memory.h keeps blocks from this size
PAGE = 4096
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42


@pytest.fixture(autouse=True)
def four_kib_pages() -> Iterator[None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    was = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)
    assert was >= 0 and prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        prctl(PR_SET_THP_DISABLE, was, 0, 0, 0)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def unknown_cancels(count: int) -> np.ndarray:
    """Cancels of ids no book knows: one REJECTED event each, no book state touched."""
    commands = np.zeros(count, dtype=COMMAND_DTYPE)
    commands["op"] = Op.CANCEL
    commands["order_id"] = np.arange(1, count + 1)
    commands["account"] = 1
    return commands


def test_a_large_batch_writes_into_a_dead_batchs_buffer_and_never_a_live_one():
    commands = unknown_cancels(100_000)  # 100,000 events: 8.8 MB, a buffer that is kept
    first = OrderBook(1, 1_000).process(commands)
    assert first.nbytes >= SPARE_MIN
    assert np.all(first["type"] == EventType.REJECTED)
    assert np.all(first["reason"] == Reason.UNKNOWN_ORDER)
    kept = first.copy()

    second = OrderBook(1, 1_000).process(commands)  # first is alive: its buffer is not reused
    assert np.array_equal(first, kept) and np.array_equal(second, kept)

    del first, second
    before = minor_faults()
    third = OrderBook(1, 1_000).process(commands)
    faulted = minor_faults() - before
    assert np.array_equal(third, kept)
    assert faulted < third.nbytes // PAGE // 8  # written into pages already in


def test_a_book_sized_by_session_orders_faults_nothing_in_for_its_id_map():
    """300,000 orders spend 300,000 ids: a 16 MiB map (4,096 pages) made and faulted in
    with the book, and again at OPEN, never while the orders come."""
    book = OrderBook(1, 1_000, session_orders=300_000)
    limit, cancel = book.limit, book.cancel
    for session in range(2):
        before = minor_faults()
        for order_id in range(1, 300_001):
            limit(order_id, Side.BUY, 500, 1, account=1)
            cancel(order_id, account=1)
        assert minor_faults() - before < 512, f"session {session}"
        assert book.close() >= 1 and book.open() == 1  # OPEN forgets the spent ids


def sells_then_a_sweep(count: int) -> np.ndarray:
    """count one-lot sells at one price, then a market buy that takes them all: the buy
    needs more events than process() reserves for the batch, so the buffer grows."""
    commands = np.zeros(count + 1, dtype=COMMAND_DTYPE)
    commands["op"][:count] = Op.LIMIT
    commands["side"][:count] = Side.SELL
    commands["price"][:count] = 500
    commands["op"][count] = Op.MARKET
    commands["side"][count] = Side.BUY
    commands["qty"] = 1
    commands["qty"][count] = count
    commands["tif"] = Tif.GTC
    commands["tif"][count] = Tif.IOC
    commands["order_id"] = np.arange(1, count + 2)
    commands["account"] = 1 + (commands["side"] == Side.BUY)
    return commands


def in_slices(commands: np.ndarray, size: int) -> np.ndarray:
    """The events of the commands run through a fresh book size at a time: buffers too
    small for a prefault thread (_memory.h)."""
    book = OrderBook(1, 1_000)
    return np.concatenate(
        [book.process(commands[i : i + size]) for i in range(0, len(commands), size)]
    )


def test_a_fresh_large_batch_faults_its_buffer_in_at_most_4_mib_past_its_events():
    """The first large batch of a process gets a buffer with no page in: a thread faults
    it in ahead of the events (at most BC_PREFAULT_AHEAD, 4 MiB, past the last one), not
    the whole reserve of 2 events a command. A live result holds the spare meanwhile."""
    holds_the_spare = OrderBook(1, 1_000).process(unknown_cancels(100_000))
    commands = unknown_cancels(400_000)  # 400,000 events (35 MB) of 800,016 reserved
    before = minor_faults()
    events = OrderBook(1, 1_000).process(commands)
    faulted = minor_faults() - before
    pages = events.nbytes // PAGE
    assert np.all(events["reason"] == Reason.UNKNOWN_ORDER) and len(events) == 400_000
    assert pages * 0.95 < faulted < pages + (4 << 20) // PAGE + 512
    del holds_the_spare


def test_a_batch_whose_buffer_grows_while_a_thread_faults_it_in_gives_the_same_events():
    commands = sells_then_a_sweep(60_000)  # 120,018 events reserved (10 MB), 180,001 written
    holds_the_spare = OrderBook(1, 1_000).process(unknown_cancels(100_000))
    book = OrderBook(1, 1_000)
    events = book.process(commands)
    assert np.count_nonzero(events["type"] == EventType.TRADE) == 60_000
    assert np.array_equal(events, in_slices(commands, 1_000))
    assert book.best_ask() is None and book.best_bid() is None
    del holds_the_spare
