"""The notifier (brokercore.notify, services/notifier) and the
reconciler's dead-letter job, on the real Postgres, Redis and Kafka, with a real HTTP
server on loopback playing the push provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.engine.records import EventType, Op, Reason, Side
from brokercore.faults.backoff import retry_delay
from brokercore.kafka.messages import Event, EventBatch, encode
from brokercore.kafka.topics import partition_of
from brokercore.notify.alerts import Alert, TradePrice, cross
from brokercore.notify.consumer import PendingOffsets, notifier_group_id
from brokercore.notify.dead_letters import DeadLetters, PushDeadLetter
from brokercore.notify.push import HttpPushProvider
from brokercore.notify.render import OrderOwner, alert_notification, order_notifications
from brokercore.notify.router import Notifier, Push
from brokercore.realtime.channels import Notification, decode_message, online_key, user_channel
from brokercore.services.notifier_api import create_app
from brokercore.services.reconciler import retry_notifications
from oms_support import auth
from shared_servers import KAFKA_BOOTSTRAP, powerless_redis_user, service_settings
from waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
MARKET = load_market(REPO / "config/instruments.toml")
RELIANCE = MARKET["RELIANCE"]  # ticks of 0.05 rupee = 5 paise
TS = int(datetime(2026, 3, 2, 5, 0, tzinfo=UTC).timestamp()) * 10**9


def ticks(rupees: str) -> int:
    return RELIANCE.to_ticks(Decimal(rupees))


def event(
    kind: EventType,
    seq: int,
    *,
    symbol: str = "RELIANCE",
    reason: Reason = Reason.NONE,
    op: Op = Op.LIMIT,
    side: Side | int = 0,
    order_id: int = 0,
    account: int = 0,
    price: int = 0,
    qty: int = 0,
    remaining: int = 0,
    other_id: int = 0,
    other_account: int = 0,
    other_remaining: int = 0,
) -> Event:
    """An engine event; its shard_seq is ``seq`` and its time TS + seq ns."""
    return Event(
        seq,
        symbol,
        kind,
        reason,
        op,
        side,
        seq,
        TS + seq * 1000,
        order_id,
        account,
        price,
        qty,
        remaining,
        other_id,
        other_account,
        other_remaining,
    )


def trade(seq: int, rupees: str, symbol: str = "RELIANCE", **fields) -> Event:
    """A trade between two orders of another broker unless ``fields`` say otherwise."""
    return event(
        EventType.TRADE,
        seq,
        symbol=symbol,
        side=Side.BUY,
        price=MARKET[symbol].to_ticks(Decimal(rupees)),
        **{
            "order_id": 10**9 + seq,
            "account": 10**6,
            "qty": 1,
            "other_id": 2 * 10**9 + seq,
            "other_account": 10**6 + 1,
        }
        | fields,
    )


# --- the push provider: a real HTTP server ------------------------------------------------


class PushServer:
    """An HTTP server on a free loopback port that records every push it gets, with the
    status it answered; ``fail(n)`` makes the next n answer 503, ``fail(always=True)``
    every one until ``heal()``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[tuple[int, dict]] = []
        self.failing, self.always = 0, False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    status = 503 if server.always or server.failing > 0 else 200
                    server.failing = max(0, server.failing - 1)
                    server.seen.append((status, body))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(
                    b'{"name": "projects/x/messages/1"}'
                    if status == 200
                    else b'{"error": "unavailable"}'
                )

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1/messages:send"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, n: int = 0, always: bool = False) -> None:
        with self.lock:
            self.failing, self.always = n, always

    def heal(self) -> None:
        self.fail(0)

    def statuses(self, notification_id: str) -> list[int]:
        with self.lock:
            return [s for s, body in self.seen if body["message"]["data"]["id"] == notification_id]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def push():
    server = PushServer()
    yield server
    server.close()


def notifier_settings(database: str, push: PushServer, **overrides) -> ServiceSettings:
    """A test's settings with ``push`` as the provider, retrying fast, four attempts."""
    return service_settings(
        database,
        f"t{uuid.uuid4().hex[:12]}:",
        **{
            "push_url": push.url,
            "push_retry_base": 0.01,
            "push_retry_cap": 0.04,
            "push_attempts": 4,
            "rate_limit_burst": 1000,
        }
        | overrides,
    )


# --- Redis: who is online, and what they receive ------------------------------------------


def set_online(settings: ServiceSettings, user: str, seconds: float = 60.0) -> None:
    """A gateway registration of ``user`` lapsing in ``seconds`` (in the past if < 0)."""
    redis.Redis.from_url(settings.redis_url).zadd(
        online_key(settings.redis_prefix, user), {"gateway-1": time.time() + seconds}
    )


