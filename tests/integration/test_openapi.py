"""The API's documents (brokercore.services.openapi, .asyncapi) and the API held to them.

The OpenAPI document is valid OpenAPI 3.1 and names every HTTP route of every service's
app; the AsyncAPI document names every WebSocket route and resolves; the edge serves
both and routes every documented path to a service. Then schemathesis fuzzes every
operation through the edge of a private stack, logged in as alice: no 5xx, each answer's
status, content type, headers and body as documented (an error always in the JSON error
shape); each creation's links are followed (place, read, modify, cancel an order; the
same for a GTT, a bracket, a watchlist, an alert, a postback).
BROKERCORE_FUZZ_EXAMPLES sizes the fuzz (`make fuzz-api` runs far more than CI's).

Not here: schemathesis's random state machine along the links. Against a live server a
sequence's draws depend on what earlier calls made, which hypothesis reports as
FlakyStrategyDefinition (schemathesis/schemathesis#4132): often in long runs, now and then
in short ones."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks
from starlette.routing import Route, WebSocketRoute

from brokercore.demo import OPERATOR, login_of
from brokercore.services.asyncapi import asyncapi_document
from brokercore.services.openapi import openapi_document, service_routes
from stack_support import PrivateStack
from waiting import wait_until

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("BROKERCORE_FUZZ_EXAMPLES", "8"))

EVERY_ROUTE = [route for routes in service_routes().values() for route in routes]


def refs(document: Any) -> Iterator[str]:
    """Every $ref in a JSON document."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(document, list):
        for item in document:
            yield from refs(item)


def resolves(document: dict[str, Any], ref: str) -> bool:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_openapi_document_is_valid_openapi_3_1_and_names_every_route():
    document = openapi_document(EVERY_ROUTE)
    validate(document)  # raises naming what is wrong
    assert document["openapi"] == "3.1.0"
    described = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    routes = {
        (route.path, method)
        for route in EVERY_ROUTE
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"  # Starlette adds HEAD to a GET route
    }
    assert routes == described, (routes - described, described - routes)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operation ids must be unique"
    for item in document["paths"].values():
        for op in item.values():
            errors = {s for s in op["responses"] if s >= "400"}
            assert errors >= {"400", "429", "503"}, op["operationId"]
            for status in errors:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, op["operationId"]
            if op.get("security") != []:  # the bearer token's refusals
                assert "UNAUTHENTICATED" in op["responses"]["401"]["description"], op


def test_the_asyncapi_document_names_every_socket_and_resolves():
    document = asyncapi_document(EVERY_ROUTE)
    sockets = {route.path for route in EVERY_ROUTE if isinstance(route, WebSocketRoute)}
    assert sockets == {channel["address"] for channel in document["channels"].values()}
    assert {"Subscribe", "Resume", "Welcome", "OrderUpdate", "Resumed", "Error"} <= set(
        document["components"]["messages"]
    )
    found = list(refs(document))
    assert found and all(resolves(document, ref) for ref in found), [
        ref for ref in found if not resolves(document, ref)
    ]


def test_an_undocumented_route_is_refused():
    async def nothing(request):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="/api/v1/nowhere is not documented"):
        openapi_document([Route("/api/v1/nowhere", nothing, methods=["GET"])])


# --- against a running stack ---------------------------------------------------------------

UNLIMITED = {  # the per-user rate limits out of the way: the fuzz's calls all reach the API
    "BROKERCORE_RATE_LIMIT_BURST": "1000000",
    "BROKERCORE_RATE_LIMIT_PER_SECOND": "1000000",
    "BROKERCORE_READ_RATE_LIMIT_BURST": "1000000",
    "BROKERCORE_READ_RATE_LIMIT_PER_SECOND": "1000000",
}


@pytest.fixture(scope="module")
def api_stack() -> Iterator[PrivateStack]:
    stack = PrivateStack()
    stack.env |= UNLIMITED
    try:
        stack.up()
        yield stack
    finally:
        stack.close()


