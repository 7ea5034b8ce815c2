"""The opening price of a call auction, from aggregated price levels.

docs/engine.md, "Call auction (UNCROSS)": for each candidate price p (every limit
price with orders, and the reference price when there is one) demand D(p) is the
market buys plus the buys with limit >= p, supply S(p) the market sells plus the
sells with limit <= p; the opening price has the largest volume min(D, S) (> 0), then
the smallest imbalance |D - S|, then the smallest distance to the reference, then the
lowest price. It is a pure function of the levels so that every place that needs the
price computes it the same way: the reference model's UNCROSS and ``auction()`` view,
and the read model's indicative price in market data.
"""

from __future__ import annotations

from collections.abc import Iterable

from .records import AuctionQuote, Side

__all__ = ["opening_price"]


def _totals(levels: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Quantity per price; a price may appear several times (one row per order)."""
    totals: dict[int, int] = {}
    for price, qty in levels:
        totals[price] = totals.get(price, 0) + qty
    return totals


def opening_price(
    buys: Iterable[tuple[int, int]],
    sells: Iterable[tuple[int, int]],
    market_buy: int = 0,
    market_sell: int = 0,
    reference: int = 0,
) -> AuctionQuote | None:
    """The auction's opening price, or None when no candidate price has volume.

    ``buys`` and ``sells`` are (limit price, quantity) pairs in any order (whole
    quantities: an iceberg's hidden part counts); ``market_buy`` and ``market_sell``
    the total quantity of the market orders waiting on each side; ``reference`` the
    reference price (0: none). O(levels) after sorting the distinct prices: demand is
    a suffix sum over the buys, supply a prefix sum over the sells, both walked once
    over the candidates in ascending order.
    """
    bids, asks = _totals(buys), _totals(sells)
    candidates = sorted(set(bids) | set(asks) | ({reference} if reference else set()))
    demand = market_buy + sum(bids.values())  # D at a price below every bid
    supply = market_sell
    best: tuple[tuple[int, int, int, int], AuctionQuote] | None = None
    for price in candidates:
        supply += asks.get(price, 0)  # sells with limit <= price
        volume = min(demand, supply)
        if volume > 0:
            imbalance = abs(demand - supply)
            distance = abs(price - reference) if reference else 0
            key = (-volume, imbalance, distance, price)
            if best is None or key < best[0]:
                surplus = Side.BUY if demand > supply else Side.SELL if supply > demand else 0
                best = key, AuctionQuote(price, volume, imbalance, surplus)
        demand -= bids.get(price, 0)  # buys with limit >= the next candidate
    return None if best is None else best[1]
