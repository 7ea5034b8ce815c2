"""The query side's reads: SQL over the read model and the JSON bodies it answers.

The projector keeps ``read_model.*``; the OMS and settlement keep the write tables
(``orders``, ``fills``, ``order_events``, ``accounts``) in the same database. The
read model lags the write tables a little, so for read-your-writes an open order the
read model has not seen yet is read from ``orders`` (its fills from ``fills``): a client
that just placed an order finds it, PENDING or already moved on by settlement. (Only a
finished order settled entirely before the projector saw any of it is missing, for that
moment; open orders are what orders_open_idx finds cheaply.) No web framework here;
services/query maps HTTP onto these functions, which each take an open
``psycopg.AsyncConnection``.

The projector stores an order's fills (JSONB ``read_model.orders.fills``) as they are
answered, ``[{tradeId, price (rupees), quantity, time (ISO 8601)}]``; the fallback builds
the same from ``fills``. Bodies: camelCase, money as rupee strings (``money.rupees``),
times ISO 8601 UTC.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal, TypeVar, overload

import msgspec
from psycopg import AsyncConnection, sql

from brokercore.broker.market import MarketInstrument
from brokercore.broker.money import rupees
from brokercore.broker.orders import OPEN_STATUSES, OrderStatus
from brokercore.engine.records import Phase
from brokercore.read.answers import (
    Candles,
    DayPrice,
    Fill,
    Order,
    OrderEvent,
    OrderHistory,
    OrderPage,
    OrderState,
    OrderWithFills,
    Pagination,
    Portfolio,
    Position,
    Trade,
    TradePage,
)
from brokercore.read.candles import (
    AUCTION_SQL,
    CANDLES_SQL,
    DEPTH_LEVELS,
    DEPTH_SQL,
    INTERVALS,
    LAST_PRICE_SQL,
    PHASES_SQL,
    Interval,
    book_update,
    candles,
)
from brokercore.realtime.channels import BookUpdate

__all__ = [
    "MAX_PAGE_SIZE",
    "OrdersQuery",
    "HistoryQuery",
    "CandlesQuery",
    "TradesQuery",
    "day_starts",
    "day_prices",
    "list_trades",
    "list_orders",
    "get_order",
    "order_history",
    "state_at",
    "portfolio",
    "book",
    "candle_series",
]

MAX_PAGE_SIZE = 200

Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


# --- requests (query strings) ----------------------------------------------------------


class OrdersQuery(msgspec.Struct, rename="camel", frozen=True):
    """GET /orders: filters (``from`` inclusive, ``to`` exclusive, on created_at) and
    the page (from 1)."""

    status: list[OrderStatus] | None = None
    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    start: Timestamp | None = msgspec.field(default=None, name="from")
    end: Timestamp | None = msgspec.field(default=None, name="to")
    page: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    page_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE_SIZE)] = 50


class HistoryQuery(msgspec.Struct, frozen=True):
    at: Timestamp | None = None


class TradesQuery(msgspec.Struct, frozen=True):
    """GET /trades: filters (``from`` inclusive, ``to`` exclusive, on the fill's time),
    the page's size, and the cursor a previous page gave (``Cursor``)."""

    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    side: Literal["BUY", "SELL"] | None = None
    start: Timestamp | None = msgspec.field(default=None, name="from")
    end: Timestamp | None = msgspec.field(default=None, name="to")
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE_SIZE)] = 50
    cursor: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class CandlesQuery(msgspec.Struct, frozen=True):
    interval: Interval = "1m"
    start: Timestamp | None = msgspec.field(default=None, name="from")
    end: Timestamp | None = msgspec.field(default=None, name="to")


# --- orders ----------------------------------------------------------------------------

# An order ``o`` of the write table the read model has not seen yet.
_NOT_PROJECTED = "NOT EXISTS (SELECT 1 FROM read_model.orders r WHERE r.order_id = o.order_id)"
# ... open ones only, for a user's list (the statuses as literals, so that the planner
# proves orders_open_idx's predicate): settlement may finish an order before the projector
# has written it, and the list then misses it for that moment. One order by its id is
# looked up whatever its status.
_UNSEEN = f"""o.status IN ({", ".join(f"'{s}'" for s in OPEN_STATUSES)}) AND {_NOT_PROJECTED}"""

