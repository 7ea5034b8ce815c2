"""Pre-trade risk checks: may this account place this order now, and what must it block?

Pure functions of the request, the instrument, the clock and the account's balances, so
the OMS can run them inside its database transaction and tests can run them alone. A
check never raises for a bad order: it returns a ``RiskRejection`` with a stable code
(the API contract) and a message for people. It raises only for programming errors
(a naive ``now``, an instrument for another symbol).

Money is int paise; prices are ``Decimal`` rupees and are converted exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import TypeVar

from brokercore.broker.market import MarketInstrument
from brokercore.broker.money import format_paise, is_decimal
from brokercore.engine.records import Side, Tif

__all__ = [
    "OrderType",
    "RejectCode",
    "OrderRequest",
    "AccountState",
    "FeeSchedule",
    "NO_FEES",
    "Hold",
    "RiskRejection",
    "check_order",
    "market_buy_price",
    "buy_hold",
]


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"


class RejectCode(StrEnum):
    """Why an order was refused before it reached the engine. Values are API codes:
    never rename one."""

    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    SYMBOL_HALTED = "SYMBOL_HALTED"
    MARKET_CLOSED = "MARKET_CLOSED"
    INVALID_SIDE = "INVALID_SIDE"
    INVALID_ORDER_TYPE = "INVALID_ORDER_TYPE"
    INVALID_TIF = "INVALID_TIF"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    LOT_SIZE = "LOT_SIZE"
    QUANTITY_LIMIT = "QUANTITY_LIMIT"
    PRICE_NOT_ALLOWED = "PRICE_NOT_ALLOWED"
    PRICE_REQUIRED = "PRICE_REQUIRED"
    INVALID_PRICE = "INVALID_PRICE"
    PRICE_BAND = "PRICE_BAND"
    TICK_SIZE = "TICK_SIZE"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INSUFFICIENT_HOLDINGS = "INSUFFICIENT_HOLDINGS"


@dataclass(frozen=True)
class OrderRequest:
    """A new order as a client asked for it (quantity in shares, price in rupees).

    ``time_in_force`` None means the usual one: DAY for a limit order, IOC for a market
    order. Enum fields also accept their names ("BUY") or values, so a decoded REST
    body can be passed as it is; anything else is rejected, not raised.
    """

    symbol: str
    side: Side
    type: OrderType
    quantity: int
    price: Decimal | None = None
    time_in_force: Tif | None = None


@dataclass(frozen=True)
class AccountState:
    """The balances a check needs, read in the same transaction that will block the hold.

    ``cash_available`` = cash - blocked_cash (paise); ``shares_available`` = the
    position's quantity - blocked_quantity (0 without a position). ``allow_short``
    lets a sell exceed the shares held; only the shares held are blocked then.
    """

    cash_available: int
    shares_available: int = 0
    allow_short: bool = False


@dataclass(frozen=True)
class FeeSchedule:
    """Brokerage on the value traded: ``bps`` basis points (fractions allowed), rounded
    UP to the paisa, plus ``fixed`` paise once per order that trades.

    ``fee(n)`` is the total fee of an order whose fills add up to ``n`` paise; it is
    non-decreasing in ``n`` and never more than ``n`` (a sale's proceeds always cover
    its fee, so settling a sale never makes cash negative). Fills are charged the
    increase of ``fee`` (see ledger), so the total never depends on how an order was split.
    """

    bps: Decimal = Decimal(0)
    fixed: int = 0

    def __post_init__(self) -> None:
        bps = self.bps
        if not is_decimal(bps):
            raise TypeError(f"bps must be a Decimal, not {type(bps).__name__}")
        if not Decimal(bps).is_finite() or not 0 <= bps <= 10_000:
            raise ValueError(f"bps must be between 0 and 10000, not {bps}")
        if isinstance(self.fixed, bool) or not isinstance(self.fixed, int) or self.fixed < 0:
            raise ValueError(f"fixed must be an integer number of paise >= 0, not {self.fixed!r}")
        object.__setattr__(self, "bps", Decimal(bps))

    def fee(self, notional: int) -> int:
        """Total fee in paise of an order that traded ``notional`` paise in all."""
        if notional <= 0:
            return 0
        num, den = self.bps.as_integer_ratio()
        variable = -(-notional * num // (den * 10_000))  # ceiling, exact
        return min(notional, variable + self.fixed)


NO_FEES = FeeSchedule()


@dataclass(frozen=True)
class Hold:
    """What an accepted order blocks: ``cash`` paise (buys) or ``shares`` (sells).

    ``price_ticks`` is the price per share the cash hold assumes: the limit price, or
    for a market buy the protection price. The engine must never fill a buy above it,
    so a market buy whose protection price is below the band's top goes to the engine
    as an IOC/FOK limit order at this price. None for market sells.
    ``time_in_force`` is the resolved one the engine order carries.
    """

    cash: int = 0
    shares: int = 0
    price_ticks: int | None = None
    time_in_force: Tif = Tif.DAY


@dataclass(frozen=True)
class RiskRejection:
    code: RejectCode
    message: str


def market_buy_price(
    instrument: MarketInstrument,
    last_price: Decimal | None = None,
    protection_percent: Decimal | None = None,
) -> int:
    """The price in ticks at which a market buy is held (and capped).

    Without a last price or a protection percentage it is the band's top, the worst
    price the engine can fill at. Otherwise last × (1 + percent/100), rounded up to a
    tick and kept inside the band.
    """
    if last_price is None or protection_percent is None:
        return instrument.high
    for name, value in (("last_price", last_price), ("protection_percent", protection_percent)):
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"{name} must be a finite Decimal, not {value!r}")
    if last_price <= 0 or protection_percent < 0:
        raise ValueError(
            f"need last_price > 0 and protection_percent >= 0 "
            f"(got {last_price}, {protection_percent})"
        )
    ln, ld = last_price.as_integer_ratio()
    pn, pd = protection_percent.as_integer_ratio()
    tn, td = instrument.tick_size.as_integer_ratio()
    # ticks = ceil(last * (100 + p) / 100 / tick), in integers
    num = ln * (100 * pd + pn) * td
    den = ld * pd * 100 * tn
    ticks = -(-num // den)
    return max(instrument.low, min(instrument.high, ticks))


def buy_hold(
    instrument: MarketInstrument, price_ticks: int, quantity: int, fees: FeeSchedule = NO_FEES
) -> int:
    """Cash in paise to block for buying ``quantity`` at up to ``price_ticks``."""
    notional = instrument.ticks_to_paise(price_ticks) * quantity
    return notional + fees.fee(notional)


_E = TypeVar("_E", bound=Enum)


def _member(cls: type[_E], value: object) -> _E | None:
    """The enum member for a member, its name or its value; None if it is none of them."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls.__members__.get(value.upper())
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            return None
    return None


