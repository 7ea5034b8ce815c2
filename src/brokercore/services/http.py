"""What the services' HTTP apps share, so that every answer of every app has one shape:
JSON errors (a stable code, a human message, no stack trace) for refusals, unknown
routes and wrong methods alike; bearer-token authentication and a per-user rate limit;
JSON bodies of bounded size; every string of a client (path, query, body, token subject)
checked for characters no database or log should see (brokercore.edge.text); and 503 with
Retry-After while Postgres, Redis or Kafka is away, never 500."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal, Protocol, TypeVar, get_args, get_origin

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Lifespan

from brokercore.config import ServiceSettings
from brokercore.edge.auth import AuthError, JwtConfig, Principal, TokenVerifier, bearer_token
from brokercore.edge.jwks import KeysUnavailable
from brokercore.edge.ratelimit import TokenBucket
from brokercore.edge.revocation import RevokedSessions
from brokercore.edge.text import bad_character
from brokercore.entry.requests import ErrorBody, ErrorDetail, FieldError, encode_json
from brokercore.faults.backoff import transient
from brokercore.read.replica import ReadRouter
from brokercore.services.redis_batch import CoalescingRedis

__all__ = [
    "LimitedApi",
    "api_app",
    "service_app",
    "database_pool",
    "check_idle_connection",
    "read_router",
    "ApiError",
    "error_response",
    "guarded",
    "json_response",
    "path_id",
    "authenticate",
    "token_verifier",
    "require_operator",
    "read_body",
    "field_error",
    "decode_body",
    "query_params",
    "convert_query",
    "decode_query",
    "check_text",
]

log = logging.getLogger("brokercore.http")

T = TypeVar("T")
Q = TypeVar("Q", bound=msgspec.Struct)

MAX_TARGET = 2048
"""Characters a request's path and query string may have together (414 beyond)."""

RETRY_AFTER = "1"
"""Seconds a client waits before trying again while a dependency is away."""

REDIS_TIMEOUT = 1.0
"""Seconds a Redis connect or command of an API may take before it counts as away."""


class _Throttled:
    """A warning logged at most once every ``every`` seconds, with how many were held
    back meanwhile: an outage under load is a few lines, not one per request."""

    def __init__(self, every: float = 5.0):
        self.every, self._next, self._held = every, 0.0, 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        log.warning(message + " (%d more like it held back)", *args, self._held)
        self._next, self._held = now + self.every, 0


_unavailable = _Throttled()


def database_pool(settings: ServiceSettings, max_size: int, **options: Any) -> AsyncConnectionPool:
    """A Postgres pool that checks a connection before handing it out
    (``check_idle_connection``), so that after a restart of Postgres no request gets a
    dead one, and waits at most ``settings.db_pool_timeout`` for one (then PoolTimeout:
    503)."""
    return AsyncConnectionPool(
        settings.database_url,
        min_size=min(2, max_size),
        max_size=max_size,
        open=False,
        timeout=settings.db_pool_timeout,
        check=check_idle_connection,
        **options,
    )


