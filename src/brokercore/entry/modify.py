"""Modify an open order (PATCH /api/v1/orders/{orderId}): the same checks as a new
order (``OrderEntry.check``) on the new terms, and in ONE Postgres transaction the
account and then the order locked (the order path's and settlement's lock order), the
new terms' hold reserved, a per-order counter raised, the request in the order's
history and an AmendOrder command in the outbox.

The engine's AMEND sets the order's new OPEN quantity (docs/engine.md), computed here
as the asked total less what has filled; a fill landing before the engine applies it
adds to the total. So until the engine answers, the order blocks what its old terms
hold AND what the new ones need (the reserve, 0014_order_modify.sql): whichever way
the race goes, no fill can spend what was not blocked. Settlement reprices the order to
the engine's AMENDED, or releases the reserve on its REJECTED (brokercore.consumers.
settlement). One modify at a time per order (MODIFY_PENDING), at most ``limit`` in all.

LIMIT and STOP_LIMIT orders can be modified (a triggered stop-limit as the limit order
it became); a market or stop-market order, whose engine price is its cap, cannot. A
waiting after-market order is not the engine's yet: it changes at once
(brokercore.entry.amo_modify).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from decimal import Decimal
from typing import NamedTuple

import msgspec
from psycopg import AsyncConnection

from brokercore.broker.orders import OPEN_STATUSES
from brokercore.broker.risk import AccountState, OrderType, RejectCode
from brokercore.entry.amo_modify import AMO_PENDING, modify_waiting
from brokercore.entry.order_entry import (
    OrderEntry,
    OrderReceipt,
    OrderRefused,
    Refusal,
    last_prices,
    no_account,
)
from brokercore.entry.outbox import OutboxRow
from brokercore.entry.requests import ModifyOrderRequest, PlaceOrderRequest
from brokercore.kafka.messages import AmendOrder, encode
from brokercore.kafka.session_log import nanoseconds

__all__ = ["MODIFY_REQUESTED", "OpenOrder", "changes_nothing", "modify", "new_terms"]

MODIFY_REQUESTED = "MODIFY_REQUESTED"
"""A modify's receipt: asked of the engine, not done (the order changes on its AMENDED)."""

_OWNED = (
    "SELECT o.symbol FROM orders o JOIN accounts a ON a.account_id = o.account_id "
    "WHERE o.order_id = %s AND a.user_id = %s"
)
_FACTS = "SELECT * FROM oms_order_facts(%s, %s, %s)"  # locks the account (0013)
_ORDER = """
SELECT trade_date, account_id, symbol, side, type, time_in_force, status, price,
       trigger_price, quantity, filled_quantity, disclosed_qty, modifications, modify_pending
  FROM orders WHERE order_id = %s FOR UPDATE"""
_WRITE = """
WITH key AS (
  INSERT INTO idempotency_keys (user_id, key, order_id, request_hash, expires_at)
  VALUES (%(user)s, %(key)s, %(order)s, %(hash)s, %(expires)s)),
cash AS (
  UPDATE accounts SET blocked_cash = blocked_cash + %(cash)s, updated_at = now()
   WHERE account_id = %(account)s AND %(cash)s > 0),
shares AS (
  UPDATE positions SET blocked_quantity = blocked_quantity + %(shares)s, updated_at = now()
   WHERE account_id = %(account)s AND symbol = %(symbol)s AND %(shares)s > 0),
modified AS (
  UPDATE orders SET modifications = modifications + 1, modify_pending = true,
         modify_cash = %(cash)s, modify_shares = %(shares)s,
         blocked_cash = blocked_cash + %(cash)s, blocked_shares = blocked_shares + %(shares)s,
         hold_amount = hold_amount + %(cash)s + %(shares)s,
         modify_undo_trigger = trigger_price, trigger_price = %(trigger)s,
         modify_disclosed = %(disclosed)s, updated_at = %(now)s
   WHERE trade_date = %(trade_date)s AND order_id = %(order)s),
history AS (
  INSERT INTO order_events (order_id, account_id, status, filled_quantity, payload, occurred_at)
  VALUES (%(order)s, %(account)s, %(status)s, %(filled)s, %(history)s, %(now)s))
INSERT INTO outbox (topic, partition, key, payload, order_id)
VALUES (%(topic)s, %(partition)s, %(kafka_key)s, %(payload)s, %(order)s)
RETURNING outbox_id"""


