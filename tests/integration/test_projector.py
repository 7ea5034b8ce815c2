"""The projector against the real Postgres, Redis and Kafka.

Orders are written as the OMS writes them and matched by a real ``OrderBook``, whose
events are published as the engine daemon does (``test_settlement.Venue``); the projector
then applies those batches, directly or from a Kafka topic.
"""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal

import pytest
import redis

from brokercore.broker.orders import event_time
from brokercore.consumers.pg_consumer import Message
from brokercore.consumers.projector import (
    ProjectorConsumer,
    ProjectorStats,
    Publication,
    run_projector,
)
from brokercore.engine.records import EventType, Reason, Side, Stp, Tif
from brokercore.kafka.messages import AmendOrder, EventBatch, NewOrder, encode
from brokercore.read.candles import (
    DEPTH_LEVELS,
)
from brokercore.realtime.channels import (
    TradeTick,
    book_channel,
    decode_message,
    md_key,
    projected_key,
    trades_channel,
    user_channel,
)
from kafka_support import run_service_briefly, run_until_stored
from read_model_support import (
    SYMBOL,
    T0,
    accounts,
    current_book,
    depth,
    order_row,
    stamped,
    updates,
)
from shared_servers import REDIS_URL, powerless_redis_user
from venue_support import (
    INSTRUMENTS_TOML,
    MARKET,
    MID,
    Venue,
    busy_day,
    produce_in_transactions,
    settle,
)

D = Decimal
pytestmark = pytest.mark.usefixtures("database")  # alice, bob and carol, beside `conn`


@pytest.fixture
def client():
    with redis.Redis.from_url(REDIS_URL) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def projector(client, prefix) -> ProjectorConsumer:
    return ProjectorConsumer(MARKET, client, prefix)


def events_of(v: Venue, kind: EventType) -> list:
    return [e for b in v.batches for e in b.events if e.type == kind]


def engine_depth(v: Venue) -> list[tuple]:
    """The engine book's own depth, as DEPTH_SQL rows."""
    bids, asks = v.book.depth(DEPTH_LEVELS)
    inst = MARKET[SYMBOL]
    return [
        (side, inst.ticks_to_paise(int(level["price"])), int(level["qty"]))
        for side, levels in (("BUY", bids), ("SELL", asks))
        for level in levels
    ]


_KEYS = {
    "read_model.orders": "order_id",
    "read_model.positions": "user_id, symbol",
    "read_model.order_updates": "order_id, update_id",
    "read_model.book_orders": "order_id",
    "read_model.trades": "trade_id",
    "consumer_offsets": "consumer, topic, partition",
}
_VARYING = {
    "read_model.orders": ("last_update_id",),
    "read_model.positions": ("updated_at",),
    "read_model.order_updates": ("update_id", "created_at"),
    "consumer_offsets": ("updated_at",),
}


def dump(conn, exact: bool = True) -> dict[str, list]:
    """Every row the projector writes; unless ``exact``, minus the update ids (drawn
    from a sequence, which a rolled-back run spends too) and the wall-clock times, to
    compare two runs."""
    tables = {}
    for table, key in _KEYS.items():
        rows = [r for (r,) in conn.execute(f"SELECT to_jsonb(t) FROM {table} t ORDER BY {key}")]
        if not exact:
            rows = [{k: v for k, v in r.items() if k not in _VARYING.get(table, ())} for r in rows]
            for r in rows:
                if "payload" in r:
                    del r["payload"]["seq"]
        tables[table] = rows
    return tables


# --- one order's life ----------------------------------------------------------------------


