"""Reads over REST: orders, order history, portfolio and market data (a thin Starlette app).

    brokercore service query --port 8001          (settings: BROKERCORE_* variables)

GET /api/v1/orders, /orders/{orderId}, /orders/{orderId}/history, /portfolio,
/marketdata/{symbol} and /marketdata/{symbol}/candles, each with a JWT bearer token; a
user sees only their own orders and money. The reads are brokercore.read.queries'. Per-user
answers go through brokercore.read.cache.UserCache (invalidated by generation by the OMS,
settlement and the projector after their commits; settings.cache_ttl), market data
through the projector's copy in Redis. With BROKERCORE_REPLICA_URL the reads go to the
read replica while it keeps up (brokercore.read.replica). Redis only accelerates: with short socket
timeouts and no retries an outage costs a request a fraction of a second at most, and
the answer comes from Postgres. A user's reads have a rate limit of their own
(BROKERCORE_READ_RATE_LIMIT_*). Errors as the OMS's: ``{"error": {"code", "message",
"fields"?}}``, never a stack trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import redis
from psycopg import AsyncConnection, IsolationLevel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokercore.broker.market import load_market
from brokercore.broker.orders import ORDER_STATUSES
from brokercore.config import ServiceSettings
from brokercore.entry.requests import FieldError, encode_json
from brokercore.read import queries
from brokercore.read.cache import UserCache
from brokercore.read.candles import INTERVALS
from brokercore.realtime.channels import encode_message, md_key
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    field_error,
    guarded,
    read_router,
    service_app,
)

log = logging.getLogger("brokercore.query")

T = TypeVar("T")
Q = TypeVar("Q", bound=msgspec.Struct)

REDIS_TIMEOUT = 0.25
"""Seconds a Redis connect or command may take before the read goes to Postgres."""

MAX_CANDLES = 1440
"""Intervals one candles request may span: a day of 1-minute candles."""

CANDLE_WINDOW = timedelta(hours=24)
"""The window of a candles request without ``from``: the day before ``to`` (or now)."""

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The instants a query may name (a day before 0001-01-01 is no date Python can hold)."""

_CHOICES = {"status": ORDER_STATUSES, "interval": tuple(INTERVALS)}


async def _snapshot_reads(conn: AsyncConnection) -> None:
    """Pool connections read only, each request from one snapshot (e.g. a portfolio's
    cash and positions)."""
    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)


