"""The reconciler's invariant checks on the real Postgres: a correct ledger gives no
finding, and each kind of breakage, made directly in Postgres, is reported with its
account or order and the numbers. Also the funding journal the conservation checks
start from, and its backfill for accounts older than it."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors, sql

from brokercore.broker.funding import FundingKind, fund, open_account
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.reconcile import check_invariants
from brokercore.db.migrations import MIGRATIONS_DIR, apply_migrations
from brokercore.engine.records import Side, Tif
from brokercore.services.reconciler import market_sessions, report, republish
from oms_support import order, outcome, run
from platform_support import platform
from shared_servers import KAFKA_BOOTSTRAP
from venue_support import CASH, INST, MID, SHARES, Venue, settle

SETTINGS = ServiceSettings(instruments="config/instruments.toml")


def findings(conn) -> list[str]:
    """The lines the reconciler's report and log print for the broken invariants."""
    return [str(f) for f in check_invariants(conn, market_sessions(SETTINGS), datetime.now(UTC))]


def bypassing_guards(conn, table: str) -> None:
    """Simulate a bug that got past the database's own guards (a throw-away database):
    the table's CHECK constraints dropped and its triggers disabled."""
    conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
    for (name,) in conn.execute(
        "SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = %s::regclass",
        (table,),
    ).fetchall():
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )


class Day:
    """A few settled orders, with fees: a seller's GTC sell partly filled by a buyer
    (6 shares still blocked), and a resting GTC buy (its cash blocked)."""

    def __init__(self, conn):
        v = Venue(conn)
        self.seller, self.buyer = v.account("seller"), v.account("buyer", shares=0)
        self.sell = v.place(self.seller, Side.SELL, 10, MID, Tif.GTC)
        self.buy = v.place(self.buyer, Side.BUY, 4, MID)
        self.resting = v.place(self.buyer, Side.BUY, 5, MID - 10, Tif.GTC)
        settle(conn, v.messages())
        self.price = INST.ticks_to_paise(MID)
        self.blocked_cash = conn.execute(
            "SELECT blocked_cash FROM accounts WHERE account_id = %s", (self.buyer,)
        ).fetchone()[0]
        self.buyer_cash = conn.execute(
            "SELECT cash FROM accounts WHERE account_id = %s", (self.buyer,)
        ).fetchone()[0]
        self.fees = conn.execute(
            "SELECT sum(amount) FROM fee_income WHERE side = 'BUY'"
        ).fetchone()[0]


def test_a_settled_day_with_fees_is_clean(conn):
    day = Day(conn)
    assert conn.execute(
        "SELECT status, filled_quantity FROM orders ORDER BY order_id"
    ).fetchall() == [("PARTIALLY_FILLED", 4), ("FILLED", 4), ("OPEN", 0)]
    assert day.fees > 0 and day.blocked_cash > 0
    assert findings(conn) == []


