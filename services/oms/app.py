"""Order management over REST: place and cancel orders (a thin Starlette app).

    uvicorn services.oms.app:app --port 8000          (settings: BROKERCORE_* variables)

POST /api/v1/orders and DELETE /api/v1/orders/{orderId}, each with a JWT bearer token.
The logic is in brokercore (order_entry, risk, auth, ratelimit, outbox); this file maps
HTTP onto it: authentication, the per-user rate limit, the body size limit, decoding,
and errors as ``{"error": {"code", "message", "fields"?}}`` with no stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from decimal import Decimal

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokercore.api import (
    ErrorBody, ErrorDetail, FieldError, OrderAccepted, decode_place_order, encode_json,
)
from brokercore.auth import AuthError, JwtConfig, Principal, TokenVerifier
from brokercore.cache import UserCache
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.market import load_market
from brokercore.order_entry import OrderEntry, OrderReceipt, OrderRefused
from brokercore.outbox import OutboxPublisher
from brokercore.ratelimit import TokenBucket
from brokercore.risk import FeeSchedule

log = logging.getLogger("brokercore.oms")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields=(),
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.headers = list(fields), headers


def error_response(status: int, code: str, message: str, fields=(),
                   headers: dict | None = None) -> Response:
    body = ErrorBody(ErrorDetail(code, message, list(fields)))
    return Response(encode_json(body), status, headers, media_type="application/json")


class Oms:
    """The pieces one API process holds, made at start-up and closed at shutdown."""

    def __init__(self, settings: ServiceSettings, kafka: KafkaSettings):
        self.settings = settings
        self.pool = AsyncConnectionPool(settings.database_url, min_size=2, max_size=20,
                                        open=False)
        # Waits for a free connection instead of failing when all are busy.
        self.redis = Redis(connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=64, timeout=5))
        self.verifier = TokenVerifier(JwtConfig(
            settings.jwt_issuer, settings.jwt_audience, settings.jwt_hs256_secret,
            settings.jwt_rs256_public_key))
        self.limiter = TokenBucket(self.redis, settings.rate_limit_burst,
                                   settings.rate_limit_per_second,
                                   prefix=settings.redis_prefix + "ratelimit:")
        self.entry = OrderEntry(self.pool, load_market(settings.instruments), kafka,
                                fees=FeeSchedule(Decimal(settings.fee_bps),
                                                 settings.fee_fixed_paise))
        self.publisher = OutboxPublisher(self.pool, kafka.bootstrap)
        self.cache = UserCache(self.redis, settings.redis_prefix, settings.cache_ttl)

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.publisher.aclose()
        await self.pool.close()
        await self.redis.aclose()

    async def authorize(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "UNAUTHENTICATED", "a bearer token is required",
                           headers={"WWW-Authenticate": "Bearer"})
        try:
            principal = self.verifier.verify(token.strip())
        except AuthError as e:
            raise ApiError(401, e.code, e.message,
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) \
                from None
        wait = await self.limiter.take(principal.user_id)
        if wait > 0:
            raise ApiError(429, "RATE_LIMITED", "too many requests; slow down",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return principal

    async def body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, "BODY_TOO_LARGE", f"the body may be at most {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "BODY_TOO_LARGE", f"the body may be at most {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def published(self, user_id: str, receipt: OrderReceipt) -> OrderReceipt:
        """The user's cached reads invalidated (the order is committed), then the
        receipt's command published now (briefly waiting for Kafka's ack); if that fails
        the order is still stored, and the reconciler publishes it later."""
        await self.cache.invalidate([user_id])
        if receipt.outbox is not None:
            try:
                await self.publisher.publish([receipt.outbox])
            except Exception:               # noqa: BLE001 - the outbox keeps it
                log.exception("publishing outbox row %s failed", receipt.outbox.outbox_id)
        return receipt


def accepted(receipt: OrderReceipt) -> Response:
    body = OrderAccepted(receipt.order_id, receipt.status, receipt.timestamp.isoformat())
    return Response(encode_json(body), 202, media_type="application/json")


def guarded(handler):
    """Every failure becomes a JSON error answer here, in the handler: an unexpected one
    is logged and answered 500 without a trace, and the connection stays usable
    (Starlette's catch-all handler would re-raise it, and the server drop the connection)."""
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message, e.fields, e.headers)
        except OrderRefused as e:
            return error_response(e.status, e.code, e.message)
        except Exception:                   # noqa: BLE001 - answered 500, logged
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, "INTERNAL_ERROR", "something went wrong on our side")
    return handle


@guarded
async def place_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    body = await oms.body(request)
    try:
        order = decode_place_order(body)
    except msgspec.ValidationError as e:
        message, _, where = str(e).partition(" - at `$")
        field = where.rstrip("`").lstrip(".") or "body"
        raise ApiError(422, "INVALID_REQUEST", "the order is invalid",
                       [FieldError(field, message)]) from None
    except msgspec.DecodeError:
        raise ApiError(400, "MALFORMED_JSON", "the body is not valid JSON") from None
    return accepted(await oms.published(principal.user_id,
                                        await oms.entry.place(principal.user_id, order)))


@guarded
async def cancel_order(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    raw = request.path_params["order_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "ORDER_NOT_FOUND", f"no order {raw[:40]}")
    return accepted(await oms.published(
        principal.user_id, await oms.entry.cancel(principal.user_id, int(raw))))


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
        try:
            yield
        finally:
            cleanup.cancel()
            await oms.close()

    return Starlette(
        routes=[Route("/api/v1/orders", place_order, methods=["POST"]),
                Route("/api/v1/orders/{order_id}", cancel_order, methods=["DELETE"])],
        lifespan=lifespan)


async def expire_keys(oms: Oms, every: float = 3600.0) -> None:
    """The idempotency keys' cleanup job: expired keys go, hourly."""
    while True:
        try:
            await oms.entry.expire_idempotency_keys()
        except Exception:                   # noqa: BLE001 - retried next round
            log.exception("expiring idempotency keys failed")
        await asyncio.sleep(every)


def __getattr__(name: str):
    if name == "app":                       # `uvicorn services.oms.app:app`
        return create_app()
    raise AttributeError(name)
