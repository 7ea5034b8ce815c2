"""The call auction (docs/engine.md, "Call auction (UNCROSS)"), on hand-made books.

Each book's answer was computed by hand: the comment above it gives, for every
candidate price p, demand D(p), supply S(p), volume V = min(D, S) and imbalance
I = |D - S|, and which rule picks the opening price (volume, then imbalance, then
distance to the reference, then the lowest price). Every test asserts the full list of
UNCROSS events and the book after it, on the engine and on the reference model
(``book_cls``), and that ``auction()`` announced the same quote beforehand. The pure
function ``brokercore.engine.auction.opening_price`` is tested on its own at the end.
"""

from __future__ import annotations

import pytest

from brokercore.engine.auction import opening_price
from brokercore.engine.records import AuctionQuote, Op, Phase, Reason, Side, Stp, Tif
from support import (
    CLOSED,
    OPENED,
    PRE_OPENED,
    A,
    B,
    accepted,
    amended,
    call,
    cancelled,
    order_tuples,
    rejected,
    trade,
    triggered,
    uncrossed,
)

BUY, SELL = Side.BUY, Side.SELL


def pre_open_book(book_cls, last_price=0):
    """Band 90..110, symbol 7, in PRE_OPEN; a trade at ``last_price`` first if given."""
    book = book_cls(90, 110, symbol=7)
    if last_price:
        call(book, "limit", 901, SELL, last_price, 1, account=B)
        call(book, "limit", 902, BUY, last_price, 1, account=A)
        assert book.last_price == last_price
    assert call(book, "close") == [CLOSED]
    assert call(book, "pre_open") == [PRE_OPENED]
    return book


def buy(book, order_id, price, qty, account=A, disclosed=0):
    """A limit buy that must rest without matching (pre-open)."""
    kwargs = {"disclosed": disclosed} if disclosed else {}
    events = call(book, "limit", order_id, BUY, price, qty, account=account, **kwargs)
    assert events == [accepted(order_id, BUY, price, qty, account)]


def sell(book, order_id, price, qty, account=B, disclosed=0):
    kwargs = {"disclosed": disclosed} if disclosed else {}
    events = call(book, "limit", order_id, SELL, price, qty, account=account, **kwargs)
    assert events == [accepted(order_id, SELL, price, qty, account)]


def market(book, order_id, side, qty, account):
    """A market order that waits for the uncross."""
    assert call(book, "market", order_id, side, qty, account=account) == [
        accepted(order_id, side, 0, qty, account)
    ]


def limit_row(order_id, account, side, price, qty, tif=Tif.GTC, shown=None, disclosed=0):
    """The ORDER_DTYPE record of a resting order."""
    shown = qty if shown is None else shown
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


def uncross(book, reference=0):
    events = call(book, "uncross", reference) if reference else call(book, "uncross")
    assert book.phase == Phase.OPEN and book.is_open
    return events


# ------------------------------------------------------------------ tie-breaks


