"""REST bodies of the order entry's services (orders, GTTs, brackets, the margin
preview, cancel many): msgspec Structs, JSON with camelCase names, free of database
drivers, so a client (brokercore.client) decodes with the same definitions the
services answer with and the API's document is generated from.

Shape rules (types, lengths, allowed words, unknown fields) are enforced here when a
body is decoded; trading rules (tick and lot size, bands, buying power) live in
``brokercore.broker.risk``, because they need the instrument and the account.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

__all__ = [
    "MAX_BRACKETS_PAGE",
    "PlaceOrderRequest",
    "ModifyOrderRequest",
    "OrderAccepted",
    "ErrorBody",
    "ErrorDetail",
    "FieldError",
    "GttOrder",
    "GttLeg",
    "NewGtt",
    "GttChange",
    "GttLegView",
    "GttView",
    "GttList",
    "NewBracket",
    "TargetView",
    "BracketView",
    "BracketStatus",
    "BracketQuery",
    "BracketList",
    "Blocks",
    "OrderMargin",
    "MarginTotal",
    "MarginAnswer",
    "CancelRequested",
    "CancelsRequested",
    "encode_json",
]

MAX_QUANTITY = 10**9
"""No single order is larger than this, whatever the instrument allows."""

MAX_BRACKETS_PAGE = 200
"""The most brackets one GET /api/v1/brackets answers (the read side's page bound)."""


class PlaceOrderRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """A new order: ``price`` is the limit (LIMIT, STOP_LIMIT), ``trigger_price`` a
    stop's trigger (STOP, STOP_LIMIT), ``disclosed_quantity`` the part of a limit order
    the market sees at a time (an iceberg), ``market_protection`` a market or
    stop-market order's protection in percent (the OMS's default when absent; its
    bounds are checked with the order, brokercore.broker.risk), ``amo`` an after-market
    order: placed while the market is closed, sent at its next pre-open."""

    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    side: Literal["BUY", "SELL"]
    type: Literal["LIMIT", "MARKET", "STOP", "STOP_LIMIT"]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)]
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    price: Decimal | None = None
    time_in_force: Literal["GTC", "DAY", "IOC", "FOK"] | None = None
    trigger_price: Decimal | None = None
    disclosed_quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)] | None = None
    market_protection: Decimal | None = None
    amo: bool = False


class ModifyOrderRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """A change to an open order (PATCH /api/v1/orders/{orderId}): ``quantity`` is the
    new TOTAL quantity (filled part included); a field left out keeps its value; at
    least one is given (brokercore.entry.modify checks it)."""

    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    price: Decimal | None = None
    quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)] | None = None
    trigger_price: Decimal | None = None
    disclosed_quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)] | None = None


class OrderAccepted(msgspec.Struct, rename="camel", frozen=True):
    order_id: int
    status: str
    timestamp: str  # ISO 8601, UTC


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


# --- GTT triggers (brokercore.entry.gtt) -----------------------------------------------


class GttOrder(
    msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True, omit_defaults=True
):
    """The order a leg places when it fires: a limit (``price``) or a market order, of
    the GTT's symbol, with the usual time in force (DAY, IOC for a market order)."""

    side: Literal["BUY", "SELL"]
    type: Literal["LIMIT", "MARKET"]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)]
    price: Decimal | None = None


