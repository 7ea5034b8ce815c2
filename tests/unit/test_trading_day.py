"""The trading day (docs/engine.md, "The trading day"): stops, icebergs, halts, phases.

Every test runs on the engine and on the reference model (``book_cls``) and asserts the
exact events (``call``/``send`` check symbol, seq, op and ts too) and the book after.
A rejected command must leave the book as it was (``unchanged``).
"""

from __future__ import annotations

import pytest

from brokercore.engine.records import INT64_MAX, Op, Phase, Reason, Side, Stp, Tif
from support import (
    CLOSED,
    HALTED,
    OPENED,
    PRE_OPENED,
    A,
    B,
    C,
    accepted,
    amended,
    book_ids,
    call,
    cancelled,
    day_state,
    expired,
    level_ids,
    order_tuples,
    rebanded,
    rejected,
    send,
    trade,
    triggered,
    uncrossed,
)

BUY, SELL = Side.BUY, Side.SELL
R = Reason
ST = Reason.SELF_TRADE


def new_book(book_cls, last_price=0, **kwargs):
    """Band 90..110, symbol 7; a trade of one lot at ``last_price`` first if given."""
    book = book_cls(90, 110, symbol=7, **kwargs)
    if last_price:
        lot = book.lot_size
        call(book, "limit", 901, SELL, last_price, lot, account=B)
        call(book, "limit", 902, BUY, last_price, lot, account=A)
        assert book.last_price == last_price and book.open_orders == 0
    return book


def rest(book, order_id, side, price, qty, account, **kwargs):
    """Place an order that must rest untouched (setup step)."""
    assert call(book, "limit", order_id, side, price, qty, account=account, **kwargs) == [
        accepted(order_id, side, price, qty, account)
    ]


def stop(book, order_id, side, qty, trigger, account, price=None, **kwargs):
    """A stop (stop-limit when ``price`` is given) that must be accepted and wait."""
    if price is None:
        events = call(book, "stop", order_id, side, qty, trigger, account=account, **kwargs)
    else:
        events = call(
            book, "stop_limit", order_id, side, price, qty, trigger, account=account, **kwargs
        )
    assert events == [accepted(order_id, side, price or 0, qty, account)]
    return book.seq  # its stamp


def unchanged(book):
    """What a rejected command must not change (seq aside)."""
    return {key: value for key, value in day_state(book).items() if key != "seq"}


def stamps(book):
    return dict(zip(book_ids(book), book.orders()["stamp"].tolist(), strict=True))


# ------------------------------------------------------------------- stops


def test_a_stop_waits_outside_the_book(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 105, 10, B)
    stamp = stop(book, 2, BUY, 5, 104, A)
    assert book.best_bid() is None and book.depth(5)[0].tolist() == []
    assert book.open_orders == 2
    assert order_tuples(book.orders()) == [
        (1, B, 105, 10, SELL, Tif.GTC, Stp.DEFAULT, 0, Op.LIMIT, 10, 0, 0, 0),
        (2, A, 0, 5, BUY, Tif.DAY, Stp.DEFAULT, 0, Op.STOP, 5, 0, 104, stamp),
    ]
    found = book.order(2)
    assert (found.op, found.trigger, found.price, found.qty) == (Op.STOP, 104, 0, 5)


def test_a_trade_at_the_trigger_enters_a_stop_market(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 3, BUY, 5, 102, A)
    rest(book, 4, SELL, 102, 3, B)
    rest(book, 5, SELL, 104, 10, B)
    assert call(book, "limit", 6, BUY, 102, 3, account=C) == [
        accepted(6, BUY, 102, 3, C),
        trade(6, BUY, 102, 3, 0, 4, 0, C, B),
        triggered(3, BUY, 0, 5, 102, A),
        trade(3, BUY, 104, 5, 0, 5, 5, A, B),
    ]
    assert book_ids(book) == [5]
    assert book.last_price == 104


def test_stops_reached_by_one_step_enter_by_stamp_with_the_last_price_at_entry(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 10, BUY, 1, 103, A)  # older stamp, higher trigger
    stop(book, 11, BUY, 1, 101, A)
    rest(book, 20, SELL, 101, 1, B)
    rest(book, 21, SELL, 103, 1, B)
    rest(book, 22, SELL, 105, 5, B)
    assert call(book, "limit", 30, BUY, 103, 2, account=C) == [
        accepted(30, BUY, 103, 2, C),
        trade(30, BUY, 101, 1, 1, 20, 0, C, B),
        trade(30, BUY, 103, 1, 0, 21, 0, C, B),
        triggered(10, BUY, 0, 1, 103, A),
        trade(10, BUY, 105, 1, 0, 22, 4, A, B),
        triggered(11, BUY, 0, 1, 105, A),
        trade(11, BUY, 105, 1, 0, 22, 3, A, B),
    ]


