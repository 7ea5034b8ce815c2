"""Helpers shared by the test modules: building commands, reading events and books.

Expected events are written as ``Ev`` tuples (every field of an event except the ones
that are the same for all events of one call: symbol, seq, ts and op). ``call`` and
``send`` apply a command, check those common fields exactly, and return the ``Ev`` list
so a test can compare it with ``==`` against the full expected list.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from brokercore.engine.records import COMMAND_DTYPE, EventType, Op, Reason

A, B, C = 1, 2, 3  # accounts


def engine_class():
    """The compiled engine; an ImportError here means the build is missing or broken."""
    import brokercore

    return brokercore.OrderBook


def model_class():
    from brokercore.engine.reference import ReferenceBook

    return ReferenceBook


class Ev(NamedTuple):
    type: int
    reason: int
    side: int
    order_id: int
    account: int
    price: int
    qty: int
    remaining: int
    other_id: int = 0
    other_account: int = 0
    other_remaining: int = 0


def accepted(order_id, side, price, qty, account=0) -> Ev:
    return Ev(EventType.ACCEPTED, Reason.NONE, side, order_id, account, price, qty, qty)


def rejected(reason, order_id=0, side=0, price=0, qty=0, account=0) -> Ev:
    return Ev(EventType.REJECTED, reason, side, order_id, account, price, qty, 0)


def trade(
    taker, side, price, qty, remaining, maker, maker_remaining, account=0, maker_account=0
) -> Ev:
    return Ev(
        EventType.TRADE,
        Reason.NONE,
        side,
        taker,
        account,
        price,
        qty,
        remaining,
        maker,
        maker_account,
        maker_remaining,
    )


def cancelled(order_id, side, price, qty, reason, account=0) -> Ev:
    return Ev(EventType.CANCELLED, reason, side, order_id, account, price, qty, 0)


def expired(order_id, side, price, qty, account=0) -> Ev:
    return Ev(EventType.EXPIRED, Reason.NONE, side, order_id, account, price, qty, 0)


def amended(order_id, side, price, qty, reason=Reason.NONE, account=0) -> Ev:
    return Ev(EventType.AMENDED, reason, side, order_id, account, price, qty, qty)


def rebanded(low, high) -> Ev:
    return Ev(EventType.REBANDED, Reason.NONE, 0, 0, 0, low, high, 0)


OPENED = Ev(EventType.OPENED, Reason.NONE, 0, 0, 0, 0, 0, 0)
CLOSED = Ev(EventType.CLOSED, Reason.NONE, 0, 0, 0, 0, 0, 0)
PRE_OPENED = Ev(EventType.PRE_OPENED, Reason.NONE, 0, 0, 0, 0, 0, 0)
HALTED = Ev(EventType.HALTED, Reason.NONE, 0, 0, 0, 0, 0, 0)


def triggered(order_id, side, price, qty, last_price, account=0) -> Ev:
    """A waiting stop enters (price: its limit, 0 for a stop-market)."""
    return Ev(
        EventType.TRIGGERED, Reason.NONE, side, order_id, account, price, qty, qty, 0, 0, last_price
    )


def uncrossed(price=0, volume=0, imbalance=0, surplus=0) -> Ev:
    return Ev(EventType.UNCROSSED, Reason.NONE, surplus, 0, 0, price, volume, imbalance)


_OP_OF_METHOD = {
    "limit": Op.LIMIT,
    "market": Op.MARKET,
    "cancel": Op.CANCEL,
    "amend": Op.AMEND,
    "open": Op.OPEN,
    "close": Op.CLOSE,
    "reband": Op.REBAND,
    "stop": Op.STOP,
    "stop_limit": Op.STOP_LIMIT,
    "pre_open": Op.PRE_OPEN,
    "uncross": Op.UNCROSS,
    "halt": Op.HALT,
}


def as_ev(events) -> list[Ev]:
    return [Ev(*(int(e[name]) for name in Ev._fields)) for e in events]


def check_common_fields(book, events, seq_before, op, ts) -> None:
    """Fields every event of one command shares: book symbol, next seqs, op and ts."""
    n = len(events)
    assert events["seq"].tolist() == list(range(seq_before + 1, seq_before + n + 1))
    assert book.seq == seq_before + n
    assert events["symbol"].tolist() == [book.symbol] * n
    assert events["op"].tolist() == [op] * n
    assert events["ts"].tolist() == [ts] * n


def call(book, method, *args, **kwargs) -> list[Ev]:
    """Apply one per-order call, check its return value and common fields, give its events."""
    seq_before = book.seq
    n = getattr(book, method)(*args, **kwargs)
    events = book.last_events()
    assert n == len(events)
    check_common_fields(book, events, seq_before, _OP_OF_METHOD[method], kwargs.get("ts", 0))
    return as_ev(events)


def commands(*rows: dict) -> np.ndarray:
    """A COMMAND_DTYPE array, one record per dict of field values (missing fields 0)."""
    out = np.zeros(len(rows), dtype=COMMAND_DTYPE)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[name][i] = value
    return out


def send(book, **fields) -> list[Ev]:
    """Apply one raw command through ``process``; check common fields; give its events."""
    seq_before = book.seq
    events = book.process(commands(fields))
    check_common_fields(book, events, seq_before, fields.get("op", 0), fields.get("ts", 0))
    return as_ev(events)


def event_tuples(events) -> list[tuple]:
    """Full event records as plain tuples, for comparing two implementations."""
    return [tuple(int(v) for v in e.item()) for e in events]


def order_tuples(orders) -> list[tuple]:
    """An ORDER_DTYPE array as plain tuples (padding excluded)."""
    return [tuple(int(v) for v in o.item()) for o in orders]


def outcome(view, *args):
    """A view's value, or the name of the exception it raised (level totals can exceed
    int64: both implementations raise OverflowError then)."""
    try:
        result = view(*args)
    except OverflowError as exc:
        return type(exc).__name__
    if isinstance(result, tuple) and result and isinstance(result[0], np.ndarray):
        return tuple(a.tolist() for a in result)
    return result


def book_state(book) -> dict:
    """Everything the views show about a book, comparable with ==."""
    return {
        "orders": order_tuples(book.orders()),
        "is_open": book.is_open,
        "seq": book.seq,
        "open_orders": book.open_orders,
        "band": (book.low, book.high),
        "lot_size": book.lot_size,
        "max_qty": book.max_qty,
        "symbol": book.symbol,
        "stp": book.stp,
        "best_bid": outcome(book.best_bid),
        "best_ask": outcome(book.best_ask),
        "depth": outcome(book.depth, 5),
    }


def day_state(book) -> dict:
    """``book_state`` plus the trading day's views: phase, last price, the auction."""
    return dict(
        book_state(book),
        phase=book.phase,
        last_price=book.last_price,
        auction=book.auction(),
        min_disclosed_percent=book.min_disclosed_percent,
    )


def book_ids(book) -> list[int]:
    """Live order ids in book order."""
    return book.orders()["order_id"].tolist()


def level_ids(book, price) -> list[int]:
    return book.level(price)["order_id"].tolist()