class Inbox:
    """A real Redis subscriber on users' channels."""

    def __init__(self, settings: ServiceSettings, *users: str):
        self.channels = {user_channel(settings.redis_prefix, u).encode(): u for u in users}
        self.pubsub = redis.Redis.from_url(settings.redis_url).pubsub()
        self.pubsub.subscribe(*self.channels)
        for _ in users:  # the server has them all
            wait_until(lambda: self.pubsub.get_message(timeout=0.1), "a subscription")

    def take(self, n: int, timeout: float = 30.0) -> list[tuple[str, Notification]]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} messages: {got}"
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                got.append((self.channels[message["channel"]], decode_message(message["data"])))
        return got

    def close(self) -> None:
        self.pubsub.close()


# --- the OMS rows the notifier reads ------------------------------------------------------


def place(
    database: str, user: str, side: str, quantity: int, symbol: str = "RELIANCE"
) -> tuple[int, int]:
    """An order of ``user`` as the OMS stores it: (order id, account id)."""
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO orders (trade_date, account_id, symbol, side, type, price, quantity) "
            "SELECT %s, account_id, %s, %s, 'LIMIT', 1500000, %s FROM accounts "
            "WHERE user_id = %s RETURNING order_id, account_id",
            (date(2026, 3, 2), symbol, side, quantity, user),
        ).fetchone()


def add_device(database: str, user: str, token: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO push_devices (user_id, device_token) VALUES (%s, %s)", (user, token)
        )


def prefer(database: str, user: str, kind: str, channel: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notification_preferences VALUES (%s, %s, %s)", (user, kind, channel)
        )


