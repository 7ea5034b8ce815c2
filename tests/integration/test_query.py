"""The query service (services/query) on the real Postgres and Redis: orders with their
filters and pages, read-your-writes from the OMS's tables, an order's history at any
instant, the portfolio, market data and candles, who may see what, and the read cache
(hits, invalidation, and answers from Postgres while Redis is down)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import psycopg
import pytest
import redis

from brokercore.broker.money import rupees
from brokercore.read.cache import invalidate
from brokercore.realtime.channels import BookUpdate, encode_message, md_key
from brokercore.services.query import create_app
from oms_support import Api, auth, run
from shared_servers import REDIS_URL, service_settings

PREFIXES: list[str] = []  # this test's keys in the shared Redis
T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # a Friday, 09:30 in Mumbai


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return t(seconds).isoformat()


class Query:
    """The query app in this process (its lifespan run) and an HTTP client on it."""

    def __init__(self, database: str, prefix: str | None = None, **overrides):
        self.prefix = prefix or f"q{uuid.uuid4().hex[:12]}:"
        self.settings = service_settings(database, self.prefix, **overrides)
        self.app = create_app(self.settings)
        if self.settings.redis_url == REDIS_URL:
            PREFIXES.append(self.prefix)

    async def __aenter__(self):
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://query",
        )
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)

    @property
    def cache(self):
        return self.app.state.query.cache

    async def get(self, path: str, user: str = "alice", **params) -> httpx.Response:
        return await self.client.get("/api/v1" + path, params=params, headers=auth(user))

    async def ok(self, path: str, user: str = "alice", **params):
        response = await self.get(path, user, **params)
        assert response.status_code == 200, response.text
        return response.json()


def query(database: str, scenario, **overrides):
    """Run ``scenario(api)`` against a fresh query app; its result."""

    async def main():
        async with Query(database, **overrides) as api:
            return await scenario(api)

    return run(main)


def execute(database: str, statement: str, *args) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(statement, args)


@pytest.fixture(autouse=True)
def shared_redis_keys():
    """What a test leaves under its own prefixes in the shared Redis goes."""
    yield
    client = redis.Redis.from_url(REDIS_URL)
    while PREFIXES:
        for key in client.scan_iter(match=PREFIXES.pop() + "*", count=1000):
            client.delete(key)
    client.close()


# --- the data set ------------------------------------------------------------------------

# (order_id, user, symbol, side, type, tif, price, quantity, filled, avg price, status,
#  reject reason, created at (s after T0)); orders of the read model
READ_MODEL = [
    (
        101,
        "alice",
        "RELIANCE",
        "BUY",
        "LIMIT",
        "DAY",
        250000,
        10,
        10,
        "250012.3400",
        "FILLED",
        None,
        0,
    ),
    (
        102,
        "alice",
        "RELIANCE",
        "SELL",
        "LIMIT",
        "GTC",
        251050,
        5,
        2,
        "251050",
        "PARTIALLY_FILLED",
        None,
        60,
    ),
    (103, "alice", "TCS", "BUY", "MARKET", "IOC", None, 3, 0, None, "CANCELLED", None, 120),
    (
        104,
        "alice",
        "TCS",
        "SELL",
        "LIMIT",
        "DAY",
        350000,
        4,
        0,
        None,
        "REJECTED",
        "PRICE_OUT_OF_BAND",
        180,
    ),
    (105, "alice", "RELIANCE", "BUY", "LIMIT", "DAY", 249995, 7, 0, None, "OPEN", None, 240),
    (106, "alice", "INFY", "BUY", "LIMIT", "DAY", 150000, 1, 0, None, "OPEN", None, 240),
    (107, "alice", "TCS", "BUY", "LIMIT", "DAY", 349990, 2, 0, None, "EXPIRED", None, 300),
    (201, "bob", "RELIANCE", "SELL", "LIMIT", "DAY", 250000, 10, 10, "250000", "FILLED", None, 30),
]
# Orders only in the OMS's table, not yet seen by the projector: 108 just placed, 109
# already partly filled by settlement, 202 bob's.
WRITE_ONLY = [
    (108, "alice", "RELIANCE", "BUY", "LIMIT", "DAY", 250100, 1, 0, None, "PENDING", None, 360),
    (
        109,
        "alice",
        "RELIANCE",
        "BUY",
        "LIMIT",
        "GTC",
        250000,
        2,
        1,
        "250000",
        "PARTIALLY_FILLED",
        None,
        420,
    ),
    (202, "bob", "TCS", "BUY", "LIMIT", "DAY", 349000, 1, 0, None, "PENDING", None, 90),
]
NEWEST_FIRST = [109, 108, 107, 106, 105, 104, 103, 102, 101]  # alice's orders

# (trade_id, symbol, price, quantity, executed at (s after T0))
TRADES = [
    ("RELIANCE:1", "RELIANCE", 250000, 1, 10),
    ("RELIANCE:2", "RELIANCE", 252500, 2, 30),
    ("RELIANCE:3", "RELIANCE", 249500, 3, 50),
    ("RELIANCE:4", "RELIANCE", 251000, 4, 70),
    ("RELIANCE:5", "RELIANCE", 250500, 1, 90),
    ("RELIANCE:6", "RELIANCE", 250000, 1, 90),
    ("TCS:1", "TCS", 340000, 5, 100),
]


def _write_order(conn, row, status=None, filled=None) -> None:
    (
        order_id,
        user,
        symbol,
        side,
        type_,
        tif,
        price,
        quantity,
        done,
        avg,
        state,
        reason,
        created,
    ) = row
    conn.execute(
        "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
        "time_in_force, price, quantity, filled_quantity, avg_fill_price, status, "
        "reject_reason, created_at, updated_at) SELECT %s, %s, account_id, %s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s, %s FROM accounts WHERE user_id = %s",
        (
            order_id,
            t(created).date(),
            symbol,
            side,
            type_,
            tif,
            price,
            quantity,
            done if filled is None else filled,
            avg if filled is None else None,
            status or state,
            reason,
            t(created),
            t(created + 5),
            user,
        ),
    )


@pytest.fixture
def dataset(database):
    """The database with the orders, fills, history, positions, trades and book above."""
    with psycopg.connect(database, autocommit=True) as conn:
        for row in READ_MODEL:
            (
                order_id,
                user,
                symbol,
                side,
                type_,
                tif,
                price,
                quantity,
                filled,
                avg,
                status,
                reason,
                created,
            ) = row
            fills = (
                [{"tradeId": "RELIANCE:5", "price": "2510.50", "quantity": 2, "time": iso(90)}]
                if order_id == 102
                else []
            )
            conn.execute(
                "INSERT INTO read_model.orders (order_id, user_id, account_id, symbol, side, "
                "type, time_in_force, price, quantity, filled_quantity, avg_price, status, "
                "reject_reason, fills, created_at, updated_at) SELECT %s, %s, account_id, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s FROM accounts "
                "WHERE user_id = %s",
                (
                    order_id,
                    user,
                    symbol,
                    side,
                    type_,
                    tif,
                    price,
                    quantity,
                    filled,
                    avg,
                    status,
                    reason,
                    json.dumps(fills),
                    t(created),
                    t(created + 5),
                    user,
                ),
            )
            # the write table has them too; settlement is ahead on 105
            _write_order(conn, row, *(("PARTIALLY_FILLED", 3) if order_id == 105 else ()))
        for row in WRITE_ONLY:
            _write_order(conn, row)
        conn.execute(
            "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, "
            "quantity, executed_at) SELECT 'RELIANCE:9', 'BUY', 109, account_id, "
            "'RELIANCE', 250000, 1, %s FROM accounts WHERE user_id = 'alice'",
            (t(421),),
        )
        # order 101's life: placed, accepted, two fills in one instant, filled
        for status, filled, payload, at in [
            ("PENDING", 0, {"request": {"symbol": "RELIANCE"}}, 0),
            ("OPEN", 0, {"event": "ACCEPTED"}, 1),
            ("PARTIALLY_FILLED", 3, {"event": "TRADE", "trade_id": "RELIANCE:1"}, 2),
            ("PARTIALLY_FILLED", 6, {"event": "TRADE", "trade_id": "RELIANCE:2"}, 2),
            ("FILLED", 10, {"event": "TRADE", "trade_id": "RELIANCE:3"}, 4),
        ]:
            conn.execute(
                "INSERT INTO order_events (order_id, account_id, status, "
                "filled_quantity, payload, occurred_at) SELECT 101, account_id, %s, "
                "%s, %s, %s FROM accounts WHERE user_id = 'alice'",
                (status, filled, json.dumps(payload), t(at)),
            )
        conn.cursor().executemany(
            "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, executed_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (tid, symbol, int(tid.partition(":")[2]), price, qty, t(at))
                for tid, symbol, price, qty, at in TRADES
            ],
        )
        conn.cursor().executemany(
            "INSERT INTO read_model.book_orders (order_id, symbol, side, price, open_quantity, "
            "shown_quantity) VALUES (%s, 'RELIANCE', %s, %s, %s, %s)",
            [
                (1, "BUY", 250000, 4, 4),
                (2, "BUY", 250000, 6, 6),
                (3, "BUY", 249995, 5, 5),
                (4, "SELL", 250050, 7, 7),
                (5, "SELL", 250100, 1, 1),
            ],
        )
        conn.cursor().executemany(
            "INSERT INTO read_model.positions (user_id, symbol, quantity, avg_price) "
            "VALUES (%s, %s, %s, %s)",
            [
                ("alice", "RELIANCE", 10, "240050.5000"),
                ("alice", "TCS", -5, "350000"),
                ("alice", "INFY", 3, "150000"),
                ("alice", "ITC", 0, "45000"),
            ],
        )
        conn.execute("UPDATE accounts SET blocked_cash = 250100 WHERE user_id = 'alice'")
    return database


def ids(body) -> list[int]:
    return [order["orderId"] for order in body["orders"]]


# --- GET /orders ---------------------------------------------------------------------------


def test_orders_come_newest_first_in_pages_with_the_total(dataset):
    async def scenario(api):
        return [
            await api.ok("/orders", pageSize=4, page=page) for page in (1, 2, 3, 4)
        ], await api.ok("/orders")

    pages, everything = query(dataset, scenario)
    assert [ids(p) for p in pages] == [NEWEST_FIRST[:4], NEWEST_FIRST[4:8], NEWEST_FIRST[8:], []]
    assert [p["pagination"] for p in pages] == [
        {"total": 9, "page": n, "pageSize": 4} for n in (1, 2, 3, 4)
    ]
    assert ids(everything) == NEWEST_FIRST  # 106 before 105: same instant
    assert everything["pagination"] == {"total": 9, "page": 1, "pageSize": 50}
    by_id = {o["orderId"]: o for o in everything["orders"]}
    assert by_id[102] == {
        "orderId": 102,
        "symbol": "RELIANCE",
        "side": "SELL",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "price": "2510.50",
        "quantity": 5,
        "filledQty": 2,
        "avgPrice": "2510.50",
        "status": "PARTIALLY_FILLED",
        "rejectReason": None,
        "createdAt": iso(60),
        "updatedAt": iso(65),
        "triggerPrice": None,
        "disclosedQuantity": 0,
    }
    assert (by_id[101]["avgPrice"], by_id[103]["price"], by_id[104]["rejectReason"]) == (
        "2500.1234",
        None,
        "PRICE_OUT_OF_BAND",
    )
    # the read model's row wins over the write table's (105), never both
    assert by_id[105]["status"] == "OPEN" and by_id[105]["filledQty"] == 0


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"status": "OPEN"}, [106, 105]),
        ({"status": "OPEN,PARTIALLY_FILLED"}, [109, 106, 105, 102]),
        ({"status": "PENDING"}, [108]),
        ({"status": "FILLED"}, [101]),
        ({"status": "CANCELLED,REJECTED,EXPIRED"}, [107, 104, 103]),
        ({"symbol": "TCS"}, [107, 104, 103]),
        ({"symbol": "WIPRO"}, []),
        ({"from": iso(120)}, [109, 108, 107, 106, 105, 104, 103]),  # inclusive
        ({"to": iso(120)}, [102, 101]),  # exclusive
        ({"from": iso(120), "to": iso(300)}, [106, 105, 104, 103]),
        ({"from": "2026-11-20T09:32:00+05:30", "to": "2026-11-20T04:04:00Z"}, [104, 103]),
        ({"symbol": "RELIANCE", "status": "PARTIALLY_FILLED,OPEN", "from": iso(61)}, [109, 105]),
        ({"symbol": "TCS", "status": "EXPIRED", "from": iso(0), "to": iso(301)}, [107]),
        ({"status": "OPEN", "pageSize": 1, "page": 2}, [105]),
    ],
)
def test_orders_filters_and_their_combinations(dataset, params, expected):
    async def scenario(api):
        return await api.ok("/orders", **params)

    body = query(dataset, scenario)
    assert ids(body) == expected
    assert body["pagination"]["total"] == (2 if params.get("pageSize") else len(expected))


@pytest.mark.parametrize(
    "params, field",
    [
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "201"}, "pageSize"),
        ({"pageSize": "ten"}, "pageSize"),
        ({"page": "0"}, "page"),
        ({"status": "OPEN,BOGUS"}, "status[1]"),
        ({"status": ""}, "status[0]"),
        ({"symbol": ""}, "symbol"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-20T04:00:00"}, "from"),  # no time zone
        ({"from": iso(60), "to": iso(60)}, "to"),
        ({"pagesize": "10"}, "pagesize"),
    ],
)
def test_bad_order_queries_get_422_with_the_field(dataset, params, field):
    async def scenario(api):
        return await api.get("/orders", **params)

    response = query(dataset, scenario)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert [f["field"] for f in error["fields"]] == [field]
    if field.startswith("status"):
        assert "PARTIALLY_FILLED" in error["fields"][0]["message"]  # says what is allowed


def test_a_repeated_parameter_is_refused(dataset):
    async def scenario(api):
        return await api.client.get("/api/v1/orders?page=1&page=2", headers=auth("alice"))

    response = query(dataset, scenario)
    assert response.status_code == 422
    assert response.json()["error"]["fields"] == [
        {"field": "page", "message": "given more than once"}
    ]


# --- GET /orders/{id} ----------------------------------------------------------------------


def test_an_order_comes_with_its_fills(dataset):
    async def scenario(api):
        return await api.ok("/orders/102"), await api.ok("/orders/105")

    order, unfilled = query(dataset, scenario)
    assert order["status"] == "PARTIALLY_FILLED" and order["filledQty"] == 2
    assert order["fills"] == [
        {"tradeId": "RELIANCE:5", "price": "2510.50", "quantity": 2, "time": iso(90)}
    ]
    assert unfilled["fills"] == [] and unfilled["status"] == "OPEN"


def test_read_your_writes_orders_the_read_model_has_not_seen(dataset):
    async def scenario(api):
        return (
            await api.ok("/orders/108"),
            await api.ok("/orders/109"),
            await api.ok("/orders", status="PENDING"),
        )

    pending, partly, listed = query(dataset, scenario)
    assert pending == {
        "orderId": 108,
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "DAY",
        "price": "2501.00",
        "quantity": 1,
        "filledQty": 0,
        "avgPrice": None,
        "status": "PENDING",
        "rejectReason": None,
        "createdAt": iso(360),
        "updatedAt": iso(365),
        "triggerPrice": None,
        "disclosedQuantity": 0,
        "fills": [],
    }
    # settlement ran ahead of the projector: the write table's state, with its fills
    assert (partly["status"], partly["filledQty"], partly["avgPrice"]) == (
        "PARTIALLY_FILLED",
        1,
        "2500.00",
    )
    assert partly["fills"] == [
        {"tradeId": "RELIANCE:9", "price": "2500.00", "quantity": 1, "time": iso(421)}
    ]
    assert ids(listed) == [108]


def test_an_order_settled_before_the_projector_saw_it_is_still_found(dataset):
    # settlement may finish an order before the projector writes its row: it is not
    # open any more, and not in the read model yet, and must still be found by its id
    execute(
        dataset,
        "UPDATE orders SET status = 'FILLED', filled_quantity = quantity, "
        "avg_fill_price = price WHERE order_id = 108",
    )

    async def scenario(api):
        return await api.ok("/orders/108")

    order = query(dataset, scenario)
    assert (order["orderId"], order["status"], order["filledQty"]) == (108, "FILLED", 1)


def test_a_user_sees_only_their_own_orders(dataset):
    async def scenario(api):
        return (
            await api.get("/orders/101", user="bob"),
            await api.ok("/orders", user="bob"),
            await api.get("/orders/101/history", user="bob"),
            await api.ok("/orders", user="carol"),
            await api.get("/orders/999"),
            await api.get("/orders/abc"),
            await api.get("/orders/²"),
        )

    foreign, bobs, history, carols, missing, word, digit = query(dataset, scenario)
    for response in (foreign, history, missing, word, digit):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert ids(bobs) == [202, 201] and bobs["pagination"]["total"] == 2
    assert carols == {"orders": [], "pagination": {"total": 0, "page": 1, "pageSize": 50}}


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "UNAUTHENTICATED"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer not-a-token"}, "INVALID_TOKEN"),
    ],
)
def test_every_endpoint_needs_a_valid_token(dataset, headers, code):
    paths = [
        "/orders",
        "/orders/101",
        "/orders/101/history",
        "/portfolio",
        "/marketdata/RELIANCE",
        "/marketdata/RELIANCE/candles",
    ]

    async def scenario(api):
        return [await api.client.get("/api/v1" + p, headers=headers) for p in paths]

    for response in query(dataset, scenario):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == code
        assert response.headers["www-authenticate"].startswith("Bearer")


# --- GET /orders/{id}/history --------------------------------------------------------------


def test_history_gives_the_order_at_any_instant(dataset):
    instants = [0, 0.5, 1.5, 2, 3, 4, 100]

    async def scenario(api):
        return (
            [await api.ok("/orders/101/history", at=iso(s)) for s in instants],
            await api.get("/orders/101/history", at=iso(-1)),
            await api.ok("/orders/101/history"),
        )

    states, early, history = query(dataset, scenario)
    assert [(s["status"], s["filledQty"]) for s in states] == [
        ("PENDING", 0),
        ("PENDING", 0),
        ("OPEN", 0),
        ("PARTIALLY_FILLED", 6),
        ("PARTIALLY_FILLED", 6),
        ("FILLED", 10),
        ("FILLED", 10),
    ]
    assert [s["at"] for s in states] == [iso(s) for s in instants]
    tie = states[3]
    assert tie["orderId"] == 101 and tie["event"]["occurredAt"] == iso(2)
    assert tie["event"]["payload"] == {"event": "TRADE", "trade_id": "RELIANCE:2"}
    assert early.status_code == 404
    assert early.json()["error"]["code"] == "ORDER_NOT_YET_PLACED"
    assert history["orderId"] == 101 and history["createdAt"] == iso(0)
    events = history["events"]
    assert [(e["status"], e["filledQty"], e["occurredAt"]) for e in events] == [
        ("PENDING", 0, iso(0)),
        ("OPEN", 0, iso(1)),
        ("PARTIALLY_FILLED", 3, iso(2)),
        ("PARTIALLY_FILLED", 6, iso(2)),
        ("FILLED", 10, iso(4)),
    ]
    assert events[0]["payload"] == {"request": {"symbol": "RELIANCE"}}
    assert events == sorted(events, key=lambda e: e["eventId"])


def test_history_before_any_event_is_the_order_as_placed(dataset):
    async def scenario(api):
        return (
            await api.ok("/orders/108/history", at=iso(360)),
            await api.get("/orders/108/history", at=iso(359)),
            await api.ok("/orders/108/history"),
            await api.get("/orders/108/history", at="noon"),
        )

    placed, before, history, bad = query(dataset, scenario)
    assert placed == {
        "orderId": 108,
        "at": iso(360),
        "status": "PENDING",
        "filledQty": 0,
        "event": None,
    }
    assert before.status_code == 404 and before.json()["error"]["code"] == "ORDER_NOT_YET_PLACED"
    assert history == {"orderId": 108, "createdAt": iso(360), "events": []}
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "at"


# --- GET /portfolio -------------------------------------------------------------------------


def test_portfolio_values_positions_at_the_last_trade(dataset):
    async def scenario(api):
        return (
            await api.ok("/portfolio"),
            await api.ok("/portfolio", user="carol"),
            await api.get("/portfolio", user="dave"),
        )

    alice, carol, dave = query(dataset, scenario)
    assert alice == {
        "cash": "1000000.00",
        "blockedCash": "2501.00",
        "positions": [
            {
                "symbol": "INFY",
                "quantity": 3,
                "avgPrice": "1500.00",
                "currentPrice": None,
                "pnl": None,
                "realisedPnl": "0.00",
                "dayPnl": "0.00",
            },
            {
                "symbol": "RELIANCE",
                "quantity": 10,
                "avgPrice": "2400.5050",
                "currentPrice": "2500.00",
                "pnl": "994.95",
                "realisedPnl": "0.00",
                "dayPnl": "0.00",
            },
            {
                "symbol": "TCS",
                "quantity": -5,
                "avgPrice": "3500.00",
                "currentPrice": "3400.00",
                "pnl": "500.00",
                "realisedPnl": "0.00",
                "dayPnl": "0.00",
            },
        ],
        "realisedPnl": "0.00",
        "dayPnl": "0.00",
    }
    assert carol == {
        "cash": "1000000.00",
        "blockedCash": "0.00",
        "positions": [],
        "realisedPnl": "0.00",
        "dayPnl": "0.00",
    }
    assert dave.status_code == 403 and dave.json()["error"]["code"] == "NO_ACCOUNT"


# --- the cache ------------------------------------------------------------------------------


def test_answers_are_cached_until_a_writer_invalidates_them(dataset):
    writer = redis.Redis.from_url(REDIS_URL)

    async def scenario(api):
        first = await api.ok("/portfolio")
        listed = await api.ok("/orders", status="OPEN")
        order = await api.ok("/orders/105")
        misses = api.cache.misses
        assert (
            await api.ok("/portfolio"),
            await api.ok("/orders", status="OPEN"),
            await api.ok("/orders/105"),
        ) == (first, listed, order)
        assert (api.cache.hits, api.cache.misses) == (3, misses)
        assert writer.exists(f"{api.prefix}cache:alice:0:portfolio")
        # what the projector and settlement do: commit, then invalidate
        execute(dataset, "UPDATE accounts SET cash = cash + 100 WHERE user_id = 'alice'")
        execute(dataset, "UPDATE read_model.orders SET status = 'CANCELLED' WHERE order_id = 105")
        stale = (
            await api.ok("/portfolio"),
            await api.ok("/orders", status="OPEN"),
            await api.ok("/orders/105"),
        )
        assert stale == (first, listed, order)  # the cache really answers
        invalidate(writer, api.prefix, ["alice"])
        return (
            first,
            await api.ok("/portfolio"),
            await api.ok("/orders", status="OPEN"),
            await api.ok("/orders/105"),
            await api.ok("/portfolio", user="carol"),
        )

    try:
        first, portfolio, listed, order, carol = query(dataset, scenario)
    finally:
        writer.close()
    assert first["cash"] == "1000000.00" and portfolio["cash"] == "1000001.00"
    assert ids(listed) == [106] and order["status"] == "CANCELLED"
    assert carol["cash"] == "1000000.00"


def test_an_order_placed_through_the_oms_is_listed_at_once(database):
    async def scenario():
        async with Api(database) as oms, Query(database, prefix=oms.settings.redis_prefix) as api:
            before = await api.ok("/orders")
            assert await api.ok("/orders") == before and api.cache.hits == 1
            placed = await oms.placed(quantity=3)
            return (
                before,
                placed.order_id,
                await api.ok("/orders"),
                await api.ok(f"/orders/{placed.order_id}"),
            )

    before, order_id, after, order = run(scenario)
    assert ids(before) == [] and ids(after) == [order_id]
    assert (order["status"], order["quantity"], order["price"], order["fills"]) == (
        "PENDING",
        3,
        "15000.00",
        [],
    )


def test_reads_come_from_postgres_while_redis_is_down(dataset, private_redis):
    async def scenario(api):
        first = await api.ok("/portfolio")
        assert await api.ok("/portfolio") == first and api.cache.hits == 1
        private_redis.kill()
        execute(dataset, "UPDATE accounts SET cash = cash + 100 WHERE user_id = 'alice'")
        during = [await api.ok("/portfolio") for _ in range(3)]
        book = await api.ok("/marketdata/RELIANCE")
        orders = await api.ok("/orders", status="PENDING")
        errors = api.cache.errors
        private_redis.start()
        # after the cache's back-off the answers go through Redis again: a miss, a hit
        hits, deadline = api.cache.hits, time.monotonic() + 10
        while api.cache.hits == hits:
            assert time.monotonic() < deadline, "the cache was not used again"
            assert (await api.ok("/portfolio"))["cash"] == "1000001.00"
            await asyncio.sleep(0.05)
        return first, during, book, orders, errors

    first, during, book, orders, errors = query(dataset, scenario, redis_url=private_redis.url)
    assert first["cash"] == "1000000.00"
    assert [p["cash"] for p in during] == ["1000001.00"] * 3
    assert book["bestBid"] == {"price": "2500.00", "quantity": 10}
    assert ids(orders) == [108]
    assert errors >= 1


# --- market data ----------------------------------------------------------------------------


def test_market_data_from_the_read_model_or_the_projectors_copy(dataset):
    async def scenario(api):
        computed = await api.ok("/marketdata/RELIANCE")
        empty = await api.ok("/marketdata/SBIN")
        unknown = await api.get("/marketdata/NOPE")
        copy = encode_message(BookUpdate("RELIANCE", [], [], None, None, "2600.00"))
        writer = redis.Redis.from_url(REDIS_URL)
        writer.set(md_key(api.prefix, "RELIANCE"), copy)
        writer.close()
        return computed, empty, unknown, await api.ok("/marketdata/RELIANCE")

    computed, empty, unknown, kept = query(dataset, scenario)
    bids = [{"price": "2500.00", "quantity": 10}, {"price": "2499.95", "quantity": 5}]
    asks = [{"price": "2500.50", "quantity": 7}, {"price": "2501.00", "quantity": 1}]
    assert computed == {
        "type": "BOOK",
        "symbol": "RELIANCE",
        "bids": bids,
        "asks": asks,
        "bestBid": bids[0],
        "bestAsk": asks[0],
        "lastPrice": "2500.00",
        "phase": "OPEN",
        "halted": False,
        "indicative": None,
    }
    assert empty == {
        "type": "BOOK",
        "symbol": "SBIN",
        "bids": [],
        "asks": [],
        "bestBid": None,
        "bestAsk": None,
        "lastPrice": None,
        "phase": "OPEN",
        "halted": False,
        "indicative": None,
    }
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "UNKNOWN_SYMBOL"
    assert kept["lastPrice"] == "2600.00" and kept["bids"] == []


def test_market_data_in_pre_open_and_while_halted(database):
    """In PRE_OPEN the answer has the indicative opening from the whole book (an
    iceberg's hidden part and the waiting market orders count, the last trade is the
    reference) while the depth shows what the market sees; HALTED says halted."""
    # buys 100 @ 3020, 100 @ 3010, a market buy of 20; sells 150 @ 3000 (an iceberg
    # showing 30), 100 @ 3030; the last trade at 3025 (in SBIN's band, 2500..5000, so the
    # reference). At 3000, 3010, 3020, 3025, 3030: D = 220, 220, 120, 20, 20;
    # S = 150, 150, 150, 150, 250; V = 150, 150, 120, 20, 20; I = 70, 70, 30, 130, 230:
    # 3000 and 3010 tie, 3010 is nearer the reference
    with psycopg.connect(database, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO read_model.book_orders (order_id, symbol, side, price, open_quantity, "
            "shown_quantity, disclosed_quantity) VALUES (%s, 'SBIN', %s, %s, %s, %s, %s)",
            [
                (1, "BUY", 302000, 100, 100, 0),
                (2, "BUY", 301000, 100, 100, 0),
                (3, "BUY", None, 20, 20, 0),
                (4, "SELL", 300000, 150, 30, 30),
                (5, "SELL", 303000, 100, 100, 0),
            ],
        )
        conn.execute(
            "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, executed_at) "
            "VALUES ('SBIN:1', 'SBIN', 1, 302500, 5, %s)",
            (t(0),),
        )
        conn.execute("INSERT INTO read_model.phases VALUES ('SBIN', 'PRE_OPEN', 2, %s)", (t(1),))

    async def scenario(api):
        pre_open = await api.ok("/marketdata/SBIN")
        execute(database, "UPDATE read_model.phases SET phase = 'HALTED'")
        return pre_open, await api.ok("/marketdata/SBIN")

    pre_open, halted = query(database, scenario)
    bids = [{"price": "3020.00", "quantity": 100}, {"price": "3010.00", "quantity": 100}]
    asks = [{"price": "3000.00", "quantity": 30}, {"price": "3030.00", "quantity": 100}]
    assert pre_open == {
        "type": "BOOK",
        "symbol": "SBIN",
        "bids": bids,
        "asks": asks,
        "bestBid": bids[0],
        "bestAsk": asks[0],
        "lastPrice": "3025.00",
        "phase": "PRE_OPEN",
        "halted": False,
        "indicative": {"price": "3010.00", "volume": 150, "imbalance": 70, "surplusSide": "BUY"},
    }
    assert halted == pre_open | {"phase": "HALTED", "halted": True, "indicative": None}


def test_stops_and_icebergs_show_their_trigger_and_disclosed_quantity(database):
    """A waiting stop (from the read model) and an iceberg the projector has not seen
    yet (from the OMS's table) come with the new fields."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO read_model.orders (order_id, user_id, account_id, symbol, side, type, "
            "time_in_force, price, quantity, status, trigger_price, created_at, updated_at) "
            "SELECT 7, 'alice', account_id, 'SBIN', 'SELL', 'STOP', 'DAY', NULL, 10, "
            "'TRIGGER_PENDING', 99000, %s, %s FROM accounts WHERE user_id = 'alice'",
            (t(0), t(1)),
        )
        conn.execute(
            "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
            "time_in_force, price, quantity, disclosed_qty, created_at, updated_at) "
            "SELECT 8, '2026-11-20', account_id, 'SBIN', 'BUY', 'LIMIT', 'GTC', 98000, 50, "
            "10, %s, %s FROM accounts WHERE user_id = 'alice'",
            (t(2), t(2)),
        )

    async def scenario(api):
        return await api.ok("/orders"), await api.ok("/orders/7"), await api.ok("/orders/8")

    listed, stop, iceberg = query(database, scenario)
    assert [
        (o["orderId"], o["type"], o["status"], o["price"], o["triggerPrice"])
        + (o["disclosedQuantity"],)
        for o in listed["orders"]
    ] == [
        (8, "LIMIT", "PENDING", "980.00", None, 10),
        (7, "STOP", "TRIGGER_PENDING", None, "990.00", 0),
    ]
    assert (stop["triggerPrice"], stop["fills"]) == ("990.00", [])
    assert (iceberg["disclosedQuantity"], iceberg["status"]) == (10, "PENDING")


