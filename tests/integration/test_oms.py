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
from oms_support import SUNDAY, Api, auth, order, outcome, refusal, run


def test_an_order_blocks_its_cash_is_stored_pending_and_reaches_kafka(database):
    async def scenario():
        async with Api(database) as api:
            return api, await api.placed(price="15000.05", time_in_force="GTC")

    api, accepted = run(scenario)
    assert accepted.status == "PENDING" and accepted.order_id > 0 and accepted.timestamp
    order_id = accepted.order_id
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
            alice, retried = api.trader("alice"), order(idempotency_key="retry-me", quantity=3)
            answers = await asyncio.gather(*(alice.place(retried) for _ in range(50)))
            statuses = list(alice.statuses)
            reused = await refusal(alice.place(order(idempotency_key="retry-me", quantity=4)))
            return api, answers, statuses, reused

    api, answers, statuses, reused = run(scenario)
    assert statuses == [202] * 50
    assert len({a.order_id for a in answers}) == 1
    assert api.rows("SELECT count(*) FROM orders") == [(1,)]
    assert api.rows("SELECT count(*) FROM outbox") == [(1,)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
        (1_500_000 * 3,)
    ]
    assert reused == (422, "IDEMPOTENCY_KEY_REUSED")


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
    "user, fields, code",
    [
        ("alice", {"symbol": "NOSUCH"}, "UNKNOWN_SYMBOL"),
        ("alice", {"price": "15000.03"}, "TICK_SIZE"),
        ("alice", {"price": "25000.00"}, "PRICE_BAND"),
        ("alice", {"quantity": 1_000_000}, "QUANTITY_LIMIT"),
        ("alice", {"quantity": 100, "price": "19999.95"}, "INSUFFICIENT_FUNDS"),
        ("alice", {"side": "SELL"}, "INSUFFICIENT_HOLDINGS"),
        ("bob", {"side": "SELL", "quantity": 101}, "INSUFFICIENT_HOLDINGS"),
        ("alice", {"type": "MARKET", "price": "15000"}, "PRICE_NOT_ALLOWED"),
        ("alice", {"type": "MARKET", "price": None, "time_in_force": "GTC"}, "INVALID_TIF"),
    ],
)
def test_orders_the_checks_refuse_are_not_stored(database, user, fields, code):
    async def scenario():
        async with Api(database) as api:
            return api, await refusal(api.trader(user).place(order(**fields)))

    api, refused = run(scenario)
    assert refused == (422, code)
    assert api.rows(
        "SELECT (SELECT count(*) FROM orders), (SELECT sum(blocked_cash) FROM "
        "accounts), (SELECT sum(blocked_quantity) FROM positions)"
    ) == [(0, 0, 0)]


def test_a_closed_market_refuses_with_the_reason(database):
    async def scenario():
        async with Api(database) as api:
            api.now = SUNDAY
            return await refusal(api.trader("alice").place(order()))

    assert run(scenario) == (422, "MARKET_CLOSED")


def test_a_sell_blocks_shares_and_a_market_buy_is_held_at_its_protection(database):
    async def scenario():
        async with Api(database) as api:
            await api.placed("bob", side="SELL", quantity=40, price="15000")
            return api, await api.placed("carol", type="MARKET", price=None, quantity=2)

    api, buy = run(scenario)
    assert api.rows("SELECT blocked_quantity FROM positions") == [(40,)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'carol'") == [
        (1_575_000 * 2,)
    ]  # 15,750.00 x 2: 5 % (the default protection) above the band's middle, no trade yet
    command = {c.order_id: c for c in api.commands()}[buy.order_id]
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
            return await refusal(api.trader("mallory").place(order()))

    assert run(scenario) == (403, "NO_ACCOUNT")