def last_trade(database: str, symbol: str, paise: int) -> None:
    """A trade in the read model, as the projector records it."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
            "executed_at) VALUES (%s, %s, 1, %s, 5, now())",
            (f"{symbol}:1", symbol, paise),
        )


@contextlib.asynccontextmanager
async def running_notifier(settings: ServiceSettings, kafka: KafkaSettings | None = None):
    pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    client = Redis.from_url(settings.redis_url)
    provider = HttpPushProvider(settings.push_url)
    dead = DeadLetters(
        KAFKA_BOOTSTRAP,
        (kafka or KafkaSettings(KAFKA_BOOTSTRAP, "unused-")).notification_dead_letter_topic,
    )
    try:
        yield Notifier(
            pool,
            client,
            settings.redis_prefix,
            MARKET,
            provider,
            dead,
            retry_base=settings.push_retry_base,
            retry_cap=settings.push_retry_cap,
            attempts=settings.push_attempts,
        )
    finally:
        dead.close()
        await provider.aclose()
        await client.aclose()
        await pool.close()


# --- rendering ----------------------------------------------------------------------------


def test_each_kind_is_rendered_for_the_owner_of_the_order():
    owners = {
        1: OrderOwner("alice", 11, "BUY", 10, "LIMIT"),
        2: OrderOwner("bob", 12, "SELL", 10, "LIMIT"),
    }
    price = ticks("15000.00")

    def told(e):
        return [
            (user, n.kind, n.title, n.body, n.id, n.order_id)
            for user, n in order_notifications(3, e, owners, RELIANCE)
        ]

    full_and_partial = event(
        EventType.TRADE,
        7,
        side=Side.BUY,
        order_id=1,
        account=11,
        price=price,
        qty=4,
        remaining=0,
        other_id=2,
        other_account=12,
        other_remaining=6,
    )
    assert told(full_and_partial) == [
        (
            "alice",
            "FILL",
            "Order filled",
            "Your order to BUY 10 RELIANCE filled at 15,000.00",
            "3:7:1",
            1,
        ),
        (
            "bob",
            "FILL",
            "Order partially filled",
            "Your order to SELL 10 RELIANCE partially filled: 4 of 10 at 15,000.00",
            "3:7:2",
            2,
        ),
    ]
    (_, n), _ = order_notifications(3, full_and_partial, owners, RELIANCE)
    assert n.symbol == "RELIANCE" and n.created_at == "2026-03-02T05:00:00.000007+00:00"

    assert told(
        event(EventType.CANCELLED, 8, reason=Reason.USER_CANCEL, order_id=2, account=12, qty=6)
    ) == [
        (
            "bob",
            "CANCELLED",
            "Order cancelled",
            "Your order to SELL 10 RELIANCE was cancelled; 6 of 10 unfilled",
            "3:8:2",
            2,
        )
    ]
    assert told(
        event(EventType.CANCELLED, 9, reason=Reason.SELF_TRADE, order_id=1, account=11, qty=10)
    ) == [
        (
            "alice",
            "CANCELLED",
            "Order cancelled",
            "Your order to BUY 10 RELIANCE was cancelled (self trade)",
            "3:9:1",
            1,
        )
    ]
    assert told(event(EventType.EXPIRED, 10, order_id=1, account=11, qty=3)) == [
        (
            "alice",
            "EXPIRED",
            "Order expired",
            "Your order to BUY 10 RELIANCE expired; 3 of 10 unfilled",
            "3:10:1",
            1,
        )
    ]
    assert told(
        event(
            EventType.REJECTED,
            11,
            reason=Reason.PRICE_OUT_OF_BAND,
            op=Op.LIMIT,
            order_id=1,
            account=11,
        )
    ) == [
        (
            "alice",
            "REJECTED",
            "Order rejected",
            "Your order to BUY 10 RELIANCE was rejected: price out of band",
            "3:11:1",
            1,
        )
    ]

    # not news: a refused cancel, a re-sent order, an acceptance, another broker's order,
    # and an event whose account is not the order's
    assert (
        told(
            event(
                EventType.REJECTED,
                12,
                reason=Reason.UNKNOWN_ORDER,
                op=Op.CANCEL,
                order_id=1,
                account=11,
            )
        )
        == []
    )
    assert (
        told(
            event(
                EventType.REJECTED,
                13,
                reason=Reason.DUPLICATE_ORDER_ID,
                op=Op.LIMIT,
                order_id=1,
                account=11,
            )
        )
        == []
    )
    assert told(event(EventType.ACCEPTED, 14, order_id=1, account=11, qty=10)) == []
    assert told(event(EventType.CANCELLED, 15, order_id=99, account=11, qty=1)) == []
    assert told(event(EventType.CANCELLED, 16, order_id=1, account=12, qty=1)) == []

    [fire], _ = cross(
        [Alert(5, "carol", "RELIANCE", 285_000, -1)],
        [TradePrice("RELIANCE:40", "RELIANCE", 285_100, datetime(2026, 3, 2, 5, 0, tzinfo=UTC))],
    )
    user, n = alert_notification(fire)
    assert (user, n.id, n.kind, n.title, n.body, n.order_id) == (
        "carol",
        "alert:5:RELIANCE:40",
        "PRICE_ALERT",
        "RELIANCE price alert",
        "RELIANCE crossed 2,850.00: last 2,851.00",
        None,
    )


def test_a_stops_trigger_an_auction_fill_and_a_stops_expiry_are_told():
    owners = {
        1: OrderOwner("alice", 11, "SELL", 10, "STOP"),
        2: OrderOwner("bob", 12, "BUY", 10, "LIMIT"),
    }

    def told(e):
        return [
            (user, n.kind, n.title, n.body, n.id)
            for user, n in order_notifications(3, e, owners, RELIANCE)
        ]

    # TRIGGERED: other_remaining is the last trade price that reached the trigger
    trigger = event(
        EventType.TRIGGERED,
        20,
        op=Op.LIMIT,
        side=Side.SELL,
        order_id=1,
        account=11,
        qty=10,
        remaining=10,
        other_remaining=ticks("14990.00"),
    )
    assert told(trigger) == [
        (
            "alice",
            "TRIGGERED",
            "Stop order triggered",
            "Your stop order to SELL 10 RELIANCE triggered at 14,990.00",
            "3:20:1",
        )
    ]
    auction = event(  # an uncross's trade: the buy, then the sell
        EventType.TRADE,
        21,
        op=Op.UNCROSS,
        side=Side.BUY,
        order_id=2,
        account=12,
        price=ticks("15000.00"),
        qty=10,
        remaining=0,
        other_id=1,
        other_account=11,
        other_remaining=0,
    )
    assert [body for *_, body, _ in told(auction)] == [
        "Your order to BUY 10 RELIANCE filled in the opening auction at 15,000.00",
        "Your stop order to SELL 10 RELIANCE filled in the opening auction at 15,000.00",
    ]
    expired = event(EventType.EXPIRED, 22, op=Op.CLOSE, order_id=1, account=11, qty=10)
    assert told(expired) == [
        (
            "alice",
            "EXPIRED",
            "Order expired",
            "Your stop order to SELL 10 RELIANCE expired",
            "3:22:1",
        )
    ]
    # a stop's own refusal is news, a refused amend of it is not
    for op, news in (
        (Op.STOP, ["Your stop order to SELL 10 RELIANCE was rejected: invalid trigger"]),
        (Op.AMEND, []),
    ):
        refused = event(
            EventType.REJECTED, 23, reason=Reason.INVALID_TRIGGER, op=op, order_id=1, account=11
        )
        assert [body for *_, body, _ in told(refused)] == news


def test_the_retry_schedule_doubles_up_to_its_cap():
    assert [retry_delay(k, 1.0, 60.0) for k in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000, 0.5, 30.0) == 30.0


def test_offsets_are_committed_only_past_messages_whose_pushes_are_done():
    pending = PendingOffsets()
    first = pending.add(0, 10, 2)  # two pushes owed
    pending.add(0, 11, 0)
    last = pending.add(0, 12, 1)
    pending.add(1, 5, 0)
    assert pending.ready() == {1: 6}
    pending.settle(last)  # a later message finishing first moves nothing
    pending.settle(first)
    assert pending.ready() == {}
    pending.settle(first)
    assert pending.ready() == {0: 13}
    stale = pending.add(0, 13, 1)
    pending.drop([0])  # revoked: its entries are forgotten
    pending.settle(stale)
    assert pending.ready() == {}


# --- preferences and presence -------------------------------------------------------------


def test_in_app_when_online_push_when_offline_nothing_when_none(database, push):
    settings = notifier_settings(database, push)
    set_online(settings, "alice")
    set_online(settings, "carol", seconds=-5)  # lapsed: carol is offline
    add_device(database, "bob", "bob-phone")
    add_device(database, "carol", "carol-phone")
    add_device(database, "alice", "alice-phone")
    prefer(database, "carol", "FILL", "NONE")
    prefer(database, "alice", "CANCELLED", "PUSH")
    inbox = Inbox(settings, "alice", "bob", "carol")

    def note(n: int, kind: str = "FILL") -> Notification:
        return Notification(f"0:{n}:{n}", kind, "t", "b", "RELIANCE", "2026-03-02T05:00:00")

    async def scenario():
        async with running_notifier(settings) as notifier:
            owed = await notifier.route(
                [
                    ("carol", note(1)),
                    ("alice", note(2)),
                    ("bob", note(3)),
                    ("carol", note(4, "CANCELLED")),
                    ("alice", note(5, "CANCELLED")),
                ]
            )
            delivered = [await notifier.deliver(p) for pushes in owed for p in pushes]
            return owed, delivered

    owed, delivered = asyncio.run(scenario())
    try:
        got = inbox.take(4)
    finally:
        inbox.close()
    # carol's FILL (NONE) went nowhere; alice (online, IN_APP) only in the app; bob
    # (offline, IN_APP) in the app and by push; carol's CANCELLED (offline) both; alice's
    # CANCELLED (PUSH, online) both
    assert [(user, n.id) for user, n in got] == [
        ("alice", "0:2:2"),
        ("bob", "0:3:3"),
        ("carol", "0:4:4"),
        ("alice", "0:5:5"),
    ]
    assert [[(p.user_id, p.device_token) for p in pushes] for pushes in owed] == [
        [],
        [],
        [("bob", "bob-phone")],
        [("carol", "carol-phone")],
        [("alice", "alice-phone")],
    ]
    assert delivered == [True, True, True]
    assert [push.statuses(i) for i in ("0:1:1", "0:2:2", "0:3:3", "0:4:4", "0:5:5")] == [
        [],
        [],
        [200],
        [200],
        [200],
    ]
    body = next(b for _, b in push.seen if b["message"]["data"]["id"] == "0:3:3")
    assert body == {
        "message": {
            "token": "bob-phone",
            "notification": {"title": "t", "body": "b"},
            "data": {"id": "0:3:3", "kind": "FILL"},
        }
    }


# --- retries and dead letters -------------------------------------------------------------


def test_a_push_failing_three_times_is_delivered_once_on_the_fourth(database, push):
    settings = notifier_settings(database, push, push_attempts=6)
    n = Notification("2:40:7", "FILL", "Order filled", "b", "RELIANCE", "2026-03-02", 7)
    push.fail(3)

    async def scenario():
        async with running_notifier(settings) as notifier:
            return await notifier.deliver(Push("bob", "bob-phone", n)), notifier.dead_lettered

    assert asyncio.run(scenario()) == (True, 0)
    assert push.statuses("2:40:7") == [503, 503, 503, 200]


def read_dead_letters(kafka: KafkaSettings) -> list[PushDeadLetter]:
    consumer = Consumer(
        {
            "bootstrap.servers": KAFKA_BOOTSTRAP,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(kafka.notification_dead_letter_topic, 0, 0)])
    letters, decoder = [], msgspec.msgpack.Decoder(PushDeadLetter)
    try:
        while True:
            message = consumer.poll(10)
            assert message is not None, "the dead-letter topic did not answer"
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF
                return letters
            letters.append(decoder.decode(message.value()))
    finally:
        consumer.close()


def test_dead_lettered_pushes_are_retried_by_the_reconciler_and_committed(database, push, kafka):
    settings = notifier_settings(database, push, push_attempts=3)
    n = Notification("1:9:4", "CANCELLED", "Order cancelled", "b", "RELIANCE", "2026-03-02", 4)
    push.fail(always=True)

    async def deliver():
        async with running_notifier(settings, kafka) as notifier:
            return await notifier.deliver(Push("bob", "bob-phone", n))

    assert asyncio.run(deliver()) is False
    assert push.statuses("1:9:4") == [503, 503, 503]
    [letter] = read_dead_letters(kafka)
    assert (letter.notification, letter.user_id, letter.device_token, letter.attempts) == (
        n,
        "bob",
        "bob-phone",
        3,
    )
    assert letter.last_error.startswith("HTTP 503")

    def reconcile():
        return asyncio.run(retry_notifications(settings, kafka, True, asyncio.Event()))

    failed_again = reconcile()  # the provider is still down
    assert (failed_again.delivered, failed_again.failed) == (0, 1)
    assert [(x.attempts, x.notification.id) for x in read_dead_letters(kafka)] == [
        (3, "1:9:4"),
        (4, "1:9:4"),
    ]
    push.heal()
    done = reconcile()
    assert (done.delivered, done.failed) == (1, 0)
    assert push.statuses("1:9:4") == [503, 503, 503, 503, 200]
    again = reconcile()  # its offset is committed: nothing left
    assert (again.delivered, again.failed) == (0, 0)
    assert push.statuses("1:9:4") == [503, 503, 503, 503, 200]


# --- price alerts -------------------------------------------------------------------------


class Rest:
    """The notifier's REST app in this process (its lifespan run) and a client on it."""

    def __init__(self, settings: ServiceSettings):
        self.app = create_app(settings)

    async def __aenter__(self):
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://notifier",
        )
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)

    async def call(self, method: str, path: str, user: str | None = "alice", **kwargs):
        headers = auth(user) if user else {}
        return await self.client.request(method, path, headers=headers, **kwargs)