async def check_idle_connection(conn: AsyncConnection) -> None:
    """Raises if an idle connection is dead, with a round trip (psycopg_pool's
    ``check_connection``) only when the server has said something on it since its last
    use: a server that restarts, or a backend that is killed or times out, says goodbye
    or closes the socket, which makes it readable; a silent socket is one the server
    still holds. Listening costs a system call, not a round trip per transaction."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    socket = select.poll()
    socket.register(conn.fileno(), select.POLLIN)
    if socket.poll(0):
        await AsyncConnectionPool.check_connection(conn)


def read_router(
    settings: ServiceSettings, primary: AsyncConnectionPool, max_size: int, **options: Any
) -> ReadRouter:
    """Reads over ``primary`` and, when ``settings.replica_url`` names one, the read
    replica (a pool like ``database_pool``'s, with the same ``options``)."""
    replica = (
        database_pool(
            dataclasses.replace(settings, database_url=settings.replica_url), max_size, **options
        )
        if settings.replica_url
        else None
    )
    return ReadRouter(primary, replica, max_lag=settings.replica_max_lag)


class LimitedApi:
    """What an API that users call holds: a Postgres pool (``database_pool``), a Redis
    client with short timeouts that waits for a free connection instead of failing when
    all are busy and sends concurrent requests' commands together (``CoalescingRedis``),
    the token verifier, and a per-user rate limit of ``burst`` requests at
    once and ``per_second`` after that, under its own Redis key prefix."""

    def __init__(
        self,
        settings: ServiceSettings,
        limit_prefix: str,
        burst: int,
        per_second: float,
        *,
        max_connections: int,
        max_redis: int,
        configure: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        redis_options: dict[str, Any] | None = None,
    ):
        self.settings = settings
        self.pool = database_pool(settings, max_connections, configure=configure)
        self.redis = CoalescingRedis(
            connection_pool=BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=max_redis,
                timeout=5,
                **(
                    {"socket_timeout": REDIS_TIMEOUT, "socket_connect_timeout": REDIS_TIMEOUT}
                    | (redis_options or {})
                ),
            )
        )
        self.verifier = token_verifier(settings, self.redis)
        self.limiter = TokenBucket(
            self.redis, burst, per_second, prefix=settings.redis_prefix + limit_prefix
        )

    async def open(self) -> None:
        await self.pool.open(wait=True)
        await self.verifier.open()

    async def close(self) -> None:
        await self.verifier.close()
        await self.pool.close()
        await self.redis.aclose()

    async def authorize(self, request: Request) -> Principal:
        """The caller, within their rate limit: 401, or 429 with Retry-After."""
        principal = await authenticate(self.verifier, request)
        await self.take(principal.user_id)
        return principal

    async def take(self, key: str) -> None:
        """One request from ``key``'s budget (a user's, or a client address's): 429 with
        Retry-After when it is spent."""
        wait = await self.limiter.take(key)
        if wait > 0:
            raise ApiError(
                429,
                "RATE_LIMITED",
                "too many requests; slow down",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def body(self, request: Request) -> bytes:
        """The JSON body (415 if it is declared as anything else), bounded."""
        require_json(request)
        return await read_body(request, self.settings.max_body_bytes)


def api_app(routes: Sequence[BaseRoute], lifespan: Lifespan[Starlette]) -> Starlette:
    """A Starlette app whose every answer is in the JSON error shape, unknown routes (404)
    and wrong methods (405, with Allow) included, and which never redirects to the
    path with or without a final slash (that path is simply not found)."""
    handlers: dict[Any, Callable[[Request, Any], Response]] = {
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    app = Starlette(routes=list(routes), lifespan=lifespan, exception_handlers=handlers)
    app.router.redirect_slashes = False
    return app


class Service(Protocol):
    """What an HTTP service's app holds while it runs."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


def service_app(name: str, make: Callable[[], Service], routes: Sequence[BaseRoute]) -> Starlette:
    """An ``api_app`` whose lifespan makes the service object (``make()``), awaits its
    ``open()``, keeps it as ``app.state.<name>`` and awaits its ``close()`` at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service = make()
        await service.open()
        setattr(app.state, name, service)
        try:
            yield
        finally:
            await service.close()

    return api_app(routes, lifespan)


def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no route, a method the route does not take). A 405's
    Allow names the methods of every route of the path (Starlette's names only the first
    route's, and a path may have one route a method: POST and DELETE /api/v1/orders)."""
    status, headers = HTTPStatus(exc.status_code), exc.headers
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = {
            method
            for route in request.app.routes
            if isinstance(route, Route) and route.matches(request.scope)[0] == Match.PARTIAL
            for method in route.methods or ()
        }
        headers = {"Allow": ", ".join(sorted(allowed))}
    return error_response(status.value, status.name, status.description, headers=headers)


def _unexpected(request: Request, exc: Exception) -> Response:
    """An error outside the handlers (they answer their own): 500, without a trace."""
    return error_response(500, "INTERNAL_ERROR", "something went wrong on our side")


class ApiError(Exception):
    """A refusal, answered as a JSON error by ``guarded``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.headers = list(fields), headers


def error_response(
    status: int,
    code: str,
    message: str,
    fields: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = ErrorBody(ErrorDetail(code, message, list(fields)))
    return Response(encode_json(body), status, headers, media_type="application/json")


def json_response(body: object, status: int = 200) -> Response:
    return Response(encode_json(body), status, media_type="application/json")


def path_id(request: Request, name: str, code: str, what: str) -> int:
    """The numeric id in the path parameter ``name``; one that cannot be an id (not
    ASCII digits, or past 18 of them) names nothing: 404 ``code``, "no ``what`` ..."."""
    raw: str = request.path_params[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, code, f"no {what} {raw[:40]}")
    return int(raw)


def guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Every failure becomes a JSON error answer here, in the handler, after the
    request's path and query are checked (``check_target``): a dependency that is away
    (Postgres, Redis, Kafka) 503 with Retry-After, logged a few lines per outage; a
    client gone before its body was read 499, logged at debug (nobody reads the answer);
    an unexpected error logged and answered 500 without a trace, and the connection
    stays usable (Starlette's catch-all handler would re-raise it, and the server drop
    the connection)."""

    async def handle(request: Request) -> Response:
        try:
            check_target(request)
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message, e.fields, e.headers)
        except ClientDisconnect:
            log.debug(
                "%s %s: the client went away before its body was read",
                request.method,
                request.url.path,
            )
            return error_response(
                499, "CLIENT_DISCONNECTED", "the client went away before its body was read"
            )
        except Exception as e:
            if transient(e):
                _unavailable.warning(
                    "%s %s answered 503: %s: %s",
                    request.method,
                    request.url.path,
                    type(e).__name__,
                    str(e).strip().replace("\n", " "),
                )
                return error_response(
                    503,
                    "SERVICE_UNAVAILABLE",
                    "a service this one needs is unavailable; try again",
                    headers={"Retry-After": RETRY_AFTER},
                )
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, "INTERNAL_ERROR", "something went wrong on our side")

    return handle


