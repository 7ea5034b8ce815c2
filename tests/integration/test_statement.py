"""The customer's money over REST (services/query on the real Postgres and Redis): the
statement (JSON and CSV) against the ledger, the trades' pages while fills arrive, and
the portfolio's realised and day P&L. Fills come from settlement and the projector
applied to a real engine book's events (tests/venue_support.py), stamped today."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
import redis

from brokercore.broker.funding import fund
from brokercore.consumers.projector import ProjectorConsumer
from brokercore.engine.records import Side
from edge_support import Edge, Recorder
from http_support import Services
from oms_support import Trader, auth, refusal, run
from read_model_support import stamped
from shared_servers import REDIS_URL
from venue_support import FEES, MARKET, MID, Venue, settle

KOLKATA = ZoneInfo("Asia/Kolkata")
PREVIOUS_CLOSE = 1_490_000  # paise: RELIANCE's last trade yesterday


def rupees(paise: int | Decimal) -> str:
    return f"{Decimal(paise) / 100:.2f}"


class Day:
    """Today's trading: alice (100 RELIANCE at 14,000.00) sells 10 to bob at 15,000.00,
    then buys 4 from him at 15,001.00; carol sells dave one share at a time."""

    def __init__(self, conn, prefix: str):
        self.conn, self.prefix = conn, prefix
        self.v = Venue(conn)
        self.alice = self.v.account("alice")
        self.bob = self.v.account("bob", shares=0)
        self.carol = self.v.account("carol")
        self.dave = self.v.account("dave", shares=0)
        self.v.ts = time.time_ns()  # the fills happen now, after the deposits
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.projector = ProjectorConsumer(MARKET, self.redis, prefix)
        self.applied = 0
        today = datetime.now(KOLKATA).replace(hour=0, minute=0, second=0, microsecond=0)
        conn.execute(
            "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
            "executed_at) VALUES ('RELIANCE:0', 'RELIANCE', 0, %s, 1, %s)",
            (PREVIOUS_CLOSE, today - timedelta(hours=8)),
        )
        self.v.place(self.alice, Side.SELL, 10, MID)
        self.v.place(self.bob, Side.BUY, 10, MID)
        self.apply()  # bob holds what he sells next
        self.v.place(self.alice, Side.BUY, 4, MID + 20)
        self.v.place(self.bob, Side.SELL, 4, MID + 20)
        self.apply()

    def small_trades(self, n: int) -> None:
        """n trades of one share at 15,000.00: carol to dave."""
        for _ in range(n):
            self.v.place(self.carol, Side.SELL, 1, MID)
            self.v.place(self.dave, Side.BUY, 1, MID)
        self.apply()

    def apply(self) -> None:
        """Settle and project the batches not applied yet."""
        settle(self.conn, self.v.messages(self.applied))
        self.projector.apply(self.conn, stamped(self.v, self.applied))
        self.applied = len(self.v.batches)

    def cash(self, account: int) -> int:
        return self.conn.execute(
            "SELECT cash FROM accounts WHERE account_id = %s", (account,)
        ).fetchone()[0]

    def close(self) -> None:
        keys = self.redis.keys(f"{self.prefix}*")
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


@pytest.fixture
def day(conn):
    d = Day(conn, f"st{uuid.uuid4().hex[:12]}:")
    yield d
    d.close()


def today() -> date:
    return datetime.now(KOLKATA).date()


def shifted(days: int) -> date:
    return today() + timedelta(days=days)


# --- the statement -------------------------------------------------------------------------


def test_the_statement_closes_at_the_accounts_cash(day, migrated):
    fund(day.conn, day.alice, "DEPOSIT", amount=50_000_00, reference="dep-1")
    fund(day.conn, day.alice, "WITHDRAWAL", amount=20_000_00, reference="wd-1")
    cash = day.cash(day.alice)

    async def scenario(api):
        alice = api.trader()
        return (
            await alice.statement(today(), today()),
            await alice.statement(),  # the 30 days up to today
            await alice.statement(shifted(1), shifted(1)),
            await alice.statement(shifted(-3), shifted(-1)),
            # the CSV, which the client does not read: by ?format= and by Accept
            await api.get("/statement", format="csv", **{"from": today().isoformat()}),
            await api.get("/statement", headers={"Accept": "text/csv"}),
        )

    now, default, tomorrow, before, as_csv, accepted = run_query(migrated, scenario)
    sell_fee, buy_fee = FEES.fee(10 * 1_500_000), FEES.fee(4 * 1_500_100)
    assert [(r.type, r.amount, r.symbol, r.quantity) for r in now.rows] == [
        ("DEPOSIT", rupees(10**10), None, None),  # opening the account
        ("SELL", rupees(10 * 1_500_000), "RELIANCE", 10),
        ("FEE", rupees(-sell_fee), "RELIANCE", None),
        ("BUY", rupees(-4 * 1_500_100), "RELIANCE", 4),
        ("FEE", rupees(-buy_fee), "RELIANCE", None),
        ("DEPOSIT", "50000.00", None, None),
        ("WITHDRAWAL", "-20000.00", None, None),
    ]
    assert now.opening_balance == "0.00" and now.closing_balance == rupees(cash)
    balance = Decimal(0)
    for row in now.rows:
        balance += Decimal(row.amount)
        assert row.balance == f"{balance:.2f}"
    assert [r.time for r in now.rows] == sorted(r.time for r in now.rows)
    assert now.time_zone == "Asia/Kolkata" and now.start == now.end == today().isoformat()
    assert default.rows == now.rows and default.start == shifted(-29).isoformat()
    # a day after everything: no rows, everything in the opening balance
    assert tomorrow.rows == [] and tomorrow.opening_balance == rupees(cash)
    assert tomorrow.closing_balance == rupees(cash)
    assert before.rows == [] and before.opening_balance == before.closing_balance == "0.00"

    for response in (as_csv, accepted):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(response.text)))
        assert table[0] == [
            "time (UTC)",
            "type",
            "symbol",
            "quantity",
            "price (INR)",
            "amount (INR)",
            "balance (INR)",
            "reference",
        ]
        assert table[1][1:] == ["OPENING BALANCE", "", "", "", "", "0.00", ""]
        assert [r[1] for r in table[2:-1]] == [r.type for r in now.rows]
        assert table[3][4:7] == ["15000.00", rupees(10 * 1_500_000), table[3][6]]
        assert table[-1][1:] == ["CLOSING BALANCE", "", "", "", "", rupees(cash), ""]


def test_bad_statement_queries_say_which_field(day, migrated):
    async def scenario(api):
        return [
            await api.get("/statement", **params)
            for params in (
                {"from": "2026-13-01"},
                {"from": shifted(1).isoformat(), "to": today().isoformat()},
                {"from": shifted(-400).isoformat(), "to": today().isoformat()},
                {"from": "0001-01-01", "to": "0001-01-02"},
                {"format": "pdf"},
                {"page": "2"},
            )
        ] + [await refusal(api.trader("nobody").statement())]

    *bad, nobody = run_query(migrated, scenario)
    assert [(r.status_code, r.json()["error"]["fields"][0]["field"]) for r in bad] == [
        (422, "from"),
        (422, "to"),
        (422, "from"),
        (422, "from"),
        (422, "format"),
        (422, "page"),
    ]
    assert nobody == (403, "NO_ACCOUNT")


# --- trades --------------------------------------------------------------------------------


def test_trades_page_newest_first_without_repeats_or_gaps_while_fills_arrive(day, migrated):
    day.small_trades(7)

    async def scenario(api):
        dave = api.trader("dave")
        first = await dave.trades(limit=3)
        day.small_trades(2)  # newer than every page: never in this walk's later pages
        pages = [first]
        while pages[-1].next_cursor is not None:
            pages.append(await dave.trades(limit=3, cursor=pages[-1].next_cursor))
        return pages, await dave.trades(limit=200)

    pages, everything = run_query(migrated, scenario)
    walked = [t.trade_id for page in pages for t in page.trades]
    assert [len(p.trades) for p in pages] == [3, 3, 1]
    assert len(everything.trades) == 9 and everything.next_cursor is None
    assert walked == [t.trade_id for t in everything.trades][2:]  # the 7, newest first
    times = [t.time for t in everything.trades]
    assert times == sorted(times, reverse=True)
    trade = everything.trades[0]
    assert (trade.symbol, trade.side, trade.price, trade.quantity, trade.value) == (
        "RELIANCE",
        "BUY",
        "15000.00",
        1,
        "15000.00",
    )
    assert trade.fee == rupees(FEES.fee(1_500_000))


def test_trades_filters_and_bounds(day, migrated):
    async def scenario(api):
        alice = api.trader()
        return (
            await alice.trades(side="SELL"),
            await alice.trades(side="BUY", symbol="RELIANCE"),
            await alice.trades(symbol="TCS"),
            await alice.trades(start=datetime.combine(shifted(1), datetime.min.time(), UTC)),
            [
                await api.get("/trades", **params)
                for params in (
                    {"limit": "0"},
                    {"limit": "201"},
                    {"side": "HOLD"},
                    {"cursor": "bm90IGEgY3Vyc29y"},
                    {"cursor": "!!"},
                    {"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
                )
            ],
        )

    sells, buys, none, later, bad = run_query(migrated, scenario)
    assert [(t.side, t.quantity) for t in sells.trades] == [("SELL", 10)]
    assert [(t.side, t.price) for t in buys.trades] == [("BUY", "15001.00")]
    assert none.trades == [] and later.trades == []
    assert [(r.status_code, r.json()["error"]["fields"][0]["field"]) for r in bad] == [
        (422, "limit"),
        (422, "limit"),
        (422, "side"),
        (422, "cursor"),
        (422, "cursor"),
        (422, "to"),
    ]


# --- P&L -----------------------------------------------------------------------------------


def test_the_portfolio_has_realised_and_day_pnl(day, migrated):
    async def scenario(api):
        return await api.trader().portfolio(), await api.trader("bob").portfolio()

    alice, bob = run_query(migrated, scenario)
    last, close = 1_500_100, PREVIOUS_CLOSE
    # alice: 100 at 14,000.00; sold 10 at 15,000.00, bought 4 at 15,001.00
    alice_realised = (1_500_000 - 1_400_000) * 10 - FEES.fee(10 * 1_500_000)
    alice_day = (last - close) * 90 + (last - 1_500_100) * 4 + (1_500_000 - close) * 10
    [position] = alice.positions
    assert position.quantity == 94 and position.current_price == "15001.00"
    assert position.realised_pnl == alice.realised_pnl == rupees(alice_realised)
    assert position.day_pnl == alice.day_pnl == rupees(alice_day) == "10090.00"
    # bob: bought 10 at 15,000.00 today, sold 4 at 15,001.00
    bob_realised = (1_500_100 - 1_500_000) * 4 - FEES.fee(4 * 1_500_100)
    assert bob.realised_pnl == rupees(bob_realised)
    assert bob.day_pnl == rupees((last - 1_500_000) * 6 + (1_500_100 - 1_500_000) * 4)
    with psycopg.connect(migrated) as conn:
        assert conn.execute(
            "SELECT realised_pnl FROM positions WHERE account_id = %s", (day.alice,)
        ).fetchone() == (Decimal(alice_realised),)


def test_a_position_closed_today_counts_in_the_totals(day, migrated):
    day.v.place(day.bob, Side.SELL, 6, MID + 40)  # bob sells the rest to alice
    day.v.place(day.alice, Side.BUY, 6, MID + 40)
    day.apply()

    async def scenario(api):
        return await api.trader("bob").portfolio()

    bob = run_query(migrated, scenario)
    realised = (
        (1_500_100 - 1_500_000) * 4
        - FEES.fee(4 * 1_500_100)
        + (1_500_200 - 1_500_000) * 6
        - FEES.fee(6 * 1_500_200)
    )
    assert bob.positions == []
    assert bob.realised_pnl == rupees(realised)
    # all of it bought and sold today: the day's P&L is the sells less the buy
    assert bob.day_pnl == rupees(4 * 1_500_100 + 6 * 1_500_200 - 10 * 1_500_000)


# --- the edge ------------------------------------------------------------------------------


def test_the_edge_sends_the_read_sides_paths_to_their_services():
    with (
        Recorder() as query,
        Recorder() as notify,
        Edge(query=query.address, notify=notify.address) as edge,
        httpx.Client(base_url=edge.url, timeout=30) as client,
    ):
        for method, path in (
            ("GET", "/api/v1/statement?from=2026-12-01"),
            ("GET", "/api/v1/trades"),
            ("POST", "/api/v1/watchlists"),
            ("PUT", "/api/v1/watchlists/7"),
            ("GET", "/api/v1/notifications?unreadOnly=true"),
            ("POST", "/api/v1/notifications/0:1:2/read"),
            ("POST", "/api/v1/notifications/read-all"),
        ):
            answer = client.request(method, path)
            assert answer.status_code == 200 and answer.json()["path"] == path, answer.text
    assert [r["path"] for r in query.requests] == [
        "/api/v1/statement?from=2026-12-01",
        "/api/v1/trades",
        "/api/v1/watchlists",
        "/api/v1/watchlists/7",
    ]
    assert [r["path"] for r in notify.requests] == [
        "/api/v1/notifications?unreadOnly=true",
        "/api/v1/notifications/0:1:2/read",
        "/api/v1/notifications/read-all",
    ]


# --- helpers -------------------------------------------------------------------------------


class Reader:
    """The query service (in this process) as users read it: ``trader(user)``, their
    brokercore.client, and ``get``, a raw GET for what the client does not send (bad
    queries, the CSV)."""

    def __init__(self, services: Services):
        self.services = services
        self.traders: list[Trader] = []

    def trader(self, user: str = "alice") -> Trader:
        self.traders.append(self.services.trader(user))
        return self.traders[-1]

    async def get(self, path: str, user: str = "alice", headers=(), **params) -> httpx.Response:
        headers = auth(user) | dict(headers)
        return await self.services.query.get("/api/v1" + path, params=params, headers=headers)


def run_query(database: str, scenario):
    """``scenario(reader)`` against the query service (in this process); each answer
    the client took is a 200."""

    async def main():
        async with Services(database) as services:
            reader = Reader(services)
            answer = await scenario(reader)
            taken = {s for trader in reader.traders for s in trader.statuses if s < 400}
            assert taken <= {200}, taken
            return answer

    return run(main)
