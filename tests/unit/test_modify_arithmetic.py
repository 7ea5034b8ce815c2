"""A modify's arithmetic: the new terms it checks (brokercore.entry.modify.new_terms)
and what an amended order keeps blocked (brokercore.broker.ledger.amend)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, time
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokercore.broker.ledger import OrderHold, SettlementError, amend, settle_fill
from brokercore.broker.market import MarketInstrument, Session
from brokercore.broker.risk import FeeSchedule, buy_hold
from brokercore.engine.records import Side
from brokercore.entry.modify import OpenOrder, new_terms
from brokercore.entry.order_entry import OrderRefused
from brokercore.entry.requests import ModifyOrderRequest

D = Decimal
SESSION = Session("Asia/Kolkata", time(9, 15), time(15, 30))
INST = MarketInstrument("RELIANCE", 1, D("0.05"), 1, D("10000.00"), D("20000.00"), 1000, SESSION)
FEES = FeeSchedule(bps=D(3), fixed=2000)
MID = 300_000  # ticks: 15,000.00 rupees


def order(**changes) -> OpenOrder:
    base = OpenOrder(
        date(2026, 3, 2), 1, "RELIANCE", "BUY", "LIMIT", "GTC", "PARTIALLY_FILLED",
        1_500_000, None, 10, 4, 0, 0, False,
    )  # fmt: skip
    return base._replace(**changes)


def test_new_terms_are_a_new_order_of_the_open_quantity_keeping_what_is_not_given():
    terms = new_terms(order(), ModifyOrderRequest("k", quantity=12))
    assert (terms.type, terms.quantity, terms.price, terms.time_in_force) == (
        "LIMIT",
        8,  # 12 in all, 4 filled
        D("15000.00"),
        "GTC",
    )
    stop = order(type="STOP_LIMIT", status="TRIGGER_PENDING", trigger_price=1_510_000)
    waiting = new_terms(stop, ModifyOrderRequest("k", price=D("15200.00")))
    assert (waiting.type, waiting.trigger_price, waiting.price) == (
        "STOP_LIMIT",
        D("15100.00"),
        D("15200.00"),
    )
    triggered = new_terms(stop._replace(status="OPEN"), ModifyOrderRequest("k", quantity=9))
    assert (triggered.type, triggered.trigger_price) == ("LIMIT", None)
    iceberg = new_terms(order(disclosed_qty=2), ModifyOrderRequest("k", price=D("14000.00")))
    assert iceberg.disclosed_quantity == 2


def test_a_total_not_above_the_filled_quantity_is_refused():
    with pytest.raises(OrderRefused) as refused:
        new_terms(order(), ModifyOrderRequest("k", quantity=4))
    assert refused.value.reason == "INVALID_QUANTITY"


@given(
    old=st.integers(MID - 100, MID + 100),
    new=st.integers(MID - 100, MID + 100),
    quantity=st.integers(2, 50),
    data=st.data(),
)
def test_the_hold_and_reserve_pay_for_any_fills_before_the_amend_and_the_new_terms(
    old, new, quantity, data
):
    """Old terms' hold + the new terms' reserve (as the OMS blocks them), k fills at the
    old price before the engine's amend sets the open quantity back to ``quantity`` at
    the new price: the blocks cover the amended order, which then fills in full, and
    nothing is left blocked or overspent."""
    hold = OrderHold(Side.BUY, quantity, old, blocked_cash=buy_hold(INST, old, quantity, FEES))
    reserve = buy_hold(INST, new, quantity, FEES)
    spent = 0
    for _ in range(data.draw(st.integers(0, quantity - 1))):
        fill = settle_fill(hold, old, 1, INST, FEES)
        spent -= fill.account.cash
        hold = fill.apply(hold)
    amended = replace(
        hold,
        quantity=hold.filled_quantity + quantity,
        blocked_cash=hold.blocked_cash + reserve,
    )
    s = amend(amended, new, INST, FEES)
    assert s.account.blocked_cash <= 0, "nothing more is blocked at the amend"
    hold = s.apply(amended)
    fill = settle_fill(hold, new, quantity, INST, FEES)
    spent -= fill.account.cash
    hold = fill.apply(hold)
    assert hold.blocked_cash == 0 and hold.open_quantity == 0
    assert spent <= buy_hold(INST, old, quantity, FEES) + reserve


def test_an_amend_the_blocks_cannot_pay_for_is_a_settlement_error():
    hold = OrderHold(Side.BUY, 10, MID, blocked_cash=buy_hold(INST, MID, 10, FEES))
    with pytest.raises(SettlementError):
        amend(hold, MID + 1, INST, FEES)


def test_a_sells_amend_keeps_at_most_its_open_quantity_of_shares():
    hold = OrderHold(Side.SELL, 6, 0, blocked_shares=16)  # 10 + a reserve of 6
    s = amend(hold, MID, INST, FEES)
    assert (s.position.blocked_quantity, s.apply(hold).blocked_shares) == (-10, 6)