# Every order of a user: the read model's, and the write table's that it lacks yet.
_USER_ORDERS = f"""
SELECT order_id, symbol, side, type, time_in_force, price, quantity, filled_quantity,
       avg_price, status, reject_reason, created_at, updated_at, trigger_price, disclosed_qty
  FROM read_model.orders WHERE user_id = %(user)s
UNION ALL
SELECT o.order_id, o.symbol, o.side, o.type, o.time_in_force, o.price, o.quantity,
       o.filled_quantity, o.avg_fill_price, o.status, o.reject_reason, o.created_at,
       o.updated_at, o.trigger_price, o.disclosed_qty
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
 WHERE a.user_id = %(user)s AND {_UNSEEN}"""

# The count and the page in one statement (one snapshot): a page past the end still
# gives the total.
_PAGE = """
WITH matched AS (SELECT * FROM ({orders}) m WHERE {filters})
SELECT total.n, page.*
  FROM (SELECT count(*) AS n FROM matched) total
  LEFT JOIN LATERAL (SELECT * FROM matched ORDER BY created_at DESC, order_id DESC
                      LIMIT %(limit)s OFFSET %(offset)s) page ON true
 ORDER BY page.created_at DESC, page.order_id DESC"""

_ORDER = f"""
SELECT order_id, symbol, side, type, time_in_force, price, quantity, filled_quantity,
       avg_price, status, reject_reason, created_at, updated_at, trigger_price, disclosed_qty,
       fills
  FROM read_model.orders WHERE order_id = %(order)s AND user_id = %(user)s
UNION ALL
SELECT o.order_id, o.symbol, o.side, o.type, o.time_in_force, o.price, o.quantity,
       o.filled_quantity, o.avg_fill_price, o.status, o.reject_reason, o.created_at,
       o.updated_at, o.trigger_price, o.disclosed_qty,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                             'tradeId', f.trade_id, 'quantity', f.quantity,
                             'price', (f.price::numeric / 100)::numeric(20, 2)::text,
                             'time', f.executed_at) ORDER BY f.executed_at, f.trade_id)
                   FROM fills f WHERE f.order_id = o.order_id AND f.side = o.side),
                '[]'::jsonb)
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
 WHERE o.order_id = %(order)s AND a.user_id = %(user)s AND {_NOT_PROJECTED}"""

_FILTERS = {
    "status": "status = ANY(%(status)s)",
    "symbol": "symbol = %(symbol)s",
    "start": "created_at >= %(start)s",
    "end": "created_at < %(end)s",
}


async def list_orders(conn: AsyncConnection, user: str, query: OrdersQuery) -> OrderPage:
    """A page of the user's orders matching ``query``, newest first, and their total."""
    params = {name: getattr(query, name) for name in _FILTERS if getattr(query, name) is not None}
    filters = (
        sql.SQL(" AND ").join([sql.SQL(_FILTERS[name]) for name in params])
        if params
        else sql.SQL("true")
    )
    statement = sql.SQL(_PAGE).format(orders=sql.SQL(_USER_ORDERS), filters=filters)
    rows = await (
        await conn.execute(
            statement,
            params
            | {
                "user": user,
                "limit": query.page_size,
                "offset": (query.page - 1) * query.page_size,
            },
        )
    ).fetchall()
    orders = [_order(Order, row[1:]) for row in rows if row[1] is not None]
    return OrderPage(orders, Pagination(rows[0][0], query.page, query.page_size))


async def get_order(conn: AsyncConnection, user: str, order_id: int) -> OrderWithFills | None:
    """The user's order with its fills; None if the user has no such order."""
    row = await (await conn.execute(_ORDER, {"order": order_id, "user": user})).fetchone()
    if row is None:
        return None
    fills = [Fill(f["tradeId"], f["price"], f["quantity"], _iso_text(f["time"])) for f in row[-1]]
    return _order(OrderWithFills, row[:-1], fills)


_Order = TypeVar("_Order", Order, OrderWithFills)


def _order(kind: type[_Order], row: Sequence[Any], *more: list[Fill]) -> _Order:
    (
        order_id,
        symbol,
        side,
        type_,
        tif,
        price,
        quantity,
        filled,
        avg_price,
        status,
        reason,
        created,
        updated,
        trigger,
        disclosed,
    ) = row
    return kind(
        order_id,
        symbol,
        side,
        type_,
        tif,
        rupees(price),
        quantity,
        filled,
        rupees(avg_price),
        status,
        reason,
        _iso(created),
        _iso(updated),
        rupees(trigger),
        disclosed,
        *more,
    )


