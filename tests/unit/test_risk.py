"""Pre-trade checks: every rejection code, its boundaries, holds and fees."""

from __future__ import annotations

import dataclasses
from datetime import datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from brokercore.broker.market import MarketInstrument, Session
from brokercore.broker.risk import (
    NO_FEES,
    AccountState,
    FeeSchedule,
    Hold,
    OrderRequest,
    OrderType,
    RejectCode,
    RiskRejection,
    buy_hold,
    check_order,
    protection_price,
)
from brokercore.engine.records import Side, Tif

D = Decimal
IST = ZoneInfo("Asia/Kolkata")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=IST)  # a Monday, in session
RICH = AccountState(cash_available=10**15, shares_available=10**6)
SESSION = Session(
    "Asia/Kolkata", time(9, 15), time(15, 30), holidays=frozenset({datetime(2026, 1, 26).date()})
)
# band 10,000.00 .. 20,000.00 rupees = 200,000 .. 400,000 ticks of 0.05 (5 paise)
INST = MarketInstrument("RELIANCE", 1, D("0.05"), 1, D("10000.00"), D("20000.00"), 1000, SESSION)
PRICE = D("15000.00")  # mid-band


def limit(side=Side.BUY, quantity=10, price=PRICE, tif=None, **kw) -> OrderRequest:
    return OrderRequest("RELIANCE", side, OrderType.LIMIT, quantity, price, tif, **kw)


def market(side=Side.BUY, quantity=10, tif=None) -> OrderRequest:
    return OrderRequest("RELIANCE", side, OrderType.MARKET, quantity, None, tif)


def check(request, instrument=INST, now=NOW, account=RICH, **kw):
    return check_order(request, instrument, now, account, **kw)


def rejected(result, code: RejectCode) -> str:
    assert isinstance(result, RiskRejection), result
    assert result.code == code, result
    assert "Traceback" not in result.message and result.message
    return result.message


# --- symbol and session --------------------------------------------------------------


def test_unknown_symbol():
    message = rejected(check(limit(), instrument=None), RejectCode.UNKNOWN_SYMBOL)
    assert "RELIANCE" in message
    with pytest.raises(ValueError):
        check(dataclasses.replace(limit(), symbol="TCS"))


def test_halted_symbol():
    message = rejected(
        check(limit(), instrument=dataclasses.replace(INST, enabled=False)),
        RejectCode.SYMBOL_HALTED,
    )
    assert message == "trading in RELIANCE is halted"


@pytest.mark.parametrize(
    "now, is_open",
    [
        (datetime(2026, 3, 2, 9, 14, 59, 999_999, tzinfo=IST), False),
        (datetime(2026, 3, 2, 9, 15, tzinfo=IST), True),
        (datetime(2026, 3, 2, 15, 29, 59, 999_999, tzinfo=IST), True),
        (datetime(2026, 3, 2, 15, 30, tzinfo=IST), False),
        (datetime(2026, 3, 7, 10, 0, tzinfo=IST), False),  # Saturday
        (datetime(2026, 1, 26, 10, 0, tzinfo=IST), False),  # holiday
    ],
)
def test_market_hours(now, is_open):
    result = check(limit(), now=now)
    if is_open:
        assert isinstance(result, Hold)
    else:
        rejected(result, RejectCode.MARKET_CLOSED)


def test_market_closed_says_when_it_opens():
    message = rejected(
        check(limit(), now=datetime(2026, 3, 6, 16, 0, tzinfo=IST)), RejectCode.MARKET_CLOSED
    )
    assert message == (
        "the market for RELIANCE is closed; it opens at 2026-03-09 09:15 (Asia/Kolkata)"
    )


def test_naive_now_is_a_programming_error():
    with pytest.raises(ValueError, match="timezone-aware"):
        check(limit(), now=datetime(2026, 3, 2, 10, 0))


def test_halted_is_reported_before_closed_and_closed_before_order_errors():
    halted = dataclasses.replace(INST, enabled=False)
    closed = datetime(2026, 3, 7, 10, 0, tzinfo=IST)
    rejected(check(limit(quantity=0), instrument=halted, now=closed), RejectCode.SYMBOL_HALTED)
    rejected(check(limit(quantity=0), now=closed), RejectCode.MARKET_CLOSED)


# --- side, type, time in force -------------------------------------------------------


