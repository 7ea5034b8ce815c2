"""The read model of the trading day (docs/engine.md, "The trading day") on the real
Postgres and Redis: a stop's statuses, an auction's fills and its indicative opening,
a halted symbol, icebergs showing only their disclosed part. A real ``OrderBook`` makes
the events (``trading_day_support.TradingVenue``) and the projector applies them command
by command; its market data is compared with the engine's own views each time."""

from __future__ import annotations

import random
import uuid

import pytest
import redis

from brokercore.broker.money import rupees
from brokercore.consumers.projector import ProjectorConsumer
from brokercore.engine.records import Op, Phase, Side, Stp, Tif
from brokercore.kafka.messages import AmendOrder
from brokercore.realtime.channels import BookUpdate, Indicative, decode_message, md_key
from read_model_support import T0, accounts, current_book, depth, order_row, updates
from shared_servers import REDIS_URL
from trading_day_support import TradingVenue
from venue_support import INST, MARKET, MID

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def client():
    with redis.Redis.from_url(REDIS_URL) as c:
        yield c


@pytest.fixture
def projector(client):
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    yield ProjectorConsumer(MARKET, client, prefix)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)


class Projected:
    """Projects what the venue published since the last call (and publishes it on
    Redis), then checks the read model's depth, phase and indicative opening against
    the engine's own views."""

    def __init__(self, conn, v: TradingVenue, projector: ProjectorConsumer):
        self.conn, self.v, self.projector, self.done = conn, v, projector, 0

    def __call__(self) -> BookUpdate:
        messages = [m._replace(timestamp_ms=T0 + m.offset) for m in self.v.messages(self.done)]
        self.done = len(self.v.batches)
        self.projector.committed(self.projector.apply(self.conn, messages))
        assert depth(self.conn) == self.v.depth()
        stored = self.projector.redis.get(md_key(self.projector.prefix, INST.symbol))
        book = (  # nothing published yet: an empty book
            BookUpdate(INST.symbol, [], [], None, None, None)
            if stored is None
            else decode_message(stored)
        )
        assert book == current_book(self.conn)  # the query service's fallback agrees
        assert book.phase == Phase(self.v.book.phase).name
        quote = self.v.book.auction() if book.phase == "PRE_OPEN" else None
        assert book.indicative == (
            None
            if quote is None
            else Indicative(
                rupees(paise(quote.price)),
                quote.volume,
                quote.imbalance,
                Side(quote.surplus_side).name if quote.surplus_side else None,
            )
        )
        return book


def paise(ticks: int) -> int:
    return INST.ticks_to_paise(ticks)


def statuses(conn, user: str) -> list[tuple[int, str]]:
    return [(u.order_id, u.status) for _, u in updates(conn, user)]


# --- stops ----------------------------------------------------------------------------------


def test_a_stop_waits_triggers_rests_fills_and_expires(conn, projector):
    """A buy stop-limit is TRIGGER_PENDING and out of the book until a trade reaches its
    trigger; then it enters (OPEN, resting at its limit), fills in part and expires at
    the close, like the sell stop that never triggered."""
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    project = Projected(conn, v, projector)
    v.order(bob, Side.SELL, 5, MID)
    v.order(carol, Side.BUY, 5, MID)  # last price MID
    buy_stop = v.order(alice, Side.BUY, 8, MID + 20, trigger=MID + 10)
    sell_stop = v.order(alice, Side.SELL, 3, trigger=MID - 10)
    book = project()
    assert (book.bids, book.asks) == ([], [])  # stops wait outside the book
    assert statuses(conn, "alice") == [
        (buy_stop, "TRIGGER_PENDING"),
        (sell_stop, "TRIGGER_PENDING"),
    ]
    row = conn.execute(
        "SELECT type, price, trigger_price, status FROM read_model.orders WHERE order_id = %s",
        (buy_stop,),
    ).fetchone()
    assert row == ("STOP_LIMIT", paise(MID + 20), paise(MID + 10), "TRIGGER_PENDING")
    update = updates(conn, "alice")[0][1]
    assert (update.order_type, update.price, update.trigger_price) == (
        "STOP_LIMIT",
        "15001.00",
        "15000.50",
    )

    v.order(bob, Side.SELL, 4, MID + 10)
    v.order(carol, Side.BUY, 4, MID + 10)  # trades at MID + 10: the buy stop enters
    book = project()
    assert [(level.price, level.quantity) for level in book.bids] == [("15001.00", 8)]
    assert statuses(conn, "alice")[2:] == [(buy_stop, "OPEN")]

    v.order(bob, Side.SELL, 3, MID + 15)  # fills 3 of the stop at its limit
    project()
    assert order_row(conn, buy_stop)[1:5] == ("PARTIALLY_FILLED", paise(MID + 20), 8, 3)

    v.close()
    book = project()
    assert statuses(conn, "alice")[3:] == [
        (buy_stop, "PARTIALLY_FILLED"),
        (buy_stop, "EXPIRED"),
        (sell_stop, "EXPIRED"),
    ]
    assert (book.phase, book.bids, book.indicative) == ("CLOSED", [], None)