# --- history -------------------------------------------------------------------------------

_HISTORY = """
SELECT o.created_at, e.event_id, e.status, e.filled_quantity, e.payload, e.occurred_at
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
  LEFT JOIN order_events e ON e.order_id = o.order_id
 WHERE o.order_id = %(order)s AND a.user_id = %(user)s
 ORDER BY e.occurred_at, e.event_id"""


async def order_history(conn: AsyncConnection, user: str, order_id: int) -> OrderHistory | None:
    """Every recorded change of the user's order (``order_events``), in the order they
    happened; None if the user has no such order."""
    rows = await (await conn.execute(_HISTORY, {"order": order_id, "user": user})).fetchall()
    if not rows:
        return None
    events = [
        OrderEvent(event_id, status, filled, _iso(at), payload)
        for _, event_id, status, filled, payload, at in rows
        if event_id is not None
    ]
    return OrderHistory(order_id, _iso(rows[0][0]), events)


def state_at(history: OrderHistory, at: datetime) -> OrderState | None:
    """The order at instant ``at``: after the latest event at or before it (ties: the
    later event), or as placed (PENDING) when none was recorded yet; None before the
    order was placed."""
    latest = None
    for event in history.events:  # sorted by (occurred_at, event_id)
        if datetime.fromisoformat(event.occurred_at) > at:
            break
        latest = event
    if latest is not None:
        return OrderState(history.order_id, _iso(at), latest.status, latest.filled_qty, latest)
    if at >= datetime.fromisoformat(history.created_at):
        return OrderState(history.order_id, _iso(at), "PENDING", 0, None)
    return None


# --- portfolio -----------------------------------------------------------------------------


async def portfolio(
    conn: AsyncConnection, user: str, starts: Mapping[str, datetime]
) -> Portfolio | None:
    """The user's cash (the ledger), open positions (the read model) valued at each
    symbol's last trade, and P&L: realised (settlement's, per symbol and in total) and
    the day's; None if the user has no account. ``starts`` is when each symbol's trading
    day began (``day_starts``).

    The day's P&L of a symbol is its mark-to-market change since the previous close:
    last x quantity now - previous close x quantity at the day's start - what today's
    buys cost + what today's sells brought (fees not counted), where the quantity at the
    start is the quantity now less today's net buys. Per share that is (last - previous
    close) for shares held all day, (last - buy price) for shares bought today and (sell
    price - previous close) for shares held at the start and sold today. A symbol without
    a trade before today counts its quantity at the start at its average cost; one
    without any trade has none (None). The quantities and fills are settlement's
    (``positions``, ``fills``), read in the same snapshot as the cash."""
    account = await (
        await conn.execute("SELECT cash, blocked_cash FROM accounts WHERE user_id = %s", (user,))
    ).fetchone()
    if account is None:
        return None
    held = await (await conn.execute(_POSITIONS, (user,))).fetchall()
    realised: dict[str, Decimal] = {}
    day: dict[str, Decimal | None] = {}
    for symbol, quantity, avg, pnl, bought, paid, sold, got, last, close in await (
        await conn.execute(_PNL, {"user": user, **_day_params(starts)})
    ).fetchall():
        realised[symbol] = pnl
        start = close if close is not None else avg
        day[symbol] = (
            None
            if last is None
            else last * quantity - start * (quantity - bought + sold) - paid + got
        )
    positions = []
    for symbol, quantity, avg_price, last in held:
        pnl = None if last is None else (last - avg_price) * quantity
        positions.append(
            Position(
                symbol,
                quantity,
                rupees(avg_price),
                rupees(last),
                _paise(pnl),
                _paise(realised.get(symbol, Decimal(0))),
                _paise(day.get(symbol, Decimal(0))),
            )
        )
    return Portfolio(
        rupees(account[0]),
        rupees(account[1]),
        positions,
        _paise(sum(realised.values(), Decimal(0))),
        _paise(sum((d for d in day.values() if d is not None), Decimal(0))),
    )


