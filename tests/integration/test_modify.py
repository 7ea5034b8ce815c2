"""Modify (PATCH /api/v1/orders/{orderId}) through the OMS's HTTP API on the real
Postgres and Kafka: refusals that change nothing, then, with the engine daemon,
settlement and the projector running, the priority rule, the holds, a waiting stop's
trigger, the per-order limit, idempotent retries and modifies racing fills."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import psycopg

from brokercore.broker.risk import buy_hold
from brokercore.consumers.projector import run_projector
from brokercore.consumers.reconcile import check_invariants
from brokercore.engine.records import Side, Tif
from brokercore.entry.requests import OrderAccepted
from brokercore.kafka.messages import AmendOrder
from brokercore.services.reconciler import market_sessions
from oms_support import Api, auth, change, order, outcome, refusal, run
from platform_support import INSTRUMENTS, money, platform
from shared_servers import REDIS_URL
from venue_support import FEES, INST, MID, SHARES, Venue, settle

RUPEE = 100
OPEN = "('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED')"


def execute(api: Api, statement: str, *args) -> None:
    with psycopg.connect(api.database) as conn:
        conn.execute(statement, args)


def state(api: Api, order: int):
    """What a refused modify must leave as it was."""
    return (
        api.rows(
            "SELECT status, price, quantity, trigger_price, blocked_cash, modifications, "
            "modify_pending FROM orders WHERE order_id = %s",
            order,
        ),
        api.rows("SELECT count(*) FROM order_events WHERE order_id = %s", order),
        api.rows("SELECT count(*) FROM outbox"),
        api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'"),
    )


MALFORMED = [  # (body or raw bytes, order: None = alice's, HTTP status, code), sent raw
    ({}, None, 422, "INVALID_REQUEST"),  # no idempotency key
    ({"idempotencyKey": "k"}, None, 422, "INVALID_REQUEST"),  # nothing to change
    ({"idempotencyKey": "k", "quantity": 0}, None, 422, "INVALID_REQUEST"),
    ({"idempotencyKey": "k", "price": "x"}, None, 422, "INVALID_REQUEST"),
    ({"idempotencyKey": "k", "side": "SELL"}, None, 422, "INVALID_REQUEST"),
    (b"{not json", None, 400, "MALFORMED_JSON"),
    ({"idempotencyKey": "k", "quantity": 5}, "12ab", 404, "ORDER_NOT_FOUND"),
]
REFUSED = [  # (user, order: None = alice's, change()'s fields, HTTP status, code)
    ("carol", None, {"quantity": 5}, 404, "ORDER_NOT_FOUND"),
    ("alice", 999999999, {"quantity": 5}, 404, "ORDER_NOT_FOUND"),
    ("alice", "pending", {"quantity": 5}, 409, "ORDER_PENDING"),
    ("alice", None, {"price": "15000.01"}, 422, "TICK_SIZE"),
    ("alice", None, {"quantity": 200}, 422, "INSUFFICIENT_FUNDS"),
    ("alice", None, {"trigger_price": "1.00"}, 422, "TRIGGER_NOT_ALLOWED"),
]


def test_refused_modifies_answer_in_the_error_shape_and_change_nothing(database):
    """Without an engine the orders stay PENDING unless the test says the engine took
    them: the OMS's decisions need nothing else."""

    async def scenario():
        # 22 requests of alice at once: past the default burst (20) on a fast machine
        async with Api(database, rate_limit_burst=100) as api:
            alice = api.trader("alice")
            taken, pending, limited, finished, market = [
                (await alice.place(order(**fields))).order_id
                for fields in (
                    {"quantity": 20},
                    {"quantity": 1},
                    {"quantity": 1},
                    {"quantity": 1},
                    {"type": "MARKET", "price": None, "time_in_force": "IOC", "quantity": 1},
                )
            ]
            execute(  # as settlement records the engine's ACCEPTED
                api,
                "UPDATE orders SET status = 'OPEN' WHERE order_id = ANY(%s)",
                [taken, limited, market],
            )
            execute(
                api,
                "UPDATE orders SET status = 'CANCELLED', blocked_cash = 0, hold_amount = 0 "
                "WHERE order_id = %s",
                finished,
            )
            execute(
                api,
                "UPDATE accounts SET blocked_cash = blocked_cash - 15000 * 100 "
                "WHERE user_id = 'alice'",
            )
            execute(api, "UPDATE orders SET modifications = 25 WHERE order_id = %s", limited)
            before = state(api, taken)
            answers = []
            for body, target, _, _ in MALFORMED:
                raw = {"content": body} if isinstance(body, bytes) else {"json": body}
                answer = await api.client.patch(
                    f"/api/v1/orders/{target or taken}",
                    headers=auth("alice") | {"Content-Type": "application/json"},
                    **raw,
                )
                answers.append((answer.status_code, answer.json()["error"]["code"]))
            for user, target, fields, _, _ in REFUSED:
                target = {None: taken, "pending": pending}.get(target, target)
                answers.append(await refusal(api.trader(user).modify(target, change(**fields))))
            after = state(api, taken)
            others = [
                await refusal(alice.modify(limited, change(quantity=5))),  # the 26th
                await refusal(alice.modify(finished, change(quantity=5))),
                await refusal(alice.modify(market, change(quantity=5))),
            ]
            first = await alice.modify(taken, change(quantity=15))
            accepted = alice.statuses[-1]
            second = await refusal(alice.modify(taken, change(quantity=14)))  # first unsettled
            return answers, before, after, others, (first, accepted), second

    answers, before, after, others, first, second = run(scenario)
    assert answers == [(status, code) for *_, status, code in MALFORMED + REFUSED]
    assert after == before, "a refused modify changes nothing"
    assert others == [
        (409, "MODIFY_LIMIT_REACHED"),
        (409, "ORDER_NOT_OPEN"),
        (409, "ORDER_NOT_MODIFIABLE"),
    ]
    assert first[0].status == "MODIFY_REQUESTED" and first[1] == 202
    assert second == (409, "MODIFY_PENDING")


