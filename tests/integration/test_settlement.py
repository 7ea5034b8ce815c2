"""The settlement consumer against the real Postgres (and once through the real Kafka),
applying the ``EventBatch``es of tests/venue_support.py's OMS and book in miniature."""

from __future__ import annotations

import os
import uuid
from decimal import Decimal

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokercore.broker.ledger import SettlementError
from brokercore.consumers.pg_consumer import Message
from brokercore.consumers.reconcile import check_invariants
from brokercore.consumers.settlement import SettlementConsumer, run_settlement
from brokercore.engine.records import EventType, Reason, Side, Stp, Tif
from brokercore.kafka.messages import Event, EventBatch, NewOrder, encode
from brokercore.read.cache import Invalidator
from kafka_support import run_service_briefly, run_until_stored
from shared_servers import REDIS_URL
from venue_support import (
    CASH,
    FEES,
    INST,
    INSTRUMENTS_TOML,
    MARKET,
    MID,
    NOW,
    SESSION,
    SHARES,
    Venue,
    busy_day,
    produce_in_transactions,
    settle,
)

D = Decimal


def one(conn, query: str, *args):
    return conn.execute(query, args).fetchone()


def account_row(conn, account_id: int):
    return one(conn, "SELECT cash, blocked_cash FROM accounts WHERE account_id = %s", account_id)


def position_row(conn, account_id: int):
    return one(
        conn,
        "SELECT quantity, blocked_quantity, avg_price FROM positions "
        "WHERE account_id = %s AND symbol = %s",
        account_id,
        INST.symbol,
    )


def order_row(conn, order_id: int):
    return one(
        conn,
        "SELECT status, filled_quantity, blocked_cash, blocked_shares, fees, "
        "filled_notional, avg_fill_price, reject_reason FROM orders "
        "WHERE order_id = %s",
        order_id,
    )


_KEYS = {
    "accounts": "account_id",
    "positions": "account_id, symbol",
    "orders": "order_id",
    "fills": "trade_id, side",
    "fee_income": "trade_id, side",
    "order_events": "event_id",
    "consumer_offsets": "consumer, topic, partition",
}
_CLOCKS = ("created_at", "updated_at", "recorded_at", "event_id")


def dump(conn, clocks: bool = True) -> dict[str, list]:
    """Every row of every table settlement writes; without ``clocks``, minus the columns
    that record when (and serial ids), to compare two runs."""
    tables = {}
    for table, key in _KEYS.items():
        rows = [r[0] for r in conn.execute(f"SELECT to_jsonb(t) FROM {table} t ORDER BY {key}")]
        if not clocks:
            rows = [{k: v for k, v in r.items() if k not in _CLOCKS} for r in rows]
        tables[table] = rows
    return tables


def fee(notional: int) -> int:
    return FEES.fee(notional)


# --- single scenarios --------------------------------------------------------------------