def test_a_triggered_stops_trades_trigger_more_stops_in_the_same_command(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 40, SELL, 2, 99, A)
    stop(book, 41, SELL, 2, 97, A, price=96)
    rest(book, 50, BUY, 99, 2, B)
    rest(book, 51, BUY, 97, 2, B)
    rest(book, 52, BUY, 96, 5, B)
    assert call(book, "limit", 60, SELL, 99, 2, account=C) == [
        accepted(60, SELL, 99, 2, C),
        trade(60, SELL, 99, 2, 0, 50, 0, C, B),
        triggered(40, SELL, 0, 2, 99, A),
        trade(40, SELL, 97, 2, 0, 51, 0, A, B),
        triggered(41, SELL, 96, 2, 97, A),
        trade(41, SELL, 96, 2, 0, 52, 3, A, B),
    ]
    assert open_qty(book) == {52: 3}
    assert book.last_price == 96


def open_qty(book):
    return dict(zip(book_ids(book), book.orders()["qty"].tolist(), strict=True))


def test_a_stop_enters_after_the_triggering_order_rested(book_cls):
    book = new_book(book_cls, last_price=102)
    rest(book, 1, SELL, 100, 1, B)
    stop(book, 2, SELL, 2, 100, A)
    assert call(book, "limit", 3, BUY, 101, 5, account=C) == [
        accepted(3, BUY, 101, 5, C),
        trade(3, BUY, 100, 1, 4, 1, 0, C, B),
        triggered(2, SELL, 0, 2, 100, A),
        trade(2, SELL, 101, 2, 0, 3, 2, A, C),
    ]
    assert open_qty(book) == {3: 2}


def test_a_stop_limit_rests_at_the_tail_with_priority_from_its_trigger(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 70, BUY, 5, 102, A, price=103, tif=Tif.GTC)
    rest(book, 71, BUY, 103, 3, B)
    assert call(book, "limit", 72, SELL, 102, 1, account=C) == [
        accepted(72, SELL, 102, 1, C),
        trade(72, SELL, 103, 1, 0, 71, 2, C, B),
        triggered(70, BUY, 103, 5, 103, A),
    ]
    assert level_ids(book, 103) == [71, 70]
    assert order_tuples(book.level(103))[1] == (
        70, A, 103, 5, BUY, Tif.GTC, Stp.DEFAULT, 0, Op.LIMIT, 5, 0, 0, 0
    )  # fmt: skip


def test_a_stop_market_meeting_an_empty_side_is_cancelled(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 3, BUY, 5, 101, A)
    rest(book, 4, SELL, 101, 1, B)
    assert call(book, "limit", 5, BUY, 101, 1, account=C) == [
        accepted(5, BUY, 101, 1, C),
        trade(5, BUY, 101, 1, 0, 4, 0, C, B),
        triggered(3, BUY, 0, 5, 101, A),
        cancelled(3, BUY, 0, 5, R.NO_LIQUIDITY, A),
    ]
    assert book.open_orders == 0


def test_a_stop_limit_ioc_remainder_is_cancelled(book_cls):
    book = new_book(book_cls, last_price=100)
    stop(book, 3, BUY, 5, 101, A, price=101, tif=Tif.IOC)
    rest(book, 4, SELL, 101, 3, B)
    assert call(book, "limit", 5, BUY, 101, 1, account=C) == [
        accepted(5, BUY, 101, 1, C),
        trade(5, BUY, 101, 1, 0, 4, 2, C, B),
        triggered(3, BUY, 101, 5, 101, A),
        trade(3, BUY, 101, 2, 3, 4, 0, A, B),
        cancelled(3, BUY, 101, 3, R.IOC_REMAINDER, A),
    ]


def test_sell_stops_are_accepted_before_the_first_trade(book_cls):
    book = new_book(book_cls)
    assert book.last_price == 0
    stop(book, 1, SELL, 5, 95, A)
    stop(book, 2, BUY, 5, 95, A)
    assert book.open_orders == 2


def test_cancel_of_a_waiting_stop(book_cls):
    book = new_book(book_cls)
    stop(book, 3, BUY, 5, 104, A, price=105)
    before = unchanged(book)
    assert call(book, "cancel", 3, account=B) == [rejected(R.NOT_OWNER, 3, account=B)]
    assert unchanged(book) == before
    assert call(book, "cancel", 3, account=A) == [cancelled(3, BUY, 105, 5, R.USER_CANCEL, A)]
    assert book.open_orders == 0


