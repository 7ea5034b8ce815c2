"""Migrations and the core schema, against a real PostgreSQL.

The server is the one ``scripts/postgres/postgres.sh`` runs (``make test`` starts it;
the ``server`` fixture starts it too, idempotently, unless ``BROKERCORE_DATABASE_URL``
names another server). Every test gets a fresh, throw-away database (``test_<uuid>``,
dropped afterwards), so tests never share state. No mocks: a machine without Postgres
fails here rather than passing green.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from brokercore.db.migrations import (
    MIGRATIONS_DIR,
    MigrationError,
    applied_migrations,
    apply_migrations,
    load_migrations,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [m.version for m in load_migrations()]
CORE_TABLES = {
    "accounts",
    "positions",
    "orders",
    "orders_default",
    "fills",
    "order_events",
    "idempotency_keys",
    "outbox",
    "consumer_offsets",
    "schema_migrations",
}


def copy_migrations(to: Path, extra: dict[str, str] | None = None) -> Path:
    """brokercore's migrations copied into ``to``, plus ``extra`` files by name."""
    to.mkdir(parents=True, exist_ok=True)
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, to / path.name)
    for name, text in (extra or {}).items():
        (to / name).write_text(text)
    return to


def tables(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as c:
        rows = c.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind IN ('r', 'p')"
        ).fetchall()
    return {r[0] for r in rows}


def add_account(c: psycopg.Connection, user: str = "alice", cash: int = 1_000_000) -> int:
    return c.execute(
        "INSERT INTO accounts (user_id, cash) VALUES (%s, %s) RETURNING account_id", (user, cash)
    ).fetchone()[0]


def add_order(c: psycopg.Connection, account: int, day: dt.date, **fields) -> int:
    row = {
        "account_id": account,
        "trade_date": day,
        "symbol": "INFY",
        "side": "BUY",
        "type": "LIMIT",
        "price": 150_000,
        "quantity": 10,
        **fields,
    }
    query = sql.SQL("INSERT INTO orders ({}) VALUES ({}) RETURNING order_id").format(
        sql.SQL(", ").join(map(sql.Identifier, row)),
        sql.SQL(", ").join(sql.Placeholder() * len(row)),
    )
    return c.execute(query, list(row.values())).fetchone()[0]


# --- the migrator ------------------------------------------------------------------


def test_the_package_ships_its_migrations():
    versions = [m.version for m in load_migrations()]
    assert versions[0] == "0001_core"
    assert versions == sorted(versions)
    assert (MIGRATIONS_DIR / "0001_core.sql").is_file()


def test_an_empty_database_gets_every_table(db):
    assert tables(db) == set()
    assert apply_migrations(db) == SHIPPED
    assert CORE_TABLES <= tables(db)
    checksums = applied_migrations(db)
    assert checksums == {m.version: m.checksum for m in load_migrations()}
    with psycopg.connect(db) as c:
        assert c.execute("SELECT to_regclass('order_id_seq') IS NOT NULL").fetchone()[0]
        assert c.execute(
            "SELECT to_regprocedure('create_orders_partition(date)') IS NOT NULL"
        ).fetchone()[0]
        kind = c.execute("SELECT relkind FROM pg_class WHERE oid = 'orders'::regclass").fetchone()[
            0
        ]
        assert kind == "p"  # partitioned


def test_applying_twice_applies_nothing_the_second_time(db):
    assert apply_migrations(db) == SHIPPED
    assert apply_migrations(db) == []
    assert list(applied_migrations(db)) == SHIPPED


def test_only_new_files_are_applied(db, tmp_path):
    folder = copy_migrations(tmp_path / "m")
    assert apply_migrations(db, folder) == SHIPPED
    (folder / "0902_more.sql").write_text("CREATE TABLE more (id INT PRIMARY KEY);")
    assert apply_migrations(db, folder) == ["0902_more"]
    assert "more" in tables(db)


