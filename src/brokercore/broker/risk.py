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
from brokercore.engine.records import Phase, Side, Tif

__all__ = [
    "MIN_DISCLOSED_PERCENT",
    "OrderType",
    "STOP_TYPES",
    "LIMIT_TYPES",
    "RejectCode",
    "OrderRequest",
    "AccountState",
    "FeeSchedule",
    "NO_FEES",
    "Hold",
    "RiskRejection",
    "check_order",
    "MAX_PROTECTION_PERCENT",
    "protection_price",
    "buy_hold",
]


MIN_DISCLOSED_PERCENT = 10
"""An iceberg shows at least this share of its order (NSE's rule), as the engine's books
are built (``OrderBook(min_disclosed_percent=10)``, the daemon's default)."""

MAX_PROTECTION_PERCENT = Decimal(20)
"""The widest market protection an order may ask for (percent of its reference price)."""


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP = "STOP"  # stop-market: a market order once a trade reaches the trigger
    STOP_LIMIT = "STOP_LIMIT"  # a limit order once a trade reaches the trigger


STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
"""The order types that wait for a trigger (a set: the REST body's strings match too)."""
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
"""The order types with a limit price."""


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
    NOT_IN_PRE_OPEN = "NOT_IN_PRE_OPEN"  # IOC/FOK limits, FOK markets, market buys
    TRIGGER_REQUIRED = "TRIGGER_REQUIRED"  # a stop without a trigger price
    TRIGGER_NOT_ALLOWED = "TRIGGER_NOT_ALLOWED"  # a trigger price on a limit or market order
    INVALID_TRIGGER = "INVALID_TRIGGER"  # not a positive decimal
    TRIGGER_REACHED = "TRIGGER_REACHED"  # on the wrong side of the last trade price
    TRIGGER_LIMIT_SIDE = "TRIGGER_LIMIT_SIDE"  # a stop-limit's limit on the wrong side
    DISCLOSED_NOT_ALLOWED = "DISCLOSED_NOT_ALLOWED"  # on a market, IOC/FOK or stop order
    DISCLOSED_LOT_SIZE = "DISCLOSED_LOT_SIZE"
    DISCLOSED_TOO_LARGE = "DISCLOSED_TOO_LARGE"  # more than the order
    DISCLOSED_TOO_SMALL = "DISCLOSED_TOO_SMALL"  # under MIN_DISCLOSED_PERCENT of the order
    INVALID_PROTECTION = "INVALID_PROTECTION"  # marketProtection not in (0, 20]
    PROTECTION_NOT_ALLOWED = "PROTECTION_NOT_ALLOWED"  # marketProtection on a limit order


