"""Settlement arithmetic: what a fill, or the end of an order, does to balances.

Pure functions that return integer deltas, so a settlement consumer can apply them in
one SQL transaction (``UPDATE accounts SET cash = cash + :cash, blocked_cash =
blocked_cash + :blocked_cash ...``) without reading the rows first; only the average
price needs the position's current row (``brokercore.broker.money.average_price``, whose
rounding is PostgreSQL's ``round(numeric, 4)``). Cash is int paise, quantities are int
shares.

A buy order blocks, at any time, exactly what its open quantity could still cost at its
hold price: each fill debits price × qty + its fee and releases the rest of what that
quantity had blocked, so price improvement frees cash at once; what is left when the
order ends (cancelled, expired, rejected, or a market order's unused protection) is
released by ``release``; a buy whose worst price drops (a market order that an uncross
made a limit order at the opening price) releases the excess at once (``reprice``), and
so does one the engine amended (``amend``: what the new terms do not need). A sell order
blocks shares and releases them as they are sold.
Fees are ``FeeSchedule.fee`` of the order's cumulative traded value, charged as it
grows, so an order split into many fills pays what one fill would have.
Realised P&L (``realised``) is booked as a fill reduces a position, against its average
cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from brokercore.broker.market import MarketInstrument
from brokercore.broker.risk import FeeSchedule, Hold
from brokercore.engine.records import Side

__all__ = [
    "OrderHold",
    "AccountDelta",
    "PositionDelta",
    "OrderDelta",
    "Settlement",
    "SettlementError",
    "settle_fill",
    "release",
    "reprice",
    "amend",
    "realised",
]


class SettlementError(ValueError):
    """A fill that cannot belong to the order: the event stream and the order disagree."""


@dataclass(frozen=True)
class OrderHold:
    """The settlement state of one order, kept on its row.

    ``hold_price_ticks`` is the price per share the buy hold assumes (``Hold.price_ticks``);
    ``blocked_cash`` / ``blocked_shares`` are what this order still blocks of the
    account's blocked_cash / the position's blocked_quantity.
    """

    side: Side
    quantity: int
    hold_price_ticks: int
    blocked_cash: int = 0
    blocked_shares: int = 0
    filled_quantity: int = 0
    filled_notional: int = 0  # paise traded so far
    fees: int = 0  # paise charged so far

    @classmethod
    def open(cls, side: Side, quantity: int, hold: Hold) -> OrderHold:
        """The state of an order just accepted with ``hold``."""
        return cls(
            side=Side(side),
            quantity=quantity,
            hold_price_ticks=hold.price_ticks or 0,
            blocked_cash=hold.cash,
            blocked_shares=hold.shares,
        )

    @property
    def open_quantity(self) -> int:
        return self.quantity - self.filled_quantity


@dataclass(frozen=True)
class AccountDelta:
    """Add to the account's columns."""

    cash: int = 0
    blocked_cash: int = 0


@dataclass(frozen=True)
class PositionDelta:
    """Add ``quantity`` and ``blocked_quantity`` to the position (created at 0 if
    missing); ``price`` is the trade price per share in paise for ``money.average_price``."""

    quantity: int = 0
    blocked_quantity: int = 0
    price: int = 0


@dataclass(frozen=True)
class OrderDelta:
    """Add to the order row's settlement columns (the fields of ``OrderHold``)."""

    hold_price_ticks: int = 0
    blocked_cash: int = 0
    blocked_shares: int = 0
    filled_quantity: int = 0
    filled_notional: int = 0
    fees: int = 0


@dataclass(frozen=True)
class Settlement:
    """Everything one fill (or an order's end) changes; ``fee`` is the broker's income."""

    account: AccountDelta
    position: PositionDelta
    order: OrderDelta
    fee: int = 0

    def apply(self, order: OrderHold) -> OrderHold:
        """The order's state after this settlement."""
        d = self.order
        return replace(
            order,
            hold_price_ticks=order.hold_price_ticks + d.hold_price_ticks,
            blocked_cash=order.blocked_cash + d.blocked_cash,
            blocked_shares=order.blocked_shares + d.blocked_shares,
            filled_quantity=order.filled_quantity + d.filled_quantity,
            filled_notional=order.filled_notional + d.filled_notional,
            fees=order.fees + d.fees,
        )


def _still_needed(
    order: OrderHold, tick_paise: int, filled_notional: int, open_quantity: int, fees: FeeSchedule
) -> int:
    """Cash a buy must keep blocked to pay for its open quantity at the hold price."""
    rest = order.hold_price_ticks * tick_paise * open_quantity
    return rest + fees.fee(filled_notional + rest) - fees.fee(filled_notional)


