"""The read side's answers (the query service's bodies: orders, portfolio, trades, candles,
the statement, the instruments), free of database drivers: the query modules build
them, the API's document is generated from them, and a client (brokercore.client)
decodes with the same definitions. camelCase, money as rupee strings, times ISO 8601."""

from __future__ import annotations

from typing import Any

import msgspec

from brokercore.engine.records import Phase
from brokercore.realtime.channels import Candle

__all__ = [
    "Order",
    "OrderWithFills",
    "Fill",
    "OrderPage",
    "Pagination",
    "OrderEvent",
    "OrderHistory",
    "OrderState",
    "Position",
    "Portfolio",
    "Trade",
    "TradePage",
    "DayPrice",
    "Candles",
    "StatementRow",
    "Statement",
    "Band",
    "Calendar",
    "NextTransition",
    "Instrument",
    "InstrumentList",
]


# --- orders, portfolio, trades, candles (brokercore.read.queries) ----------------------


class Order(msgspec.Struct, rename="camel", frozen=True):
    order_id: int
    symbol: str
    side: str
    type: str  # LIMIT, MARKET, STOP (stop-market) or STOP_LIMIT
    time_in_force: str
    price: str | None  # None: a market order or a stop-market
    quantity: int
    filled_qty: int
    avg_price: str | None  # None before the first fill
    status: str  # TRIGGER_PENDING: a stop waiting for its trigger
    reject_reason: str | None
    created_at: str
    updated_at: str
    trigger_price: str | None  # a stop's; None for the others
    disclosed_quantity: int  # an iceberg's shown part; 0: the whole order shows


class Fill(msgspec.Struct, rename="camel", frozen=True):
    trade_id: str
    price: str
    quantity: int
    time: str


class OrderWithFills(Order, frozen=True):
    fills: list[Fill]


class Pagination(msgspec.Struct, rename="camel", frozen=True):
    total: int
    page: int
    page_size: int


class OrderPage(msgspec.Struct, frozen=True):
    orders: list[Order]
    pagination: Pagination


class OrderEvent(msgspec.Struct, rename="camel", frozen=True):
    """One row of an order's history: its status and filled quantity after the event,
    and what happened (the history row's payload, as written)."""

    event_id: int
    status: str
    filled_qty: int
    occurred_at: str
    payload: dict[str, Any]


class OrderHistory(msgspec.Struct, rename="camel", frozen=True):
    order_id: int
    created_at: str
    events: list[OrderEvent]  # oldest first


class OrderState(msgspec.Struct, rename="camel", frozen=True):
    """An order as it stood at ``at``: after ``event``, the latest history row at or
    before it; ``event`` is None when none was recorded yet (the order as placed)."""

    order_id: int
    at: str
    status: str
    filled_qty: int
    event: OrderEvent | None


class Position(msgspec.Struct, rename="camel", frozen=True):
    symbol: str
    quantity: int
    avg_price: str
    current_price: str | None  # the last trade's price; None before any trade
    pnl: str | None  # unrealised: (current - average) x quantity
    realised_pnl: str  # settlement's positions.realised_pnl
    day_pnl: str | None  # ``day_pnl``'s rule; None before any trade


class Portfolio(msgspec.Struct, rename="camel", frozen=True):
    cash: str
    blocked_cash: str
    positions: list[Position]
    realised_pnl: str  # over every symbol, closed positions included
    day_pnl: str  # over every symbol with a price, closed today included


class Trade(msgspec.Struct, rename="camel", frozen=True):
    """One fill of the user's: ``value`` = price x quantity, ``fee`` the broker's."""

    trade_id: str
    order_id: int
    symbol: str
    side: str
    price: str
    quantity: int
    value: str
    fee: str
    time: str


class TradePage(msgspec.Struct, rename="camel", frozen=True):
    trades: list[Trade]  # newest first
    next_cursor: str | None  # None: this was the last page


class DayPrice(msgspec.Struct, rename="camel", frozen=True):
    """A symbol's last trade price and the previous close (the last trade before its
    trading day began), in paise; None where there was no such trade."""

    symbol: str
    last: int | None
    previous_close: int | None


class Candles(msgspec.Struct, frozen=True):
    symbol: str
    interval: str
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    candles: list[Candle]


# --- the statement (brokercore.read.statement) --------------------------------------------


class StatementRow(msgspec.Struct, rename="camel", frozen=True):
    time: str
    type: str  # DEPOSIT, WITHDRAWAL, BUY, SELL or FEE
    symbol: str | None
    quantity: int | None
    price: str | None  # rupees per share
    amount: str  # rupees: + into the account, - out of it
    balance: str  # rupees after this row
    reference: str | None  # the funding's reference or the trade's id


class Statement(msgspec.Struct, rename="camel", frozen=True):
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    time_zone: str
    opening_balance: str
    closing_balance: str
    rows: list[StatementRow]


# --- instruments (brokercore.read.instruments) ------------------------------------------


class Band(msgspec.Struct, frozen=True):
    """The circuit limits (inclusive) as rupee strings."""

    low: str
    high: str


class Calendar(msgspec.Struct, rename="camel", frozen=True):
    """The session: local times of its zone, ISO weekdays (1 = Monday), holidays (ISO
    dates); ``always_open`` for the development calendar (every instant in session)."""

    timezone: str
    always_open: bool
    pre_open: str | None
    pre_open_end: str | None
    uncross_window: int | None  # seconds at the end of the pre-open
    open: str
    close: str
    weekdays: list[int]
    holidays: list[str]


class NextTransition(msgspec.Struct, frozen=True):
    """The next step of the plan: between ``at`` and ``latest`` (UTC, ISO 8601)."""

    transition: str
    at: str
    latest: str


class Instrument(msgspec.Struct, rename="camel", frozen=True):
    symbol: str
    tick_size: str
    lot_size: int
    band: Band
    max_order_quantity: int
    enabled: bool  # false: the OMS takes no new orders
    session: Calendar
    phase: str = Phase.OPEN.name  # PRE_OPEN, OPEN, HALTED or CLOSED
    next_transition: NextTransition | None = None  # None: no step in the plan


class InstrumentList(msgspec.Struct, frozen=True):
    instruments: list[Instrument]