def bearer(stack: PrivateStack, name: str) -> dict[str, str]:
    """A new session's bearer header for the demo user ``name``, from a real login. Sent
    from 127.0.0.2: the fuzz's failed logins (from 127.0.0.1) lock their address out
    (LOGIN_LOCKED after 20), and a logout needs a session of its own each time."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=30) as client:
        answer = client.post(f"{stack.edge}/api/v1/auth/login", json=login_of(name))
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['accessToken']}"}


@pytest.fixture(scope="module")
def logins(api_stack: PrivateStack) -> Callable[[Case], dict[str, str]]:
    """The headers a case is sent with: alice's session; ops's (an operator) for the
    operator routes; a session of its own for a logout, which ends the one it is sent
    with."""
    alice, ops = bearer(api_stack, "alice"), bearer(api_stack, OPERATOR)

    def headers(case: Case) -> dict[str, str]:
        if case.path == "/api/v1/auth/logout":
            return bearer(api_stack, "alice")
        return ops if case.path.startswith("/api/v1/operator/") else alice

    return headers


def test_the_edge_serves_both_documents_and_routes_every_documented_path(api_stack):
    with httpx.Client(base_url=api_stack.edge, timeout=30) as client:
        served = client.get("/api/v1/openapi.json")
        assert served.status_code == 200, served.text
        assert served.headers["content-type"] == "application/json"
        assert served.json() == openapi_document(EVERY_ROUTE)
        channels = client.get("/api/v1/asyncapi.json")
        assert channels.status_code == 200, channels.text
        assert channels.json()["asyncapi"] == "3.0.0"
        for path, item in served.json()["paths"].items():
            for method in item:
                # Without a token or a body: refused by the service, never the edge's 404.
                answer = client.request(method, re.sub(r"\{[^}]+\}", "1", path))
                where = f"{method.upper()} {path}: {answer.status_code} {answer.text[:200]}"
                assert answer.headers.get("content-type") == "application/json", where
                assert answer.json() != {
                    "error": {"code": "NOT_FOUND", "message": "no such path"}
                }, where


# The document as built here: the edge serves the same (test above), so the operations
# are known when the tests are collected, before the stack is up.
schema = schemathesis.openapi.from_dict(openapi_document(EVERY_ROUTE))

SYMBOLS = ("RELIANCE", "TCS", "INFY", "ITC")  # the stack's instruments

# msgspec's Decimal is a string of format "decimal": rupees, often near the stack's prices.
schemathesis.openapi.format(
    "decimal",
    st.one_of(
        st.decimals(min_value=0, max_value=30_000, places=2).map(str),
        st.sampled_from(["2200.00", "14250.00", "15000.00", "15000.05", "20100.00"]),
    ),
)


def plausible(value: Any, symbol: str, key: str) -> Any:
    """A body (or a list of them) a client could mean: its symbol (or symbols) one the
    stack lists, its idempotency key printable, a whole number without ".0" (JSON
    Schema's integers include 5.0; msgspec's, as Python's, do not: 422)."""
    if isinstance(value, list):
        return [plausible(item, symbol, key) for item in value]
    if not isinstance(value, dict):
        return value
    changed = {
        name: int(item) if isinstance(item, float) and item.is_integer() else item
        for name, item in value.items()
    }
    if isinstance(changed.get("symbol"), str):
        changed["symbol"] = symbol
    if isinstance(changed.get("symbols"), list):
        changed["symbols"] = [symbol]
    if isinstance(changed.get("idempotencyKey"), str):
        changed["idempotencyKey"] = key
    return changed


@schema.hook
def flatmap_body(context, body):
    """Most bodies are made plausible (``plausible``), so that the checks past the
    symbol's (price band, tick, funds, holdings, ...) and the creations links follow run;
    the rest stay as generated."""
    keys = st.uuids().map(str)
    return st.one_of(
        st.builds(plausible, st.just(body), st.sampled_from(SYMBOLS), keys),
        st.just(body),
    )


@schema.hook
def flatmap_path_parameters(context, parameters):
    """Most {symbol}s in paths are listed instruments, so their reads answer 200."""
    if not parameters or "symbol" not in parameters:
        return st.just(parameters)
    return st.sampled_from([parameters, *(parameters | {"symbol": s} for s in SYMBOLS)])


CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@schemathesis.check
def errors_have_the_json_shape(ctx, response, case) -> None:
    """Every 4xx and 5xx is {"error": {"code", "message", ...}}, documented or not."""
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, dict), response.text
        assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)