class GttLeg(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """Fires when the symbol's last trade price is ``condition`` ``trigger_price``."""

    condition: Literal[">=", "<="]
    trigger_price: Decimal
    order: GttOrder


Legs = Annotated[list[GttLeg], msgspec.Meta(min_length=1, max_length=2)]
Expiry = Annotated[datetime, msgspec.Meta(tz=True)]


class NewGtt(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """POST /api/v1/gtt: a SINGLE has one leg, an OCO two (one ``<=`` below the other's
    ``>=``). ``expires_at`` defaults to the longest life (a year). ``idempotency_key``,
    as a new order's: a retry with it gets the GTT it made."""

    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    kind: Literal["SINGLE", "OCO"]
    legs: Legs
    expires_at: Expiry | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class GttChange(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """PATCH /api/v1/gtt/{id}: new legs (as many as the kind has), and a new expiry."""

    legs: Legs
    expires_at: Expiry | None = None


class GttLegView(msgspec.Struct, rename="camel", frozen=True):
    condition: str
    trigger_price: str
    order: GttOrder
    status: str  # the GTT's, except an OCO's leg that did not fire: CANCELLED


class GttView(msgspec.Struct, rename="camel", frozen=True, omit_defaults=True):
    gtt_id: int
    symbol: str
    kind: str
    status: str
    legs: list[GttLegView]
    expires_at: str
    created_at: str
    updated_at: str
    triggered_at: str | None = None
    triggered_price: str | None = None  # the trade price that met the fired leg
    order_id: int | None = None  # the order it placed
    failure: ErrorDetail | None = None  # why that order was refused (FAILED)


class GttList(msgspec.Struct, frozen=True):
    gtts: list[GttView]


# --- bracket orders (brokercore.entry.brackets) ----------------------------------------


class NewBracket(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """A LIMIT DAY entry of ``quantity`` at ``price``; its legs sell (a buy's; buy, a
    sell's) at ``target`` (a limit) and, once a trade meets ``stop_loss``, at market or
    at ``stop_limit``."""

    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    side: Literal["BUY", "SELL"]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY)]
    price: Decimal
    target: Decimal
    stop_loss: Decimal
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    stop_limit: Decimal | None = None


class TargetView(msgspec.Struct, rename="camel", frozen=True, omit_defaults=True):
    quantity: int
    order_id: int | None = None
    failure: ErrorDetail | None = None


class BracketView(msgspec.Struct, rename="camel", frozen=True, omit_defaults=True):
    bracket_id: int
    symbol: str
    side: str
    quantity: int
    price: str
    target: str
    stop_loss: str
    status: str
    entry_order_id: int
    targets: list[TargetView]
    created_at: str
    updated_at: str
    stop_limit: str | None = None
    stop_triggered_price: str | None = None  # the trade price that met the stop-loss
    stop_order_id: int | None = None
    stop_quantity: int | None = None
    failure: ErrorDetail | None = None


BracketStatus = Literal[
    "ACTIVE", "STOPPING", "STOPPED", "EXITING", "CANCELLED", "DONE", "EXPIRED", "FAILED"
]


class BracketQuery(msgspec.Struct, frozen=True):
    """GET /api/v1/brackets: one status only, the page's size, and the ``nextCursor``
    of the page before (its brackets are older than that one's)."""

    status: BracketStatus | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_BRACKETS_PAGE)] = 50
    cursor: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None


class BracketList(msgspec.Struct, rename="camel", frozen=True):
    brackets: list[BracketView]  # newest first
    next_cursor: str | None  # None: this was the last page


# --- the margin preview (brokercore.entry.margins) -------------------------------------


class Blocks(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an order would block: ``cash`` (rupees) for a buy, ``shares`` of ``symbol``
    for a sell."""

    cash: str | None = None
    shares: int | None = None
    symbol: str | None = None


class OrderMargin(msgspec.Struct, frozen=True, omit_defaults=True):
    symbol: str
    side: str
    accepted: bool
    blocks: Blocks | None = None  # when accepted
    error: ErrorDetail | None = None  # when refused: the real POST's code and message


class MarginTotal(msgspec.Struct, frozen=True):
    cash: str
    shares: dict[str, int]


class MarginAnswer(msgspec.Struct, frozen=True):
    orders: list[OrderMargin]
    total: MarginTotal


# --- cancel many (brokercore.entry.cancel_many) ----------------------------------------


class CancelRequested(msgspec.Struct, rename="camel", frozen=True):
    order_id: int
    status: str


class CancelsRequested(msgspec.Struct, frozen=True):
    """The answer: the orders asked to cancel; ``more``: others are still open."""

    orders: list[CancelRequested]
    more: bool


encode_json = msgspec.json.Encoder().encode
