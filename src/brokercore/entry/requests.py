"""REST bodies of the services: msgspec Structs, JSON with camelCase names.

Shape rules (types, lengths, allowed words, unknown fields) are enforced here when a
body is decoded; trading rules (tick and lot size, bands, buying power) live in
``brokercore.broker.risk``, because they need the instrument and the account.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

__all__ = [
    "PlaceOrderRequest",
    "ModifyOrderRequest",
    "OrderAccepted",
    "ErrorBody",
    "ErrorDetail",
    "FieldError",
    "encode_json",
]

MAX_QUANTITY = 10**9
"""No single order is larger than this, whatever the instrument allows."""


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


encode_json = msgspec.json.Encoder().encode