def test_a_resting_buy_filled_by_two_sells(conn, projector):
    """ACCEPTED, a partial and a full fill of a resting buy: the read model row, its fills
    and average, one numbered ORDER_UPDATE per change, and the sellers' side."""
    v, ids = Venue(conn), accounts(conn)
    buy = v.place(ids["alice"], Side.BUY, 10, MID, Tif.GTC)
    sell_4 = v.place(ids["bob"], Side.SELL, 4, MID)
    sell_6 = v.place(ids["bob"], Side.SELL, 6, MID - 10)  # trades at the maker's price
    messages = stamped(v)
    stats = projector.apply(conn, messages)
    assert (stats.messages, stats.events, stats.trades, stats.updates) == (3, 5, 2, 5)

    trades = events_of(v, EventType.TRADE)
    fills = [
        {
            "tradeId": f"{SYMBOL}:{t.seq}",
            "price": "15000.00",
            "quantity": t.qty,
            "time": event_time(t.ts).isoformat(),
        }
        for t in trades
    ]
    alice = updates(conn, "alice")
    assert order_row(conn, buy) == (
        "alice",
        "FILLED",
        1_500_000,
        10,
        10,
        15_000_000,
        D("1500000.0000"),
        None,
        fills,
        alice[-1][0],
    )
    assert [
        (u.status, u.filled_qty, u.avg_price, u.price, u.quantity, u.event_time_ms)
        for _, u in alice
    ] == [
        ("OPEN", 0, None, "15000.00", 10, messages[0].timestamp_ms),
        ("PARTIALLY_FILLED", 4, "15000.00", "15000.00", 10, messages[1].timestamp_ms),
        ("FILLED", 10, "15000.00", "15000.00", 10, messages[2].timestamp_ms),
    ]
    assert all(
        u.seq == i
        and u.order_id == buy
        and u.order_type == "LIMIT"
        and u.side == "BUY"
        and u.symbol == SYMBOL
        for i, u in alice
    )
    assert [u.updated_at for _, u in alice[1:]] == [f["time"] for f in fills]
    for order_id, qty, price in ((sell_4, 4, 1_500_000), (sell_6, 6, 1_499_950)):
        assert order_row(conn, order_id)[:7] == (
            "bob",
            "FILLED",
            price,
            qty,
            qty,
            qty * 1_500_000,
            D("1500000.0000"),
        )
    assert [u.status for _, u in updates(conn, "bob")] == ["FILLED", "FILLED"]  # no OPEN
    assert conn.execute(
        "SELECT user_id, quantity, avg_price FROM read_model.positions ORDER BY user_id"
    ).fetchall() == [("alice", 10, D("1500000.0000")), ("bob", 90, D("0"))]  # bob held 100
    assert conn.execute(
        "SELECT trade_id, symbol, price, quantity, executed_at FROM "
        "read_model.trades ORDER BY executed_at"
    ).fetchall() == [
        (f"{SYMBOL}:{t.seq}", SYMBOL, 1_500_000, t.qty, event_time(t.ts)) for t in trades
    ]
    assert depth(conn) == [] == engine_depth(v)
    assert current_book(conn).last_price == "15000.00"


def test_positions_average_the_buys_and_keep_the_average_on_sells(conn, projector):
    v, ids = Venue(conn), accounts(conn)
    v.place(ids["bob"], Side.SELL, 4, MID, Tif.GTC)
    v.place(ids["bob"], Side.SELL, 6, MID + 20, Tif.GTC)
    v.place(ids["alice"], Side.BUY, 10, MID + 20)  # 4 at 15,000.00, 6 at 15,001.00
    projector.apply(conn, stamped(v))
    settle(conn, v.messages())  # the OMS now sees her shares

    def position():
        return conn.execute(
            "SELECT quantity, avg_price FROM read_model.positions WHERE user_id = 'alice'"
        ).fetchone()

    assert position() == (10, D("1500060.0000"))
    done = len(v.batches)
    v.place(ids["carol"], Side.BUY, 5, MID - 100, Tif.GTC)
    v.place(ids["alice"], Side.SELL, 5, MID - 100)
    projector.apply(conn, stamped(v, done))
    assert position() == (5, D("1500060.0000"))  # a sale keeps the average
    v.place(ids["carol"], Side.BUY, 5, MID - 100, Tif.GTC)
    v.place(ids["alice"], Side.SELL, 5, MID - 100)
    projector.apply(conn, stamped(v, done + 2))
    assert position() == (0, D(0))  # flat: no average


