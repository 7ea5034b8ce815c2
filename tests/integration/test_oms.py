"""The OMS REST API (services/oms) on the real Postgres, Redis and Kafka: placing and
cancelling orders, idempotency, checks that store nothing, tokens, rate limits."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import jwt
import psycopg
import pytest

from brokercore.config import DEV_JWT_SECRET
from brokercore.engine.records import Side, Tif
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import CancelOrder, NewOrder
from oms_support import SUNDAY, Api, auth, run


def test_an_order_blocks_its_cash_is_stored_pending_and_reaches_kafka(database):
    async def scenario():
        async with Api(database) as api:
            response = await api.place(price="15000.05", timeInForce="GTC")
            return api, response

    api, response = run(scenario)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "PENDING" and body["orderId"] > 0 and body["timestamp"]
    order_id = body["orderId"]
    notional = 1_500_005 * 10  # paise: 15,000.05 x 10
    assert api.rows(
        "SELECT status, price, quantity, blocked_cash, time_in_force FROM orders "
        "WHERE order_id = %s",
        order_id,
    ) == [("PENDING", 1_500_005, 10, notional, "GTC")]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [(notional,)]
    assert api.rows("SELECT status FROM order_events WHERE order_id = %s", order_id) == [
        ("PENDING",)
    ]
    assert api.rows(
        "SELECT published_at IS NOT NULL FROM outbox WHERE order_id = %s", order_id
    ) == [(True,)]
    account = api.rows("SELECT account_id FROM accounts WHERE user_id = 'alice'")[0][0]
    [command] = api.commands()
    assert command == NewOrder(
        order_id, account, "RELIANCE", Side.BUY, 10, price=300_001, tif=Tif.GTC, ts=command.ts
    )


def test_retries_of_one_request_give_one_order_even_when_they_race(database):
    async def scenario():
        async with Api(database, rate_limit_burst=100) as api:
            body = {"idempotencyKey": "retry-me", "quantity": 3}
            responses = await asyncio.gather(*(api.place(**body) for _ in range(50)))
            reused = await api.place(idempotencyKey="retry-me", quantity=4)
            return api, responses, reused

    api, responses, reused = run(scenario)
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["orderId"] for r in responses}) == 1
    assert api.rows("SELECT count(*) FROM orders") == [(1,)]
    assert api.rows("SELECT count(*) FROM outbox") == [(1,)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
        (1_500_000 * 3,)
    ]
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "MALFORMED_JSON"),
        (b'{"symbol": "RELIANCE"}', 422, "INVALID_REQUEST"),
        (
            b'{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": "ten", '
            b'"price": "15000", "idempotencyKey": "k"}',
            422,
            "INVALID_REQUEST",
        ),
        (
            b'{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": -5, '
            b'"price": "15000", "idempotencyKey": "k"}',
            422,
            "INVALID_REQUEST",
        ),
        (
            b'{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 99999999999999, '
            b'"price": "15000", "idempotencyKey": "k"}',
            422,
            "INVALID_REQUEST",
        ),
        (
            b'{"symbol": "RELIANCE", "side": "HOLD", "type": "LIMIT", "quantity": 1, '
            b'"price": "15000", "idempotencyKey": "k"}',
            422,
            "INVALID_REQUEST",
        ),
        (
            b'{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 1, '
            b'"price": "15000", "idempotencyKey": "k", "admin": true}',
            422,
            "INVALID_REQUEST",
        ),
        (b"[1, 2, 3]", 422, "INVALID_REQUEST"),
        (b"x" * 20_000, 413, "BODY_TOO_LARGE"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx_and_store_nothing(database, body, status, code):
    async def scenario():
        async with Api(database) as api:
            response = await api.client.post(
                "/api/v1/orders",
                content=body,
                headers=auth("alice") | {"Content-Type": "application/json"},
            )
            return api, response

    api, response = run(scenario)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text
    if code == "INVALID_REQUEST" and body.startswith(b"{"):
        assert error["fields"] and error["fields"][0]["message"]
    assert api.rows(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), "
        "(SELECT count(*) FROM idempotency_keys)"
    ) == [(0, 0, 0)]


@pytest.mark.parametrize(
    "user, order, code",
    [
        ("alice", {"symbol": "NOSUCH"}, "UNKNOWN_SYMBOL"),
        ("alice", {"price": "15000.03"}, "TICK_SIZE"),
        ("alice", {"price": "25000.00"}, "PRICE_BAND"),
        ("alice", {"quantity": 1_000_000}, "QUANTITY_LIMIT"),
        ("alice", {"quantity": 100, "price": "19999.95"}, "INSUFFICIENT_FUNDS"),
        ("alice", {"side": "SELL"}, "INSUFFICIENT_HOLDINGS"),
        ("bob", {"side": "SELL", "quantity": 101}, "INSUFFICIENT_HOLDINGS"),
        ("alice", {"type": "MARKET", "price": "15000"}, "PRICE_NOT_ALLOWED"),
        ("alice", {"type": "MARKET", "price": None, "timeInForce": "GTC"}, "INVALID_TIF"),
    ],
)
def test_orders_the_checks_refuse_are_not_stored(database, user, order, code):
    async def scenario():
        async with Api(database) as api:
            return api, await api.place(user=user, **order)

    api, response = run(scenario)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert api.rows(
        "SELECT (SELECT count(*) FROM orders), (SELECT sum(blocked_cash) FROM "
        "accounts), (SELECT sum(blocked_quantity) FROM positions)"
    ) == [(0, 0, 0)]


def test_a_closed_market_refuses_with_the_reason(database):
    async def scenario():
        async with Api(database) as api:
            api.now = SUNDAY
            return await api.place()

    response = run(scenario)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "MARKET_CLOSED"


def test_a_sell_blocks_shares_and_a_market_buy_is_held_at_its_protection(database):
    async def scenario():
        async with Api(database) as api:
            sell = await api.place(user="bob", side="SELL", quantity=40, price="15000")
            buy = await api.place(user="carol", type="MARKET", price=None, quantity=2)
            return api, sell, buy

    api, sell, buy = run(scenario)
    assert sell.status_code == buy.status_code == 202
    assert api.rows("SELECT blocked_quantity FROM positions") == [(40,)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'carol'") == [
        (1_575_000 * 2,)
    ]  # 15,750.00 x 2: 5 % (the default protection) above the band's middle, no trade yet
    command = {c.order_id: c for c in api.commands()}[buy.json()["orderId"]]
    # capped at its hold, so that no re-band lets it fill above: an IOC limit at the edge
    assert (command.market, command.price, command.tif) == (False, 315_000, Tif.IOC)


def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "UNAUTHENTICATED"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer not-a-jwt"}, "INVALID_TOKEN"),
        (
            {
                "Authorization": "Bearer "
                + jwt.encode(
                    {
                        "sub": "alice",
                        "iss": "brokercore-dev",
                        "aud": "brokercore",
                        "iat": int(time.time()) - 100,
                        "exp": int(time.time()) - 50,
                    },
                    DEV_JWT_SECRET,
                    "HS256",
                )
            },
            "TOKEN_EXPIRED",
        ),
        # Tokens made when the tests are collected: they must outlive a long run.
        (
            {
                "Authorization": "Bearer "
                + jwt.encode(
                    {
                        "sub": "alice",
                        "iss": "brokercore-dev",
                        "aud": "other",
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 86_400,
                    },
                    DEV_JWT_SECRET,
                    "HS256",
                )
            },
            "INVALID_TOKEN",
        ),
        (
            {
                "Authorization": "Bearer "
                + jwt.encode(
                    {
                        "sub": "alice",
                        "iss": "brokercore-dev",
                        "aud": "brokercore",
                        "iat": int(time.time()),
                        "exp": int(time.time()) + 86_400,
                    },
                    "f" * 64,
                    "HS256",
                )
            },
            "INVALID_TOKEN",
        ),
        (
            {
                "Authorization": "Bearer "
                + b64url(b'{"alg":"none","typ":"JWT"}')
                + "."
                + b64url(
                    b'{"sub":"alice","iss":"brokercore-dev","aud":"brokercore","iat":1,'
                    b'"exp":99999999999}'
                )
                + "."
            },
            "INVALID_TOKEN",
        ),
    ],
)
def test_bad_tokens_are_refused_with_401(database, headers, code):
    async def scenario():
        async with Api(database) as api:
            return api, await api.place(token=headers)

    api, response = run(scenario)
    assert response.status_code == 401 and response.json()["error"]["code"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.rows("SELECT count(*) FROM orders") == [(0,)]


def test_a_user_without_an_account_is_forbidden(database):
    async def scenario():
        async with Api(database) as api:
            return await api.place(user="mallory")

    response = run(scenario)
    assert response.status_code == 403 and response.json()["error"]["code"] == "NO_ACCOUNT"


def test_cancel_only_your_own_open_order(database):
    async def scenario():
        async with Api(database) as api:
            order_id = (await api.place()).json()["orderId"]
            others = await api.cancel(order_id, user="carol")
            unknown = await api.cancel(987654321)
            garbage = await api.cancel("1;DROP")
            mine = await api.cancel(order_id)
            return api, order_id, others, unknown, garbage, mine

    api, order_id, others, unknown, garbage, mine = run(scenario)
    assert [r.status_code for r in (others, unknown, garbage)] == [404, 404, 404]
    assert {r.json()["error"]["code"] for r in (others, unknown, garbage)} == {"ORDER_NOT_FOUND"}
    assert mine.status_code == 202 and mine.json()["orderId"] == order_id
    account = api.rows("SELECT account_id FROM accounts WHERE user_id = 'alice'")[0][0]
    cancel = api.commands()[-1]
    assert cancel == CancelOrder(order_id, account, "RELIANCE", ts=cancel.ts)


def test_a_cancel_answers_cancel_requested_and_its_history_keeps_the_filled_quantity(database):
    """The 202 of a cancel says a cancel was asked for (not the order's status, which
    read as if it had failed), and the request's history row says what had filled."""

    async def scenario():
        async with Api(database) as api:
            order_id = (await api.place(quantity=10)).json()["orderId"]
            api.rows(
                "UPDATE orders SET status = 'PARTIALLY_FILLED', filled_quantity = 4 "
                "WHERE order_id = %s RETURNING order_id",
                order_id,
            )  # as if settled
            return api, order_id, await api.cancel(order_id)

    api, order_id, answer = run(scenario)
    assert answer.status_code == 202
    assert answer.json()["status"] == "CANCEL_REQUESTED"
    assert api.rows(
        "SELECT status, filled_quantity, payload->'request' = '\"cancel\"' "
        "FROM order_events WHERE order_id = %s ORDER BY event_id",
        order_id,
    ) == [("PENDING", 0, False), ("PARTIALLY_FILLED", 4, True)]