@overload
def _paise(amount: Decimal | int) -> str: ...
@overload
def _paise(amount: Decimal | int | None) -> str | None: ...
def _paise(amount: Decimal | int | None) -> str | None:
    """Paise, rounded to whole paise (half away from zero), as the API's rupees."""
    return None if amount is None else rupees(Decimal(amount).quantize(Decimal(1), ROUND_HALF_UP))


PRICES_SQL = """
SELECT (SELECT t.price FROM read_model.trades t WHERE t.symbol = d.symbol
         ORDER BY t.seq DESC LIMIT 1) AS last,
       (SELECT t.price FROM read_model.trades t WHERE t.symbol = d.symbol
           AND t.executed_at < d.start
         ORDER BY t.executed_at DESC, t.seq DESC LIMIT 1) AS previous_close"""
"""The last price and the previous close of the row ``d`` (symbol, start of its day)."""

# Settlement's positions of the user that matter today: held, with P&L realised, or
# traded today; with today's fills, the last price and the previous close.
_PNL = f"""
WITH day AS (SELECT * FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[])
                     AS d (symbol, start))
SELECT p.symbol, p.quantity, p.avg_price, p.realised_pnl,
       coalesce(f.bought, 0), coalesce(f.paid, 0), coalesce(f.sold, 0), coalesce(f.got, 0),
       pr.last, pr.previous_close
  FROM positions p
  JOIN accounts a ON a.account_id = p.account_id AND a.user_id = %(user)s
  JOIN day d ON d.symbol = p.symbol
  LEFT JOIN LATERAL (
      SELECT sum(x.quantity) FILTER (WHERE x.side = 'BUY') AS bought,
             sum(x.price * x.quantity) FILTER (WHERE x.side = 'BUY') AS paid,
             sum(x.quantity) FILTER (WHERE x.side = 'SELL') AS sold,
             sum(x.price * x.quantity) FILTER (WHERE x.side = 'SELL') AS got
        FROM fills x
       WHERE x.account_id = p.account_id AND x.symbol = p.symbol
         AND x.executed_at >= d.start) f ON true
  CROSS JOIN LATERAL ({PRICES_SQL}) pr
 WHERE p.quantity <> 0 OR p.realised_pnl <> 0 OR f.bought IS NOT NULL OR f.sold IS NOT NULL"""


# --- trades --------------------------------------------------------------------------------


class BadCursor(ValueError):
    """A cursor this service did not make."""


_TRADES = """
SELECT x.trade_id, x.order_id, x.symbol, x.side, x.price, x.quantity, coalesce(fi.amount, 0),
       x.executed_at
  FROM fills x
  JOIN accounts a ON a.account_id = x.account_id
  LEFT JOIN fee_income fi ON fi.trade_id = x.trade_id AND fi.side = x.side
 WHERE a.user_id = %(user)s AND {filters}
 ORDER BY x.executed_at DESC, x.trade_id DESC, x.side DESC
 LIMIT %(limit)s"""

_TRADE_FILTERS = {
    "symbol": "x.symbol = %(symbol)s",
    "side": "x.side = %(side)s",
    "start": "x.executed_at >= %(start)s",
    "end": "x.executed_at < %(end)s",
    "cursor": "(x.executed_at, x.trade_id, x.side) < (%(at)s, %(trade)s, %(trade_side)s)",
}

_cursor = msgspec.json.Decoder(tuple[int, str, Literal["BUY", "SELL"]])