def test_a_price_alert_fires_once_per_crossing(database, push):
    settings = notifier_settings(database, push)
    last_trade(database, "RELIANCE", 284_000)  # last 2,840.00: below
    inbox = Inbox(settings, "alice")
    batches = [
        [trade(2, "2845.00")],  # below: nothing
        [trade(3, "2851.00"), trade(4, "2855.00")],  # crosses up, stays
        [trade(5, "2850.00"), trade(6, "2849.00")],  # at (above) stays, crosses down
        [trade(7, "19000.00", "TCS")],  # TCS: its side, no fire
        [trade(8, "19500.00", "TCS")],  # same side: nothing
        [trade(9, "20100.00", "TCS")],
    ]  # the first real crossing

    async def scenario():
        async with Rest(settings) as rest:
            made = [
                await rest.call("POST", "/api/v1/alerts", json={"symbol": symbol, "price": price})
                for symbol, price in (("RELIANCE", "2850.00"), ("TCS", "20000"))
            ]
        async with running_notifier(settings) as notifier:
            owed = [
                await notifier.handle([(0, offset, EventBatch(0, events))])
                for offset, events in enumerate(batches)
            ]
        return made, owed

    made, owed = asyncio.run(scenario())
    assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
    reliance, tcs = (r.json()["alertId"] for r in made)
    try:
        got = inbox.take(3)
    finally:
        inbox.close()
    assert [(n.kind, n.id, n.body) for _, n in got] == [
        ("PRICE_ALERT", f"alert:{reliance}:RELIANCE:3", "RELIANCE crossed 2,850.00: last 2,851.00"),
        ("PRICE_ALERT", f"alert:{reliance}:RELIANCE:6", "RELIANCE crossed 2,850.00: last 2,849.00"),
        ("PRICE_ALERT", f"alert:{tcs}:TCS:9", "TCS crossed 20,000.00: last 20,100.00"),
    ]
    assert owed == [[[]]] * len(batches)  # alice has no devices
    with psycopg.connect(database) as conn:
        assert conn.execute(
            "SELECT symbol, side, fired FROM price_alerts ORDER BY alert_id"
        ).fetchall() == [("RELIANCE", -1, 2), ("TCS", 1, 1)]


