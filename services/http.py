"""What the services' HTTP apps share: JSON errors (a stable code, a human message, no
stack trace), bearer-token authentication, bounded bodies and msgspec decoding."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.api import ErrorBody, ErrorDetail, FieldError, encode_json
from brokercore.auth import AuthError, JwtConfig, Principal, TokenVerifier, bearer_token
from brokercore.config import ServiceSettings
from brokercore.ratelimit import TokenBucket

__all__ = ["LimitedApi", "service_app", "ApiError", "error_response", "guarded",
           "json_response", "authenticate", "read_body", "field_error", "decode_body"]

log = logging.getLogger("brokercore.http")


class LimitedApi:
    """What an API that takes writes from users holds: a Postgres pool, a Redis client
    that waits for a free connection instead of failing when all are busy, the token
    verifier, and a per-user rate limit under its own Redis key prefix."""

    def __init__(self, settings: ServiceSettings, limit_prefix: str, *, max_connections: int,
                 max_redis: int):
        self.settings = settings
        self.pool = AsyncConnectionPool(settings.database_url, min_size=min(2, max_connections),
                                        max_size=max_connections, open=False)
        self.redis = Redis(connection_pool=BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_redis, timeout=5))
        self.verifier = TokenVerifier(JwtConfig.from_settings(settings))
        self.limiter = TokenBucket(self.redis, settings.rate_limit_burst,
                                   settings.rate_limit_per_second,
                                   prefix=settings.redis_prefix + limit_prefix)

    async def open(self) -> None:
        await self.pool.open(wait=True)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    async def authorize(self, request: Request) -> Principal:
        """The caller, within their rate limit: 401, or 429 with Retry-After."""
        principal = authenticate(self.verifier, request)
        wait = await self.limiter.take(principal.user_id)
        if wait > 0:
            raise ApiError(429, "RATE_LIMITED", "too many requests; slow down",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return principal

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.settings.max_body_bytes)


def service_app(name: str, make: Callable[[], object], routes: Sequence) -> Starlette:
    """A Starlette app whose lifespan makes the service object (``make()``), awaits its
    ``open()``, keeps it as ``app.state.<name>`` and awaits its ``close()`` at shutdown."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service = make()
        await service.open()
        setattr(app.state, name, service)
        try:
            yield
        finally:
            await service.close()
    return Starlette(routes=list(routes), lifespan=lifespan)


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


def json_response(body, status: int = 200) -> Response:
    return Response(encode_json(body), status, media_type="application/json")


def guarded(handler):
    """Every failure becomes a JSON error answer here, in the handler: an unexpected one
    is logged and answered 500 without a trace, and the connection stays usable
    (Starlette's catch-all handler would re-raise it, and the server drop the connection)."""
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message, e.fields, e.headers)
        except Exception:                   # noqa: BLE001 - answered 500, logged
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, "INTERNAL_ERROR", "something went wrong on our side")
    return handle


def authenticate(verifier: TokenVerifier, request: Request) -> Principal:
    """The principal of the request's bearer token, or 401 with WWW-Authenticate."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(401, "UNAUTHENTICATED", "a bearer token is required",
                       headers={"WWW-Authenticate": "Bearer"})
    try:
        return verifier.verify(token)
    except AuthError as e:
        raise ApiError(401, e.code, e.message,
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 otherwise, before reading more)."""
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


def field_error(error: msgspec.ValidationError, where_default: str = "body") -> FieldError:
    """msgspec's "Expected `int` >= 1 - at `$.quantity`" as (quantity, Expected ...)."""
    message, _, where = str(error).partition(" - at `$")
    return FieldError(where.rstrip("`").lstrip(".") or where_default, message)


def decode_body(decoder: msgspec.json.Decoder, body: bytes, what: str):
    """The body as the decoder's type: 422 naming the field, or 400 if not JSON."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        raise ApiError(422, "INVALID_REQUEST", f"the {what} is invalid",
                       [field_error(e)]) from None
    except msgspec.DecodeError:
        raise ApiError(400, "MALFORMED_JSON", "the body is not valid JSON") from None