def test_cancel_amend_expiry_and_rejections(conn, projector):
    v, ids = Venue(conn), accounts(conn)
    alice, bob = ids["alice"], ids["bob"]
    cancelled = v.place(alice, Side.BUY, 5, MID - 100, Tif.GTC)
    amended = v.place(alice, Side.BUY, 8, MID - 200, Tif.GTC)
    expiring = v.place(bob, Side.SELL, 3, MID + 100, Tif.DAY)
    v.cancel(cancelled, alice)
    v.send(AmendOrder(amended, alice, SYMBOL, MID - 150, 6, ts=v.ts))
    v.cancel(cancelled, alice)  # refused: UNKNOWN_ORDER
    projector.apply(conn, stamped(v))
    assert order_row(conn, cancelled)[1:4] + order_row(conn, cancelled)[7:8] == (
        "CANCELLED",
        1_499_500,
        5,
        "USER_CANCEL",
    )
    assert [u.status for _, u in updates(conn, "alice") if u.order_id == cancelled] == [
        "OPEN",
        "CANCELLED",
    ]  # the refusal: nothing
    assert order_row(conn, amended)[1:5] == ("OPEN", 1_499_250, 6, 0)
    amend = updates(conn, "alice")[-1][1]
    assert (amend.order_id, amend.price, amend.quantity) == (amended, "14992.50", 6)
    assert depth(conn) == engine_depth(v) == [("BUY", 1_499_250, 6), ("SELL", 1_500_500, 3)]

    done = len(v.batches)
    v.close()  # the DAY sell expires
    v.send(NewOrder(amended, alice, SYMBOL, Side.BUY, 1, MID, ts=v.ts))  # closed, dup id
    projector.apply(conn, stamped(v, done))
    assert order_row(conn, expiring)[1] == "EXPIRED"
    assert order_row(conn, amended)[1] == "OPEN"  # a duplicate's rejection: ignored
    assert depth(conn) == engine_depth(v) == [("BUY", 1_499_250, 6)]


def test_a_cancel_that_overtook_its_order_is_refused_and_changes_nothing(conn, projector):
    """The engine refuses a cancel of an order it has not seen (UNKNOWN_ORDER): the
    order, still PENDING, is not rejected by that."""
    v, ids = Venue(conn), accounts(conn)
    buy = v.place(ids["alice"], Side.BUY, 5, MID, Tif.GTC)
    early = Venue(conn)  # a book without the order
    early.cancel(buy, ids["alice"])
    [refusal] = early.batches[0].events
    assert (refusal.type, refusal.reason) == (EventType.REJECTED, Reason.UNKNOWN_ORDER)
    projector.apply(conn, [Message(0, 1, early.batches[0], T0)])
    assert conn.execute("SELECT count(*) FROM read_model.orders").fetchone()[0] == 0
    projector.apply(conn, stamped(v))
    assert [u.status for _, u in updates(conn, "alice")] == ["OPEN"]


def test_a_market_order_rejected_by_the_engine(conn, projector):
    v, ids = Venue(conn), accounts(conn)
    sell = v.place(ids["bob"], Side.SELL, 2, None)  # an empty book: NO_LIQUIDITY
    projector.apply(conn, stamped(v))
    assert order_row(conn, sell)[1:4] + order_row(conn, sell)[7:8] == (
        "REJECTED",
        None,
        2,
        "NO_LIQUIDITY",
    )
    [(_, update)] = updates(conn, "bob")
    assert (update.status, update.reject_reason, update.order_type, update.price) == (
        "REJECTED",
        "NO_LIQUIDITY",
        "MARKET",
        None,
    )
    assert depth(conn) == []