def new_key() -> str:
    return uuid.uuid4().hex


# A valid body for each creation, and for each linked operation that takes one.
CREATIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "postOrders": lambda: {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 1,
        "price": "14000.00",
        "idempotencyKey": new_key(),
    },
    "postGtt": lambda: {
        "symbol": "TCS",
        "kind": "SINGLE",
        "legs": [
            {
                "condition": "<=",
                "triggerPrice": "19000.00",
                "order": {"side": "BUY", "type": "LIMIT", "quantity": 1, "price": "19000.00"},
            }
        ],
        "idempotencyKey": new_key(),
    },
    "postBrackets": lambda: {
        "symbol": "RELIANCE",
        "side": "BUY",
        "quantity": 1,
        "price": "14000.00",
        "target": "14500.00",
        "stopLoss": "13500.00",
        "idempotencyKey": new_key(),
    },
    "postWatchlists": lambda: {"name": f"fuzz {new_key()[:8]}", "symbols": ["TCS", "ITC"]},
    "postAlerts": lambda: {"symbol": "INFY", "price": "1500.00"},
    "postPostbacks": lambda: {"url": f"https://hooks.example.com/{new_key()}"},
}
CHANGES: dict[str, Callable[[], dict[str, Any]]] = {
    "patchOrdersOrderId": lambda: {"idempotencyKey": new_key(), "price": "14000.05"},
    "patchGttGttId": lambda: {"legs": CREATIONS["postGtt"]()["legs"]},
    "putWatchlistsWatchlistId": lambda: {"name": f"fuzz {new_key()[:8]}", "symbols": ["INFY"]},
}


def test_each_creation_then_its_links_answer_as_documented(api_stack, logins):
    """Place an order, then read it, its history, modify and cancel it through the links
    of the document; the same for a GTT, a bracket, a watchlist, an alert, a postback."""
    operations = {
        op["operationId"]: op
        for item in schema.raw_schema["paths"].values()
        for op in item.values()
    }

    def call(operation_id: str, body: Any = None, **path: str) -> Any:
        operation = schema.find_operation_by_id(operation_id)
        if body is None:
            case = operation.Case(path_parameters=path)
        else:
            case = operation.Case(path_parameters=path, body=body, media_type="application/json")
        response = case.call(base_url=api_stack.edge, headers=logins(case))
        case.validate_response(response, checks=[*CHECKS, errors_have_the_json_shape])
        return response

    for creation, body in CREATIONS.items():
        made = call(creation, body())
        assert made.status_code in (201, 202), (creation, made.text)
        links = operations[creation]["responses"][str(made.status_code)]["links"]
        if creation == "postOrders":  # a modify waits for the engine (409 ORDER_PENDING)
            order = str(made.json()["orderId"])
            wait_until(
                lambda order=order: (
                    call("getOrdersOrderId", order_id=order).json()["status"] == "OPEN"
                ),
                "the order OPEN",
            )
        for target, link in links.items():
            ((name, expression),) = link["parameters"].items()
            value = made.json()[expression.removeprefix("$response.body#/")]
            call(target, CHANGES[target]() if target in CHANGES else None, **{name: str(value)})


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented(case, api_stack, logins):
    """(After the creations above: the fuzz fills alice's lists up to their limits.)"""
    if case.headers:  # a generated Content-Length with no body: the edge waits for it
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "content-length"}
    case.call_and_validate(
        base_url=api_stack.edge, headers=logins(case), checks=[*CHECKS, errors_have_the_json_shape]
    )
