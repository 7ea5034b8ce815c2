"""Cancel many (DELETE /api/v1/orders[?symbol=]) through the OMS's HTTP API on the real
Postgres and Kafka: the caller's open orders only, one symbol's with ``symbol=``, the
bound per request, bad input refused, and racing fills, with the engine daemons and
settlement running."""

from __future__ import annotations

import asyncio

import psycopg

from brokercore.consumers.reconcile import check_invariants
from brokercore.entry.cancel_many import cancel_many
from brokercore.entry.requests import CancelRequested, CancelsRequested
from brokercore.kafka.messages import CancelOrder
from brokercore.kafka.topics import partition_of
from brokercore.services.reconciler import market_sessions
from kafka_support import Daemon
from oms_support import Api, auth, order, refusal, run
from platform_support import INSTRUMENTS, platform

RUPEE = 100
OPEN = "('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED')"


def requested(*orders: int, more: bool = False) -> CancelsRequested:
    return CancelsRequested([CancelRequested(o, "CANCEL_REQUESTED") for o in orders], more)


MALFORMED = [  # queries the client cannot send
    ("?symbol=", 422, "UNKNOWN_SYMBOL"),
    ("?sym=RELIANCE", 422, "INVALID_REQUEST"),
    ("?symbol=RELIANCE&symbol=TCS", 422, "INVALID_REQUEST"),
]
REFUSED = [("alice", "NOPE", 422, "UNKNOWN_SYMBOL"), ("nobody", None, 403, "NO_ACCOUNT")]


def test_bad_input_is_refused_in_the_error_shape_and_cancels_nothing(database):
    async def scenario():
        async with Api(database) as api:
            placed = await api.trader("alice").place(order())
            raw = [
                await api.client.delete(f"/api/v1/orders{query}", headers=auth("alice"))
                for query, _, _ in MALFORMED
            ]
            refused = [
                await refusal(api.trader(user).cancel_all(symbol)) for user, symbol, _, _ in REFUSED
            ]
            return api, placed.order_id, raw, refused

    api, placed, raw, refused = run(scenario)
    assert [(a.status_code, a.json()["error"]["code"]) for a in raw] == [
        (status, code) for _, status, code in MALFORMED
    ]
    assert refused == [(status, code) for _, _, status, code in REFUSED]
    assert api.rows("SELECT count(*) FROM order_events WHERE order_id = %s", placed) == [(1,)]
    assert api.rows("SELECT count(*) FROM outbox") == [(1,)], "only the order's own command"


def test_one_request_cancels_at_most_its_bound_and_the_next_goes_on_from_there(database):
    """Without an engine the orders stay PENDING: each is asked to cancel once, its
    command in the outbox and on Kafka, across the requests the bound splits it into."""

    async def scenario():
        async with Api(database) as api:
            alice = api.trader("alice")
            ids = [(await alice.place(order(quantity=1))).order_id for _ in range(3)]
            oms = api.app.state.oms
            first = await cancel_many(oms.entry, "alice", None, limit=2)
            oms.publisher.submit(first.outbox)
            rest = await alice.cancel_all()
            again = await alice.cancel_all()
            return api, ids, first.answer, rest, again, alice.statuses

    api, ids, first, rest, again, statuses = run(scenario)
    assert [o.order_id for o in first.orders] == ids[:2] and first.more
    assert rest == requested(ids[2]) and statuses[-2:] == [202, 202]
    assert again == requested(), "each order is asked once"
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
                    alice = api.trader("alice")
                    answers = [
                        await alice.place(order(quantity=2, time_in_force="GTC")),
                        await alice.place(
                            order(type="STOP_LIMIT", price="15100.00", trigger_price="15100.00")
                        ),
                        await alice.place(order(symbol="TCS", price="20000.00")),
                        await api.trader("carol").place(order(quantity=3)),
                    ]
                    return [a.order_id for a in answers]

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

            async def cancel(symbol: str | None):
                async with api:
                    alice = api.trader("alice")
                    return await alice.cancel_all(symbol), alice.statuses

            assert run(lambda: cancel("TCS")) == (requested(tcs_order), [202])
            api.wait_rows(
                "SELECT status FROM orders WHERE order_id = %s", [("CANCELLED",)], tcs_order
            )
            every, _ = run(lambda: cancel(None))
            assert [o.order_id for o in every.orders] == [reliance, stop]
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
                alice = api.trader("alice")
                answers = [
                    await alice.place(order(quantity=5, time_in_force="GTC")) for _ in range(12)
                ]
                return [a.order_id for a in answers]

        buys = run(buy)
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'PENDING'", [(0,)])

        async def race():
            async with api:
                bob = api.trader("bob")
                sells = [
                    bob.place(order(side="SELL", quantity=7, time_in_force="IOC")) for _ in range(6)
                ]
                alice = api.trader("alice")
                await asyncio.gather(*sells[:3], alice.cancel_all(), *sells[3:])
                assert bob.statuses + alice.statuses == [202] * 7

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