def test_a_stop_market_triggered_by_an_amend_with_nothing_left_to_take(conn, projector):
    """A sell stop-market triggered by a trade that emptied the bids is cancelled for
    NO_LIQUIDITY in the same command as the trade: one update, from TRIGGER_PENDING."""
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    project = Projected(conn, v, projector)
    v.order(bob, Side.SELL, 2, MID)
    v.order(carol, Side.BUY, 2, MID)  # last price MID
    stop = v.order(bob, Side.SELL, 3, trigger=MID - 10, tif=Tif.GTC)
    v.order(carol, Side.BUY, 4, MID - 20, tif=Tif.GTC)
    sell = v.order(alice, Side.SELL, 1, MID + 50, tif=Tif.GTC)
    project()
    v.send(AmendOrder(sell, alice, INST.symbol, MID - 20, 4, ts=v.ts))  # takes all 4 bids
    project()
    assert statuses(conn, "bob")[-1] == (stop, "CANCELLED")
    assert order_row(conn, stop)[7] == "NO_LIQUIDITY"
    assert order_row(conn, sell)[1:5] == ("FILLED", paise(MID - 20), 4, 4)


# --- the call auction -----------------------------------------------------------------------


def test_an_auction_shows_its_indicative_price_then_fills_both_sides_at_it(conn, projector):
    """docs/engine.md's first worked example in PRE_OPEN, then a market buy that takes
    it all at 103 and leaves 50, which becomes a limit at the opening price."""
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    project = Projected(conn, v, projector)
    v.close()
    v.pre_open()
    book = project()
    assert (book.phase, book.halted, book.indicative) == ("PRE_OPEN", False, None)
    buy_102 = v.order(alice, Side.BUY, 100, MID + 2)
    buy_101 = v.order(alice, Side.BUY, 100, MID + 1)
    sell_100 = v.order(bob, Side.SELL, 150, MID)
    sell_103 = v.order(bob, Side.SELL, 100, MID + 3)
    book = project()  # crossed, and not matched
    assert [(lv.price, lv.quantity) for lv in book.bids] == [("15000.10", 100), ("15000.05", 100)]
    assert [(lv.price, lv.quantity) for lv in book.asks] == [("15000.00", 150), ("15000.15", 100)]
    # D = 200, 200, 100, 0; S = 150, 150, 150, 250 at 100 .. 103: 100 and 101 tie, the
    # lower opens
    assert book.indicative == Indicative("15000.00", 150, 50, "BUY")
    assert v.book.auction() == (MID, 150, 50, Side.BUY)

    market = v.order(carol, Side.BUY, 300, tif=Tif.IOC)  # waits for the uncross
    book = project()
    # D = 500, 500, 400, 300; S = 150, 150, 150, 250: V = 150, 150, 150, 250
    assert book.indicative == Indicative("15000.15", 250, 50, "BUY")
    assert statuses(conn, "carol") == [(market, "OPEN")]

    v.uncross()
    book = project()
    assert (book.phase, book.indicative, book.last_price) == ("OPEN", None, "15000.15")
    assert [(lv.price, lv.quantity) for lv in book.bids] == [
        ("15000.15", 50),
        ("15000.10", 100),
        ("15000.05", 100),
    ]
    assert book.asks == []
    assert statuses(conn, "bob") == [
        (sell_100, "OPEN"),
        (sell_103, "OPEN"),
        (sell_100, "FILLED"),
        (sell_103, "FILLED"),
    ]
    # the market buy: both fills at the opening price, the rest a limit there
    assert order_row(conn, market)[1:7] == (
        "PARTIALLY_FILLED",
        paise(MID + 3),
        300,
        250,
        250 * paise(MID + 3),
        paise(MID + 3),
    )
    assert statuses(conn, "carol")[1:] == [(market, "PARTIALLY_FILLED")]  # one command
    assert [order_row(conn, o)[1] for o in (buy_102, buy_101)] == ["OPEN", "OPEN"]