def test_alert_crossings_are_the_same_however_trades_are_batched():
    alerts = [
        Alert(1, "a", "X", 100, -1),
        Alert(2, "a", "X", 110, 1),
        Alert(3, "a", "X", 105, 0),
        Alert(4, "a", "Y", 100, -1),
    ]
    prices = [101, 99, 99, 112, 104, 100, 106]
    trades = [
        TradePrice(f"X:{i}", "X", p, datetime(2026, 1, 1, tzinfo=UTC)) for i, p in enumerate(prices)
    ]
    fires, changed = cross(alerts, trades)
    at_once = [(f.alert.alert_id, f.trade.trade_id) for f in fires]
    one_by_one, state = [], alerts
    for t in trades:
        fired, moved = cross(state, [t])
        one_by_one += [(f.alert.alert_id, f.trade.trade_id) for f in fired]
        state = [
            Alert(
                a.alert_id,
                a.user_id,
                a.symbol,
                a.price,
                moved[a.alert_id].side if a.alert_id in moved else a.side,
            )
            for a in state
        ]
    # alert 3 (side unknown) only takes its side from X:0; Y's alert sees no trade
    assert (
        at_once
        == one_by_one
        == [
            (1, "X:0"),
            (2, "X:0"),
            (1, "X:1"),
            (1, "X:3"),
            (2, "X:3"),
            (3, "X:3"),
            (2, "X:4"),
            (3, "X:4"),
            (3, "X:6"),
        ]
    )
    assert {i: (c.side, c.fired) for i, c in changed.items()} == {1: (1, 3), 2: (-1, 3), 3: (1, 3)}


# --- end to end through Kafka -------------------------------------------------------------


def produce(kafka: KafkaSettings, partition: int, batches: list[EventBatch]) -> list[int]:
    """The batches on ``events`` in one Kafka transaction, as the engine publishes;
    their offsets."""
    producer = Producer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    offsets = []

    def delivered(error, message):
        assert error is None, error
        offsets.append(message.offset())

    producer.begin_transaction()
    for batch in batches:
        producer.produce(
            kafka.events_topic, encode(batch), partition=partition, on_delivery=delivered
        )
    producer.flush(30)
    producer.commit_transaction(30)
    return sorted(offsets)