def _platform_with_projector(database, tmp_path, **settings):
    """``platform`` plus the projector (a thread), for the read model's order."""
    stack = platform(database, tmp_path, **settings)
    api = stack.__enter__()
    stop = threading.Event()
    projector = threading.Thread(
        target=run_projector,
        args=(
            api.kafka.bootstrap,
            api.kafka.events_topic,
            database,
            INSTRUMENTS,
            REDIS_URL,
            api.kafka.topic_prefix,
        ),
        kwargs={"stop_event": stop, "say": lambda line: None},
        daemon=True,
    )
    projector.start()

    def close():
        stop.set()
        projector.join(30)
        stack.__exit__(None, None, None)

    return api, close


def clean(api: Api) -> None:
    with psycopg.connect(api.database) as conn:
        assert check_invariants(conn, market_sessions(api.settings), api.now) == []


def test_modify_keeps_or_loses_priority_reprices_holds_and_counts(database, tmp_path):
    api, close = _platform_with_projector(database, tmp_path, max_order_modifications=3)
    try:
        money_before = money(api)

        async def place(user="alice", **fields):
            async with api:
                accepted = await api.trader(user).place(
                    order(**({"time_in_force": "GTC"} | fields))
                )
                return accepted.order_id

        def wait_open(*orders):
            api.wait_rows(
                "SELECT count(*) FROM orders WHERE order_id = ANY(%s) AND status = 'OPEN'",
                [(len(orders),)],
                list(orders),
            )

        async def modify(order_id, user="alice", **fields) -> OrderAccepted:
            """``user``'s modify of the order to ``fields``, accepted (202)."""
            async with api:
                trader = api.trader(user)
                accepted = await trader.modify(order_id, change(**fields))
                assert trader.statuses == [202]
                return accepted

        async def refused(order_id, user="alice", **fields) -> tuple[int, str]:
            async with api:
                return await refusal(api.trader(user).modify(order_id, change(**fields)))

        def settled(order, quantity, price):
            api.wait_rows(
                "SELECT quantity, price, modify_pending FROM orders WHERE order_id = %s",
                [(quantity, price * RUPEE, False)],
                order,
            )

        # quantity down at the same price keeps time priority
        first = run(lambda: place())
        wait_open(first)
        second = run(lambda: place(user="carol"))
        wait_open(second)
        down = run(lambda: modify(first, quantity=6))
        assert down.order_id == first and down.status == "MODIFY_REQUESTED"
        settled(first, 6, 15000)
        assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
            (6 * 15_000 * RUPEE,)
        ], "the four shares no longer asked are released"
        run(lambda: place(user="bob", side="SELL", quantity=6, time_in_force="IOC"))
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("FILLED",)], first)
        assert api.rows("SELECT filled_quantity FROM orders WHERE order_id = %s", second) == [(0,)]

        assert run(lambda: refused(first, quantity=8)) == (409, "ORDER_NOT_OPEN")

        # quantity up at the same price loses it: the later order fills first
        third = run(lambda: place())
        wait_open(third)
        run(lambda: modify(second, user="carol", quantity=12))
        settled(second, 12, 15000)
        run(lambda: place(user="bob", side="SELL", quantity=10, time_in_force="IOC"))
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("FILLED",)], third)
        assert api.rows("SELECT filled_quantity FROM orders WHERE order_id = %s", second) == [(0,)]

        # a price change (down: cash released), shown by the read model
        run(lambda: modify(second, user="carol", price="14990.00"))
        settled(second, 12, 14990)
        assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'carol'") == [
            (12 * 14_990 * RUPEE,)
        ]
        api.wait_rows(
            "SELECT price, quantity, status FROM read_model.orders WHERE order_id = %s",
            [(14_990 * RUPEE, 12, "OPEN")],
            second,
        )

        # an idempotent retry answers the same; the key with another body is refused
        async def retried():
            async with api:
                carol = api.trader("carol")
                one = await carol.modify(
                    second, change(idempotency_key="same-key", price="14995.00")
                )
                two = await carol.modify(
                    second, change(idempotency_key="same-key", price="14995.00")
                )
                other = change(idempotency_key="same-key", price="14980.00")
                return one, two, await refusal(carol.modify(second, other)), carol.statuses

        one, two, other, statuses = run(retried)
        assert statuses[:2] == [202, 202]
        assert one == two
        assert other == (422, "IDEMPOTENCY_KEY_REUSED")
        settled(second, 12, 14995)
        amends = [c for c in api.commands() if isinstance(c, AmendOrder)]
        assert [(c.price, c.qty) for c in amends if c.order_id == second] == [
            (300_000, 12),  # ticks of 0.05 rupee
            (299_800, 12),
            (299_900, 12),
        ], "the retry sent nothing again"

        # the limit (3 here): the fourth modify of an order is refused
        fourth = run(lambda: refused(second, user="carol", quantity=11))
        assert fourth == (409, "MODIFY_LIMIT_REACHED")
        run(lambda: _cancel(api, second, "carol"))

        # a waiting stop's trigger: a trade at the new one triggers it, not at the old
        stop = run(lambda: place(type="STOP_LIMIT", price="15100.00", trigger_price="15100.00"))
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("TRIGGER_PENDING",)], stop)
        run(lambda: modify(stop, trigger_price="15050.00"))
        api.wait_rows(
            "SELECT trigger_price, modify_pending FROM orders WHERE order_id = %s",
            [(15_050 * RUPEE, False)],
            stop,
        )
        api.wait_rows(
            "SELECT trigger_price FROM read_model.orders WHERE order_id = %s",
            [(15_050 * RUPEE,)],
            stop,
        )
        run(lambda: place(user="carol", price="15050.00", quantity=1))
        run(
            lambda: place(
                user="bob", side="SELL", price="15050.00", quantity=1, time_in_force="IOC"
            )
        )
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("OPEN",)], stop)
        assert api.rows("SELECT blocked_cash FROM orders WHERE order_id = %s", stop) == [
            (10 * 15_100 * RUPEE,)
        ]
        run(lambda: _cancel(api, stop, "alice"))
        api.wait_rows(f"SELECT count(*) FROM orders WHERE status IN {OPEN}", [(0,)])
        assert money(api)[0] == money_before[0], "cash conserved"
        assert api.rows("SELECT sum(blocked_quantity) FROM positions") == [(0,)]
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]
        clean(api)
    finally:
        close()


