"""Group commit (brokercore.entry.group_commit) on the real Postgres: the orders of
concurrent callers decided and written in one transaction, each still all-or-nothing, a
user's in arrival order, one order's failure its own, and a crash leaving nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import psycopg

from brokercore.broker.funding import open_account
from brokercore.db.migrations import apply_migrations
from brokercore.entry.order_entry import OrderReceipt, OrderRefused
from brokercore.entry.requests import PlaceOrderRequest
from oms_support import Api, run
from waiting import wait_until

NOTIONAL = 1_500_000 * 10  # paise: 10 RELIANCE at 15,000.00, the hold of `buy`


def buy(key: str, quantity: int = 10) -> PlaceOrderRequest:
    return PlaceOrderRequest("RELIANCE", "BUY", "LIMIT", quantity, key, Decimal("15000.00"))


def sell(key: str, quantity: int) -> PlaceOrderRequest:
    return PlaceOrderRequest("RELIANCE", "SELL", "LIMIT", quantity, key, Decimal("15000.00"))


async def together(api: Api, orders: list[tuple[str, PlaceOrderRequest]]) -> list:
    """The orders placed by concurrent callers, as the OMS's handlers call the batcher;
    each one's receipt or exception, in order."""
    return await asyncio.gather(
        *(api.app.state.oms.orders.place(user, request) for user, request in orders),
        return_exceptions=True,
    )


def batches(api: Api) -> int:
    return api.app.state.oms.orders.batches


