"""Sending the after-market orders (0015) when their symbol's pre-open has started.

An after-market order waits AMO_PENDING with its engine command in ``amo_orders``. Once
the engine has started the symbol's next pre-open (its PRE_OPENED, as the projector keeps
it in read_model.phases: the scheduler's PRE_OPEN is then in the partition before any
order sent now), one transaction deletes the waiting rows, makes the orders PENDING and
writes their outbox rows, in the order they were placed; the rows come back to be
published like a new order's (brokercore.entry.outbox, whose sweep and the engine's
DUPLICATE_ORDER_ID cover a crash between commit and publish). A crash before the commit
leaves them waiting for the next round; rows another OMS is moving, or that a cancel
holds, are skipped (SKIP LOCKED), so each is sent once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import NamedTuple

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from brokercore.entry.outbox import OutboxRow
from brokercore.faults.backoff import Backoff, transient

__all__ = ["WaitingOrder", "cancel_waiting", "release_after_market_orders", "release_loop"]

log = logging.getLogger("brokercore.amo")

# A phase row changed after an order was placed is the first pre-open since (or, had the
# projector missed it, that session's open): a halt or the close releases nothing.
_RELEASE = """
WITH due AS (
  SELECT a.order_id, o.trade_date FROM amo_orders a
    JOIN read_model.phases p ON p.symbol = a.symbol
    JOIN orders o ON o.order_id = a.order_id
   WHERE p.phase IN ('PRE_OPEN', 'OPEN') AND p.changed_at > a.placed_at
   ORDER BY a.order_id LIMIT %(limit)s
     FOR UPDATE OF a, o SKIP LOCKED),
gone AS (
  DELETE FROM amo_orders a USING due WHERE a.order_id = due.order_id RETURNING a.*),
moved AS (
  UPDATE orders o SET status = 'PENDING', updated_at = now() FROM due
   WHERE o.order_id = due.order_id AND o.trade_date = due.trade_date
  RETURNING o.order_id, o.account_id),
history AS (
  INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
  SELECT order_id, account_id, 'PENDING', '{"request": "after-market release"}', now()
    FROM moved ORDER BY order_id)
INSERT INTO outbox (topic, partition, key, payload, order_id)
SELECT topic, partition, convert_to(symbol, 'UTF8'), payload, order_id
  FROM gone ORDER BY order_id
RETURNING outbox_id, topic, partition, key, payload"""


# A waiting after-market order cancelled: its command never sent, its hold released. The
# engine never has it, so the projector never writes its read_model.orders row: written
# here, finished, so the user's order list keeps it (while it waited, the query service
# read it from orders, as every open order the projector has not seen).
_CANCEL = """
WITH gone AS (DELETE FROM amo_orders WHERE order_id = %(order)s),
shown AS (
  INSERT INTO read_model.orders (order_id, user_id, account_id, symbol, side, type,
                                 time_in_force, price, quantity, status, created_at,
                                 updated_at, trigger_price, disclosed_qty)
  SELECT o.order_id, a.user_id, o.account_id, o.symbol, o.side, o.type, o.time_in_force,
         o.price, o.quantity, 'CANCELLED', o.created_at, %(now)s, o.trigger_price,
         o.disclosed_qty
    FROM orders o JOIN accounts a ON a.account_id = o.account_id
   WHERE o.order_id = %(order)s AND o.trade_date = %(trade_date)s
  ON CONFLICT (order_id) DO NOTHING),
ended AS (
  UPDATE orders SET status = 'CANCELLED', blocked_cash = 0, blocked_shares = 0,
                    updated_at = %(now)s
   WHERE order_id = %(order)s AND trade_date = %(trade_date)s),
cash AS (
  UPDATE accounts SET blocked_cash = blocked_cash - %(cash)s, updated_at = now()
   WHERE account_id = %(account)s AND %(cash)s > 0),
shares AS (
  UPDATE positions SET blocked_quantity = blocked_quantity - %(shares)s, updated_at = now()
   WHERE account_id = %(account)s AND symbol = %(symbol)s AND %(shares)s > 0)
INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
VALUES (%(order)s, %(account)s, 'CANCELLED', %(history)s, %(now)s)"""
_CANCELLED = json.dumps({"request": "cancel"})


class WaitingOrder(NamedTuple):
    """An order AMO_PENDING, locked by the caller, and the hold it has."""

    order_id: int
    trade_date: date
    account_id: int
    symbol: str
    cash: int
    shares: int


async def cancel_waiting(conn: AsyncConnection, order: WaitingOrder, now: datetime) -> None:
    """End a waiting after-market order in the caller's transaction: its command never
    sent, its hold released at once (the engine never had it)."""
    await conn.execute(
        _CANCEL,
        {
            "order": order.order_id,
            "trade_date": order.trade_date,
            "account": order.account_id,
            "symbol": order.symbol,
            "cash": order.cash,
            "shares": order.shares,
            "now": now,
            "history": _CANCELLED,
        },
    )


async def release_after_market_orders(
    pool: AsyncConnectionPool, limit: int = 1000
) -> list[OutboxRow]:
    """Move up to ``limit`` after-market orders whose pre-open has started into the
    outbox, in one transaction; their rows to publish, in the order placed."""
    async with pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(_RELEASE, {"limit": limit})).fetchall()
    return sorted(OutboxRow(i, t, p, bytes(k), bytes(v)) for i, t, p, k, v in rows)


async def release_loop(
    pool: AsyncConnectionPool,
    submit: Callable[[list[OutboxRow]], None],
    every: float = 1.0,
) -> None:
    """The OMS's background job, until cancelled: every ``every`` s, the after-market
    orders due are moved and handed to ``submit`` (the outbox publisher's)."""
    backoff = Backoff("after-market orders: Postgres", log)
    while True:
        try:
            rows = await release_after_market_orders(pool)
        except Exception as e:  # never dies: the next round moves what this one did not
            if not transient(e):
                log.exception("releasing after-market orders failed")
            await backoff.pause(e)
            continue
        backoff.recovered()
        if rows:
            log.info("after-market orders: %d sent", len(rows))
            submit(rows)
        await asyncio.sleep(every)
