"""Fuzz of the batch API: arbitrary field values into the engine and the model.

``process`` must never raise for bad values, must give exactly the model's events, and
a command that is only REJECTED must leave the book as it was (its orders, phase, last
price and auction quote). The commands cover the trading day too: stops, icebergs,
pre-open, uncross and halt, with plausible and arbitrary triggers and disclosed
quantities. Large seeded batches add a wide band, a batch with more events than the
engine keeps in its buffer, and a trading day's mix of auctions, stops and icebergs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from brokercore.engine.records import COMMAND_DTYPE, EventType, Op, Tif
from strategies import scenario
from support import commands, day_state, engine_class, event_tuples, model_class


def make_books(params):
    return engine_class()(**params), model_class()(**params)


def state_but_seq(book) -> dict:
    """What a rejected command must not change (besides seq, it may only spend an id)."""
    return {key: value for key, value in day_state(book).items() if key != "seq"}


@given(scenario(day=True))
def test_batch_of_arbitrary_commands_matches_the_model(case):
    params, cmds = case
    engine, model = make_books(params)
    batch = commands(*cmds)
    engine_events = engine.process(batch)
    assert event_tuples(engine_events) == event_tuples(model.process(batch))
    assert day_state(engine) == day_state(model)
    assert engine.seq == len(engine_events)


@given(scenario(day=True))
def test_rejected_commands_leave_the_book_unchanged(case):
    params, cmds = case
    engine, model = make_books(params)
    for cmd in cmds:
        before = state_but_seq(engine)
        engine_events = engine.process(commands(cmd))
        assert event_tuples(engine_events) == event_tuples(model.process(commands(cmd))), cmd
        if len(engine_events) == 1 and engine_events[0]["type"] == EventType.REJECTED:
            assert state_but_seq(engine) == before, cmd
        assert day_state(engine) == day_state(model), cmd


def random_batch(seed: int, n: int, low: int, high: int, day: bool = False) -> np.ndarray:
    """n mostly valid commands (numpy RNG, fixed seed) with prices across a wide band; with
    ``day`` also stops (triggers near the prices), icebergs, pre-opens, uncrosses, halts."""
    rng = np.random.default_rng(seed)
    batch = np.zeros(n, dtype=COMMAND_DTYPE)
    day_ops = [Op.STOP, Op.STOP_LIMIT, Op.PRE_OPEN, Op.UNCROSS, Op.UNCROSS, Op.HALT] if day else []
    batch["op"] = rng.choice(
        [Op.LIMIT] * 10
        + [Op.MARKET, Op.CANCEL, Op.CANCEL, Op.AMEND, Op.AMEND, Op.OPEN, Op.CLOSE, Op.REBAND, 0]
        + day_ops,
        n,
    )
    batch["side"] = rng.integers(1, 3, n)
    batch["tif"] = rng.choice([Tif.GTC, Tif.GTC, Tif.DAY, Tif.IOC, Tif.FOK], n)
    batch["stp"] = rng.integers(0, 6, n)
    batch["flags"] = rng.choice([0, 0, 0, 1], n)
    batch["order_id"] = rng.integers(1, n // 4, n)
    batch["account"] = rng.integers(1, 6, n)
    batch["price"] = rng.integers(low - 1, high + 2, n)
    batch["qty"] = rng.integers(1, 50, n)
    batch["ts"] = np.arange(n)
    reband = batch["op"] == Op.REBAND
    batch["price"][reband] = low + rng.integers(-3, 3, reband.sum())
    batch["qty"][reband] = high + rng.integers(-3, 3, reband.sum())
    if day:
        stops = np.isin(batch["op"], [Op.STOP, Op.STOP_LIMIT, Op.AMEND])
        batch["trigger"][stops] = batch["price"][stops] + rng.integers(-3, 4, stops.sum())
        batch["price"][batch["op"] == Op.STOP] = 0
        batch["flags"][stops] = 0
        batch["disclosed"] = rng.choice([0, 0, 0, 1, 5, 10], n)
        uncross = batch["op"] == Op.UNCROSS
        batch["price"][uncross] *= rng.integers(0, 2, uncross.sum())  # half: own reference
    return batch


@pytest.mark.parametrize(
    "n, low, high, day",
    [(2_000, 1, 2**26, False), (70_000, 100, 160, False), (20_000, 100, 160, True)],
    ids=["wide band", "more events than a small batch", "trading day"],
)
def test_large_random_batch_matches_the_model(n, low, high, day):
    engine, model = make_books(dict(low=low, high=high))
    batch = random_batch(n, n, low, high, day)
    assert event_tuples(engine.process(batch)) == event_tuples(model.process(batch))
    assert day_state(engine) == day_state(model)