# Each breakage: (tables whose guards it bypasses, the SQL, the line the report prints
# among others: a breakage may break more than one invariant).
# {seller}, {buyer}, {sell}, {buy}, {price}... are the Day's.
BREAKAGES = {
    "negative holding": (
        ["positions"],
        "UPDATE positions SET quantity = -130 WHERE account_id = {seller}",
        "NEGATIVE_HOLDING account {seller} RELIANCE quantity -130 (short selling off)",
    ),
    "negative cash": (
        ["accounts"],
        "UPDATE accounts SET cash = -500, blocked_cash = 0 WHERE account_id = {buyer}",
        "NEGATIVE_CASH account {buyer} cash -500 paise",
    ),
    "blocked cash above cash": (
        ["accounts"],
        "UPDATE accounts SET cash = blocked_cash - 1 WHERE account_id = {buyer}",
        "BLOCKED_CASH_ABOVE_CASH account {buyer} blocked cash {blocked_cash} paise above "
        "cash {blocked_cash_less_1} paise",
    ),
    "blocked shares above held": (
        ["positions"],
        "UPDATE positions SET quantity = 5 WHERE account_id = {seller}",
        "BLOCKED_SHARES_ABOVE_HELD account {seller} RELIANCE blocked 6 shares above 5 held "
        "(short selling off)",
    ),
    "blocked cash not the open orders' holds": (
        [],
        "UPDATE accounts SET blocked_cash = blocked_cash + 100 WHERE account_id = {buyer}",
        "BLOCKED_CASH_MISMATCH account {buyer} blocked cash {blocked_cash_plus_100} paise, "
        "its 1 open orders hold {blocked_cash} paise",
    ),
    "blocked shares not the open sells' holds": (
        [],
        "UPDATE positions SET blocked_quantity = 5 WHERE account_id = {seller}",
        "BLOCKED_SHARES_MISMATCH account {seller} RELIANCE blocked 5 shares, its 1 open sell "
        "orders hold 6 shares",
    ),
    "a finished order still holding": (
        [],
        "UPDATE orders SET blocked_cash = 7 WHERE order_id = {buy}",
        "HOLD_AFTER_END account {buyer} order {buy} FILLED, still holds 7 paise and 0 shares",
    ),
    "filled quantity not its fills": (
        [],
        "UPDATE orders SET filled_quantity = 3 WHERE order_id = {buy}",
        "FILLS_MISMATCH account {buyer} order {buy} filled quantity 3, its 1 fills sum to 4",
    ),
    "a fill of no order": (
        [],
        "DELETE FROM orders WHERE order_id = {buy}",
        "FILLS_MISMATCH account {buyer} order {buy} 1 fills of 4 shares of an order not in orders",
    ),
    "a position not its fills": (
        [],
        "UPDATE positions SET quantity = quantity + 7 WHERE account_id = {buyer}",
        "POSITION_NOT_CONSERVED account {buyer} RELIANCE quantity 11, expected 4 = "
        "0 in - 0 out + 4 bought - 0 sold",
    ),
    "a paisa of cash from nowhere": (
        [],
        "UPDATE accounts SET cash = cash + 1 WHERE account_id = {buyer}",
        "CASH_NOT_CONSERVED account {buyer} cash {buyer_cash_plus_1} paise, expected "
        "{buyer_cash} = {deposit} deposited - 0 withdrawn - {bought} bought + 0 sold - "
        "{fees} fees",
    ),
    "an order stuck PENDING": (
        [],
        "UPDATE orders SET status = 'PENDING', updated_at = '2026-03-02 04:00Z' "
        "WHERE order_id = {resting}",
        "STUCK_PENDING account {buyer} order {resting} PENDING since 2026-03-02 04:00:00 UTC",
    ),
    "a DAY order open after its close": (
        [],
        "UPDATE orders SET time_in_force = 'DAY' WHERE order_id = {resting}",
        "DAY_ORDER_PAST_CLOSE account {buyer} order {resting} OPEN DAY order on RELIANCE of "
        "trade date 2026-03-02, its session closed 2026-03-02 10:00:00 UTC",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_broken_invariant_is_reported_with_its_numbers(conn, breakage):
    day = Day(conn)
    numbers = vars(day) | {
        "blocked_cash_less_1": day.blocked_cash - 1,
        "blocked_cash_plus_100": day.blocked_cash + 100,
        "buyer_cash_plus_1": day.buyer_cash + 1,
        "deposit": CASH,
        "bought": 4 * day.price,
    }
    assert findings(conn) == []
    tables, statement, line = BREAKAGES[breakage]
    for table in tables:
        bypassing_guards(conn, table)
    conn.execute(statement.format(**numbers))
    assert line.format(**numbers) in findings(conn)


def test_each_round_of_the_reconciler_logs_what_is_broken(conn, db, caplog):
    day = Day(conn)
    settings = ServiceSettings(database_url=db, instruments=SETTINGS.instruments)
    kafka = KafkaSettings(KAFKA_BOOTSTRAP, f"t{uuid.uuid4().hex[:12]}-", 4)

    def one_round() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="brokercore.reconciler"):
            asyncio.run(republish(settings, kafka, 0, 60.0, True, asyncio.Event()))
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert one_round() == []
    bypassing_guards(conn, "positions")
    conn.execute(
        "UPDATE positions SET quantity = -130, blocked_quantity = 0 WHERE account_id = %s",
        (day.seller,),
    )
    conn.execute("UPDATE orders SET blocked_shares = 0 WHERE order_id = %s", (day.sell,))
    assert one_round() == [
        "2 INVARIANT(S) BROKEN (brokercore service reconciler --report lists them all)",
        f"INVARIANT BROKEN: NEGATIVE_HOLDING account {day.seller} RELIANCE quantity -130 "
        f"(short selling off)",
        f"INVARIANT BROKEN: POSITION_NOT_CONSERVED account {day.seller} RELIANCE quantity "
        f"-130, expected 96 = 100 in - 0 out + 0 bought - 4 sold",
    ]


def test_the_database_refuses_the_states_the_guards_cover(conn):
    """Without bypassing them, the database's own guards (0001's constraints, 0004's
    triggers) refuse such states: the reconciler is the second line of defence."""
    day = Day(conn)
    for statement in (
        "UPDATE positions SET quantity = -130 WHERE account_id = %s",
        "UPDATE accounts SET cash = -500, blocked_cash = 0 WHERE account_id = %s",
    ):
        with pytest.raises(errors.CheckViolation):
            conn.execute(statement, (day.seller if "positions" in statement else day.buyer,))
    assert findings(conn) == []


# --- the funding journal ---------------------------------------------------------------------


def test_funding_moves_cash_and_shares_with_its_journal_row_once_per_reference(conn):
    account = open_account(conn, "dana", cash=1_000, shares={"TCS": (10, 3_000)})
    assert open_account(conn, "dana", cash=5) is None, "a second opening changes nothing"
    assert fund(conn, account, FundingKind.DEPOSIT, amount=500, reference="utr-1")
    assert not fund(conn, account, "DEPOSIT", amount=500, reference="utr-1"), "applied once"
    assert fund(conn, account, FundingKind.WITHDRAWAL, amount=200, reference="payout-1")
    assert fund(conn, account, FundingKind.SHARES_IN, symbol="TCS", quantity=10, price=4_000)
    assert fund(conn, account, FundingKind.SHARES_OUT, symbol="TCS", quantity=5)
    assert conn.execute(
        "SELECT cash FROM accounts WHERE account_id = %s", (account,)
    ).fetchone() == (1_300,)
    held = (15, 3_500)  # 10 at 30.00 + 10 at 40.00, then 5 out
    assert (
        conn.execute(
            "SELECT quantity, avg_price FROM positions WHERE account_id = %s", (account,)
        ).fetchone()
        == held
    )
    assert (
        conn.execute(
            "SELECT quantity, avg_price FROM read_model.positions WHERE user_id = 'dana'"
        ).fetchone()
        == held
    )
    assert conn.execute(
        "SELECT kind, symbol, amount, quantity, reference FROM funding ORDER BY funding_id"
    ).fetchall() == [
        ("DEPOSIT", None, 1_000, 0, None),
        ("SHARES_IN", "TCS", 0, 10, None),
        ("DEPOSIT", None, 500, 0, "utr-1"),
        ("WITHDRAWAL", None, 200, 0, "payout-1"),
        ("SHARES_IN", "TCS", 0, 10, None),
        ("SHARES_OUT", "TCS", 0, 5, None),
    ]
    assert findings(conn) == []


def test_funding_the_database_refuses_changes_nothing(conn):
    day = Day(conn)
    with pytest.raises(errors.CheckViolation):  # cash blocked by the resting buy
        fund(conn, day.buyer, FundingKind.WITHDRAWAL, amount=day.buyer_cash)
    with pytest.raises(errors.CheckViolation):  # more than held, no shorting
        fund(conn, day.seller, FundingKind.SHARES_OUT, symbol="RELIANCE", quantity=SHARES)
    with pytest.raises(ValueError):
        fund(conn, day.buyer, FundingKind.DEPOSIT, amount=-5)
    with pytest.raises(errors.RestrictViolation):  # the journal is append-only
        conn.execute("UPDATE funding SET amount = amount + 1")
    assert conn.execute("SELECT count(*) FROM funding").fetchone() == (3,)
    assert findings(conn) == []


def test_accounts_older_than_the_journal_get_an_opening_entry(db, tmp_path):
    """0005 on a database whose accounts were funded by plain INSERTs and have traded:
    each gets the opening entry that today's balance minus its fills implies, so the
    report starts clean; a later unexplained paisa is still found."""
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0005":
            shutil.copy(path, before)
    apply_migrations(db, before)
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(
            "INSERT INTO accounts (user_id, cash) VALUES ('old', 1000000), "
            "('older', 50000), ('broke', 0)"
        )
        c.execute(
            "INSERT INTO positions (account_id, symbol, quantity) VALUES "
            "(1, 'TCS', 7), (2, 'TCS', 3)"
        )
        c.execute(
            "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
            "price, quantity, filled_quantity, status) VALUES "
            "(1, '2026-03-02', 1, 'TCS', 'BUY', 'LIMIT', 1000, 3, 3, 'FILLED'), "
            "(2, '2026-03-02', 2, 'TCS', 'SELL', 'LIMIT', 1000, 3, 3, 'FILLED')"
        )
        c.execute(
            "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, "
            "quantity, executed_at) VALUES "
            "('TCS:1', 'BUY', 1, 1, 'TCS', 1000, 3, now()), "
            "('TCS:1', 'SELL', 2, 2, 'TCS', 1000, 3, now())"
        )
        c.execute("INSERT INTO fee_income (trade_id, side, amount) VALUES ('TCS:1', 'BUY', 20)")
    assert apply_migrations(db)[0] == "0005_funding"  # then the later ones
    with psycopg.connect(db, autocommit=True) as c:
        assert c.execute(
            "SELECT account_id, kind, symbol, amount, quantity FROM funding ORDER BY funding_id"
        ).fetchall() == [
            (1, "DEPOSIT", None, 1_003_020, 0),  # 1,000,000 + 3,000 bought + 20 fee
            (2, "DEPOSIT", None, 47_000, 0),  # 50,000 - 3,000 sold
            (1, "SHARES_IN", "TCS", 0, 4),  # 7 - 3 bought
            (2, "SHARES_IN", "TCS", 0, 6),
        ]  # 3 + 3 sold
        assert findings(c) == []
        c.execute("UPDATE accounts SET cash = cash + 1 WHERE account_id = 3")
        assert findings(c) == [
            "CASH_NOT_CONSERVED account 3 cash 1 paise, expected 0 = "
            "0 deposited - 0 withdrawn - 0 bought + 0 sold - 0 fees"
        ]


# --- a busy, correct platform ----------------------------------------------------------------


def test_a_busy_day_through_the_engine_leaves_no_finding(database, tmp_path, capsys):
    """Concurrent buys and sells of three users through the OMS, the engine daemon and
    settlement, crossing so that they trade, then cancels of what rests: the report,
    Kafka against Postgres and the invariants, is clean. (Sells stay within bob's 100
    shares and buys within the cash, so the state is correct whatever the OMS's
    locking.) Then bob's holding goes to -130 behind the guards' back, as in the
    incident: the report names it."""
    rng = random.Random(11)
    orders = (
        [("alice", "BUY", rng.randint(1, 5), 15_000 + 5 * rng.randint(-4, 4)) for _ in range(12)]
        + [("carol", "BUY", rng.randint(1, 5), 15_000 + 5 * rng.randint(-4, 4)) for _ in range(12)]
        + [("bob", "SELL", 8, 15_000 + 5 * rng.randint(-4, 4)) for _ in range(12)]
    )
    rng.shuffle(orders)
    with platform(database, tmp_path) as api:

        async def trade():
            async with api:
                answers = await asyncio.gather(
                    *(
                        api.trader(user).place(
                            order(
                                side=side,
                                quantity=quantity,
                                price=f"{price}.00",
                                time_in_force="GTC",
                            )
                        )
                        for user, side, quantity, price in orders
                    )
                )
                users = ("alice", "bob", "carol")
                statuses = [s for user in users for s in api.trader(user).statuses]
                assert statuses == [202] * len(orders), statuses
                return {a.order_id: user for a, (user, *_) in zip(answers, orders, strict=True)}

        placed = run(trade)
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'PENDING'", [(0,)])
        assert api.rows("SELECT count(*) FROM fills")[0][0] > 0, "some of them traded"

        async def cancel_the_rest():
            async with api:
                resting = api.rows(
                    "SELECT order_id FROM orders WHERE status IN ('OPEN', 'PARTIALLY_FILLED')"
                )
                await asyncio.gather(
                    *(outcome(api.trader(placed[i]).cancel(i)) for (i,) in resting)
                )
                statuses = {s for user in set(placed.values()) for s in api.trader(user).statuses}
                assert statuses <= {202, 409}  # 409: just filled

        run(cancel_the_rest)
        api.wait_rows(
            "SELECT count(*) FROM orders WHERE status IN ('PENDING', 'OPEN', 'PARTIALLY_FILLED')",
            [(0,)],
        )
        assert report(api.settings, api.kafka) == 0
        out = capsys.readouterr().out
        assert "0 finding(s)" in out and "invariants of the ledger: 0 broken" in out, out
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]

    with psycopg.connect(database, autocommit=True) as conn:
        bypassing_guards(conn, "positions")
        (bob,) = conn.execute(
            "UPDATE positions SET quantity = -130 FROM accounts a "
            "WHERE a.account_id = positions.account_id "
            "AND a.user_id = 'bob' RETURNING a.account_id"
        ).fetchone()
    assert report(api.settings, api.kafka) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"  NEGATIVE_HOLDING account {bob} RELIANCE quantity -130 (short selling off)" in lines
    ), lines
