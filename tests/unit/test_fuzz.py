"""Fuzz of the batch API: arbitrary field values into the engine and the model.

``process`` must never raise for bad values, must give exactly the model's events, and
a command that is only REJECTED must leave the book as it was. Two large seeded batches
add a wide band and a batch with more events than the engine keeps in its buffer.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from brokercore.engine.records import COMMAND_DTYPE, EventType, Op, Tif
from strategies import scenario
from support import book_state, commands, engine_class, event_tuples, model_class


def make_books(params):
    return engine_class()(**params), model_class()(**params)


def state_but_seq(book) -> dict:
    """What a rejected command must not change (besides seq, it may only spend an id)."""
    return {key: value for key, value in book_state(book).items() if key != "seq"}


@given(scenario())
def test_batch_of_arbitrary_commands_matches_the_model(case):
    params, cmds = case
    engine, model = make_books(params)
    batch = commands(*cmds)
    engine_events = engine.process(batch)
    assert event_tuples(engine_events) == event_tuples(model.process(batch))
    assert book_state(engine) == book_state(model)
    assert engine.seq == len(engine_events)


@given(scenario())
def test_rejected_commands_leave_the_book_unchanged(case):
    params, cmds = case
    engine, model = make_books(params)
    for cmd in cmds:
        before = state_but_seq(engine)
        engine_events = engine.process(commands(cmd))
        assert event_tuples(engine_events) == event_tuples(model.process(commands(cmd))), cmd
        if len(engine_events) == 1 and engine_events[0]["type"] == EventType.REJECTED:
            assert state_but_seq(engine) == before, cmd
        assert book_state(engine) == book_state(model), cmd


def random_batch(seed: int, n: int, low: int, high: int) -> np.ndarray:
    """n mostly valid commands (numpy RNG, fixed seed) with prices across a wide band."""
    rng = np.random.default_rng(seed)
    batch = np.zeros(n, dtype=COMMAND_DTYPE)
    batch["op"] = rng.choice(
        [Op.LIMIT] * 10
        + [Op.MARKET, Op.CANCEL, Op.CANCEL, Op.AMEND, Op.AMEND, Op.OPEN, Op.CLOSE, Op.REBAND, 0],
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
    return batch


@pytest.mark.parametrize(
    "n, low, high",
    [(2_000, 1, 2**26), (70_000, 100, 160)],
    ids=["wide band", "more events than a small batch"],
)
def test_large_random_batch_matches_the_model(n, low, high):
    engine, model = make_books(dict(low=low, high=high))
    batch = random_batch(n, n, low, high)
    assert event_tuples(engine.process(batch)) == event_tuples(model.process(batch))
    assert book_state(engine) == book_state(model)