@pytest.mark.parametrize("side", ["HOLD", 3, 0, None, True])
def test_invalid_side(side):
    rejected(check(limit(side=side)), RejectCode.INVALID_SIDE)


def test_enums_accept_names_and_values():
    assert check(limit(side="buy", tif="GTC")) == check(limit(side=Side.BUY, tif=Tif.GTC))
    assert check(limit(side=2, tif=1)) == check(limit(side=Side.SELL, tif=Tif.GTC))
    request = OrderRequest("RELIANCE", "SELL", "MARKET", 5, None, "FOK")
    assert check(request) == Hold(shares=5, time_in_force=Tif.FOK)


@pytest.mark.parametrize("order_type", ["TRAILING_STOP", 5, None])
def test_invalid_order_type(order_type):
    rejected(check(dataclasses.replace(limit(), type=order_type)), RejectCode.INVALID_ORDER_TYPE)


@pytest.mark.parametrize("tif", [Tif.GTC, Tif.DAY])
def test_market_orders_are_ioc_or_fok_only(tif):
    message = rejected(check(market(tif=tif)), RejectCode.INVALID_TIF)
    assert message == f"a market order must be IOC or FOK, not {tif.name}"


@pytest.mark.parametrize("tif", ["GTD", 0, 5])
def test_unknown_tif(tif):
    rejected(check(limit(tif=tif)), RejectCode.INVALID_TIF)


def test_default_time_in_force():
    assert check(limit()).time_in_force == Tif.DAY
    assert check(market()).time_in_force == Tif.IOC
    for tif in Tif:
        assert check(limit(tif=tif)).time_in_force == tif
    assert check(market(tif=Tif.FOK)).time_in_force == Tif.FOK


# --- quantity ------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [0, -1, -(10**30), True, 1.0, "10", D("10"), None])
def test_invalid_quantity(quantity):
    rejected(check(limit(quantity=quantity)), RejectCode.INVALID_QUANTITY)


def test_lot_size():
    lots = dataclasses.replace(INST, lot_size=25, max_order_qty=1000)
    message = rejected(check(limit(quantity=30), instrument=lots), RejectCode.LOT_SIZE)
    assert message == "quantity 30 is not a multiple of the lot size 25 of RELIANCE"
    rejected(check(limit(quantity=24), instrument=lots), RejectCode.LOT_SIZE)
    for quantity in (25, 50, 1000):
        assert isinstance(check(limit(quantity=quantity), instrument=lots), Hold)


@pytest.mark.parametrize("quantity", [1001, 10**30, 2**63])
def test_quantity_limit(quantity):
    message = rejected(check(limit(quantity=quantity)), RejectCode.QUANTITY_LIMIT)
    assert "1000 shares allowed per order in RELIANCE" in message


def test_quantity_limit_edge_is_allowed():
    assert check(limit(quantity=1000)).cash == 1000 * 1_500_000
    assert check(limit(quantity=1)).cash == 1_500_000


# --- price ---------------------------------------------------------------------------


def test_price_on_a_market_order():
    request = dataclasses.replace(market(), price=D("15000.00"))
    rejected(check(request), RejectCode.PRICE_NOT_ALLOWED)


def test_limit_order_needs_a_price():
    rejected(check(limit(price=None)), RejectCode.PRICE_REQUIRED)


@pytest.mark.parametrize(
    "price",
    [
        D(0),
        D("-0.05"),
        D("-15000"),
        D("NaN"),
        D("sNaN"),
        D("Infinity"),
        D("-Infinity"),
        15000.0,
        "15000",
        True,
    ],
)
def test_invalid_price(price):
    rejected(check(limit(price=price)), RejectCode.INVALID_PRICE)


@pytest.mark.parametrize(
    "price",
    [
        D("9999.95"),
        D("20000.05"),
        D("0.05"),
        D("1e1000"),
        D("1e-1000"),
        D("20000.0000000000000000000000000000001"),
    ],
)
def test_price_band(price):
    message = rejected(check(limit(price=price)), RejectCode.PRICE_BAND)
    assert message == (f"price {price} is outside the price band 10000.00..20000.00 of RELIANCE")


