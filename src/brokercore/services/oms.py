"""Order management over REST: place and cancel orders (a thin Starlette app).

    brokercore service oms --port 8000          (settings: BROKERCORE_* variables)

POST /api/v1/orders, DELETE /api/v1/orders/{orderId} and DELETE /api/v1/orders[?symbol=]
(cancel many), PATCH /api/v1/orders/{orderId} (modify), POST /api/v1/margins/orders
(what orders would block, storing nothing), each with a JWT bearer token.
The logic is in brokercore (order_entry, risk, auth, ratelimit, outbox); this file maps
HTTP onto it: authentication, the per-user rate limit, the body size limit, decoding,
and errors as ``{"error": {"code", "message", "fields"?}}`` with no stack trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.broker.risk import FeeSchedule, RejectCode
from brokercore.broker.session_plan import trading_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.entry.amo import release_loop
from brokercore.entry.brackets import BracketBook
from brokercore.entry.cancel_many import cancel_many
from brokercore.entry.group_commit import GroupCommit
from brokercore.entry.gtt import GttBook
from brokercore.entry.margins import MarginBody, MarginOrder, answer, preview
from brokercore.entry.modify import changes_nothing, modify
from brokercore.entry.order_entry import OrderEntry, OrderReceipt, OrderRefused, Refusal
from brokercore.entry.outbox import OutboxPublisher
from brokercore.entry.requests import (
    CancelsRequested,
    FieldError,
    MarginAnswer,
    ModifyOrderRequest,
    OrderAccepted,
    PlaceOrderRequest,
    encode_json,
)
from brokercore.read.cache import UserCache
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    decode_body,
    decode_query,
    guarded,
    json_response,
    path_id,
    service_app,
)
from brokercore.services.openapi import documented, error_codes

log = logging.getLogger("brokercore.oms")

T = TypeVar("T")


class Oms(LimitedApi):
    """The pieces one API process holds, made at start-up and closed at shutdown, and
    its two background jobs: the idempotency keys' cleanup and the outbox's sweep."""

    def __init__(self, settings: ServiceSettings, kafka: KafkaSettings):
        super().__init__(
            settings,
            "ratelimit:",
            settings.rate_limit_burst,
            settings.rate_limit_per_second,
            max_connections=20,
            max_redis=64,
        )
        market = trading_market(settings)
        self.entry = OrderEntry(
            self.pool,
            market,
            kafka,
            fees=FeeSchedule(Decimal(settings.fee_bps), settings.fee_fixed_paise),
            protection_percent=Decimal(settings.market_protection_percent),
        )
        self.orders = GroupCommit(self.entry)  # new orders: one transaction per batch
        self.gtts = GttBook(self.entry, timedelta(days=settings.gtt_expiry_days))
        self.brackets = BracketBook(self.entry)
        self.publisher = OutboxPublisher(self.pool, kafka.bootstrap)
        self.cache = UserCache(self.redis, settings.redis_prefix, settings.cache_ttl)
        self._jobs: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await super().open()
        self._jobs = [
            asyncio.create_task(expire_keys(self)),
            asyncio.create_task(self.publisher.run()),
            asyncio.create_task(release_loop(self.pool, self.publisher.submit)),
        ]

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        await self.publisher.aclose()
        await super().close()

    async def published(self, user_id: str, receipt: OrderReceipt) -> OrderReceipt:
        """The user's cached reads invalidated (the order is committed), then the
        receipt's command handed to the publisher, a retry's still unpublished one
        included; nothing waits for Kafka (while it is away the producer keeps the
        command, and the publisher's sweep sends what it could not keep)."""
        await self.cache.invalidate([user_id])
        if receipt.outbox is not None:
            self.publisher.submit([receipt.outbox])
        return receipt


def accepted(receipt: OrderReceipt) -> Response:
    body = OrderAccepted(receipt.order_id, receipt.status, receipt.timestamp.isoformat())
    return Response(encode_json(body), 202, media_type="application/json")


_REFUSAL_STATUS = {
    Refusal.NO_ACCOUNT: 403,
    Refusal.ACCOUNT_NOT_VERIFIED: 403,
    Refusal.IDEMPOTENCY_KEY_REUSED: 422,
    Refusal.ORDER_NOT_FOUND: 404,
    Refusal.ORDER_NOT_OPEN: 409,
    Refusal.ORDER_PENDING: 409,
    Refusal.ORDER_NOT_MODIFIABLE: 409,
    Refusal.MODIFY_PENDING: 409,
    Refusal.MODIFY_LIMIT_REACHED: 409,
    Refusal.AMO_MARKET_OPEN: 422,
}


def refusal_status(reason: Refusal | RejectCode) -> int:
    """The HTTP status of a refusal: a risk check's (a ``RejectCode``) is always 422."""
    return 422 if isinstance(reason, RejectCode) else _REFUSAL_STATUS[reason]


def refusals(*reasons: Refusal, checks: bool = False) -> dict[int, str]:
    """The statuses and codes of ``reasons`` for the API's document; ``checks``: the
    order's checks too (every ``RejectCode``, 422)."""
    pairs = [(refusal_status(reason), reason.value) for reason in reasons]
    if checks:
        pairs.append((422, "the order's checks (RejectCode: docs/errors.md)"))
    return error_codes(pairs)


class CancelManyQuery(msgspec.Struct, frozen=True):
    """DELETE /api/v1/orders' query: only ``symbol``'s open orders when given (read by
    ``cancel_orders``)."""

    symbol: str | None = None


async def entry(call: Awaitable[T]) -> T:
    """The order entry's answer; a refusal (nothing stored) as an API error."""
    try:
        return await call
    except OrderRefused as e:
        raise ApiError(refusal_status(e.reason), e.reason.value, e.message) from None


@guarded
async def place_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    order = decode_body(PlaceOrderRequest, await oms.body(request), "order")
    return accepted(
        await oms.published(
            principal.user_id, await entry(oms.orders.place(principal.user_id, order))
        )
    )


@guarded
async def cancel_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    return accepted(
        await oms.published(
            principal.user_id, await entry(oms.entry.cancel(principal.user_id, _order_id(request)))
        )
    )


def _order_id(request: Request) -> int:
    return path_id(request, "order_id", "ORDER_NOT_FOUND", "order")


@guarded
async def modify_order(request: Request) -> Response:
    """Change an open order's price, quantity, trigger or disclosed quantity."""
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    order_id = _order_id(request)
    body = decode_body(ModifyOrderRequest, await oms.body(request), "modify")
    if changes_nothing(body):
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "the modify is invalid",
            [FieldError("body", "give price, quantity, triggerPrice or disclosedQuantity")],
        )
    limit = oms.settings.max_order_modifications
    return accepted(
        await oms.published(
            principal.user_id,
            await entry(modify(oms.entry, principal.user_id, order_id, body, limit)),
        )
    )