def test_amend_of_a_waiting_stop_and_its_stamp(book_cls):
    book = new_book(book_cls, last_price=100)
    stamp = stop(book, 3, BUY, 5, 104, A, price=105)
    stop(book, 4, BUY, 5, 104, A)
    assert call(book, "amend", 3, 105, 4, account=A) == [amended(3, BUY, 105, 4, account=A)]
    assert stamps(book)[3] == stamp  # only the quantity went down
    assert call(book, "amend", 3, 106, 4, account=A) == [amended(3, BUY, 106, 4, account=A)]
    assert stamps(book)[3] == book.seq
    assert call(book, "amend", 3, 106, 4, account=A, trigger=105) == [
        amended(3, BUY, 106, 4, account=A)
    ]
    assert stamps(book)[3] == book.seq and book.order(3).trigger == 105
    assert book_ids(book) == [4, 3]  # stop order: buy triggers ascending
    before = unchanged(book)
    for args, kwargs, reason in [
        ((3, 104, 4), {}, R.INVALID_TRIGGER),  # limit below the kept trigger 105
        ((3, 106, 4), {"trigger": 100}, R.INVALID_TRIGGER),  # reached: <= last price 100
        ((3, 106, 4), {"trigger": 111}, R.INVALID_TRIGGER),  # off the band
        ((3, 106, 4), {"disclosed": 1}, R.INVALID_DISCLOSED),
        ((3, 111, 4), {}, R.PRICE_OUT_OF_BAND),
        ((3, 106, 0), {}, R.INVALID_QUANTITY),
        ((4, 5, 4), {}, R.INVALID_PRICE),  # a stop-market has no limit
    ]:
        events = call(book, "amend", *args, account=A, **kwargs)
        assert events == [rejected(reason, args[0], 0, args[1], args[2], A)], (args, kwargs)
        assert unchanged(book) == before


def test_close_expires_waiting_markets_day_orders_and_day_stops_in_order(book_cls):
    book = new_book(book_cls)
    call(book, "close")
    call(book, "pre_open")
    call(book, "market", 1, SELL, 10, account=B)
    call(book, "market", 2, BUY, 20, account=A)
    rest(book, 3, BUY, 99, 10, A, tif=Tif.DAY)
    rest(book, 4, SELL, 101, 10, B)
    rest(book, 5, SELL, 100, 10, B, tif=Tif.DAY)
    rest(book, 6, BUY, 99, 10, A, tif=Tif.DAY)
    stop(book, 7, BUY, 1, 105, A)
    stop(book, 8, BUY, 1, 103, A)
    stop(book, 9, SELL, 1, 95, A)
    stop(book, 10, BUY, 1, 104, A, tif=Tif.GTC)
    stop(book, 11, SELL, 1, 97, A, price=96, tif=Tif.IOC)
    assert call(book, "close") == [
        expired(2, BUY, 0, 20, A),
        expired(1, SELL, 0, 10, B),
        expired(3, BUY, 99, 10, A),
        expired(6, BUY, 99, 10, A),
        expired(5, SELL, 100, 10, B),
        expired(8, BUY, 0, 1, A),
        expired(7, BUY, 0, 1, A),
        expired(11, SELL, 96, 1, A),
        expired(9, SELL, 0, 1, A),
        CLOSED,
    ]
    assert book_ids(book) == [4, 10]
    assert book.phase == Phase.CLOSED


def test_reband_cancels_stops_off_the_band_after_the_book(book_cls):
    book = new_book(book_cls)
    stop(book, 1, BUY, 1, 108, A)
    stop(book, 2, SELL, 1, 95, A, price=92)
    stop(book, 3, BUY, 1, 100, A, price=106)
    rest(book, 4, BUY, 93, 1, B)
    assert call(book, "reband", 94, 107) == [
        cancelled(4, BUY, 93, 1, R.PRICE_OUT_OF_BAND, B),
        cancelled(1, BUY, 0, 1, R.PRICE_OUT_OF_BAND, A),
        cancelled(2, SELL, 92, 1, R.PRICE_OUT_OF_BAND, A),
        rebanded(94, 107),
    ]
    assert book_ids(book) == [3]


def test_reband_quantity_pass_walks_book_waiting_markets_then_stops(book_cls):
    book = new_book(book_cls)
    big = INT64_MAX // 110
    call(book, "close")
    call(book, "pre_open")
    stop(book, 1, BUY, big, 105, A)
    call(book, "market", 2, SELL, big, account=B)
    rest(book, 3, BUY, 99, big, A)
    rest(book, 4, BUY, 98, 1, A)
    assert call(book, "reband", 90, 200) == [
        cancelled(3, BUY, 99, big, R.QUANTITY_TOO_LARGE, A),
        cancelled(2, SELL, 0, big, R.QUANTITY_TOO_LARGE, B),
        cancelled(1, BUY, 0, big, R.QUANTITY_TOO_LARGE, A),
        rebanded(90, 200),
    ]
    assert book_ids(book) == [4]


# ---------------------------------------------------------------- icebergs


def iceberg_row(order_id, account, side, price, qty, shown, disclosed, tif=Tif.GTC):
    return (
        order_id,
        account,
        price,
        qty,
        side,
        tif,
        Stp.DEFAULT,
        0,
        Op.LIMIT,
        shown,
        disclosed,
        0,
        0,
    )