@pytest.mark.parametrize(
    "price, ticks",
    [
        (D("10000.00"), 200_000),
        (D("20000.00"), 400_000),
        (D("10000.05"), 200_001),
        (D("19999.95"), 399_999),
        (D("15000"), 300_000),
        (15000, 300_000),
        (D("15000.1000000"), 300_002),
    ],
)
def test_prices_on_the_grid_and_band_edges_pass(price, ticks):
    hold = check(limit(price=price, quantity=1))
    assert hold.price_ticks == ticks and hold.cash == ticks * 5


@pytest.mark.parametrize(
    "price",
    [D("10000.03"), D("15000.01"), D("19999.99"), D("15000.050000000000000000000000000001")],
)
def test_tick_size(price):
    message = rejected(check(limit(price=price)), RejectCode.TICK_SIZE)
    assert message == f"price {price} is not a multiple of the tick size 0.05"


# --- funds and holdings --------------------------------------------------------------


def test_limit_buy_holds_price_times_quantity_plus_fees():
    fees = FeeSchedule(bps=D(3), fixed=2000)
    hold = check(limit(quantity=10, price=D("15000.00")), fees=fees)
    # notional 150,000.00 = 15,000,000 paise; 3 bps = 4,500 paise; + 20.00 fixed
    assert hold == Hold(cash=15_000_000 + 4_500 + 2_000, price_ticks=300_000, time_in_force=Tif.DAY)


def test_insufficient_funds_boundary():
    fees = FeeSchedule(bps=D(3), fixed=2000)
    needed = 15_000_000 + 4_500 + 2_000
    ok = check(limit(), account=AccountState(cash_available=needed), fees=fees)
    assert ok.cash == needed
    message = rejected(
        check(limit(), account=AccountState(cash_available=needed - 1), fees=fees),
        RejectCode.INSUFFICIENT_FUNDS,
    )
    assert message == (
        "buying 10 RELIANCE at up to 15000.00 needs 150,065.00 (fees 65.00 "
        "included) but 150,064.99 is available"
    )
    rejected(check(limit(), account=AccountState(cash_available=-5)), RejectCode.INSUFFICIENT_FUNDS)


def test_buying_needs_no_shares_and_selling_needs_no_cash():
    assert isinstance(check(limit(), account=AccountState(10**12, shares_available=0)), Hold)
    assert check(limit(side=Side.SELL), account=AccountState(0, shares_available=10)) == Hold(
        shares=10, price_ticks=300_000, time_in_force=Tif.DAY
    )


def test_sells_hold_shares_not_cash_even_with_fees():
    fees = FeeSchedule(bps=D(100), fixed=10**9)
    hold = check(limit(side=Side.SELL), account=AccountState(0, shares_available=10), fees=fees)
    assert hold.cash == 0 and hold.shares == 10


def test_insufficient_holdings_boundary():
    assert check(market(Side.SELL, 10), account=AccountState(0, 10)).shares == 10
    message = rejected(
        check(market(Side.SELL, 10), account=AccountState(0, 9)), RejectCode.INSUFFICIENT_HOLDINGS
    )
    assert message == "selling 10 RELIANCE needs 10 shares but 9 are available"
    message = rejected(
        check(limit(Side.SELL, 10), account=AccountState(0, -4)), RejectCode.INSUFFICIENT_HOLDINGS
    )
    assert message.endswith("but 0 are available")


def test_short_selling_blocks_only_the_shares_held():
    assert check(market(Side.SELL, 10), account=AccountState(0, 4, allow_short=True)) == Hold(
        shares=4, time_in_force=Tif.IOC
    )
    assert check(limit(Side.SELL, 10), account=AccountState(0, 0, allow_short=True)).shares == 0
    assert check(limit(Side.SELL, 10), account=AccountState(0, -7, allow_short=True)).shares == 0
    assert check(limit(Side.SELL, 10), account=AccountState(0, 15, allow_short=True)).shares == 10


# --- market buys ---------------------------------------------------------------------


def test_market_buy_is_held_at_the_band_top_by_default():
    hold = check(market(quantity=3))
    assert hold == Hold(cash=3 * 2_000_000, price_ticks=400_000, time_in_force=Tif.IOC)
    rejected(
        check(market(quantity=3), account=AccountState(3 * 2_000_000 - 1)),
        RejectCode.INSUFFICIENT_FUNDS,
    )