def test_a_sweep_sends_an_amend_again_only_while_its_modify_is_pending(database, tmp_path):
    """An OMS that dies after Kafka took an AMEND, before marking it published, leaves
    the row for the sweep. Once the engine has answered (no modify pending), the sweep
    marks it published instead of sending it: the engine would apply a second copy, and
    fills between the copies would add to the order. While the modify is pending, it is
    sent again."""
    with platform(database, tmp_path) as api:

        async def place():
            async with api:
                return (await api.trader("alice").place(order(time_in_force="GTC"))).order_id

        async def modify(order_id):
            async with api:
                alice = api.trader("alice")
                await alice.modify(order_id, change(quantity=6))
                return alice.statuses[-1]

        async def sweep():
            async with api:
                return await api.app.state.oms.publisher.publish_stale(timedelta(0))

        placed = run(place)
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("OPEN",)], placed)
        assert run(lambda: modify(placed)) == 202
        api.wait_rows(
            "SELECT quantity, modify_pending FROM orders WHERE order_id = %s", [(6, False)], placed
        )
        ((amend,),) = api.rows("SELECT max(outbox_id) FROM outbox WHERE order_id = %s", placed)
        forgotten = "UPDATE outbox SET published_at = NULL WHERE outbox_id = %s"

        execute(api, forgotten, amend)
        assert amend not in run(sweep)
        assert api.rows(
            "SELECT published_at IS NOT NULL FROM outbox WHERE outbox_id = %s", amend
        ) == [(True,)]
        amends = [c for c in api.commands() if isinstance(c, AmendOrder)]
        assert len(amends) == 1, "an answered AMEND is not sent again"

        execute(api, forgotten, amend)
        execute(api, "UPDATE orders SET modify_pending = true WHERE order_id = %s", placed)
        assert amend in run(sweep), "a pending modify's AMEND is sent again"
        assert len([c for c in api.commands() if isinstance(c, AmendOrder)]) == 2
        api.wait_rows(
            "SELECT quantity, modify_pending FROM orders WHERE order_id = %s", [(6, False)], placed
        )
        clean(api)


