"""Reads over REST: orders, order history, portfolio and market data (a thin Starlette app).

    brokercore service query --port 8001          (settings: BROKERCORE_* variables)

GET /api/v1/orders, /orders/{orderId}, /orders/{orderId}/history, /portfolio,
/marketdata/{symbol} and /marketdata/{symbol}/candles, /instruments and
/instruments/{symbol} (brokercore.read.instruments), /trades, /statement (JSON or CSV),
and the user's watchlists (GET, POST /watchlists; GET, PUT, DELETE /watchlists/{id}),
each with a JWT bearer token; a user sees only their own orders, money and lists (another
user's list is 404, as if it did not exist). The reads are brokercore.read.queries',
brokercore.read.statement's and brokercore.read.watchlists'; watchlists are read and
written on the primary (a small pool of its own, the only writes of this service). Per-user
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
from zoneinfo import ZoneInfo

import msgspec
import redis
from psycopg import AsyncConnection, IsolationLevel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.broker.market import load_market
from brokercore.config import ServiceSettings
from brokercore.entry.requests import FieldError, encode_json
from brokercore.read import answers, instruments, queries, statement, watchlists
from brokercore.read.cache import UserCache
from brokercore.read.candles import INTERVALS
from brokercore.realtime.channels import BookUpdate, encode_message, md_key
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    convert_query,
    database_pool,
    decode_body,
    guarded,
    path_id,
    query_params,
    read_router,
    service_app,
)
from brokercore.services.openapi import DocumentedRoute, documented, documents_routes

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

STATEMENT_DAYS = 30
"""Days a statement without ``from`` covers, up to ``to`` (or today)."""


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
        self.market = load_market(settings.instruments, settings.calendar)
        self.instruments = instruments.Catalogue(self.market)  # reference data
        self.writes = database_pool(settings, 5)  # watchlists
        self.zone = (  # the exchange's days (statements)
            next(iter(self.market.values())).session.zone if self.market else ZoneInfo("UTC")
        )
        self._books_down_until = 0.0

    async def open(self) -> None:
        await super().open()
        await self.router.open()
        await self.writes.open(wait=True)

    async def close(self) -> None:
        await self.writes.close()
        await self.router.close()
        await super().close()

    def day_starts(self) -> dict[str, datetime]:
        """When each symbol's trading day began (``queries.day_starts``)."""
        return queries.day_starts(self.market, datetime.now(UTC))

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


def _convert(params: Mapping[str, object], kind: type[Q]) -> Q:
    """``convert_query``, and every instant of the query within what a date can hold."""
    query = convert_query(params, kind)
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
    return path_id(request, "order_id", "ORDER_NOT_FOUND", "order")


def _no_order(order_id: int) -> ApiError:
    return ApiError(404, "ORDER_NOT_FOUND", f"no order {order_id}")


def _service(request: Request) -> QueryService:
    service: QueryService = request.app.state.query
    return service