def test_an_uncross_and_the_stops_it_triggers_are_one_command(conn, projector):
    """The opening trade triggers a sell stop, which enters after the uncross's OPENED
    and fills more of the buy the auction filled in part: the buy has one update for
    the whole command, with both fills."""
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    project = Projected(conn, v, projector)
    v.close()
    v.pre_open()
    buy = v.order(alice, Side.BUY, 10, MID)
    v.order(bob, Side.SELL, 5, MID)
    stop = v.order(carol, Side.SELL, 3, trigger=MID + 5)  # reached by the opening price
    project()
    v.uncross()
    book = project()
    assert [u for u in statuses(conn, "alice") if u[0] == buy] == [
        (buy, "OPEN"),
        (buy, "PARTIALLY_FILLED"),
    ]
    assert order_row(conn, buy)[4] == 8
    assert statuses(conn, "carol") == [(stop, "TRIGGER_PENDING"), (stop, "FILLED")]
    assert [(lv.price, lv.quantity) for lv in book.bids] == [("15000.00", 2)]


def test_a_halted_symbol_shows_halted_then_reopens_through_an_auction(conn, projector):
    """HALT: halted in market data, new orders refused (REJECTED HALTED); PRE_OPEN: a
    market order waits; an uncross without an opening price cancels it (NO_LIQUIDITY)."""
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob = ids["alice"], ids["bob"]
    project = Projected(conn, v, projector)
    v.order(alice, Side.BUY, 5, MID - 10, tif=Tif.GTC)
    v.halt()
    refused = v.order(bob, Side.SELL, 5, MID)
    book = project()
    assert (book.phase, book.halted) == ("HALTED", True)
    assert order_row(conn, refused)[1] == "REJECTED" and order_row(conn, refused)[7] == "HALTED"

    v.pre_open()
    market = v.order(alice, Side.BUY, 5, tif=Tif.IOC)
    book = project()
    assert (book.phase, book.halted, book.indicative) == ("PRE_OPEN", False, None)
    v.uncross()
    book = project()
    assert (book.phase, book.halted) == ("OPEN", False)
    assert statuses(conn, "alice")[-1] == (market, "CANCELLED")
    assert order_row(conn, market)[7] == "NO_LIQUIDITY"


# --- icebergs -------------------------------------------------------------------------------


def test_an_iceberg_shows_only_its_disclosed_part_and_refreshes_at_the_back(conn, projector):
    v, ids = TradingVenue(conn), accounts(conn)
    alice, bob, carol = ids["alice"], ids["bob"], ids["carol"]
    project = Projected(conn, v, projector)
    iceberg = v.order(bob, Side.SELL, 100, MID, disclosed=20, tif=Tif.GTC)
    v.order(carol, Side.SELL, 10, MID, tif=Tif.GTC)
    assert project().asks[0].quantity == 30  # 20 of the iceberg shown
    v.order(alice, Side.BUY, 5, MID)
    assert project().asks[0].quantity == 25
    v.order(alice, Side.BUY, 15, MID)  # the peak is gone: 20 more, behind carol's 10
    assert project().asks[0].quantity == 30
    v.order(alice, Side.BUY, 15, MID)  # carol's 10, then 5 of the iceberg
    assert project().asks[0].quantity == 15
    v.order(bob, Side.BUY, 7, MID, stp=Stp.DECREMENT)  # its own iceberg: 7 off the peak
    assert project().asks[0].quantity == 8
    v.send(AmendOrder(iceberg, bob, INST.symbol, MID, 40, ts=v.ts))  # in place: 8 shown
    assert project().asks[0].quantity == 8
    v.send(AmendOrder(iceberg, bob, INST.symbol, MID + 1, 40, ts=v.ts))  # a new peak
    assert [(lv.price, lv.quantity) for lv in project().asks] == [("15000.05", 20)]
    row = conn.execute(
        "SELECT open_quantity, shown_quantity, disclosed_quantity FROM read_model.book_orders "
        "WHERE order_id = %s",
        (iceberg,),
    ).fetchone()
    assert row == (40, 20, 20)
    assert conn.execute(
        "SELECT disclosed_qty FROM read_model.orders WHERE order_id = %s", (iceberg,)
    ).fetchone() == (20,)
    assert {u.disclosed_quantity for _, u in updates(conn, "bob") if u.order_id == iceberg} == {20}