async def _cancel(api: Api, order_id: int, user: str):
    async with api:
        return await api.trader(user).cancel(order_id)


def test_modifies_racing_fills_end_consistent(database, tmp_path):
    """A modify and a crossing sell sent at once, either way round: a price change with
    part of the order filling (the engine's AMEND sets the open quantity, so a fill
    before it adds to the total), and one with the whole order filling (the amend is
    refused, its reserve released). Holds and invariants hold either way."""
    with platform(database, tmp_path) as api:
        before = money(api)

        async def buys():
            async with api:
                alice = api.trader("alice")
                answers = [await alice.place(order(time_in_force="GTC")) for _ in range(4)]
                return [a.order_id for a in answers]

        orders = run(buys)
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'PENDING'", [(0,)])

        async def race():
            async with api:
                alice, bob = api.trader("alice"), api.trader("bob")
                await asyncio.gather(
                    alice.modify(orders[0], change(price="15001.00")),
                    bob.place(order(side="SELL", quantity=4, time_in_force="IOC")),
                    alice.modify(orders[1], change(quantity=12)),
                    bob.place(order(side="SELL", quantity=4, time_in_force="IOC")),
                )
                return alice.statuses + bob.statuses

        assert run(race) == [202] * 4
        api.wait_rows(
            "SELECT count(*) FROM orders WHERE modify_pending OR status = 'PENDING'", [(0,)]
        )
        clean(api)
        rows = api.rows(
            "SELECT order_id, quantity, filled_quantity, blocked_cash, price FROM orders "
            "WHERE side = 'BUY' ORDER BY order_id"
        )
        for order_id, quantity, filled, blocked, price in rows:
            assert blocked == (quantity - filled) * price, (order_id, rows)
        # whole fills racing modifies: the amend comes too late or the fill follows it
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'PENDING'", [(0,)])

        async def whole():
            async with api:
                open_left = api.rows(
                    "SELECT sum(quantity - filled_quantity) FROM orders WHERE side = 'BUY'"
                )[0][0]
                alice, bob = api.trader("alice"), api.trader("bob")
                answers = await asyncio.gather(
                    outcome(alice.modify(orders[2], change(price="14999.00"))),
                    bob.place(
                        order(
                            side="SELL",
                            quantity=int(open_left),
                            price="14990.00",
                            time_in_force="IOC",
                        )
                    ),
                    outcome(alice.modify(orders[3], change(quantity=9))),
                )
                return answers, alice.statuses, bob.statuses

        (price_change, _, quantity_down), alices, bobs = run(whole)
        assert bobs == [202]
        # a modify may come after the fill that finished its order: refused, nothing changed
        modifies = (price_change, quantity_down)
        for answer in modifies:
            assert isinstance(answer, OrderAccepted) or answer.code in (
                "ORDER_NOT_OPEN",
                "INVALID_QUANTITY",
            ), answer
        assert alices.count(202) == sum(isinstance(a, OrderAccepted) for a in modifies)
        api.wait_rows(f"SELECT count(*) FROM orders WHERE status IN {OPEN}", [(0,)])
        api.wait_rows("SELECT count(*) FROM orders WHERE modify_pending", [(0,)])
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]
        after = money(api)
        assert (after[0], after[3]) == (before[0], before[3]), "cash and shares conserved"
        clean(api)