@dataclass(frozen=True)
class OrderRequest:
    """A new order as a client asked for it (quantity in shares, price in rupees).

    ``time_in_force`` None means the usual one: IOC for a market order, DAY for the
    others. ``price`` is the limit (LIMIT, STOP_LIMIT), ``trigger_price`` a stop's
    trigger, ``disclosed_quantity`` an iceberg's shown part (0: the whole order). Enum
    fields also accept their names ("BUY") or values, so a decoded REST body can be
    passed as it is; anything else is rejected, not raised.
    """

    symbol: str
    side: Side
    type: OrderType
    quantity: int
    price: Decimal | None = None
    time_in_force: Tif | None = None
    trigger_price: Decimal | None = None
    disclosed_quantity: int = 0


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

    ``price_ticks`` is the price per share the cash hold assumes, the worst the order
    can execute at: the limit price (LIMIT, STOP_LIMIT), or for a market or stop-market
    buy its protection price, the band's top without protection. The engine must
    never fill a buy above it, even after a re-band lifts the band's top, so every buy
    reaches the engine capped at this price (brokercore.entry.order_entry). None for
    market and stop-market sells. ``time_in_force`` is the resolved one, as the
    customer's order keeps it; ``trigger_ticks`` a stop's trigger in ticks (else None).
    ``protection_ticks`` is a protected market or stop-market order's edge
    (``protection_price``), the limit the engine gets instead of a market order; None
    when unprotected (a market order waiting for the pre-open's auction).
    """

    cash: int = 0
    shares: int = 0
    price_ticks: int | None = None
    time_in_force: Tif = Tif.DAY
    trigger_ticks: int | None = None
    protection_ticks: int | None = None


@dataclass(frozen=True)
class RiskRejection:
    code: RejectCode
    message: str


def protection_price(
    instrument: MarketInstrument, side: Side, reference: Decimal, protection_percent: Decimal
) -> int:
    """The edge in ticks of a market order's protection: ``reference`` (the last price,
    a stop's trigger) × (1 ± percent/100), up for a buy and down for a sell, rounded to
    a tick inward (never beyond the protection) and kept inside the band."""
    for name, value in (("reference", reference), ("protection_percent", protection_percent)):
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"{name} must be a finite Decimal, not {value!r}")
    if reference <= 0 or protection_percent < 0:
        raise ValueError(
            f"need reference > 0 and protection_percent >= 0 "
            f"(got {reference}, {protection_percent})"
        )
    sign = 1 if side is Side.BUY else -1
    rn, rd = reference.as_integer_ratio()
    pn, pd = protection_percent.as_integer_ratio()
    tn, td = instrument.tick_size.as_integer_ratio()
    # ticks = reference * (100 ± p) / 100 / tick, in integers: floor for a buy, ceil for a sell
    num = rn * (100 * pd + sign * pn) * td
    den = rd * pd * 100 * tn
    ticks = num // den if sign > 0 else -(-num // den)
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

    Checks in this order: symbol known, not halted, market not closed (the calendar's
    phase at ``now``: orders are taken in PRE_OPEN and OPEN); side, order type, time in
    force (market: IOC or FOK; stop: GTC or DAY; stop-limit: GTC, DAY or IOC), and in
    PRE_OPEN neither an IOC/FOK limit nor a FOK market order; no buy the engine could
    not cap at its hold (``_uncappable_buy``); quantity positive, a whole
    number of lots, at most max_order_qty; price absent on market and stop orders,
    present, positive, inside the band (edges included) and on a tick on limit and
    stop-limit orders; a stop's trigger likewise, not already reached by ``last_price``
    (the last trade's, when known) and not beyond its limit; a disclosed quantity only
    on a GTC/DAY limit, a whole number of lots, at most the order, at least
    MIN_DISCLOSED_PERCENT of it; then funds (buys: the worst price × quantity + fees)
    or holdings (sells: shares, since sale fees come out of the proceeds). With
    ``protection_percent`` a market or stop-market order gets its protection edge
    (``_protection``), which is also a buy's worst price; without, a buy's is the band's top.

    These are the engine's rules (docs/engine.md, "Validation order"), checked here so
    that the user hears at once; the engine checks them again against its own book.
    """
    if instrument is None:
        return _reject(RejectCode.UNKNOWN_SYMBOL, f"unknown symbol {request.symbol!r}")
    if instrument.symbol != request.symbol:
        raise ValueError(f"instrument {instrument.symbol} given for an order in {request.symbol!r}")
    symbol = instrument.symbol
    if not instrument.enabled:
        return _reject(RejectCode.SYMBOL_HALTED, f"trading in {symbol} is halted")
    phase = instrument.session.phase(now)
    if phase is Phase.CLOSED:
        return _reject(RejectCode.MARKET_CLOSED, _closed(instrument, now))

    side = _member(Side, request.side)
    if side is None:
        return _reject(RejectCode.INVALID_SIDE, f"side must be BUY or SELL, not {request.side!r}")
    order_type = _member(OrderType, request.type)
    if order_type is None:
        return _reject(
            RejectCode.INVALID_ORDER_TYPE,
            f"order type must be one of {', '.join(OrderType)}, not {request.type!r}",
        )
    tif = _time_in_force(request, order_type, phase, symbol)
    if isinstance(tif, RiskRejection):
        return tif
    uncapped = _uncappable(side, order_type, tif, phase, symbol, protection_percent is not None)
    if uncapped is not None:
        return uncapped

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

    has_limit = order_type in LIMIT_TYPES
    price_ticks: int | None = None
    if not has_limit:
        if request.price is not None:
            hint = " (a stop with a limit price is a STOP_LIMIT)" * (order_type is OrderType.STOP)
            return _reject(
                RejectCode.PRICE_NOT_ALLOWED, f"a {_kind(order_type)} order takes no price{hint}"
            )
    elif request.price is None:
        return _reject(RejectCode.PRICE_REQUIRED, f"a {_kind(order_type)} order needs a price")
    else:
        ticks = _price_ticks(instrument, request.price, "price", RejectCode.INVALID_PRICE)
        if isinstance(ticks, RiskRejection):
            return ticks
        price_ticks = ticks

    trigger_ticks = _trigger(request, order_type, side, instrument, price_ticks, last_price)
    if isinstance(trigger_ticks, RiskRejection):
        return trigger_ticks
    disclosed = _disclosed(request, order_type, tif, instrument)
    if disclosed is not None:
        return disclosed
    protection = _protection(
        order_type, side, phase, instrument, last_price, trigger_ticks, protection_percent
    )

    if side is Side.SELL:
        available = max(account.shares_available, 0)
        if quantity > available and not account.allow_short:
            return _reject(
                RejectCode.INSUFFICIENT_HOLDINGS,
                f"selling {quantity} {symbol} "
                f"needs {quantity} shares but {available} are available",
            )
        return Hold(
            shares=min(quantity, available),
            price_ticks=price_ticks,
            time_in_force=tif,
            trigger_ticks=trigger_ticks,
            protection_ticks=protection,
        )

    if price_ticks is None:  # unprotected: the worst price the engine can fill at
        price_ticks = instrument.high if protection is None else protection
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
    return Hold(
        cash=cash,
        price_ticks=price_ticks,
        time_in_force=tif,
        trigger_ticks=trigger_ticks,
        protection_ticks=protection,
    )


def _closed(instrument: MarketInstrument, now: datetime) -> str:
    """The market is closed: when it opens, and when its pre-open takes orders if that
    comes first."""
    session = instrument.session
    opens = session.next_open(now)
    message = (
        f"the market for {instrument.symbol} is closed; it "
        f"opens at {opens:%Y-%m-%d %H:%M} ({session.timezone})"
    )
    if session.pre_open is not None:
        pre_open = datetime.combine(opens.date(), session.pre_open, tzinfo=session.zone)
        if pre_open >= now:
            message += f"; its pre-open call auction takes orders from {pre_open:%H:%M}"
    return message


_TIFS: dict[OrderType, tuple[Tif, ...]] = {
    OrderType.LIMIT: (Tif.GTC, Tif.DAY, Tif.IOC, Tif.FOK),
    OrderType.MARKET: (Tif.IOC, Tif.FOK),
    OrderType.STOP: (Tif.GTC, Tif.DAY),
    OrderType.STOP_LIMIT: (Tif.GTC, Tif.DAY, Tif.IOC),
}
"""The times in force each order type may have (docs/engine.md, the ops' fields)."""

_PRE_OPEN_TIFS: dict[OrderType, tuple[Tif, ...]] = {
    OrderType.LIMIT: (Tif.IOC, Tif.FOK),
    OrderType.MARKET: (Tif.FOK,),
}
"""What the call auction refuses: an order that must fill now cannot wait for it (a
market IOC waits for the uncross, then converts to a limit at the opening price)."""


def _kind(order_type: OrderType) -> str:
    """An order type as words: "stop-limit"."""
    return order_type.name.lower().replace("_", "-")


def _time_in_force(
    request: OrderRequest, order_type: OrderType, phase: Phase, symbol: str
) -> Tif | RiskRejection:
    """The order's time in force, the default one (IOC for market orders, else DAY) if
    none is given; a rejection if its type may not have it, or not in this phase."""
    if request.time_in_force is None:
        tif = Tif.IOC if order_type is OrderType.MARKET else Tif.DAY
    else:
        found = _member(Tif, request.time_in_force)
        if found is None:
            return _reject(
                RejectCode.INVALID_TIF,
                f"time in force must be one of GTC, DAY, IOC, FOK, not {request.time_in_force!r}",
            )
        tif = found
    allowed = _TIFS[order_type]
    if tif not in allowed:
        return _reject(
            RejectCode.INVALID_TIF,
            f"a {_kind(order_type)} order must be {' or '.join(t.name for t in allowed)}, "
            f"not {tif.name}",
        )
    if phase is Phase.PRE_OPEN and tif in _PRE_OPEN_TIFS.get(order_type, ()):
        return _reject(
            RejectCode.NOT_IN_PRE_OPEN,
            f"{symbol} is in its pre-open call auction, which takes no {tif.name} "
            f"{_kind(order_type)} orders (they could not wait for the opening price)",
        )
    return tif


def _uncappable(
    side: Side, order_type: OrderType, tif: Tif, phase: Phase, symbol: str, protected: bool
) -> RiskRejection | None:
    """Why an order is refused whose price the engine could not cap.

    A market buy goes to the engine as an IOC/FOK limit at its held price and a
    stop-market buy as a stop-limit IOC at it, so that a re-band lifting the band's top
    never lets one fill above what it holds; with market protection, sells go likewise
    at their protection's edge. So a market buy cannot wait for the pre-open's uncross
    (which gives a market order priority at any price: a limit at the band's top would
    pull the opening price up to it and rest there), and a capped stop-market is DAY
    only (the engine's IOC stop ends with the day)."""
    if order_type is OrderType.STOP and tif is not Tif.DAY and (side is Side.BUY or protected):
        return _reject(
            RejectCode.INVALID_TIF,
            f"a {side.name.lower()} stop-market order must be DAY, not {tif.name} (it waits "
            "as a stop-limit IOC at its protection price, which expires at the close; a "
            "STOP_LIMIT can be GTC)",
        )
    if side is Side.BUY and order_type is OrderType.MARKET and phase is Phase.PRE_OPEN:
        return _reject(
            RejectCode.NOT_IN_PRE_OPEN,
            f"{symbol} is in its pre-open call auction, which takes no market buy orders "
            "(nothing would bound the price it pays): place a limit order",
        )
    return None


def _protection(
    order_type: OrderType,
    side: Side,
    phase: Phase,
    instrument: MarketInstrument,
    last_price: Decimal | None,
    trigger_ticks: int | None,
    protection_percent: Decimal | None,
) -> int | None:
    """A market or stop-market order's protection edge (``protection_price``); None for
    limit orders, without a percent, and for a pre-open market order (it waits for the
    auction's price). A stop's reference is its trigger; a market order's the last
    trade price, else the band's middle: the base price the circuit band is set around
    (the previous close), as the OMS knows no other before a symbol's first trade."""
    if protection_percent is None or order_type in LIMIT_TYPES:
        return None
    if order_type is OrderType.STOP:
        assert trigger_ticks is not None  # _trigger refuses a stop without one
        reference = instrument.to_price(trigger_ticks)
    elif phase is Phase.OPEN:
        middle = instrument.to_price((instrument.low + instrument.high) // 2)
        reference = middle if last_price is None else last_price
    else:
        return None
    return protection_price(instrument, side, reference, protection_percent)


def _price_ticks(
    instrument: MarketInstrument, price: object, name: str, invalid: RejectCode
) -> int | RiskRejection:
    """A price in rupees (a limit, a trigger) as ticks, if it is a positive decimal
    inside the band and on a tick."""
    if not is_decimal(price):
        return _reject(
            invalid,
            f"{name} must be a decimal number (as a string), not {type(price).__name__} {price!r}",
        )
    value = Decimal(price)
    if not value.is_finite() or value <= 0:
        return _reject(invalid, f"{name} must be positive, not {value}")
    if not instrument.band_low <= value <= instrument.band_high:
        return _reject(
            RejectCode.PRICE_BAND,
            f"{name} {value} is outside the price band "
            f"{instrument.band_low}..{instrument.band_high} of {instrument.symbol}",
        )
    try:
        return instrument.to_ticks(value)
    except ValueError as e:
        return _reject(RejectCode.TICK_SIZE, str(e).replace("price", name, 1))


def _trigger(
    request: OrderRequest,
    order_type: OrderType,
    side: Side,
    instrument: MarketInstrument,
    limit_ticks: int | None,
    last_price: Decimal | None,
) -> int | None | RiskRejection:
    """A stop's trigger in ticks (None for other orders), or why it is refused: missing,
    not a price in the band, already reached by the last trade (buy: at or below it,
    sell: at or above it), or beyond its stop-limit's limit (buy: limit < trigger, sell:
    limit > trigger)."""
    trigger = request.trigger_price
    if order_type not in STOP_TYPES:
        if trigger is not None:
            return _reject(
                RejectCode.TRIGGER_NOT_ALLOWED,
                f"a {_kind(order_type)} order takes no trigger price (a STOP or STOP_LIMIT does)",
            )
        return None
    if trigger is None:
        return _reject(
            RejectCode.TRIGGER_REQUIRED, f"a {_kind(order_type)} order needs a triggerPrice"
        )
    ticks = _price_ticks(instrument, trigger, "trigger price", RejectCode.INVALID_TRIGGER)
    if isinstance(ticks, RiskRejection):
        return ticks
    buy = side is Side.BUY
    if last_price is not None:
        value = instrument.to_price(ticks)
        if (value <= last_price) if buy else (value >= last_price):
            return _reject(
                RejectCode.TRIGGER_REACHED,
                f"a {side.name.lower()} stop's trigger must be "
                f"{'above' if buy else 'below'} the last price {last_price} of "
                f"{instrument.symbol}, not {value} (it would trigger at once)",
            )
    if limit_ticks is not None and ((limit_ticks < ticks) if buy else (limit_ticks > ticks)):
        return _reject(
            RejectCode.TRIGGER_LIMIT_SIDE,
            f"a {side.name.lower()} stop-limit's price must be "
            f"{'at or above' if buy else 'at or below'} its trigger price "
            f"{instrument.to_price(ticks)}, not {instrument.to_price(limit_ticks)}",
        )
    return ticks


def _disclosed(
    request: OrderRequest, order_type: OrderType, tif: Tif, instrument: MarketInstrument
) -> RiskRejection | None:
    """Why the order's disclosed quantity is refused, if it is: only a GTC or DAY limit
    order may show part of itself, a whole number of lots, at most the order and at least
    MIN_DISCLOSED_PERCENT of it."""
    disclosed, quantity = request.disclosed_quantity, request.quantity
    if disclosed == 0:
        return None
    if isinstance(disclosed, bool) or not isinstance(disclosed, int) or disclosed < 0:
        return _reject(
            RejectCode.INVALID_QUANTITY,
            f"disclosedQuantity must be a positive whole number of shares, not {disclosed!r}",
        )
    if order_type is not OrderType.LIMIT or tif not in (Tif.GTC, Tif.DAY):
        what = f"an {tif.name} limit" if order_type is OrderType.LIMIT else f"a {_kind(order_type)}"
        return _reject(
            RejectCode.DISCLOSED_NOT_ALLOWED,
            f"{what} order cannot disclose part of itself (only GTC and DAY limit orders can)",
        )
    if disclosed % instrument.lot_size:
        return _reject(
            RejectCode.DISCLOSED_LOT_SIZE,
            f"disclosed quantity {disclosed} is not a multiple of the "
            f"lot size {instrument.lot_size} of {instrument.symbol}",
        )
    if disclosed > quantity:
        return _reject(
            RejectCode.DISCLOSED_TOO_LARGE,
            f"disclosed quantity {disclosed} is more than the order's {quantity}",
        )
    if disclosed * 100 < quantity * MIN_DISCLOSED_PERCENT:
        return _reject(
            RejectCode.DISCLOSED_TOO_SMALL,
            f"disclosed quantity {disclosed} is less than {MIN_DISCLOSED_PERCENT} % "
            f"of the order's {quantity}",
        )
    return None
