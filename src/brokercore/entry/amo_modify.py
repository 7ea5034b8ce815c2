"""Modify a waiting after-market order (AMO_PENDING, 0015): the engine has not got it,
so no AMEND is sent. In the modify's transaction (the account and the order locked by
brokercore.entry.modify) its new terms are checked as a new after-market order, as at
its next session's start, against what the account has free with the order's own hold
given back; the hold moves to the new one at once (the difference blocked or released),
the order's terms and its waiting command in amo_orders are rewritten, the modify is
counted and recorded, and its idempotency key stored. The pre-open then sends the new
terms once (brokercore.entry.amo).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from psycopg import AsyncConnection

from brokercore.broker.risk import AccountState
from brokercore.engine.records import Side
from brokercore.entry.order_entry import OrderEntry, OrderReceipt, last_prices
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import NewOrder, encode
from brokercore.kafka.session_log import nanoseconds

if TYPE_CHECKING:
    from brokercore.entry.modify import OpenOrder

__all__ = ["AMO_PENDING", "modify_waiting"]

AMO_PENDING = "AMO_PENDING"

_HELD = "SELECT blocked_cash, blocked_shares FROM orders WHERE trade_date = %s AND order_id = %s"

_WRITE = """
WITH key AS (
  INSERT INTO idempotency_keys (user_id, key, order_id, request_hash, expires_at)
  VALUES (%(user)s, %(key)s, %(order)s, %(hash)s, %(expires)s)),
cash AS (
  UPDATE accounts SET blocked_cash = blocked_cash + %(cash)s - %(old_cash)s, updated_at = now()
   WHERE account_id = %(account)s AND %(cash)s <> %(old_cash)s),
shares AS (
  UPDATE positions
     SET blocked_quantity = blocked_quantity + %(shares)s - %(old_shares)s, updated_at = now()
   WHERE account_id = %(account)s AND symbol = %(symbol)s AND %(shares)s <> %(old_shares)s),
command AS (
  UPDATE amo_orders SET payload = %(payload)s WHERE order_id = %(order)s),
modified AS (
  UPDATE orders SET price = %(price)s, trigger_price = %(trigger)s, quantity = %(quantity)s,
         disclosed_qty = %(disclosed)s, hold_amount = %(cash)s + %(shares)s,
         hold_price_ticks = %(hold_price)s, blocked_cash = %(cash)s,
         blocked_shares = %(shares)s, modifications = modifications + 1, updated_at = %(now)s
   WHERE trade_date = %(trade_date)s AND order_id = %(order)s)
INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
VALUES (%(order)s, %(account)s, 'AMO_PENDING', %(history)s, %(now)s)"""


async def modify_waiting(
    entry: OrderEntry,
    conn: AsyncConnection,
    order_id: int,
    order: OpenOrder,
    terms: PlaceOrderRequest,
    account: tuple[int, int, int, bool, int],
    kyc_status: str,
    write: dict[str, object],
) -> OrderReceipt:
    """Apply ``terms`` to the waiting order now (OrderRefused if they fail the checks,
    nothing stored). ``account``: (id, cash, blocked cash, allow short, free shares) as
    locked; ``write``: the key's and the history's parameters (user, key, hash, expires,
    history, now)."""
    account_id, cash, blocked, allow_short, free_shares = account
    now = write["now"]
    assert isinstance(now, datetime)
    held = await (await conn.execute(_HELD, (order.trade_date, order_id))).fetchone()
    assert held is not None  # locked by the caller
    old_cash, old_shares = held
    free = AccountState(cash - blocked + old_cash, free_shares + old_shares, allow_short)
    hold = entry.check(terms, kyc_status, free, now, await last_prices(conn, [terms]))
    instrument = entry.market[order.symbol]
    assert terms.price is not None  # LIMIT and STOP_LIMIT orders have one
    ticks = instrument.to_ticks(terms.price)
    trigger = hold.trigger_ticks
    payload = encode(
        NewOrder(
            order_id,
            account_id,
            order.symbol,
            Side[order.side],
            terms.quantity,
            price=ticks,
            tif=hold.time_in_force,
            ts=nanoseconds(now),
            stop=trigger is not None,
            trigger=trigger or 0,
            disclosed=terms.disclosed_quantity or 0,
        )
    )
    await conn.execute(
        _WRITE,
        write
        | {
            "order": order_id,
            "account": account_id,
            "symbol": order.symbol,
            "trade_date": order.trade_date,
            "cash": hold.cash,
            "shares": hold.shares,
            "old_cash": old_cash,
            "old_shares": old_shares,
            "payload": payload,
            "price": instrument.ticks_to_paise(ticks),
            "trigger": instrument.ticks_to_paise(trigger) if trigger is not None else None,
            "quantity": terms.quantity,
            "disclosed": terms.disclosed_quantity or 0,
            "hold_price": hold.price_ticks or 0,
        },
    )
    return OrderReceipt(order_id, AMO_PENDING, now, None)