def committed(kafka: KafkaSettings, partition: int) -> int:
    """The notifier group's committed offset of a partition of events (< 0 if none)."""
    consumer = Consumer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "group.id": notifier_group_id(kafka.topic_prefix)}
    )
    try:
        [tp] = consumer.committed([TopicPartition(kafka.events_topic, partition)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def notifier_process(settings: ServiceSettings, kafka: KafkaSettings, log) -> subprocess.Popen:
    """``brokercore service notifier --from-beginning`` with the settings' database, Redis
    and push provider (retrying every 0.05 s, practically for ever)."""
    env = os.environ | {
        "BROKERCORE_DATABASE_URL": settings.database_url,
        "BROKERCORE_REDIS_URL": settings.redis_url,
        "BROKERCORE_REDIS_PREFIX": settings.redis_prefix,
        "BROKERCORE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": kafka.topic_prefix,
        "BROKERCORE_SHARDS": str(kafka.shards),
        "BROKERCORE_PUSH_URL": settings.push_url,
        "BROKERCORE_PUSH_RETRY_BASE": "0.05",
        "BROKERCORE_PUSH_RETRY_CAP": "0.05",
        "BROKERCORE_PUSH_ATTEMPTS": "100000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "brokercore.cli", "service", "notifier", "--from-beginning"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_the_notifier_process_end_to_end_without_stalling_or_skipping(
    database, push, kafka, tmp_path
):
    settings = notifier_settings(
        database, push, push_retry_base=0.05, push_retry_cap=0.05, push_attempts=100_000
    )
    buy, alice_account = place(database, "alice", "BUY", 10)
    sell, bob_account = place(database, "bob", "SELL", 10)
    cancel, carol_account = place(database, "carol", "BUY", 5)
    set_online(settings, "alice")
    set_online(settings, "carol")
    add_device(database, "bob", "bob-phone")  # bob is offline: push
    shard = partition_of("RELIANCE", kafka.shards)
    price = ticks("15000.00")
    fill = EventBatch(
        shard,
        [
            event(
                EventType.ACCEPTED,
                1,
                order_id=sell,
                account=bob_account,
                side=Side.SELL,
                price=price,
                qty=10,
                remaining=10,
            ),
            event(
                EventType.ACCEPTED,
                2,
                order_id=buy,
                account=alice_account,
                side=Side.BUY,
                price=price,
                qty=10,
                remaining=10,
            ),
            trade(
                3,
                "15000.00",
                order_id=buy,
                account=alice_account,
                qty=10,
                remaining=0,
                other_id=sell,
                other_account=bob_account,
                other_remaining=0,
            ),
        ],
    )
    cancelled = EventBatch(
        shard,
        [
            event(
                EventType.CANCELLED,
                4,
                reason=Reason.USER_CANCEL,
                order_id=cancel,
                account=carol_account,
                qty=5,
            )
        ],
    )
    inbox = Inbox(settings, "alice", "bob", "carol")
    push.fail(always=True)  # bob's push keeps retrying
    first, second = produce(kafka, shard, [fill, cancelled])
    log = open(tmp_path / "notifier.log", "w")
    process = notifier_process(settings, kafka, log)
    try:
        got = inbox.take(3)
        assert sorted((user, n.kind, n.body) for user, n in got) == [
            ("alice", "FILL", "Your order to BUY 10 RELIANCE filled at 15,000.00"),
            ("bob", "FILL", "Your order to SELL 10 RELIANCE filled at 15,000.00"),
            ("carol", "CANCELLED", "Your order to BUY 5 RELIANCE was cancelled"),
        ]
        bob_id = f"{shard}:3:{sell}"
        assert {n.id for _, n in got} == {f"{shard}:3:{buy}", bob_id, f"{shard}:4:{cancel}"}
        # carol's later message was told while bob's push retries; the offsets stay
        # before bob's message until his push is done
        wait_until(lambda: len(push.statuses(bob_id)) >= 3, "bob's push retrying")
        assert committed(kafka, shard) < first + 1
        push.heal()
        wait_until(lambda: 200 in push.statuses(bob_id), "bob's push delivered")
        wait_until(lambda: committed(kafka, shard) == second + 1, "the offsets committed")
        assert push.statuses(bob_id).count(200) == 1
        assert process.poll() is None
    finally:
        inbox.close()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
    assert code == 0, (tmp_path / "notifier.log").read_text()


def test_a_price_alert_fired_before_a_crash_is_sent_by_the_next_notifier(
    database, push, kafka, tmp_path
):
    """The alert's new side is stored when its trade is handled, so the re-delivered trade
    fires nothing: the fire kept in alert_fires is what the restarted notifier sends."""
    settings = notifier_settings(database, push)
    with psycopg.connect(database, autocommit=True) as conn:
        alert = conn.execute(
            "INSERT INTO price_alerts (user_id, symbol, price, side) VALUES "
            "('alice', 'RELIANCE', 1505000, -1) RETURNING alert_id"
        ).fetchone()[0]
    add_device(database, "alice", "alice-phone")  # offline: a push
    shard = partition_of("RELIANCE", kafka.shards)
    [offset] = produce(kafka, shard, [EventBatch(shard, [trade(7, "15100.00")])])
    fire = f"alert:{alert}:RELIANCE:7"
    push.fail(always=True)
    with open(tmp_path / "notifier.log", "w") as log:
        first = notifier_process(settings, kafka, log)
        try:
            wait_until(lambda: len(push.statuses(fire)) >= 2, "the alert's push retrying")
        finally:
            first.kill()  # -9: no commit, no clean-up
            first.wait(30)
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT side, fired FROM price_alerts").fetchall() == [(1, 1)]
            assert conn.execute("SELECT notification_id FROM alert_fires").fetchall() == [(fire,)]
        assert committed(kafka, shard) < offset + 1
        push.heal()
        second = notifier_process(settings, kafka, log)
        try:
            wait_until(lambda: 200 in push.statuses(fire), "the alert's push delivered")
            wait_until(
                lambda: committed(kafka, shard) == offset + 1, "the offset committed", timeout=60
            )  # the dead member's session lapses first
            with psycopg.connect(database) as conn:
                wait_until(
                    lambda: not conn.execute("SELECT 1 FROM alert_fires").fetchall(),
                    "the fire forgotten",
                )
                assert conn.execute("SELECT side, fired FROM price_alerts").fetchall() == [
                    (1, 1)
                ]  # fired once, sent again
            assert push.statuses(fire).count(200) == 1
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(30)
    assert code == 0, (tmp_path / "notifier.log").read_text()


def test_the_notifier_waits_out_a_redis_outage_and_loses_nothing(database, push, kafka, tmp_path):
    """The notifier's Redis user loses every permission (each command fails, as with Redis
    down): it keeps the batch, commits nothing and tries again; once Redis answers, the
    fill is told and the offset committed."""
    settings = notifier_settings(database, push)
    admin = redis.Redis.from_url(settings.redis_url)
    user, password = powerless_redis_user(admin, "notifier")
    buy, account = place(database, "alice", "BUY", 10)
    set_online(settings, "alice")
    shard = partition_of("RELIANCE", kafka.shards)
    inbox = Inbox(settings, "alice")
    [offset] = produce(
        kafka,
        shard,
        [
            EventBatch(
                shard, [trade(5, "15000.00", order_id=buy, account=account, qty=10, remaining=0)]
            )
        ],
    )
    limited = settings.redis_url.replace("redis://", f"redis://{user}:{password}@")
    try:
        with open(tmp_path / "notifier.log", "w") as log:
            process = notifier_process(replace(settings, redis_url=limited), kafka, log)
            try:
                wait_until(
                    lambda: "Redis or Postgres failed" in (tmp_path / "notifier.log").read_text(),
                    "a failed attempt",
                    timeout=60,
                )
                assert committed(kafka, shard) < offset + 1
                admin.acl_setuser(user, enabled=True, categories=["+@all"])
                [(to, told)] = inbox.take(1)
                assert (to, told.kind, told.id) == ("alice", "FILL", f"{shard}:5:{buy}")
                wait_until(
                    lambda: committed(kafka, shard) == offset + 1,
                    "the offset committed",
                    timeout=60,
                )
                assert process.poll() is None
            finally:
                process.send_signal(signal.SIGTERM)
                code = process.wait(30)
    finally:
        inbox.close()
        admin.acl_deluser(user)
    assert code == 0, (tmp_path / "notifier.log").read_text()


# --- the REST app -------------------------------------------------------------------------


def test_preferences_and_devices_over_rest(database, push):
    settings = notifier_settings(database, push)
    kinds = ("FILL", "TRIGGERED", "CANCELLED", "EXPIRED", "REJECTED", "PRICE_ALERT")
    kinds += ("GTT_TRIGGERED", "GTT_FAILED", "GTT_EXPIRED")
    defaults = {k: "IN_APP" for k in kinds}

    async def scenario():
        async with Rest(settings) as rest:
            path = "/api/v1/notifications/preferences"
            assert (await rest.call("GET", path)).json() == defaults
            put = await rest.call("PUT", path, json={"FILL": "PUSH", "PRICE_ALERT": "NONE"})
            assert put.status_code == 200 and put.json()["FILL"] == "PUSH"
            assert (await rest.call("GET", path)).json() == defaults | {
                "FILL": "PUSH",
                "PRICE_ALERT": "NONE",
            }
            assert (await rest.call("GET", path, user="bob")).json() == defaults
            for body, field in (
                ({"FILL": "EMAIL"}, "FILL"),
                ({"SMS": "PUSH"}, "body"),
                ([], "body"),
            ):
                bad = await rest.call("PUT", path, json=body)
                assert bad.status_code == 422, bad.text
                error = bad.json()["error"]
                assert error["code"] == "INVALID_REQUEST"
                assert error["fields"][0]["field"] == field and error["fields"][0]["message"]
            bad = await rest.client.put(
                path,
                content=b"{not json",
                headers=auth("alice") | {"Content-Type": "application/json"},
            )
            assert (bad.status_code, bad.json()["error"]["code"]) == (400, "MALFORMED_JSON")
            assert (await rest.call("PUT", path, json={})).json() == defaults  # replaced

            devices = "/api/v1/notifications/devices"
            token = "fcm:APA91b-x_y.z"
            assert (
                await rest.call("POST", devices, json={"deviceToken": token})
            ).status_code == 201
            assert (
                await rest.call("POST", devices, json={"deviceToken": token})
            ).status_code == 200
            for body in ({"deviceToken": ""}, {"deviceToken": "a b"}, {"token": "x"}):
                bad = await rest.call("POST", devices, json=body)
                assert bad.status_code == 422 and bad.json()["error"]["fields"], bad.text
            assert (await rest.call("DELETE", f"{devices}/{token}", user="bob")).status_code == 404
            assert (
                await rest.call("POST", devices, json={"deviceToken": token}, user="bob")
            ).status_code == 201
            with psycopg.connect(database) as conn:  # the phone moved to bob
                assert conn.execute("SELECT user_id FROM push_devices").fetchall() == [("bob",)]
            assert (await rest.call("DELETE", f"{devices}/{token}", user="bob")).status_code == 204
            assert (await rest.call("DELETE", f"{devices}/{token}", user="bob")).status_code == 404
            for method, route in (
                ("GET", path),
                ("PUT", path),
                ("POST", devices),
                ("DELETE", f"{devices}/{token}"),
            ):
                anonymous = await rest.call(method, route, user=None, json={})
                assert anonymous.status_code == 401
                assert anonymous.json()["error"]["code"] == "UNAUTHENTICATED"

    asyncio.run(scenario())


def test_alerts_over_rest_each_user_sees_only_their_own(database, push):
    settings = notifier_settings(database, push)
    last_trade(database, "RELIANCE", 1_500_000)  # last 15,000.00

    async def scenario():
        async with Rest(settings) as rest:
            below = await rest.call(
                "POST", "/api/v1/alerts", json={"symbol": "RELIANCE", "price": "15000.50"}
            )
            assert below.status_code == 201, below.text
            body = below.json()
            assert body["symbol"] == "RELIANCE" and body["price"] == "15000.50"
            assert body["fired"] == 0 and body["lastFiredAt"] is None and body["createdAt"]
            above = await rest.call(
                "POST", "/api/v1/alerts", user="bob", json={"symbol": "RELIANCE", "price": 14000}
            )
            assert above.status_code == 201, above.text
            mine = (await rest.call("GET", "/api/v1/alerts")).json()["alerts"]
            assert [a["alertId"] for a in mine] == [body["alertId"]]
            bobs = (await rest.call("GET", "/api/v1/alerts", user="bob")).json()["alerts"]
            assert [a["price"] for a in bobs] == ["14000.00"]
            other = await rest.call("DELETE", f"/api/v1/alerts/{body['alertId']}", user="bob")
            assert (other.status_code, other.json()["error"]["code"]) == (404, "ALERT_NOT_FOUND")
            for junk in ("abc", "9" * 40):
                assert (await rest.call("DELETE", f"/api/v1/alerts/{junk}")).status_code == 404
            assert (
                await rest.call("DELETE", f"/api/v1/alerts/{body['alertId']}")
            ).status_code == 204
            assert (await rest.call("GET", "/api/v1/alerts")).json() == {"alerts": []}

            unknown = await rest.call(
                "POST", "/api/v1/alerts", json={"symbol": "NOPE", "price": "10"}
            )
            assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "UNKNOWN_SYMBOL")
            for bad, field in (
                ({"symbol": "RELIANCE", "price": "2850.001"}, "price"),
                ({"symbol": "RELIANCE", "price": "-1"}, "price"),
                ({"symbol": "RELIANCE", "price": "0"}, "price"),
                ({"symbol": "RELIANCE", "price": "abc"}, "price"),
                ({"symbol": "RELIANCE"}, "body"),
                ({"symbol": "", "price": "1"}, "symbol"),
                ({"symbol": "RELIANCE", "price": "1", "x": 1}, "body"),
            ):
                response = await rest.call("POST", "/api/v1/alerts", json=bad)
                assert response.status_code == 422, (bad, response.text)
                assert response.json()["error"]["fields"][0]["field"] == field, response.text
            for method, route in (
                ("POST", "/api/v1/alerts"),
                ("GET", "/api/v1/alerts"),
                ("DELETE", "/api/v1/alerts/1"),
            ):
                anonymous = await rest.call(method, route, user=None, json={})
                assert anonymous.status_code == 401

    asyncio.run(scenario())
    with psycopg.connect(database) as conn:  # sides from the last trade in the read model
        assert conn.execute("SELECT user_id, side FROM price_alerts").fetchall() == [("bob", 1)]