def test_the_market_data_follows_the_engine_through_random_commands(conn, projector):
    """Random limits (a third icebergs), market orders, stops, self-trade decrements,
    amends, cancels, and now and then a halt or a close, a pre-open and its uncross,
    projected a few commands at a time: the read model's depth, phase and indicative
    opening are the engine's after every batch."""
    v, ids = TradingVenue(conn), accounts(conn)
    traders = list(ids.values())
    project = Projected(conn, v, projector)
    rng = random.Random(14)
    live: list[tuple[int, int]] = []
    for step in range(150):
        account = rng.choice(traders)
        roll = rng.random()
        if roll < 0.04:
            if v.book.phase == Phase.PRE_OPEN:
                v.uncross()
            else:
                (v.halt if rng.random() < 0.5 else v.close)()
                v.pre_open()
        elif roll < 0.15 and live:
            order_id, owner = live.pop(rng.randrange(len(live)))
            v.cancel(order_id, owner)
        elif roll < 0.25 and live:
            order_id, owner = rng.choice(live)
            price, qty = MID + rng.randint(-5, 5), rng.randint(1, 40)
            v.send(AmendOrder(order_id, owner, INST.symbol, price, qty, ts=v.ts))
        elif roll < 0.35:
            v.order(account, rng.choice(list(Side)), rng.randint(1, 30), tif=Tif.IOC)
        elif roll < 0.42:
            side = rng.choice(list(Side))
            last = v.book.last_price or MID
            trigger = last + rng.randint(1, 4) * (1 if side == Side.BUY else -1)
            limit = rng.choice([None, trigger + (2 if side == Side.BUY else -2)])
            v.order(account, side, rng.randint(5, 30), limit, trigger=trigger, tif=Tif.GTC)
        else:
            qty = rng.randint(10, 60)
            disclosed = rng.choice([0, 0, max(qty // 5, 6)])
            order_id = v.order(
                account,
                rng.choice(list(Side)),
                qty,
                MID + rng.randint(-5, 5),
                disclosed=min(disclosed, qty),
                tif=Tif.GTC,
                stp=rng.choice([Stp.DECREMENT, Stp.CANCEL_OLDEST, Stp.NONE]),
            )
            live.append((order_id, account))
        if step % 5 == 4:
            project()  # asserts the depth
    project()
    booked = [o for o in v.book.orders() if o["op"] in (Op.LIMIT, Op.MARKET)]
    assert conn.execute("SELECT count(*) FROM read_model.book_orders").fetchone()[0] == len(booked)
    # every order's status and open quantity: as the engine has it
    engine = {int(o["order_id"]): o for o in v.book.orders()}
    for order_id, status, open_quantity in conn.execute(
        "SELECT order_id, status, quantity - filled_quantity FROM read_model.orders"
    ):
        o = engine.get(order_id)
        if o is None:
            assert status in ("FILLED", "CANCELLED", "REJECTED", "EXPIRED")
        else:
            waiting = o["op"] in (Op.STOP, Op.STOP_LIMIT)
            assert (status == "TRIGGER_PENDING") == waiting
            assert status in ("TRIGGER_PENDING", "OPEN", "PARTIALLY_FILLED")
            assert open_quantity == o["qty"]
