"""Bracket orders (docs/brackets.md) through the OMS's HTTP API on the real Postgres and
Kafka: bad input and the API; with the engine daemon, settlement and the trigger service
(a subprocess, as tests/integration/test_gtt.py runs it): an entry filled and its target
filled (the stop-loss never placed); an entry partly filled (a leg for that part), then
its stop-loss met while the rest fills (the target cancelled, the stop-loss sells the
whole position); an entry cancelled, and a bracket exited (its legs cancelled, the bracket
CANCELLED); a kill -9 of the trigger service while it places legs (each leg once); the
stop-loss met and the target filled in one batch (no stop-loss order: nothing sold
twice); a sell entry with a stop-limit, and the close with legs open (EXPIRED)."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import psycopg
from test_gtt import trade, triggers

from brokercore.broker.funding import open_account
from brokercore.consumers.reconcile import check_invariants
from brokercore.entry.requests import BracketList, NewBracket
from brokercore.kafka.messages import CloseSession, OpenSession
from brokercore.services.reconciler import market_sessions
from kafka_support import OrderProducer
from oms_support import Api, auth, order, refusal, run
from platform_support import platform

ALICES_SHARES = (
    "SELECT coalesce(sum(quantity), 0) FROM positions JOIN accounts USING (account_id) "
    "WHERE user_id = 'alice'"
)


def bracket(**more):
    return {
        "symbol": "RELIANCE",
        "side": "BUY",
        "quantity": 10,
        "price": "15000.00",
        "target": "15100.00",
        "stopLoss": "14900.00",
        "idempotencyKey": uuid.uuid4().hex,
    } | more


def new(body: dict) -> NewBracket:
    """The well-formed ``body`` as the client sends it."""
    return msgspec.convert(body, NewBracket)


async def create(api: Api, body):
    """POST ``body`` as it is, well-formed or not."""
    return await api.client.post("/api/v1/brackets", json=body, headers=auth("alice"))


BAD = [
    ({"symbol": "RELIANCE"}, 422, "INVALID_REQUEST"),
    (bracket(target="14950.00"), 422, "BRACKET_INVALID_PRICES"),  # target below the price
    (bracket(side="SELL"), 422, "BRACKET_INVALID_PRICES"),  # a sell's target is below
    (bracket(stopLimit="14950.00"), 422, "BRACKET_INVALID_PRICES"),  # above the stop-loss
    (bracket(target="15100.01"), 422, "TICK_SIZE"),
    (bracket(stopLoss="sNaN"), 422, "INVALID_PRICE"),
    (bracket(price="0"), 422, "INVALID_PRICE"),
    (bracket(symbol="NOPE"), 422, "UNKNOWN_SYMBOL"),
    (bracket(quantity=0), 422, "INVALID_REQUEST"),
]


def test_bracket_api_bad_input_retry_and_exit(database):
    async def scenario():
        async with Api(database, rate_limit_burst=10_000) as api:
            alice, bob = api.trader("alice"), api.trader("bob")
            a: dict = {"bad": [await create(api, body) for body, _, _ in BAD]}
            a["nobody"] = await refusal(api.trader("nobody").create_bracket(new(bracket())))
            body = bracket(stopLimit="14890.00")
            made = a["made"] = await alice.create_bracket(new(body))
            a["again"] = await alice.create_bracket(new(body))
            a["reused"] = await refusal(alice.create_bracket(new(body | {"target": "15200.00"})))
            x1 = await api.client.get("/api/v1/brackets/x1", headers=auth("alice"))
            a["others"] = [
                await refusal(bob.bracket(made.bracket_id)),
                await refusal(bob.exit_bracket(made.bracket_id)),
                (x1.status_code, x1.json()["error"]["code"]),
            ]
            a["exit"] = await alice.exit_bracket(made.bracket_id)
            a["exit_again"] = await refusal(alice.exit_bracket(made.bracket_id))
            return api, a, alice.statuses

    api, a, statuses = run(scenario)
    assert [(r.status_code, r.json()["error"]["code"]) for r in a["bad"]] == [
        (status, code) for _, status, code in BAD
    ]
    assert a["nobody"] == (403, "NO_ACCOUNT")
    made = a["made"]
    assert statuses == [201, 201, 422, 200, 409]
    assert (made.price, made.target, made.stop_loss, made.stop_limit, made.status) == (
        "15000.00",
        "15100.00",
        "14900.00",
        "14890.00",
        "ACTIVE",
    )
    assert made.targets == []
    assert a["again"] == made, "a retry: the same"
    assert a["reused"][1] == "IDEMPOTENCY_KEY_REUSED"
    assert a["others"] == [
        (404, "BRACKET_NOT_FOUND"),
        (404, "BRACKET_NOT_FOUND"),
        (404, "BRACKET_NOT_FOUND"),
    ]
    assert a["exit"].status == "EXITING"
    assert a["exit_again"] == (409, "BRACKET_NOT_ACTIVE")
    assert api.rows("SELECT count(*) FROM brackets") == [(1,)], "nothing stored for a refusal"
    assert api.rows("SELECT side, quantity, price, status FROM orders") == [
        ("BUY", 10, 15000 * 100, "PENDING")
    ], "one entry order, its hold taken"


BAD_LISTS = [
    "status=DONE2",
    "status=ACTIVE&status=DONE",
    "limit=0",
    "limit=201",
    "limit=x",
    "cursor=0",
    "cursor=99999999999999999999",
    "before=5",
]


def test_bracket_list_pages_a_users_own_newest_first(database):
    """GET /api/v1/brackets: only the caller's, newest first, of one status, a page at
    a time (the last page has no cursor); a bad query is a 422 naming its parameter."""

    async def scenario():
        async with Api(database, rate_limit_burst=10_000) as api:
            alice, carol = api.trader("alice"), api.trader("carol")
            first = await made(api)
            carols = await carol.create_bracket(new(bracket()))
            middle = await made(api)
            last = await made(api)
            exited = await alice.exit_bracket(middle)
            a = {"all": await alice.brackets(), "carol": await carol.brackets()}
            a["exiting"] = await alice.brackets("EXITING")
            a["active"] = await alice.brackets("ACTIVE")
            a["page_1"] = await alice.brackets(limit=2)
            a["page_2"] = await alice.brackets(limit=2, cursor=a["page_1"].next_cursor)
            bad = []
            for query in BAD_LISTS:
                answer = await api.client.get(f"/api/v1/brackets?{query}", headers=auth("alice"))
                bad.append((answer.status_code, answer.json()))
            return (first, middle, last), carols, exited, a, bad

    (first, middle, last), carols, exited, a, bad = run(scenario)
    ids = {name: [b.bracket_id for b in page.brackets] for name, page in a.items()}
    assert ids["all"] == [last, middle, first]
    assert a["all"].next_cursor is None
    assert a["all"].brackets[1] == exited, "as GET /api/v1/brackets/{id} shows it"
    assert a["carol"] == BracketList([carols], None)
    assert ids["exiting"] == [middle] and ids["active"] == [last, first]
    assert (ids["page_1"], a["page_1"].next_cursor) == ([last, middle], str(middle))
    assert (ids["page_2"], a["page_2"].next_cursor) == ([first], None)
    assert [
        (status, body["error"]["code"], body["error"]["fields"][0]["field"]) for status, body in bad
    ] == [(422, "INVALID_REQUEST", q.partition("=")[0]) for q in BAD_LISTS]
    assert "CANCELLED" in bad[0][1]["error"]["fields"][0]["message"], "the statuses named"


# --- with the engine, settlement and the trigger service ------------------------------


def state(api: Api, bracket_id: int):
    """(status, [(target quantity, its order's status, filled)], stop quantity, stop's
    order status and filled)."""
    [(status, stop_quantity, stop_status, stop_filled)] = api.rows(
        "SELECT b.status, b.stop_quantity, o.status, o.filled_quantity FROM brackets b "
        "LEFT JOIN orders o ON o.order_id = b.stop_order_id WHERE b.bracket_id = %s",
        bracket_id,
    )
    legs = api.rows(
        "SELECT t.quantity, o.status, o.filled_quantity FROM bracket_targets t "
        "LEFT JOIN orders o USING (order_id) WHERE t.bracket_id = %s ORDER BY t.seq",
        bracket_id,
    )
    return status, legs, stop_quantity, stop_status, stop_filled


def wait_state(api: Api, bracket_id: int, expected, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (now := state(api, bracket_id)) != expected:
        assert time.monotonic() < deadline, f"{now} is not {expected}"
        time.sleep(0.05)


async def until(api: Api, bracket_id: int, expected) -> None:
    """``wait_state`` off the event loop (the OMS's publisher runs on it)."""
    await asyncio.to_thread(wait_state, api, bracket_id, expected)


async def made(api: Api, **body) -> int:
    """A bracket of alice's (``bracket(**body)``): its id."""
    alice = api.trader("alice")
    bracket_id = (await alice.create_bracket(new(bracket(**body)))).bracket_id
    assert alice.statuses[-1] == 201
    return bracket_id


async def placed(api: Api, *orders) -> None:
    """Each (user, ``order()``'s fields) placed, and accepted."""
    for user, fields in orders:
        trader = api.trader(user)
        await trader.place(order(**fields))
        assert trader.statuses[-1] == 202


def test_target_fills_stop_loss_cancels_the_target_cancels_end_it(database, tmp_path):
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")

        async def scenario():
            async with api:
                alice = api.trader("alice")
                # the entry fills, its target fills: DONE, the stop-loss never placed
                one = await made(api)
                await placed(api, ("bob", {"side": "SELL", "time_in_force": "IOC"}))
                await until(api, one, ("ACTIVE", [(10, "OPEN", 0)], None, None, None))
                await placed(api, ("carol", {"price": "15100.00", "time_in_force": "IOC"}))
                await until(api, one, ("DONE", [(10, "FILLED", 10)], None, None, None))

                # the entry fills 4: a leg of 4; a sell of 7 fills the 6 left and trades
                # at the stop-loss: the target is cancelled, the stop-loss sells all 10
                two = await made(api, target="15200.00", stopLoss="14800.00")
                await placed(api, ("bob", {"side": "SELL", "quantity": 4, "time_in_force": "IOC"}))
                await until(api, two, ("ACTIVE", [(4, "OPEN", 0)], None, None, None))
                await placed(
                    api,
                    ("carol", {"price": "14700.00", "time_in_force": "GTC"}),  # the stop's buyer
                    ("carol", {"quantity": 1, "price": "14800.00", "time_in_force": "GTC"}),
                    ("bob", {"side": "SELL", "quantity": 7, "price": "14800.00"}),
                )
                await until(api, two, ("STOPPED", [(4, "CANCELLED", 0)], 10, "FILLED", 10))
                assert api.rows(ALICES_SHARES) == [(0,)]

                # the entry fills 3, the user cancels it: its leg is cancelled, 3 shares kept
                three = await made(api, target="15300.00", stopLoss="14500.00")
                await placed(api, ("bob", {"side": "SELL", "quantity": 3, "time_in_force": "IOC"}))
                await until(api, three, ("ACTIVE", [(3, "OPEN", 0)], None, None, None))
                [(entry,)] = api.rows(
                    "SELECT entry_order_id FROM brackets WHERE bracket_id = %s", three
                )
                await alice.cancel(entry)
                assert alice.statuses[-1] == 202
                await until(api, three, ("CANCELLED", [(3, "CANCELLED", 0)], None, None, None))
                assert api.rows(ALICES_SHARES) == [(3,)]

                # the entry fills 2, the user exits the bracket: entry and leg cancelled
                four = await made(api, target="15400.00", stopLoss="14600.00")
                await placed(api, ("bob", {"side": "SELL", "quantity": 2, "time_in_force": "IOC"}))
                await until(api, four, ("ACTIVE", [(2, "OPEN", 0)], None, None, None))
                assert (await alice.exit_bracket(four)).status == "EXITING"
                await until(api, four, ("CANCELLED", [(2, "CANCELLED", 0)], None, None, None))
                view = await alice.bracket(four)
                assert [view.status, view.targets[0].quantity] == ["CANCELLED", 2]
                assert api.rows(
                    "SELECT o.status, o.filled_quantity FROM orders o JOIN brackets b "
                    "ON b.entry_order_id = o.order_id WHERE b.bracket_id = %s",
                    four,
                ) == [("CANCELLED", 2)]
                assert api.rows(ALICES_SHARES) == [(5,)]

        try:
            run(scenario)
        finally:
            service.close()
        assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [(0,)]
        assert api.rows(
            "SELECT blocked_quantity FROM positions JOIN accounts USING (account_id) "
            "WHERE user_id = 'alice'"
        ) == [(0,)]


def test_kill_9_places_each_leg_once_and_both_legs_in_one_batch(database, tmp_path):
    brackets = 12
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")

        async def scenario():
            nonlocal service
            async with api:
                pair = await made(api, quantity=2)
                await trade(api, "15000.00", 2)
                await until(api, pair, ("ACTIVE", [(2, "OPEN", 0)], None, None, None))
                many = [
                    await made(api, quantity=1, target="15500.00", stopLoss="14000.00")
                    for _ in range(brackets)
                ]
                await placed(
                    api, ("bob", {"side": "SELL", "quantity": brackets, "time_in_force": "IOC"})
                )
                deadline = time.monotonic() + 60
                while not api.rows(
                    "SELECT count(*) FROM bracket_targets WHERE order_id IS NOT NULL "
                    "AND bracket_id <> %s",
                    pair,
                )[0][0]:
                    assert time.monotonic() < deadline, service.text()[-3000:]
                    await asyncio.sleep(0.005)
                service.kill()  # in the middle of placing the legs (or just after)
                service.close()
                # with the service down: a trade at the pair's stop-loss, then its target
                # fills: the service reads both in one batch at its start
                await trade(api, "14900.00")
                await placed(
                    api, ("carol", {"quantity": 2, "price": "15100.00", "time_in_force": "IOC"})
                )
                await asyncio.to_thread(
                    api.wait_rows,
                    "SELECT status FROM orders o JOIN bracket_targets t USING (order_id) "
                    "WHERE t.bracket_id = %s",
                    [("FILLED",)],
                    pair,
                )
                service = await asyncio.to_thread(triggers, api, tmp_path / "triggers-2.log")
                for one in many:
                    await until(api, one, ("ACTIVE", [(1, "OPEN", 0)], None, None, None))
                await until(api, pair, ("DONE", [(2, "FILLED", 2)], None, None, None))

        try:
            run(scenario)
        finally:
            service.close()
        sells = api.rows(
            "SELECT count(*), sum(quantity) FROM orders o JOIN accounts a USING (account_id) "
            "WHERE a.user_id = 'alice' AND o.side = 'SELL'"
        )
        assert sells == [(brackets + 1, brackets + 2)], "one leg each, none doubled"
        assert api.rows(ALICES_SHARES) == [(brackets,)], "the pair's 2 sold once"


def test_a_sell_entry_with_a_stop_limit_and_the_close_with_legs_open(database, tmp_path):
    """Alice's buy entry fills 4 of 10, its target rests; dave's sell entry (a true short:
    allow_short, no shares; the legs buy back) fills, its stop-loss is met: a stop-limit
    buy at ``stopLimit`` fills 2 of 4. Then the close: the entry's rest, the target and
    the stop-limit expire, their holds released; alice's bracket ends EXPIRED, dave's
    stays STOPPED; after a reopen, a trade at alice's stop-loss places nothing."""
    with psycopg.connect(database, autocommit=True) as conn:
        open_account(conn, "dave", cash=1_000_000 * 100, allow_short=True)
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")
        operator = OrderProducer(api.kafka)

        async def scenario():
            async with api:
                long = await made(api, target="15500.00", stopLoss="14500.00")
                await placed(api, ("bob", {"side": "SELL", "quantity": 4, "time_in_force": "IOC"}))
                await until(api, long, ("ACTIVE", [(4, "OPEN", 0)], None, None, None))

                short = bracket(side="SELL", quantity=4, price="15200.00", target="15050.00")
                short |= {"stopLoss": "15300.00", "stopLimit": "15310.00"}
                dave = api.trader("dave")
                short_id = (await dave.create_bracket(new(short))).bracket_id
                assert dave.statuses == [201]
                await placed(
                    api, ("carol", {"quantity": 4, "price": "15200.00", "time_in_force": "IOC"})
                )
                await until(api, short_id, ("ACTIVE", [(4, "OPEN", 0)], None, None, None))
                await trade(api, "15300.00")  # the stop-loss met
                stopped = ("STOPPED", [(4, "CANCELLED", 0)], 4, "OPEN", 0)
                await until(api, short_id, stopped)
                await placed(api, ("bob", {"side": "SELL", "quantity": 2, "price": "15310.00"}))
                partly = ("STOPPED", [(4, "CANCELLED", 0)], 4, "PARTIALLY_FILLED", 2)
                await until(api, short_id, partly)

                operator.send([CloseSession("RELIANCE", ts=1)])
                await until(api, long, ("EXPIRED", [(4, "EXPIRED", 0)], None, None, None))
                await until(api, short_id, ("STOPPED", [(4, "CANCELLED", 0)], 4, "EXPIRED", 2))
                operator.send([OpenSession("RELIANCE", ts=2)])
                await trade(api, "14500.00")
                await asyncio.sleep(1.0)  # five passes of the service
            return long, short_id

        try:
            long, short_id = run(scenario)
        finally:
            service.close()
        assert state(api, long) == ("EXPIRED", [(4, "EXPIRED", 0)], None, None, None)
        assert api.rows(
            "SELECT o.status, o.filled_quantity FROM orders o JOIN brackets b "
            "ON b.entry_order_id = o.order_id ORDER BY b.bracket_id"
        ) == [("EXPIRED", 4), ("FILLED", 4)]
        assert api.rows(
            "SELECT o.side, o.type, o.price, o.time_in_force FROM orders o JOIN brackets b "
            "ON b.stop_order_id = o.order_id"
        ) == [("BUY", "LIMIT", 15310 * 100, "DAY")], "dave's stop-limit buys back"
        assert api.rows(
            "SELECT user_id, side, count(*) FROM orders JOIN accounts USING (account_id) "
            "WHERE user_id IN ('alice', 'dave') GROUP BY 1, 2 ORDER BY 1, 2"
        ) == [("alice", "BUY", 1), ("alice", "SELL", 1), ("dave", "BUY", 2), ("dave", "SELL", 1)]
        assert api.rows(
            "SELECT user_id, p.quantity, p.blocked_quantity, a.blocked_cash FROM accounts a "
            "JOIN positions p USING (account_id) WHERE user_id IN ('alice', 'dave') ORDER BY 1"
        ) == [("alice", 4, 0, 0), ("dave", -2, 0, 0)], "dave short 4, bought 2 back"
        with psycopg.connect(database) as conn:
            assert check_invariants(conn, market_sessions(api.settings), api.now) == []