def test_an_iceberg_shows_only_its_disclosed_part(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 100, B, disclosed=20)
    rest(book, 2, SELL, 100, 10, C)
    assert book.best_ask() == (100, 30)
    assert book.depth(5)[1].tolist() == [(100, 30, 2)]
    assert order_tuples(book.level(100))[0] == iceberg_row(1, B, SELL, 100, 100, 20, 20)
    found = book.order(1)
    assert (found.qty, found.shown, found.disclosed) == (100, 20, 20)


def test_an_iceberg_maker_refreshes_at_the_tail_and_the_taker_goes_on(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, B, disclosed=20)
    rest(book, 2, SELL, 100, 10, C)
    assert call(book, "limit", 3, BUY, 100, 35, account=A) == [
        accepted(3, BUY, 100, 35, A),
        trade(3, BUY, 100, 20, 15, 1, 30, A, B),
        trade(3, BUY, 100, 10, 5, 2, 0, A, C),
        trade(3, BUY, 100, 5, 0, 1, 25, A, B),
    ]
    assert order_tuples(book.orders()) == [iceberg_row(1, B, SELL, 100, 25, 15, 20)]
    assert book.best_ask() == (100, 15)


def test_an_iceberg_taker_trades_its_whole_quantity_then_rests_showing_a_part(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 10, B)
    rest(book, 2, SELL, 101, 10, B)
    assert call(book, "limit", 3, BUY, 101, 40, account=A, disclosed=10) == [
        accepted(3, BUY, 101, 40, A),
        trade(3, BUY, 100, 10, 30, 1, 0, A, B),
        trade(3, BUY, 101, 10, 20, 2, 0, A, B),
    ]
    assert order_tuples(book.orders()) == [iceberg_row(3, A, BUY, 101, 20, 10, 10)]
    assert book.best_bid() == (101, 10)


def test_self_trade_decrement_against_an_iceberg_uses_its_shown_part(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, A, disclosed=20)
    assert call(book, "limit", 2, BUY, 100, 30, account=A, stp=Stp.DECREMENT) == [
        accepted(2, BUY, 100, 30, A),
        amended(1, SELL, 100, 30, ST, A),
        amended(2, BUY, 100, 10, ST, A),
        amended(1, SELL, 100, 20, ST, A),
        cancelled(2, BUY, 100, 10, ST, A),
    ]
    assert order_tuples(book.orders()) == [iceberg_row(1, A, SELL, 100, 20, 10, 20)]


def test_amend_of_an_iceberg(book_cls):
    book = new_book(book_cls)
    rest(book, 1, BUY, 99, 100, A, disclosed=20)
    rest(book, 2, BUY, 99, 10, B)
    call(book, "limit", 3, SELL, 99, 15, account=C)  # takes 15 of 1's shown 20
    assert order_tuples(book.level(99))[0] == iceberg_row(1, A, BUY, 99, 85, 5, 20)
    # in place: same price, less, disclosed kept (0) or the same: priority and shown kept
    assert call(book, "amend", 1, 99, 80, account=A) == [amended(1, BUY, 99, 80, account=A)]
    assert call(book, "amend", 1, 99, 80, account=A, disclosed=20) == [
        amended(1, BUY, 99, 80, account=A)
    ]
    assert level_ids(book, 99) == [1, 2]
    assert order_tuples(book.level(99))[0] == iceberg_row(1, A, BUY, 99, 80, 5, 20)
    # a new disclosed quantity loses priority and shows a whole new part
    assert call(book, "amend", 1, 99, 80, account=A, disclosed=40) == [
        amended(1, BUY, 99, 80, account=A)
    ]
    assert level_ids(book, 99) == [2, 1]
    assert order_tuples(book.level(99))[1] == iceberg_row(1, A, BUY, 99, 80, 40, 40)
    before = unchanged(book)
    for args, kwargs, reason in [
        ((1, 99, 500), {}, R.INVALID_DISCLOSED),  # 40 is under 10 % of 500
        ((1, 99, 30), {}, R.INVALID_DISCLOSED),  # 40 is more than 30
        ((1, 99, 80), {"disclosed": -10}, R.INVALID_DISCLOSED),
        ((1, 99, 80), {"trigger": 100}, R.INVALID_TRIGGER),
    ]:
        events = call(book, "amend", *args, account=A, **kwargs)
        assert events == [rejected(reason, args[0], 0, args[1], args[2], A)], (args, kwargs)
        assert unchanged(book) == before


