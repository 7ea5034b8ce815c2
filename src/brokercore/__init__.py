"""brokercore: a price-time priority matching core for Python.

``OrderBook`` is the compiled engine (one per symbol); commands and events are numpy
structured records (``COMMAND_DTYPE``, ``EVENT_DTYPE``) so whole batches cross into C
in one call. docs/engine.md in the repository is the full contract.

    >>> from brokercore import OrderBook, Side
    >>> book = OrderBook(low=9_000, high=11_000)
    >>> book.limit(1, Side.SELL, 10_000, 5, account=1)
    1
    >>> book.limit(2, Side.BUY, 10_001, 3, account=2)
    2
    >>> [EventType(e) for e in book.last_events()["type"]]
    [<EventType.ACCEPTED: 1>, <EventType.TRADE: 3>]
"""

from brokercore.engine._engine import OrderBook
from brokercore.engine.records import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    INT64_MAX,
    LEVEL_DTYPE,
    MAX_BAND_LEVELS,
    ORDER_DTYPE,
    AuctionQuote,
    EventType,
    Flags,
    Op,
    Phase,
    Reason,
    RestingOrder,
    Side,
    Stp,
    Tif,
)

__version__ = "0.1.0"

__all__ = [
    "OrderBook",
    "RestingOrder",
    "AuctionQuote",
    "Op",
    "Phase",
    "Side",
    "Tif",
    "Stp",
    "Flags",
    "EventType",
    "Reason",
    "COMMAND_DTYPE",
    "EVENT_DTYPE",
    "ORDER_DTYPE",
    "LEVEL_DTYPE",
    "MAX_BAND_LEVELS",
    "INT64_MAX",
]