def test_doc_example_lowest_price_breaks_a_tie_without_reference(book_cls):
    # buys 1: 100 @ 102, 2: 100 @ 101; sells 3: 150 @ 100, 4: 100 @ 103; no reference
    #   p    D    S    V    I
    #  100  200  150  150   50  <- tie with 101 on V and I; no reference; lowest
    #  101  200  150  150   50
    #  102  100  150  100   50
    #  103    0  250    0  250
    book = pre_open_book(book_cls)
    buy(book, 1, 102, 100)
    buy(book, 2, 101, 100)
    sell(book, 3, 100, 150)
    sell(book, 4, 103, 100)
    assert book.auction() == AuctionQuote(100, 150, 50, BUY)
    assert uncross(book) == [
        trade(1, BUY, 100, 100, 0, 3, 50, A, B),
        trade(2, BUY, 100, 50, 50, 3, 0, A, B),
        uncrossed(100, 150, 50, BUY),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [
        limit_row(2, A, BUY, 101, 50),
        limit_row(4, B, SELL, 103, 100),
    ]
    assert book.last_price == 100
    assert book.auction() is None


def test_doc_example_market_buy_with_reference(book_cls):
    # market buy 1: 50; sells 2: 30 @ 99, 3: 30 @ 101; reference 100 (a candidate)
    #   p    D   S   V   I
    #   99  50  30  30  20
    #  100  50  30  30  20
    #  101  50  60  50  10  <- largest volume
    book = pre_open_book(book_cls)
    market(book, 1, BUY, 50, A)
    sell(book, 2, 99, 30)
    sell(book, 3, 101, 30)
    assert uncross(book, 100) == [
        trade(1, BUY, 101, 30, 20, 2, 0, A, B),
        trade(1, BUY, 101, 20, 0, 3, 10, A, B),
        uncrossed(101, 50, 10, SELL),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [limit_row(3, B, SELL, 101, 10)]


def test_largest_volume_wins_over_a_smaller_imbalance(book_cls):
    # buys 1: 80 @ 104, 2: 40 @ 100; sells 3: 50 @ 100, 4: 20 @ 102, 5: 100 @ 104
    #   p    D    S   V   I
    #  100  120   50  50  70
    #  102   80   70  70  10
    #  104   80  170  80  90  <- largest volume, though the largest imbalance
    book = pre_open_book(book_cls)
    buy(book, 1, 104, 80)
    buy(book, 2, 100, 40)
    sell(book, 3, 100, 50)
    sell(book, 4, 102, 20)
    sell(book, 5, 104, 100)
    assert book.auction() == AuctionQuote(104, 80, 90, SELL)
    assert uncross(book) == [
        trade(1, BUY, 104, 50, 30, 3, 0, A, B),
        trade(1, BUY, 104, 20, 10, 4, 0, A, B),
        trade(1, BUY, 104, 10, 0, 5, 90, A, B),
        uncrossed(104, 80, 90, SELL),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [
        limit_row(2, A, BUY, 100, 40),
        limit_row(5, B, SELL, 104, 90),
    ]
    assert book.last_price == 104


def test_smaller_imbalance_breaks_a_volume_tie(book_cls):
    # buys 1: 50 @ 102, 2: 30 @ 100; sells 3: 50 @ 100, 4: 20 @ 102
    #   p    D   S   V   I
    #  100  80  50  50  30
    #  102  50  70  50  20  <- same volume, smaller imbalance (the lowest would be 100)
    book = pre_open_book(book_cls)
    buy(book, 1, 102, 50)
    buy(book, 2, 100, 30)
    sell(book, 3, 100, 50)
    sell(book, 4, 102, 20)
    assert uncross(book) == [
        trade(1, BUY, 102, 50, 0, 3, 0, A, B),
        uncrossed(102, 50, 20, SELL),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [
        limit_row(2, A, BUY, 100, 30),
        limit_row(4, B, SELL, 102, 20),
    ]


def test_reference_price_itself_opens_when_volume_and_imbalance_tie(book_cls):
    # buys 1: 100 @ 105; sells 2: 100 @ 95; reference 100
    #   p    D    S    V   I  |p - 100|
    #   95  100  100  100  0   5
    #  100  100  100  100  0   0  <- nearest the reference
    #  105  100  100  100  0   5
    book = pre_open_book(book_cls)
    buy(book, 1, 105, 100)
    sell(book, 2, 95, 100)
    assert uncross(book, 100) == [
        trade(1, BUY, 100, 100, 0, 2, 0, A, B),
        uncrossed(100, 100, 0, 0),
        OPENED,
    ]
    assert book.open_orders == 0
    assert book.last_price == 100


def test_reference_outside_the_crossing_range_picks_the_nearest_candidate(book_cls):
    # buys 1: 100 @ 105; sells 2: 100 @ 95; reference 108 (no volume there)
    #   p    D    S    V   I  |p - 108|
    #   95  100  100  100  0  13
    #  105  100  100  100  0   3  <- nearest the reference
    #  108    0  100    0
    book = pre_open_book(book_cls)
    buy(book, 1, 105, 100)
    sell(book, 2, 95, 100)
    assert uncross(book, 108) == [
        trade(1, BUY, 105, 100, 0, 2, 0, A, B),
        uncrossed(105, 100, 0, 0),
        OPENED,
    ]


def test_without_a_reference_the_lowest_of_equal_candidates_opens(book_cls):
    # the same book, no reference (no trade yet, UNCROSS with price 0)
    #   p    D    S    V   I
    #   95  100  100  100  0  <- lowest
    #  105  100  100  100  0
    # (With a reference the final rule never decides: the reference is a candidate
    # whose volume and imbalance are at least as good as those of any two candidates
    # equally far from it on either side.)
    book = pre_open_book(book_cls)
    buy(book, 1, 105, 100)
    sell(book, 2, 95, 100)
    assert book.auction() == AuctionQuote(95, 100, 0, 0)
    assert uncross(book) == [
        trade(1, BUY, 95, 100, 0, 2, 0, A, B),
        uncrossed(95, 100, 0, 0),
        OPENED,
    ]


def test_the_last_trade_price_is_the_reference_when_uncross_gives_none(book_cls):
    # last trade at 97 (in the previous session); buys 1: 100 @ 105; sells 2: 100 @ 95
    #   p    D    S    V   I  |p - 97|
    #   95  100  100  100  0   2
    #   97  100  100  100  0   0  <- the reference (last_price)
    #  105  100  100  100  0   8
    book = pre_open_book(book_cls, last_price=97)
    buy(book, 1, 105, 100)
    sell(book, 2, 95, 100)
    assert book.auction() == AuctionQuote(97, 100, 0, 0)
    assert uncross(book) == [
        trade(1, BUY, 97, 100, 0, 2, 0, A, B),
        uncrossed(97, 100, 0, 0),
        OPENED,
    ]
    assert book.last_price == 97


# ------------------------------------------------------------- market orders


def test_market_orders_trade_first_at_any_price(book_cls):
    # market sell 1: 40; sells 2: 30 @ 99; buys 3: 50 @ 101; no reference
    #   p    D   S   V   I
    #   99  50  70  50  20  <- tie with 101; lowest
    #  101  50  70  50  20
    # the market sell trades before the sell @ 99
    book = pre_open_book(book_cls)
    market(book, 1, SELL, 40, B)
    sell(book, 2, 99, 30)
    buy(book, 3, 101, 50)
    assert uncross(book) == [
        trade(3, BUY, 99, 40, 10, 1, 0, A, B),
        trade(3, BUY, 99, 10, 0, 2, 20, A, B),
        uncrossed(99, 50, 20, SELL),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [limit_row(2, B, SELL, 99, 20)]


def test_market_order_left_becomes_a_day_limit_at_the_front_of_the_opening_level(book_cls):
    # market buys 1: 80, 5: 10; buy 2: 20 @ 101; sells 3: 50 @ 101
    #   p    D    S   V   I
    #  101  110  50  50  60  <- the only candidate
    # 1 fills 50; 1 (30 left) and 5 become DAY limits at 101, ahead of 2
    book = pre_open_book(book_cls)
    market(book, 1, BUY, 80, A)
    buy(book, 2, 101, 20)
    sell(book, 3, 101, 50)
    market(book, 5, BUY, 10, B)
    assert book.open_orders == 4
    assert uncross(book) == [
        trade(1, BUY, 101, 50, 30, 3, 0, A, B),
        amended(1, BUY, 101, 30, account=A),
        amended(5, BUY, 101, 10, account=B),
        uncrossed(101, 50, 60, BUY),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [
        limit_row(1, A, BUY, 101, 30, Tif.DAY),
        limit_row(5, B, BUY, 101, 10, Tif.DAY),
        limit_row(2, A, BUY, 101, 20),
    ]
    assert book.best_bid() == (101, 60)


def test_only_market_orders_open_at_the_reference(book_cls):
    # market buy 1: 50, market sell 2: 30; reference 100, the only candidate
    #   p    D   S   V   I
    #  100  50  30  30  20
    book = pre_open_book(book_cls)
    market(book, 1, BUY, 50, A)
    market(book, 2, SELL, 30, B)
    assert book.auction() is None  # no reference of its own: no candidate
    assert uncross(book, 100) == [
        trade(1, BUY, 100, 30, 20, 2, 0, A, B),
        amended(1, BUY, 100, 20, account=A),
        uncrossed(100, 30, 20, BUY),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [limit_row(1, A, BUY, 100, 20, Tif.DAY)]


def test_only_market_orders_without_reference_are_cancelled(book_cls):
    # market buy 1: 50, market sell 2: 30; no reference: no candidate, no opening price
    book = pre_open_book(book_cls)
    market(book, 1, BUY, 50, A)
    market(book, 2, SELL, 30, B)
    assert uncross(book) == [
        cancelled(1, BUY, 0, 50, Reason.NO_LIQUIDITY, A),
        cancelled(2, SELL, 0, 30, Reason.NO_LIQUIDITY, B),
        uncrossed(),
        OPENED,
    ]
    assert book.open_orders == 0
    assert book.last_price == 0


# -------------------------------------------------------- no cross, one side


def test_a_book_that_does_not_cross_opens_without_trades(book_cls):
    # buy 1: 50 @ 99; sell 2: 50 @ 101
    #   p    D   S  V
    #   99  50   0  0
    #  101   0  50  0   -> no opening price
    book = pre_open_book(book_cls)
    buy(book, 1, 99, 50)
    sell(book, 2, 101, 50)
    assert book.auction() is None
    assert uncross(book) == [uncrossed(), OPENED]
    assert order_tuples(book.orders()) == [
        limit_row(1, A, BUY, 99, 50),
        limit_row(2, B, SELL, 101, 50),
    ]
    assert book.last_price == 0


def test_a_one_sided_book_opens_without_trades_and_cancels_its_market_orders(book_cls):
    # buys 1: 50 @ 100, 2: 30 @ 101, market buy 3: 20; no sells: S = 0 everywhere
    book = pre_open_book(book_cls)
    buy(book, 1, 100, 50)
    buy(book, 2, 101, 30)
    market(book, 3, BUY, 20, B)
    assert uncross(book, 100) == [
        cancelled(3, BUY, 0, 20, Reason.NO_LIQUIDITY, B),
        uncrossed(),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [
        limit_row(2, A, BUY, 101, 30),
        limit_row(1, A, BUY, 100, 50),
    ]


# ------------------------------------------------------- icebergs, FIFO, STP


def test_an_icebergs_hidden_part_counts_and_it_shows_its_next_part(book_cls):
    # sell 1: 100 @ 100 showing 50 (iceberg); buy 2: 60 @ 101
    #   p    D    S   V   I
    #  100  60  100  60  40  <- tie with 101; lowest
    #  101  60  100  60  40
    # (counting only the shown 50 would give V = 50)
    book = pre_open_book(book_cls)
    sell(book, 1, 100, 100, disclosed=50)
    buy(book, 2, 101, 60)
    assert book.best_ask() == (100, 50)
    assert uncross(book) == [
        trade(2, BUY, 100, 60, 0, 1, 40, A, B),
        uncrossed(100, 60, 40, SELL),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [limit_row(1, B, SELL, 100, 40, shown=40, disclosed=50)]


def test_fifo_within_a_level_and_no_self_trade_prevention(book_cls):
    # buys 1: 30 @ 100 (account B), 2: 30 @ 100; sell 3: 40 @ 100 (account B)
    #   p    D   S   V   I
    #  100  60  40  40  20
    # 1 and 3 are one account: the auction trades them anyway
    book = pre_open_book(book_cls)
    buy(book, 1, 100, 30, account=B)
    buy(book, 2, 100, 30)
    sell(book, 3, 100, 40)
    assert uncross(book) == [
        trade(1, BUY, 100, 30, 0, 3, 10, B, B),
        trade(2, BUY, 100, 10, 20, 3, 0, A, B),
        uncrossed(100, 40, 20, BUY),
        OPENED,
    ]
    assert order_tuples(book.orders()) == [limit_row(2, A, BUY, 100, 20)]


# ------------------------------------------------------------------- stops


def test_stops_reached_by_the_opening_price_enter_after_opened(book_cls):
    # last trade 95; buy stop 10: 20, trigger 98; sell stop 11: 10, trigger 90;
    # buy 1: 100 @ 100; sell 2: 120 @ 100; reference 95 (last_price)
    #   p    D    S    V    I
    #   95  100    0    0
    #  100  100  120  100   20  <- the only candidate with volume
    # the opening trade at 100 reaches the buy stop (98 <= 100), not the sell stop
    book = pre_open_book(book_cls, last_price=95)
    assert call(book, "stop", 10, BUY, 20, 98, account=A) == [accepted(10, BUY, 0, 20, A)]
    assert call(book, "stop", 11, SELL, 10, 90, account=A) == [accepted(11, SELL, 0, 10, A)]
    buy(book, 1, 100, 100)
    sell(book, 2, 100, 120)
    assert uncross(book) == [
        trade(1, BUY, 100, 100, 0, 2, 20, A, B),
        uncrossed(100, 100, 20, SELL),
        OPENED,
        triggered(10, BUY, 0, 20, 100, A),
        trade(10, BUY, 100, 20, 0, 2, 0, A, B),
    ]
    assert book.orders()["order_id"].tolist() == [11]
    assert book.order(11).op == Op.STOP


def test_uncross_outside_pre_open_and_off_band_reference_are_rejected(book_cls):
    book = pre_open_book(book_cls)
    buy(book, 1, 100, 10)
    sell(book, 2, 100, 10)
    assert call(book, "uncross", 200) == [rejected(Reason.PRICE_OUT_OF_BAND, price=200)]
    assert book.phase == Phase.PRE_OPEN and book.open_orders == 2
    uncross(book)
    assert call(book, "uncross") == [rejected(Reason.SESSION_STATE)]


# ------------------------------------------------------ the pure function


@pytest.mark.parametrize(
    "buys, sells, market_buy, market_sell, reference, quote",
    [
        # the doc's first example, levels unsorted and one price split over two rows
        ([(101, 100), (102, 60), (102, 40)], [(103, 100), (100, 150)], 0, 0, 0, (100, 150, 50, 1)),
        # the doc's second example
        ([], [(99, 30), (101, 30)], 50, 0, 100, (101, 50, 10, 2)),
        # only market orders: the reference is the one candidate, or there is none
        ([], [], 50, 50, 0, None),
        ([], [], 50, 40, 100, (100, 40, 10, 1)),
        # balanced at several prices: the nearest the reference, else the lowest
        ([(105, 100)], [(95, 100)], 0, 0, 104, (104, 100, 0, 0)),
        ([(105, 100)], [(95, 100)], 0, 0, 0, (95, 100, 0, 0)),
        # no cross
        ([(99, 50)], [(101, 50)], 0, 0, 100, None),
    ],
)
def test_opening_price(buys, sells, market_buy, market_sell, reference, quote):
    expected = None if quote is None else AuctionQuote(*quote)
    assert opening_price(buys, sells, market_buy, market_sell, reference) == expected