def test_an_iceberg_of_many_tiny_parts_is_met_one_part_at_a_time(book_cls):
    book = new_book(book_cls, min_disclosed_percent=0)
    big = 10**12
    rest(book, 1, BUY, 100, big, A, disclosed=1)
    assert call(book, "market", 2, SELL, 3, account=B) == [
        accepted(2, SELL, 0, 3, B),
        trade(2, SELL, 100, 1, 2, 1, big - 1, B, A),
        trade(2, SELL, 100, 1, 1, 1, big - 2, B, A),
        trade(2, SELL, 100, 1, 0, 1, big - 3, B, A),
    ]
    assert call(book, "amend", 1, 89, 10, account=A) == [
        rejected(R.PRICE_OUT_OF_BAND, 1, 0, 89, 10, A)
    ]
    assert open_qty(book) == {1: big - 3}


def test_a_large_waiting_stop_needs_no_room_for_parts_no_iceberg_has(book_cls):
    """Room for events is bounded by the icebergs' parts, not by the stops' lots: with a
    stop for the most a book allows waiting, a plain order amended to half of it and a
    crossing iceberg of the whole (a tenth shown) trade in a handful of events."""
    book = new_book(book_cls, last_price=100)
    lot = book.lot_size
    big = book.max_qty - book.max_qty % (10 * lot)
    half, part = big // (2 * lot) * lot, big // 10
    stop(book, 1, BUY, big, 101, C)
    rest(book, 2, BUY, 101, lot, A)
    bad = call(book, "amend", 2, 101, big, account=A, disclosed=lot)  # below 10 %: refused
    assert bad == [rejected(R.INVALID_DISCLOSED, 2, 0, 101, big, A)]
    assert call(book, "amend", 2, 101, half, account=A) == [amended(2, BUY, 101, half, account=A)]
    events = call(book, "limit", 3, SELL, 101, big, account=B, disclosed=part)
    assert events[:3] == [
        accepted(3, SELL, 101, big, B),
        trade(3, SELL, 101, half, big - half, 2, 0, B, A),
        triggered(1, BUY, 0, big, 101, C),
    ]
    assert len(events) < 20 and book.open_orders == 0


def test_min_disclosed_percent_is_a_book_setting(book_cls):
    book = new_book(book_cls, min_disclosed_percent=0)
    rest(book, 1, BUY, 99, 1000, A, disclosed=1)
    assert book.best_bid() == (99, 1)
    for percent in (-1, 101):
        with pytest.raises(ValueError):
            book_cls(90, 110, min_disclosed_percent=percent)


# ---------------------------------------------------- validation, bad input


def new_order(op, side=BUY, price=0, qty=20, tif=Tif.GTC, trigger=0, disclosed=0, flags=0):
    return dict(
        op=op,
        order_id=77,
        account=A,
        side=side,
        price=price,
        qty=qty,
        tif=tif,
        trigger=trigger,
        disclosed=disclosed,
        flags=flags,
    )


BAD_NEW_ORDERS = {
    "stop buy trigger reached": (new_order(Op.STOP, trigger=100), R.INVALID_TRIGGER),
    "stop sell trigger reached": (new_order(Op.STOP, SELL, trigger=100), R.INVALID_TRIGGER),
    "stop trigger off band": (new_order(Op.STOP, trigger=111), R.INVALID_TRIGGER),
    "stop with a price": (new_order(Op.STOP, price=105, trigger=104), R.INVALID_PRICE),
    "stop ioc": (new_order(Op.STOP, trigger=104, tif=Tif.IOC), R.INVALID_TIF),
    "stop-limit fok": (
        new_order(Op.STOP_LIMIT, price=105, trigger=104, tif=Tif.FOK),
        R.INVALID_TIF,
    ),
    "stop-limit buy limit under trigger": (
        new_order(Op.STOP_LIMIT, price=101, trigger=102),
        R.INVALID_TRIGGER,
    ),
    "stop-limit sell limit over trigger": (
        new_order(Op.STOP_LIMIT, SELL, price=99, trigger=98),
        R.INVALID_TRIGGER,
    ),
    "stop-limit price off band": (
        new_order(Op.STOP_LIMIT, price=111, trigger=104),
        R.PRICE_OUT_OF_BAND,
    ),
    "stop disclosed": (new_order(Op.STOP, trigger=104, disclosed=10), R.INVALID_DISCLOSED),
    "stop flags": (new_order(Op.STOP, trigger=104, flags=1), R.INVALID_FLAGS),
    "stop bad qty before bad price": (new_order(Op.STOP, price=5, qty=15), R.INVALID_QUANTITY),
    "limit with a trigger": (new_order(Op.LIMIT, price=99, trigger=101), R.INVALID_TRIGGER),
    "market with a trigger": (new_order(Op.MARKET, tif=Tif.IOC, trigger=99), R.INVALID_TRIGGER),
    "market disclosed": (new_order(Op.MARKET, tif=Tif.IOC, disclosed=10), R.INVALID_DISCLOSED),
    "iceberg larger than the order": (
        new_order(Op.LIMIT, price=99, disclosed=30),
        R.INVALID_DISCLOSED,
    ),
    "iceberg off lot": (new_order(Op.LIMIT, price=99, qty=200, disclosed=25), R.INVALID_DISCLOSED),
    "iceberg under 10 %": (
        new_order(Op.LIMIT, price=99, qty=200, disclosed=10),
        R.INVALID_DISCLOSED,
    ),
    "iceberg ioc": (
        new_order(Op.LIMIT, SELL, price=99, tif=Tif.IOC, disclosed=10),
        R.INVALID_DISCLOSED,
    ),
    "iceberg negative": (new_order(Op.LIMIT, price=99, disclosed=-10), R.INVALID_DISCLOSED),
    "iceberg bad qty first": (
        new_order(Op.LIMIT, price=99, qty=0, disclosed=-10),
        R.INVALID_QUANTITY,
    ),
    "iceberg before band": (new_order(Op.LIMIT, price=111, disclosed=30), R.INVALID_DISCLOSED),
}


