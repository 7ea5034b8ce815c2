"""Cancel many (DELETE /api/v1/orders[?symbol=]) through the OMS's HTTP API on the real
Postgres and Kafka: the caller's open orders only, one symbol's with ``symbol=``, the
bound per request, bad input refused, and racing fills, with the engine daemons and
settlement running."""

from __future__ import annotations

import asyncio

import psycopg

from brokercore.consumers.reconcile import check_invariants
from brokercore.entry.cancel_many import cancel_many
from brokercore.kafka.messages import CancelOrder
from brokercore.kafka.topics import partition_of
from brokercore.services.reconciler import market_sessions
from kafka_support import Daemon
from oms_support import Api, auth, run
from platform_support import INSTRUMENTS, platform

RUPEE = 100
OPEN = "('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED')"


async def cancel_all(api: Api, user: str = "alice", query: str = ""):
    return await api.client.delete(f"/api/v1/orders{query}", headers=auth(user))


BAD = [
    ("alice", "?symbol=NOPE", 422, "UNKNOWN_SYMBOL"),
    ("alice", "?symbol=", 422, "UNKNOWN_SYMBOL"),
    ("alice", "?sym=RELIANCE", 422, "INVALID_REQUEST"),
    ("alice", "?symbol=RELIANCE&symbol=TCS", 422, "INVALID_REQUEST"),
    ("nobody", "", 403, "NO_ACCOUNT"),
]


def test_bad_input_is_refused_in_the_error_shape_and_cancels_nothing(database):
    async def scenario():
        async with Api(database) as api:
            placed = await api.place()
            answers = [await cancel_all(api, user, query) for user, query, _, _ in BAD]
            return api, placed.json()["orderId"], answers

    api, order, answers = run(scenario)
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
        (status, code) for _, _, status, code in BAD
    ]
    assert api.rows("SELECT count(*) FROM order_events WHERE order_id = %s", order) == [(1,)]
    assert api.rows("SELECT count(*) FROM outbox") == [(1,)], "only the order's own command"


def test_one_request_cancels_at_most_its_bound_and_the_next_goes_on_from_there(database):
    """Without an engine the orders stay PENDING: each is asked to cancel once, its
    command in the outbox and on Kafka, across the requests the bound splits it into."""

    async def scenario():
        async with Api(database) as api:
            ids = [(await api.place(quantity=1)).json()["orderId"] for _ in range(3)]
            oms = api.app.state.oms
            first = await cancel_many(oms.entry, "alice", None, limit=2)
            oms.publisher.submit(first.outbox)
            rest = await cancel_all(api)
            again = await cancel_all(api)
            return api, ids, first.answer, rest, again

    api, ids, first, rest, again = run(scenario)
    assert [o.order_id for o in first.orders] == ids[:2] and first.more
    assert rest.status_code == 202
    assert rest.json() == {
        "orders": [{"orderId": ids[2], "status": "CANCEL_REQUESTED"}],
        "more": False,
    }
    assert again.json() == {"orders": [], "more": False}, "each order is asked once"
    cancels = [c.order_id for c in api.commands() if isinstance(c, CancelOrder)]
    assert sorted(cancels) == ids
    assert api.rows(
        "SELECT order_id, status FROM order_events WHERE payload->>'request' = 'cancel' "
        "ORDER BY order_id"
    ) == [(i, "PENDING") for i in ids]


def test_cancel_all_takes_the_callers_open_orders_of_every_symbol_or_of_one(database, tmp_path):
    with platform(database, tmp_path) as api:
        tcs = Daemon(
            api.kafka,
            partition_of("TCS", api.kafka.shards),
            INSTRUMENTS,
            tmp_path / "engine-tcs.log",
        )
        try:
            tcs.wait_for("active from")

            async def place():
                async with api:
                    answers = [
                        await api.place(quantity=2, timeInForce="GTC"),
                        await api.place(
                            type="STOP_LIMIT", price="15100.00", triggerPrice="15100.00"
                        ),
                        await api.place(symbol="TCS", price="20000.00"),
                        await api.place(user="carol", quantity=3),
                    ]
                    return [a.json()["orderId"] for a in answers]

            reliance, stop, tcs_order, carols = run(place)
            api.wait_rows(
                "SELECT order_id, status FROM orders ORDER BY 1",
                [
                    (reliance, "OPEN"),
                    (stop, "TRIGGER_PENDING"),
                    (tcs_order, "OPEN"),
                    (carols, "OPEN"),
                ],
            )

            async def cancel(query: str):
                async with api:
                    return await cancel_all(api, query=query)

            one = run(lambda: cancel("?symbol=TCS"))
            assert one.status_code == 202
            assert one.json() == {
                "orders": [{"orderId": tcs_order, "status": "CANCEL_REQUESTED"}],
                "more": False,
            }
            api.wait_rows(
                "SELECT status FROM orders WHERE order_id = %s", [("CANCELLED",)], tcs_order
            )
            every = run(lambda: cancel(""))
            assert [o["orderId"] for o in every.json()["orders"]] == [reliance, stop]
            api.wait_rows(
                "SELECT user_id, o.status FROM orders o JOIN accounts USING (account_id) "
                "ORDER BY order_id",
                [("alice", "CANCELLED")] * 3 + [("carol", "OPEN")],
            )
            assert api.rows("SELECT user_id, blocked_cash FROM accounts ORDER BY 1") == [
                ("alice", 0),
                ("bob", 0),
                ("carol", 3 * 15_000 * RUPEE),
            ], "alice's holds released, carol's untouched"
        finally:
            tcs.close()


def test_cancel_all_racing_fills_ends_every_order_filled_or_cancelled(database, tmp_path):
    with platform(database, tmp_path) as api:

        async def buy():
            async with api:
                answers = [await api.place(quantity=5, timeInForce="GTC") for _ in range(12)]
                return [a.json()["orderId"] for a in answers]

        buys = run(buy)
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'PENDING'", [(0,)])

        async def race():
            async with api:
                sells = [
                    api.place(
                        user="bob", side="SELL", quantity=7, price="15000.00", timeInForce="IOC"
                    )
                    for _ in range(6)
                ]
                answers = await asyncio.gather(*sells[:3], cancel_all(api), *sells[3:])
                assert {a.status_code for a in answers} == {202}, [a.text for a in answers]

        run(race)
        api.wait_rows(f"SELECT count(*) FROM orders WHERE status IN {OPEN}", [(0,)])
        statuses = dict(api.rows("SELECT order_id, status FROM orders WHERE side = 'BUY'"))
        assert set(statuses) == set(buys)
        assert set(statuses.values()) <= {"FILLED", "CANCELLED"}
        assert api.rows("SELECT sum(blocked_cash), sum(cash) FROM accounts") == [
            (0, 2 * 1_000_000 * RUPEE)
        ], "every hold released, cash conserved"
        assert api.rows("SELECT sum(blocked_quantity), sum(quantity) FROM positions") == [(0, 100)]
        with psycopg.connect(database) as conn:
            assert check_invariants(conn, market_sessions(api.settings), api.now) == []
