"""Market data read from the read model: L2 depth, last price, phase, the indicative
opening, OHLCV candles.

The projector keeps ``read_model.book_orders`` (every resting order, from the engine's
events, with the part of it the market sees, and the market orders waiting for an
uncross), ``read_model.phases`` and ``read_model.trades``; these queries turn them into
the bodies of GET /api/v1/marketdata/{symbol}[/candles] and of the BOOK messages on
WebSocket. Both the projector (sync psycopg) and the query service (async) run the same
SQL. In PRE_OPEN the indicative opening is the engine's own rule
(``brokercore.engine.auction``) over the book's whole quantities, with the last trade
price (the previous close) as the reference, as an UNCROSS without a price would use.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from brokercore.broker.money import rupees
from brokercore.engine.auction import opening_price
from brokercore.engine.records import Phase, Side
from brokercore.realtime.channels import BookUpdate, Candle, Indicative, Level

__all__ = [
    "DEPTH_SQL",
    "LAST_PRICE_SQL",
    "PHASES_SQL",
    "AUCTION_SQL",
    "CANDLES_SQL",
    "Interval",
    "INTERVALS",
    "DEPTH_LEVELS",
    "book_update",
    "indicative",
    "candles",
]

DEPTH_LEVELS = 10
"""Price levels shown per side."""

DEPTH_SQL = """
(SELECT side, price, sum(shown_quantity)::bigint FROM read_model.book_orders
  WHERE symbol = %(symbol)s AND side = 'BUY' AND price IS NOT NULL GROUP BY side, price
  ORDER BY price DESC LIMIT %(levels)s)
UNION ALL
(SELECT side, price, sum(shown_quantity)::bigint FROM read_model.book_orders
  WHERE symbol = %(symbol)s AND side = 'SELL' AND price IS NOT NULL GROUP BY side, price
  ORDER BY price ASC LIMIT %(levels)s)"""
"""(side, price paise, shown quantity) rows: bids best first, then asks best first."""

LAST_PRICE_SQL = """
SELECT price FROM read_model.trades WHERE symbol = %(symbol)s ORDER BY seq DESC LIMIT 1"""

PHASES_SQL = """
SELECT symbol, phase FROM read_model.phases WHERE symbol = ANY(%(symbols)s)"""
"""(symbol, phase) of the symbols that have had a phase event (no row: OPEN, as a new
book is)."""

AUCTION_SQL = """
SELECT b.symbol, b.side, b.price, sum(b.open_quantity)::bigint
  FROM read_model.book_orders b
  JOIN read_model.phases p ON p.symbol = b.symbol AND p.phase = 'PRE_OPEN'
 WHERE b.symbol = ANY(%(symbols)s)
 GROUP BY b.symbol, b.side, b.price"""
"""(symbol, side, price paise or NULL for the waiting market orders, whole quantity) of
the symbols in PRE_OPEN: what their indicative opening is computed from."""

Interval = Literal["5s", "1m", "5m", "15m", "1h", "1d"]

INTERVALS: dict[Interval, timedelta] = {
    "5s": timedelta(seconds=5),  # a live market over the last minutes (the demo)
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
"""The candle intervals GET .../candles?interval= accepts."""

CANDLES_SQL = """
SELECT date_bin(%(interval)s, executed_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       (array_agg(price ORDER BY seq))[1],
       max(price), min(price),
       (array_agg(price ORDER BY seq DESC))[1],
       sum(quantity)::bigint
  FROM read_model.trades
 WHERE symbol = %(symbol)s AND executed_at >= %(from)s AND executed_at < %(to)s
 GROUP BY bucket ORDER BY bucket"""
"""(bucket start, open, high, low, close, volume) per interval that has trades."""


def book_update(
    symbol: str,
    depth: Iterable[tuple[str, int, int]],
    last_price: int | None,
    phase: str = Phase.OPEN.name,
    auction: Iterable[tuple[str, int | None, int]] = (),
    *,
    band: tuple[int, int],
) -> BookUpdate:
    """The BOOK body from DEPTH_SQL's rows, the last trade price (paise), the phase and,
    in PRE_OPEN, AUCTION_SQL's (side, price, quantity) rows of the symbol and its band
    (paise, inclusive)."""
    bids: list[Level] = []
    asks: list[Level] = []
    for side, price, quantity in depth:
        (bids if side == "BUY" else asks).append(Level(rupees(price), quantity))
    return BookUpdate(
        symbol,
        bids,
        asks,
        bids[0] if bids else None,
        asks[0] if asks else None,
        rupees(last_price),
        phase,
        phase == Phase.HALTED.name,
        indicative(auction, last_price, band) if phase == Phase.PRE_OPEN.name else None,
    )


def indicative(
    levels: Iterable[tuple[str, int | None, int]], last_price: int | None, band: tuple[int, int]
) -> Indicative | None:
    """The opening an uncross would make now from (side, price paise or None for market
    orders, quantity) rows, or None when nothing would trade. The reference is the last
    trade price when it lies in the band (paise, inclusive), else there is none: the
    engine's UNCROSS without a price does the same (docs/engine.md, "Call auction"), so
    after a re-band that moved the band past the last trade no reference counts."""
    limits: dict[str, list[tuple[int, int]]] = {"BUY": [], "SELL": []}
    market = {"BUY": 0, "SELL": 0}
    for side, price, quantity in levels:
        if price is None:
            market[side] += quantity
        else:
            limits[side].append((price, quantity))
    low, high = band
    reference = last_price if last_price is not None and low <= last_price <= high else 0
    quote = opening_price(limits["BUY"], limits["SELL"], market["BUY"], market["SELL"], reference)
    if quote is None:
        return None
    surplus = Side(quote.surplus_side).name if quote.surplus_side else None
    return Indicative(rupees(quote.price), quote.volume, quote.imbalance, surplus)


def candles(rows: Iterable[tuple[datetime, int, int, int, int, int]]) -> list[Candle]:
    """Candles from CANDLES_SQL's rows."""
    return [
        Candle(
            bucket.astimezone(UTC).isoformat(), rupees(o), rupees(h), rupees(lo), rupees(c), volume
        )
        for bucket, o, h, lo, c, volume in rows
    ]