async def list_trades(conn: AsyncConnection, user: str, query: TradesQuery) -> TradePage:
    """A page of the user's fills matching ``query``, newest first (by time, then trade
    id and side: a total order). The cursor is where the page ended, so the next page
    starts right after it whatever fills arrived meanwhile: none is shown twice, and none
    that existed is skipped. Raises ``BadCursor``."""
    params: dict[str, object] = {
        name: getattr(query, name) for name in _TRADE_FILTERS if getattr(query, name) is not None
    }
    if query.cursor is not None:
        try:
            us, trade, side = _cursor.decode(base64.urlsafe_b64decode(query.cursor + "=="))
            at = _EPOCH + timedelta(microseconds=us)
        except (ValueError, OverflowError, msgspec.DecodeError):
            raise BadCursor("not a cursor of this endpoint") from None
        params |= {"at": at, "trade": trade, "trade_side": side}
    filters = sql.SQL(" AND ").join(
        [sql.SQL(_TRADE_FILTERS[name]) for name in params if name in _TRADE_FILTERS]
        or [sql.SQL("true")]
    )
    rows = await (
        await conn.execute(
            sql.SQL(_TRADES).format(filters=filters),
            params | {"user": user, "limit": query.limit + 1},
        )
    ).fetchall()
    trades = [
        Trade(
            tid, order, symbol, side, rupees(price), qty, rupees(price * qty), rupees(fee), _iso(at)
        )
        for tid, order, symbol, side, price, qty, fee, at in rows[: query.limit]
    ]
    following = None
    if len(rows) > query.limit:
        tid, _, _, side, *_, at = rows[query.limit - 1]
        key = msgspec.json.encode(((at - _EPOCH) // timedelta(microseconds=1), tid, side))
        following = base64.urlsafe_b64encode(key).decode().rstrip("=")
    return TradePage(trades, following)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- market data ---------------------------------------------------------------------------


async def book(conn: AsyncConnection, instrument: MarketInstrument) -> BookUpdate:
    """The instrument's depth, best bid and ask, last price, phase and (in PRE_OPEN) the
    indicative opening, from the read model."""
    symbol = instrument.symbol
    depth = await (
        await conn.execute(DEPTH_SQL, {"symbol": symbol, "levels": DEPTH_LEVELS})
    ).fetchall()
    phase = await (await conn.execute(PHASES_SQL, {"symbols": [symbol]})).fetchone()
    auction = await (await conn.execute(AUCTION_SQL, {"symbols": [symbol]})).fetchall()
    return book_update(
        symbol,
        depth,
        await _last_price(conn, symbol),
        Phase.OPEN.name if phase is None else phase[1],
        [(side, price, quantity) for _, side, price, quantity in auction],
        band=instrument.band_paise,
    )


async def candle_series(
    conn: AsyncConnection, symbol: str, interval: Interval, start: datetime, end: datetime
) -> Candles:
    """OHLCV of the symbol's trades in [start, end), one candle per interval that traded."""
    rows = await (
        await conn.execute(
            CANDLES_SQL,
            {
                "interval": INTERVALS[interval],
                "symbol": symbol,
                "from": start,
                "to": end,
            },
        )
    ).fetchall()
    return Candles(symbol, interval, _iso(start), _iso(end), candles(rows))


_DAY_PRICES = f"""
SELECT d.symbol, pr.last, pr.previous_close
  FROM unnest(%(symbols)s::text[], %(starts)s::timestamptz[]) WITH ORDINALITY
       AS d (symbol, start, n)
 CROSS JOIN LATERAL ({PRICES_SQL}) pr
 ORDER BY d.n"""


def day_starts(market: Mapping[str, MarketInstrument], now: datetime) -> dict[str, datetime]:
    """When each symbol's trading day began: the last midnight before ``now`` in its
    session's time zone."""
    starts: dict[str, datetime] = {}
    for symbol, instrument in market.items():
        zone = instrument.session.zone
        starts[symbol] = datetime.combine(now.astimezone(zone).date(), time(0), tzinfo=zone)
    return starts


def _day_params(starts: Mapping[str, datetime]) -> dict[str, object]:
    return {"symbols": list(starts), "starts": list(starts.values())}


async def day_prices(conn: AsyncConnection, starts: Mapping[str, datetime]) -> list[DayPrice]:
    """The last price and previous close of each symbol of ``starts`` (``day_starts``),
    in its order."""
    rows = await (await conn.execute(_DAY_PRICES, _day_params(starts))).fetchall()
    return [DayPrice(*row) for row in rows]


_POSITIONS = """
SELECT p.symbol, p.quantity, p.avg_price,
       (SELECT t.price FROM read_model.trades t WHERE t.symbol = p.symbol
         ORDER BY t.seq DESC LIMIT 1)           -- the last price, as LAST_PRICE_SQL
  FROM read_model.positions p
 WHERE p.user_id = %s AND p.quantity <> 0
 ORDER BY p.symbol"""


async def _last_price(conn: AsyncConnection, symbol: str) -> int | None:
    row = await (await conn.execute(LAST_PRICE_SQL, {"symbol": symbol})).fetchone()
    return None if row is None else row[0]


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _iso_text(text: str) -> str:
    """An ISO 8601 time from JSON (Postgres writes the session's offset) in UTC."""
    return _iso(datetime.fromisoformat(text))