def test_self_trade_prevention_shrinks_orders_and_a_market_order_keeps_no_price(conn, projector):
    """DECREMENT: the market buy's own resting sell (3) is cancelled, the buy is amended
    down to its other 3 and fills them, all in one command: its one update is FILLED
    with the amended quantity. A market order shows no price even though the engine's
    carries its cap."""
    v, ids = Venue(conn), accounts(conn)
    dave = v.account("dave")
    own = v.place(dave, Side.SELL, 3, MID, Tif.GTC)
    v.place(ids["bob"], Side.SELL, 5, MID + 1, Tif.GTC)
    buy = v.place(dave, Side.BUY, 6, None, stp=Stp.DECREMENT)
    assert [e.type for e in v.batches[-1].events] == [
        EventType.ACCEPTED,
        EventType.CANCELLED,
        EventType.AMENDED,
        EventType.TRADE,
    ]
    projector.apply(conn, stamped(v))
    assert order_row(conn, own)[1:5] + order_row(conn, own)[7:8] == (
        "CANCELLED",
        1_500_000,
        3,
        0,
        "SELF_TRADE",
    )
    assert order_row(conn, buy)[1:5] == ("FILLED", None, 3, 3)
    assert [
        (u.status, u.quantity, u.price) for _, u in updates(conn, "dave") if u.order_id == buy
    ] == [("FILLED", 3, None)]  # one command: one update
    assert depth(conn) == engine_depth(v) == [("SELL", 1_500_005, 2)]


def test_an_order_done_by_the_command_that_placed_it_shows_only_its_final_state(conn, projector):
    """The events of one engine command make one ORDER_UPDATE per order, its state after
    the command: a market buy that fills shows FILLED alone (never OPEN first), a
    marketable IOC limit CANCELLED with its fill, a marketable GTC PARTIALLY_FILLED as it
    rests. A resting order changed by three commands shows three updates. Whether the
    commands come one per message or all in one message changes nothing."""
    v, ids = Venue(conn), accounts(conn)
    alice, bob = ids["alice"], ids["bob"]
    first = v.place(bob, Side.SELL, 3, MID, Tif.GTC)
    second = v.place(bob, Side.SELL, 4, MID + 10, Tif.GTC)
    market = v.place(alice, Side.BUY, 5, None)  # 3 + 2 of the second
    ioc = v.place(alice, Side.BUY, 4, MID + 10, Tif.IOC)  # the second's last 2; 2 left
    third = v.place(bob, Side.SELL, 2, MID + 20, Tif.GTC)
    rests = v.place(alice, Side.BUY, 5, MID + 20, Tif.GTC)  # 2, then rests with 3
    single = [Message(0, 10, EventBatch(0, [e for b in v.batches for e in b.events]), T0)]
    runs = []
    for messages in (stamped(v), single):
        with conn.transaction(force_rollback=True):
            stats = projector.apply(conn, messages)
            runs.append(
                (
                    stats.updates,
                    *(
                        [
                            (u.order_id, u.status, u.filled_qty, u.quantity)
                            for _, u in updates(conn, user)
                        ]
                        for user in ("alice", "bob")
                    ),
                    dump(conn, exact=False)["read_model.orders"],
                )
            )
    assert runs[0][:3] == (
        10,
        [
            (market, "FILLED", 5, 5),
            (ioc, "CANCELLED", 2, 4),
            (rests, "PARTIALLY_FILLED", 2, 5),
        ],
        [
            (first, "OPEN", 0, 3),
            (second, "OPEN", 0, 4),
            (first, "FILLED", 3, 3),
            (second, "PARTIALLY_FILLED", 2, 4),
            (second, "FILLED", 4, 4),
            (third, "OPEN", 0, 2),
            (third, "FILLED", 2, 2),
        ],
    )
    assert runs[1] == runs[0]