def test_a_buy_and_a_sell_crossing_settle_both_sides(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    sell = v.place(seller, Side.SELL, 10, MID)  # rests: the maker
    buy = v.place(buyer, Side.BUY, 10, MID)  # takes it: one TRADE
    assert [e.type for b in v.batches for e in b.events] == [
        EventType.ACCEPTED,
        EventType.ACCEPTED,
        EventType.TRADE,
    ]
    stats = settle(conn, v.messages())
    assert (stats.messages, stats.events, stats.fills) == (2, 3, 2)

    notional = 10 * 1_500_000
    assert fee(notional) == 6_500
    assert account_row(conn, buyer) == (CASH - notional - 6_500, 0)
    assert account_row(conn, seller) == (CASH + notional - 6_500, 0)
    assert position_row(conn, buyer) == (10, 0, D("1500000"))
    assert position_row(conn, seller) == (SHARES - 10, 0, D("1400000"))
    for order_id in (buy, sell):
        assert order_row(conn, order_id) == (
            "FILLED",
            10,
            0,
            0,
            6_500,
            notional,
            D("1500000"),
            None,
        )
    trade = f"RELIANCE:{v.book.seq}"
    assert conn.execute(
        "SELECT trade_id, side, order_id, account_id, price, quantity FROM fills ORDER BY side"
    ).fetchall() == [
        (trade, "BUY", buy, buyer, 1_500_000, 10),
        (trade, "SELL", sell, seller, 1_500_000, 10),
    ]
    assert conn.execute(
        "SELECT trade_id, side, amount FROM fee_income ORDER BY side"
    ).fetchall() == [(trade, "BUY", 6_500), (trade, "SELL", 6_500)]
    assert conn.execute(
        "SELECT order_id, status FROM order_events WHERE dedupe_key IS NOT NULL ORDER BY event_id"
    ).fetchall() == [(sell, "OPEN"), (buy, "OPEN"), (buy, "FILLED"), (sell, "FILLED")]
    assert one(conn, "SELECT partition, next_offset FROM consumer_offsets") == (0, 13)


def test_after_a_commit_the_read_caches_of_the_changed_users_are_invalidated(conn):
    """The query service's cached answers are filed under a per-user generation; settlement
    bumps the generations of the users whose money or shares it changed (real Redis)."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    v.account("bystander")
    v.place(seller, Side.SELL, 10, MID)
    v.place(buyer, Side.BUY, 10, MID)
    settler = SettlementConsumer(MARKET, FEES, invalidate=Invalidator(client, prefix))
    settler.committed(settler.apply(conn, v.messages()))
    generations = {
        user: client.get(f"{prefix}cache:{user}:gen") for user in ("buyer", "seller", "bystander")
    }
    assert generations == {"buyer": b"1", "seller": b"1", "bystander": None}
    settler.committed(settler.apply(conn, v.messages()))  # re-delivered: no change
    assert client.get(f"{prefix}cache:buyer:gen") == b"1"


def test_partial_fills_then_cancel_release_the_rest(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    buy = v.place(buyer, Side.BUY, 10, MID, Tif.GTC)
    held = one(conn, "SELECT blocked_cash FROM orders WHERE order_id = %s", buy)[0]
    assert held == 10 * 1_500_000 + fee(10 * 1_500_000)
    v.place(seller, Side.SELL, 3, MID)
    v.place(seller, Side.SELL, 4, MID - 10)  # the buyer's price: 300,000
    settle(conn, v.messages())
    notional = 7 * 1_500_000
    status, filled, blocked, *_ = order_row(conn, buy)
    assert (status, filled) == ("PARTIALLY_FILLED", 7)
    assert blocked == 3 * 1_500_000 + fee(10 * 1_500_000) - fee(notional)
    assert account_row(conn, buyer) == (CASH - notional - fee(notional), blocked)

    done = len(v.batches)
    v.cancel(buy, buyer)
    settle(conn, v.messages(done))
    assert order_row(conn, buy) == (
        "CANCELLED",
        7,
        0,
        0,
        fee(notional),
        notional,
        D("1500000"),
        "USER_CANCEL",
    )
    assert account_row(conn, buyer) == (CASH - notional - fee(notional), 0)
    assert position_row(conn, buyer) == (7, 0, D("1500000"))


def test_a_market_buy_releases_what_price_improvement_leaves_unused(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    v.place(seller, Side.SELL, 5, MID)
    v.place(seller, Side.SELL, 5, MID + 20)
    full = v.place(buyer, Side.BUY, 4, None)  # held at the band's top
    held = one(conn, "SELECT blocked_cash FROM orders WHERE order_id = %s", full)[0]
    assert held == 4 * INST.ticks_to_paise(INST.high) + fee(4 * INST.ticks_to_paise(INST.high))
    partial = v.place(buyer, Side.BUY, 10, None)  # 1 + 5 fill, 4 cancelled (IOC)
    settle(conn, v.messages())

    n1 = 4 * 1_500_000
    assert order_row(conn, full) == ("FILLED", 4, 0, 0, fee(n1), n1, D("1500000"), None)
    n2 = 1 * 1_500_000 + 5 * 1_500_100
    assert order_row(conn, partial) == (
        "CANCELLED",
        6,
        0,
        0,
        fee(n2),
        n2,
        D("1500083.3333"),
        "IOC_REMAINDER",
    )
    assert account_row(conn, buyer) == (CASH - n1 - fee(n1) - n2 - fee(n2), 0)
    assert position_row(conn, buyer) == (10, 0, D(n1 + n2) / 10)


def test_a_limit_buy_filled_below_its_price_frees_the_difference(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer", shares=0), v.account("seller")
    v.place(seller, Side.SELL, 10, MID)
    buy = v.place(buyer, Side.BUY, 10, MID + 1000)  # limit 15,050.00, fills at 15,000
    settle(conn, v.messages())
    n = 10 * 1_500_000
    assert order_row(conn, buy) == ("FILLED", 10, 0, 0, fee(n), n, D("1500000"), None)
    assert account_row(conn, buyer) == (CASH - n - fee(n), 0)


def test_an_engine_rejection_releases_the_hold(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer"), v.account("seller")
    buy = v.place(buyer, Side.BUY, 5, None)  # empty book: NO_LIQUIDITY
    sell = v.place(seller, Side.SELL, 5, MID, Tif.FOK)  # nothing to fill it
    settle(conn, v.messages())
    assert order_row(conn, buy)[0::7] == ("REJECTED", "NO_LIQUIDITY")
    assert order_row(conn, sell)[0::7] == ("REJECTED", "FOK_NOT_FILLABLE")
    assert order_row(conn, buy)[2:4] == order_row(conn, sell)[2:4] == (0, 0)
    assert account_row(conn, buyer) == (CASH, 0)
    assert position_row(conn, seller) == (SHARES, 0, D("1400000"))


def test_expiry_at_close_releases_cash_and_shares(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer"), v.account("seller")
    buy = v.place(buyer, Side.BUY, 5, MID - 100)  # DAY orders that do not cross
    sell = v.place(seller, Side.SELL, 7, MID + 100)
    gtc = v.place(seller, Side.SELL, 2, MID + 100, Tif.GTC)
    settle(conn, v.messages())
    assert account_row(conn, buyer)[1] > 0 and position_row(conn, seller)[1] == 9
    v.close()
    settle(conn, v.messages(2 + 1))
    assert order_row(conn, buy)[:4] == ("EXPIRED", 0, 0, 0)
    assert order_row(conn, sell)[:4] == ("EXPIRED", 0, 0, 0)
    assert order_row(conn, gtc)[:4] == ("OPEN", 0, 0, 2)  # GTC outlives the session
    assert account_row(conn, buyer) == (CASH, 0)
    assert position_row(conn, seller)[:2] == (SHARES, 2)


def test_an_order_done_short_of_its_quantity_releases_the_rest(conn):
    """Self-trade prevention (DECREMENT) shrinks a resting sell from 10 to 6 shares; the
    trade that leaves it 0 open ends it and frees the 4 shares it still blocks."""
    v = Venue(conn)
    seller, buyer = v.account("seller"), v.account("buyer", shares=0)
    sell = v.place(seller, Side.SELL, 10, MID, Tif.GTC)
    mine = v.place(seller, Side.BUY, 4, MID, stp=Stp.DECREMENT)
    v.place(buyer, Side.BUY, 6, MID)
    assert [(e.type, e.reason) for e in v.batches[1].events] == [
        (EventType.ACCEPTED, 0),
        (EventType.AMENDED, Reason.SELF_TRADE),
        (EventType.CANCELLED, Reason.SELF_TRADE),
    ]
    settle(conn, v.messages())
    assert order_row(conn, sell)[:4] == ("FILLED", 6, 0, 0)
    assert order_row(conn, mine)[0::7] == ("CANCELLED", "SELF_TRADE")
    assert position_row(conn, seller)[:2] == (SHARES - 6, 0)
    assert account_row(conn, seller) == (CASH + 6 * 1_500_000 - fee(6 * 1_500_000), 0)


def test_a_refused_cancel_is_history_only(conn):
    v = Venue(conn)
    buyer, seller = v.account("buyer"), v.account("seller")
    sell = v.place(seller, Side.SELL, 5, MID)
    v.place(buyer, Side.BUY, 5, MID)
    v.cancel(sell, seller)  # too late: UNKNOWN_ORDER
    settle(conn, v.messages())
    assert order_row(conn, sell)[:2] == ("FILLED", 5)
    assert one(
        conn,
        "SELECT status, payload->>'refused', payload->>'reason' FROM "
        "order_events WHERE order_id = %s ORDER BY event_id DESC LIMIT 1",
        sell,
    ) == ("FILLED", "CANCEL", "UNKNOWN_ORDER")


def test_events_of_other_brokers_orders_are_ignored(conn):
    v = Venue(conn)
    seller = v.account("seller")
    sell = v.place(seller, Side.SELL, 5, MID)
    v.send(NewOrder(10**9, 424242, INST.symbol, Side.BUY, 5, MID, ts=v.ts))  # not ours
    settle(conn, v.messages())
    assert order_row(conn, sell)[:2] == ("FILLED", 5)
    assert conn.execute("SELECT side FROM fills").fetchall() == [("SELL",)]
    assert account_row(conn, seller) == (CASH + 5 * 1_500_000 - fee(5 * 1_500_000), 0)


def test_an_event_that_contradicts_the_order_stops_settlement(conn):
    v = Venue(conn)
    seller = v.account("seller")
    sell = v.place(seller, Side.SELL, 5, MID)
    settle(conn, v.messages())
    before = dump(conn)
    forged = EventBatch(
        0,
        [
            Event(
                99,
                INST.symbol,
                EventType.TRADE,
                0,
                1,
                Side.BUY,
                50,
                0,
                777,
                seller + 1,
                MID,
                6,
                0,
                sell,
                seller,
                0,
            )
        ],
    )  # 6 shares of a 5-share order
    with pytest.raises(SettlementError):
        settle(conn, [Message(0, 100, forged)])
    assert dump(conn) == before  # nothing of the batch stayed


# --- exactly once ------------------------------------------------------------------------


def test_re_delivery_of_a_batch_changes_nothing(conn):
    v = Venue(conn)
    busy_day(v)
    messages = v.messages()
    first = settle(conn, messages)
    assert first.fills > 0 and first.skipped == 0
    before = dump(conn)
    again = settle(conn, messages)
    assert (again.messages, again.skipped, again.events) == (0, len(messages), 0)
    half = settle(conn, messages[3:7])
    assert half.messages == 0
    assert dump(conn) == before  # updated_at included


def test_how_messages_are_split_into_transactions_does_not_matter(conn):
    v = Venue(conn)
    busy_day(v)
    messages = v.messages()
    ends = []
    for splits in ([len(messages)], list(range(1, len(messages) + 1)), [2, 3, 7, 9]):
        with conn.transaction(force_rollback=True):  # each split from the same start
            start = 0
            for end in splits:
                settle(conn, messages[max(0, start - 1) : end])  # overlaps re-deliver one
                start = end
            settle(conn, messages[start:])
            ends.append(dump(conn, clocks=False))
    assert ends[0] == ends[1] == ends[2]
    assert ends[0]["fills"] and ends[0]["consumer_offsets"][0]["next_offset"] == messages[-1][1] + 1


# --- conservation over random days -------------------------------------------------------

limits = st.tuples(
    st.just("limit"),
    st.integers(0, 2),
    st.sampled_from(Side),
    st.integers(1, 15),
    st.integers(-3, 3),
    st.sampled_from([Tif.GTC, Tif.DAY, Tif.IOC, Tif.FOK]),
)
actions = st.lists(
    st.one_of(  # mostly orders, so they trade
        limits,
        limits,
        limits,
        st.tuples(st.just("market"), st.integers(0, 2), st.sampled_from(Side), st.integers(1, 15)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("settle"), st.integers(0, 2)),
    ),
    min_size=8,
    max_size=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=actions, data=st.data())
def test_money_and_shares_are_conserved_over_random_days(conn, actions, data):
    with conn.transaction(force_rollback=True):  # a fresh start per example
        v = Venue(conn)
        accounts = [v.account(f"u{uuid.uuid4().hex}") for _ in range(3)]
        placed = [
            (v.place(accounts[0], Side.SELL, 20, MID + 1, Tif.GTC), accounts[0]),
            (v.place(accounts[1], Side.BUY, 20, MID - 1, Tif.GTC), accounts[1]),
        ]
        settled = 0  # a book with both sides

        def settle_some(redeliver: int) -> None:
            nonlocal settled
            messages = v.messages()
            end = data.draw(st.integers(settled, len(messages)))
            settle(conn, messages[max(0, settled - redeliver) : end])
            settled = end
            check_holds(conn)

        for action in actions:
            if action[0] == "limit":
                _, who, side, qty, offset, tif = action
                order = v.place(accounts[who], side, qty, MID + offset, tif)
            elif action[0] == "market":
                _, who, side, qty = action
                order = v.place(accounts[who], side, qty)
            elif action[0] == "cancel":
                if placed:
                    v.cancel(*placed[action[1] % len(placed)])
                continue
            else:
                settle_some(action[1])
                continue
            if order is not None:
                placed.append((order, accounts[who]))
        v.close()
        for order_id, account_id in placed:  # what GTC left: cancel it
            v.cancel(order_id, account_id)
        settle_some(2)
        settle(conn, v.messages(settled))
        check_holds(conn)

        total_cash, fees = one(
            conn,
            "SELECT sum(cash), (SELECT coalesce(sum(amount), 0) FROM fee_income) FROM accounts",
        )
        assert total_cash + fees == 3 * CASH
        assert one(conn, "SELECT sum(quantity), sum(blocked_quantity) FROM positions") == (
            3 * SHARES,
            0,
        )
        assert (
            one(
                conn,
                "SELECT count(*) FROM orders WHERE status IN "
                "('PENDING', 'OPEN', 'PARTIALLY_FILLED')",
            )[0]
            == 0
        )
        trades = sum(e.type == EventType.TRADE for b in v.batches for e in b.events)
        assert one(conn, "SELECT count(*) FROM fills")[0] == 2 * trades
        assert (
            one(
                conn,
                "SELECT count(*) FROM orders o WHERE filled_quantity <> "
                "(SELECT coalesce(sum(quantity), 0) FROM fills f "
                "WHERE f.order_id = o.order_id)",
            )[0]
            == 0
        )
        assert check_invariants(conn, {INST.symbol: SESSION}, NOW) == [], (
            "the reconciler finds nothing wrong"
        )


def check_holds(conn) -> None:
    """What accounts and positions block is exactly what their orders still hold."""
    assert (
        conn.execute(
            "SELECT a.account_id FROM accounts a WHERE blocked_cash <> (SELECT "
            "coalesce(sum(o.blocked_cash), 0) FROM orders o WHERE o.account_id = a.account_id)"
        ).fetchall()
        == []
    )
    assert (
        conn.execute(
            "SELECT p.account_id FROM positions p WHERE blocked_quantity <> (SELECT "
            "coalesce(sum(o.blocked_shares), 0) FROM orders o WHERE o.account_id = p.account_id "
            "AND o.symbol = p.symbol)"
        ).fetchall()
        == []
    )
    assert (
        conn.execute(
            "SELECT order_id FROM orders WHERE status NOT IN "
            "('PENDING', 'OPEN', 'PARTIALLY_FILLED') "
            "AND blocked_cash + blocked_shares > 0"
        ).fetchall()
        == []
    )


# --- through the real Kafka --------------------------------------------------------------


def test_through_kafka_and_again_from_the_offsets_in_postgres(conn, db, kafka, tmp_path):
    topic = kafka.events_topic
    instruments = tmp_path / "instruments.toml"
    instruments.write_text(INSTRUMENTS_TOML)

    v = Venue(conn)
    busy_day(v)
    end = produce_in_transactions(kafka.bootstrap, topic, [encode(b) for b in v.batches])

    # the expected end state: the same batches settled directly in a throw-away txn
    with conn.transaction(force_rollback=True):
        settle(conn, v.messages())
        expected = dump(conn, clocks=False)
    expected.pop("consumer_offsets")

    run_until_stored(
        run_settlement,
        (kafka.bootstrap, topic, db, str(instruments), FEES),
        conn,
        "settlement",
        topic,
        end,
    )
    after = dump(conn, clocks=False)
    assert after.pop("consumer_offsets") == [
        {"consumer": "settlement", "topic": topic, "partition": 0, "next_offset": end}
    ]
    assert after == expected
    assert after["fills"]

    # again, as the service: it starts from Postgres's offsets, so nothing changes
    before = dump(conn)
    env = dict(
        os.environ,
        BROKERCORE_DATABASE_URL=db,
        BROKERCORE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
        BROKERCORE_INSTRUMENTS=str(instruments),
        BROKERCORE_FEE_BPS="3",
        BROKERCORE_FEE_FIXED_PAISE="2000",
    )
    code, output = run_service_briefly("settlement", env, tmp_path / "service.log")
    assert code == 0, output
    assert f"from offsets [{end}, 0, 0, 0]" in output and "stopped; 0 messages" in output, output
    assert dump(conn) == before
