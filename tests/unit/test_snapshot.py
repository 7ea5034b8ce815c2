"""Engine snapshots: a restored book carries on exactly like the original, and bad bytes
are refused with ValueError (never a crash, never a silently wrong book).

The reference model has no snapshots, so these tests use the engine only. The tests
that forge snapshots with a valid checksum use the engine's own header layout
(``brokercore.engine._engine._SNAPSHOT_HEADER``, then the orders, the spent ids and a CRC-32
trailer), so they test the validation behind the checksum, not just the checksum.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokercore.engine.records import (
    INT64_MAX,
    ORDER_DTYPE,
    EventType,
    Op,
    Phase,
    Reason,
    Side,
    Stp,
    Tif,
)
from strategies import scenario
from support import (
    OPENED,
    A,
    B,
    C,
    accepted,
    book_ids,
    book_state,
    call,
    commands,
    day_state,
    engine_class,
    event_tuples,
    rejected,
)


def round_trip(book):
    return type(book).restore(book.snapshot())


@given(scenario(), st.data())
def test_restored_book_gives_the_same_future_events(case, data):
    params, cmds = case
    split = data.draw(st.integers(0, len(cmds)), label="split")
    original = engine_class()(**params)
    original.process(commands(*cmds[:split]))
    restored = round_trip(original)
    assert book_state(restored) == book_state(original)
    later = commands(*cmds[split:])
    assert event_tuples(restored.process(later)) == event_tuples(original.process(later))
    assert book_state(restored) == book_state(original)


def busy_book():
    """A closed book: bids 2 (post-only) and 1, ask 3; ids 4 (expired), 5, 6 spent."""
    book = engine_class()(100, 200, lot_size=5, symbol=9, stp=Stp.DECREMENT)
    call(book, "limit", 1, Side.BUY, 110, 10, account=A, tif=Tif.GTC, stp=Stp.NONE)
    call(book, "limit", 2, Side.BUY, 120, 15, account=B, post_only=True)
    call(book, "limit", 3, Side.SELL, 130, 20, account=C)
    call(book, "limit", 4, Side.SELL, 130, 5, account=A, tif=Tif.DAY)
    call(book, "market", 5, Side.SELL, 5, account=C)  # spent: filled against 2
    call(book, "limit", 6, Side.SELL, 0, 5, account=C)  # spent: rejected
    call(book, "close")
    return book


def test_round_trip_keeps_session_state_and_spent_ids():
    book = round_trip(busy_book())
    assert not book.is_open and book.stp == Stp.DECREMENT and book.symbol == 9
    assert book_ids(book) == [2, 1, 3]
    assert call(book, "limit", 5, Side.BUY, 101, 5, account=A) == [
        rejected(Reason.DUPLICATE_ORDER_ID, 5, Side.BUY, 101, 5, A)
    ]
    assert call(book, "limit", 7, Side.BUY, 101, 5, account=A) == [
        rejected(Reason.MARKET_CLOSED, 7, Side.BUY, 101, 5, A)
    ]
    assert call(book, "open") == [OPENED]
    assert call(book, "limit", 1, Side.BUY, 101, 5, account=A) == [
        rejected(Reason.DUPLICATE_ORDER_ID, 1, Side.BUY, 101, 5, A)
    ]
    for order_id in (4, 5, 6):
        assert call(book, "limit", order_id, Side.BUY, 101, 5, account=A) == [
            accepted(order_id, Side.BUY, 101, 5, A)
        ]


def test_snapshot_is_bytes_and_restores_from_bytearray_and_memoryview():
    snap = busy_book().snapshot()
    assert isinstance(snap, bytes)
    for data in (bytearray(snap), memoryview(snap)):
        assert book_state(engine_class().restore(data)) == book_state(busy_book())


# ------------------------------------------------------------------- bad bytes


@given(st.binary(max_size=400))
def test_restore_refuses_random_bytes(data):
    with pytest.raises(ValueError):
        engine_class().restore(data)


def test_restore_refuses_every_truncation():
    snap = busy_book().snapshot()
    for n in range(len(snap)):
        with pytest.raises(ValueError):
            engine_class().restore(snap[:n])


def test_restore_refuses_trailing_bytes():
    with pytest.raises(ValueError):
        engine_class().restore(busy_book().snapshot() + b"\0")


@given(st.data())
def test_restore_of_a_corrupted_byte_raises_value_error_or_gives_a_sound_book(data):
    snap = bytearray(busy_book().snapshot())
    pos = data.draw(st.integers(0, len(snap) - 1), label="pos")
    snap[pos] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        book = engine_class().restore(bytes(snap))
    except ValueError:
        return
    orders = book.orders()  # a restored book must be usable and consistent
    assert np.all((orders["price"] >= book.low) & (orders["price"] <= book.high))
    assert np.all(orders["qty"] > 0)
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid[0] < ask[0]


def split_snapshot(snap: bytes):
    """(header fields, orders, spent ids) of a snapshot, in the engine's layout."""
    from brokercore.engine._engine import _SNAPSHOT_HEADER

    header = list(_SNAPSHOT_HEADER.unpack_from(snap))
    n_orders, n_spent = header[10], header[11]
    start = _SNAPSHOT_HEADER.size
    orders = np.frombuffer(snap, ORDER_DTYPE, n_orders, start).copy()
    spent = np.frombuffer(snap, "<i8", n_spent, start + n_orders * ORDER_DTYPE.itemsize).copy()
    return header, orders, spent