@pytest.mark.parametrize("fields, reason", BAD_NEW_ORDERS.values(), ids=BAD_NEW_ORDERS)
def test_bad_new_orders_are_rejected_and_change_nothing(book_cls, fields, reason):
    book = new_book(book_cls, last_price=100, lot_size=10)
    rest(book, 1, SELL, 101, 30, B)
    stop(book, 2, BUY, 10, 105, A)
    before = unchanged(book)
    assert send(book, **fields) == [
        rejected(reason, 77, fields["side"], fields["price"], fields["qty"], A)
    ]
    assert unchanged(book) == before


# -------------------------------------------------------------------- halts


def test_a_halt_refuses_orders_and_amends_allows_cancels_and_reopens_by_auction(book_cls):
    book = new_book(book_cls)
    rest(book, 1, BUY, 99, 10, A)
    rest(book, 2, SELL, 101, 10, B)
    stop(book, 3, BUY, 10, 105, A)
    assert call(book, "halt") == [HALTED]
    assert book.phase == Phase.HALTED and not book.is_open
    before = unchanged(book)
    assert call(book, "limit", 4, SELL, 99, 10, account=C) == [
        rejected(R.HALTED, 4, SELL, 99, 10, C)
    ]
    assert call(book, "market", 5, BUY, 10, account=C) == [rejected(R.HALTED, 5, BUY, 0, 10, C)]
    assert call(book, "stop", 6, BUY, 10, 104, account=C) == [rejected(R.HALTED, 6, BUY, 0, 10, C)]
    assert call(book, "amend", 1, 98, 10, account=A) == [rejected(R.HALTED, 1, 0, 98, 10, A)]
    for method in ("halt", "open", "uncross"):
        assert call(book, method) == [rejected(R.SESSION_STATE)]
    assert unchanged(book) == before
    assert call(book, "cancel", 2, account=B) == [cancelled(2, SELL, 101, 10, R.USER_CANCEL, B)]
    assert call(book, "reband", 95, 108) == [rebanded(95, 108)]  # allowed while halted
    assert call(book, "pre_open") == [PRE_OPENED]
    # the ids spent before and during the halt stay spent: same session
    assert call(book, "limit", 4, SELL, 99, 10, account=C) == [
        rejected(R.DUPLICATE_ORDER_ID, 4, SELL, 99, 10, C)
    ]
    rest(book, 7, SELL, 99, 10, C)
    assert call(book, "uncross") == [
        trade(1, BUY, 99, 10, 0, 7, 0, A, C),
        uncrossed(99, 10, 0, 0),
        OPENED,
    ]
    assert book_ids(book) == [3]


def test_a_halt_in_pre_open_keeps_the_waiting_market_orders(book_cls):
    book = new_book(book_cls)
    call(book, "close")
    call(book, "pre_open")
    call(book, "market", 1, BUY, 10, account=A)
    rest(book, 2, SELL, 100, 10, B)
    assert call(book, "halt") == [HALTED]
    assert call(book, "pre_open") == [PRE_OPENED]
    assert call(book, "uncross", 100) == [
        trade(1, BUY, 100, 10, 0, 2, 0, A, B),
        uncrossed(100, 10, 0, 0),
        OPENED,
    ]


# ------------------------------------------------------------------- phases


def in_phase(book_cls, phase):
    book = new_book(book_cls)
    steps = {
        Phase.OPEN: [],
        Phase.CLOSED: ["close"],
        Phase.PRE_OPEN: ["close", "pre_open"],
        Phase.HALTED: ["halt"],
    }[phase]
    for method in steps:
        call(book, method)
    assert book.phase == phase
    return book


ILLEGAL = [
    ("open", Phase.OPEN),
    ("open", Phase.PRE_OPEN),
    ("open", Phase.HALTED),
    ("pre_open", Phase.PRE_OPEN),
    ("pre_open", Phase.OPEN),
    ("uncross", Phase.CLOSED),
    ("uncross", Phase.OPEN),
    ("uncross", Phase.HALTED),
    ("halt", Phase.CLOSED),
    ("halt", Phase.HALTED),
    ("close", Phase.CLOSED),
]


