"""The REST API described: an OpenAPI 3.1 document generated from the msgspec types that
define the bodies, never written by hand (docs/api.md).

Each HTTP route is declared with ``documented(...)``, which makes the Starlette route
and keeps its ``Operation`` (summary, body, answer, query, the errors it can answer)
on it, so a route and its description are one line of the service's module. The
document is built by walking the routes of every service's app (``service_routes``):
a route declared without an ``Operation`` is an error, not a hole in the document.
The query service serves it at ``GET /api/v1/openapi.json`` (built once per process).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from brokercore import __version__
from brokercore.entry.requests import ErrorBody
from brokercore.services import SERVICES
from brokercore.services.asyncapi import asyncapi_document
from brokercore.services.http import guarded

__all__ = [
    "Operation",
    "DocumentedRoute",
    "documented",
    "error_codes",
    "refusal_codes",
    "service_routes",
    "openapi_document",
    "document_bytes",
    "documents_routes",
    "Document",
]

Document = dict[str, Any]

SCHEMAS = "#/components/schemas/{name}"

_STATUS_TEXT = {
    400: "MALFORMED_JSON, INVALID_CHARACTERS",
    401: "UNAUTHENTICATED, INVALID_TOKEN, TOKEN_EXPIRED, TOKEN_REVOKED",
    413: "BODY_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_REQUEST",
    429: "RATE_LIMITED (wait Retry-After seconds)",
    503: "SERVICE_UNAVAILABLE: a dependency is away (retry after Retry-After seconds)",
}
"""The codes behind each status every service can answer (docs/errors.md)."""

_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the document says of one route: ``summary`` a line, ``tag`` its group (a
    reference page's section); ``response``: the success body's type
    (None: no body, as a 204; a tuple: one of its Structs); ``body``: the request
    body's; ``query``: a Struct whose fields are the query parameters; ``errors``: the
    statuses this route answers besides the ones every route can (its own codes as
    their description); ``also``: other success statuses with the same body;
    ``public``: no bearer token; ``idempotency_key``: takes the Idempotency-Key header;
    ``headers``: other required headers (name: description); ``alternatives``: other
    media types of the success answer (media type: JSON schema); ``links``: the
    operations (by id) whose one path parameter the answer's field (a JSON pointer)
    fills, for clients and stateful tests: place, then read, modify, cancel."""

    summary: str
    tag: str
    response: Any = None
    status: int = 200
    also: tuple[int, ...] = ()
    body: Any = None
    query: type[msgspec.Struct] | None = None
    errors: Mapping[int, str] = dataclasses.field(default_factory=dict)
    public: bool = False
    idempotency_key: bool = False
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    alternatives: Mapping[str, Document] = dataclasses.field(default_factory=dict)
    links: Mapping[str, str] = dataclasses.field(default_factory=dict)


class DocumentedRoute(Route):
    """A Starlette route of one method, carrying its ``Operation``."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], method: str, operation: Operation
    ) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method, self.operation = method, operation


def documented(
    method: str, path: str, endpoint: Callable[..., Any], summary: str, **fields: Any
) -> DocumentedRoute:
    """The route of ``method path`` to ``endpoint``, described by ``Operation(summary,
    **fields)``."""
    return DocumentedRoute(path, endpoint, method, Operation(summary, **fields))


def error_codes(pairs: Iterable[tuple[int, str]]) -> dict[int, str]:
    """``(status, code)`` pairs as an ``Operation``'s errors: each status's codes."""
    found: dict[int, list[str]] = {}
    for status, code in pairs:
        found.setdefault(status, []).append(code)
    return {status: ", ".join(codes) for status, codes in found.items()}


def refusal_codes(statuses: Mapping[Any, int], *reasons: StrEnum) -> dict[int, str]:
    """The statuses (by ``statuses``) and codes of a service's ``reasons``, as an
    ``Operation``'s errors."""
    return error_codes((statuses[reason], reason.value) for reason in reasons)


def service_routes() -> dict[str, list[BaseRoute]]:
    """The routes of every HTTP service's app (``SERVICES``), by service; the apps are
    made, not started."""
    return {
        name: list(
            importlib.import_module(f"brokercore.services.{spec.module}").create_app().routes
        )
        for name, spec in SERVICES.items()
        if spec.http
    }


def openapi_document(routes: Iterable[BaseRoute]) -> Document:
    """The OpenAPI 3.1 document of ``routes`` (their WebSocket routes left to AsyncAPI);
    ValueError names a route without an ``Operation``."""
    described: list[DocumentedRoute] = []
    for route in routes:
        if not isinstance(route, Route):
            continue  # a WebSocket route: asyncapi_document's
        if not isinstance(route, DocumentedRoute):
            raise ValueError(f"{sorted(route.methods or ())} {route.path} is not documented")
        described.append(route)
    types = [ErrorBody] + [
        kind
        for route in described
        for given in (route.operation.body, route.operation.response)
        for kind in _choices(given)
    ]
    schemas, components = msgspec.json.schema_components(types, ref_template=SCHEMAS)
    schema_of = dict(zip(map(_key, types), schemas, strict=True))
    for route in described:  # a tuple of Structs: one of them (msgspec takes no untagged union)
        for given in (route.operation.body, route.operation.response):
            if isinstance(given, tuple):
                schema_of[_key(given)] = {"anyOf": [schema_of[_key(kind)] for kind in given]}
    parameter_of = {_operation_id(r): [*r.param_convertors] for r in described}
    paths: dict[str, Document] = {}
    for route in sorted(described, key=lambda r: r.path):
        links = _links(route, parameter_of)
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of, links)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "brokercore API",
            "version": __version__,
            "description": "Every REST endpoint of brokercore, generated from the msgspec "
            'types that define the bodies. Errors are `{"error": {"code", "message", '
            '"fields"?}}` (docs/errors.md); the WebSocket frames are in /api/v1/asyncapi.json.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "the accessToken of POST /api/v1/auth/login (or .../totp)",
                }
            },
        },
    }