def seal(header, orders, spent) -> bytes:
    """Pack the parts back into a snapshot with a correct checksum."""
    from brokercore.engine._engine import _SNAPSHOT_HEADER

    body = _SNAPSHOT_HEADER.pack(*header) + orders.tobytes() + spent.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


# Header fields: magic, version, flags, low, high, lot, symbol, stp, phase, seq, n, n_spent,
# last_price, min_disclosed_percent
def set_header(index, value):
    def forge(header, orders, spent):
        header[index] = value

    return forge


def set_order(row, field, value):
    def forge(header, orders, spent):
        orders[row][field] = value

    return forge


def swap_orders(i, j):
    def forge(header, orders, spent):
        orders[[i, j]] = orders[[j, i]]

    return forge


def spend_a_live_id(header, orders, spent):
    spent[0] = orders[0]["order_id"]


FORGERIES = {
    "magic": set_header(0, b"XXXX"),
    "version": set_header(1, 99),
    "low zero": set_header(3, 0),
    "high below low": set_header(4, 50),
    "lot zero": set_header(5, 0),
    "book stp default": set_header(7, Stp.DEFAULT),
    "book stp unknown": set_header(7, 6),
    "phase 4": set_header(8, 4),
    "negative last price": set_header(12, -1),
    "disclosed percent 101": set_header(13, 101),
    "negative seq": set_header(9, -1),
    "order count too big": set_header(10, 5),
    "spent count too big": set_header(11, 9),
    "order tif ioc": set_order(0, "tif", Tif.IOC),
    "order tif zero": set_order(0, "tif", 0),
    "order stp 6": set_order(0, "stp", 6),
    "order flags 2": set_order(0, "flags", 2),
    "order side 3": set_order(0, "side", 3),
    "order id zero": set_order(0, "order_id", 0),
    "order id duplicate": set_order(1, "order_id", 2),
    "order price below band": set_order(0, "price", 99),
    "order qty zero": set_order(0, "qty", 0),
    "order qty off lot": set_order(0, "qty", 7),
    "order qty too large": set_order(0, "qty", (INT64_MAX // 200 // 5 + 1) * 5),
    "bids out of order": swap_orders(0, 1),
    "spent id is live": spend_a_live_id,
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=list(FORGERIES))
def test_restore_refuses_a_forged_snapshot(forge):
    header, orders, spent = split_snapshot(busy_book().snapshot())
    assert seal(header, orders, spent) == busy_book().snapshot()  # the layout is understood
    forge(header, orders, spent)
    with pytest.raises(ValueError):
        engine_class().restore(seal(header, orders, spent))


# ------------------------------------------------------------------ version 1


def version_1_snapshot(book) -> bytes:
    """The bytes wave 1's engine wrote for this book (it has no stops, icebergs, waiting
    market orders or phases but OPEN/CLOSED): the version 1 header, then 40-byte orders
    (order_id, account, price, qty i8; side, tif, stp, flags u1; 4 pad), then the spent
    ids."""
    header, orders, spent = split_snapshot(book.snapshot())
    assert set(orders["op"]) <= {Op.LIMIT} and not orders["disclosed"].any()
    v1 = struct.pack(
        "<4sHHqqqIBB2xqqq", b"BCOB", 1, 0, *header[3:8], int(book.is_open), *header[9:12]
    )
    for o in orders:
        v1 += struct.pack("<qqqqBBBB4x", *(int(o[name]) for name in ORDER_DTYPE.names[:8]))
    v1 += spent.tobytes()
    return v1 + struct.pack("<I", zlib.crc32(v1))


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "open"])
def test_a_version_1_snapshot_restores(closed):
    book = busy_book()
    if not closed:
        call(book, "open")
    restored = engine_class().restore(version_1_snapshot(book))
    assert book_state(restored) == book_state(book) and book.last_price == 120
    assert restored.phase == (Phase.CLOSED if closed else Phase.OPEN)
    assert restored.last_price == 0 and restored.min_disclosed_percent == 10
    later = commands(
        {"op": Op.OPEN},
        {"op": Op.LIMIT, "order_id": 7, "side": Side.BUY, "price": 130, "qty": 10, "tif": Tif.GTC},
        {"op": Op.STOP, "order_id": 8, "side": Side.BUY, "qty": 5, "trigger": 140, "tif": 1},
    )
    assert event_tuples(restored.process(later)) == event_tuples(book.process(later))
    assert day_state(restored) == day_state(book)