class OpenOrder(NamedTuple):
    """The order row a modify reads (locked), money in paise."""

    trade_date: date
    account_id: int
    symbol: str
    side: str
    type: str
    time_in_force: str
    status: str
    price: int | None  # paise
    trigger_price: int | None  # paise
    quantity: int
    filled_quantity: int
    disclosed_qty: int
    modifications: int
    modify_pending: bool


async def modify(
    entry: OrderEntry, user_id: str, order_id: int, request: ModifyOrderRequest, limit: int
) -> OrderReceipt:
    """Ask the engine to change an open order of this user; OrderRefused (nothing
    stored) if it is not the user's, not open, not modifiable now, past ``limit``
    modifies, or its new terms fail the checks. A retry with the same key and body
    gets the first answer back; the key with another body is refused."""
    now = entry.clock()
    fingerprint = _fingerprint(order_id, request)
    async with entry.pool.connection() as conn, conn.transaction():
        owned = await (await conn.execute(_OWNED, (order_id, user_id))).fetchone()
        if owned is None:  # another user's order looks the same
            raise OrderRefused(Refusal.ORDER_NOT_FOUND, f"no order {order_id}")
        facts = await (
            await conn.execute(_FACTS, (user_id, owned[0], request.idempotency_key))
        ).fetchone()
        if facts is None:
            raise no_account()
        (account_id, cash, blocked, allow_short, free_shares, _, key_order, key_hash) = facts[:8]
        key_expires, kyc_status = facts[8], facts[13]
        if key_order is not None:
            if key_expires > now:
                if key_hash != fingerprint or key_order != order_id:
                    raise OrderRefused(
                        Refusal.IDEMPOTENCY_KEY_REUSED,
                        "this idempotency key was used for a different request",
                    )
                done = AMO_PENDING if facts[9] == AMO_PENDING else MODIFY_REQUESTED
                return OrderReceipt(order_id, done, key_expires - entry.idempotency_ttl, None)
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE user_id = %s AND key = %s",
                (user_id, request.idempotency_key),
            )
        row = await (await conn.execute(_ORDER, (order_id,))).fetchone()
        assert row is not None  # owned, and orders are never deleted
        order = OpenOrder(*row)
        _modifiable(order_id, order, limit)
        terms = new_terms(order, request)
        history = msgspec.json.encode({"request": "modify", "modify": request}).decode()
        if order.status == AMO_PENDING:  # not sent yet: changed here, at once
            return await modify_waiting(
                entry,
                conn,
                order_id,
                order,
                terms,
                (account_id, cash, blocked, allow_short, free_shares or 0),
                kyc_status,
                {
                    "user": user_id,
                    "key": request.idempotency_key,
                    "hash": fingerprint,
                    "expires": now + entry.idempotency_ttl,
                    "history": history,
                    "now": now,
                },
            )
        free = AccountState(cash - blocked, free_shares or 0, allow_short)
        hold = entry.check(terms, kyc_status, free, now, await last_prices(conn, [terms]))
        instrument = entry.market[order.symbol]
        assert terms.price is not None  # LIMIT and STOP_LIMIT orders have one
        payload = encode(
            AmendOrder(
                order_id,
                account_id,
                order.symbol,
                instrument.to_ticks(terms.price),
                terms.quantity,
                ts=nanoseconds(now),
                trigger=(hold.trigger_ticks or 0) if request.trigger_price is not None else 0,
                disclosed=request.disclosed_quantity or 0,
            )
        )
        outbox = OutboxRow(
            0,
            entry.kafka.orders_topic,
            entry.plan.shard_of(order.symbol),
            order.symbol.encode(),
            payload,
        )
        outbox_id = await _returned_id(
            conn,
            {
                "user": user_id,
                "key": request.idempotency_key,
                "hash": fingerprint,
                "expires": now + entry.idempotency_ttl,
                "order": order_id,
                "account": account_id,
                "symbol": order.symbol,
                "trade_date": order.trade_date,
                "cash": hold.cash,
                "shares": hold.shares,
                "trigger": (
                    instrument.ticks_to_paise(hold.trigger_ticks)
                    if hold.trigger_ticks is not None
                    else order.trigger_price
                ),
                "disclosed": request.disclosed_quantity,
                "status": order.status,
                "filled": order.filled_quantity,
                "history": history,
                "now": now,
                "topic": outbox.topic,
                "partition": outbox.partition,
                "kafka_key": outbox.key,
                "payload": payload,
            },
        )
    return OrderReceipt(order_id, MODIFY_REQUESTED, now, outbox._replace(outbox_id=outbox_id))