@pytest.mark.parametrize("method, phase", ILLEGAL, ids=[f"{m} in {p.name}" for m, p in ILLEGAL])
def test_illegal_phase_transitions_are_session_state(book_cls, method, phase):
    book = in_phase(book_cls, phase)
    before = unchanged(book)
    assert call(book, method) == [rejected(R.SESSION_STATE)]
    assert unchanged(book) == before


LEGAL = [
    ("open", Phase.CLOSED, OPENED, Phase.OPEN),
    ("pre_open", Phase.CLOSED, PRE_OPENED, Phase.PRE_OPEN),
    ("pre_open", Phase.HALTED, PRE_OPENED, Phase.PRE_OPEN),
    ("halt", Phase.OPEN, HALTED, Phase.HALTED),
    ("halt", Phase.PRE_OPEN, HALTED, Phase.HALTED),
    ("close", Phase.OPEN, CLOSED, Phase.CLOSED),
    ("close", Phase.PRE_OPEN, CLOSED, Phase.CLOSED),
    ("close", Phase.HALTED, CLOSED, Phase.CLOSED),
]


@pytest.mark.parametrize(
    "method, phase, event, after", LEGAL, ids=[f"{m} in {p.name}" for m, p, _, _ in LEGAL]
)
def test_legal_phase_transitions(book_cls, method, phase, event, after):
    book = in_phase(book_cls, phase)
    assert call(book, method) == [event]
    assert book.phase == after and book.is_open == (after == Phase.OPEN)


PRE_OPEN_REFUSALS = {
    "limit ioc": ("limit", (9, BUY, 99, 10), {"tif": Tif.IOC}, R.SESSION_STATE),
    "limit fok": ("limit", (9, BUY, 99, 10), {"tif": Tif.FOK}, R.SESSION_STATE),
    "post only": ("limit", (9, BUY, 99, 10), {"post_only": True}, R.SESSION_STATE),
    "market fok": ("market", (9, BUY, 10), {"tif": Tif.FOK}, R.SESSION_STATE),
}


@pytest.mark.parametrize(
    "method, args, kwargs, reason", PRE_OPEN_REFUSALS.values(), ids=list(PRE_OPEN_REFUSALS)
)
def test_pre_open_refuses_what_the_auction_cannot_honour(book_cls, method, args, kwargs, reason):
    book = in_phase(book_cls, Phase.PRE_OPEN)
    before = unchanged(book)
    price = args[2] if method == "limit" else 0
    assert call(book, method, *args, account=A, **kwargs) == [
        rejected(reason, args[0], args[1], price, args[-1], A)
    ]
    assert unchanged(book) == before


def test_pre_open_orders_rest_crossed_and_amends_do_not_match(book_cls):
    book = in_phase(book_cls, Phase.PRE_OPEN)
    rest(book, 1, BUY, 102, 10, A)
    rest(book, 2, SELL, 98, 10, B)
    rest(book, 3, SELL, 99, 10, C)
    assert book.best_bid() == (102, 10) and book.best_ask() == (98, 10)
    assert level_ids(book, 102) == [1]
    assert call(book, "market", 4, SELL, 5, account=C) == [accepted(4, SELL, 0, 5, C)]
    assert call(book, "market", 5, BUY, 5, account=C) == [accepted(5, BUY, 0, 5, C)]
    assert book.order(5).op == Op.MARKET and book.open_orders == 5
    assert call(book, "amend", 3, 98, 10, account=C) == [amended(3, SELL, 98, 10, account=C)]
    assert level_ids(book, 98) == [2, 3]
    assert call(book, "amend", 5, 0, 4, account=C) == [rejected(R.SESSION_STATE, 5, 0, 0, 4, C)]
    assert call(book, "cancel", 5, account=C) == [cancelled(5, BUY, 0, 5, R.USER_CANCEL, C)]
    assert book_ids(book) == [1, 2, 3, 4]


def test_a_new_session_forgets_spent_ids_a_halt_does_not(book_cls):
    book = new_book(book_cls)
    rest(book, 1, BUY, 99, 10, A)
    call(book, "cancel", 1, account=A)
    call(book, "close")
    assert call(book, "limit", 2, BUY, 99, 10, account=A) == [
        rejected(R.MARKET_CLOSED, 2, BUY, 99, 10, A)
    ]
    assert call(book, "stop", 3, BUY, 10, 104, account=A) == [
        rejected(R.MARKET_CLOSED, 3, BUY, 0, 10, A)
    ]
    call(book, "pre_open")
    rest(book, 1, BUY, 99, 10, A)


# FOK against icebergs (docs/engine.md, FOK fillability): at each level the FIFO's shown
# parts in turn, then the icebergs' hidden parts, which their refreshes show at the tail.