# ---------------------------------------------------------------- trading day

S, BUY = Side.SELL, Side.BUY
TRADING_DAY = [
    ("limit", (1, BUY, 105, 100), {"account": A}),
    ("limit", (2, S, 105, 40), {"account": B}),  # a trade: last price 105
    ("close", (), {}),
    ("pre_open", (), {}),
    ("limit", (3, BUY, 106, 50), {"account": A, "tif": Tif.DAY}),
    ("limit", (4, S, 104, 90), {"account": C, "disclosed": 30}),  # crossed; an iceberg
    ("market", (5, BUY, 20), {"account": B}),  # waits for the uncross
    ("market", (6, S, 10), {"account": C}),
    ("stop", (7, BUY, 10, 108), {"account": B}),
    ("stop_limit", (8, S, 100, 10, 102), {"account": A, "tif": Tif.GTC}),
    ("stop", (9, BUY, 5, 107), {"account": C}),
    ("amend", (8, 101, 10), {"account": A, "trigger": 103}),
    ("halt", (), {}),
    ("pre_open", (), {}),
    ("uncross", (), {}),
    ("limit", (10, S, 107, 30), {"account": C}),
    ("market", (11, BUY, 40), {"account": A}),  # reaches 107: stop 9 enters
    ("limit", (12, S, 110, 100), {"account": B, "disclosed": 20}),
    ("market", (13, BUY, 50), {"account": C}),  # meets the iceberg's parts; stop 7 enters
    ("limit", (14, BUY, 99, 20), {"account": B}),
    ("market", (15, S, 100), {"account": A}),  # sells down: stop-limit 8 enters
    ("close", (), {}),
]


def run_day(book, steps) -> list[tuple]:
    """Apply (method, args, kwargs) steps; all their events as tuples."""
    events = []
    for method, args, kwargs in steps:
        getattr(book, method)(*args, **kwargs)
        events += event_tuples(book.last_events())
    return events