@guarded
async def list_orders(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    raw = query_params(request, queries.OrdersQuery)
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
    query_params(request)
    return await service.cached(
        user, f"order:{order_id}", queries.get_order, user, order_id, missing=_no_order(order_id)
    )


@guarded
async def order_history(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    order_id = _order_id(request)
    at = _convert(query_params(request, queries.HistoryQuery), queries.HistoryQuery).at
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
    query_params(request)
    return await service.cached(
        user,
        "portfolio",
        queries.portfolio,
        user,
        service.day_starts(),
        missing=_no_account(),
    )


def _no_account() -> ApiError:
    return ApiError(403, "NO_ACCOUNT", "this user has no trading account")


@guarded
async def trades(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    query = _convert(query_params(request, queries.TradesQuery), queries.TradesQuery)
    _ordered(query.start, query.end)
    try:
        page = await service.read(queries.list_trades, user, query)
    except queries.BadCursor as e:
        raise _invalid("cursor", str(e)) from None
    return _json(encode_json(page))


@guarded
async def account_statement(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    query = _convert(query_params(request, statement.StatementQuery), statement.StatementQuery)
    last = query.end or datetime.now(service.zone).date()
    first = query.start or last - timedelta(days=STATEMENT_DAYS - 1)
    for name, day in (("from", first), ("to", last)):
        if not EARLIEST.date() <= day <= LATEST.date():
            raise _invalid(name, f"must be between {EARLIEST.date()} and {LATEST.date()}")
    if first > last:
        raise _invalid("to", "must not be before `from`")
    if (last - first).days >= statement.MAX_DAYS:
        raise _invalid("from", f"a statement spans at most {statement.MAX_DAYS} days")
    try:
        found = await service.read(statement.statement, user, first, last, service.zone)
    except statement.TooLarge as e:
        raise ApiError(422, "STATEMENT_TOO_LARGE", str(e)) from None
    if found is None:
        raise _no_account()
    wants_csv = query.format == "csv" or (
        query.format is None and "text/csv" in request.headers.get("accept", "")
    )
    if not wants_csv:
        return _json(encode_json(found))
    return Response(
        statement.to_csv(found),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="statement-{first}-{last}.csv"'},
    )


# --- watchlists ----------------------------------------------------------------------------


def _watchlist_id(request: Request) -> int:
    raw = request.path_params["watchlist_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise _no_watchlist(raw)
    return int(raw)


def _no_watchlist(raw: object) -> ApiError:
    return ApiError(404, "WATCHLIST_NOT_FOUND", f"no watchlist {str(raw)[:40]} of yours")


async def _watchlist_body(service: QueryService, request: Request) -> watchlists.WatchlistRequest:
    """The body, its symbols known instruments, each once."""
    body = decode_body(watchlists.WatchlistRequest, await service.body(request), "watchlist")
    seen: set[str] = set()
    for i, symbol in enumerate(body.symbols):
        if symbol not in service.market:
            raise ApiError(
                422,
                "UNKNOWN_SYMBOL",
                f"no instrument {symbol!r}",
                [FieldError(f"symbols[{i}]", "not a known instrument")],
            )
        if symbol in seen:
            raise _invalid(f"symbols[{i}]", f"{symbol} is in the list already")
        seen.add(symbol)
    return body


def _watchlist_errors(e: Exception) -> ApiError:
    if isinstance(e, watchlists.NameTaken):
        return ApiError(409, "WATCHLIST_NAME_TAKEN", "you have a watchlist of that name already")
    return ApiError(
        409, "TOO_MANY_WATCHLISTS", f"a user may have at most {watchlists.MAX_LISTS} watchlists"
    )


@guarded
async def list_watchlists(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    query_params(request)
    async with service.writes.connection() as conn:
        found = await watchlists.list_watchlists(conn, user, service.day_starts())
    return _json(encode_json(watchlists.Watchlists(found)))


@guarded
async def create_watchlist(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    query_params(request)
    body = await _watchlist_body(service, request)
    async with service.writes.connection() as conn:
        try:
            async with conn.transaction():
                new = await watchlists.create_watchlist(conn, user, body)
        except (watchlists.NameTaken, watchlists.TooManyLists) as e:
            raise _watchlist_errors(e) from None
        found = await watchlists.get_watchlist(conn, user, new, service.day_starts())
    return Response(encode_json(found), 201, media_type="application/json")


@guarded
async def get_watchlist(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    watchlist_id = _watchlist_id(request)
    query_params(request)
    async with service.writes.connection() as conn:
        found = await watchlists.get_watchlist(conn, user, watchlist_id, service.day_starts())
    if found is None:
        raise _no_watchlist(watchlist_id)
    return _json(encode_json(found))


@guarded
async def replace_watchlist(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    watchlist_id = _watchlist_id(request)
    query_params(request)
    body = await _watchlist_body(service, request)
    async with service.writes.connection() as conn:
        try:
            async with conn.transaction():
                if not await watchlists.replace_watchlist(conn, user, watchlist_id, body):
                    raise _no_watchlist(watchlist_id)
        except watchlists.NameTaken as e:
            raise _watchlist_errors(e) from None
        found = await watchlists.get_watchlist(conn, user, watchlist_id, service.day_starts())
    return _json(encode_json(found))


@guarded
async def delete_watchlist(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    watchlist_id = _watchlist_id(request)
    query_params(request)
    async with service.writes.connection() as conn:
        if not await watchlists.delete_watchlist(conn, user, watchlist_id):
            raise _no_watchlist(watchlist_id)
    return Response(status_code=204)


@guarded
async def list_instruments(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    query_params(request)
    symbols = list(service.market)
    phase_of = await service.read(instruments.phases, symbols)
    listed = [service.instruments.answer(symbol, phase_of) for symbol in symbols]
    return _json(encode_json(answers.InstrumentList(listed)))


@guarded
async def get_instrument(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    symbol = service.symbol(request)
    query_params(request)
    phase_of = await service.read(instruments.phases, [symbol])
    return _json(encode_json(service.instruments.answer(symbol, phase_of)))


@guarded
async def market_data(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    symbol = service.symbol(request)
    query_params(request)
    body = await service.book_copy(symbol)
    if body is None:
        body = encode_message(await service.read(queries.book, service.market[symbol]))
    return _json(body)


@guarded
async def candles(request: Request) -> Response:
    service = _service(request)
    await service.user(request)
    symbol = service.symbol(request)
    query = _convert(query_params(request, queries.CandlesQuery), queries.CandlesQuery)
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


_WATCHLIST_ERRORS = {
    409: "WATCHLIST_NAME_TAKEN, TOO_MANY_WATCHLISTS",
    422: "UNKNOWN_SYMBOL (a symbol of the body)",
}


def _read(
    method: str,
    path: str,
    endpoint: Callable[[Request], Awaitable[Response]],
    summary: str,
    errors: Mapping[int, str] | None = None,
    **fields: Any,
) -> DocumentedRoute:
    """A route of this service: every one refuses a query parameter it does not know
    (422 INVALID_REQUEST)."""
    known = {422: "INVALID_REQUEST (an unknown or repeated query parameter)"}
    return documented(method, path, endpoint, summary, errors=known | dict(errors or {}), **fields)


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    from brokercore.services.operator_api import OPERATOR_ROUTES  # it uses this module

    settings = settings or ServiceSettings.from_env()
    return service_app(
        "query",
        lambda: QueryService(settings),
        [
            _read(
                "GET",
                "/api/v1/orders",
                list_orders,
                "The caller's orders, newest first, a page at a time",
                tag="orders",
                query=queries.OrdersQuery,
                response=answers.OrderPage,
            ),
            _read(
                "GET",
                "/api/v1/orders/{order_id}",
                get_order,
                "One order with its fills",
                tag="orders",
                response=answers.OrderWithFills,
                errors={404: "ORDER_NOT_FOUND"},
            ),
            _read(
                "GET",
                "/api/v1/orders/{order_id}/history",
                order_history,
                "An order's events, oldest first; with ?at= its state at that instant",
                tag="orders",
                query=queries.HistoryQuery,
                response=(answers.OrderHistory, answers.OrderState),
                errors={404: "ORDER_NOT_FOUND, ORDER_NOT_YET_PLACED"},
            ),
            _read(
                "GET",
                "/api/v1/portfolio",
                portfolio,
                "Cash, positions and P&L",
                tag="portfolio",
                response=answers.Portfolio,
                errors={403: "NO_ACCOUNT"},
            ),
            _read(
                "GET",
                "/api/v1/trades",
                trades,
                "The caller's trades, newest first, a page at a time",
                tag="portfolio",
                query=queries.TradesQuery,
                response=answers.TradePage,
            ),
            _read(
                "GET",
                "/api/v1/statement",
                account_statement,
                "A statement of a range of days: JSON, or CSV (?format=csv, Accept: text/csv)",
                tag="portfolio",
                query=statement.StatementQuery,
                response=answers.Statement,
                alternatives={"text/csv": {"type": "string"}},
                errors={403: "NO_ACCOUNT", 422: "STATEMENT_TOO_LARGE"},
            ),
            _read(
                "GET",
                "/api/v1/watchlists",
                list_watchlists,
                "The caller's watchlists, with prices",
                tag="watchlists",
                response=watchlists.Watchlists,
            ),
            _read(
                "POST",
                "/api/v1/watchlists",
                create_watchlist,
                "Create a watchlist",
                tag="watchlists",
                body=watchlists.WatchlistRequest,
                response=watchlists.Watchlist,
                status=201,
                links={
                    "getWatchlistsWatchlistId": "/id",
                    "putWatchlistsWatchlistId": "/id",
                    "deleteWatchlistsWatchlistId": "/id",
                },
                errors=_WATCHLIST_ERRORS,
            ),
            _read(
                "GET",
                "/api/v1/watchlists/{watchlist_id}",
                get_watchlist,
                "One watchlist, with prices",
                tag="watchlists",
                response=watchlists.Watchlist,
                errors={404: "WATCHLIST_NOT_FOUND"},
            ),
            _read(
                "PUT",
                "/api/v1/watchlists/{watchlist_id}",
                replace_watchlist,
                "Replace a watchlist's name and symbols",
                tag="watchlists",
                body=watchlists.WatchlistRequest,
                response=watchlists.Watchlist,
                errors={404: "WATCHLIST_NOT_FOUND"} | _WATCHLIST_ERRORS,
            ),
            _read(
                "DELETE",
                "/api/v1/watchlists/{watchlist_id}",
                delete_watchlist,
                "Delete a watchlist",
                tag="watchlists",
                status=204,
                errors={404: "WATCHLIST_NOT_FOUND"},
            ),
            _read(
                "GET",
                "/api/v1/instruments",
                list_instruments,
                "Every instrument: its terms, band, calendar and phase",
                tag="market data",
                response=answers.InstrumentList,
            ),
            _read(
                "GET",
                "/api/v1/instruments/{symbol}",
                get_instrument,
                "One instrument",
                tag="market data",
                response=answers.Instrument,
                errors={404: "UNKNOWN_SYMBOL"},
            ),
            _read(
                "GET",
                "/api/v1/marketdata/{symbol}",
                market_data,
                "A symbol's depth, best bid and ask, last price and phase",
                tag="market data",
                response=BookUpdate,
                errors={404: "UNKNOWN_SYMBOL"},
            ),
            _read(
                "GET",
                "/api/v1/marketdata/{symbol}/candles",
                candles,
                "A symbol's candles of one interval over a window",
                tag="market data",
                query=queries.CandlesQuery,
                response=answers.Candles,
                errors={404: "UNKNOWN_SYMBOL"},
            ),
            *documents_routes(),
            *OPERATOR_ROUTES,
        ],
    )
