"""The platform end to end on the real Postgres, Redis and Kafka: orders over HTTP (the
OMS in-process), an engine daemon (a subprocess), the settlement consumer (a thread),
and the reconciler, down to the accounts' cash and positions."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal

import httpx
import psycopg

from brokercore.config import DEV_JWT_SECRET
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import CloseSession
from brokercore.services.reconciler import report, republish
from kafka_support import OrderProducer
from oms_support import run
from platform_support import INSTRUMENTS, money, platform

RUPEE = 100


def test_a_crossing_trade_settles_once_in_both_accounts_then_a_cancel_frees_the_rest(
    database, tmp_path
):
    with platform(database, tmp_path) as api:
        before = money(api)

        async def trade():
            async with api:
                buy = await api.placed(quantity=10, price="15000.00", time_in_force="GTC")
                sell = await api.placed("bob", side="SELL", quantity=4, price="14999.95")
                return buy.order_id, sell.order_id

        buy, sell = run(trade)
        api.wait_rows(
            "SELECT order_id, status, filled_quantity FROM orders ORDER BY 1",
            [(buy, "PARTIALLY_FILLED", 4), (sell, "FILLED", 4)],
        )
        # Traded at the resting buy's price, 15,000.00: 60,000.00 moves from alice to bob.
        assert api.rows("SELECT user_id, cash, blocked_cash FROM accounts ORDER BY 1") == [
            ("alice", 1_000_000 * RUPEE - 60_000 * RUPEE, 6 * 15_000 * RUPEE),
            ("bob", 60_000 * RUPEE, 0),
            ("carol", 1_000_000 * RUPEE, 0),
        ]
        assert api.rows(
            "SELECT a.user_id, p.quantity, p.blocked_quantity FROM positions p "
            "JOIN accounts a USING (account_id) ORDER BY 1"
        ) == [("alice", 4, 0), ("bob", 96, 0)]
        assert api.rows("SELECT side, price, quantity FROM fills ORDER BY side") == [
            ("BUY", 15_000 * RUPEE, 4),
            ("SELL", 15_000 * RUPEE, 4),
        ]

        async def cancel():
            async with api:
                alice = api.trader("alice")
                await alice.cancel(buy)
                return alice.statuses

        assert run(cancel) == [202]
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("CANCELLED",)], buy)
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]
        assert money(api)[0] == before[0] and money(api)[3] == before[3], (
            "cash and shares are conserved (no fees configured)"
        )
        assert api.rows("SELECT count(*) FROM fills") == [(2,)], "each side filled once"


def test_a_day_order_expires_at_the_close_and_its_hold_is_released(database, tmp_path):
    with platform(database, tmp_path) as api:

        async def place():
            async with api:
                return (await api.placed(quantity=2, price="14000.00")).order_id

        order = run(place)
        api.wait_rows("SELECT status FROM orders", [("OPEN",)])
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(2 * 14_000 * RUPEE,)]
        OrderProducer(api.kafka).send([CloseSession("RELIANCE", ts=1)])  # the operator
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("EXPIRED",)], order)
        assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]


def test_an_order_stored_but_never_published_is_published_by_the_reconciler_once(
    database, tmp_path
):
    """The OMS dies between its Postgres commit and the Kafka publish: the order is in
    Postgres only. The reconciler publishes it, twice even; it is matched once."""
    with platform(database, tmp_path) as api:

        async def store_only():
            async with api:
                entry = api.app.state.oms.entry
                receipt = await entry.place(
                    "alice",
                    PlaceOrderRequest(
                        "RELIANCE", "BUY", "LIMIT", 3, "lost-publish", price=Decimal("15000")
                    ),
                )
                return receipt.order_id

        order = run(store_only)
        time.sleep(1.0)
        assert api.rows("SELECT status FROM orders") == [("PENDING",)]
        assert api.commands() == [], "nothing reached Kafka"

        async def reconcile():
            stop = asyncio.Event()
            first = await republish(api.settings, api.kafka, 0, 0.0, True, stop)
            second = await republish(api.settings, api.kafka, 0, 0.0, True, stop)
            return first, second

        first, second = run(reconcile)
        assert first == 1 and second in (0, 1)  # 1 if the engine had not answered yet
        api.wait_rows("SELECT status FROM orders WHERE order_id = %s", [("OPEN",)], order)
        assert [c.order_id for c in api.commands()] == [order] * (1 + second)
        time.sleep(1.0)
        assert api.rows(
            "SELECT status FROM order_events WHERE order_id = %s ORDER BY event_id", order
        ) == [("PENDING",), ("OPEN",)]
        assert api.rows("SELECT blocked_cash FROM accounts WHERE user_id = 'alice'") == [
            (3 * 15_000 * RUPEE,)
        ]


def test_the_reconciler_report_finds_what_postgres_got_wrong(database, tmp_path, capsys):
    with platform(database, tmp_path) as api:

        async def trade():
            async with api:
                await api.placed(quantity=5, price="15000.00")
                return (await api.placed("bob", side="SELL", quantity=5, price="15000.00")).order_id

        sell = run(trade)
        api.wait_rows("SELECT count(*) FROM orders WHERE status = 'FILLED'", [(2,)])
        assert report(api.settings, api.kafka) == 0
        assert "0 finding(s)" in capsys.readouterr().out
        with psycopg.connect(database, autocommit=True) as conn:  # damage, on purpose
            conn.execute(
                "UPDATE orders SET status = 'OPEN', filled_quantity = 2 WHERE order_id = %s",
                (sell,),
            )
            conn.execute("DELETE FROM fills WHERE side = 'BUY'")
        assert report(api.settings, api.kafka) == 1
        out = capsys.readouterr().out
        assert "3 finding(s)" in out
        for line in ("STATUS", "FILLED_QTY", "FILL_MISSING"):
            assert line in out
        assert "Postgres says OPEN, the events say FILLED" in out


def open_now_instruments(path):
    """config/instruments.toml with a session open right now, every day: hours 01:00 to
    23:00 in an Etc/GMT zone chosen so that it is about noon there now."""
    utc_hour = time.gmtime().tm_hour
    offset = 12 - utc_hour  # local = utc + offset, in -11..12
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    text = open(INSTRUMENTS).read()
    session = text[text.index("[session]") : text.index("[[instrument]]")]
    path.write_text(
        text.replace(
            session,
            f'[session]\ntimezone = "{zone}"\nopen = "01:00"\n'
            'close = "23:00"\nweekdays = [1, 2, 3, 4, 5, 6, 7]\n\n',
        )
    )
    return path


def test_the_oms_killed_between_commit_and_publish_loses_nothing(database, tmp_path):
    """A real OMS process (uvicorn) whose Kafka is unreachable commits an order and waits
    to publish it; kill -9 it right then. The reconciler publishes the order; it is
    matched once."""
    with platform(database, tmp_path) as api:
        env = os.environ | {
            "BROKERCORE_DATABASE_URL": database,
            "BROKERCORE_DEV_MODE": "1",
            "BROKERCORE_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # nothing listens there
            "BROKERCORE_TOPIC_PREFIX": api.kafka.topic_prefix,
            "BROKERCORE_SHARDS": str(api.kafka.shards),
            "BROKERCORE_REDIS_PREFIX": api.kafka.topic_prefix,
            "BROKERCORE_INSTRUMENTS": str(open_now_instruments(tmp_path / "open.toml")),
        }
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        oms = subprocess.Popen(
            [sys.executable, "-m", "brokercore.cli", "service", "oms", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            token = mint_token("alice", JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET))
            request = threading.Thread(
                target=lambda: _post_ignoring_failure(
                    f"http://127.0.0.1:{port}/api/v1/orders", token
                ),
                daemon=True,
            )
            _wait_for_port(port, oms)
            request.start()
            api.wait_rows("SELECT status FROM orders", [("PENDING",)])
            oms.kill()  # committed, not published
            oms.wait()
        finally:
            if oms.poll() is None:
                oms.kill()
        assert api.rows("SELECT count(*) FROM outbox WHERE published_at IS NULL") == [(1,)]
        assert api.commands() == []

        async def reconcile():
            return await republish(api.settings, api.kafka, 0, 0.0, True, asyncio.Event())

        assert run(reconcile) == 1
        api.wait_rows("SELECT status FROM orders", [("OPEN",)])
        assert api.rows("SELECT status FROM order_events ORDER BY event_id") == [
            ("PENDING",),
            ("OPEN",),
        ]


def _post_ignoring_failure(url: str, token: str) -> None:
    """The request whose server is killed under it: it has no answer to give."""
    try:
        httpx.post(
            url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            json={
                "symbol": "RELIANCE",
                "side": "BUY",
                "type": "LIMIT",
                "quantity": 1,
                "price": "15000.00",
                "idempotencyKey": "doomed",
            },
        )
    except httpx.HTTPError:
        pass


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the OMS exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the OMS did not start listening")
