"""Cancel many: every open order of a user (or of one symbol of theirs) asked of the
engine in ONE Postgres transaction, each as ``OrderEntry.cancel`` asks for one: the
order locked (in order id order, as settlement locks them, so the two never deadlock),
its open status checked, a history row recording the request with the quantity filled
so far, and a CancelOrder command in the outbox. Statuses change when the engine's
CANCELLED events are settled; an order that fills meanwhile ends FILLED. A waiting
after-market order (AMO_PENDING) is not the engine's: it ends CANCELLED at once, its
hold released, as ``OrderEntry.cancel`` ends one.

One request cancels at most ``MAX_CANCELS`` orders; ``more`` says there are others,
and the client asks again. An order already asked to cancel (by either path) is not
asked again, so each further request moves on to the orders not yet asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from brokercore.broker.orders import CANCEL_REQUESTED, OPEN_STATUSES
from brokercore.broker.risk import RejectCode
from brokercore.entry.amo import WaitingOrder, cancel_waiting
from brokercore.entry.order_entry import OrderEntry, OrderRefused, Refusal
from brokercore.entry.outbox import OutboxRow
from brokercore.entry.requests import CancelRequested, CancelsRequested
from brokercore.kafka.messages import CancelOrder, encode
from brokercore.kafka.session_log import nanoseconds

__all__ = ["MAX_CANCELS", "CancelMany", "cancel_many"]

MAX_CANCELS = 1000
"""The most orders one request cancels: one transaction's locks and outbox rows stay small."""

_REQUEST = json.dumps({"request": "cancel"})  # the history payload of OrderEntry.cancel

# The literal list (not a parameter) lets the planner use orders_open_idx, whose
# predicate it implies.
_OPEN = ", ".join(f"'{status}'" for status in OPEN_STATUSES)
_OPEN_ORDERS = f"""
SELECT o.order_id, o.symbol, o.status, o.filled_quantity, o.trade_date, o.blocked_cash,
       o.blocked_shares FROM orders o
 WHERE o.account_id = %(account)s AND o.status IN ({_OPEN})
   AND (%(symbol)s::text IS NULL OR o.symbol = %(symbol)s)
   AND NOT EXISTS (SELECT 1 FROM order_events e
                    WHERE e.order_id = o.order_id AND e.payload->>'request' = 'cancel')
 ORDER BY o.order_id LIMIT %(limit)s
   FOR UPDATE OF o"""

_WRITE = """
WITH r AS (
  SELECT * FROM unnest(%(orders)s::bigint[], %(statuses)s::text[], %(filled)s::bigint[],
                       %(symbols)s::text[], %(partitions)s::int[], %(payloads)s::bytea[])
           WITH ORDINALITY AS r (order_id, status, filled, symbol, partition, payload, n)),
history AS (
  INSERT INTO order_events (order_id, account_id, status, filled_quantity, payload,
                            occurred_at)
  SELECT order_id, %(account)s, status, filled, %(request)s::jsonb, %(now)s FROM r ORDER BY n)
INSERT INTO outbox (topic, partition, key, payload, order_id)
SELECT %(topic)s, partition, convert_to(symbol, 'UTF8'), payload, order_id FROM r ORDER BY n
RETURNING outbox_id, order_id"""


@dataclass(frozen=True)
class CancelMany:
    answer: CancelsRequested
    outbox: list[OutboxRow]  # the commands to publish now


async def cancel_many(
    entry: OrderEntry, user_id: str, symbol: str | None, limit: int = MAX_CANCELS
) -> CancelMany:
    """Ask the engine to cancel the user's open orders (of ``symbol`` only, if given),
    at most ``limit`` of them; OrderRefused for an unknown symbol or a user without an
    account (nothing stored)."""
    if symbol is not None and symbol not in entry.market:
        raise OrderRefused(RejectCode.UNKNOWN_SYMBOL, f"no instrument {symbol[:40]!r}")
    now = entry.clock()
    async with entry.pool.connection() as conn, conn.transaction():
        account = await (
            await conn.execute("SELECT account_id FROM accounts WHERE user_id = %s", (user_id,))
        ).fetchone()
        if account is None:
            raise OrderRefused(Refusal.NO_ACCOUNT, "this user has no trading account")
        params = {"account": account[0], "symbol": symbol, "limit": limit + 1}
        found = await (await conn.execute(_OPEN_ORDERS, params)).fetchall()
        orders = found[:limit]
        waiting = [o for o in orders if o[2] == "AMO_PENDING"]
        for order_id, s, _, _, trade_date, cash, shares in waiting:
            await cancel_waiting(
                conn, WaitingOrder(order_id, trade_date, account[0], s, cash, shares), now
            )
        sent = [o[:4] for o in orders if o[2] != "AMO_PENDING"]
        ended = [CancelRequested(o[0], "CANCELLED") for o in waiting]
        if not sent:
            return CancelMany(CancelsRequested(ended, len(found) > limit), [])
        ids, symbols, statuses, filled = (list(column) for column in zip(*sent, strict=True))
        partitions = [entry.plan.shard_of(s) for s in symbols]
        payloads = [
            encode(CancelOrder(order_id, account[0], s, ts=nanoseconds(now)))
            for order_id, s in zip(ids, symbols, strict=True)
        ]
        written = await conn.execute(
            _WRITE,
            {
                "orders": ids,
                "statuses": statuses,
                "filled": filled,
                "symbols": symbols,
                "partitions": partitions,
                "payloads": payloads,
                "account": account[0],
                "request": _REQUEST,
                "now": now,
                "topic": entry.kafka.orders_topic,
            },
        )
        outbox_ids = {order_id: outbox_id for outbox_id, order_id in await written.fetchall()}
    rows = [
        OutboxRow(outbox_ids[order_id], entry.kafka.orders_topic, partition, s.encode(), payload)
        for order_id, s, partition, payload in zip(ids, symbols, partitions, payloads, strict=True)
    ]
    answer = CancelsRequested(
        sorted(
            [*ended, *(CancelRequested(order_id, CANCEL_REQUESTED) for order_id in ids)],
            key=lambda c: c.order_id,
        ),
        len(found) > limit,
    )
    return CancelMany(answer, rows)