def test_a_trade_projected_before_changes_nothing_at_another_offset(conn, projector):
    """Should offsets ever be lost, a trade already in read_model.trades is not
    projected twice (no second fill, position change or update)."""
    v, ids = Venue(conn), accounts(conn)
    v.place(ids["bob"], Side.SELL, 4, MID, Tif.GTC)
    v.place(ids["alice"], Side.BUY, 10, MID, Tif.GTC)
    messages = stamped(v)
    projector.apply(conn, messages)
    before = dump(conn)
    again = EventBatch(0, events_of(v, EventType.TRADE))
    stats = projector.apply(conn, [Message(0, messages[-1].offset + 2, again, T0)])
    assert (stats.messages, stats.trades, stats.updates) == (1, 0, 0)
    after = dump(conn)
    assert after.pop("consumer_offsets") != before.pop("consumer_offsets")
    assert after == before


def test_orders_of_others_only_make_market_data(conn, projector):
    v, ids = Venue(conn), accounts(conn)
    v.send(NewOrder(10**9, 424242, SYMBOL, Side.SELL, 5, MID, ts=v.ts))  # not ours
    v.send(NewOrder(10**9 + 1, 424243, SYMBOL, Side.SELL, 7, MID + 40, ts=v.ts))
    v.send(NewOrder(10**9 + 2, 424244, SYMBOL, Side.BUY, 9, MID - 40, ts=v.ts))
    buy = v.place(ids["alice"], Side.BUY, 3, MID)  # takes 3 of the 5
    stats = projector.apply(conn, stamped(v))
    assert stats.trades == 1
    assert conn.execute("SELECT order_id FROM read_model.orders").fetchall() == [(buy,)]
    assert {u.order_id for _, u in updates(conn, "alice")} == {buy}
    assert conn.execute("SELECT count(*) FROM read_model.order_updates").fetchone()[0] == 1
    assert (
        depth(conn)
        == engine_depth(v)
        == [("BUY", 1_499_800, 9), ("SELL", 1_500_000, 2), ("SELL", 1_500_200, 7)]
    )


def test_the_read_model_depth_is_the_engine_book_after_a_busy_day(conn, projector):
    v = Venue(conn)
    busy_day(v)
    projector.apply(conn, stamped(v))
    assert depth(conn) == engine_depth(v)
    assert conn.execute("SELECT count(*) FROM read_model.trades").fetchone()[0] == len(
        events_of(v, EventType.TRADE)
    )


# --- exactly once -------------------------------------------------------------------------


def test_re_delivery_changes_nothing(conn, projector):
    v = Venue(conn)
    busy_day(v)
    messages = stamped(v)
    first = projector.apply(conn, messages)
    assert first.updates > 0 and first.trades > 0 and first.skipped == 0
    before = dump(conn)
    again = projector.apply(conn, messages)
    assert (again.messages, again.skipped, again.events, again.push) == (0, len(messages), 0, None)
    assert projector.apply(conn, messages[3:7]).messages == 0
    assert dump(conn) == before


def test_how_messages_are_split_into_transactions_does_not_matter(conn, projector):
    v = Venue(conn)
    busy_day(v)
    messages = stamped(v)
    ends = []
    for splits in ([len(messages)], list(range(1, len(messages) + 1)), [2, 3, 7, 9]):
        with conn.transaction(force_rollback=True):
            start = 0
            for end in splits:
                projector.apply(conn, messages[max(0, start - 1) : end])  # overlaps: re-sent
                start = end
            projector.apply(conn, messages[start:])
            ends.append(dump(conn, exact=False))
    assert ends[0] == ends[1] == ends[2]
    assert ends[0]["read_model.order_updates"] and ends[0]["read_model.trades"]


# --- after the commit: Redis -------------------------------------------------------------------


def received(pubsub, count: int, timeout: float = 10.0) -> list:
    """The next ``count`` messages of a subscription, decoded."""
    found, deadline = [], time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            found.append((message["channel"].decode(), decode_message(message["data"])))
    return found


