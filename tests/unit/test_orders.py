"""Unit tests of docs/engine.md, one behaviour per test, with the exact expected events.

Every test runs against both the engine and the reference model (``book_cls``).
``call``/``send`` also check the fields common to all events of a command (symbol,
gap-free seq, op, ts), so the expected lists below spell out only the rest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from typing import NamedTuple

import numpy as np
import pytest

from brokercore.engine.records import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    INT64_MAX,
    LEVEL_DTYPE,
    MAX_BAND_LEVELS,
    ORDER_DTYPE,
    EventType,
    Flags,
    Op,
    Reason,
    RestingOrder,
    Side,
    Stp,
    Tif,
)
from support import (
    CLOSED,
    OPENED,
    A,
    B,
    C,
    accepted,
    amended,
    as_ev,
    book_ids,
    call,
    cancelled,
    commands,
    event_tuples,
    expired,
    level_ids,
    order_tuples,
    rebanded,
    rejected,
    send,
    trade,
)

BUY, SELL = Side.BUY, Side.SELL
R = Reason
ST = Reason.SELF_TRADE


def plain(qty: int) -> tuple[int, ...]:
    """The wave-2 ORDER_DTYPE fields of a plain resting order (op, shown, disclosed,
    trigger, stamp)."""
    return (Op.LIMIT, qty, 0, 0, 0)


@pytest.fixture
def book(book_cls):
    """Band 100..200, lot 1, symbol 7, default STP CANCEL_NEWEST."""
    return book_cls(100, 200, symbol=7)


def rest(book, order_id, side, price, qty, account, **kwargs):
    """Place an order that must rest untouched (setup step)."""
    assert call(book, "limit", order_id, side, price, qty, account=account, **kwargs) == [
        accepted(order_id, side, price, qty, account)
    ]


def open_qty(book):
    """{order_id: open qty} of the whole book."""
    return dict(zip(book_ids(book), book.orders()["qty"].tolist(), strict=True))


# ---------------------------------------------------------------- limit orders


def test_gtc_limit_rests_with_its_attributes(book):
    assert call(book, "limit", 1, BUY, 110, 5, account=A, ts=42) == [accepted(1, BUY, 110, 5, A)]
    assert order_tuples(book.orders()) == [(1, A, 110, 5, BUY, Tif.GTC, Stp.DEFAULT, 0, *plain(5))]
    assert book.order(1) == RestingOrder(1, A, BUY, 110, 5, Tif.GTC, Stp.DEFAULT, False, 5)


def test_close_expires_day_orders_in_book_order_and_keeps_gtc(book):
    rest(book, 1, BUY, 110, 5, A, tif=Tif.DAY)
    rest(book, 2, BUY, 120, 6, B, tif=Tif.DAY)
    rest(book, 3, BUY, 120, 7, A)
    rest(book, 4, SELL, 150, 8, C, tif=Tif.DAY)
    rest(book, 5, BUY, 120, 9, C, tif=Tif.DAY)
    assert call(book, "close", ts=9) == [
        expired(2, BUY, 120, 6, B),
        expired(5, BUY, 120, 9, C),
        expired(1, BUY, 110, 5, A),
        expired(4, SELL, 150, 8, C),
        CLOSED,
    ]
    assert book_ids(book) == [3]
    assert not book.is_open


def test_ioc_fills_what_it_can_and_cancels_the_rest(book):
    rest(book, 1, SELL, 110, 5, A)
    assert call(book, "limit", 2, BUY, 111, 8, account=B, tif=Tif.IOC) == [
        accepted(2, BUY, 111, 8, B),
        trade(2, BUY, 110, 5, 3, 1, 0, B, A),
        cancelled(2, BUY, 111, 3, R.IOC_REMAINDER, B),
    ]
    assert book.open_orders == 0


def test_ioc_that_does_not_cross_is_cancelled_whole(book):
    rest(book, 1, SELL, 110, 5, A)
    assert call(book, "limit", 2, BUY, 109, 4, account=B, tif=Tif.IOC) == [
        accepted(2, BUY, 109, 4, B),
        cancelled(2, BUY, 109, 4, R.IOC_REMAINDER, B),
    ]
    assert book_ids(book) == [1]


def three_asks(book):
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, SELL, 111, 5, A)
    rest(book, 3, SELL, 112, 5, A)


def test_fok_fills_completely_across_levels(book):
    three_asks(book)
    assert call(book, "limit", 4, BUY, 111, 8, account=B, tif=Tif.FOK) == [
        accepted(4, BUY, 111, 8, B),
        trade(4, BUY, 110, 5, 3, 1, 0, B, A),
        trade(4, BUY, 111, 3, 0, 2, 2, B, A),
    ]
    assert open_qty(book) == {2: 2, 3: 5}


def test_fok_not_fillable_within_its_limit_is_rejected_and_changes_nothing(book):
    three_asks(book)
    assert call(book, "limit", 4, BUY, 111, 11, account=B, tif=Tif.FOK) == [
        rejected(R.FOK_NOT_FILLABLE, 4, BUY, 111, 11, B)
    ]
    assert open_qty(book) == {1: 5, 2: 5, 3: 5}


def own_then_other_asks(book):
    """Asks: 1 (account A) then 2 (B) at 110, and 3 (B) at 111; each 5."""
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, SELL, 110, 5, B)
    rest(book, 3, SELL, 111, 5, B)


def test_fok_counts_own_orders_when_stp_is_none(book):
    own_then_other_asks(book)
    assert call(book, "limit", 4, BUY, 111, 10, account=A, tif=Tif.FOK, stp=Stp.NONE) == [
        accepted(4, BUY, 111, 10, A),
        trade(4, BUY, 110, 5, 5, 1, 0, A, A),
        trade(4, BUY, 110, 5, 0, 2, 0, A, B),
    ]


def test_fok_skips_own_orders_under_cancel_oldest(book):
    own_then_other_asks(book)
    assert call(book, "limit", 4, BUY, 111, 10, account=A, tif=Tif.FOK, stp=Stp.CANCEL_OLDEST) == [
        accepted(4, BUY, 111, 10, A),
        cancelled(1, SELL, 110, 5, ST, A),
        trade(4, BUY, 110, 5, 5, 2, 0, A, B),
        trade(4, BUY, 111, 5, 0, 3, 0, A, B),
    ]
    assert book.open_orders == 0


def test_fok_under_cancel_oldest_is_not_fillable_by_own_orders(book):
    own_then_other_asks(book)
    assert call(book, "limit", 4, BUY, 111, 11, account=A, tif=Tif.FOK, stp=Stp.CANCEL_OLDEST) == [
        rejected(R.FOK_NOT_FILLABLE, 4, BUY, 111, 11, A)
    ]
    assert book_ids(book) == [1, 2, 3]


@pytest.mark.parametrize("mode", [Stp.CANCEL_NEWEST, Stp.CANCEL_BOTH, Stp.DECREMENT])
def test_fok_walk_ends_at_own_order(book, mode):
    own_then_other_asks(book)
    assert call(book, "limit", 4, BUY, 111, 5, account=A, tif=Tif.FOK, stp=mode) == [
        rejected(R.FOK_NOT_FILLABLE, 4, BUY, 111, 5, A)
    ]
    assert book_ids(book) == [1, 2, 3]


@pytest.mark.parametrize("mode", [Stp.CANCEL_NEWEST, Stp.CANCEL_BOTH, Stp.DECREMENT])
def test_fok_filled_before_reaching_own_order(book, mode):
    rest(book, 1, SELL, 110, 5, B)
    rest(book, 2, SELL, 110, 5, A)
    assert call(book, "limit", 3, BUY, 110, 5, account=A, tif=Tif.FOK, stp=mode) == [
        accepted(3, BUY, 110, 5, A),
        trade(3, BUY, 110, 5, 0, 1, 0, A, B),
    ]
    assert book_ids(book) == [2]


# --------------------------------------------------------------- market orders


def test_market_sweeps_levels_at_maker_prices(book):
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, SELL, 112, 3, A)
    rest(book, 3, SELL, 115, 4, B)
    assert call(book, "market", 4, BUY, 10, account=C) == [
        accepted(4, BUY, 0, 10, C),
        trade(4, BUY, 110, 5, 5, 1, 0, C, A),
        trade(4, BUY, 112, 3, 2, 2, 0, C, A),
        trade(4, BUY, 115, 2, 0, 3, 2, C, B),
    ]
    assert open_qty(book) == {3: 2}


def test_market_sell_sweeps_bids_from_the_highest(book):
    rest(book, 1, BUY, 110, 5, A)
    rest(book, 2, BUY, 120, 5, B)
    assert call(book, "market", 3, SELL, 7, account=C) == [
        accepted(3, SELL, 0, 7, C),
        trade(3, SELL, 120, 5, 2, 2, 0, C, B),
        trade(3, SELL, 110, 2, 0, 1, 3, C, A),
    ]


def test_market_remainder_is_cancelled(book):
    rest(book, 1, SELL, 110, 5, A)
    assert call(book, "market", 2, BUY, 9, account=B) == [
        accepted(2, BUY, 0, 9, B),
        trade(2, BUY, 110, 5, 4, 1, 0, B, A),
        cancelled(2, BUY, 0, 4, R.IOC_REMAINDER, B),
    ]
    assert book.open_orders == 0


@pytest.mark.parametrize("tif", [Tif.IOC, Tif.FOK])
def test_market_without_opposite_orders_has_no_liquidity(book, tif):
    rest(book, 1, BUY, 110, 5, A)  # same side only
    assert call(book, "market", 2, BUY, 5, account=B, tif=tif) == [
        rejected(R.NO_LIQUIDITY, 2, BUY, 0, 5, B)
    ]
    assert book_ids(book) == [1]


def test_market_fok_fills_or_is_rejected(book):
    three_asks(book)
    assert call(book, "market", 4, BUY, 16, account=B, tif=Tif.FOK) == [
        rejected(R.FOK_NOT_FILLABLE, 4, BUY, 0, 16, B)
    ]
    assert call(book, "market", 5, BUY, 15, account=B, tif=Tif.FOK) == [
        accepted(5, BUY, 0, 15, B),
        trade(5, BUY, 110, 5, 10, 1, 0, B, A),
        trade(5, BUY, 111, 5, 5, 2, 0, B, A),
        trade(5, BUY, 112, 5, 0, 3, 0, B, A),
    ]


def test_market_ignores_the_price_field(book):
    rest(book, 1, SELL, 110, 5, A)
    assert send(
        book, op=Op.MARKET, order_id=2, side=BUY, tif=Tif.IOC, qty=5, account=B, price=-12345
    ) == [accepted(2, BUY, 0, 5, B), trade(2, BUY, 110, 5, 0, 1, 0, B, A)]


# ------------------------------------------------------------------- post-only


def test_post_only_rests_when_it_does_not_cross(book):
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, BUY, 109, 5, B, post_only=True)
    assert book.order(2).post_only is True
    assert book.orders()["flags"].tolist() == [Flags.POST_ONLY, 0]


@pytest.mark.parametrize("side, price", [(BUY, 110), (BUY, 111), (SELL, 101), (SELL, 100)])
def test_post_only_that_would_trade_is_rejected(book, side, price):
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, BUY, 101, 5, A)
    assert call(book, "limit", 3, side, price, 5, account=B, post_only=True) == [
        rejected(R.POST_ONLY_WOULD_TAKE, 3, side, price, 5, B)
    ]
    assert book_ids(book) == [2, 1]


def test_amend_of_post_only_order_to_a_crossing_price_is_rejected(book):
    rest(book, 1, SELL, 110, 5, A)
    rest(book, 2, BUY, 105, 5, B, post_only=True)
    assert call(book, "amend", 2, 110, 5, account=B) == [
        rejected(R.POST_ONLY_WOULD_TAKE, 2, 0, 110, 5, B)
    ]
    assert open_qty(book) == {2: 5, 1: 5} and book.order(2).price == 105


def test_amend_of_post_only_order_without_price_change_is_allowed(book):
    rest(book, 1, BUY, 105, 5, B, post_only=True)
    assert call(book, "amend", 1, 105, 9, account=B) == [amended(1, BUY, 105, 9, account=B)]


# ---------------------------------------------------------------------- cancel


def test_owner_cancels_an_order(book):
    rest(book, 1, BUY, 110, 5, A)
    assert call(book, "cancel", 1, account=A, ts=3) == [cancelled(1, BUY, 110, 5, R.USER_CANCEL, A)]
    assert book.open_orders == 0 and book.order(1) is None


def test_cancel_by_another_account_is_not_owner(book):
    rest(book, 1, BUY, 110, 5, A)
    assert call(book, "cancel", 1, account=B) == [rejected(R.NOT_OWNER, 1, account=B)]
    assert book_ids(book) == [1]


def finished_orders(book):
    """Ids 1 (filled), 2 (cancelled), 3 (IOC remainder), 4 (rejected): none is live."""
    rest(book, 1, SELL, 110, 5, A)
    call(book, "market", 10, BUY, 5, account=B)
    rest(book, 2, SELL, 110, 5, A)
    call(book, "cancel", 2, account=A)
    call(book, "limit", 3, BUY, 110, 5, account=A, tif=Tif.IOC)
    call(book, "limit", 4, BUY, 110, 0, account=A)


@pytest.mark.parametrize("order_id", [1, 2, 3, 4, 99, 0, -1])
def test_cancel_of_an_order_that_is_not_live_is_unknown(book, order_id):
    finished_orders(book)
    assert call(book, "cancel", order_id, account=A) == [
        rejected(R.UNKNOWN_ORDER, order_id, account=A)
    ]


def test_cancel_works_while_closed(book):
    rest(book, 1, BUY, 110, 5, A)
    call(book, "close")
    assert call(book, "cancel", 1, account=A) == [cancelled(1, BUY, 110, 5, R.USER_CANCEL, A)]


# ----------------------------------------------------------------------- amend


def two_bids_at_110(book):
    rest(book, 1, BUY, 110, 5, A)
    rest(book, 2, BUY, 110, 5, B)


@pytest.mark.parametrize("qty", [3, 5])
def test_amend_qty_down_or_same_keeps_priority(book, qty):
    two_bids_at_110(book)
    assert call(book, "amend", 1, 110, qty, account=A) == [amended(1, BUY, 110, qty, account=A)]
    assert level_ids(book, 110) == [1, 2]
    assert open_qty(book) == {1: qty, 2: 5}


def test_amend_qty_up_loses_priority(book):
    two_bids_at_110(book)
    assert call(book, "amend", 1, 110, 7, account=A) == [amended(1, BUY, 110, 7, account=A)]
    assert level_ids(book, 110) == [2, 1]


def test_amend_price_change_loses_priority(book):
    rest(book, 1, BUY, 110, 5, A)
    rest(book, 2, BUY, 111, 5, B)
    assert call(book, "amend", 2, 110, 5, account=B) == [amended(2, BUY, 110, 5, account=B)]
    assert level_ids(book, 110) == [1, 2]
    assert level_ids(book, 111) == []


def test_amend_to_a_crossing_price_trades_as_taker_and_rests_the_rest(book):
    rest(book, 1, SELL, 112, 5, A)
    rest(book, 2, SELL, 113, 5, A)
    rest(book, 3, BUY, 110, 8, B, tif=Tif.DAY)
    assert call(book, "amend", 3, 112, 8, account=B) == [
        amended(3, BUY, 112, 8, account=B),
        trade(3, BUY, 112, 5, 3, 1, 0, B, A),
    ]
    assert order_tuples(book.orders()) == [
        (3, B, 112, 3, BUY, Tif.DAY, Stp.DEFAULT, 0, *plain(3)),
        (2, A, 113, 5, SELL, Tif.GTC, Stp.DEFAULT, 0, *plain(5)),
    ]
    assert call(book, "close") == [expired(3, BUY, 112, 3, B), CLOSED]  # still a DAY order


def test_amended_order_meeting_its_own_account_uses_its_own_stp(book_cls):
    book = book_cls(100, 200, stp=Stp.NONE)
    rest(book, 1, SELL, 112, 5, A)
    rest(book, 2, BUY, 110, 8, A, stp=Stp.CANCEL_NEWEST)
    assert call(book, "amend", 2, 112, 8, account=A) == [
        amended(2, BUY, 112, 8, account=A),
        cancelled(2, BUY, 112, 8, ST, A),
    ]
    assert book_ids(book) == [1]


# ------------------------------------------------------- self-trade prevention

# Asks: 1 (account A) 5 @ 110, 2 (account B) 5 @ 111; then A buys 8 @ 111 (id 3).
STP_OUTCOMES = {
    Stp.NONE: (
        [trade(3, BUY, 110, 5, 3, 1, 0, A, A), trade(3, BUY, 111, 3, 0, 2, 2, A, B)],
        {2: 2},
    ),
    Stp.CANCEL_NEWEST: ([cancelled(3, BUY, 111, 8, ST, A)], {1: 5, 2: 5}),
    Stp.CANCEL_OLDEST: (
        [cancelled(1, SELL, 110, 5, ST, A), trade(3, BUY, 111, 5, 3, 2, 0, A, B)],
        {3: 3},
    ),
    Stp.CANCEL_BOTH: (
        [cancelled(1, SELL, 110, 5, ST, A), cancelled(3, BUY, 111, 8, ST, A)],
        {2: 5},
    ),
    Stp.DECREMENT: (
        [
            cancelled(1, SELL, 110, 5, ST, A),
            amended(3, BUY, 111, 3, ST, A),
            trade(3, BUY, 111, 3, 0, 2, 2, A, B),
        ],
        {2: 2},
    ),
}


@pytest.mark.parametrize("via", ["order", "book_default"])
@pytest.mark.parametrize("mode", list(STP_OUTCOMES))
def test_self_trade_prevention_modes(book_cls, mode, via):
    other = Stp.CANCEL_NEWEST if mode == Stp.NONE else Stp.NONE
    book = book_cls(100, 200, stp=mode if via == "book_default" else other)
    order_stp = mode if via == "order" else Stp.DEFAULT
    rest(book, 1, SELL, 110, 5, A, stp=order_stp)
    rest(book, 2, SELL, 111, 5, B, stp=order_stp)
    events, after = STP_OUTCOMES[mode]
    assert call(book, "limit", 3, BUY, 111, 8, account=A, stp=order_stp) == [
        accepted(3, BUY, 111, 8, A),
        *events,
    ]
    assert open_qty(book) == after


def test_decrement_shrinks_a_larger_maker_in_place_and_cancels_the_taker(book):
    rest(book, 1, SELL, 110, 8, A)
    rest(book, 2, SELL, 110, 2, B)
    assert call(book, "limit", 3, BUY, 110, 5, account=A, stp=Stp.DECREMENT) == [
        accepted(3, BUY, 110, 5, A),
        amended(1, SELL, 110, 3, ST, A),
        cancelled(3, BUY, 110, 5, ST, A),
    ]
    assert level_ids(book, 110) == [1, 2] and open_qty(book) == {1: 3, 2: 2}


def test_decrement_with_equal_quantities_cancels_both(book):
    rest(book, 1, SELL, 110, 5, A)
    assert call(book, "limit", 2, BUY, 110, 5, account=A, stp=Stp.DECREMENT) == [
        accepted(2, BUY, 110, 5, A),
        cancelled(1, SELL, 110, 5, ST, A),
        cancelled(2, BUY, 110, 5, ST, A),
    ]
    assert book.open_orders == 0


def test_decrement_of_a_market_taker_reports_price_zero(book):
    rest(book, 1, SELL, 110, 3, A)
    rest(book, 2, SELL, 111, 5, B)
    assert call(book, "market", 3, BUY, 6, account=A, stp=Stp.DECREMENT) == [
        accepted(3, BUY, 0, 6, A),
        cancelled(1, SELL, 110, 3, ST, A),
        amended(3, BUY, 0, 3, ST, A),
        trade(3, BUY, 111, 3, 0, 2, 2, A, B),
    ]


def test_only_the_taker_stp_mode_counts(book_cls):
    book = book_cls(100, 200, stp=Stp.NONE)
    rest(book, 1, SELL, 110, 5, A, stp=Stp.CANCEL_BOTH)
    assert call(book, "limit", 2, BUY, 110, 5, account=A) == [
        accepted(2, BUY, 110, 5, A),
        trade(2, BUY, 110, 5, 0, 1, 0, A, A),
    ]


def test_self_trade_prevention_ignores_other_accounts_in_front(book):
    rest(book, 1, SELL, 110, 5, B)
    rest(book, 2, SELL, 110, 5, A)
    assert call(book, "limit", 3, BUY, 110, 8, account=A) == [
        accepted(3, BUY, 110, 8, A),
        trade(3, BUY, 110, 5, 3, 1, 0, A, B),
        cancelled(3, BUY, 110, 3, ST, A),
    ]
    assert book_ids(book) == [2]


# ------------------------------------------------- rejects and their precedence

MAX_QTY_200 = INT64_MAX // 200
LOT = 10
TOO_LARGE = (MAX_QTY_200 // LOT + 1) * LOT  # the smallest whole-lot qty above max_qty

LIMIT = dict(
    op=Op.LIMIT,
    order_id=50,
    account=C,
    side=BUY,
    price=130,
    qty=20,
    tif=Tif.GTC,
    stp=Stp.DEFAULT,
    flags=0,
    ts=5,
)
MARKET = dict(LIMIT, op=Op.MARKET, tif=Tif.IOC, price=-777)
CANCEL = dict(op=Op.CANCEL, order_id=2, account=A, side=7, tif=9, price=5, qty=-3, ts=5)
AMEND = dict(
    op=Op.AMEND, order_id=2, account=A, price=125, qty=30, side=9, tif=9, stp=9, flags=9, ts=5
)
PO = Flags.POST_ONLY


class Reject(NamedTuple):
    reason: int
    command: dict  # raw fields, unused ones junk on purpose (REJECTED echoes them)
    setup: str = ""  # "closed": after CLOSE; "no asks": ask 1 cancelled first


def lim(**overrides):
    return {**LIMIT, **overrides}


def mkt(**overrides):
    return {**MARKET, **overrides}


def amd(**overrides):
    return {**AMEND, **overrides}


def other(op, **fields):
    return dict(op=op, **fields)


# One case per reason and per pair of checks whose order the doc fixes: the first wins.
REJECT_CASES = {
    "limit id zero beats everything": Reject(R.INVALID_ORDER_ID, lim(order_id=0, side=9, qty=-1)),
    "limit negative id": Reject(R.INVALID_ORDER_ID, lim(order_id=-(2**63))),
    "limit duplicate beats bad qty": Reject(R.DUPLICATE_ORDER_ID, lim(order_id=1, qty=0)),
    "limit closed beats bad side": Reject(R.MARKET_CLOSED, lim(side=0), "closed"),
    "limit side beats tif": Reject(R.INVALID_SIDE, lim(side=3, tif=0)),
    "limit side zero": Reject(R.INVALID_SIDE, lim(side=0)),
    "limit tif beats stp": Reject(R.INVALID_TIF, lim(tif=5, stp=6)),
    "limit tif zero": Reject(R.INVALID_TIF, lim(tif=0)),
    "limit stp beats flags": Reject(R.INVALID_STP, lim(stp=6, flags=2)),
    "limit stp 255": Reject(R.INVALID_STP, lim(stp=255)),
    "limit unknown flag beats qty": Reject(R.INVALID_FLAGS, lim(flags=2, qty=0)),
    "limit post-only plus unknown flag": Reject(R.INVALID_FLAGS, lim(flags=PO | 4)),
    "limit post-only ioc": Reject(R.INVALID_FLAGS, lim(flags=PO, tif=Tif.IOC)),
    "limit post-only fok": Reject(R.INVALID_FLAGS, lim(flags=PO, tif=Tif.FOK)),
    "limit zero qty beats band": Reject(R.INVALID_QUANTITY, lim(qty=0, price=999)),
    "limit negative qty": Reject(R.INVALID_QUANTITY, lim(qty=-10)),
    "limit qty not whole lots": Reject(R.INVALID_QUANTITY, lim(qty=15)),
    "limit too large beats band": Reject(R.QUANTITY_TOO_LARGE, lim(qty=TOO_LARGE, price=999)),
    "limit below band": Reject(R.PRICE_OUT_OF_BAND, lim(price=99)),
    "limit above band beats post-only": Reject(R.PRICE_OUT_OF_BAND, lim(price=201, flags=PO)),
    "limit post-only buy crosses": Reject(R.POST_ONLY_WOULD_TAKE, lim(price=150, flags=PO)),
    "limit post-only sell crosses": Reject(
        R.POST_ONLY_WOULD_TAKE, lim(side=SELL, price=120, flags=PO)
    ),
    "limit fok not fillable": Reject(R.FOK_NOT_FILLABLE, lim(price=150, tif=Tif.FOK)),
    "market id zero": Reject(R.INVALID_ORDER_ID, mkt(order_id=0, tif=0)),
    "market duplicate": Reject(R.DUPLICATE_ORDER_ID, mkt(order_id=2, side=0)),
    "market closed": Reject(R.MARKET_CLOSED, mkt(side=0), "closed"),
    "market side": Reject(R.INVALID_SIDE, mkt(side=5, tif=Tif.GTC)),
    "market gtc": Reject(R.INVALID_TIF, mkt(tif=Tif.GTC)),
    "market day": Reject(R.INVALID_TIF, mkt(tif=Tif.DAY, stp=7)),
    "market tif zero": Reject(R.INVALID_TIF, mkt(tif=0)),
    "market stp": Reject(R.INVALID_STP, mkt(stp=6, flags=PO)),
    "market post-only": Reject(R.INVALID_FLAGS, mkt(flags=PO, qty=0)),
    "market unknown flag": Reject(R.INVALID_FLAGS, mkt(flags=128)),
    "market zero qty": Reject(R.INVALID_QUANTITY, mkt(qty=0)),
    "market qty not whole lots": Reject(R.INVALID_QUANTITY, mkt(qty=25)),
    "market too large beats no liquidity": Reject(
        R.QUANTITY_TOO_LARGE, mkt(qty=TOO_LARGE), "no asks"
    ),
    "market no liquidity beats fok": Reject(R.NO_LIQUIDITY, mkt(tif=Tif.FOK), "no asks"),
    "market fok not fillable": Reject(R.FOK_NOT_FILLABLE, mkt(tif=Tif.FOK)),
    "cancel unknown": Reject(R.UNKNOWN_ORDER, dict(CANCEL, order_id=99)),
    "cancel id zero": Reject(R.UNKNOWN_ORDER, dict(CANCEL, order_id=0)),
    "cancel not owner": Reject(R.NOT_OWNER, dict(CANCEL, account=B)),
    "amend unknown beats closed": Reject(R.UNKNOWN_ORDER, amd(order_id=99), "closed"),
    "amend not owner beats closed": Reject(R.NOT_OWNER, amd(account=B), "closed"),
    "amend closed beats bad qty": Reject(R.MARKET_CLOSED, amd(qty=0), "closed"),
    "amend zero qty beats band": Reject(R.INVALID_QUANTITY, amd(qty=0, price=999)),
    "amend qty not whole lots": Reject(R.INVALID_QUANTITY, amd(qty=15)),
    "amend too large beats band": Reject(R.QUANTITY_TOO_LARGE, amd(qty=TOO_LARGE, price=99)),
    "amend out of band": Reject(R.PRICE_OUT_OF_BAND, amd(price=201)),
    "amend post-only crosses": Reject(
        R.POST_ONLY_WOULD_TAKE, amd(order_id=3, account=B, price=150)
    ),
    "open while open": Reject(R.SESSION_STATE, other(Op.OPEN, order_id=4, price=3)),
    "close while closed": Reject(R.SESSION_STATE, other(Op.CLOSE, side=1), "closed"),
    "reband low zero": Reject(R.INVALID_BAND, other(Op.REBAND, price=0, qty=10)),
    "reband low negative": Reject(R.INVALID_BAND, other(Op.REBAND, price=-(2**63), qty=10)),
    "reband high below low": Reject(R.INVALID_BAND, other(Op.REBAND, price=150, qty=149)),
    "reband too wide": Reject(R.INVALID_BAND, other(Op.REBAND, price=1, qty=MAX_BAND_LEVELS + 1)),
    "reband widest high": Reject(R.INVALID_BAND, other(Op.REBAND, price=1, qty=INT64_MAX)),
    "op zero": Reject(R.UNKNOWN_OP, other(0, order_id=1, side=1, price=110, qty=10)),
    "op thirteen": Reject(R.UNKNOWN_OP, other(13, order_id=77, account=B)),
    "op 255": Reject(R.UNKNOWN_OP, other(255, price=-1, qty=-1)),
}


def reject_fixture_book(book_cls, setup):
    """Lot 10. Ask 1 (A) 10 @ 150; bid 2 (A) 10 @ 120; post-only bid 3 (B) 10 @ 110."""
    book = book_cls(100, 200, lot_size=LOT)
    rest(book, 1, SELL, 150, 10, A)
    rest(book, 2, BUY, 120, 10, A)
    rest(book, 3, BUY, 110, 10, B, post_only=True)
    if setup == "no asks":
        call(book, "cancel", 1, account=A)
    if setup == "closed":
        call(book, "close")
    return book


@pytest.mark.parametrize("case", REJECT_CASES.values(), ids=list(REJECT_CASES))
def test_reject_reason_and_precedence(book_cls, case):
    book = reject_fixture_book(book_cls, case.setup)
    before = order_tuples(book.orders())
    state = (book.is_open, book.low, book.high, book.max_qty)
    reason, command = case.reason, case.command
    assert send(book, **command) == [
        rejected(
            reason,
            command.get("order_id", 0),
            command.get("side", 0),
            command.get("price", 0),
            command.get("qty", 0),
            command.get("account", 0),
        )
    ]
    assert order_tuples(book.orders()) == before
    assert (book.is_open, book.low, book.high, book.max_qty) == state


def test_amend_ignores_fields_it_does_not_use(book_cls):
    book = reject_fixture_book(book_cls, "")
    assert send(book, **AMEND) == [amended(2, BUY, 125, 30, account=A)]


# ------------------------------------------------------------------- order ids


@pytest.mark.parametrize(
    "bad, reason",
    [
        (dict(qty=0), R.INVALID_QUANTITY),
        (dict(side=0), R.INVALID_SIDE),
        (dict(price=999), R.PRICE_OUT_OF_BAND),
        (dict(tif=Tif.FOK), R.FOK_NOT_FILLABLE),
    ],
)
def test_rejected_new_order_still_spends_its_id(book, bad, reason):
    good = dict(op=Op.LIMIT, order_id=5, account=A, side=BUY, price=110, qty=10, tif=Tif.GTC)
    first = {**good, **bad}
    assert send(book, **first) == [
        rejected(reason, 5, first["side"], first["price"], first["qty"], A)
    ]
    assert send(book, **good) == [rejected(R.DUPLICATE_ORDER_ID, 5, BUY, 110, 10, A)]
    assert book.open_orders == 0


def test_order_rejected_while_closed_spends_its_id_until_open(book):
    call(book, "close")
    assert call(book, "limit", 5, BUY, 110, 10, account=A) == [
        rejected(R.MARKET_CLOSED, 5, BUY, 110, 10, A)
    ]
    assert call(book, "market", 5, BUY, 10, account=A) == [
        rejected(R.DUPLICATE_ORDER_ID, 5, BUY, 0, 10, A)
    ]
    call(book, "open")
    assert call(book, "limit", 5, BUY, 110, 10, account=A) == [accepted(5, BUY, 110, 10, A)]


@pytest.mark.parametrize("order_id", [1, 2, 3, 4, 10])
def test_finished_order_ids_stay_spent_for_the_session(book, order_id):
    finished_orders(book)
    assert call(book, "limit", order_id, BUY, 105, 1, account=C) == [
        rejected(R.DUPLICATE_ORDER_ID, order_id, BUY, 105, 1, C)
    ]


def test_open_forgets_finished_ids_but_not_live_ones(book):
    finished_orders(book)
    rest(book, 20, BUY, 101, 1, C)
    call(book, "close")
    call(book, "open")
    assert call(book, "limit", 20, BUY, 105, 1, account=C) == [
        rejected(R.DUPLICATE_ORDER_ID, 20, BUY, 105, 1, C)
    ]
    for order_id in (1, 2, 3, 4, 10):
        assert call(book, "limit", order_id, BUY, 105, 1, account=C) == [
            accepted(order_id, BUY, 105, 1, C)
        ]


# -------------------------------------------------------------------- sessions


def test_session_cycle_events_and_state(book):
    assert book.is_open
    assert call(book, "close", ts=1) == [CLOSED]
    assert not book.is_open
    assert call(book, "close", ts=2) == [rejected(R.SESSION_STATE)]
    assert call(book, "open", ts=3) == [OPENED]
    assert book.is_open
    assert call(book, "open", ts=4) == [rejected(R.SESSION_STATE)]


@pytest.mark.parametrize(
    "method, args", [("limit", (2, BUY, 110, 5)), ("market", (2, SELL, 5)), ("amend", (1, 110, 4))]
)
def test_new_orders_and_amends_are_rejected_while_closed(book, method, args):
    rest(book, 1, BUY, 110, 5, A)
    call(book, "close")
    events = call(book, method, *args, account=A)
    assert [(e.type, e.reason) for e in events] == [(EventType.REJECTED, R.MARKET_CLOSED)]
    assert open_qty(book) == {1: 5}


def test_trading_resumes_after_open(book):
    rest(book, 1, SELL, 110, 5, A)
    call(book, "close")
    call(book, "open")
    assert call(book, "market", 2, BUY, 5, account=B) == [
        accepted(2, BUY, 0, 5, B),
        trade(2, BUY, 110, 5, 0, 1, 0, B, A),
    ]


# ----------------------------------------------------------------------- re-band


def test_reband_cancels_out_of_band_then_too_large_orders_each_in_book_order(book):
    big = 10**16  # fits max_qty for high 200, not for high 2000
    rest(book, 1, BUY, 150, big, A)
    rest(book, 2, BUY, 105, 5, A)
    rest(book, 5, BUY, 102, big, B)
    rest(book, 3, SELL, 160, big, B)
    rest(book, 4, SELL, 170, 5, C)
    assert call(book, "reband", 110, 2000, ts=8) == [
        cancelled(2, BUY, 105, 5, R.PRICE_OUT_OF_BAND, A),
        cancelled(5, BUY, 102, big, R.PRICE_OUT_OF_BAND, B),
        cancelled(1, BUY, 150, big, R.QUANTITY_TOO_LARGE, A),
        cancelled(3, SELL, 160, big, R.QUANTITY_TOO_LARGE, B),
        rebanded(110, 2000),
    ]
    assert book_ids(book) == [4]
    assert (book.low, book.high, book.max_qty) == (110, 2000, INT64_MAX // 2000)


def test_reband_applies_to_new_orders(book):
    call(book, "reband", 150, 300)
    assert call(book, "limit", 1, BUY, 149, 1, account=A) == [
        rejected(R.PRICE_OUT_OF_BAND, 1, BUY, 149, 1, A)
    ]
    assert call(book, "limit", 2, BUY, 300, 1, account=A) == [accepted(2, BUY, 300, 1, A)]


def test_reband_works_while_closed(book):
    rest(book, 1, BUY, 110, 5, A)
    call(book, "close")
    assert call(book, "reband", 120, 130) == [
        cancelled(1, BUY, 110, 5, R.PRICE_OUT_OF_BAND, A),
        rebanded(120, 130),
    ]


@pytest.mark.parametrize("low, high", [(0, 10), (10, 9), (1, MAX_BAND_LEVELS + 1)])
def test_invalid_reband_changes_nothing(book, low, high):
    rest(book, 1, BUY, 110, 5, A)
    assert call(book, "reband", low, high) == [rejected(R.INVALID_BAND, price=low, qty=high)]
    assert (book.low, book.high, book_ids(book)) == (100, 200, [1])


# ------------------------------------------------------------------- quantities


def test_trillion_unit_orders_trade(book):
    q = 10**12
    rest(book, 1, SELL, 200, q, A)
    assert call(book, "limit", 2, BUY, 200, 3 * q, account=B) == [
        accepted(2, BUY, 200, 3 * q, B),
        trade(2, BUY, 200, q, 2 * q, 1, 0, B, A),
    ]
    assert book.best_bid() == (200, 2 * q)


def test_max_qty_is_accepted_and_one_more_is_too_large(book):
    assert book.max_qty == MAX_QTY_200
    rest(book, 1, BUY, 110, MAX_QTY_200, A)
    assert call(book, "limit", 2, BUY, 110, MAX_QTY_200 + 1, account=A) == [
        rejected(R.QUANTITY_TOO_LARGE, 2, BUY, 110, MAX_QTY_200 + 1, A)
    ]
    assert call(book, "amend", 1, 110, MAX_QTY_200 + 1, account=A) == [
        rejected(R.QUANTITY_TOO_LARGE, 1, 0, 110, MAX_QTY_200 + 1, A)
    ]
    assert call(book, "market", 3, SELL, MAX_QTY_200 + 1, account=B) == [
        rejected(R.QUANTITY_TOO_LARGE, 3, SELL, 0, MAX_QTY_200 + 1, B)
    ]


# ------------------------------------------------------------------------ views


def test_views_of_an_empty_book(book):
    assert book.best_bid() is None and book.best_ask() is None
    bids, asks = book.depth(5)
    assert bids.dtype == LEVEL_DTYPE and asks.dtype == LEVEL_DTYPE
    assert len(bids) == 0 and len(asks) == 0
    assert book.orders().dtype == ORDER_DTYPE and len(book.orders()) == 0
    assert book.level(150).dtype == ORDER_DTYPE and len(book.level(150)) == 0
    assert book.order(1) is None
    assert (book.open_orders, book.seq) == (0, 0)


def test_book_properties(book_cls):
    book = book_cls(10, 20, lot_size=5, symbol=2**32 - 1, stp=Stp.DECREMENT)
    assert (
        book.low,
        book.high,
        book.lot_size,
        book.max_qty,
        book.symbol,
        book.stp,
        book.is_open,
    ) == (10, 20, 5, INT64_MAX // 20, 2**32 - 1, Stp.DECREMENT, True)
    assert book_cls(1, 1).stp == Stp.CANCEL_NEWEST


def populated(book):
    rest(book, 1, BUY, 110, 5, A)
    rest(book, 2, BUY, 112, 3, B)
    rest(book, 3, BUY, 110, 4, C)
    rest(book, 4, SELL, 120, 6, A, tif=Tif.DAY, stp=Stp.DECREMENT)
    rest(book, 5, SELL, 125, 2, B, post_only=True)
    rest(book, 6, SELL, 130, 1, C)


def test_best_prices_and_depth(book):
    populated(book)
    assert book.best_bid() == (112, 3) and book.best_ask() == (120, 6)
    bids, asks = book.depth(2)
    assert bids.tolist() == [(112, 3, 1), (110, 9, 2)]
    assert asks.tolist() == [(120, 6, 1), (125, 2, 1)]
    bids, asks = book.depth(10)
    assert len(bids) == 2 and len(asks) == 3


def test_level_lists_orders_fifo(book):
    populated(book)
    assert order_tuples(book.level(110)) == [
        (1, A, 110, 5, BUY, Tif.GTC, Stp.DEFAULT, 0, *plain(5)),
        (3, C, 110, 4, BUY, Tif.GTC, Stp.DEFAULT, 0, *plain(4)),
    ]
    assert len(book.level(111)) == 0


def test_orders_view_is_in_book_order(book):
    populated(book)
    assert book_ids(book) == [2, 1, 3, 4, 5, 6]
    assert book.open_orders == 6


def test_order_lookup(book):
    populated(book)
    found = book.order(4)
    assert isinstance(found, RestingOrder)
    assert found == RestingOrder(4, A, SELL, 120, 6, Tif.DAY, Stp.DECREMENT, False, 6)
    assert book.order(5).post_only is True
    assert book.order(99) is None


def test_seq_counts_every_event_including_rejects(book):
    populated(book)
    assert book.seq == 6
    call(book, "cancel", 99)
    assert book.seq == 7
    assert len(call(book, "market", 7, BUY, 7, account=B)) == 3  # accepted + 2 trades
    assert book.seq == 10


def test_level_total_beyond_int64_raises_overflow_error(book_cls):
    book = book_cls(1, 1)  # max_qty is INT64_MAX
    rest(book, 1, BUY, 1, INT64_MAX, A)
    rest(book, 2, BUY, 1, INT64_MAX, B)
    with pytest.raises(OverflowError):
        book.best_bid()
    with pytest.raises(OverflowError):
        book.depth(1)
    assert book.level(1)["qty"].tolist() == [INT64_MAX, INT64_MAX]


def test_last_events_is_a_copy(book):
    call(book, "limit", 1, BUY, 110, 5, account=A)
    first = book.last_events()
    first["qty"] = 0
    assert book.last_events()["qty"].tolist() == [5]


# ------------------------------------------------------------------------ batch

SCRIPT = [
    dict(op=Op.LIMIT, order_id=1, side=SELL, price=110, qty=5, account=A, tif=Tif.GTC, ts=1),
    dict(op=Op.LIMIT, order_id=2, side=SELL, price=111, qty=5, account=B, tif=Tif.DAY, ts=2),
    dict(op=Op.LIMIT, order_id=3, side=BUY, price=105, qty=4, account=C, tif=Tif.GTC, flags=1),
    dict(op=Op.MARKET, order_id=4, side=BUY, qty=7, account=C, tif=Tif.IOC, ts=4),
    dict(
        op=Op.LIMIT,
        order_id=5,
        side=BUY,
        price=111,
        qty=9,
        account=B,
        tif=Tif.IOC,
        stp=Stp.CANCEL_OLDEST,
    ),
    dict(op=Op.AMEND, order_id=3, price=106, qty=8, account=C, ts=6),
    dict(op=Op.CANCEL, order_id=3, account=A),
    dict(
        op=Op.LIMIT,
        order_id=6,
        side=SELL,
        price=106,
        qty=20,
        account=C,
        tif=Tif.DAY,
        stp=Stp.DECREMENT,
    ),
    dict(op=Op.MARKET, order_id=6, side=SELL, qty=1, account=C, tif=Tif.FOK),
    dict(op=Op.CLOSE, ts=9),
    dict(op=Op.CANCEL, order_id=1, account=A),
    dict(op=Op.REBAND, price=100, qty=150),
    dict(op=Op.OPEN, ts=12),
    dict(op=Op.LIMIT, order_id=1, side=BUY, price=101, qty=2, account=A, tif=Tif.FOK),
]


def apply_per_order(book, c: dict) -> None:
    """Send one SCRIPT command through the matching per-order method."""
    get = c.get
    common = dict(ts=get("ts", 0))
    if c["op"] == Op.LIMIT:
        book.limit(
            c["order_id"],
            c["side"],
            c["price"],
            c["qty"],
            account=c["account"],
            tif=c["tif"],
            stp=get("stp", 0),
            post_only=bool(get("flags", 0)),
            **common,
        )
    elif c["op"] == Op.MARKET:
        book.market(
            c["order_id"],
            c["side"],
            c["qty"],
            account=c["account"],
            tif=c["tif"],
            stp=get("stp", 0),
            **common,
        )
    elif c["op"] == Op.CANCEL:
        book.cancel(c["order_id"], account=c["account"], **common)
    elif c["op"] == Op.AMEND:
        book.amend(c["order_id"], c["price"], c["qty"], account=c["account"], **common)
    elif c["op"] == Op.REBAND:
        book.reband(c["price"], c["qty"], **common)
    else:
        getattr(book, {Op.OPEN: "open", Op.CLOSE: "close"}[c["op"]])(**common)


def test_batch_gives_the_same_events_as_per_order_calls(book_cls):
    one_by_one = book_cls(100, 200, symbol=3)
    expected = []
    for c in SCRIPT:
        apply_per_order(one_by_one, c)
        expected += event_tuples(one_by_one.last_events())
    batch = book_cls(100, 200, symbol=3)
    events = batch.process(commands(*SCRIPT))
    assert events.dtype == EVENT_DTYPE
    assert event_tuples(events) == expected
    assert len(expected) > len(SCRIPT)  # the script trades, cancels and expires
    assert order_tuples(batch.orders()) == order_tuples(one_by_one.orders())


def test_batch_in_pieces_equals_one_batch(book_cls):
    whole = book_cls(100, 200)
    pieces = book_cls(100, 200)
    expected = event_tuples(whole.process(commands(*SCRIPT)))
    got = []
    for start in range(0, len(SCRIPT), 3):
        got += event_tuples(pieces.process(commands(*SCRIPT[start : start + 3])))
    assert got == expected


def run_isolated(book_cls, code: str) -> None:
    """Run code in a fresh interpreter with ``Book`` bound to book_cls: a crash fails
    this test instead of killing the whole run."""
    prelude = (
        f"import numpy as np\nfrom brokercore.engine.records import COMMAND_DTYPE\n"
        f"from {book_cls.__module__} import {book_cls.__name__} as Book\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    how = (
        f"killed by {signal.Signals(-done.returncode).name}"
        if done.returncode < 0
        else f"exit status {done.returncode}"
    )
    assert done.returncode == 0, f"{how}: {done.stderr[-3000:]}"


@pytest.mark.parametrize("n", [3, 70_000], ids=["small batch", "large batch"])
def test_a_batch_returns_its_events_and_leaves_last_events_empty(book_cls, n):
    run_isolated(
        book_cls,
        f"""
        book = Book(1, 10)
        book.open()                                                 # one event
        events = book.process(np.zeros({n}, dtype=COMMAND_DTYPE))  # all UNKNOWN_OP
        assert len(events) == {n} and events["seq"].tolist() == list(range(2, {n} + 2))
        assert len(book.last_events()) == 0
        book.open()
        assert book.last_events()["seq"].tolist() == [{n} + 2]
    """,
    )


def test_command_symbol_is_ignored_and_events_carry_the_book_symbol(book):
    events = book.process(
        commands(
            dict(op=Op.LIMIT, symbol=12345, order_id=1, side=BUY, price=110, qty=5, tif=Tif.GTC)
        )
    )
    assert events["symbol"].tolist() == [7]
    assert as_ev(events) == [accepted(1, BUY, 110, 5)]


def test_empty_batch_gives_no_events(book):
    events = book.process(np.zeros(0, dtype=COMMAND_DTYPE))
    assert events.dtype == EVENT_DTYPE and len(events) == 0 and book.seq == 0


PACKED_COMMAND = np.dtype([(name, COMMAND_DTYPE.fields[name][0]) for name in COMMAND_DTYPE.names])


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(3, dtype=np.float64),
        np.zeros(3, dtype=EVENT_DTYPE),
        np.zeros((2, 3), dtype=COMMAND_DTYPE),
        [(0, 1)],
    ],
    ids=["float64", "event dtype", "two-dimensional", "list"],
)
def test_batch_with_a_wrong_array_raises(book, array):
    with pytest.raises((TypeError, ValueError)):
        book.process(array)
    assert book.seq == 0


def test_batch_takes_the_command_fields_in_any_layout(book_cls):
    """numpy drops the padding when it concatenates structured arrays; strides happen."""
    rows = [(Op.LIMIT, 1, 1, BUY, Tif.GTC, 110, 5), (Op.LIMIT, 2, 2, SELL, Tif.GTC, 110, 3)]
    canonical = np.zeros(2, dtype=COMMAND_DTYPE)
    canonical[["op", "order_id", "account", "side", "tif", "price", "qty"]] = rows
    packed = canonical.astype(PACKED_COMMAND)
    strided = np.repeat(canonical, 2)[::2]
    expected = event_tuples(book_cls(100, 200).process(canonical))
    assert event_tuples(book_cls(100, 200).process(packed)) == expected
    assert event_tuples(book_cls(100, 200).process(strided)) == expected
    assert [event[1] for event in expected] == [
        EventType.ACCEPTED,
        EventType.ACCEPTED,
        EventType.TRADE,
    ]


# ----------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(low=0, high=10),
        dict(low=-1, high=10),
        dict(low=10, high=9),
        dict(low=1, high=MAX_BAND_LEVELS + 1),
        dict(low=1, high=10, lot_size=0),
        dict(low=1, high=10, lot_size=-5),
        dict(low=1, high=10, stp=Stp.DEFAULT),
        dict(low=1, high=10, stp=6),
    ],
    ids=str,
)
def test_invalid_book_parameters_raise_value_error(book_cls, kwargs):
    with pytest.raises(ValueError):
        book_cls(**kwargs)


@pytest.mark.parametrize("symbol", [-1, 2**32])
def test_symbol_must_fit_uint32(book_cls, symbol):
    with pytest.raises((ValueError, OverflowError)):
        book_cls(1, 10, symbol=symbol)


@pytest.mark.parametrize("stp", [s for s in Stp if s != Stp.DEFAULT])
def test_every_book_stp_mode_is_accepted(book_cls, stp):
    assert book_cls(1, 10, stp=stp).stp == stp
