"""The order book's hot paths as pytest-benchmark tests, so that a regression shows as a
number: the batch ``process``, the per-order calls, snapshot and restore.

``make bench-save`` records a baseline and ``make bench-compare`` compares with it; in
the ordinary test run (``--benchmark-disable``) each body runs once and only the checks
count. The workloads are the printing benchmarks' (benchmarks/workloads.py's profiles,
and brokercore.runtime.loadgen's order flow, the shards' load), seeded and built once
per module; every timed round starts from a fresh book with the untimed prefill.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from brokercore import Op, OrderBook, Stp
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from support import book_state
from workloads import (
    PROFILES,
    Workload,
    bound_methods,
    generate,
    per_order_calls,
    per_order_events,
    run_calls,
)

OPS = 50_000  # timed commands per workload
SEED = 1
ROUNDS = 20  # timed rounds of the tests that need a fresh book per round


def loadgen_workload() -> Workload:
    """One symbol of the shards' order flow; it starts on an empty book. Its market
    orders carry a price, which the book ignores but echoes in their events; a per-order
    ``market`` call has none, so it is dropped here for the two to compare."""
    (commands,) = order_flow([1], OPS, seed=SEED, chunk=OPS)
    commands["price"][commands["op"] == Op.MARKET] = 0
    return Workload(
        "loadgen",
        "brokercore.runtime.loadgen's order flow, one symbol",
        MID - HALF_BAND,
        MID + HALF_BAND,
        int(Stp.NONE),
        commands[:0],
        commands,
    )


@pytest.fixture(scope="module", params=[*PROFILES, "loadgen"])
def workload(request: pytest.FixtureRequest) -> Workload:
    if request.param == "loadgen":
        return loadgen_workload()
    return generate(PROFILES[request.param], OPS, SEED, OrderBook)


@pytest.fixture(scope="module")
def calls(workload: Workload) -> list[tuple[int, tuple[int, ...]]]:
    return per_order_calls(workload.commands)


@pytest.fixture(scope="module")
def processed(workload: Workload) -> OrderBook:
    """The book after the whole workload, processed untimed."""
    book = workload.prefilled_book(OrderBook)
    book.process(workload.commands)
    return book


def test_process(benchmark: Any, workload: Workload, calls: list) -> None:
    """``process`` of the whole command array; its events are those of the same
    commands sent one call at a time."""
    events = benchmark.pedantic(
        OrderBook.process,
        setup=lambda: ((workload.prefilled_book(OrderBook), workload.commands), {}),
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    one_by_one, _ = per_order_events(workload, OrderBook, calls, len(events))
    assert one_by_one is not None and np.array_equal(one_by_one, events)


def test_per_order_calls(
    benchmark: Any, workload: Workload, calls: list, processed: OrderBook
) -> None:
    """``limit``/``market``/``cancel`` (and ``amend``) one call per command, from Python;
    the book ends as the batch leaves it."""
    books: list[OrderBook] = []

    def fresh_book() -> tuple[tuple[Any, ...], dict[str, Any]]:
        books[:] = [workload.prefilled_book(OrderBook)]
        return (bound_methods(books[0]), calls), {}

    benchmark.pedantic(run_calls, setup=fresh_book, rounds=ROUNDS, warmup_rounds=1)
    assert book_state(books[0]) == book_state(processed)


def test_snapshot(benchmark: Any, processed: OrderBook) -> None:
    """``snapshot`` of the book the workload leaves; it restores to the same book."""
    data = benchmark(processed.snapshot)
    assert book_state(OrderBook.restore(data)) == book_state(processed)


def test_restore(benchmark: Any, processed: OrderBook) -> None:
    """``restore`` of that snapshot; the restored book snapshots to the same bytes."""
    data = processed.snapshot()
    restored = benchmark(OrderBook.restore, data)
    assert book_state(restored) == book_state(processed)
    assert restored.snapshot() == data
