"""Money and shares under concurrency, on the real Postgres through the real OMS: many
clients at once on the same few accounts must never block more than is there, and the
database itself refuses a state that breaks an invariant."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import psycopg
import pytest

from brokercore.broker.funding import FundingKind, fund
from brokercore.broker.market import load_market
from brokercore.client import ApiError
from brokercore.consumers.reconcile import check_invariants
from brokercore.entry.requests import OrderAccepted
from oms_support import Api, Trader, order, outcome, run
from platform_support import INSTRUMENTS, money, platform

RUPEE = 100

SESSIONS = {symbol: instrument.session for symbol, instrument in load_market(INSTRUMENTS).items()}


def broken_invariants(api: Api) -> list:
    """What the reconciler would report as broken, at the API's clock."""
    with psycopg.connect(api.database) as conn:
        return [str(f) for f in check_invariants(conn, SESSIONS, api.now)]


def test_concurrent_sells_never_block_more_shares_than_are_held(database):
    """bob holds 100 RELIANCE: of 20 concurrent sells of 60, exactly one fits."""

    async def scenario():
        async with Api(database, rate_limit_burst=1000) as api:
            bob = api.trader("bob")
            answers = await asyncio.gather(
                *(outcome(bob.place(order(side="SELL", quantity=60))) for _ in range(20))
            )
            return api, answers, bob.statuses

    api, answers, statuses = run(scenario)
    assert sorted(statuses) == [202] + [422] * 19, answers
    assert {a.code for a in answers if isinstance(a, ApiError)} == {"INSUFFICIENT_HOLDINGS"}
    assert api.rows("SELECT quantity, blocked_quantity FROM positions") == [(100, 60)]
    assert broken_invariants(api) == []


def test_concurrent_buys_and_sells_with_cancels_keep_every_invariant(database, tmp_path):
    """Hundreds of orders from concurrent clients on three accounts, random sizes, some
    crossing (filled through the real engine and settlement), some cancelled while
    others are placed: afterwards every hold matches its open orders, nothing is
    oversold, and cash and shares are conserved."""
    with psycopg.connect(database, autocommit=True) as conn:  # all buy, sell and hold
        ids = dict(conn.execute("SELECT user_id, account_id FROM accounts").fetchall())
        fund(conn, ids["bob"], FundingKind.DEPOSIT, amount=1_000_000 * RUPEE)
        for user in ("alice", "carol"):
            fund(conn, ids[user], FundingKind.SHARES_IN, symbol="RELIANCE", quantity=150)
    rng = random.Random(11)
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        before = money(api)

        async def client(name: str, orders: int) -> list:
            """One client of ``name``'s, its random orders and cancels: each place's HTTP
            status and answer (or refusal)."""
            answers: list = []
            async with Trader(name, api.transport) as trader:
                for _ in range(orders):
                    if answers and rng.random() < 0.25:
                        _, placed = rng.choice(answers)
                        if isinstance(placed, OrderAccepted):
                            await outcome(trader.cancel(placed.order_id))
                        continue
                    side = rng.choice(["BUY", "SELL"])
                    price = f"{15_000 + rng.randint(-3, 3) * 0.05:.2f}"
                    new = order(side=side, price=price, quantity=rng.randint(1, 40))
                    answer = await outcome(trader.place(new))
                    answers.append((trader.statuses[-1], answer))
            return answers

        async def load():
            async with api:
                return await asyncio.gather(
                    *(client(user, 30) for user in ("alice", "bob", "carol") for _ in range(6))
                )

        seen, done = set(), threading.Event()

        def watch():  # every invariant holds at every commit, not only at the end
            while not done.is_set():
                seen.update(broken_invariants(api))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            answers = [a for batch in run(load) for a in batch]
        finally:
            done.set()
            watcher.join()
        assert seen == set()
        assert {status for status, _ in answers} <= {202, 422}, answers
        accepted = sum(status == 202 for status, _ in answers)
        assert accepted > 50 and api.rows("SELECT count(*) FROM fills")[0][0] > 0
        deadline = time.monotonic() + 60
        while api.rows("SELECT count(*) FROM orders WHERE status = 'PENDING'") != [(0,)]:
            assert time.monotonic() < deadline, "orders still PENDING after 60 s"
            time.sleep(0.2)
        time.sleep(1.0)  # the last cancels' events settle
        assert broken_invariants(api) == []
        after = money(api)
        assert (after[0], after[3]) == (before[0], before[3]), (
            "cash and shares are conserved (no fees configured)"
        )


@pytest.mark.parametrize(
    "statement, constraint",
    [
        ("UPDATE positions SET blocked_quantity = quantity + 1", "positions_blocked_within_held"),
        ("UPDATE positions SET quantity = -5, blocked_quantity = 0", "positions_no_short"),
        (
            "UPDATE accounts SET blocked_cash = cash + 1 WHERE user_id = 'alice'",
            "accounts_blocked_cash_within_cash",
        ),
        ("UPDATE accounts SET cash = -1, blocked_cash = 0 WHERE user_id = 'alice'", "accounts_"),
    ],
)
def test_postgres_refuses_a_state_that_breaks_an_invariant(database, statement, constraint):
    """A future bug becomes an error, never a short sale: bob cannot short."""
    with psycopg.connect(database) as conn, pytest.raises(psycopg.errors.IntegrityError) as e:
        conn.execute(statement)
    assert constraint in str(e.value)


def test_an_account_that_may_short_can_go_below_zero(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE accounts SET allow_short = true WHERE user_id = 'bob'")
        conn.execute("UPDATE positions SET quantity = -5")
        assert conn.execute("SELECT quantity FROM positions").fetchall() == [(-5,)]
        with pytest.raises(psycopg.errors.IntegrityError):  # ... but not stop shorting
            conn.execute("UPDATE accounts SET allow_short = false WHERE user_id = 'bob'")