class QueryService(LimitedApi):
    """The pieces one query process holds, made at start-up and closed at shutdown; its
    rate limit is the reads' budget (BROKERCORE_READ_RATE_LIMIT_*)."""

    def __init__(self, settings: ServiceSettings):
        super().__init__(
            settings,
            "read-ratelimit:",
            settings.read_rate_limit_burst,
            settings.read_rate_limit_per_second,
            max_connections=20,
            max_redis=64,
            configure=_snapshot_reads,
            redis_options={
                "socket_timeout": REDIS_TIMEOUT,
                "socket_connect_timeout": REDIS_TIMEOUT,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        self.router = read_router(settings, self.pool, 20, configure=_snapshot_reads)
        self.cache = UserCache(self.redis, settings.redis_prefix, settings.cache_ttl)
        self.market = load_market(settings.instruments)
        self._books_down_until = 0.0

    async def open(self) -> None:
        await super().open()
        await self.router.open()

    async def close(self) -> None:
        await self.router.close()
        await super().close()

    async def user(self, request: Request) -> str:
        """The user id of the request's bearer token, within the reads' rate limit."""
        return (await self.authorize(request)).user_id

    async def read(self, query: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``query(conn, *args)`` on the replica or the primary (``self.router``)."""
        return await self.router.read(query, *args)

    async def cached(
        self,
        user: str,
        name: str,
        query: Callable[..., Awaitable[object]],
        *args: Any,
        missing: ApiError | None = None,
    ) -> Response:
        """The user's answer ``name``: from the cache, else ``query``'s (then cached);
        ``missing`` is raised (and nothing cached) when the query, one that can find
        nothing, finds nothing."""

        async def load() -> bytes:
            found = await self.read(query, *args)
            if found is None and missing is not None:
                raise missing
            return encode_json(found)

        return _json(await self.cache.get(user, name, load))

    async def book_copy(self, symbol: str) -> bytes | None:
        """The projector's copy of the symbol's BOOK message (kept current after each of
        its commits); None without one, or while Redis fails (then left alone as long as
        the cache leaves it)."""
        if time.monotonic() < self._books_down_until:
            return None
        try:
            book = await self.redis.get(md_key(self.settings.redis_prefix, symbol))
            return book.encode() if isinstance(book, str) else book
        except redis.RedisError as e:
            self._books_down_until = time.monotonic() + self.cache.retry_after
            log.warning("redis unavailable (%s); market data from the read model", e)
            return None

    def symbol(self, request: Request) -> str:
        symbol: str = request.path_params["symbol"]
        if symbol not in self.market:
            raise ApiError(404, "UNKNOWN_SYMBOL", f"no instrument {symbol[:40]!r}")
        return symbol


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "INVALID_REQUEST", "the query is invalid", [FieldError(field, message)])


def _params(request: Request, kind: type[msgspec.Struct] | None = None) -> dict[str, str]:
    """The query string as a dict of ``kind``'s fields (none without a kind); unknown or
    repeated parameters are refused."""
    known = {f.encode_name for f in msgspec.structs.fields(kind)} if kind else set()
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise _invalid(
                name[:40],
                f"unknown query parameter (expected one of {', '.join(sorted(known))})"
                if known
                else "this endpoint takes no query parameters",
            )
        if name in params:
            raise _invalid(name, "given more than once")
        params[name] = value
    return params


def _convert(params: Mapping[str, object], kind: type[Q]) -> Q:
    try:
        query = msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as e:
        error = field_error(e, "query")
        field, message = error.field, error.message
        choices = _CHOICES.get(field.partition("[")[0])
        if choices and message.startswith("Invalid enum value"):
            message += f" (expected one of {', '.join(choices)})"
        raise _invalid(field, message) from None
    for info in msgspec.structs.fields(kind):
        instant = getattr(query, info.name)
        if isinstance(instant, datetime) and not EARLIEST <= instant <= LATEST:
            raise _invalid(
                info.encode_name, f"must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}"
            )
    return query


def _ordered(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise _invalid("to", "must be later than `from`")


def _order_id(request: Request) -> int:
    raw = request.path_params["order_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "ORDER_NOT_FOUND", f"no order {raw[:40]}")
    return int(raw)


def _no_order(order_id: int) -> ApiError:
    return ApiError(404, "ORDER_NOT_FOUND", f"no order {order_id}")


def _service(request: Request) -> QueryService:
    service: QueryService = request.app.state.query
    return service


@guarded
async def list_orders(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    raw = _params(request, queries.OrdersQuery)
    params: dict[str, object] = dict(raw)
    if "status" in raw:
        params["status"] = raw["status"].split(",")
    query = _convert(params, queries.OrdersQuery)
    if query.status:  # one cache entry for equal filters
        query = msgspec.structs.replace(query, status=sorted(set(query.status)))
    _ordered(query.start, query.end)
    return await service.cached(
        user, "orders:" + encode_json(query).decode(), queries.list_orders, user, query
    )


@guarded
async def get_order(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    order_id = _order_id(request)
    _params(request)
    return await service.cached(
        user, f"order:{order_id}", queries.get_order, user, order_id, missing=_no_order(order_id)
    )


@guarded
async def order_history(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    order_id = _order_id(request)
    at = _convert(_params(request, queries.HistoryQuery), queries.HistoryQuery).at
    history = await service.read(queries.order_history, user, order_id)
    if history is None:
        raise _no_order(order_id)
    if at is None:
        return _json(encode_json(history))
    state = queries.state_at(history, at)
    if state is None:
        raise ApiError(
            404,
            "ORDER_NOT_YET_PLACED",
            f"order {order_id} was placed at {history.created_at}, after "
            f"{at.astimezone(UTC).isoformat()}",
        )
    return _json(encode_json(state))


@guarded
async def portfolio(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    _params(request)
    return await service.cached(
        user,
        "portfolio",
        queries.portfolio,
        user,
        missing=ApiError(403, "NO_ACCOUNT", "this user has no trading account"),
    )


@guarded
async def market_data(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    symbol = service.symbol(request)
    _params(request)
    body = await service.book_copy(symbol)
    if body is None:
        body = encode_message(await service.read(queries.book, symbol))
    return _json(body)


@guarded
async def candles(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    symbol = service.symbol(request)
    query = _convert(_params(request, queries.CandlesQuery), queries.CandlesQuery)
    end = query.end or datetime.now(UTC)
    start = query.start or end - CANDLE_WINDOW
    _ordered(start, end)
    if (end - start) / INTERVALS[query.interval] > MAX_CANDLES:
        raise _invalid(
            "from",
            f"the window spans more than {MAX_CANDLES} intervals of "
            f"{query.interval}; narrow it or use a longer interval",
        )
    return _json(
        encode_json(await service.read(queries.candle_series, symbol, query.interval, start, end))
    )


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    return service_app(
        "query",
        lambda: QueryService(settings),
        [
            Route("/api/v1/orders", list_orders, methods=["GET"]),
            Route("/api/v1/orders/{order_id}", get_order, methods=["GET"]),
            Route("/api/v1/orders/{order_id}/history", order_history, methods=["GET"]),
            Route("/api/v1/portfolio", portfolio, methods=["GET"]),
            Route("/api/v1/marketdata/{symbol}", market_data, methods=["GET"]),
            Route("/api/v1/marketdata/{symbol}/candles", candles, methods=["GET"]),
        ],
    )