def test_one_batch_of_many_users_holds_exactly_and_keeps_each_users_order(database):
    """20 users with cash for 3 of their 5 buys, and bob with 100 shares selling 40 three
    times, all in ONE batch, interleaved: each user's first three buys and bob's first
    two sells are accepted, the rest refused, and the holds are exact."""
    users = [f"user{n}" for n in range(20)]
    with psycopg.connect(database, autocommit=True) as conn:
        for user in users:
            open_account(conn, user, cash=3 * NOTIONAL + NOTIONAL // 2)
    orders = [(user, buy(f"{user}-{n}")) for n in range(5) for user in users]
    orders[7:7] = [("bob", sell(f"bob-{n}", 40)) for n in range(3)]

    async def scenario():
        async with Api(database) as api:
            return api, await together(api, orders), batches(api)

    api, answers, batch_count = run(scenario)
    assert batch_count == 1
    answer = {request.idempotency_key: a for (_, request), a in zip(orders, answers, strict=True)}
    for user in users:
        assert [isinstance(answer[f"{user}-{n}"], OrderReceipt) for n in range(5)] == [True] * 3 + [
            False
        ] * 2, [answer[f"{user}-{n}"] for n in range(5)]
        for n in (3, 4):
            assert answer[f"{user}-{n}"].reason == "INSUFFICIENT_FUNDS"
    assert [isinstance(answer[f"bob-{n}"], OrderReceipt) for n in range(3)] == [True, True, False]
    assert answer["bob-2"].reason == "INSUFFICIENT_HOLDINGS"
    assert (
        api.rows(
            "SELECT user_id, blocked_cash FROM accounts WHERE user_id LIKE 'user%%' "
            "AND blocked_cash <> %s",
            3 * NOTIONAL,
        )
        == []
    )
    assert api.rows("SELECT quantity, blocked_quantity FROM positions") == [(100, 80)]
    assert api.rows("SELECT count(*), count(DISTINCT order_id) FROM orders") == [(62, 62)]
    assert api.rows("SELECT count(*) FROM outbox") == api.rows("SELECT count(*) FROM order_events")
    assert api.rows("SELECT count(*) FROM outbox") == [(62,)]
    # each user's accepted orders got their ids and commands in arrival order
    for user in [*users, "bob"]:
        keys = api.rows(
            "SELECT k.key FROM idempotency_keys k JOIN outbox o ON o.order_id = k.order_id "
            "WHERE k.user_id = %s ORDER BY o.outbox_id, k.order_id",
            user,
        )
        assert keys == [(f"{user}-{n}",) for n in range(2 if user == "bob" else 3)]


def test_a_key_used_twice_in_one_batch_gives_one_order(database):
    """Two requests with one key and one body in a batch get one order; the same key with
    another body is refused; a retry later, alone, gets the same order back; once the
    key has expired, two requests with it in a batch get one new order."""

    async def scenario():
        async with Api(database) as api:
            first = await together(
                api,
                [
                    ("alice", buy("twice")),
                    ("carol", buy("twice")),  # another user's key is another key
                    ("alice", buy("twice")),
                    ("alice", buy("twice", quantity=20)),
                ],
            )
            alone = await api.app.state.oms.orders.place("alice", buy("twice"))
            api.now += timedelta(days=7)  # the key has expired: free for a new order
            later = await together(api, [("alice", buy("twice")), ("alice", buy("twice"))])
            return api, first, alone, later, batches(api)

    api, (a, c, again, other), alone, later, batch_count = run(scenario)
    assert batch_count == 3  # the batch, the lone retry at once, the batch a week later
    assert isinstance(a, OrderReceipt) and isinstance(c, OrderReceipt)
    assert isinstance(again, OrderReceipt) and again.order_id == a.order_id
    assert again.outbox is None  # the command goes with the first request
    assert isinstance(other, OrderRefused) and other.reason == "IDEMPOTENCY_KEY_REUSED"
    # nothing published it (no HTTP handler here): the lone retry gets its command again
    assert alone.order_id == a.order_id and alone.outbox == a.outbox
    assert later[0].order_id == later[1].order_id != a.order_id
    assert api.rows("SELECT count(*) FROM orders") == [(3,)]
    assert api.rows("SELECT order_id FROM idempotency_keys WHERE user_id = 'alice'") == [
        (later[0].order_id,)
    ]
    assert api.rows("SELECT user_id, blocked_cash FROM accounts WHERE cash > 0 ORDER BY 1") == [
        ("alice", 2 * NOTIONAL),
        ("carol", NOTIONAL),
    ]


def test_an_order_the_database_refuses_fails_alone(database):
    """A constraint added for the test refuses 7-share orders: the batch's write fails,
    its orders are placed again one by one, and only the 7-share order fails."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD CONSTRAINT test_no_seven CHECK (quantity <> 7)")
    orders = [
        ("alice", buy("a1")),
        ("carol", buy("c1", quantity=7)),
        ("alice", buy("a2", quantity=5)),
        ("bob", sell("b1", 30)),
        ("carol", buy("c2")),
    ]

    async def scenario():
        async with Api(database) as api:
            return api, await together(api, orders)

    api, answers = run(scenario)
    assert isinstance(answers[1], psycopg.errors.CheckViolation), answers
    placed = [a for n, a in enumerate(answers) if n != 1]
    assert all(isinstance(a, OrderReceipt) and a.outbox is not None for a in placed), answers
    assert api.rows("SELECT quantity FROM orders ORDER BY order_id") == [(10,), (5,), (30,), (10,)]
    assert api.rows("SELECT user_id, blocked_cash FROM accounts ORDER BY 1") == [
        ("alice", NOTIONAL * 3 // 2),
        ("bob", 0),
        ("carol", NOTIONAL),
    ]
    assert api.rows("SELECT blocked_quantity FROM positions") == [(30,)]
    assert api.rows("SELECT key FROM idempotency_keys ORDER BY 1") == [
        ("a1",),
        ("a2",),
        ("b1",),
        ("c2",),
    ]


def test_postgres_crashing_mid_batch_leaves_no_half_written_order(private_postgres):
    """The batch's write waits on a position's row lock (held by the test) after it has
    inserted keys and orders; Postgres then crashes. Every order of the batch fails as
    the single path fails with Postgres away; nothing of it is stored; the same
    requests placed again afterwards are each accepted once."""
    url = private_postgres.url
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        open_account(conn, "alice", cash=1_000_000 * 100)
        open_account(conn, "bob", shares={"RELIANCE": 100})
    orders = [("alice", buy("a1")), ("bob", sell("b1", 30)), ("alice", buy("a2"))]

    def blocked_on_the_position(conn: psycopg.Connection) -> bool:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%json_to_recordset%'"  # the batch's write, not its read
            ).fetchall()
        )

    async def scenario():
        async with Api(url, db_pool_timeout=2.0) as api:
            holder = psycopg.connect(url)
            holder.execute("SELECT * FROM positions FOR UPDATE")
            placing = asyncio.ensure_future(together(api, orders))
            with psycopg.connect(url, autocommit=True) as watcher:
                await asyncio.to_thread(
                    wait_until, lambda: blocked_on_the_position(watcher), "batch waiting"
                )
            await asyncio.to_thread(private_postgres.crash_restart)
            holder.close()  # its transaction died with the crash
            answers = await placing
            stored = api.rows(
                "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM idempotency_keys), "
                "(SELECT count(*) FROM outbox), (SELECT count(*) FROM order_events), "
                "(SELECT sum(blocked_cash) FROM accounts), "
                "(SELECT sum(blocked_quantity) FROM positions)"
            )
            again = await together(api, orders)
            return api, answers, stored, again

    api, answers, stored, again = run(scenario)
    assert all(isinstance(a, psycopg.OperationalError) for a in answers), answers
    assert stored == [(0, 0, 0, 0, 0, 0)]
    assert all(isinstance(a, OrderReceipt) for a in again), again
    assert api.rows("SELECT count(*) FROM orders") == [(3,)]
    assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
        (2 * NOTIONAL,)
    ]