def test_candles_aggregate_the_trades(dataset):
    async def scenario(api):
        return (
            await api.ok(
                "/marketdata/RELIANCE/candles", interval="1m", **{"from": iso(0), "to": iso(120)}
            ),
            await api.ok(
                "/marketdata/RELIANCE/candles", interval="5m", **{"from": iso(0), "to": iso(300)}
            ),
            await api.ok("/marketdata/RELIANCE/candles", **{"from": iso(60), "to": iso(70)}),
            await api.ok(
                "/marketdata/RELIANCE/candles", interval="5s", **{"from": iso(0), "to": iso(120)}
            ),
        )

    minutes, five, cut, seconds = query(dataset, scenario)
    assert minutes == {
        "symbol": "RELIANCE",
        "interval": "1m",
        "from": iso(0),
        "to": iso(120),
        "candles": [
            {
                "time": iso(0),
                "open": "2500.00",
                "high": "2525.00",
                "low": "2495.00",
                "close": "2495.00",
                "volume": 6,
            },
            {
                "time": iso(60),
                "open": "2510.00",
                "high": "2510.00",
                "low": "2500.00",
                "close": "2500.00",
                "volume": 6,
            },
        ],
    }
    assert five["candles"] == [
        {
            "time": iso(0),
            "open": "2500.00",
            "high": "2525.00",
            "low": "2495.00",
            "close": "2500.00",
            "volume": 12,
        }
    ]
    assert cut["candles"] == []  # `to` is exclusive: 70 is out
    assert [(c["time"], c["close"], c["volume"]) for c in seconds["candles"]] == [
        (iso(10), "2500.00", 1),
        (iso(30), "2525.00", 2),
        (iso(50), "2495.00", 3),
        (iso(70), "2510.00", 4),
        (iso(90), "2500.00", 2),
    ]  # the web app's live chart (5 s): one candle per trading 5 s