def test_after_the_commit_updates_trades_and_books_are_pushed(conn, client, prefix, projector):
    v, ids = Venue(conn), accounts(conn)
    v.place(ids["bob"], Side.SELL, 4, MID, Tif.GTC)
    v.place(ids["bob"], Side.SELL, 5, MID + 20, Tif.GTC)
    buy = v.place(ids["alice"], Side.BUY, 6, MID + 20)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    channels = [
        user_channel(prefix, "alice"),
        user_channel(prefix, "bob"),
        trades_channel(prefix, SYMBOL),
        book_channel(prefix, SYMBOL),
    ]
    pubsub.subscribe(*channels)
    try:
        stats = projector.apply(conn, stamped(v))
        projector.committed(stats)
        got = received(pubsub, stats.updates + stats.trades + 1)
    finally:
        pubsub.close()
    by_channel = {c: [m for ch, m in got if ch == c] for c in channels}
    assert [(m.order_id, m.status, m.filled_qty) for m in by_channel[channels[0]]] == [
        (buy, "FILLED", 6)
    ]  # one command: its final state alone
    assert [m.seq for m in by_channel[channels[0]]] == [i for i, _ in updates(conn, "alice")]
    assert [m.status for m in by_channel[channels[1]]] == [
        "OPEN",
        "OPEN",
        "FILLED",
        "PARTIALLY_FILLED",
    ]
    trades = events_of(v, EventType.TRADE)
    assert by_channel[channels[2]] == [
        TradeTick(f"{SYMBOL}:{t.seq}", SYMBOL, p, t.qty, event_time(t.ts).isoformat())
        for t, p in zip(trades, ["15000.00", "15001.00"], strict=True)
    ]
    book = current_book(conn)
    assert by_channel[channels[3]] == [book]
    assert book.asks[0].quantity == 3 and book.last_price == "15001.00"
    assert decode_message(client.get(md_key(prefix, SYMBOL))) == book
    assert {u: client.get(f"{prefix}cache:{u}:gen") for u in ("alice", "bob", "carol")} == {
        "alice": b"1",
        "bob": b"1",
        "carol": None,
    }
    last = v.messages()[-1]  # published up to it (the notifier waits for it)
    assert client.hgetall(projected_key(prefix, "events")) == {b"0": b"%d" % (last.offset + 1)}


def test_a_redis_failure_stops_nothing_and_is_made_good_after_the_next_batch(conn, client, prefix):
    """A Redis user without permissions fails every command after the commit; once it
    has them again, the next batch stores the books and invalidations that failed."""
    user, password = powerless_redis_user(client, "projector")
    host = client.connection_pool.connection_kwargs
    try:
        with redis.Redis(
            host=host["host"],
            port=host["port"],
            db=host.get("db", 0),
            username=user,
            password=password,
        ) as limited:
            projector = ProjectorConsumer(MARKET, limited, prefix)
            v, ids = Venue(conn), accounts(conn)
            v.place(ids["bob"], Side.SELL, 4, MID, Tif.GTC)
            v.place(ids["alice"], Side.BUY, 1, MID)
            projector.committed(projector.apply(conn, stamped(v)))  # logs, no raise
            assert client.get(md_key(prefix, SYMBOL)) is None
            assert client.get(f"{prefix}cache:alice:gen") is None

            client.acl_setuser(user, enabled=True, categories=["+@all"])
            done = len(v.batches)
            v.place(ids["carol"], Side.BUY, 10, MID - 500, Tif.GTC)  # carol only
            projector.committed(projector.apply(conn, stamped(v, done)))
            assert decode_message(client.get(md_key(prefix, SYMBOL))) == current_book(conn)
            assert {u: client.get(f"{prefix}cache:{u}:gen") for u in ("alice", "bob", "carol")} == {
                "alice": b"1",
                "bob": b"1",
                "carol": b"1",
            }
    finally:
        client.acl_deluser(user)