# --- settlement of a modify, each way round a racing fill, without Kafka ---------------


def _reserve(conn, order_id: int, cash: int = 0, shares: int = 0) -> None:
    """What ``brokercore.entry.modify`` writes besides the command: the new terms' hold."""
    account, trigger = conn.execute(
        "UPDATE orders SET modify_pending = true, modify_cash = %s, modify_shares = %s, "
        "blocked_cash = blocked_cash + %s, blocked_shares = blocked_shares + %s, "
        "modifications = modifications + 1, modify_undo_trigger = trigger_price "
        "WHERE order_id = %s RETURNING account_id, trigger_price",
        (cash, shares, cash, shares, order_id),
    ).fetchone()
    conn.execute(
        "UPDATE accounts SET blocked_cash = blocked_cash + %s WHERE account_id = %s",
        (cash, account),
    )
    conn.execute(
        "UPDATE positions SET blocked_quantity = blocked_quantity + %s WHERE account_id = %s",
        (shares, account),
    )


def _holds_match(conn) -> None:
    """Accounts and positions block what their orders hold; finished orders nothing."""
    assert (
        conn.execute(
            "SELECT a.account_id FROM accounts a WHERE blocked_cash <> (SELECT "
            "coalesce(sum(o.blocked_cash), 0) FROM orders o WHERE o.account_id = a.account_id) "
            "UNION ALL SELECT p.account_id FROM positions p WHERE blocked_quantity <> (SELECT "
            "coalesce(sum(o.blocked_shares), 0) FROM orders o WHERE o.account_id = p.account_id) "
            "UNION ALL SELECT order_id FROM orders WHERE status NOT IN "
            "('PENDING', 'TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED') "
            "AND blocked_cash + blocked_shares + modify_cash + modify_shares > 0"
        ).fetchall()
        == []
    )


def account_row(conn, account_id: int):
    return conn.execute(
        "SELECT cash, blocked_cash FROM accounts WHERE account_id = %s", (account_id,)
    ).fetchone()


