"""What the platform pushes to clients in real time: the Redis channels and the JSON
messages on them (msgspec Structs, camelCase, tagged by ``type``).

- ``user:{userId}``: one user's ORDER_UPDATE (from the projector, after its commit) and
  NOTIFICATION (from the notifier) messages. Every WebSocket gateway instance subscribes
  to the channels of the users connected to it, so any instance can serve any user.
- ``md:trades:{symbol}`` and ``md:book:{symbol}``: TRADE and BOOK messages (from the
  projector), for clients that subscribe to a symbol's market data.
- ``md:{symbol}`` (a key): the newest BOOK message of a symbol, kept by the projector.
- ``ws:online:{userId}``: a sorted set of gateway instance ids, scored by when their
  registration lapses (epoch seconds); the notifier pushes to a user none holds.
- ``projected:{topic}`` (a hash): partition -> the offset of ``events`` up to which the
  projector has published its messages, set in the same pipeline right after them. Redis
  runs one connection's commands in order, so whoever reads an offset there publishes
  after those messages: the notifier waits for it to tell of a fill after its update.

Prices and money are decimal strings of rupees ("2847.00"), quantities are shares,
times ISO 8601 UTC. Every key and channel name starts with the deployment's prefix.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

__all__ = [
    "OrderUpdate",
    "Notification",
    "TradeTick",
    "Level",
    "Indicative",
    "BookUpdate",
    "Candle",
    "user_channel",
    "trades_channel",
    "book_channel",
    "md_key",
    "online_key",
    "projected_key",
    "Message",
    "encode_message",
    "decode_message",
]


class OrderUpdate(
    msgspec.Struct, tag_field="type", tag="ORDER_UPDATE", rename="camel", frozen=True
):
    """An order's state after a change; ``seq`` is its read_model.order_updates id, which
    grows per user, so a client resumes with the last one it saw."""

    seq: int
    order_id: int
    symbol: str
    side: str
    order_type: str
    status: str
    quantity: int
    filled_qty: int
    avg_price: str | None
    price: str | None
    reject_reason: str | None
    updated_at: str
    event_time_ms: int  # the Kafka timestamp of the engine's event message
    trigger_price: str | None = None  # a stop's (status TRIGGER_PENDING until it triggers)
    disclosed_quantity: int = 0  # an iceberg's disclosed quantity, 0: not an iceberg


class Notification(
    msgspec.Struct, tag_field="type", tag="NOTIFICATION", rename="camel", frozen=True
):
    """A message for a person; ``id`` is stable across re-deliveries (dedupe on it)."""

    id: str
    kind: str  # FILL, TRIGGERED, CANCELLED, EXPIRED, REJECTED, PRICE_ALERT, GTT_...
    title: str
    body: str
    symbol: str
    created_at: str
    order_id: int | None = None


class TradeTick(msgspec.Struct, tag_field="type", tag="TRADE", rename="camel", frozen=True):
    trade_id: str
    symbol: str
    price: str
    quantity: int
    time: str


class Level(msgspec.Struct, frozen=True):
    price: str
    quantity: int


class Indicative(msgspec.Struct, rename="camel", frozen=True):
    """What the opening auction would do now (docs/engine.md, Call auction): the price,
    the quantity that would trade at it, and the surplus left (and its side, None when
    balanced)."""

    price: str
    volume: int
    imbalance: int
    surplus_side: str | None


class BookUpdate(msgspec.Struct, tag_field="type", tag="BOOK", rename="camel", frozen=True):
    """A symbol's market data: L2 depth (best first, shown quantities: an iceberg's
    disclosed part), best bid/ask, last price, the trading phase (OPEN, PRE_OPEN, HALTED,
    CLOSED) and, in PRE_OPEN, the indicative opening (None when nothing would trade).
    GET /api/v1/marketdata/{symbol} answers the same body."""

    symbol: str
    bids: list[Level]
    asks: list[Level]
    best_bid: Level | None
    best_ask: Level | None
    last_price: str | None
    phase: str = "OPEN"
    halted: bool = False
    indicative: Indicative | None = None


class Candle(msgspec.Struct, rename="camel", frozen=True):
    time: str  # start of the interval
    open: str
    high: str
    low: str
    close: str
    volume: int


def user_channel(prefix: str, user_id: str) -> str:
    return f"{prefix}user:{user_id}"


def trades_channel(prefix: str, symbol: str) -> str:
    return f"{prefix}md:trades:{symbol}"


def book_channel(prefix: str, symbol: str) -> str:
    return f"{prefix}md:book:{symbol}"


def md_key(prefix: str, symbol: str) -> str:
    """Where the newest BOOK message of a symbol is kept (GET /marketdata/{symbol})."""
    return f"{prefix}md:{symbol}"


def online_key(prefix: str, user_id: str) -> str:
    return f"{prefix}ws:online:{user_id}"


def projected_key(prefix: str, topic: str) -> str:
    """partition -> the next offset of ``topic`` whose messages the projector has
    published (a hash)."""
    return f"{prefix}projected:{topic}"


Message: TypeAlias = OrderUpdate | Notification | TradeTick | BookUpdate
"""Any message on the channels."""

encode_message = msgspec.json.Encoder().encode
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def decode_message(data: bytes | str) -> Message:
    return _decoder.decode(data)
