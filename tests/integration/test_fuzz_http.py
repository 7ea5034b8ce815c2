"""Fuzzing every route of every HTTP service (OMS, query, notifications, the gateway's
HTTP side and its WebSocket handshake) on the real Postgres, Redis and Kafka: random
methods, paths, query strings, headers, content types, tokens (valid, for unknown
users, with strange subjects, garbage) and bodies (random bytes, random JSON, valid
bodies with one field replaced), with NUL, control characters, lone surrogates,
right-to-left marks and very long strings among the text.

Whatever comes in: no 5xx, every 4xx in the ``{"error": {...}}`` shape, nothing stored
for a refused request, and no traceback or error in the logs. The number of examples
follows the hypothesis profile: ``ci`` runs more than ``dev``, in about a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from brokercore.edge.auth import mint_token
from http_support import LogRecords, Services, assert_error
from oms_support import JWT

EXAMPLES = {"ci": 1000}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 150)
HANDSHAKES = {"ci": 200}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 40)

ROUTES = [
    ("oms", "POST", "/api/v1/orders"),
    ("oms", "DELETE", "/api/v1/orders"),
    ("oms", "DELETE", "/api/v1/orders/{id}"),
    ("oms", "PATCH", "/api/v1/orders/{id}"),
    ("oms", "POST", "/api/v1/margins/orders"),
    ("oms", "POST", "/api/v1/gtt"),
    ("oms", "GET", "/api/v1/gtt"),
    ("oms", "GET", "/api/v1/gtt/{id}"),
    ("oms", "PATCH", "/api/v1/gtt/{id}"),
    ("oms", "DELETE", "/api/v1/gtt/{id}"),
    ("oms", "POST", "/api/v1/brackets"),
    ("oms", "GET", "/api/v1/brackets/{id}"),
    ("oms", "DELETE", "/api/v1/brackets/{id}"),
    ("query", "GET", "/api/v1/orders"),
    ("query", "GET", "/api/v1/orders/{id}"),
    ("query", "GET", "/api/v1/orders/{id}/history"),
    ("query", "GET", "/api/v1/portfolio"),
    ("query", "GET", "/api/v1/marketdata/{symbol}"),
    ("query", "GET", "/api/v1/marketdata/{symbol}/candles"),
    ("query", "GET", "/api/v1/instruments"),
    ("query", "GET", "/api/v1/instruments/{symbol}"),
    ("query", "GET", "/api/v1/statement"),
    ("query", "GET", "/api/v1/trades"),
    ("query", "GET", "/api/v1/watchlists"),
    ("query", "POST", "/api/v1/watchlists"),
    ("query", "PUT", "/api/v1/watchlists/{id}"),
    ("query", "DELETE", "/api/v1/watchlists/{id}"),
    ("notifications", "GET", "/api/v1/notifications"),
    ("notifications", "POST", "/api/v1/notifications/{id}/read"),
    ("notifications", "POST", "/api/v1/notifications/read-all"),
    ("notifications", "GET", "/api/v1/notifications/preferences"),
    ("notifications", "PUT", "/api/v1/notifications/preferences"),
    ("notifications", "POST", "/api/v1/notifications/devices"),
    ("notifications", "DELETE", "/api/v1/notifications/devices/{token}"),
    ("notifications", "POST", "/api/v1/alerts"),
    ("notifications", "GET", "/api/v1/alerts"),
    ("notifications", "DELETE", "/api/v1/alerts/{id}"),
    ("notifications", "POST", "/api/v1/postbacks"),
    ("notifications", "GET", "/api/v1/postbacks"),
    ("notifications", "DELETE", "/api/v1/postbacks/{id}"),
    ("gateway", "GET", "/ws/v1/orders"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
QUERY_NAMES = [
    "status",
    "symbol",
    "from",
    "to",
    "page",
    "pageSize",
    "at",
    "interval",
    "token",
    "since",
    "limit",
    "cursor",
    "side",
    "format",
    "unreadOnly",
]
VALID_BODIES = {
    "/api/v1/margins/orders": {
        "symbol": "RELIANCE",
        "side": "SELL",
        "type": "MARKET",
        "quantity": 1,
    },
    "/api/v1/orders": {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 1,
        "price": "15000.00",
        "idempotencyKey": "k",
        "timeInForce": "DAY",
    },
    "/api/v1/gtt": {
        "symbol": "RELIANCE",
        "kind": "SINGLE",
        "legs": [
            {
                "condition": "<=",
                "triggerPrice": "14000.00",
                "order": {"side": "BUY", "type": "LIMIT", "quantity": 1, "price": "14000.00"},
            }
        ],
    },
    "/api/v1/brackets": {
        "symbol": "RELIANCE",
        "side": "BUY",
        "quantity": 1,
        "price": "15000.00",
        "target": "15100.00",
        "stopLoss": "14900.00",
        "idempotencyKey": "k",
    },
    "/api/v1/notifications/preferences": {"FILL": "PUSH", "PRICE_ALERT": "NONE"},
    "/api/v1/notifications/devices": {"deviceToken": "fcm:APA91b-x_y.z"},
    "/api/v1/alerts": {"symbol": "RELIANCE", "price": "2850.00"},
    "/api/v1/postbacks": {"url": "https://hooks.example.com/orders"},
    "/api/v1/watchlists": {"name": "Energy", "symbols": ["RELIANCE", "TCS"]},
}
STRANGE = [
    "\x00",
    "\x07",
    "\n",
    "\r\n",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u200f",
    "\u202e",
    "\u2066",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "%",
    "/",
    "..",
    "?",
    "#",
    "&",
    "=",
    "\\",
    '"',
    "'",
    "RELIANCE",
    "1",
    "-1",
    "0",
    "١٢",
    "²",
    " ",
]

# --- strategies -----------------------------------------------------------------------------

texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),  # surrogates included
    st.lists(st.sampled_from(STRANGE), max_size=6).map("".join),
    st.sampled_from([129, 600, 3_000, 20_000]).map(lambda n: "A" * n),
)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
instants = st.sampled_from(
    [
        "2026-11-25T06:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-14:00",
        "1969-12-31T23:59:59Z",
        "2026-02-30",
        "99999-01-01T00:00:00Z",
        "1m",
        "1d",
        "OPEN,FILLED",
        "0",
        "-1",
        "1000001",
        "9" * 30,
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18) | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def encoded(segment: str) -> str:
    return quote(segment, safe="", errors="surrogatepass")


path_params = st.one_of(
    st.sampled_from(["1", "2", "999999", "0", "RELIANCE", "TCS", "fcm:APA91b-x_y.z"]),
    texts.map(encoded),
    st.sampled_from(["..%2F", "%2e%2e", "%00", "%ff", "%zz", "%", "a%2Fb", ".", ""]),
)


@st.composite
def paths(draw) -> tuple[str, str, str]:
    """(service, method, path): a route with its parameters filled, or random."""
    service, method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        segments = draw(st.lists(path_params, min_size=0, max_size=5))
        path = "/" + "/".join(segments)
    else:
        path = template
        for name in ("{id}", "{symbol}", "{token}"):
            if name in path:
                path = path.replace(name, draw(path_params))
        path += draw(st.sampled_from(["", "", "", "", "/", "/x", "%00"]))
    if draw(st.integers(0, 5)) == 0:
        method = draw(st.sampled_from(METHODS))
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(QUERY_NAMES) | texts, instants | texts | printable),
            max_size=3,
        )
    )
    if pairs:
        path += "?" + "&".join(f"{encoded(k)}={encoded(v)}" for k, v in pairs)
    return service, method, path


@st.composite
def tokens(draw) -> str | None:
    kind = draw(
        st.sampled_from(["user", "user", "user", "subject", "expired", "garbage", "none", "scheme"])
    )
    if kind == "user":
        return "Bearer " + mint_token(draw(st.sampled_from(["alice", "bob", "carol", "dave"])), JWT)
    if kind == "subject":
        return "Bearer " + mint_token(draw(texts), JWT)
    if kind == "expired":
        return "Bearer " + mint_token("alice", JWT, now=time.time() - 7200)
    if kind == "garbage":
        return "Bearer " + draw(printable)
    if kind == "scheme":
        return draw(printable)
    return None


@st.composite
def bodies(draw, path: str) -> bytes | None:
    kind = draw(
        st.sampled_from(["valid", "valid", "mutated", "mutated", "json", "bytes", "none", "large"])
    )
    base = next((b for p, b in VALID_BODIES.items() if path.split("?")[0] == p), None)
    if kind in ("valid", "mutated") and base is not None:
        body = dict(base)
        if "idempotencyKey" in body:
            body["idempotencyKey"] = uuid.uuid4().hex
        if kind == "mutated":
            body[draw(st.sampled_from(sorted(body)) | texts)] = draw(json_values)
        value = body
    elif kind == "bytes":
        return draw(st.binary(max_size=300))
    elif kind == "none":
        return None
    elif kind == "large":
        return b'{"symbol": "' + b"A" * 20_000 + b'"}'
    else:
        value = draw(json_values)
    try:
        if draw(st.booleans()):
            return json.dumps(value).encode()
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except ValueError:  # a float json cannot write (it writes NaN)
        return json.dumps(value, allow_nan=True).encode()


@st.composite
def requests(draw):
    service, method, path = draw(paths())
    headers = {}
    token = draw(tokens())
    if token is not None:
        headers["Authorization"] = token
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/x-www-form-urlencoded",
                None,
            ]
        )
        | printable
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = draw(bodies(path)) if method in ("POST", "PUT", "PATCH", "DELETE") else None
    return service, method, path, headers, body


# --- the HTTP services ----------------------------------------------------------------------


def test_no_request_gets_a_5xx_or_stores_anything_when_refused(database):
    with LogRecords() as logs, asyncio.Runner() as runner:
        services = Services(database, rate_limit_burst=10**6, read_rate_limit_burst=10**6)
        runner.run(services.__aenter__())
        seen: dict[int, int] = {}
        try:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=[
                    HealthCheck.too_slow,
                    HealthCheck.data_too_large,
                    HealthCheck.large_base_example,
                ],
            )
            @given(requests())
            def exchange(request):
                service, method, path, headers, body = request
                before = services.stored()
                try:
                    response = runner.run(
                        getattr(services, service).request(
                            method, path, headers=headers, content=body
                        )
                    )
                except (ValueError, UnicodeError, httpx.InvalidURL):  # httpx will not send it
                    reject()
                after = services.stored()
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, (request, response.text)
                if response.status_code >= 400:
                    assert_error(response, response.status_code)
                    assert all(after[t] <= before[t] for t in after), (request, before, after)
                assert logs.tracebacks() == [], request

            exchange()
        finally:
            runner.run(services.__aexit__(None, None, None))
    assert logs.tracebacks() == []
    assert any(400 <= status < 500 for status in seen) and any(status < 300 for status in seen)


# --- the WebSocket handshake ----------------------------------------------------------------


@st.composite
def handshakes(draw):
    params = draw(
        st.lists(
            st.tuples(st.sampled_from(["token", "since", "x"]) | texts, texts | printable),
            max_size=3,
        )
    )
    path = draw(
        st.sampled_from(["/ws/v1/orders", "/ws/v1/orders", "/ws/v1/orders/", "/ws/v2/orders", "/"])
    )
    query = "&".join(f"{encoded(k)}={encoded(v)}" for k, v in params)
    token = draw(tokens())
    return path + ("?" + query if query else ""), token


def test_no_websocket_handshake_fails_on_the_server(gateways):
    (server,) = gateways(1)

    async def handshake(target: str, token: str | None) -> None:
        headers = {"Authorization": token} if token else {}
        try:
            async with connect(
                f"ws://127.0.0.1:{server.port}{target}", additional_headers=headers, open_timeout=10
            ) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert first["type"] in ("WELCOME", "ERROR"), first
                if first["type"] == "ERROR":
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 10)
                    assert ws.close_code in (4400, 4401), ws.close_code
        except InvalidHandshake as e:  # refused before the upgrade
            status = getattr(getattr(e, "response", None), "status_code", 400)
            assert status < 500, (target, e)

    @settings(
        max_examples=HANDSHAKES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(handshakes())
    def check(case):
        target, token = case
        try:
            asyncio.run(handshake(target, token))
        except (ValueError, UnicodeError):  # the client refuses to send it
            reject()

    check()
    server.stop()
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, log[-4000:]
