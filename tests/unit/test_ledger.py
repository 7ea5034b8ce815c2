"""Settlement arithmetic: fills, order ends, fees, and conservation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from brokercore.broker.ledger import (
    AccountDelta,
    OrderDelta,
    OrderHold,
    PositionDelta,
    Settlement,
    SettlementError,
    release,
    reprice,
    settle_fill,
)
from brokercore.broker.market import MarketInstrument, Session
from brokercore.broker.money import average_price
from brokercore.broker.risk import (
    NO_FEES,
    AccountState,
    FeeSchedule,
    Hold,
    OrderRequest,
    OrderType,
    check_order,
)
from brokercore.engine.records import Side, Tif

D = Decimal
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("Asia/Kolkata"))
SESSION = Session("Asia/Kolkata", time(9, 15), time(15, 30))
# 0.05 rupee ticks = 5 paise; band 10,000.00 .. 20,000.00
INST = MarketInstrument("RELIANCE", 1, D("0.05"), 1, D("10000.00"), D("20000.00"), 1000, SESSION)
FEES = FeeSchedule(bps=D(3), fixed=2000)


def buy_order(quantity=10, price_ticks=300_000, fees=FEES) -> OrderHold:
    hold = check_order(
        OrderRequest("RELIANCE", Side.BUY, OrderType.LIMIT, quantity, INST.to_price(price_ticks)),
        INST,
        NOW,
        AccountState(10**15),
        fees=fees,
    )
    return OrderHold.open(Side.BUY, quantity, hold)


def sell_order(quantity=10, blocked=None) -> OrderHold:
    hold = Hold(shares=quantity if blocked is None else blocked, price_ticks=300_000)
    return OrderHold.open(Side.SELL, quantity, hold)


# --- buys ----------------------------------------------------------------------------


def test_buy_filled_at_its_limit_releases_the_whole_hold():
    order = buy_order()
    assert order.blocked_cash == 15_000_000 + 4_500 + 2_000
    s = settle_fill(order, 300_000, 10, INST, FEES)
    assert s == Settlement(
        AccountDelta(cash=-15_006_500, blocked_cash=-15_006_500),
        PositionDelta(quantity=10, price=1_500_000),
        OrderDelta(
            blocked_cash=-15_006_500, filled_quantity=10, filled_notional=15_000_000, fees=6_500
        ),
        fee=6_500,
    )
    after = s.apply(order)
    assert after.blocked_cash == 0 and after.open_quantity == 0 and after.fees == 6_500
    assert release(after) == Settlement(AccountDelta(), PositionDelta(), OrderDelta())


def test_price_improvement_frees_cash_at_once():
    order = buy_order(quantity=10, price_ticks=300_000, fees=NO_FEES)
    s = settle_fill(order, 290_000, 4, INST, NO_FEES)  # 14,500.00 instead of 15,000
    assert s.account == AccountDelta(cash=-4 * 1_450_000, blocked_cash=-4 * 1_500_000)
    after = s.apply(order)
    assert after.blocked_cash == 6 * 1_500_000  # exactly the open quantity's


def test_partial_fills_keep_exactly_what_the_rest_needs():
    order = buy_order(quantity=10)
    s1 = settle_fill(order, 300_000, 3, INST, FEES)
    # first fill pays the fixed fee: 3 bps of 4,500,000 = 1,350 + 2,000
    assert s1.fee == 3_350 and s1.account.cash == -(4_500_000 + 3_350)
    order = s1.apply(order)
    assert order.blocked_cash == 7 * 1_500_000 + 3_150  # 3 bps of 10,500,000
    s2 = settle_fill(order, 300_000, 7, INST, FEES)
    assert s2.fee == 3_150  # no second fixed fee
    order = s2.apply(order)
    assert order.blocked_cash == 0 and order.fees == 6_500


def test_fees_do_not_depend_on_how_an_order_is_split():
    fees = FeeSchedule(bps=D("0.7"))  # 0.7 bps rounds up per fill...
    one = settle_fill(buy_order(100, fees=fees), 200_001, 100, INST, fees).fee
    order, total = buy_order(100, fees=fees), 0
    for _ in range(100):
        s = settle_fill(order, 200_001, 1, INST, fees)
        order, total = s.apply(order), total + s.fee
    assert total == one == fees.fee(100 * 1_000_005)  # ...but not per fill


def test_unused_hold_is_released_when_the_order_ends():
    order = buy_order(quantity=10)
    order = settle_fill(order, 300_000, 4, INST, FEES).apply(order)
    rest = order.blocked_cash
    assert rest > 0
    s = release(order)
    assert s == Settlement(
        AccountDelta(blocked_cash=-rest), PositionDelta(), OrderDelta(blocked_cash=-rest)
    )
    assert s.apply(order).blocked_cash == 0


def test_market_buy_protection_left_over_is_released():
    hold = check_order(
        OrderRequest("RELIANCE", Side.BUY, OrderType.MARKET, 5),
        INST,
        NOW,
        AccountState(10**12),
        fees=FEES,
    )
    order = OrderHold.open(Side.BUY, 5, hold)
    assert order.hold_price_ticks == 400_000 and hold.time_in_force == Tif.IOC
    order = settle_fill(order, 300_000, 5, INST, FEES).apply(order)
    assert order.blocked_cash == 0  # improvement released at the fill
    order = buy_order(5)
    order = settle_fill(order, 300_000, 2, INST, FEES).apply(order)  # IOC remainder
    assert release(order).account.blocked_cash == -order.blocked_cash < 0


def test_impossible_fills_are_errors():
    order = buy_order(quantity=10)
    with pytest.raises(SettlementError, match="open"):
        settle_fill(order, 300_000, 11, INST, FEES)
    with pytest.raises(SettlementError):
        settle_fill(order, 300_000, 0, INST, FEES)
    with pytest.raises(SettlementError):
        settle_fill(order, 0, 1, INST, FEES)
    with pytest.raises(SettlementError, match="above its hold price"):
        settle_fill(order, 300_001, 1, INST, FEES)
    with pytest.raises(SettlementError, match="does not cover"):
        settle_fill(OrderHold(Side.BUY, 10, 300_000, blocked_cash=100), 300_000, 1, INST, FEES)


# --- sells ---------------------------------------------------------------------------


def test_sell_credits_proceeds_less_fees_and_unblocks_shares():
    order = sell_order(10)
    s = settle_fill(order, 310_000, 4, INST, FEES)
    assert s == Settlement(
        AccountDelta(cash=4 * 1_550_000 - 3_860),
        PositionDelta(quantity=-4, blocked_quantity=-4, price=1_550_000),
        OrderDelta(blocked_shares=-4, filled_quantity=4, filled_notional=6_200_000, fees=3_860),
        fee=3_860,
    )
    order = s.apply(order)
    assert order.blocked_shares == 6
    assert release(order).position == PositionDelta(blocked_quantity=-6)


def test_sale_fee_never_exceeds_the_proceeds():
    fees = FeeSchedule(fixed=10**6)
    tiny = MarketInstrument("X", 2, D("0.05"), 1, D("0.05"), D("1.00"), 100, SESSION)
    s = settle_fill(sell_order(1), 1, 1, tiny, fees)
    assert s.fee == 5 and s.account.cash == 0


def test_short_sale_unblocks_only_the_shares_it_blocked():
    order = sell_order(10, blocked=3)
    s1 = settle_fill(order, 300_000, 2, INST, NO_FEES)
    assert s1.position == PositionDelta(quantity=-2, blocked_quantity=-2, price=1_500_000)
    order = s1.apply(order)
    s2 = settle_fill(order, 300_000, 8, INST, NO_FEES)
    assert s2.position == PositionDelta(quantity=-8, blocked_quantity=-1, price=1_500_000)
    assert s2.apply(order).blocked_shares == 0


def test_a_buy_repriced_lower_keeps_what_its_open_quantity_needs_at_the_new_price():
    """A market buy held at the band's top that an uncross made a limit at 300,000."""
    order = OrderHold.open(Side.BUY, 10, Hold(cash=10 * 2_000_000 + FEES.fee(10 * 2_000_000)))
    order = replace(order, hold_price_ticks=400_000)
    order = settle_fill(order, 300_000, 4, INST, FEES).apply(order)  # the auction's fill
    s = reprice(order, 300_000, INST, FEES)
    after = s.apply(order)
    keep = 6 * 1_500_000 + FEES.fee(10 * 1_500_000) - FEES.fee(4 * 1_500_000)
    assert after.hold_price_ticks == 300_000 and after.blocked_cash == keep
    assert s.account == AccountDelta(blocked_cash=keep - order.blocked_cash)
    assert s.position == PositionDelta() and s.fee == 0
    after = settle_fill(after, 300_000, 6, INST, FEES).apply(after)
    assert after.blocked_cash == 0 and after.open_quantity == 0