def test_cancel_only_your_own_open_order(database):
    async def scenario():
        async with Api(database) as api:
            alice = api.trader("alice")
            order_id = (await alice.place(order())).order_id
            others = await refusal(api.trader("carol").cancel(order_id))
            unknown = await refusal(alice.cancel(987654321))
            garbage = await api.cancel("1;DROP")  # raw: an id the client cannot send
            mine = await alice.cancel(order_id)
            return api, order_id, others, unknown, garbage, (mine, alice.statuses[-1])

    api, order_id, others, unknown, garbage, mine = run(scenario)
    assert others == unknown == (404, "ORDER_NOT_FOUND")
    assert (garbage.status_code, garbage.json()["error"]["code"]) == (404, "ORDER_NOT_FOUND")
    assert mine[0].order_id == order_id and mine[1] == 202
    account = api.rows("SELECT account_id FROM accounts WHERE user_id = 'alice'")[0][0]
    cancel = api.commands()[-1]
    assert cancel == CancelOrder(order_id, account, "RELIANCE", ts=cancel.ts)


def test_a_cancel_answers_cancel_requested_and_its_history_keeps_the_filled_quantity(database):
    """The 202 of a cancel says a cancel was asked for (not the order's status, which
    read as if it had failed), and the request's history row says what had filled."""

    async def scenario():
        async with Api(database) as api:
            alice = api.trader("alice")
            order_id = (await alice.place(order(quantity=10))).order_id
            api.rows(
                "UPDATE orders SET status = 'PARTIALLY_FILLED', filled_quantity = 4 "
                "WHERE order_id = %s RETURNING order_id",
                order_id,
            )  # as if settled
            return api, order_id, await alice.cancel(order_id), alice.statuses

    api, order_id, answer, statuses = run(scenario)
    assert statuses == [202, 202]
    assert answer.status == "CANCEL_REQUESTED"
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
            alice = api.trader("alice")
            answers = [await outcome(alice.place(order())) for _ in range(4)]
            await api.placed("carol")
            return answers, alice.statuses

    answers, statuses = run(scenario)
    assert statuses == [202, 202, 202, 429]
    limited = answers[-1]
    assert limited.code == "RATE_LIMITED" and limited.retry_after >= 1  # from Retry-After


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

            alice = api.trader("alice")

            async def send(key):
                async with limit:
                    sent = order(idempotency_key=key, quantity=1, price="10000.00")
                    return key, await alice.place(sent)

            return api, await asyncio.gather(*(send(key) for key in sends)), alice.statuses

    api, answers, statuses = run(scenario)
    assert len(sends) >= 1_900 and statuses == [202] * len(sends)
    ids = {}
    for key, answer in answers:
        ids.setdefault(key, set()).add(answer.order_id)
    assert all(len(found) == 1 for found in ids.values()), "a retry got another order"
    assert api.rows("SELECT count(*), count(DISTINCT order_id) FROM orders") == [(1_000, 1_000)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
        (1_000 * 10_000 * 100,)
    ]


def test_expired_idempotency_keys_are_cleaned_up_and_free_again(database):
    async def scenario():
        async with Api(database) as api:
            first = await api.placed(idempotency_key="daily")
            api.now = api.now + timedelta(hours=25)
            removed = await api.app.state.oms.entry.expire_idempotency_keys()
            api.now = api.now - timedelta(hours=25)  # back in the session
            again = await api.placed(idempotency_key="daily")
            return first, removed, again

    first, removed, again = run(scenario)
    assert removed == 1
    assert again.order_id != first.order_id


def test_the_first_orders_of_a_trading_day_race_without_deadlock(database):
    """The day's partition of orders is made by the first order; racing first orders
    used to deadlock on it (one of them answered 500)."""

    async def scenario():
        async with Api(database, rate_limit_burst=100) as api:
            traders = [api.trader(user) for user in ("alice", "carol")]
            await asyncio.gather(*(t.place(order(quantity=1)) for t in traders * 15))
            return [s for t in traders for s in t.statuses]

    assert run(scenario) == [202] * 30
