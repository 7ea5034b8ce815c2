"""Market data read from the read model: L2 depth, last price, OHLCV candles.

The projector keeps ``read_model.book_orders`` (every resting order, from the engine's
events) and ``read_model.trades``; these queries turn them into the bodies of
GET /api/v1/marketdata/{symbol}[/candles] and of the BOOK messages on WebSocket. Both
the projector (sync psycopg) and the query service (async) run the same SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from brokercore.broker.money import rupees
from brokercore.realtime.channels import BookUpdate, Candle, Level

__all__ = [
    "DEPTH_SQL",
    "LAST_PRICE_SQL",
    "CANDLES_SQL",
    "Interval",
    "INTERVALS",
    "DEPTH_LEVELS",
    "book_update",
    "candles",
]

DEPTH_LEVELS = 10
"""Price levels shown per side."""

DEPTH_SQL = """
(SELECT side, price, sum(open_quantity)::bigint FROM read_model.book_orders
  WHERE symbol = %(symbol)s AND side = 'BUY' GROUP BY side, price
  ORDER BY price DESC LIMIT %(levels)s)
UNION ALL
(SELECT side, price, sum(open_quantity)::bigint FROM read_model.book_orders
  WHERE symbol = %(symbol)s AND side = 'SELL' GROUP BY side, price
  ORDER BY price ASC LIMIT %(levels)s)"""
"""(side, price paise, quantity) rows: bids best first, then asks best first."""

LAST_PRICE_SQL = """
SELECT price FROM read_model.trades WHERE symbol = %(symbol)s ORDER BY seq DESC LIMIT 1"""

Interval = Literal["1m", "5m", "15m", "1h", "1d"]

INTERVALS: dict[Interval, timedelta] = {
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
    symbol: str, depth: Iterable[tuple[str, int, int]], last_price: int | None
) -> BookUpdate:
    """The BOOK body from DEPTH_SQL's rows and the last trade price (paise)."""
    bids: list[Level] = []
    asks: list[Level] = []
    for side, price, quantity in depth:
        (bids if side == "BUY" else asks).append(Level(rupees(price), quantity))
    return BookUpdate(
        symbol, bids, asks, bids[0] if bids else None, asks[0] if asks else None, rupees(last_price)
    )


def candles(rows: Iterable[tuple[datetime, int, int, int, int, int]]) -> list[Candle]:
    """Candles from CANDLES_SQL's rows."""
    return [
        Candle(
            bucket.astimezone(UTC).isoformat(), rupees(o), rupees(h), rupees(lo), rupees(c), volume
        )
        for bucket, o, h, lo, c, volume in rows
    ]