def settle_fill(
    order: OrderHold,
    price_ticks: int,
    quantity: int,
    instrument: MarketInstrument,
    fees: FeeSchedule,
) -> Settlement:
    """The deltas of one fill of ``order``: ``quantity`` shares at ``price_ticks``.

    Buyer: cash -= price × qty + fee; blocked_cash -= what this quantity had blocked;
    position += qty. Seller: cash += price × qty - fee; position and blocked shares -= qty
    (only the blocked part of a short sale). Raises ``SettlementError`` for a fill the
    order cannot have: more than its open quantity, a non-positive quantity or price,
    or a buy above its hold price.
    """
    if quantity <= 0 or quantity > order.open_quantity:
        raise SettlementError(
            f"fill of {quantity} shares for an order with {order.open_quantity} open"
        )
    if price_ticks <= 0:
        raise SettlementError(f"fill price {price_ticks} ticks is not positive")
    price = instrument.ticks_to_paise(price_ticks)
    notional = price * quantity
    filled_notional = order.filled_notional + notional
    fee = fees.fee(filled_notional) - fees.fee(order.filled_notional)
    fill = OrderDelta(filled_quantity=quantity, filled_notional=notional, fees=fee)

    if order.side == Side.SELL:
        released = min(quantity, order.blocked_shares)
        return Settlement(
            AccountDelta(cash=notional - fee),
            PositionDelta(quantity=-quantity, blocked_quantity=-released, price=price),
            replace(fill, blocked_shares=-released),
            fee,
        )

    if price_ticks > order.hold_price_ticks:
        raise SettlementError(
            f"buy filled at {price_ticks} ticks, above its hold price {order.hold_price_ticks}"
        )
    keep = _still_needed(
        order, instrument.tick_paise, filled_notional, order.open_quantity - quantity, fees
    )
    released = order.blocked_cash - keep
    if released < notional + fee:  # cannot happen if the hold came from risk
        raise SettlementError(
            f"the order's hold of {order.blocked_cash} paise does not "
            f"cover a fill of {notional + fee} paise"
        )
    return Settlement(
        AccountDelta(cash=-(notional + fee), blocked_cash=-released),
        PositionDelta(quantity=quantity, price=price),
        replace(fill, blocked_cash=-released),
        fee,
    )


def release(order: OrderHold) -> Settlement:
    """The deltas when an order ends for any reason: unblock whatever it still blocks."""
    return Settlement(
        AccountDelta(blocked_cash=-order.blocked_cash),
        PositionDelta(blocked_quantity=-order.blocked_shares),
        OrderDelta(blocked_cash=-order.blocked_cash, blocked_shares=-order.blocked_shares),
    )


def reprice(
    order: OrderHold, price_ticks: int, instrument: MarketInstrument, fees: FeeSchedule
) -> Settlement:
    """The deltas when a buy can no longer execute above ``price_ticks``: its hold price
    becomes that price and it releases what its open quantity no longer needs. Nothing
    changes for a sell, or for a price that is not below the hold price."""
    if order.side == Side.SELL or price_ticks >= order.hold_price_ticks:
        return Settlement(AccountDelta(), PositionDelta(), OrderDelta())
    lower = replace(order, hold_price_ticks=price_ticks)
    keep = _still_needed(
        lower, instrument.tick_paise, order.filled_notional, order.open_quantity, fees
    )
    released = order.blocked_cash - keep
    return Settlement(
        AccountDelta(blocked_cash=-released),
        PositionDelta(),
        OrderDelta(hold_price_ticks=price_ticks - order.hold_price_ticks, blocked_cash=-released),
    )


def amend(
    order: OrderHold, price_ticks: int, instrument: MarketInstrument, fees: FeeSchedule
) -> Settlement:
    """The deltas when the engine amended ``order`` (its ``quantity`` already the new
    total, its blocks including what the OMS reserved for the amend) to rest at
    ``price_ticks``: a buy keeps what its open quantity needs at that price, a sell at
    most its open quantity of the shares it blocked; the rest is released. Raises
    ``SettlementError`` if the blocks do not cover the new terms (the OMS reserves them)."""
    if order.side == Side.SELL:
        released = order.blocked_shares - min(order.open_quantity, order.blocked_shares)
        return Settlement(
            AccountDelta(),
            PositionDelta(blocked_quantity=-released),
            OrderDelta(blocked_shares=-released),
        )
    repriced = replace(order, hold_price_ticks=price_ticks)
    keep = _still_needed(
        repriced, instrument.tick_paise, order.filled_notional, order.open_quantity, fees
    )
    released = order.blocked_cash - keep
    if released < 0:
        raise SettlementError(
            f"an amend to {order.open_quantity} open at {price_ticks} ticks needs {keep} "
            f"paise, the order holds {order.blocked_cash}"
        )
    return Settlement(
        AccountDelta(blocked_cash=-released),
        PositionDelta(),
        OrderDelta(hold_price_ticks=price_ticks - order.hold_price_ticks, blocked_cash=-released),
    )


def realised(quantity: int, avg_price: Decimal, delta: int, price: int, fee: int) -> Decimal:
    """Paise a fill realises on a position of ``quantity`` shares at average cost
    ``avg_price``: (price - average cost) x the shares it closes (those it takes off
    the position, at most all of it; negated for a short), less ``fee`` when it is a
    sell (``delta`` < 0). A fill that only adds to a position (or opens one) realises
    nothing but a sell's fee."""
    closed = min(abs(delta), abs(quantity)) if (quantity > 0) != (delta > 0) else 0
    gain = (price - avg_price) * closed if quantity > 0 else (avg_price - price) * closed
    return gain - fee if delta < 0 else gain