def _reject(code: RejectCode, message: str) -> RiskRejection:
    return RiskRejection(code, message)


def check_order(
    request: OrderRequest,
    instrument: MarketInstrument | None,
    now: datetime,
    account: AccountState,
    *,
    fees: FeeSchedule = NO_FEES,
    last_price: Decimal | None = None,
    protection_percent: Decimal | None = None,
) -> Hold | RiskRejection:
    """Check a new order; the ``Hold`` to block if it passes, else the first failure.

    Checks in this order: symbol known, not halted, market open; side, order type,
    time in force (market orders: IOC or FOK only); quantity positive, a whole number of
    lots, at most max_order_qty; price absent on market orders, present, positive and
    finite on limit orders, inside the band (edges included), on a tick; then funds
    (buys: price × quantity + fees, market buys at ``market_buy_price``) or holdings
    (sells: shares, since sale fees come out of the proceeds).
    """
    if instrument is None:
        return _reject(RejectCode.UNKNOWN_SYMBOL, f"unknown symbol {request.symbol!r}")
    if instrument.symbol != request.symbol:
        raise ValueError(f"instrument {instrument.symbol} given for an order in {request.symbol!r}")
    symbol = instrument.symbol
    if not instrument.enabled:
        return _reject(RejectCode.SYMBOL_HALTED, f"trading in {symbol} is halted")
    if not instrument.session.is_open(now):
        opens = instrument.session.next_open(now)
        return _reject(
            RejectCode.MARKET_CLOSED,
            f"the market for {symbol} is closed; it "
            f"opens at {opens:%Y-%m-%d %H:%M} ({instrument.session.timezone})",
        )

    side = _member(Side, request.side)
    if side is None:
        return _reject(RejectCode.INVALID_SIDE, f"side must be BUY or SELL, not {request.side!r}")
    order_type = _member(OrderType, request.type)
    if order_type is None:
        return _reject(
            RejectCode.INVALID_ORDER_TYPE,
            f"order type must be LIMIT or MARKET, not {request.type!r}",
        )
    market = order_type is OrderType.MARKET
    tif: Tif | None
    if request.time_in_force is None:
        tif = Tif.IOC if market else Tif.DAY
    else:
        tif = _member(Tif, request.time_in_force)
        if tif is None:
            return _reject(
                RejectCode.INVALID_TIF,
                f"time in force must be one of GTC, DAY, IOC, FOK, not {request.time_in_force!r}",
            )
    if market and tif not in (Tif.IOC, Tif.FOK):
        return _reject(RejectCode.INVALID_TIF, f"a market order must be IOC or FOK, not {tif.name}")

    quantity = request.quantity
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        return _reject(
            RejectCode.INVALID_QUANTITY,
            f"quantity must be a positive whole number of shares, not {quantity!r}",
        )
    if quantity % instrument.lot_size:
        return _reject(
            RejectCode.LOT_SIZE,
            f"quantity {quantity} is not a multiple of the "
            f"lot size {instrument.lot_size} of {symbol}",
        )
    if quantity > instrument.max_order_qty:
        return _reject(
            RejectCode.QUANTITY_LIMIT,
            f"quantity {quantity} is more than the "
            f"{instrument.max_order_qty} shares allowed per order in {symbol}",
        )

    price = request.price
    if market:
        if price is not None:
            return _reject(RejectCode.PRICE_NOT_ALLOWED, "a market order takes no price")
        price_ticks = None
    else:
        if price is None:
            return _reject(RejectCode.PRICE_REQUIRED, "a limit order needs a price")
        if not is_decimal(price):
            return _reject(
                RejectCode.INVALID_PRICE,
                f"price must be a decimal number "
                f"(as a string), not {type(price).__name__} {price!r}",
            )
        price = Decimal(price)
        if not price.is_finite() or price <= 0:
            return _reject(RejectCode.INVALID_PRICE, f"price must be positive, not {price}")
        if not instrument.band_low <= price <= instrument.band_high:
            return _reject(
                RejectCode.PRICE_BAND,
                f"price {price} is outside the price band "
                f"{instrument.band_low}..{instrument.band_high} of {symbol}",
            )
        try:
            price_ticks = instrument.to_ticks(price)
        except ValueError as e:
            return _reject(RejectCode.TICK_SIZE, str(e))

    if side is Side.SELL:
        available = max(account.shares_available, 0)
        if quantity > available and not account.allow_short:
            return _reject(
                RejectCode.INSUFFICIENT_HOLDINGS,
                f"selling {quantity} {symbol} "
                f"needs {quantity} shares but {available} are available",
            )
        return Hold(shares=min(quantity, available), price_ticks=price_ticks, time_in_force=tif)

    if price_ticks is None:
        price_ticks = market_buy_price(instrument, last_price, protection_percent)
    cash = buy_hold(instrument, price_ticks, quantity, fees)
    if cash > account.cash_available:
        fee = cash - instrument.ticks_to_paise(price_ticks) * quantity
        return _reject(
            RejectCode.INSUFFICIENT_FUNDS,
            f"buying {quantity} {symbol} at up to "
            f"{instrument.to_price(price_ticks)} needs {format_paise(cash)} "
            f"(fees {format_paise(fee)} included) but "
            f"{format_paise(max(account.cash_available, 0))} is available",
        )
    return Hold(cash=cash, price_ticks=price_ticks, time_in_force=tif)
