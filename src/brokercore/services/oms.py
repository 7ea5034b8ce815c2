"""Order management over REST: place and cancel orders (a thin Starlette app).

    brokercore service oms --port 8000          (settings: BROKERCORE_* variables)

POST /api/v1/orders and DELETE /api/v1/orders/{orderId}, each with a JWT bearer token.
The logic is in brokercore (order_entry, risk, auth, ratelimit, outbox); this file maps
HTTP onto it: authentication, the per-user rate limit, the body size limit, decoding,
and errors as ``{"error": {"code", "message", "fields"?}}`` with no stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokercore.entry.requests import OrderAccepted, PlaceOrderRequest, encode_json
from brokercore.read.cache import UserCache
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.broker.market import load_market
from brokercore.entry.order_entry import OrderEntry, OrderReceipt, OrderRefused
from brokercore.entry.outbox import OutboxPublisher
from brokercore.broker.risk import FeeSchedule
from brokercore.services.http import ApiError, LimitedApi, api_app, decode_body, guarded

log = logging.getLogger("brokercore.oms")


class Oms(LimitedApi):
    """The pieces one API process holds, made at start-up and closed at shutdown."""

    def __init__(self, settings: ServiceSettings, kafka: KafkaSettings):
        super().__init__(settings, "ratelimit:", settings.rate_limit_burst,
                         settings.rate_limit_per_second, max_connections=20, max_redis=64)
        market = load_market(settings.instruments, settings.calendar)
        self.entry = OrderEntry(self.pool, market, kafka,
                                fees=FeeSchedule(Decimal(settings.fee_bps),
                                                 settings.fee_fixed_paise))
        self.publisher = OutboxPublisher(self.pool, kafka.bootstrap)
        self.cache = UserCache(self.redis, settings.redis_prefix, settings.cache_ttl)

    async def close(self) -> None:
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


async def entry(call):
    """The order entry's answer; a refusal (nothing stored) as an API error."""
    try:
        return await call
    except OrderRefused as e:
        raise ApiError(e.status, e.code, e.message) from None


@guarded
async def place_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    order = decode_body(PlaceOrderRequest, await oms.body(request), "order")
    return accepted(await oms.published(principal.user_id,
                                        await entry(oms.entry.place(principal.user_id, order))))


@guarded
async def cancel_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    raw = request.path_params["order_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "ORDER_NOT_FOUND", f"no order {raw[:40]}")
    return accepted(await oms.published(
        principal.user_id, await entry(oms.entry.cancel(principal.user_id, int(raw)))))


def create_app(settings: ServiceSettings | None = None,
               kafka: KafkaSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    kafka = kafka or KafkaSettings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        oms = Oms(settings, kafka)
        await oms.open()
        app.state.oms = oms
        cleanup = asyncio.create_task(expire_keys(oms))
        sweep = asyncio.create_task(oms.publisher.run())
        try:
            yield
        finally:
            cleanup.cancel()
            sweep.cancel()
            await oms.close()

    return api_app([Route("/api/v1/orders", place_order, methods=["POST"]),
                    Route("/api/v1/orders/{order_id}", cancel_order, methods=["DELETE"])],
                   lifespan)


async def expire_keys(oms: Oms, every: float = 3600.0) -> None:
    """The idempotency keys' cleanup job: expired keys go, hourly."""
    while True:
        try:
            await oms.entry.expire_idempotency_keys()
        except Exception:                   # noqa: BLE001 - retried next round
            log.exception("expiring idempotency keys failed")
        await asyncio.sleep(every)