def test_repricing_never_raises_a_hold_nor_touches_a_sell():
    nothing = Settlement(AccountDelta(), PositionDelta(), OrderDelta())
    assert reprice(buy_order(price_ticks=300_000), 300_000, INST, FEES) == nothing
    assert reprice(buy_order(price_ticks=300_000), 300_001, INST, FEES) == nothing
    assert reprice(sell_order(), 200_000, INST, FEES) == nothing


# --- conservation, property ----------------------------------------------------------


@dataclass
class Account:
    cash: int
    blocked_cash: int = 0


@dataclass
class Position:
    quantity: int
    blocked_quantity: int = 0
    avg_price: Decimal = field(default_factory=Decimal)


SMALL = MarketInstrument("SMALL", 3, D("0.05"), 1, D("4.50"), D("5.50"), 500, SESSION)
SMALL_LOTS = MarketInstrument("LOTS", 4, D("0.10"), 5, D("4.50"), D("5.50"), 500, SESSION)


class Book:
    """Two accounts' rows, with deltas applied as a SQL consumer would add them."""

    def __init__(self, cash: dict[int, int], shares: dict[int, int]):
        self.accounts = {a: Account(c) for a, c in cash.items()}
        self.positions = {a: Position(q) for a, q in shares.items()}
        self.orders: dict[int, tuple[int, OrderHold]] = {}
        self.fees = 0
        self.cash_total = sum(cash.values())
        self.share_total = sum(shares.values())

    def apply(self, account: int, order_id: int, s: Settlement) -> None:
        a, p = self.accounts[account], self.positions[account]
        a.cash += s.account.cash
        a.blocked_cash += s.account.blocked_cash
        p.avg_price = average_price(p.quantity, p.avg_price, s.position.quantity, s.position.price)
        p.quantity += s.position.quantity
        p.blocked_quantity += s.position.blocked_quantity
        self.fees += s.fee
        _, order = self.orders[order_id]
        self.orders[order_id] = (account, s.apply(order))

    def end(self, order_id: int) -> None:
        account, order = self.orders[order_id]
        self.apply(account, order_id, release(order))
        assert self.orders[order_id][1].blocked_cash == 0
        assert self.orders[order_id][1].blocked_shares == 0
        del self.orders[order_id]

    def check(self, allow_short: bool) -> None:
        assert sum(a.cash for a in self.accounts.values()) + self.fees == self.cash_total
        assert sum(p.quantity for p in self.positions.values()) == self.share_total
        for account, a in self.accounts.items():
            assert a.cash >= 0 and a.blocked_cash >= 0 and a.cash - a.blocked_cash >= 0
            p = self.positions[account]
            assert p.blocked_quantity >= 0
            if not allow_short:
                assert 0 <= p.blocked_quantity <= p.quantity
            mine = [o for acc, o in self.orders.values() if acc == account]
            assert a.blocked_cash == sum(o.blocked_cash for o in mine)
            assert p.blocked_quantity == sum(o.blocked_shares for o in mine)
            assert all(o.blocked_cash >= 0 and o.blocked_shares >= 0 for o in mine)