def test_a_fok_fills_through_an_icebergs_refreshes(book_cls):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, B, disclosed=10)
    rest(book, 2, SELL, 100, 10, C)
    assert call(book, "market", 3, BUY, 35, account=A, tif=Tif.FOK) == [
        accepted(3, BUY, 0, 35, A),
        trade(3, BUY, 100, 10, 25, 1, 40, A, B),
        trade(3, BUY, 100, 10, 15, 2, 0, A, C),
        trade(3, BUY, 100, 10, 5, 1, 30, A, B),
        trade(3, BUY, 100, 5, 0, 1, 25, A, B),
    ]
    before = unchanged(book)
    assert call(book, "limit", 4, BUY, 100, 30, account=A, tif=Tif.FOK) == [
        rejected(R.FOK_NOT_FILLABLE, 4, BUY, 100, 30, A)
    ]
    assert unchanged(book) == before


@pytest.mark.parametrize("own_disclosed", [0, 10], ids=["own plain", "own iceberg"])
@pytest.mark.parametrize("stp", [Stp.CANCEL_NEWEST, Stp.CANCEL_BOTH, Stp.DECREMENT])
def test_a_fok_that_would_meet_its_own_order_after_a_refresh_is_not_fillable(
    book_cls, own_disclosed, stp
):
    """The whole iceberg is more than the FOK, but only its shown 10 comes before A's own
    order: STP would stop or shrink the taker there, so the FOK is rejected (it used to be
    accepted and then partly filled)."""
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, B, disclosed=10)
    rest(book, 2, SELL, 100, 30, A, disclosed=own_disclosed)
    before = unchanged(book)
    assert call(book, "limit", 3, BUY, 100, 30, account=A, tif=Tif.FOK, stp=stp) == [
        rejected(R.FOK_NOT_FILLABLE, 3, BUY, 100, 30, A)
    ]
    assert unchanged(book) == before


@pytest.mark.parametrize("own_disclosed", [0, 10], ids=["own plain", "own iceberg"])
def test_a_fok_with_cancel_oldest_skips_its_own_order_and_fills_from_the_refreshes(
    book_cls, own_disclosed
):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, B, disclosed=10)
    rest(book, 2, SELL, 100, 30, A, disclosed=own_disclosed)
    assert call(book, "limit", 3, BUY, 100, 30, account=A, tif=Tif.FOK, stp=Stp.CANCEL_OLDEST) == [
        accepted(3, BUY, 100, 30, A),
        trade(3, BUY, 100, 10, 20, 1, 40, A, B),
        cancelled(2, SELL, 100, 30, ST, A),
        trade(3, BUY, 100, 10, 10, 1, 30, A, B),
        trade(3, BUY, 100, 10, 0, 1, 20, A, B),
    ]
    assert open_qty(book) == {1: 20}


@pytest.mark.parametrize("own_disclosed", [0, 10], ids=["own plain", "own iceberg"])
def test_a_fok_without_self_trade_prevention_trades_with_its_own_order(book_cls, own_disclosed):
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, B, disclosed=10)
    rest(book, 2, SELL, 100, 30, A, disclosed=own_disclosed)
    own_part = 10 if own_disclosed else 20  # a plain order gives all the FOK still needs
    events = call(book, "limit", 3, BUY, 100, 30, account=A, tif=Tif.FOK, stp=Stp.NONE)
    assert events[:3] == [
        accepted(3, BUY, 100, 30, A),
        trade(3, BUY, 100, 10, 20, 1, 40, A, B),
        trade(3, BUY, 100, own_part, 20 - own_part, 2, 30 - own_part, A, A),
    ]
    assert events[3:] == ([trade(3, BUY, 100, 10, 0, 1, 30, A, B)] if own_disclosed else [])


def test_a_fok_meeting_its_own_iceberg_first_counts_nothing_behind_it(book_cls):
    """A's own iceberg heads the level: CANCEL_NEWEST stops the taker there, whatever the
    level holds behind it; CANCEL_OLDEST cancels the whole iceberg (hidden part too)."""
    book = new_book(book_cls)
    rest(book, 1, SELL, 100, 50, A, disclosed=10)
    rest(book, 2, SELL, 100, 20, B)
    before = unchanged(book)
    for stp, qty in [(Stp.CANCEL_NEWEST, 5), (Stp.CANCEL_OLDEST, 25)]:
        assert call(book, "market", 3 + stp, BUY, qty, account=A, tif=Tif.FOK, stp=stp) == [
            rejected(R.FOK_NOT_FILLABLE, 3 + stp, BUY, 0, qty, A)
        ]
        assert unchanged(book) == before
    assert call(book, "market", 9, BUY, 20, account=A, tif=Tif.FOK, stp=Stp.CANCEL_OLDEST) == [
        accepted(9, BUY, 0, 20, A),
        cancelled(1, SELL, 100, 50, ST, A),
        trade(9, BUY, 100, 20, 0, 2, 0, A, B),
    ]
