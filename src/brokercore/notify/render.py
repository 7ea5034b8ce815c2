"""What a notification says: the engine's events told to the owners of the orders they
concern, and price alert fires told to the alerts' owners.

What is told: for an order of ours (in ``orders``), each FILL of each of its sides of a
TRADE (an opening auction's too, said so), a stop's TRIGGERED (at the last trade price
that reached its trigger), and its CANCELLED, EXPIRED and REJECTED (a refused cancel or
amend, or a re-sent order's DUPLICATE_ORDER_ID, is not news: the order is unchanged);
and PRICE_ALERT when a trade crosses a user's alert (``brokercore.notify.alerts``). A
notification's id is derived from what caused it (``{shard}:{shard_seq}:{order_id}``,
``alert:{alert_id}:{trade_id}``), so a client drops a second copy.

An order's other updates, a new order's ACCEPTED (kind OPEN, or TRIGGER_PENDING for a
stop) and an amend's AMENDED (MODIFIED), are told to postbacks only (``order_updates``,
kinds ``UPDATE_KINDS``): in the inbox or as a push they would be noise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection

from brokercore.broker.market import MarketInstrument
from brokercore.broker.money import format_paise
from brokercore.broker.orders import END_STATUS, event_time
from brokercore.engine.records import EventType, Op, Reason
from brokercore.kafka.messages import NEW_ORDER_OPS, STOP_OPS, Event
from brokercore.notify.alerts import Fire
from brokercore.realtime.channels import Notification

__all__ = [
    "OrderOwner",
    "order_owners",
    "told",
    "order_notifications",
    "UPDATE_KINDS",
    "updated",
    "order_updates",
    "alert_notification",
]

log = logging.getLogger("brokercore.notify.render")


@dataclass(frozen=True)
class OrderOwner:
    """What a notification says of an order, from the OMS's ``orders``."""

    user_id: str
    account_id: int
    side: str
    quantity: int
    type: str  # LIMIT, MARKET, STOP or STOP_LIMIT
    posts: bool = False  # whether the user has a postback registered (order_updates)


_OWNERS_SQL = """
SELECT o.order_id, a.user_id, a.account_id, o.side, o.quantity, o.type,
       EXISTS (SELECT FROM postbacks p WHERE p.user_id = a.user_id)
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
 WHERE o.order_id = ANY(%s)"""


async def order_owners(conn: AsyncConnection, order_ids: Sequence[int]) -> dict[int, OrderOwner]:
    """The owner of each of these orders that is ours (another broker's is absent)."""
    if not order_ids:
        return {}
    rows = await (await conn.execute(_OWNERS_SQL, (list(order_ids),))).fetchall()
    return {order_id: OrderOwner(*rest) for order_id, *rest in rows}


def told(e: Event) -> list[int]:
    """The order ids an event may tell someone about."""
    if e.type == EventType.TRADE:
        return [e.order_id, e.other_id]
    if e.type == EventType.REJECTED and (
        e.op not in NEW_ORDER_OPS or e.reason == Reason.DUPLICATE_ORDER_ID
    ):
        return []
    return [e.order_id] if e.type in END_STATUS or e.type == EventType.TRIGGERED else []


_STOP_TYPES = ("STOP", "STOP_LIMIT")


def _owner(
    shard: int, e: Event, order_id: int, owners: Mapping[int, OrderOwner]
) -> OrderOwner | None:
    """The owner of an order the event tells about, if ours and the event's account
    (a trade's maker: its other account) is the order's."""
    owner = owners.get(order_id)
    if owner is None:
        return None  # another broker's order
    maker = e.type == EventType.TRADE and order_id == e.other_id
    if owner.account_id != (e.other_account if maker else e.account):
        log.warning(
            "event %s:%s names account %s for order %s of account %s; ignored",
            shard,
            e.shard_seq,
            e.account,
            order_id,
            owner.account_id,
        )
        return None
    return owner


def _words(reason: int) -> str:
    return Reason(reason).name.lower().replace("_", " ")