def check_text(text: str, where: str) -> None:
    """400 INVALID_CHARACTERS naming ``where`` if ``text`` holds a character that no
    database or log should see (brokercore.edge.text)."""
    found = bad_character(text)
    if found is not None:
        raise ApiError(
            400,
            "INVALID_CHARACTERS",
            "the request holds a refused character",
            [
                FieldError(
                    where, f"holds {found}: control characters and lone surrogates are refused"
                )
            ],
        )


def check_target(request: Request) -> None:
    """The path (with its path parameters) and every query parameter's name and value
    hold no refused character, and together they are not too long (414)."""
    path, query = request.scope["path"], request.scope["query_string"]
    if len(path) + len(query) > MAX_TARGET:
        raise ApiError(
            414, "URI_TOO_LONG", f"the path and query may have at most {MAX_TARGET} characters"
        )
    check_text(path, "path")
    for name, value in request.query_params.multi_items():
        check_text(name, "query")
        check_text(value, name)


def require_json(request: Request) -> None:
    """The body is declared JSON (``application/json``, in UTF-8 if a charset is
    named): 415 otherwise, so a form or text is never taken for JSON."""
    media, *parameters = request.headers.get("content-type", "").lower().split(";")
    charsets = {
        value.strip().strip('"')
        for name, _, value in (p.partition("=") for p in parameters)
        if name.strip() == "charset"
    }
    if media.strip() != "application/json" or not charsets <= {"utf-8"}:
        raise ApiError(
            415, "UNSUPPORTED_MEDIA_TYPE", "the body must be JSON: Content-Type: application/json"
        )


def token_verifier(settings: ServiceSettings, redis: Redis) -> TokenVerifier:
    """The token verifier of a service: the configured keys (BROKERCORE_JWKS_URL's
    included) and the revoked sessions read over ``redis`` (the service's own client);
    the service opens and closes it with itself."""
    revoked = RevokedSessions(redis, settings.redis_prefix)
    return TokenVerifier(JwtConfig.from_settings(settings), revoked=revoked)