def _modifiable(order_id: int, order: OpenOrder, limit: int) -> None:
    """Refuse a modify the order cannot take now (OrderRefused)."""
    if order.status not in OPEN_STATUSES:
        raise OrderRefused(
            Refusal.ORDER_NOT_OPEN, f"order {order_id} is {order.status} and cannot be modified"
        )
    if order.status == "PENDING":
        raise OrderRefused(
            Refusal.ORDER_PENDING,
            f"order {order_id} is not yet accepted by the exchange: modify it once it is",
        )
    if order.type not in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        raise OrderRefused(
            Refusal.ORDER_NOT_MODIFIABLE,
            f"a {order.type} order cannot be modified (cancel it and place another)",
        )
    if order.modify_pending:
        raise OrderRefused(
            Refusal.MODIFY_PENDING,
            f"order {order_id}'s last modify is not done yet: try again in a moment",
        )
    if order.modifications >= limit:
        raise OrderRefused(
            Refusal.MODIFY_LIMIT_REACHED,
            f"order {order_id} was modified {order.modifications} times, the most allowed",
        )


def changes_nothing(request: ModifyOrderRequest) -> bool:
    """Whether the body names no field to change (the API refuses it as invalid)."""
    return (
        request.price is None
        and request.quantity is None
        and request.trigger_price is None
        and request.disclosed_quantity is None
    )


def new_terms(order: OpenOrder, request: ModifyOrderRequest) -> PlaceOrderRequest:
    """The order's terms after ``request``, as a new order of its OPEN quantity (what the
    checks and the hold concern): a field the request leaves out keeps its value; a
    triggered stop-limit is the limit order it became; a waiting after-market order
    stays one (checked as at its next session's start)."""
    total = order.quantity if request.quantity is None else request.quantity
    if total <= order.filled_quantity:
        raise OrderRefused(
            RejectCode.INVALID_QUANTITY,
            f"the new quantity must be above the {order.filled_quantity} already filled",
        )
    amo = order.status == AMO_PENDING
    waiting = order.status == "TRIGGER_PENDING" or (amo and order.type == OrderType.STOP_LIMIT)
    trigger = request.trigger_price
    if trigger is None and waiting and order.trigger_price is not None:
        trigger = Decimal(order.trigger_price).scaleb(-2)
    assert order.price is not None  # a LIMIT or STOP_LIMIT order
    disclosed = request.disclosed_quantity or order.disclosed_qty or None
    return PlaceOrderRequest(
        symbol=order.symbol,
        side="BUY" if order.side == "BUY" else "SELL",
        type="STOP_LIMIT" if waiting else "LIMIT",
        quantity=total - order.filled_quantity,
        idempotency_key="modify",
        price=Decimal(order.price).scaleb(-2) if request.price is None else request.price,
        time_in_force="GTC" if order.time_in_force == "GTC" else "DAY",
        trigger_price=trigger,
        disclosed_quantity=disclosed,
        amo=amo,
    )


async def _returned_id(conn: AsyncConnection, params: dict[str, object]) -> int:
    row = await (await conn.execute(_WRITE, params)).fetchone()
    assert row is not None  # INSERT ... RETURNING
    value: int = row[0]
    return value


def _fingerprint(order_id: int, request: ModifyOrderRequest) -> str:
    body = msgspec.to_builtins(request)
    body.pop("idempotencyKey", None)
    return hashlib.sha256(json.dumps([order_id, body], sort_keys=True).encode()).hexdigest()
