"""The OMS in the trading day (docs/engine.md, "The trading day") on the real Postgres,
Redis and Kafka: stop, stop-limit and iceberg orders over REST with their holds, every
new check's JSON error with nothing stored, the pre-open's rules on the calendar's
clock, and the schema (0008) refusing what no writer may store."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from psycopg import errors

from brokercore.client import ApiError
from brokercore.engine.records import Side, Tif
from brokercore.entry.order_entry import OrderReceipt, OrderRefused
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import CancelOrder, Halt, PreOpen, Uncross
from kafka_support import OrderProducer
from oms_support import Api, order, refusal, run
from platform_support import money, platform

IST = ZoneInfo("Asia/Kolkata")
HELD = 1_627_500  # paise: a stop-market buy's hold, 5 % (the protection) above 15,500.00
STOP = {"type": "STOP", "price": None, "trigger_price": "15500.00"}  # order()'s fields
STOP_LIMIT = {"type": "STOP_LIMIT", "price": "15600.00", "trigger_price": "15500.00"}
# A Wednesday in Mumbai: pre-open 09:00-09:08 (with the calendar below), open 09:15
PRE_OPEN = datetime(2026, 11, 25, 9, 5, tzinfo=IST)
BUFFER = datetime(2026, 11, 25, 9, 10, tzinfo=IST)  # after the auction, before the open


def holds(api: Api) -> list[tuple]:
    """Every account's blocked cash and shares beside what its open orders hold: the
    ledger the OMS writes, which must always agree with itself."""
    return api.rows(
        "SELECT a.user_id, a.blocked_cash, coalesce(sum(o.blocked_cash), 0)::bigint, "
        "  coalesce((SELECT sum(blocked_quantity) FROM positions p "
        "            WHERE p.account_id = a.account_id), 0)::bigint, "
        "  coalesce(sum(o.blocked_shares), 0)::bigint "
        "FROM accounts a LEFT JOIN orders o ON o.account_id = a.account_id "
        "GROUP BY a.account_id ORDER BY a.user_id"
    )


def with_pre_open(api: Api) -> None:
    """The OMS's calendar with NSE's pre-open call auction, 09:00-09:08."""
    entry = api.app.state.oms.entry
    entry.market = {
        symbol: dataclasses.replace(
            instrument,
            session=dataclasses.replace(
                instrument.session, pre_open=time(9, 0), pre_open_end=time(9, 8)
            ),
        )
        for symbol, instrument in entry.market.items()
    }


def test_each_kind_of_order_is_stored_held_at_its_worst_price_and_sent(database):
    async def scenario():
        async with Api(database) as api:
            answers = {
                "stop buy": await api.placed(quantity=10, **STOP),
                "stop-limit buy": await api.placed("carol", quantity=10, **STOP_LIMIT),
                "stop sell": await api.placed(
                    "bob",
                    side="SELL",
                    quantity=30,
                    type="STOP",
                    price=None,
                    trigger_price="14500.00",
                    time_in_force="DAY",
                ),
                "iceberg": await api.placed(
                    "carol", quantity=50, price="15000.00", disclosed_quantity=10
                ),
            }
            return api, answers

    api, answers = run(scenario)
    ids = {name: r.order_id for name, r in answers.items()}
    rows = dict(
        api.rows(
            "SELECT order_id, concat_ws(' ', status, type, side, time_in_force, quantity, "
            "'price', price, 'trigger', trigger_price, 'disclosed', disclosed_qty, "
            "'held at', hold_price_ticks, 'cash', blocked_cash, 'shares', blocked_shares) "
            "FROM orders"
        )
    )  # concat_ws skips NULLs: no price or trigger, no number after the word
    assert {name: rows[order_id] for name, order_id in ids.items()} == {
        # a stop-market buy can fill up to its protection (325,500 ticks) once triggered
        "stop buy": "PENDING STOP BUY DAY 10 price trigger 1550000 disclosed 0 "
        f"held at 325500 cash {HELD * 10} shares 0",
        "stop-limit buy": "PENDING STOP_LIMIT BUY DAY 10 price 1560000 trigger 1550000 "
        "disclosed 0 held at 312000 cash 15600000 shares 0",
        "stop sell": "PENDING STOP SELL DAY 30 price trigger 1450000 disclosed 0 "
        "held at 0 cash 0 shares 30",
        "iceberg": "PENDING LIMIT BUY DAY 50 price 1500000 trigger disclosed 10 "
        "held at 300000 cash 75000000 shares 0",
    }
    assert holds(api) == [
        ("alice", HELD * 10, HELD * 10, 0, 0),
        ("bob", 0, 0, 30, 30),
        ("carol", 1_560_000 * 10 + 1_500_000 * 50, 1_560_000 * 10 + 1_500_000 * 50, 0, 0),
    ]
    commands = {c.order_id: c for c in api.commands()}
    sent = {
        name: (c.side, c.qty, c.market, c.price, c.stop, c.trigger, c.disclosed, c.tif)
        for name, c in ((name, commands[order_id]) for name, order_id in ids.items())
    }
    assert sent == {  # ticks of 0.05
        # capped at its protection (a re-band may lift the top): a stop-limit IOC there;
        # a sell likewise, 5 % below its trigger
        "stop buy": (Side.BUY, 10, False, 325_500, True, 310_000, 0, Tif.IOC),
        "stop-limit buy": (Side.BUY, 10, False, 312_000, True, 310_000, 0, Tif.DAY),
        "stop sell": (Side.SELL, 30, False, 275_500, True, 290_000, 0, Tif.IOC),
        "iceberg": (Side.BUY, 50, False, 300_000, False, 0, 10, Tif.DAY),
    }


# (user, order()'s fields, HTTP status, code): every rule of the new fields, over REST
REFUSED = [
    ("alice", {"type": "STOP", "price": None}, 422, "TRIGGER_REQUIRED"),
    ("alice", STOP | {"price": "15000.00"}, 422, "PRICE_NOT_ALLOWED"),
    ("alice", STOP_LIMIT | {"price": None}, 422, "PRICE_REQUIRED"),
    ("alice", {"trigger_price": "15500.00"}, 422, "TRIGGER_NOT_ALLOWED"),
    (
        "alice",
        {"type": "MARKET", "price": None, "trigger_price": "15500.00"},
        422,
        "TRIGGER_NOT_ALLOWED",
    ),
    ("alice", STOP | {"trigger_price": "0"}, 422, "INVALID_TRIGGER"),
    ("alice", STOP | {"trigger_price": "25000.00"}, 422, "PRICE_BAND"),
    ("alice", STOP | {"trigger_price": "15500.03"}, 422, "TICK_SIZE"),
    ("alice", STOP | {"time_in_force": "IOC"}, 422, "INVALID_TIF"),
    ("alice", STOP_LIMIT | {"time_in_force": "FOK"}, 422, "INVALID_TIF"),
    ("alice", STOP_LIMIT | {"price": "15499.95"}, 422, "TRIGGER_LIMIT_SIDE"),
    (
        "bob",
        STOP_LIMIT | {"side": "SELL", "price": "14500.05", "trigger_price": "14500.00"},
        422,
        "TRIGGER_LIMIT_SIDE",
    ),
    ("alice", STOP | {"trigger_price": "15000.00"}, 422, "TRIGGER_REACHED"),  # last 15,000.00
    ("bob", STOP | {"side": "SELL", "trigger_price": "15000.00"}, 422, "TRIGGER_REACHED"),
    ("alice", STOP | {"quantity": 5_001}, 422, "INSUFFICIENT_FUNDS"),  # at its protection
    (
        "bob",
        STOP | {"side": "SELL", "quantity": 101, "trigger_price": "14000.00"},
        422,
        "INSUFFICIENT_HOLDINGS",
    ),
    ("alice", {"disclosed_quantity": 11}, 422, "DISCLOSED_TOO_LARGE"),
    ("alice", {"quantity": 100, "disclosed_quantity": 9}, 422, "DISCLOSED_TOO_SMALL"),
    (
        "alice",
        {"symbol": "TCS", "price": "20000.00", "quantity": 50, "disclosed_quantity": 7},
        422,
        "DISCLOSED_LOT_SIZE",
    ),  # TCS in lots of 5 here
    ("alice", {"disclosed_quantity": 5, "time_in_force": "IOC"}, 422, "DISCLOSED_NOT_ALLOWED"),
    (
        "alice",
        {"type": "MARKET", "price": None, "disclosed_quantity": 5},
        422,
        "DISCLOSED_NOT_ALLOWED",
    ),
    ("alice", STOP_LIMIT | {"disclosed_quantity": 5}, 422, "DISCLOSED_NOT_ALLOWED"),
]
MALFORMED = [  # bodies the client cannot send, posted raw: (Api.place's fields, code)
    ({"disclosedQuantity": 0}, 422, "INVALID_REQUEST"),
    ({"disclosedQuantity": "5"}, 422, "INVALID_REQUEST"),
    ({"type": "STOP", "price": None, "triggerPrice": "a lot"}, 422, "INVALID_REQUEST"),
    ({"type": "TRAILING_STOP"}, 422, "INVALID_REQUEST"),
]


def test_every_new_rule_refuses_with_a_clear_error_and_stores_nothing(database):
    async def scenario():
        async with Api(database, rate_limit_burst=100) as api:
            entry = api.app.state.oms.entry
            entry.market = entry.market | {
                "TCS": dataclasses.replace(entry.market["TCS"], lot_size=5)
            }
            api.rows(  # RELIANCE last traded at 15,000.00, as the projector records it
                "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
                "executed_at) VALUES ('RELIANCE:7', 'RELIANCE', 7, 1500000, 5, now()) "
                "RETURNING 1"
            )
            refused = []
            for user, fields, _, _ in REFUSED:
                try:
                    await api.trader(user).place(order(**fields))
                except ApiError as error:
                    refused.append(error)
            return api, refused, [await api.place(**body) for body, _, _ in MALFORMED]

    api, refused, malformed = run(scenario)
    assert [(e.status, e.code) for e in refused] == [(s, c) for _, _, s, c in REFUSED]
    for (_, fields, _, _), error in zip(REFUSED, refused, strict=True):
        assert error.message and "Traceback" not in error.message, (fields, error)
    got = [(r.status_code, r.json()["error"]["code"]) for r in malformed]
    assert got == [(status, code) for _, status, code in MALFORMED]
    for (body, _, _), answer in zip(MALFORMED, malformed, strict=True):
        error = answer.json()["error"]
        assert error["message"] and "Traceback" not in answer.text, (body, error)
        assert error["fields"] and error["fields"][0]["message"], (body, error)
    assert api.rows(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM outbox), "
        "(SELECT count(*) FROM idempotency_keys), (SELECT sum(blocked_cash) FROM accounts), "
        "(SELECT sum(blocked_quantity) FROM positions)"
    ) == [(0, 0, 0, 0, 0)]


def test_a_stop_trigger_is_checked_against_the_last_trade_in_both_write_paths(database):
    """One order (OrderEntry.place) and a batch (the REST path's group commit) read the
    last trade price the same way; before any trade nothing is reached."""

    def stop(key, trigger):
        return PlaceOrderRequest("RELIANCE", "BUY", "STOP", 1, key, trigger_price=Decimal(trigger))

    async def scenario():
        async with Api(database) as api:
            entry = api.app.state.oms.entry
            early = await entry.place("alice", stop("early", "14000"))  # no trade yet
            api.rows(
                "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
                "executed_at) VALUES ('RELIANCE:1', 'RELIANCE', 1, 1500000, 5, now()), "
                "('RELIANCE:2', 'RELIANCE', 2, 1450000, 5, now()) RETURNING 1"
            )  # the last is the highest seq: 14,500.00
            with pytest.raises(OrderRefused) as refused:
                await entry.place("alice", stop("late", "14500"))
            taken = await entry.place("alice", stop("above", "14500.05"))
            batch = await entry.place_batch(
                [("alice", stop("b1", "14500")), ("carol", stop("b2", "14600"))]
            )
            return early, refused.value, taken, batch

    early, refused, taken, batch = run(scenario)
    assert early.status == taken.status == "PENDING"
    assert refused.reason == "TRIGGER_REACHED" and "last price 14500.00" in refused.message
    assert isinstance(batch[0], OrderRefused) and batch[0].reason == "TRIGGER_REACHED"
    assert isinstance(batch[1], OrderReceipt) and batch[1].status == "PENDING"


def test_a_stop_retry_is_the_same_order_and_a_waiting_stop_can_be_cancelled(database):
    async def scenario():
        async with Api(database) as api:
            alice = api.trader("alice")
            first = await alice.place(order(idempotency_key="stop-1", **STOP))
            moved = order(idempotency_key="stop-1", **STOP | {"trigger_price": "15600"})
            moved = await refusal(alice.place(moved))
            api.rows(
                "UPDATE orders SET status = 'TRIGGER_PENDING' WHERE order_id = %s RETURNING 1",
                first.order_id,
            )  # as settlement records the engine's ACCEPTED of a stop
            again = await alice.place(order(idempotency_key="stop-1", **STOP))
            cancel = await alice.cancel(first.order_id)
            return api, first, moved, again, cancel, alice.statuses

    api, first, moved, again, cancel, statuses = run(scenario)
    assert moved == (422, "IDEMPOTENCY_KEY_REUSED")
    assert statuses[2:] == [202, 202]
    assert again.order_id == first.order_id and again.status == "TRIGGER_PENDING"
    assert cancel.status == "CANCEL_REQUESTED"
    [(account,)] = api.rows("SELECT account_id FROM orders")
    sent = api.commands()[-1]
    assert sent == CancelOrder(first.order_id, account, "RELIANCE", ts=sent.ts)
    assert api.rows("SELECT count(*), sum(blocked_cash) FROM orders") == [(1, HELD * 10)]


def test_the_pre_open_takes_orders_that_can_wait_for_the_auction(database):
    async def scenario():
        async with Api(database) as api:
            with_pre_open(api)
            api.now = PRE_OPEN
            taken = {
                "limit": await api.placed(time_in_force="DAY"),
                "gtc iceberg": await api.placed(
                    quantity=50, time_in_force="GTC", disclosed_quantity=10
                ),
                "market": await api.placed(
                    "bob", side="SELL", type="MARKET", price=None, quantity=2
                ),
                "stop": await api.placed("carol", **STOP),
                "stop-limit IOC": await api.placed(
                    "bob",
                    side="SELL",
                    **STOP_LIMIT
                    | {"price": "15400.00", "trigger_price": "15400.00", "time_in_force": "IOC"},
                ),
            }
            alice = api.trader("alice")
            refused = {}
            for name, fields in {
                "limit IOC": {"time_in_force": "IOC"},
                "limit FOK": {"time_in_force": "FOK"},
                "market FOK": {"type": "MARKET", "price": None, "time_in_force": "FOK"},
                "market buy": {"type": "MARKET", "price": None},  # no cap could hold
            }.items():
                try:
                    await alice.place(order(**fields))
                except ApiError as error:
                    refused[name] = error
            api.now = BUFFER
            buffer = await refusal(alice.place(order()))
            return api, taken, refused, buffer

    api, taken, refused, buffer = run(scenario)
    assert {k: (e.status, e.code) for k, e in refused.items()} == dict.fromkeys(
        ["limit IOC", "limit FOK", "market FOK", "market buy"], (422, "NOT_IN_PRE_OPEN")
    )
    assert "pre-open call auction" in refused["limit IOC"].message
    assert buffer == (422, "MARKET_CLOSED")
    market_id = taken["market"].order_id
    # the market sell waits for the auction as a market order, holding its shares
    command = {c.order_id: c for c in api.commands()}[market_id]
    assert command.market and command.tif == Tif.IOC and command.price == 0
    assert api.rows("SELECT blocked_shares FROM orders WHERE order_id = %s", market_id) == [(2,)]
    assert api.rows("SELECT count(*), min(trade_date), max(trade_date) FROM orders") == [
        (5, date(2026, 11, 25), date(2026, 11, 25))
    ]
    assert api.rows("SELECT count(*) FROM outbox") == [(5,)]


# --- the schema (0008): what no writer may store ----------------------------------------


INCONSISTENT = [
    (dict(type="STOP", price=1_500_000, trigger_price=1_550_000), "orders_price_matches_type"),
    (dict(type="STOP", price=None, trigger_price=None), "orders_trigger_matches_type"),
    (dict(type="STOP_LIMIT", trigger_price=0), "orders_trigger_matches_type"),
    (dict(trigger_price=1_550_000), "orders_trigger_matches_type"),
    (dict(disclosed_qty=11), "orders_disclosed_valid"),
    (dict(disclosed_qty=-1), "orders_disclosed_valid"),
    (dict(type="STOP_LIMIT", trigger_price=1_550_000, disclosed_qty=5), "orders_disclosed_valid"),
    (dict(status="TRIGGER_PENDING"), "orders_trigger_pending_is_stop"),
]


def test_the_schema_refuses_inconsistent_orders(conn):
    account = conn.execute(
        "INSERT INTO accounts (user_id, cash) VALUES ('dave', 0) RETURNING account_id"
    ).fetchone()[0]
    row = dict(
        trade_date=date(2026, 11, 25),
        account_id=account,
        symbol="RELIANCE",
        side="BUY",
        type="LIMIT",
        price=1_500_000,
        quantity=10,
    )

    def add(**changes):
        r = row | changes
        conn.execute(
            f"INSERT INTO orders ({', '.join(r)}) VALUES ({', '.join(['%s'] * len(r))})",
            list(r.values()),
        )

    for values, constraint in INCONSISTENT:
        with pytest.raises(errors.CheckViolation, match=constraint):
            add(**values)
    add(type="STOP", price=None, trigger_price=1_550_000, status="TRIGGER_PENDING")
    add(type="STOP_LIMIT", trigger_price=1_550_000, status="TRIGGER_PENDING")
    add(disclosed_qty=10, status="OPEN")
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


# --- through the engine and settlement ---------------------------------------------------


def test_a_trading_day_through_the_engine_and_settlement(database, tmp_path):
    """A stop waits as TRIGGER_PENDING holding its shares, a trade triggers it and it
    fills; an iceberg rests showing its disclosed part; in a halt the engine refuses a
    new order (it is the authority on halts: REJECTED, reason HALTED, the hold
    released); the pre-open collects a market sell that the uncross fills at the
    opening price (placed in the OMS calendar's pre-open: in the open a market sell
    goes as a protected IOC limit, which an engine's pre-open refuses). Nothing is
    created or lost."""
    with platform(database, tmp_path) as api:
        before = money(api)
        operator = OrderProducer(api.kafka)
        statuses = "SELECT order_id, status, filled_quantity FROM orders ORDER BY order_id"

        async def wait(expected):
            await asyncio.to_thread(api.wait_rows, statuses, expected)

        async def day():
            async with api:
                buy = (await api.placed(quantity=10, time_in_force="GTC")).order_id
                stop = await api.placed(
                    "bob", side="SELL", quantity=4, **STOP | {"trigger_price": "15000.00"}
                )
                stop = stop.order_id
                await wait([(buy, "OPEN", 0), (stop, "TRIGGER_PENDING", 0)])
                waiting = api.rows("SELECT blocked_quantity FROM positions")
                # 2 @ 15,000.00 trade: the last price reaches the sell stop's trigger, which
                # enters as a market sell of 4 and fills against the rest of alice's buy
                sell = (await api.placed("bob", side="SELL", quantity=2)).order_id
                await wait([(buy, "PARTIALLY_FILLED", 6), (stop, "FILLED", 4), (sell, "FILLED", 2)])
                iceberg = await api.placed(
                    "carol", quantity=50, price="14900.00", disclosed_quantity=10
                )
                iceberg = iceberg.order_id
                await wait(
                    [
                        (buy, "PARTIALLY_FILLED", 6),
                        (stop, "FILLED", 4),
                        (sell, "FILLED", 2),
                        (iceberg, "OPEN", 0),
                    ]
                )
                operator.send([Halt("RELIANCE", ts=1)])
                halted = (await api.placed(quantity=1)).order_id
                await asyncio.to_thread(
                    api.wait_rows,
                    "SELECT status, reject_reason, blocked_cash FROM orders WHERE order_id = %s",
                    [("REJECTED", "HALTED", 0)],
                    halted,
                )
                operator.send([PreOpen("RELIANCE", ts=2)])
                with_pre_open(api)
                api.now = PRE_OPEN
                market = await api.placed("bob", side="SELL", type="MARKET", price=None, quantity=3)
                market = market.order_id
                ask = (await api.placed("carol", quantity=3, price="15100.00")).order_id
                await asyncio.to_thread(
                    api.wait_rows,
                    "SELECT status FROM orders WHERE order_id IN (%s, %s)",
                    [("OPEN",), ("OPEN",)],
                    market,
                    ask,
                )  # collected: nothing matches in the pre-open
                operator.send([Uncross("RELIANCE", ts=3)])
                # buys: carol's 3 @ 15,100, alice's 4 @ 15,000, carol's 50 @ 14,900; sells:
                # bob's market 3: every price trades 3, 15,100 with no imbalance opens
                await asyncio.to_thread(
                    api.wait_rows,
                    "SELECT order_id, status, filled_quantity, avg_fill_price FROM orders "
                    "WHERE order_id IN (%s, %s) ORDER BY 1",
                    [
                        (market, "FILLED", 3, Decimal(1_510_000)),
                        (ask, "FILLED", 3, Decimal(1_510_000)),
                    ],
                    market,
                    ask,
                )
                return waiting, buy, iceberg

        waiting, buy, iceberg = run(day)
        assert waiting == [(4,)]  # the waiting stop held bob's shares
        assert api.rows(
            "SELECT a.user_id, p.quantity, p.blocked_quantity FROM positions p "
            "JOIN accounts a USING (account_id) ORDER BY 1"
        ) == [("alice", 6, 0), ("bob", 91, 0), ("carol", 3, 0)]
        # what is still held: alice's 4 left @ 15,000.00 and carol's iceberg, 50 @ 14,900.00
        assert api.rows("SELECT user_id, blocked_cash FROM accounts ORDER BY 1") == [
            ("alice", 4 * 1_500_000),
            ("bob", 0),
            ("carol", 50 * 1_490_000),
        ]
        assert api.rows(
            "SELECT order_id, disclosed_qty FROM orders WHERE order_id IN (%s, %s) ORDER BY 1",
            buy,
            iceberg,
        ) == [(buy, 0), (iceberg, 10)]
        assert holds(api) == [
            ("alice", 4 * 1_500_000, 4 * 1_500_000, 0, 0),
            ("bob", 0, 0, 0, 0),
            ("carol", 50 * 1_490_000, 50 * 1_490_000, 0, 0),
        ]
        cash, _, fees, shares, _ = money(api)  # what is held differs, not what there is
        assert (cash, fees, shares) == (before[0], before[2], before[3])