async def authenticate(verifier: TokenVerifier, request: Request) -> Principal:
    """The principal of the request's bearer token, or 401 with WWW-Authenticate (503
    with Retry-After while the keys to check it with cannot be fetched)."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(
            401,
            "UNAUTHENTICATED",
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return await verifier.authenticate(token)
    except AuthError as e:
        raise ApiError(
            401, e.code, e.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None
    except KeysUnavailable as e:
        _unavailable.warning("%s %s answered 503: %s", request.method, request.url.path, e)
        raise ApiError(
            503,
            "SERVICE_UNAVAILABLE",
            "the token's signing keys cannot be fetched now; try again",
            headers={"Retry-After": RETRY_AFTER},
        ) from None


def require_operator(principal: Principal) -> None:
    """403 FORBIDDEN unless the caller holds the operator role (the operator endpoints
    call it first)."""
    if not principal.is_operator:
        raise ApiError(403, "FORBIDDEN", "this needs the operator role")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 otherwise, before reading more)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "BODY_TOO_LARGE", f"the body may be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
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


def decode_body(kind: type[T], body: bytes, what: str) -> T:
    """The body as ``kind``: 400 if not JSON (or nested deeper than the decoder goes),
    400 if a string or key in it holds a refused character (checked before the types,
    so no message repeats one), 422 naming the field if it is not a valid ``kind``."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.ValidationError as e:  # a number beyond 64 bits or a double
        raise ApiError(422, "INVALID_REQUEST", f"the {what} is invalid", [field_error(e)]) from None
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deeply
        raise ApiError(400, "MALFORMED_JSON", "the body is not valid JSON") from None
    _check_strings(value)
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        raise ApiError(422, "INVALID_REQUEST", f"the {what} is invalid", [field_error(e)]) from None


def query_params(request: Request, kind: type[msgspec.Struct] | None = None) -> dict[str, str]:
    """The query string as a dict of ``kind``'s parameters (none without a kind): 422
    INVALID_REQUEST naming a parameter that is unknown or given more than once."""
    known = {f.encode_name for f in msgspec.structs.fields(kind)} if kind else set()
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise _invalid_query(
                name[:40],
                f"unknown query parameter (expected one of {', '.join(sorted(known))})"
                if known
                else "this endpoint takes no query parameters",
            )
        if name in params:
            raise _invalid_query(name, "given more than once")
        params[name] = value
    return params


def convert_query(params: Mapping[str, object], kind: type[Q]) -> Q:
    """``params`` as ``kind``: 422 INVALID_REQUEST naming the parameter that is invalid (a
    word not among a field's allowed ones answered with them)."""
    try:
        return msgspec.convert(params, kind, strict=False)
    except msgspec.ValidationError as e:
        error = field_error(e, "query")
        message = error.message
        fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
        field = fields.get(error.field.partition("[")[0])
        if field is not None and message.startswith("Invalid enum value"):
            message += f" (expected one of {', '.join(_words(field.type))})"
        raise _invalid_query(error.field, message) from None


def decode_query(request: Request, kind: type[Q]) -> Q:
    """The query string as ``kind``, a Struct whose fields are its parameters."""
    return convert_query(query_params(request, kind), kind)


def _invalid_query(name: str, message: str) -> ApiError:
    return ApiError(422, "INVALID_REQUEST", "the query is invalid", [FieldError(name, message)])


def _words(annotation: object) -> list[str]:
    """The words a Literal field (optional or not) allows."""
    if get_origin(annotation) is Literal:
        return [str(word) for word in get_args(annotation)]
    return [word for part in get_args(annotation) for word in _words(part)]


def _check_strings(value: object) -> None:
    """``check_text`` on every string and key of a decoded JSON value (without
    recursion: a body may nest deeper than Python's stack)."""
    pending: list[tuple[object, str]] = [(value, "")]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            check_text(item, where or "body")
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, where or "body")
                pending.append((child, f"{where}.{key}" if where else key))
        elif isinstance(item, list):
            pending.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