def test_market_orders_with_protection():
    kw = dict(last_price=D("15000.00"), protection_percent=D(5))
    hold = check(market(quantity=2), **kw)
    assert hold.price_ticks == hold.protection_ticks == 315_000 and hold.cash == 2 * 1_575_000
    sell = check(market(Side.SELL, quantity=2), **kw)
    assert sell == Hold(shares=2, time_in_force=Tif.IOC, protection_ticks=285_000)
    # rounded inward to a tick: 15000.05 * 1.05 = 15750.0525 -> 15750.05 for a buy,
    # 15000.05 * 0.95 = 14250.0475 -> 14250.05 for a sell
    assert protection_price(INST, Side.BUY, D("15000.05"), D(5)) == INST.to_ticks(D("15750.05"))
    assert protection_price(INST, Side.SELL, D("15000.05"), D(5)) == INST.to_ticks(D("14250.05"))
    # fractional percentages, exact
    assert protection_price(INST, Side.BUY, D("15000.00"), D("0.5")) == INST.to_ticks(D("15075"))
    assert protection_price(INST, Side.SELL, D("15000.00"), D("0.5")) == INST.to_ticks(D("14925"))
    assert protection_price(INST, Side.BUY, D("15000.00"), D(0)) == 300_000
    # kept inside the band
    assert protection_price(INST, Side.BUY, D("19500.00"), D(5)) == 400_000
    assert protection_price(INST, Side.SELL, D("10100.00"), D(5)) == 200_000
    # without a last price: around the band's middle (15,000.00)
    assert check(market(), protection_percent=D(5)).price_ticks == 315_000
    # without protection: the band's top, and a sell goes unprotected
    assert check(market(), last_price=D("15000.00")).price_ticks == 400_000
    assert check(market(Side.SELL), last_price=D("15000.00")).protection_ticks is None
    with pytest.raises(ValueError):
        protection_price(INST, Side.BUY, D("15000.00"), D(-1))
    with pytest.raises(ValueError):
        protection_price(INST, Side.BUY, D(0), D(5))


def test_market_sell_needs_no_price():
    assert check(market(Side.SELL, 7)) == Hold(shares=7, price_ticks=None, time_in_force=Tif.IOC)


# --- fees ----------------------------------------------------------------------------


def test_fee_rounding_is_up_to_the_paisa():
    fees = FeeSchedule(bps=D(3))
    assert fees.fee(1_000_000) == 300  # exactly 300
    assert fees.fee(1_000_001) == 301  # 300.0003 -> 301
    assert fees.fee(3_333) == 1  # 0.9999 -> 1
    assert fees.fee(1) == 1  # 0.0003 -> 1 (capped at the notional)
    assert FeeSchedule(bps=D("0.345")).fee(10_000_000) == 345
    assert FeeSchedule(bps=D("0.345")).fee(10_000_001) == 346
    assert FeeSchedule(bps=D("0.0001")).fee(10**8) == 1
    assert FeeSchedule(bps=D(10_000)).fee(12_345) == 12_345


def test_fixed_fee_and_cap():
    fees = FeeSchedule(bps=D(3), fixed=2000)
    assert fees.fee(0) == 0 and fees.fee(-5) == 0
    assert fees.fee(1_000_000) == 2_300
    assert fees.fee(500) == 500  # never more than the value traded
    assert NO_FEES.fee(10**18) == 0
    assert FeeSchedule(fixed=2000).fee(2_000) == 2_000


def test_fee_is_non_decreasing():
    fees = FeeSchedule(bps=D("2.5"), fixed=7)
    values = [fees.fee(n) for n in range(0, 5000)]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "kw",
    [
        dict(bps=D(-1)),
        dict(bps=D(10_001)),
        dict(bps=D("NaN")),
        dict(bps=3.0),
        dict(fixed=-1),
        dict(fixed=1.5),
        dict(fixed=True),
    ],
)
def test_fee_schedule_validation(kw):
    with pytest.raises((ValueError, TypeError)):
        FeeSchedule(**kw)


def test_buy_hold_helper_matches_check():
    fees = FeeSchedule(bps=D(3), fixed=2000)
    assert buy_hold(INST, 300_000, 10, fees) == check(limit(), fees=fees).cash


# --- the trading day: pre-open, stops, disclosed quantity (docs/engine.md) ------------