# --- through Kafka ---------------------------------------------------------------------------


def test_through_kafka_and_again_from_the_offsets_in_postgres(
    conn, database, kafka, client, prefix, projector, tmp_path
):
    topic = kafka.events_topic
    instruments = tmp_path / "instruments.toml"
    instruments.write_text(INSTRUMENTS_TOML)
    v = Venue(conn)
    busy_day(v)
    end = produce_in_transactions(kafka.bootstrap, topic, [encode(b) for b in v.batches])

    with conn.transaction(force_rollback=True):  # the same batches, directly
        projector.apply(conn, v.messages())
        expected = dump(conn, exact=False)
    expected.pop("consumer_offsets")

    run_until_stored(
        run_projector,
        (kafka.bootstrap, topic, database, str(instruments), REDIS_URL, prefix),
        conn,
        "projector",
        topic,
        end,
    )
    after = dump(conn, exact=False)
    assert after.pop("consumer_offsets") == [
        {"consumer": "projector", "topic": topic, "partition": 0, "next_offset": end}
    ]
    for row in after["read_model.order_updates"]:  # Kafka's timestamps, not ours
        assert row["payload"].pop("eventTimeMs") > 0
    for row in expected["read_model.order_updates"]:
        row["payload"].pop("eventTimeMs")
    assert after == expected
    assert decode_message(client.get(md_key(prefix, SYMBOL))) == current_book(conn)

    # again, as the service: it starts from Postgres's offsets, so nothing changes
    before = dump(conn)
    env = dict(
        os.environ,
        BROKERCORE_DATABASE_URL=database,
        BROKERCORE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
        BROKERCORE_INSTRUMENTS=str(instruments),
        BROKERCORE_REDIS_URL=REDIS_URL,
        BROKERCORE_REDIS_PREFIX=prefix,
    )
    code, output = run_service_briefly("projector", env, tmp_path / "service.log")
    assert code == 0, output
    assert f"from offsets [{end}, 0, 0, 0]" in output and "stopped; 0 messages" in output, output
    assert dump(conn) == before


def test_two_projector_processes_each_owning_some_partitions(conn, client, prefix):
    """Two projectors, one per partition, applying their batches as they come: the read
    model is the one projector's, the ORDER_UPDATE ids rise in commit order, and the
    projected offsets only move forward, even when a projector that lost a partition
    publishes a batch after the new owner's."""
    v = Venue(conn)
    busy_day(v)
    single = stamped(v)
    with conn.transaction(force_rollback=True):
        ProjectorConsumer(MARKET, client, f"{prefix}one:").apply(conn, single)
        alone = dump(conn, exact=False)
    split = [m._replace(partition=i % 2) for i, m in enumerate(single)]
    owners = [ProjectorConsumer(MARKET, client, prefix) for _ in range(2)]
    for m in split:
        owners[m.partition].committed(owners[m.partition].apply(conn, [m]))
    together = dump(conn, exact=False)
    offsets = together.pop("consumer_offsets")
    assert together == {t: rows for t, rows in alone.items() if t != "consumer_offsets"}
    assert [(r["partition"], r["next_offset"]) for r in offsets] == [
        (p, max(m.offset for m in split if m.partition == p) + 1) for p in (0, 1)
    ]
    ids = [i for (i,) in conn.execute("SELECT update_id FROM read_model.order_updates")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) > 0
    key = projected_key(prefix, "events")
    published = client.hgetall(key)
    assert published == {b"%d" % r["partition"]: b"%d" % r["next_offset"] for r in offsets}
    late = ProjectorStats(push=Publication(offsets={0: 1, 1: 10**6}))
    owners[0].committed(late)  # partition 0's old owner, late; 1 moves on
    assert client.hgetall(key) == {**published, b"1": b"1000000"}