def test_a_retry_of_a_stored_but_unpublished_order_carries_its_command_again(database):
    """An OMS died between commit and publish: the client's retry with the same key
    gets the same order and, while its command is unpublished, the command to send."""

    async def scenario():
        async with Api(database) as api:
            request = PlaceOrderRequest(
                "RELIANCE", "BUY", "LIMIT", 3, "retry-unpublished", price=Decimal("15000")
            )
            entry = api.app.state.oms.entry
            first = await entry.place("alice", request)  # never published
            retried = await entry.place("alice", request)
            await api.app.state.oms.publisher.publish([retried.outbox])
            api.rows("UPDATE outbox SET published_at = now() RETURNING 1")
            again = await entry.place("alice", request)
            return first, retried, again

    first, retried, again = run(scenario)
    assert retried.order_id == again.order_id == first.order_id
    assert retried.outbox == first.outbox
    assert again.outbox is None, "a published command is not sent again by a retry"


def test_a_user_over_the_rate_limit_gets_429_with_retry_after(database):
    async def scenario():
        async with Api(database, rate_limit_burst=3, rate_limit_per_second=0.5) as api:
            responses = [await api.place() for _ in range(4)]
            other_user = await api.place(user="carol")
            return responses, other_user

    responses, other_user = run(scenario)
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    assert responses[-1].json()["error"]["code"] == "RATE_LIMITED"
    assert int(responses[-1].headers["Retry-After"]) >= 1
    assert other_user.status_code == 202