PRE_OPEN_SESSION = dataclasses.replace(SESSION, pre_open=time(9, 0), pre_open_end=time(9, 8))
PRE_OPEN_INST = dataclasses.replace(INST, session=PRE_OPEN_SESSION)
IN_PRE_OPEN = datetime(2026, 3, 2, 9, 5, tzinfo=IST)
TOP = INST.high  # the band's top in ticks: 400,000
TRIGGER = D("15500.00")  # above PRICE, the last price of these tests
STOP_LIMIT_PRICE = D("15600.00")


def stop(side=Side.BUY, trigger=TRIGGER, tif=None, quantity=10) -> OrderRequest:
    return OrderRequest("RELIANCE", side, OrderType.STOP, quantity, None, tif, trigger)


def stop_limit(side=Side.BUY, price=STOP_LIMIT_PRICE, trigger=TRIGGER, tif=None):
    return OrderRequest("RELIANCE", side, OrderType.STOP_LIMIT, 10, price, tif, trigger)


@pytest.mark.parametrize(
    "now, phase_allows",
    [
        (datetime(2026, 3, 2, 8, 59, 59, 999_999, tzinfo=IST), False),
        (datetime(2026, 3, 2, 9, 0, tzinfo=IST), True),  # pre-open starts
        (datetime(2026, 3, 2, 9, 7, 59, 999_999, tzinfo=IST), True),
        (datetime(2026, 3, 2, 9, 8, tzinfo=IST), False),  # the buffer before the open
        (datetime(2026, 3, 2, 9, 15, tzinfo=IST), True),
        (datetime(2026, 3, 7, 9, 5, tzinfo=IST), False),  # Saturday: no pre-open either
    ],
)
def test_orders_are_taken_in_the_pre_open(now, phase_allows):
    result = check(limit(), instrument=PRE_OPEN_INST, now=now)
    if phase_allows:
        assert result == Hold(cash=300_000 * 5 * 10, price_ticks=300_000)
    else:
        rejected(result, RejectCode.MARKET_CLOSED)


def test_market_closed_says_when_the_pre_open_takes_orders():
    early = datetime(2026, 3, 2, 8, 30, tzinfo=IST)
    assert rejected(
        check(limit(), instrument=PRE_OPEN_INST, now=early), RejectCode.MARKET_CLOSED
    ) == (
        "the market for RELIANCE is closed; it opens at 2026-03-02 09:15 (Asia/Kolkata); "
        "its pre-open call auction takes orders from 09:00"
    )
    buffer = datetime(2026, 3, 2, 9, 10, tzinfo=IST)  # the auction is over: only the open
    assert (
        rejected(check(limit(), instrument=PRE_OPEN_INST, now=buffer), RejectCode.MARKET_CLOSED)
        == "the market for RELIANCE is closed; it opens at 2026-03-02 09:15 (Asia/Kolkata)"
    )


@pytest.mark.parametrize(
    "request_",
    [limit(tif=Tif.IOC), limit(tif=Tif.FOK), market(tif=Tif.FOK)],
    ids=["limit IOC", "limit FOK", "market FOK"],
)
def test_the_pre_open_refuses_orders_that_cannot_wait_for_the_auction(request_):
    message = rejected(
        check(request_, instrument=PRE_OPEN_INST, now=IN_PRE_OPEN), RejectCode.NOT_IN_PRE_OPEN
    )
    assert "RELIANCE is in its pre-open call auction" in message
    assert isinstance(check(request_, instrument=PRE_OPEN_INST, now=NOW), Hold)  # OPEN: fine


def test_a_pre_open_market_buy_is_refused_and_a_market_sell_waits_for_the_auction():
    # the engine caps a market buy at its hold, which an order waiting for the uncross
    # (priority at any price) cannot have: a re-band could lift the opening price above it
    kw = dict(last_price=D("15000"), protection_percent=D(2))
    message = rejected(
        check(market(), instrument=PRE_OPEN_INST, now=IN_PRE_OPEN, **kw),
        RejectCode.NOT_IN_PRE_OPEN,
    )
    assert "takes no market buy orders" in message and "place a limit order" in message
    sell = check(market(Side.SELL), instrument=PRE_OPEN_INST, now=IN_PRE_OPEN, **kw)
    assert sell == Hold(shares=10, time_in_force=Tif.IOC)
    assert check(market(), **kw).price_ticks == 306_000  # in OPEN: 15,300.00, protected


