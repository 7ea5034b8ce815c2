"""The margin preview (POST /api/v1/margins/orders, brokercore.entry.margins) on the OMS
with the real Postgres, Redis and Kafka: it answers what the real POST then holds and
refuses, its orders checked together, and stores nothing."""

from __future__ import annotations

import psycopg
import pytest

from brokercore.broker.funding import open_account
from brokercore.client import ApiError
from brokercore.entry.requests import Blocks, ErrorDetail, MarginTotal, OrderMargin
from oms_support import SUNDAY, Api, auth, order, run

PREVIEW = "/api/v1/margins/orders"
LIMIT = {"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 10, "price": "15000"}
STORED = (
    "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), "
    "(SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM order_events), "
    "(SELECT sum(blocked_cash) FROM accounts), (SELECT sum(blocked_quantity) FROM positions)"
)
BLOCKED = "SELECT blocked_cash, blocked_shares FROM orders WHERE order_id = %s"


def test_a_preview_is_the_hold_the_real_post_then_takes(database):
    """A GTC limit, a stop-market and a market buy (held at their 5 % market protection:
    around the trigger 16,000, and the band's middle 15,000 before any trade) and a sell:
    the preview's blocks and totals, then each placed for real, its stored hold equal to
    the preview's; the previews themselves stored nothing."""
    buys = [
        order(price="15000.05", time_in_force="GTC"),
        order(type="STOP", quantity=1, price=None, trigger_price="16000"),
        order(type="MARKET", quantity=1, price=None),
    ]
    sell = order(side="SELL", quantity=40)

    async def scenario():
        async with Api(database) as api:
            alice, bob = api.trader("alice"), api.trader("bob")
            before = api.rows(STORED)
            previews = [await alice.margin(buys), await bob.margin(sell)]
            after = api.rows(STORED)
            placed = [await alice.place(body) for body in buys]
            placed.append(await bob.place(sell))
            return api, before, previews, after, placed, alice.statuses + bob.statuses

    api, before, previews, after, placed, statuses = run(scenario)
    assert after == before
    assert statuses == [200, 202, 202, 202, 200, 202]
    bought, sold = previews
    assert bought.orders == [
        OrderMargin("RELIANCE", "BUY", True, Blocks(cash=cash))
        for cash in ("150000.50", "16800.00", "15750.00")
    ]
    assert bought.total == MarginTotal("182550.50", {})
    assert sold.orders == [
        OrderMargin("RELIANCE", "SELL", True, Blocks(shares=40, symbol="RELIANCE"))
    ]
    assert sold.total == MarginTotal("0.00", {"RELIANCE": 40})
    held = [api.rows(BLOCKED, r.order_id) for r in placed]
    assert held == [[(15_000_050, 0)], [(1_680_000, 0)], [(1_575_000, 0)], [(0, 40)]]


def test_orders_are_checked_together_and_refused_as_the_real_post_refuses(database):
    """Two buys of 750,000 each on 1,000,000: the second is refused in the preview with
    the code and message the real POST gives it after the first; likewise two sells of
    60 of bob's 100. A bad tick, an unverified account, a closed market and a user
    without an account are refused as the real POST refuses them."""
    with psycopg.connect(database, autocommit=True) as conn:
        open_account(conn, "pending", cash=10**8, kyc_status="PENDING")
    big = [order(quantity=50), order(quantity=50)]
    sells = [order(side="SELL", quantity=60), order(side="SELL", quantity=60)]
    odd = order(price="15000.03")

    async def scenario():
        async with Api(database) as api:

            async def both(user: str, body):
                """The preview, and what the real POST of each order answers: its
                OrderAccepted, or its refusal as an ErrorDetail."""
                trader = api.trader(user)
                preview = await trader.margin(body)
                assert trader.statuses[-1] == 200
                real = []
                for b in body if isinstance(body, list) else [body]:
                    try:
                        real.append(await trader.place(b))
                    except ApiError as e:
                        real.append(ErrorDetail(e.code, e.message))
                return preview, real

            answers = [
                await both("alice", big),
                await both("bob", sells),
                await both("alice", odd),
                await both("pending", order()),
            ]
            api.now = SUNDAY
            answers.append(await both("alice", order()))
            with pytest.raises(ApiError) as nobody:
                await api.trader("nobody").margin(order())
            return answers, nobody.value

    answers, nobody = run(scenario)
    (funds, placed_funds), (holdings, placed_holdings), *refused = answers
    assert funds.orders[0] == OrderMargin("RELIANCE", "BUY", True, Blocks(cash="750000.00"))
    assert funds.orders[1].accepted is False
    assert funds.orders[1].error.code == "INSUFFICIENT_FUNDS"
    assert funds.orders[1].error == placed_funds[1]
    assert funds.total == MarginTotal("750000.00", {})
    assert holdings.orders[1].error == placed_holdings[1]
    assert holdings.orders[1].error.code == "INSUFFICIENT_HOLDINGS"
    assert holdings.total == MarginTotal("0.00", {"RELIANCE": 60})
    codes = []
    for preview, [real] in refused:
        [answer] = preview.orders
        assert answer.accepted is False and answer.error == real, (answer, real)
        assert preview.total == MarginTotal("0.00", {})
        codes.append(answer.error.code)
    assert codes == ["TICK_SIZE", "ACCOUNT_NOT_VERIFIED", "MARKET_CLOSED"]
    assert (nobody.status, nobody.code) == (403, "NO_ACCOUNT")


def test_bad_bodies_get_the_json_error_naming_the_field_and_store_nothing(database):
    cases = [
        (b"{not json", 400, "MALFORMED_JSON", None),
        (b"[]", 422, "INVALID_REQUEST", "body"),
        (b'{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT"}', 422, "INVALID_REQUEST", None),
        (
            b'[{"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 1, '
            b'"price": "1"}, {"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", '
            b'"quantity": 0}]',
            422,
            "INVALID_REQUEST",
            "[1].quantity",
        ),
        (
            b'{"symbol": "X", "side": "HOLD", "type": "LIMIT", "quantity": 1}',
            422,
            "INVALID_REQUEST",
            "side",
        ),
        (
            b'{"symbol": "X", "side": "BUY", "type": "LIMIT", "quantity": 1, "leverage": 5}',
            422,
            "INVALID_REQUEST",
            None,
        ),
        (
            b"["
            + b",".join([b'{"symbol": "X", "side": "BUY", "type": "MARKET", "quantity": 1}'] * 51)
            + b"]",
            422,
            "INVALID_REQUEST",
            "body",
        ),
    ]

    async def scenario():
        async with Api(database, rate_limit_burst=100) as api:
            before = api.rows(STORED)
            answers = []
            for body, *_ in cases:
                answers.append(
                    await api.client.post(
                        PREVIEW,
                        content=body,
                        headers=auth("alice") | {"Content-Type": "application/json"},
                    )
                )
            unsigned = await api.client.post(PREVIEW, json=LIMIT)
            return answers, unsigned, before, api.rows(STORED)

    answers, unsigned, before, after = run(scenario)
    assert after == before
    for (body, status, code, field), answer in zip(cases, answers, strict=True):
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert error["code"] == code and error["message"], error
        if field is not None:
            assert error["fields"][0]["field"] == field, (body, error)
    assert unsigned.status_code == 401
