"""The OMS's KYC check on both of its write paths (brokercore.entry.order_entry): an order
alone (``place``, the group commit's fallback) and a batch of many users' orders
(``place_batch``): an account that is not VERIFIED gets ACCOUNT_NOT_VERIFIED, nothing of
its order is stored, and the other orders of its batch are decided as without it."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from brokercore.broker.funding import open_account
from brokercore.entry.order_entry import OrderReceipt, OrderRefused, Refusal
from brokercore.entry.requests import PlaceOrderRequest
from oms_support import Api, run

CASH = 1_000_000 * 100  # paise


def buy(key: str) -> PlaceOrderRequest:
    return PlaceOrderRequest("RELIANCE", "BUY", "LIMIT", 10, key, Decimal("15000.00"))


def open_accounts(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        open_account(conn, "pending", cash=CASH, kyc_status="PENDING")
        open_account(conn, "rejected", cash=CASH, kyc_status="REJECTED")


def test_an_order_alone_of_an_unverified_account_is_refused(database):
    open_accounts(database)

    async def scenario():
        async with Api(database) as api:
            refused = []
            for user in ("pending", "rejected"):
                with pytest.raises(OrderRefused) as info:
                    await api.app.state.oms.entry.place(user, buy("k1"))
                refused.append(info.value.reason)
            accepted = await api.app.state.oms.entry.place("alice", buy("k1"))
            return api, refused, accepted

    api, refused, accepted = run(scenario)
    assert refused == [Refusal.ACCOUNT_NOT_VERIFIED] * 2
    assert isinstance(accepted, OrderReceipt)
    assert api.rows("SELECT a.user_id FROM orders o JOIN accounts a USING (account_id)") == [
        ("alice",)
    ]
    assert api.rows("SELECT user_id FROM idempotency_keys") == [("alice",)]
    assert api.rows(
        "SELECT blocked_cash FROM accounts WHERE user_id IN ('pending', 'rejected')"
    ) == [(0,), (0,)]


def test_a_batch_refuses_only_the_unverified_accounts_orders(database):
    open_accounts(database)
    orders = [
        (user, buy(f"{user}-{n}"))
        for n in range(2)
        for user in ("alice", "pending", "carol", "rejected")
    ]

    async def scenario():
        async with Api(database) as api:
            return api, await api.app.state.oms.entry.place_batch(orders)

    api, answers = run(scenario)
    decided = {
        request.idempotency_key: answer
        for (_, request), answer in zip(orders, answers, strict=True)
    }
    for key, answer in decided.items():
        if key.startswith(("pending", "rejected")):
            assert isinstance(answer, OrderRefused), answer
            assert answer.reason is Refusal.ACCOUNT_NOT_VERIFIED
        else:
            assert isinstance(answer, OrderReceipt), answer
    assert api.rows("SELECT count(*) FROM orders") == [(4,)]
    assert api.rows("SELECT count(*) FROM outbox") == [(4,)]
    assert sorted(api.rows("SELECT DISTINCT user_id FROM idempotency_keys")) == [
        ("alice",),
        ("carol",),
    ]
