"""The HTTP edge of every service (OMS, query, notifications, the gateway's HTTP side) on
the real Postgres, Redis and Kafka: bad characters refused before they reach the database
or a log, 404 and 405 in the JSON error shape, no redirects, a client that goes away is
not an error, bodies must be JSON, one code for a user without an account, reads have a
rate limit of their own, and while Postgres or Redis is away the answer is 503 with
Retry-After (or a local rate limit), never 500, until it is back without a restart."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import psycopg
import pytest

from brokercore.db.migrations import apply_migrations
from brokercore.edge.auth import mint_token
from http_support import LogRecords, Services, assert_error
from oms_support import JWT, auth, run


def order(**fields) -> dict:
    return {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 1,
        "price": "15000.00",
        "idempotencyKey": uuid.uuid4().hex,
    } | fields


def raw(text: str) -> dict:
    """A request body written by hand (escapes JSON encoders would not write)."""
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def on_services(database: str, scenario, **overrides):
    """``scenario(services, logs)`` against fresh in-process apps; its result, after
    checking that nothing logged a traceback or an error."""

    async def main():
        with LogRecords() as logs:
            async with Services(database, **overrides) as services:
                result = await scenario(services, logs)
        assert logs.tracebacks() == []
        return result

    return run(main)


async def send(
    services: Services, service: str, method: str, path: str, user: str | None = "alice", **kwargs
):
    headers = (auth(user) if user else {}) | kwargs.pop("headers", {})
    return await getattr(services, service).request(method, path, headers=headers, **kwargs)


# --- characters no database or log should see ------------------------------------------------

BAD_TEXT = [
    ("oms", "POST", "/api/v1/orders", {"json": order(symbol="RELI\x00ANCE")}),
    ("oms", "POST", "/api/v1/orders", {"json": order(idempotencyKey="key\x00")}),
    ("oms", "POST", "/api/v1/orders", {"json": order(idempotencyKey="bell\x07")}),
    ("oms", "DELETE", "/api/v1/orders/%00", {}),
    ("query", "GET", "/api/v1/orders?symbol=%00", {}),
    ("query", "GET", "/api/v1/orders?symbol=RELI%1BANCE", {}),
    ("query", "GET", "/api/v1/orders?status=%00", {}),
    ("query", "GET", "/api/v1/orders?%00=1", {}),
    ("query", "GET", "/api/v1/marketdata/%00", {}),
    ("query", "GET", "/api/v1/orders/1/history?at=%00", {}),
    ("notifications", "DELETE", "/api/v1/notifications/devices/%00", {}),
    ("notifications", "DELETE", "/api/v1/notifications/devices/abc%0Adef", {}),
    ("notifications", "POST", "/api/v1/alerts", {"json": {"symbol": "\x00", "price": "1.00"}}),
    ("notifications", "PUT", "/api/v1/notifications/preferences", raw('{"FILL\\u0000": "PUSH"}')),
]


@pytest.mark.parametrize(
    "service, method, path, kwargs",
    BAD_TEXT,
    ids=[f"{s}-{m}-{p}-{i}" for i, (s, m, p, _) in enumerate(BAD_TEXT)],
)
def test_control_characters_and_lone_surrogates_are_refused_at_the_edge(
    database, service, method, path, kwargs
):
    async def scenario(services, logs):
        before = services.stored()
        response = await send(services, service, method, path, **kwargs)
        return before, services.stored(), response

    before, after, response = on_services(database, scenario)
    error = assert_error(response, 400, "INVALID_CHARACTERS")
    assert "\x00" not in error["message"]
    assert after == before


@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udc00x", "\\ud800\\ud800"])
def test_a_lone_surrogate_in_a_body_is_malformed_json(database, surrogate):
    async def scenario(services, logs):
        before = services.stored()
        response = await send(
            services,
            "oms",
            "POST",
            "/api/v1/orders",
            **raw(
                '{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 1, '
                f'"price": "15000.00", "idempotencyKey": "lone {surrogate}"}}'
            ),
        )
        return before, services.stored(), response

    before, after, response = on_services(database, scenario)
    assert_error(response, 400, "MALFORMED_JSON")
    assert after == before


@pytest.mark.parametrize(
    "service, method, path",
    [
        ("oms", "POST", "/api/v1/orders"),
        ("query", "GET", "/api/v1/portfolio"),
        ("query", "GET", "/api/v1/orders"),
        ("notifications", "GET", "/api/v1/notifications/preferences"),
        ("notifications", "POST", "/api/v1/notifications/devices"),
    ],
)
@pytest.mark.parametrize("subject", ["ali\x00ce", "ali\nce", "ali\ud800ce", "a" * 129])
def test_a_token_whose_subject_no_database_can_hold_is_refused(
    database, service, method, path, subject
):
    async def scenario(services, logs):
        before = services.stored()
        body = order() if service == "oms" else {"deviceToken": "fcm:abc"}
        response = await send(
            services,
            service,
            method,
            path,
            user=None,
            headers={"Authorization": f"Bearer {mint_token(subject, JWT)}"},
            **({"json": body} if method == "POST" else {}),
        )
        return before, services.stored(), response

    before, after, response = on_services(database, scenario)
    assert_error(response, 401, "INVALID_TOKEN")
    assert after == before


def test_a_very_long_request_target_is_refused(database):
    async def scenario(services, logs):
        return [
            await send(services, "query", "GET", "/api/v1/orders?symbol=" + "A" * 5000),
            await send(
                services, "notifications", "DELETE", "/api/v1/notifications/devices/" + "x" * 5000
            ),
        ]

    for response in on_services(database, scenario):
        assert_error(response, 414, "URI_TOO_LONG")


def test_other_unicode_is_ordinary_text(database):
    """A right-to-left mark or an emoji is text Postgres stores: an idempotency key may
    hold them, a symbol with them is simply unknown."""

    async def scenario(services, logs):
        return (
            await send(
                services,
                "oms",
                "POST",
                "/api/v1/orders",
                json=order(idempotencyKey="\u200f\U0001f600 key"),
            ),
            await send(
                services, "oms", "POST", "/api/v1/orders", json=order(symbol="\u202eRELIANCE")
            ),
            await send(services, "query", "GET", "/api/v1/marketdata/%E2%80%8F"),
        )

    placed, unknown, market = on_services(database, scenario)
    assert placed.status_code == 202, placed.text
    assert_error(unknown, 422, "UNKNOWN_SYMBOL")
    assert_error(market, 404, "UNKNOWN_SYMBOL")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/marketdata/RELIANCE/candles?to=0001-01-01T00:00:00%2B01:00",
        "/api/v1/marketdata/RELIANCE/candles?from=9999-12-31T23:59:59-14:00",
        "/api/v1/orders?from=0001-01-01T00:00:00Z",
        "/api/v1/orders/1/history?at=9999-12-31T23:59:59Z",
    ],
)
def test_an_instant_no_date_arithmetic_can_hold_is_refused(database, path):
    async def scenario(services, logs):
        return await send(services, "query", "GET", path)

    error = assert_error(on_services(database, scenario), 422, "INVALID_REQUEST")
    assert error["fields"][0]["field"] in ("from", "to", "at")


# --- every answer in the JSON shape -------------------------------------------------------


@pytest.mark.parametrize(
    "service, method, path, status, code",
    [
        ("oms", "GET", "/api/v1/orders/3", 405, "METHOD_NOT_ALLOWED"),
        ("oms", "PUT", "/api/v1/orders", 405, "METHOD_NOT_ALLOWED"),
        ("oms", "GET", "/", 404, "NOT_FOUND"),
        ("oms", "POST", "/api/v1/orders/", 404, "NOT_FOUND"),
        ("query", "POST", "/api/v1/portfolio", 405, "METHOD_NOT_ALLOWED"),
        ("query", "GET", "/api/v1/marketdata/..%2F", 404, "NOT_FOUND"),
        ("query", "GET", "/api/v1/portfolio/", 404, "NOT_FOUND"),
        ("query", "GET", "/api/v2/portfolio", 404, "NOT_FOUND"),
        ("notifications", "PATCH", "/api/v1/alerts", 405, "METHOD_NOT_ALLOWED"),
        ("notifications", "GET", "/api/v1/alerts/7", 405, "METHOD_NOT_ALLOWED"),
        ("notifications", "GET", "/api/v1/nothing-here", 404, "NOT_FOUND"),
        ("gateway", "GET", "/ws/v1/orders", 404, "NOT_FOUND"),
        ("gateway", "GET", "/", 404, "NOT_FOUND"),
    ],
)
def test_unknown_routes_and_methods_answer_in_the_json_shape(
    database, service, method, path, status, code
):
    async def scenario(services, logs):
        return await send(services, service, method, path)

    response = on_services(database, scenario)
    assert_error(response, status, code)
    if status == 405:
        assert response.headers["allow"] == ALLOWED[path], response.headers


ALLOWED = {
    "/api/v1/orders/3": "DELETE, PATCH",
    "/api/v1/orders": "DELETE, POST",  # two routes of one path: both named
    "/api/v1/portfolio": "GET, HEAD",
    "/api/v1/alerts": "GET, HEAD, POST",
    "/api/v1/alerts/7": "DELETE",
}
"""The Allow header of each 405 above."""


# --- a client that goes away ----------------------------------------------------------------


def test_a_client_that_disconnects_before_its_body_is_not_an_error(database):
    async def scenario(services, logs):
        sent = []

        async def receive():
            return {"type": "http.disconnect"}

        async def record(message):
            sent.append(message)

        headers = [
            (b"authorization", auth("alice")["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"120"),
        ]
        for app, path in (
            (services.apps["oms"], "/api/v1/orders"),
            (services.apps["notifications"], "/api/v1/alerts"),
        ):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }
            await app(scope, receive, record)
        return sent, services.stored()

    sent, stored = on_services(database, scenario)
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [499, 499]
    assert set(stored.values()) == {0}


# --- bodies are JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, status",
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=latin-1", 415),
        ("application/jsonx", 415),
        ("application/json", 202),
        ("Application/JSON; charset=UTF-8", 202),
    ],
)
def test_a_body_must_be_declared_json(database, content_type, status):
    async def scenario(services, logs):
        headers = {} if content_type is None else {"Content-Type": content_type}
        before = services.stored()
        placed = await send(
            services,
            "oms",
            "POST",
            "/api/v1/orders",
            content=json.dumps(order()).encode(),
            headers=headers,
        )
        preferences = await send(
            services,
            "notifications",
            "PUT",
            "/api/v1/notifications/preferences",
            content=b'{"FILL": "PUSH"}',
            headers=headers,
        )
        return before, services.stored(), placed, preferences

    before, after, placed, preferences = on_services(database, scenario)
    if status == 415:
        assert_error(placed, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert_error(preferences, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert after == before
    else:
        assert placed.status_code == 202 and preferences.status_code == 200


# --- one name for one thing -------------------------------------------------------------------


def test_a_user_without_an_account_is_no_account_everywhere(database):
    async def scenario(services, logs):
        return (
            await send(services, "oms", "POST", "/api/v1/orders", user="dave", json=order()),
            await send(services, "query", "GET", "/api/v1/portfolio", user="dave"),
        )

    for response in on_services(database, scenario):
        assert_error(response, 403, "NO_ACCOUNT")


# --- rate limits --------------------------------------------------------------------------


def test_reads_have_a_per_user_rate_limit_of_their_own(database):
    async def scenario(services, logs):
        reads = [await send(services, "query", "GET", "/api/v1/portfolio") for _ in range(4)]
        prefs = [
            await send(services, "notifications", "GET", "/api/v1/notifications/preferences")
            for _ in range(4)
        ]
        other = await send(services, "query", "GET", "/api/v1/portfolio", user="carol")
        placed = await send(services, "oms", "POST", "/api/v1/orders", json=order())
        return reads, prefs, other, placed

    reads, prefs, other, placed = on_services(
        database, scenario, read_rate_limit_burst=3, read_rate_limit_per_second=0.01
    )
    for answers in (reads, prefs):
        assert [r.status_code for r in answers[:3]] == [200] * 3
        assert_error(answers[3], 429, "RATE_LIMITED")
        assert int(answers[3].headers["retry-after"]) >= 1
    assert other.status_code == 200  # per user
    assert placed.status_code == 202, placed.text  # the orders' budget is apart


# --- dependencies away ------------------------------------------------------------------------


def test_while_redis_is_away_orders_go_on_under_a_local_rate_limit(database, private_redis):
    async def scenario(services, logs):
        first = await send(services, "oms", "POST", "/api/v1/orders", json=order())
        private_redis.stop()
        during = [
            await send(services, "oms", "POST", "/api/v1/orders", json=order()) for _ in range(4)
        ]
        reads = [
            await send(services, "query", "GET", "/api/v1/portfolio", user="carol"),
            await send(
                services, "notifications", "GET", "/api/v1/notifications/preferences", user="carol"
            ),
        ]
        private_redis.start()
        after = await send(services, "oms", "POST", "/api/v1/orders", json=order(), user="carol")
        return first, during, reads, after, services.stored()

    first, during, reads, after, stored = on_services(
        database,
        scenario,
        redis_url=private_redis.url,
        rate_limit_burst=3,
        rate_limit_per_second=0.01,
    )
    assert first.status_code == 202, first.text
    assert [r.status_code for r in during[:3]] == [202] * 3, [r.text for r in during]
    assert_error(during[3], 429, "RATE_LIMITED")
    assert [r.status_code for r in reads] == [200, 200], [r.text for r in reads]
    assert after.status_code == 202, after.text
    assert stored["orders"] == 5


def test_while_postgres_is_away_the_answer_is_503_then_service_resumes(private_postgres):
    apply_migrations(private_postgres.url)
    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (user_id, cash, kyc_status) "
            "VALUES ('alice', 100000000, 'VERIFIED')"
        )
    requests = [
        ("oms", "POST", "/api/v1/orders", {"json": order()}),
        ("query", "GET", "/api/v1/portfolio", {}),
        ("query", "GET", "/api/v1/orders", {}),
        ("notifications", "GET", "/api/v1/notifications/preferences", {}),
        (
            "notifications",
            "POST",
            "/api/v1/alerts",
            {"json": {"symbol": "RELIANCE", "price": "2850.00"}},
        ),
    ]

    async def every(services, patience: float = 0.0):
        """Each request once; with ``patience``, a 503 is tried again after its
        Retry-After, as a client would, for that many seconds at most."""
        answers = []
        for service, method, path, kwargs in requests:
            if "json" in kwargs and "idempotencyKey" in kwargs["json"]:
                kwargs = {"json": order()}
            deadline = time.monotonic() + patience
            while (
                answer := await send(services, service, method, path, **kwargs)
            ).status_code == 503 and time.monotonic() < deadline:
                await asyncio.sleep(int(answer.headers["retry-after"]))
            answers.append(answer)
        return answers

    async def scenario(services, logs):
        before = await every(services)
        private_postgres.stop()
        during = await every(services)
        private_postgres.start()
        after = await every(services, patience=30.0)  # the pools reconnect by themselves
        return before, during, after

    before, during, after = on_services(
        private_postgres.url, scenario, cache_ttl=0.001, db_pool_timeout=1.0
    )
    assert [r.status_code for r in before] == [202, 200, 200, 200, 201], [r.text for r in before]
    for response in during:
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert int(response.headers["retry-after"]) >= 1
    assert [r.status_code for r in after] == [202, 200, 200, 200, 201], [r.text for r in after]