@guarded
async def cancel_orders(request: Request) -> Response:
    """Cancel many: the caller's open orders, of one symbol with ``?symbol=``."""
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    symbol = decode_query(request, CancelManyQuery).symbol
    done = await entry(cancel_many(oms.entry, principal.user_id, symbol))
    await oms.cache.invalidate([principal.user_id])
    oms.publisher.submit(done.outbox)
    return json_response(done.answer, 202)


@guarded
async def margin_preview(request: Request) -> Response:
    """What one order or a list of them would block, checked together; nothing stored."""
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    raw = await oms.body(request)
    body: MarginOrder | list[MarginOrder] = decode_body(MarginBody, raw, "order")
    orders = body if isinstance(body, list) else [body]
    return json_response(answer(await entry(preview(oms.entry, principal.user_id, orders))))


def create_app(
    settings: ServiceSettings | None = None, kafka: KafkaSettings | None = None
) -> Starlette:
    from brokercore.services.bracket_api import BRACKET_ROUTES  # they use this module
    from brokercore.services.gtt_api import GTT_ROUTES  # its handlers use this module

    settings = settings or ServiceSettings.from_env()
    kafka = kafka or KafkaSettings.from_env()
    return service_app(
        "oms",
        lambda: Oms(settings, kafka),
        [
            documented(
                "POST",
                "/api/v1/orders",
                place_order,
                "Place an order (202: stored and sent to the engine, which may still reject it)",
                tag="orders",
                body=PlaceOrderRequest,
                response=OrderAccepted,
                status=202,
                links={
                    "getOrdersOrderId": "/orderId",
                    "getOrdersOrderIdHistory": "/orderId",
                    "patchOrdersOrderId": "/orderId",
                    "deleteOrdersOrderId": "/orderId",
                },
                errors=refusals(
                    Refusal.NO_ACCOUNT,
                    Refusal.ACCOUNT_NOT_VERIFIED,
                    Refusal.IDEMPOTENCY_KEY_REUSED,
                    Refusal.AMO_MARKET_OPEN,
                    checks=True,
                ),
            ),
            documented(
                "POST",
                "/api/v1/margins/orders",
                margin_preview,
                "What one order or a list of them would block, checked together; stores nothing",
                tag="orders",
                body=MarginBody,
                response=MarginAnswer,
                errors=refusals(Refusal.NO_ACCOUNT, Refusal.ACCOUNT_NOT_VERIFIED),
            ),
            documented(
                "DELETE",
                "/api/v1/orders",
                cancel_orders,
                "Cancel the caller's open orders (of one symbol with ?symbol=)",
                tag="orders",
                query=CancelManyQuery,
                response=CancelsRequested,
                status=202,
                errors=refusals(Refusal.NO_ACCOUNT),
            ),
            documented(
                "DELETE",
                "/api/v1/orders/{order_id}",
                cancel_order,
                "Cancel an open order",
                tag="orders",
                response=OrderAccepted,
                status=202,
                errors=refusals(Refusal.ORDER_NOT_FOUND, Refusal.ORDER_NOT_OPEN),
            ),
            documented(
                "PATCH",
                "/api/v1/orders/{order_id}",
                modify_order,
                "Change an open order's price, quantity, trigger or disclosed quantity",
                tag="orders",
                body=ModifyOrderRequest,
                response=OrderAccepted,
                status=202,
                errors=refusals(
                    Refusal.IDEMPOTENCY_KEY_REUSED,
                    Refusal.ORDER_NOT_FOUND,
                    Refusal.ORDER_NOT_OPEN,
                    Refusal.ORDER_PENDING,
                    Refusal.ORDER_NOT_MODIFIABLE,
                    Refusal.MODIFY_PENDING,
                    Refusal.MODIFY_LIMIT_REACHED,
                    checks=True,
                ),
            ),
            *GTT_ROUTES,
            *BRACKET_ROUTES,
        ],
    )


async def expire_keys(oms: Oms, every: float = 3600.0) -> None:
    """The idempotency keys' cleanup job: expired keys go, hourly."""
    while True:
        try:
            await oms.entry.expire_idempotency_keys()
        except Exception:
            log.exception("expiring idempotency keys failed")
        await asyncio.sleep(every)