def test_the_trading_day_script_agrees_with_the_model_and_covers_every_kind_of_order():
    from brokercore.engine.reference import ReferenceBook

    engine, model = engine_class()(90, 120), ReferenceBook(90, 120)
    kinds = set()
    for k in range(len(TRADING_DAY)):
        assert run_day(engine, TRADING_DAY[k : k + 1]) == run_day(model, TRADING_DAY[k : k + 1])
        orders = engine.orders()
        kinds |= {Op(op) for op in orders["op"]} | (
            {"iceberg"} if orders["disclosed"].any() else set()
        )
    assert kinds == {Op.LIMIT, Op.MARKET, Op.STOP, Op.STOP_LIMIT, "iceberg"}
    assert {EventType.TRIGGERED, EventType.UNCROSSED} <= {e[1] for e in engine_events(engine)}


def engine_events(book) -> list[tuple]:
    """The events of replaying the whole trading day on a fresh book like ``book``."""
    fresh = type(book)(book.low, book.high)
    return run_day(fresh, TRADING_DAY)


@pytest.mark.parametrize("k", range(len(TRADING_DAY) + 1))
def test_a_snapshot_at_any_point_of_the_trading_day_carries_on_the_same(k):
    book = engine_class()(90, 120)
    run_day(book, TRADING_DAY[:k])
    restored = round_trip(book)
    assert day_state(restored) == day_state(book)
    assert restored.min_disclosed_percent == book.min_disclosed_percent
    assert run_day(restored, TRADING_DAY[k:]) == run_day(book, TRADING_DAY[k:])
    assert day_state(restored) == day_state(book)


def pre_open_book():
    """The trading day up to the halt: waiting market orders and stops, an iceberg."""
    book = engine_class()(90, 120)
    run_day(book, TRADING_DAY[:11])
    return book


def set_order_where(op, field, value):
    def forge(header, orders, spent):
        orders[field][np.flatnonzero(orders["op"] == op)[0]] = value

    return forge


def set_iceberg(field, value):
    def forge(header, orders, spent):
        orders[field][np.flatnonzero(orders["disclosed"])[0]] = value

    return forge


def swap_stops(header, orders, spent):
    buys = np.flatnonzero((orders["op"] == Op.STOP) & (orders["side"] == Side.BUY))
    orders[buys[[0, 1]]] = orders[buys[[1, 0]]]


DAY_FORGERIES = {
    "market order while open": set_header(8, Phase.OPEN),
    "stamp above seq": set_order_where(Op.STOP, "stamp", 10**6),
    "stamp zero": set_order_where(Op.STOP, "stamp", 0),
    "stops out of stop order": swap_stops,
    "trigger on a resting order": set_order_where(Op.LIMIT, "trigger", 100),
    "disclosed on a stop": set_order_where(Op.STOP, "disclosed", 5),
    "stop-market with a price": set_order_where(Op.STOP, "price", 100),
    "trigger out of band": set_order_where(Op.STOP_LIMIT, "trigger", 121),
    "stop-limit on the wrong side": set_order_where(Op.STOP_LIMIT, "price", 110),
    "market order with a price": set_order_where(Op.MARKET, "price", 100),
    "market order not IOC": set_order_where(Op.MARKET, "tif", Tif.GTC),
    "unknown op": set_order_where(Op.MARKET, "op", 7),
    "iceberg shows more than disclosed": set_iceberg("shown", 60),
    "iceberg shows nothing": set_iceberg("shown", 0),
    "iceberg disclosed off lot": set_iceberg("disclosed", -30),
    "plain order shows less than its qty": set_order_where(Op.LIMIT, "shown", 10),
    "resting order after the waiting ones": lambda header, orders, spent: orders.__setitem__(
        slice(None), orders[::-1]
    ),
}


@pytest.mark.parametrize("forge", DAY_FORGERIES.values(), ids=list(DAY_FORGERIES))
def test_restore_refuses_a_forged_trading_day_snapshot(forge):
    snap = pre_open_book().snapshot()
    header, orders, spent = split_snapshot(snap)
    assert seal(header, orders, spent) == snap
    forge(header, orders, spent)
    with pytest.raises(ValueError):
        engine_class().restore(seal(header, orders, spent))