def test_stops_are_taken_in_the_pre_open():
    assert isinstance(check(stop(), instrument=PRE_OPEN_INST, now=IN_PRE_OPEN), Hold)
    assert isinstance(check(stop_limit(), instrument=PRE_OPEN_INST, now=IN_PRE_OPEN), Hold)


def test_a_stop_market_buy_is_held_at_its_protection_around_the_trigger_from_acceptance():
    kw = dict(last_price=D("15000"), protection_percent=D(2))  # 15,500.00 * 1.02 = 15,810.00
    assert check(stop(), **kw) == Hold(
        cash=316_200 * 5 * 10,
        price_ticks=316_200,
        time_in_force=Tif.DAY,
        trigger_ticks=310_000,
        protection_ticks=316_200,
    )
    # a sell stop-market: 15,500.00 * 0.98 = 15,190.00; capped so, it must be DAY
    sell = check(stop(Side.SELL, trigger=D("14000")), **kw)
    assert sell == Hold(
        shares=10, time_in_force=Tif.DAY, trigger_ticks=280_000, protection_ticks=274_400
    )
    rejected(check(stop(Side.SELL, D("14000"), Tif.GTC), **kw), RejectCode.INVALID_TIF)
    # without protection: the band's top, and a GTC sell stop-market goes as it is
    assert check(stop()).price_ticks == TOP
    assert isinstance(check(stop(Side.SELL, D("14000"), Tif.GTC)), Hold)


def test_a_stop_limit_buy_is_held_at_its_limit():
    fees = FeeSchedule(bps=D(3))
    held = check(stop_limit(tif=Tif.GTC), fees=fees)
    assert held == Hold(
        cash=buy_hold(INST, 312_000, 10, fees),
        price_ticks=312_000,
        time_in_force=Tif.GTC,
        trigger_ticks=310_000,
    )


def test_stop_sells_hold_shares():
    down = D("14500.00")
    assert check(stop(Side.SELL, down)) == Hold(shares=10, trigger_ticks=290_000)
    assert check(stop_limit(Side.SELL, D("14400.00"), down)) == Hold(
        shares=10, price_ticks=288_000, trigger_ticks=290_000
    )
    rejected(
        check(stop(Side.SELL, down), account=AccountState(0, 9)), RejectCode.INSUFFICIENT_HOLDINGS
    )


def test_a_stop_buy_needs_the_funds_of_its_worst_price():
    needed = TOP * 5 * 10
    assert isinstance(check(stop(), account=AccountState(needed)), Hold)
    rejected(check(stop(), account=AccountState(needed - 1)), RejectCode.INSUFFICIENT_FUNDS)


@pytest.mark.parametrize(
    "request_, code",
    [
        (stop(tif=Tif.IOC), RejectCode.INVALID_TIF),
        (stop(tif=Tif.FOK), RejectCode.INVALID_TIF),
        (stop(tif=Tif.GTC), RejectCode.INVALID_TIF),  # a buy's: capped as a stop-limit IOC
        (stop_limit(tif=Tif.FOK), RejectCode.INVALID_TIF),
        (dataclasses.replace(stop(), price=PRICE), RejectCode.PRICE_NOT_ALLOWED),
        (dataclasses.replace(stop_limit(), price=None), RejectCode.PRICE_REQUIRED),
        (stop(trigger=None), RejectCode.TRIGGER_REQUIRED),
        (stop_limit(trigger=None), RejectCode.TRIGGER_REQUIRED),
        (dataclasses.replace(limit(), trigger_price=PRICE), RejectCode.TRIGGER_NOT_ALLOWED),
        (dataclasses.replace(market(), trigger_price=PRICE), RejectCode.TRIGGER_NOT_ALLOWED),
        (stop(trigger=D(0)), RejectCode.INVALID_TRIGGER),
        (stop(trigger=D("-1")), RejectCode.INVALID_TRIGGER),
        (stop(trigger=D("NaN")), RejectCode.INVALID_TRIGGER),
        (stop(trigger=1.5), RejectCode.INVALID_TRIGGER),
        (stop(trigger=D("20000.05")), RejectCode.PRICE_BAND),
        (stop(trigger=D("9999.95")), RejectCode.PRICE_BAND),
        (stop(trigger=D("15500.03")), RejectCode.TICK_SIZE),
        (stop_limit(price=D("15499.95")), RejectCode.TRIGGER_LIMIT_SIDE),  # buy: limit < trigger
        (stop_limit(Side.SELL, D("15500.05")), RejectCode.TRIGGER_LIMIT_SIDE),  # sell: limit >
    ],
)
def test_stop_rules(request_, code):
    message = rejected(check(request_), code)
    if code in (RejectCode.PRICE_BAND, RejectCode.TICK_SIZE, RejectCode.INVALID_TRIGGER):
        assert "trigger price" in message