def test_the_last_trade_of_a_sweep_is_the_last_by_book_sequence(dataset):
    """One aggressive order's trades share its timestamp; seq 10 comes after seq 9 (as
    text, "RELIANCE:10" sorts before "RELIANCE:9")."""
    execute(
        dataset,
        "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
        "executed_at) VALUES ('RELIANCE:9', 'RELIANCE', 9, 251500, 1, %s), "
        "('RELIANCE:10', 'RELIANCE', 10, 251600, 1, %s)",
        t(100),
        t(100),
    )

    async def scenario(api):
        return (
            await api.ok("/marketdata/RELIANCE"),
            await api.ok(
                "/marketdata/RELIANCE/candles", interval="1m", **{"from": iso(60), "to": iso(120)}
            ),
        )

    book, minute = query(dataset, scenario)
    assert book["lastPrice"] == "2516.00"
    assert minute["candles"][0]["close"] == "2516.00"


def test_candles_default_to_the_last_day(dataset):
    now = datetime.now(UTC)
    execute(
        dataset,
        "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
        "executed_at) VALUES ('TCS:8', 'TCS', 8, 341000, 1, %s), "
        "('TCS:9', 'TCS', 9, 342000, 2, %s)",
        now - timedelta(hours=25),
        now - timedelta(hours=1),
    )

    async def scenario(api):
        return await api.ok("/marketdata/TCS/candles", interval="1h")

    body = query(dataset, scenario)
    assert [(c["close"], c["volume"]) for c in body["candles"]] == [("3420.00", 2)]
    span = datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"])
    assert span == timedelta(hours=24)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"interval": "2m"}, "interval"),
        ({"interval": "1m", "from": iso(0), "to": iso(86_400 + 60)}, "from"),
        ({"from": iso(60), "to": iso(0)}, "to"),
        ({"to": "soon"}, "to"),
        ({"symbol": "TCS"}, "symbol"),
    ],
)
def test_bad_candle_queries_get_422(dataset, params, field):
    async def scenario(api):
        return await api.get("/marketdata/RELIANCE/candles", **params), await api.get(
            "/marketdata/NOPE/candles"
        )

    response, unknown = query(dataset, scenario)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == field
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "UNKNOWN_SYMBOL"


def test_money_never_shows_a_negative_zero(dataset):
    """A short position valued at its own average has a P&L of zero, which is "0.00"
    (every money string goes through ``money.rupees``), never "-0.00"."""
    execute(
        dataset,
        "UPDATE read_model.positions SET avg_price = 340000 "
        "WHERE user_id = 'alice' AND symbol = 'TCS'",
    )  # TCS last 3,400.00

    async def scenario(api):
        return await api.ok("/portfolio")

    [tcs] = [p for p in query(dataset, scenario)["positions"] if p["symbol"] == "TCS"]
    assert tcs == {
        "symbol": "TCS",
        "quantity": -5,
        "avgPrice": "3400.00",
        "currentPrice": "3400.00",
        "pnl": "0.00",
        "realisedPnl": "0.00",
        "dayPnl": "0.00",
    }
    assert [
        rupees(v)
        for v in (
            Decimal("-0"),
            Decimal("-0.00"),
            Decimal("-0.0000"),
            -0,
            Decimal("-0.5"),
            -1,
            Decimal("-12.5"),
        )
    ] == ["0.00", "0.00", "0.00", "0.00", "-0.0050", "-0.01", "-0.1250"]