def position_row(conn, account_id: int):
    return conn.execute(
        "SELECT quantity, blocked_quantity FROM positions WHERE account_id = %s", (account_id,)
    ).fetchone()


def _order(conn, order_id: int):
    return conn.execute(
        "SELECT status, quantity, filled_quantity, price, blocked_cash, blocked_shares, "
        "modify_pending FROM orders WHERE order_id = %s",
        (order_id,),
    ).fetchone()


def test_a_fill_before_the_amend_adds_to_the_total_and_the_reserve_pays_for_it(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    buy = v.place(buyer, Side.BUY, 10, MID, Tif.GTC)
    new_price = MID + 20
    _reserve(conn, buy, cash=buy_hold(INST, new_price, 10, FEES))  # the OMS's check's hold
    v.place(seller, Side.SELL, 4, MID)  # fills before the engine takes the amend
    v.send(AmendOrder(buy, buyer, INST.symbol, new_price, 10, v.ts))
    settle(conn, v.messages())
    filled = 4 * INST.ticks_to_paise(MID)
    rest = 10 * INST.ticks_to_paise(new_price)
    held = rest + FEES.fee(filled + rest) - FEES.fee(filled)
    assert _order(conn, buy) == (
        "PARTIALLY_FILLED",
        14,  # the engine's open 10 after the 4 filled
        4,
        INST.ticks_to_paise(new_price),
        held,
        0,
        False,
    )
    _holds_match(conn)
    done = len(v.batches)
    v.place(seller, Side.SELL, 10, new_price)
    settle(conn, v.messages(done))
    assert _order(conn, buy)[:3] == ("FILLED", 14, 14)
    assert account_row(conn, buyer)[1] == 0
    _holds_match(conn)


def test_an_amend_too_late_for_a_whole_fill_is_refused_and_its_reserve_released(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    buy = v.place(buyer, Side.BUY, 10, MID, Tif.GTC)
    _reserve(conn, buy, cash=buy_hold(INST, MID - 20, 10, FEES))
    v.place(seller, Side.SELL, 10, MID)
    v.send(AmendOrder(buy, buyer, INST.symbol, MID - 20, 10, v.ts))  # UNKNOWN_ORDER
    settle(conn, v.messages())
    assert _order(conn, buy) == ("FILLED", 10, 10, INST.ticks_to_paise(MID), 0, 0, False)
    assert account_row(conn, buyer)[1] == 0
    assert conn.execute(
        "SELECT payload->>'refused', payload->>'reason' FROM order_events "
        "WHERE order_id = %s ORDER BY event_id DESC LIMIT 1",
        (buy,),
    ).fetchone() == ("AMEND", "UNKNOWN_ORDER")
    _holds_match(conn)


def test_a_sells_amend_then_its_fill_and_a_cancel_before_an_amend(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    sell = v.place(seller, Side.SELL, 10, MID + 10, Tif.GTC)
    _reserve(conn, sell, shares=6)
    v.send(AmendOrder(sell, seller, INST.symbol, MID, 6, v.ts))  # down in price and size
    settle(conn, v.messages())
    assert _order(conn, sell) == ("OPEN", 6, 0, INST.ticks_to_paise(MID), 0, 6, False)
    assert position_row(conn, seller) == (SHARES, 6)
    done = len(v.batches)
    v.place(buyer, Side.BUY, 6, MID)
    buy = v.place(buyer, Side.BUY, 10, MID - 100, Tif.GTC)
    _reserve(conn, buy, cash=buy_hold(INST, MID - 50, 10, FEES))
    v.cancel(buy, buyer)  # the cancel first: the amend finds no order
    v.send(AmendOrder(buy, buyer, INST.symbol, MID - 50, 10, v.ts))
    settle(conn, v.messages(done))
    assert _order(conn, sell)[:3] == ("FILLED", 6, 6)
    assert _order(conn, buy)[0] == "CANCELLED"
    assert position_row(conn, seller) == (SHARES - 6, 0)
    assert account_row(conn, buyer)[1] == 0
    _holds_match(conn)
