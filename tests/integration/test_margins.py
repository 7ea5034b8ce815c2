"""The margin preview (POST /api/v1/margins/orders, brokercore.entry.margins) on the OMS
with the real Postgres, Redis and Kafka: it answers what the real POST then holds and
refuses, its orders checked together, and stores nothing."""

from __future__ import annotations

import psycopg

from brokercore.broker.funding import open_account
from oms_support import SUNDAY, Api, auth, run

PREVIEW = "/api/v1/margins/orders"
LIMIT = {"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 10, "price": "15000"}
STORED = (
    "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), "
    "(SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM order_events), "
    "(SELECT sum(blocked_cash) FROM accounts), (SELECT sum(blocked_quantity) FROM positions)"
)
BLOCKED = "SELECT blocked_cash, blocked_shares FROM orders WHERE order_id = %s"


def order(**fields) -> dict:
    return LIMIT | fields


def test_a_preview_is_the_hold_the_real_post_then_takes(database):
    """A GTC limit, a stop-market and a market buy (held at their 5 % market protection:
    around the trigger 16,000, and the band's middle 15,000 before any trade) and a sell:
    the preview's blocks and totals, then each placed for real, its stored hold equal to
    the preview's; the previews themselves stored nothing."""
    buys = [
        order(price="15000.05", timeInForce="GTC"),
        order(type="STOP", quantity=1, price=None, triggerPrice="16000"),
        order(type="MARKET", quantity=1, price=None),
    ]
    sell = order(side="SELL", quantity=40)

    async def scenario():
        async with Api(database) as api:
            before = api.rows(STORED)
            previews = [
                await api.client.post(PREVIEW, json=buys, headers=auth("alice")),
                await api.client.post(PREVIEW, json=sell, headers=auth("bob")),
            ]
            after = api.rows(STORED)
            placed = [await api.place(**body) for body in buys]
            placed.append(await api.place(user="bob", **sell))
            return api, before, previews, after, placed

    api, before, previews, after, placed = run(scenario)
    assert after == before
    assert [r.status_code for r in previews] == [200, 200], [r.text for r in previews]
    bought, sold = (r.json() for r in previews)
    assert bought["orders"] == [
        {"symbol": "RELIANCE", "side": "BUY", "accepted": True, "blocks": {"cash": cash}}
        for cash in ("150000.50", "16800.00", "15750.00")
    ]
    assert bought["total"] == {"cash": "182550.50", "shares": {}}
    assert sold == {
        "orders": [
            {
                "symbol": "RELIANCE",
                "side": "SELL",
                "accepted": True,
                "blocks": {"shares": 40, "symbol": "RELIANCE"},
            }
        ],
        "total": {"cash": "0.00", "shares": {"RELIANCE": 40}},
    }
    assert [r.status_code for r in placed] == [202] * 4, [r.text for r in placed]
    held = [api.rows(BLOCKED, r.json()["orderId"]) for r in placed]
    assert held == [[(15_000_050, 0)], [(1_680_000, 0)], [(1_575_000, 0)], [(0, 40)]]


def test_orders_are_checked_together_and_refused_as_the_real_post_refuses(database):
    """Two buys of 750,000 each on 1,000,000: the second is refused in the preview with
    the code and message the real POST gives it after the first; likewise two sells of
    60 of bob's 100. A bad tick, an unverified account, a closed market and a user
    without an account are refused as the real POST refuses them."""
    with psycopg.connect(database, autocommit=True) as conn:
        open_account(conn, "pending", cash=10**8, kyc_status="PENDING")
    big = order(quantity=50)
    sells = [order(side="SELL", quantity=60), order(side="SELL", quantity=60)]
    odd = order(price="15000.03")

    async def scenario():
        async with Api(database) as api:

            async def both(user: str, body: dict | list) -> tuple[dict, list[dict]]:
                preview = await api.client.post(PREVIEW, json=body, headers=auth(user))
                assert preview.status_code == 200, preview.text
                real = [
                    await api.place(user=user, **b)
                    for b in (body if isinstance(body, list) else [body])
                ]
                return preview.json(), [r.json() for r in real]

            answers = [
                await both("alice", [big, big]),
                await both("bob", sells),
                await both("alice", odd),
                await both("pending", LIMIT),
            ]
            api.now = SUNDAY
            answers.append(await both("alice", LIMIT))
            nobody = await api.client.post(PREVIEW, json=LIMIT, headers=auth("nobody"))
            return answers, nobody

    answers, nobody = run(scenario)
    (funds, placed_funds), (holdings, placed_holdings), *refused = answers
    assert funds["orders"][0] == {
        "symbol": "RELIANCE",
        "side": "BUY",
        "accepted": True,
        "blocks": {"cash": "750000.00"},
    }
    assert funds["orders"][1]["accepted"] is False
    assert funds["orders"][1]["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert funds["orders"][1]["error"] == placed_funds[1]["error"]
    assert funds["total"] == {"cash": "750000.00", "shares": {}}
    assert holdings["orders"][1]["error"] == placed_holdings[1]["error"]
    assert holdings["orders"][1]["error"]["code"] == "INSUFFICIENT_HOLDINGS"
    assert holdings["total"] == {"cash": "0.00", "shares": {"RELIANCE": 60}}
    codes = []
    for preview, [real] in refused:
        [answer] = preview["orders"]
        assert answer["accepted"] is False and answer["error"] == real["error"], (answer, real)
        assert preview["total"] == {"cash": "0.00", "shares": {}}
        codes.append(answer["error"]["code"])
    assert codes == ["TICK_SIZE", "ACCOUNT_NOT_VERIFIED", "MARKET_CLOSED"]
    assert nobody.status_code == 403 and nobody.json()["error"]["code"] == "NO_ACCOUNT"


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