def _key(kind: Any) -> str:
    return repr(kind)


def _choices(given: Any) -> tuple[Any, ...]:
    """The types of an ``Operation``'s body or response: none, one, or a tuple's."""
    if given is None:
        return ()
    return given if isinstance(given, tuple) else (given,)


def _links(route: DocumentedRoute, parameter_of: Mapping[str, list[str]]) -> Document:
    """The route's links: each target operation's one path parameter from the answer."""
    links: Document = {}
    for target, field in route.operation.links.items():
        if len(parameter_of.get(target, ())) != 1:
            raise ValueError(f"{route.path}: no operation {target} with one path parameter")
        (parameter,) = parameter_of[target]
        links[target] = {
            "operationId": target,
            "parameters": {parameter: f"$response.body#{field}"},
        }
    return links


def _operation(
    route: DocumentedRoute, schema_of: Mapping[str, Document], links: Document
) -> Document:
    op = route.operation
    answer: Document = {"description": op.summary}
    if links:
        answer["links"] = links
    if op.response is not None:
        answer["content"] = {"application/json": {"schema": schema_of[_key(op.response)]}}
        answer["content"].update({media: {"schema": s} for media, s in op.alternatives.items()})
    body: Document = {
        "operationId": _operation_id(route),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(route),
        "responses": {str(status): answer for status in (op.status, *op.also)}
        | _errors(op, schema_of[_key(ErrorBody)]),
    }
    if op.public:
        body["security"] = []
    if op.body is not None:
        body["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[_key(op.body)]}},
        }
    return body


def _operation_id(route: DocumentedRoute) -> str:
    """``verb`` + the path's words in camel case: stable names for generated clients."""
    words = re.findall(r"[A-Za-z0-9]+", route.path.removeprefix("/api/v1"))
    name = "".join(word.capitalize() for word in words)
    return route.method.lower() + name


def _errors(op: Operation, error: Document) -> dict[str, Document]:
    statuses = {400, 414, 429, 503} | set(op.errors)
    if not op.public:
        statuses.add(401)
    if op.body is not None:
        statuses |= {413, 415, 422}
    if op.query is not None or op.idempotency_key:
        statuses.add(422)
    answers = {}
    for status in sorted(statuses):
        text = ", ".join(t for t in (_STATUS_TEXT.get(status), op.errors.get(status)) if t)
        answer: Document = {"description": text, "content": {"application/json": {"schema": error}}}
        if status in _HEADERS:
            answer["headers"] = _HEADERS[status]
        answers[str(status)] = answer
    return answers


def _parameters(route: DocumentedRoute) -> list[Document]:
    op = route.operation
    found: list[Document] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.param_convertors
    ]
    if op.query is not None:
        (ref,), components = msgspec.json.schema_components([op.query], ref_template=SCHEMAS)
        struct = components[ref["$ref"].rpartition("/")[2]]
        required = set(struct.get("required", ()))
        for name, field in struct["properties"].items():
            schema = _not_null(field)
            parameter = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": schema,
            }
            if schema.get("type") == "array":  # ?status=OPEN,FILLED
                parameter |= {"style": "form", "explode": False}
            found.append(parameter)
    if op.idempotency_key:
        found.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "description": "a retry with the same key gets the first answer, never a double",
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            }
        )
    found.extend(
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in op.headers.items()
    )
    return found


def _not_null(schema: Document) -> Document:
    """A query parameter's schema without its ``None`` (absent is the parameter left
    out, never a null) and the default ``None``."""
    options: list[Document] = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return options[0] | rest


@functools.cache
def document_bytes(kind: str) -> bytes:
    """The ``"openapi"`` (or ``"asyncapi"``) document of every service's routes, as JSON;
    built once per process."""
    build = {"openapi": openapi_document, "asyncapi": asyncapi_document}[kind]
    return msgspec.json.encode(build([route for app in service_routes().values() for route in app]))


def documents_routes() -> list[DocumentedRoute]:
    """The routes that serve the two documents (the query service mounts them)."""

    def served(kind: str) -> Callable[[Request], Any]:
        async def document(request: Request) -> Response:
            return Response(document_bytes(kind), media_type="application/json")

        return guarded(document)

    return [
        documented(
            "GET",
            f"/api/v1/{kind}.json",
            served(kind),
            summary,
            tag="meta",
            response=dict[str, Any],
            public=True,
        )
        for kind, summary in (
            ("openapi", "This document: every REST operation (OpenAPI 3.1)"),
            ("asyncapi", "The WebSocket gateway's frames (AsyncAPI 3.0)"),
        )
    ]