def test_random_retries_over_two_thousand_requests_never_duplicate_an_order(database):
    """1,000 logical orders, each sent one to three times, retries racing in random
    order: exactly one order per idempotency key, holds counted once."""
    import random

    rng = random.Random(5)
    keys = [f"k{n}" for n in range(1_000)]
    sends = [key for key in keys for _ in range(rng.randint(1, 3))]
    rng.shuffle(sends)
    with psycopg.connect(database, autocommit=True) as conn:  # enough for all of them
        conn.execute("UPDATE accounts SET cash = %s WHERE user_id = 'alice'", (10**12,))

    async def scenario():
        async with Api(database, rate_limit_burst=10_000, rate_limit_per_second=10_000) as api:
            limit = asyncio.Semaphore(32)

            async def send(key):
                async with limit:
                    return key, await api.place(idempotencyKey=key, quantity=1, price="10000.00")

            return api, await asyncio.gather(*(send(key) for key in sends))

    api, responses = run(scenario)
    assert len(sends) >= 1_900 and {r.status_code for _, r in responses} == {202}
    ids = {}
    for key, response in responses:
        ids.setdefault(key, set()).add(response.json()["orderId"])
    assert all(len(found) == 1 for found in ids.values()), "a retry got another order"
    assert api.rows("SELECT count(*), count(DISTINCT order_id) FROM orders") == [(1_000, 1_000)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
        (1_000 * 10_000 * 100,)
    ]


def test_expired_idempotency_keys_are_cleaned_up_and_free_again(database):
    async def scenario():
        async with Api(database) as api:
            first = await api.place(idempotencyKey="daily")
            api.now = api.now + timedelta(hours=25)
            removed = await api.app.state.oms.entry.expire_idempotency_keys()
            api.now = api.now - timedelta(hours=25)  # back in the session
            again = await api.place(idempotencyKey="daily")
            return first, removed, again

    first, removed, again = run(scenario)
    assert removed == 1
    assert again.json()["orderId"] != first.json()["orderId"]


def test_the_first_orders_of_a_trading_day_race_without_deadlock(database):
    """The day's partition of orders is made by the first order; racing first orders
    used to deadlock on it (one of them answered 500)."""

    async def scenario():
        async with Api(database, rate_limit_burst=100) as api:
            return await asyncio.gather(
                *(api.place(user=user, quantity=1) for user in ("alice", "carol") * 15)
            )

    responses = run(scenario)
    assert [r.status_code for r in responses] == [202] * 30