# mostly enough to trade, sometimes nothing or a little (hypothesis favours small ints)
BALANCES = st.one_of(st.sampled_from([10**7, 3 * 10**7]), st.integers(0, 3 * 10**7))
HOLDINGS = st.one_of(st.sampled_from([500, 2000]), st.integers(0, 2000))
fee_schedules = st.builds(
    FeeSchedule,
    bps=st.sampled_from([D(0), D("0.345"), D(1), D(3), D(50), D(10_000)]),
    fixed=st.sampled_from([0, 1, 20, 2000]),
)


@given(
    data=st.data(),
    fees=fee_schedules,
    instrument=st.sampled_from([SMALL, SMALL_LOTS]),
    allow_short=st.booleans(),
    cash=st.tuples(BALANCES, BALANCES),
    shares=st.tuples(HOLDINGS, HOLDINGS),
)
def test_settlement_conserves_cash_and_shares_and_releases_every_hold(
    data, fees, instrument, allow_short, cash, shares
):
    book = Book({1: cash[0], 2: cash[1]}, {1: shares[0], 2: shares[1]})
    low, high = instrument.low, instrument.high
    next_id, fills = 1, 0

    def place() -> None:
        nonlocal next_id
        # sides alternate and account 1 buys from 2 unless the draws say otherwise, so
        # simple examples already trade (hypothesis favours the first choices)
        side = (Side.BUY, Side.SELL)[(next_id + data.draw(st.integers(0, 1))) % 2]
        account = 1 + ((side == Side.SELL) != data.draw(st.booleans()))
        is_market = data.draw(st.booleans())
        lots = data.draw(st.integers(1, 60))
        quantity = lots * instrument.lot_size
        price = None if is_market else instrument.to_price(data.draw(st.integers(low, high)))
        protection = data.draw(st.sampled_from([None, D(0), D(2), D("7.5")]))
        last = instrument.to_price(data.draw(st.integers(low, high)))
        a, p = book.accounts[account], book.positions[account]
        state = AccountState(a.cash - a.blocked_cash, p.quantity - p.blocked_quantity, allow_short)
        request = OrderRequest(
            instrument.symbol,
            side,
            OrderType.MARKET if is_market else OrderType.LIMIT,
            quantity,
            price,
        )
        hold = check_order(
            request,
            instrument,
            NOW,
            state,
            fees=fees,
            last_price=last,
            protection_percent=protection,
        )
        if isinstance(hold, Hold):
            a.blocked_cash += hold.cash
            p.blocked_quantity += hold.shares
            book.orders[next_id] = (account, OrderHold.open(side, quantity, hold))
            next_id += 1
        else:
            event(f"rejected: {hold.code}")

    for step in data.draw(
        st.lists(
            st.sampled_from(["fill", "order", "fill", "order", "end", "reprice"]),
            min_size=10,
            max_size=60,
        )
    ):
        if step == "order":
            place()
        elif step == "fill":
            buys = [i for i, (_, o) in book.orders.items() if o.side == Side.BUY]
            sells = [i for i, (_, o) in book.orders.items() if o.side == Side.SELL]
            pairs = [(b, s) for b in buys for s in sells if book.orders[b][0] != book.orders[s][0]]
            if not pairs:
                place()
                book.check(allow_short)
                continue
            b, s = data.draw(st.sampled_from(pairs))
            (buyer, buy), (seller, sell) = book.orders[b], book.orders[s]
            price = data.draw(st.integers(low, buy.hold_price_ticks))
            quantity = data.draw(st.integers(1, min(buy.open_quantity, sell.open_quantity)))
            book.apply(buyer, b, settle_fill(buy, price, quantity, instrument, fees))
            book.apply(seller, s, settle_fill(sell, price, quantity, instrument, fees))
            fills += 1
            for order_id in (b, s):
                if book.orders[order_id][1].open_quantity == 0:
                    book.end(order_id)
        elif step == "reprice" and book.orders:  # an uncross turned a market order into a limit
            order_id = data.draw(st.sampled_from(sorted(book.orders)))
            account, order = book.orders[order_id]
            price = data.draw(st.integers(low, high))
            book.apply(account, order_id, reprice(order, price, instrument, fees))
        elif book.orders:
            book.end(data.draw(st.sampled_from(sorted(book.orders))))
        book.check(allow_short)
    event(f"fills: {min(fills, 5)}{'+' if fills >= 5 else ''}")
    event(f"fees collected: {book.fees > 0}")
    for order_id in sorted(book.orders):
        book.end(order_id)
    book.check(allow_short)
    for account in (1, 2):
        assert book.accounts[account].blocked_cash == 0
        assert book.positions[account].blocked_quantity == 0