def test_concurrent_appliers_apply_each_file_exactly_once(db, tmp_path):
    # A slow second file widens the window in which the others would race.
    folder = copy_migrations(
        tmp_path / "m",
        {
            "0900_slow.sql": "SELECT pg_sleep(0.3); CREATE TABLE slow (id INT PRIMARY KEY);",
            "0901_log.sql": "CREATE TABLE applied_log (n INT); INSERT INTO applied_log VALUES (1);",
        },
    )
    workers = 8
    barrier = threading.Barrier(workers)
    results: list[list[str]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work():
        try:
            barrier.wait()
            got = apply_migrations(db, folder)
            with lock:
                results.append(got)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert len(results) == workers
    everything = sorted(v for got in results for v in got)
    assert everything == SHIPPED + ["0900_slow", "0901_log"]
    with psycopg.connect(db) as c:
        assert c.execute("SELECT count(*) FROM applied_log").fetchone()[0] == 1
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(SHIPPED) + 2


def test_a_changed_applied_file_is_refused(db, tmp_path):
    folder = copy_migrations(tmp_path / "m")
    apply_migrations(db, folder)
    with (folder / "0001_core.sql").open("a") as f:
        f.write("\n-- an edit after the fact\n")
    (folder / "0903_new.sql").write_text("CREATE TABLE new_one (id INT);")
    with pytest.raises(MigrationError, match="0001_core"):
        apply_migrations(db, folder)
    # Nothing else was applied either.
    assert list(applied_migrations(db)) == SHIPPED
    assert "new_one" not in tables(db)


def test_a_failing_file_is_rolled_back_whole(db, tmp_path):
    folder = copy_migrations(
        tmp_path / "m",
        {
            "0904_broken.sql": "CREATE TABLE half (id INT); SELECT no_such_function();",
        },
    )
    with pytest.raises(MigrationError, match="0904_broken"):
        apply_migrations(db, folder)
    assert list(applied_migrations(db)) == SHIPPED
    assert "half" not in tables(db)


def test_the_command_line(db):
    run = [sys.executable, "-m", "brokercore.db.migrations", "--url", db]
    first = subprocess.run(run, check=False, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_core" in first.stdout
    second = subprocess.run(run, check=False, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout


def test_the_command_line_reads_the_url_from_the_environment(db):
    env = {**os.environ, "BROKERCORE_DATABASE_URL": db}
    done = subprocess.run(
        [sys.executable, "-m", "brokercore.db.migrations"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "applied 0001_core" in done.stdout


# --- the schema --------------------------------------------------------------------


def test_cash_cannot_go_negative(conn):
    with pytest.raises(errors.CheckViolation):  # which of two constraints says so is unspecified
        add_account(conn, cash=-1)
    account = add_account(conn, cash=100)
    with pytest.raises(errors.CheckViolation):
        conn.execute("UPDATE accounts SET cash = cash - 101 WHERE account_id = %s", (account,))


def test_blocked_cash_stays_within_cash(conn):
    with pytest.raises(errors.CheckViolation, match="accounts_blocked_cash_within_cash"):
        conn.execute("INSERT INTO accounts (user_id, cash, blocked_cash) VALUES ('bob', 100, 101)")
    account = add_account(conn, cash=100)
    conn.execute("UPDATE accounts SET blocked_cash = 100 WHERE account_id = %s", (account,))
    with pytest.raises(errors.CheckViolation, match="accounts_blocked_cash_within_cash"):
        conn.execute("UPDATE accounts SET blocked_cash = 101 WHERE account_id = %s", (account,))
    with pytest.raises(errors.CheckViolation):
        conn.execute("UPDATE accounts SET blocked_cash = -1 WHERE account_id = %s", (account,))
    with pytest.raises(errors.CheckViolation):  # spending blocked cash away
        conn.execute("UPDATE accounts SET cash = 50 WHERE account_id = %s", (account,))


def test_user_ids_are_unique(conn):
    add_account(conn, "carol")
    with pytest.raises(errors.UniqueViolation):
        add_account(conn, "carol")


def test_blocked_quantity_cannot_go_negative_but_short_quantity_can(conn):
    account = add_account(conn)
    conn.execute("UPDATE accounts SET allow_short = true WHERE account_id = %s", (account,))
    conn.execute(
        "INSERT INTO positions (account_id, symbol, quantity, avg_price)"
        " VALUES (%s, 'INFY', -5, 150000.5)",
        (account,),
    )  # short, where allowed
    with pytest.raises(errors.CheckViolation, match="positions_blocked_quantity_nonnegative"):
        conn.execute("UPDATE positions SET blocked_quantity = -1 WHERE account_id = %s", (account,))


def test_order_rows_are_checked(conn, migrated):
    account = add_account(conn)
    day = dt.date(2026, 1, 5)
    with pytest.raises(errors.CheckViolation, match="orders_price_matches_type"):
        add_order(conn, account, day, type="MARKET")  # a market order has no price
    with pytest.raises(errors.CheckViolation, match="orders_price_matches_type"):
        add_order(conn, account, day, price=None)  # a limit order needs one
    with pytest.raises(errors.CheckViolation, match="orders_status_valid"):
        add_order(conn, account, day, status="HALF_DONE")
    with pytest.raises(errors.CheckViolation, match="orders_filled_within_quantity"):
        add_order(conn, account, day, filled_quantity=11)
    with pytest.raises(errors.ForeignKeyViolation):
        add_order(conn, account + 1000, day)
    market = add_order(conn, account, day, type="MARKET", price=None, time_in_force="IOC")
    assert market > 0


def test_order_events_are_append_only(conn):
    conn.execute(
        "INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)"
        " VALUES (1, 1, 'PENDING', '{\"why\": \"new\"}', now())"
    )
    with pytest.raises(errors.RestrictViolation, match="append-only"):
        conn.execute("UPDATE order_events SET status = 'FILLED'")
    with pytest.raises(errors.RestrictViolation, match="append-only"):
        conn.execute("DELETE FROM order_events")
    with pytest.raises(errors.RestrictViolation, match="append-only"):
        conn.execute("TRUNCATE order_events")
    assert conn.execute("SELECT status FROM order_events").fetchall() == [("PENDING",)]


def test_order_events_dedupe_key_is_unique(conn):
    insert = (
        "INSERT INTO order_events (order_id, account_id, status, occurred_at, dedupe_key)"
        " VALUES (1, 1, 'OPEN', now(), 'events:0:17')"
    )
    conn.execute(insert)
    with pytest.raises(errors.UniqueViolation):
        conn.execute(insert)


def test_a_redelivered_fill_is_refused(conn):
    account = add_account(conn)
    insert = (
        "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, quantity,"
        " executed_at) VALUES (%s, %s, %s, %s, 'INFY', 150000, 3, now())"
    )
    conn.execute(insert, ("INFY:42", "BUY", 1, account))
    conn.execute(insert, ("INFY:42", "SELL", 2, account))  # the trade's other side
    with pytest.raises(errors.UniqueViolation):
        conn.execute(insert, ("INFY:42", "BUY", 1, account))
    again = conn.execute(insert + " ON CONFLICT DO NOTHING", ("INFY:42", "SELL", 2, account))
    assert again.rowcount == 0
    assert conn.execute("SELECT count(*) FROM fills").fetchone()[0] == 2


def test_an_order_lands_in_its_days_partition(conn):
    account = add_account(conn)
    day = dt.date(2026, 1, 5)
    assert (
        conn.execute("SELECT create_orders_partition(%s)::text", (day,)).fetchone()[0]
        == "orders_20260105"
    )
    # Idempotent.
    assert (
        conn.execute("SELECT create_orders_partition(%s)::text", (day,)).fetchone()[0]
        == "orders_20260105"
    )
    order = add_order(conn, account, day)
    other = add_order(conn, account, day + dt.timedelta(days=1))
    where = "SELECT tableoid::regclass::text FROM orders WHERE order_id = %s"
    assert conn.execute(where, (order,)).fetchone()[0] == "orders_20260105"
    assert conn.execute(where, (other,)).fetchone()[0] == "orders_default"
    assert other != order


def test_a_new_partition_takes_its_rows_from_the_default_one(conn):
    account = add_account(conn)
    day = dt.date(2026, 2, 2)
    early = add_order(conn, account, day)  # before the day's partition exists
    stays = add_order(conn, account, day + dt.timedelta(days=1))
    conn.execute("SELECT create_orders_partition(%s)", (day,))
    where = "SELECT tableoid::regclass::text, quantity FROM orders WHERE order_id = %s"
    assert conn.execute(where, (early,)).fetchone() == ("orders_20260202", 10)
    assert conn.execute(where, (stays,)).fetchone()[0] == "orders_default"
    # The moved partition is a real one: its constraints and primary key hold.
    with pytest.raises(errors.UniqueViolation):
        add_order(conn, account, day, order_id=early)
    with pytest.raises(errors.CheckViolation):
        add_order(conn, account, day, quantity=0)


def test_partitions_can_be_created_concurrently(migrated):
    day = dt.date(2026, 3, 3)
    barrier = threading.Barrier(6)
    names: list[str] = []
    failures: list[BaseException] = []

    def work():
        try:
            with psycopg.connect(migrated, autocommit=True) as c:
                barrier.wait()
                names.append(
                    c.execute("SELECT create_orders_partition(%s)::text", (day,)).fetchone()[0]
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert names == ["orders_20260303"] * 6


def test_order_ids_come_from_one_sequence_across_partitions(conn):
    account = add_account(conn)
    days = [dt.date(2026, 4, d) for d in (1, 2, 3)]
    for day in days[:2]:
        conn.execute("SELECT create_orders_partition(%s)", (day,))
    ids = [add_order(conn, account, day) for day in days for _ in range(3)]
    assert len(set(ids)) == len(ids)
    found = conn.execute("SELECT trade_date FROM orders WHERE order_id = %s", (ids[4],)).fetchone()
    assert found == (days[1],)


def test_idempotency_keys_are_unique_per_user(conn):
    insert = (
        "INSERT INTO idempotency_keys (user_id, key, order_id, request_hash, expires_at)"
        " VALUES (%s, %s, %s, 'h', now() + interval '1 day')"
    )
    conn.execute(insert, ("alice", "k1", 1))
    conn.execute(insert, ("bob", "k1", 2))  # the same key, another user
    with pytest.raises(errors.UniqueViolation):
        conn.execute(insert, ("alice", "k1", 3))
    first = conn.execute(
        insert + " ON CONFLICT (user_id, key) DO NOTHING RETURNING order_id", ("alice", "k1", 4)
    )
    assert first.fetchone() is None


def test_outbox_and_consumer_offsets(conn):
    conn.execute(
        "INSERT INTO outbox (topic, partition, key, payload, order_id)"
        " VALUES ('orders', 2, 'INFY', '\\x0102', 7)"
    )
    unpublished = conn.execute("SELECT order_id FROM outbox WHERE published_at IS NULL").fetchall()
    assert unpublished == [(7,)]
    upsert = (
        "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)"
        " VALUES ('settlement', 'events', 0, %s) ON CONFLICT (consumer, topic, partition)"
        " DO UPDATE SET next_offset = excluded.next_offset"
    )
    conn.execute(upsert, (10,))
    conn.execute(upsert, (25,))
    assert conn.execute("SELECT next_offset FROM consumer_offsets").fetchall() == [(25,)]


def test_the_read_model_starts_from_the_orders_and_holdings_already_there(db, tmp_path):
    """0003 on a database in use (at 0002): holdings, and orders the engine has answered,
    are copied into the read model (PENDING ones are the projector's, at their first
    event)."""
    folder = copy_migrations(tmp_path / "m")
    later = {p: p.read_text() for p in folder.glob("*.sql") if p.name >= "0003"}
    for path in later:
        path.unlink()
    apply_migrations(db, folder)
    day = dt.date(2026, 11, 25)
    with psycopg.connect(db, autocommit=True) as c:
        alice = add_account(c)
        c.execute(
            "INSERT INTO positions (account_id, symbol, quantity, avg_price) "
            "VALUES (%s, 'INFY', 30, 149000.5)",
            (alice,),
        )
        filled = add_order(
            c,
            alice,
            day,
            status="FILLED",
            filled_quantity=10,
            filled_notional=1_500_000,
            avg_fill_price=150_000,
        )
        c.execute(
            "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, "
            "quantity, executed_at) VALUES ('INFY:7', 'BUY', %s, %s, 'INFY', 150000, "
            "10, '2026-11-25 06:00:00+00')",
            (filled, alice),
        )
        resting = add_order(c, alice, day, status="OPEN")
        add_order(c, alice, day)  # PENDING
    for path, text in later.items():
        path.write_text(text)
    assert apply_migrations(db, folder) == sorted(path.stem for path in later)
    with psycopg.connect(db) as c:
        assert c.execute(
            "SELECT user_id, symbol, quantity, avg_price FROM read_model.positions"
        ).fetchall() == [("alice", "INFY", 30, Decimal("149000.5000"))]
        assert c.execute(
            "SELECT order_id, user_id, status, filled_quantity, avg_price, fills "
            "FROM read_model.orders ORDER BY order_id"
        ).fetchall() == [
            (
                filled,
                "alice",
                "FILLED",
                10,
                Decimal("150000.0000"),
                [
                    {
                        "tradeId": "INFY:7",
                        "price": "1500.00",
                        "quantity": 10,
                        "time": "2026-11-25T06:00:00+00:00",
                    }
                ],
            ),
            (resting, "alice", "OPEN", 0, None, []),
        ]