def order_notifications(
    shard: int, e: Event, owners: Mapping[int, OrderOwner], instrument: MarketInstrument
) -> list[tuple[str, Notification]]:
    """(user, notification) for each order of ours the event tells about. A partial
    fill counts what is filled as the order's quantity less what is open after it."""
    notifications = []
    for order_id in told(e):
        owner = _owner(shard, e, order_id, owners)
        if owner is None:
            continue
        maker = e.type == EventType.TRADE and order_id == e.other_id
        stop = "stop " if owner.type in _STOP_TYPES else ""
        order = f"Your {stop}order to {owner.side} {owner.quantity:,} {e.symbol}"
        if e.type == EventType.TRADE:
            open_after = e.other_remaining if maker else e.remaining
            price = format_paise(instrument.ticks_to_paise(e.price))
            at = f"in the opening auction at {price}" if e.op == Op.UNCROSS else f"at {price}"
            kind = "FILL"
            if open_after == 0:
                title, body = "Order filled", f"{order} filled {at}"
            else:
                filled = owner.quantity - open_after
                title, body = (
                    "Order partially filled",
                    f"{order} partially filled: {filled:,} of {owner.quantity:,} {at}",
                )
        elif e.type == EventType.TRIGGERED:
            kind = "TRIGGERED"
            price = format_paise(instrument.ticks_to_paise(e.other_remaining))
            title, body = "Stop order triggered", f"{order} triggered at {price}"
        else:
            kind = END_STATUS[e.type]
            if kind == "REJECTED":
                title, body = "Order rejected", f"{order} was rejected: {_words(e.reason)}"
            else:
                why = (
                    ""
                    if e.reason in (Reason.NONE, Reason.USER_CANCEL)
                    else f" ({_words(e.reason)})"
                )
                unfilled = (
                    f"; {e.qty:,} of {owner.quantity:,} unfilled" if e.qty < owner.quantity else ""
                )
                title, body = (
                    ("Order cancelled", f"{order} was cancelled{why}{unfilled}")
                    if kind == "CANCELLED"
                    else ("Order expired", f"{order} expired{unfilled}")
                )
        notifications.append(
            (
                owner.user_id,
                Notification(
                    f"{shard}:{e.shard_seq}:{order_id}",
                    kind,
                    title,
                    body,
                    e.symbol,
                    event_time(e.ts).isoformat(),
                    order_id,
                ),
            )
        )
    return notifications


UPDATE_KINDS = frozenset(("OPEN", "TRIGGER_PENDING", "MODIFIED"))
"""The kinds of ``order_updates``: postbacks only."""


def updated(e: Event) -> list[int]:
    """The order ids an event updates without a notification: a new order accepted by
    the engine, an order modified (an amend's AMENDED; a self-trade's decrement or an
    auction's repricing is not the user's modify)."""
    if (e.type == EventType.ACCEPTED and e.op in NEW_ORDER_OPS) or (
        e.type == EventType.AMENDED and e.op == Op.AMEND and e.reason == Reason.NONE
    ):
        return [e.order_id]
    return []


def order_updates(
    shard: int, e: Event, owners: Mapping[int, OrderOwner], instrument: MarketInstrument
) -> list[tuple[str, Notification]]:
    """(user, notification) of an order's ACCEPTED or AMENDED for its owner, if they have
    a postback (``OrderOwner.posts``). The terms are the event's (the new ones)."""
    updates = []
    for order_id in updated(e):
        owner = _owner(shard, e, order_id, owners)
        if owner is None or not owner.posts:
            continue
        at = f" at {format_paise(instrument.ticks_to_paise(e.price))}" if e.price else ""
        if e.type == EventType.AMENDED:
            stop = "stop " if owner.type in _STOP_TYPES else ""
            kind, title = "MODIFIED", "Order modified"
            body = f"Your {stop}order to {owner.side} {e.symbol} was modified: {e.qty:,} open{at}"
        elif e.op in STOP_OPS:
            kind, title = "TRIGGER_PENDING", "Stop order placed"
            body = f"Your stop order to {owner.side} {e.qty:,} {e.symbol}{at} waits for its trigger"
        else:
            kind, title = "OPEN", "Order placed"
            body = f"Your order to {owner.side} {e.qty:,} {e.symbol}{at} is open"
        updates.append(
            (
                owner.user_id,
                Notification(
                    f"{shard}:{e.shard_seq}:{order_id}",
                    kind,
                    title,
                    body,
                    e.symbol,
                    event_time(e.ts).isoformat(),
                    order_id,
                ),
            )
        )
    return updates


def alert_notification(fire: Fire) -> tuple[str, Notification]:
    """(user, notification) of a price alert's fire."""
    alert, trade = fire.alert, fire.trade
    return alert.user_id, Notification(
        f"alert:{alert.alert_id}:{trade.trade_id}",
        "PRICE_ALERT",
        f"{alert.symbol} price alert",
        f"{alert.symbol} crossed {format_paise(alert.price)}: last {format_paise(trade.price)}",
        alert.symbol,
        trade.time.isoformat(),
    )