def test_stop_messages():
    assert rejected(check(stop(trigger=D("15500.03"))), RejectCode.TICK_SIZE) == (
        "trigger price 15500.03 is not a multiple of the tick size 0.05"
    )
    assert rejected(check(stop_limit(price=D("15499.95"))), RejectCode.TRIGGER_LIMIT_SIDE) == (
        "a buy stop-limit's price must be at or above its trigger price 15500.00, not 15499.95"
    )
    assert rejected(check(dataclasses.replace(stop(), price=PRICE)), RejectCode.PRICE_NOT_ALLOWED)


@pytest.mark.parametrize(
    "side, trigger, reached",
    [
        (Side.BUY, D("15000.05"), False),
        (Side.BUY, D("15000.00"), True),  # at the last price: it would trigger at once
        (Side.BUY, D("14000.00"), True),
        (Side.SELL, D("14999.95"), False),
        (Side.SELL, D("15000.00"), True),
        (Side.SELL, D("16000.00"), True),
    ],
)
def test_a_trigger_already_reached_by_the_last_price_is_refused(side, trigger, reached):
    result = check(stop(side, trigger), last_price=D("15000.00"))
    if reached:
        message = rejected(result, RejectCode.TRIGGER_REACHED)
        assert "last price 15000.00" in message
    else:
        assert isinstance(result, Hold)
    assert isinstance(check(stop(side, trigger)), Hold)  # no trade yet: nothing is reached


def test_a_limit_equal_to_the_trigger_is_allowed():
    assert isinstance(check(stop_limit(price=D("15500.00"))), Hold)
    assert isinstance(check(stop_limit(Side.SELL, D("15500.00"))), Hold)


def iceberg(disclosed, quantity=100, tif=None, lot=1, kind=OrderType.LIMIT, price=PRICE):
    request = OrderRequest("RELIANCE", Side.BUY, kind, quantity, price, tif, None, disclosed)
    return check(request, instrument=dataclasses.replace(INST, lot_size=lot))


@pytest.mark.parametrize("tif", [None, Tif.GTC, Tif.DAY])
def test_disclosed_quantity_on_a_limit_order(tif):
    assert isinstance(iceberg(10, tif=tif), Hold)  # exactly 10 %
    assert isinstance(iceberg(100, tif=tif), Hold)  # the whole order


@pytest.mark.parametrize(
    "kw, code",
    [
        (dict(disclosed=9), RejectCode.DISCLOSED_TOO_SMALL),  # under 10 %
        (dict(disclosed=101), RejectCode.DISCLOSED_TOO_LARGE),
        (dict(disclosed=15, lot=10), RejectCode.DISCLOSED_LOT_SIZE),
        (dict(disclosed=-5), RejectCode.INVALID_QUANTITY),
        (dict(disclosed=10, tif=Tif.IOC), RejectCode.DISCLOSED_NOT_ALLOWED),
        (dict(disclosed=10, tif=Tif.FOK), RejectCode.DISCLOSED_NOT_ALLOWED),
        (dict(disclosed=10, kind=OrderType.MARKET, price=None), RejectCode.DISCLOSED_NOT_ALLOWED),
    ],
)
def test_disclosed_quantity_rules(kw, code):
    rejected(iceberg(**kw), code)


def test_disclosed_quantity_is_refused_on_stops():
    request = dataclasses.replace(stop_limit(), disclosed_quantity=10)
    message = rejected(check(request), RejectCode.DISCLOSED_NOT_ALLOWED)
    assert message == (
        "a stop-limit order cannot disclose part of itself (only GTC and DAY limit orders can)"
    )
    rejected(
        check(dataclasses.replace(stop(), disclosed_quantity=10)), RejectCode.DISCLOSED_NOT_ALLOWED
    )
