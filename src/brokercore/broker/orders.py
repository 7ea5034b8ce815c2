"""Orders as the broker tracks them: their statuses, how an engine event ends one, and
the ids and times settlement, the projector, the notifier and the reconciler must all
derive the same way from the engine's events.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Literal, Protocol, get_args

from brokercore.engine.records import EventType

__all__ = [
    "OrderStatus",
    "ORDER_STATUSES",
    "OPEN_STATUSES",
    "CANCEL_REQUESTED",
    "END_STATUS",
    "TradeEvent",
    "trade_id",
    "event_time",
]

OrderStatus = Literal[
    "AMO_PENDING",
    "PENDING",
    "TRIGGER_PENDING",
    "OPEN",
    "PARTIALLY_FILLED",
    "FILLED",
    "CANCELLED",
    "REJECTED",
    "EXPIRED",
]
"""An order's status, as stored and as the API shows it (0008_stop_and_iceberg_orders.sql:
TRIGGER_PENDING is a stop order waiting outside the book for its trigger)."""

ORDER_STATUSES: tuple[OrderStatus, ...] = get_args(OrderStatus)

OPEN_STATUSES: tuple[OrderStatus, ...] = (
    "AMO_PENDING",
    "PENDING",
    "TRIGGER_PENDING",
    "OPEN",
    "PARTIALLY_FILLED",
)
"""The statuses of an order that can still trade (and hold cash or shares): a waiting
stop can fire at any time, so it is open too, and so is an after-market order waiting
for its pre-open (0015). orders_open_idx (0015) has this predicate."""

CANCEL_REQUESTED = "CANCEL_REQUESTED"  # a cancel's receipt: asked of the engine, not done

END_STATUS: Mapping[EventType, OrderStatus] = MappingProxyType(
    {EventType.CANCELLED: "CANCELLED", EventType.EXPIRED: "EXPIRED", EventType.REJECTED: "REJECTED"}
)
"""The status an order ends with on each event that can end it without a fill (a REJECTED
ends only a new order, and only the first time: see its readers)."""


class TradeEvent(Protocol):
    """What names a trade: an engine TRADE event (``brokercore.kafka.messages.Event``)."""

    @property
    def symbol(self) -> str: ...

    @property
    def seq(self) -> int: ...


def trade_id(event: TradeEvent) -> str:
    """A trade's id: its symbol and the book's sequence number, unique per symbol."""
    return f"{event.symbol}:{event.seq}"


def event_time(ns: int) -> datetime:
    """An event's ``ts`` (ns since the epoch, set by the command's producer)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
