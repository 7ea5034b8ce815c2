"""Settlement of the trading day's events (docs/engine.md, "The trading day") on the real
Postgres: an opening auction's fills, a market order the auction made a limit order,
stops that trigger, expire or are cancelled, a halt. The events come from a real
``OrderBook`` through the codec (tests/venue_support.py's ``Venue``); at the end of each
day the reconciler finds nothing wrong, neither against its invariants nor against the
events, and cash and shares are conserved to the paisa."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from brokercore.broker.orders import OPEN_STATUSES
from brokercore.broker.risk import buy_hold
from brokercore.consumers.reconcile import check_invariants, find_discrepancies
from brokercore.engine.records import EventType, Op, Phase, Reason, Side, Tif
from brokercore.kafka.messages import Halt, NewOrder, PreOpen, Reband, Uncross
from venue_support import CASH, FEES, INST, MID, NOW, SESSION, SHARES, Venue, settle

PAISE = INST.ticks_to_paise


class DayVenue(Venue):
    """``Venue`` with the trading day's commands, and orders of every kind held at the
    worst price they can execute at (the OMS's rule): a buy at its limit, a buy that
    may trade as a market order (MARKET, STOP) at the band's top; a sell its shares."""

    def order(
        self,
        account_id: int,
        side: Side,
        qty: int,
        price: int = 0,
        *,
        trigger: int = 0,
        tif: Tif | None = None,
    ) -> int | None:
        """A new order (price 0: market; trigger: a stop), stored and sent as the OMS
        does; tif by default IOC for a market order, else DAY. None (nothing stored nor
        sent) for a sell of more shares than are free, as the OMS refuses it."""
        market, stop = price == 0, trigger != 0
        if tif is None:
            tif = Tif.IOC if market and not stop else Tif.DAY
        kind = NewOrder(0, 0, "", side, qty, market=market, stop=stop).op
        hold_price = (INST.high if market else price) if side == Side.BUY else price
        cash = buy_hold(INST, hold_price, qty, FEES) if side == Side.BUY else 0
        shares = qty if side == Side.SELL else 0
        free = balances(self.conn, account_id)
        if shares > free[2] - free[3]:
            return None
        order_id = self.conn.execute("SELECT nextval('order_id_seq')").fetchone()[0]
        self.conn.execute(
            "UPDATE accounts SET blocked_cash = blocked_cash + %s WHERE account_id = %s",
            (cash, account_id),
        )
        self.conn.execute(
            "UPDATE positions SET blocked_quantity = blocked_quantity + %s "
            "WHERE account_id = %s AND symbol = %s",
            (shares, account_id, INST.symbol),
        )
        self.conn.execute(
            "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
            "time_in_force, price, trigger_price, quantity, status, hold_amount, "
            "hold_price_ticks, blocked_cash, blocked_shares) VALUES (%s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, 'PENDING', %s, %s, %s, %s)",
            (
                order_id,
                NOW.date(),
                account_id,
                INST.symbol,
                side.name,
                kind.name,
                tif.name,
                None if market else PAISE(price),
                PAISE(trigger) if stop else None,
                qty,
                cash or shares,
                hold_price,
                cash,
                shares,
            ),
        )
        self.send(
            NewOrder(
                order_id,
                account_id,
                INST.symbol,
                side,
                qty,
                price,
                market,
                tif,
                ts=self.ts,
                stop=stop,
                trigger=trigger,
            )
        )
        return order_id

    def next_phase(self) -> None:
        """The next day's call auction: OPEN closes and pre-opens, CLOSED or HALTED
        pre-opens, PRE_OPEN uncrosses (and opens)."""
        phase = self.book.phase
        if phase == Phase.PRE_OPEN:
            self.send(Uncross(INST.symbol, 0, self.ts))
            return
        if phase == Phase.OPEN:
            self.close()
        self.send(PreOpen(INST.symbol, self.ts))

    def events(self, start: int = 0):
        return [e for b in self.batches[start:] for e in b.events]


def order_row(conn, order_id: int):
    return conn.execute(
        "SELECT status, filled_quantity, blocked_cash, blocked_shares, hold_price_ticks, "
        "reject_reason FROM orders WHERE order_id = %s",
        (order_id,),
    ).fetchone()


def balances(conn, account_id: int) -> tuple[int, int, int, int]:
    """cash, blocked cash, shares, blocked shares."""
    return conn.execute(
        "SELECT cash, blocked_cash, coalesce(quantity, 0), coalesce(blocked_quantity, 0) "
        "FROM accounts LEFT JOIN positions USING (account_id) WHERE account_id = %s",
        (account_id,),
    ).fetchone()


def assert_clean(conn, v: DayVenue, accounts: int) -> None:
    """What the reconciler checks finds nothing; money and shares are conserved."""
    assert check_invariants(conn, {INST.symbol: SESSION}, NOW) == []
    assert find_discrepancies(conn, v.events()) == []
    cash, shares, fees = conn.execute(
        "SELECT (SELECT sum(cash) FROM accounts), (SELECT sum(quantity) FROM positions), "
        "(SELECT coalesce(sum(amount), 0) FROM fee_income)"
    ).fetchone()
    assert cash + fees == accounts * CASH and shares == accounts * SHARES
    open_holds = conn.execute(
        "SELECT count(*) FROM orders WHERE status <> ALL(%s) AND blocked_cash + blocked_shares > 0",
        (list(OPEN_STATUSES),),
    ).fetchone()[0]
    assert open_holds == 0


def fee(notional: int) -> int:
    return FEES.fee(notional)


def test_an_opening_auction_settles_both_sides_at_the_opening_price(conn):
    v = DayVenue(conn)
    alice, bob = v.account("alice"), v.account("bob")
    v.close()
    v.send(PreOpen(INST.symbol, v.ts))
    market = v.order(alice, Side.BUY, 10)  # held at the band's top
    limit = v.order(alice, Side.BUY, 5, MID + 100)  # held at MID + 100
    low = v.order(bob, Side.SELL, 8, MID - 100)
    rest = v.order(bob, Side.SELL, 10, MID)
    settle(conn, v.messages())
    assert order_row(conn, market)[:2] == ("OPEN", 0)  # crossed, but nothing matches yet
    assert balances(conn, alice)[1] == buy_hold(INST, INST.high, 10, FEES) + buy_hold(
        INST, MID + 100, 5, FEES
    )

    done = len(v.batches)
    v.send(Uncross(INST.symbol, 0, v.ts))
    # by hand: V = 8, 15, 15 at MID - 100, MID, MID + 100; imbalance 7, 3, 3; the lowest
    # of the tie opens: MID. Buys in priority (the market buy first) meet the sells.
    trades = [
        (e.order_id, e.other_id, e.price, e.qty)
        for e in v.events(done)
        if e.type == EventType.TRADE
    ]
    assert trades == [(market, low, MID, 8), (market, rest, MID, 2), (limit, rest, MID, 5)]
    uncrossed = [e for e in v.events(done) if e.type == EventType.UNCROSSED]
    assert [(e.price, e.qty, e.remaining) for e in uncrossed] == [(MID, 15, 3)]
    stats = settle(conn, v.messages(done))
    assert stats.fills == 6

    p = PAISE(MID)
    n1, n2 = 10 * p, 5 * p  # every fill at the opening price, improvement released
    assert order_row(conn, market) == ("FILLED", 10, 0, 0, INST.high, None)
    assert order_row(conn, limit) == ("FILLED", 5, 0, 0, MID + 100, None)
    assert order_row(conn, low)[:4] == ("FILLED", 8, 0, 0)
    assert order_row(conn, rest)[:4] == ("PARTIALLY_FILLED", 7, 0, 3)
    assert balances(conn, alice) == (CASH - n1 - fee(n1) - n2 - fee(n2), 0, SHARES + 15, 0)
    sold = 8 * p - fee(8 * p) + 7 * p - fee(7 * p)
    assert balances(conn, bob) == (CASH + sold, 0, SHARES - 15, 3)
    assert conn.execute("SELECT DISTINCT price FROM fills").fetchall() == [(p,)]
    assert settle(conn, v.messages()).messages == 0  # re-delivered: nothing changes
    assert_clean(conn, v, 2)
    # The same events committed twice to the topic: reported as such, counted once.
    repeated = [str(f) for f in find_discrepancies(conn, v.events() + v.events()[-3:])]
    assert len(repeated) == 3 and all(f.startswith("EVENT_REPEATED") for f in repeated), repeated


def test_a_market_order_left_by_the_auction_is_held_at_the_opening_price(conn):
    v = DayVenue(conn)
    carol, dave, erin = v.account("carol"), v.account("dave"), v.account("erin")
    v.close()
    v.send(PreOpen(INST.symbol, v.ts))
    buy = v.order(carol, Side.BUY, 20)  # held at the band's top
    v.order(dave, Side.SELL, 5, MID)
    v.send(Uncross(INST.symbol, 0, v.ts))
    amended = [e for e in v.events() if e.type == EventType.AMENDED]
    assert [(e.order_id, e.op, e.price, e.qty) for e in amended] == [(buy, Op.UNCROSS, MID, 15)]
    settle(conn, v.messages())

    p, n = PAISE(MID), 5 * PAISE(MID)
    keep = 15 * p + fee(20 * p) - fee(n)  # what 15 more at MID can cost, and no more
    assert order_row(conn, buy) == ("PARTIALLY_FILLED", 5, keep, 0, MID, None)
    assert balances(conn, carol)[:2] == (CASH - n - fee(n), keep)
    history = conn.execute(
        "SELECT payload->>'event', payload->>'price', payload->>'open_quantity' "
        "FROM order_events WHERE order_id = %s ORDER BY event_id DESC LIMIT 1",
        (buy,),
    ).fetchone()
    assert history == ("AMENDED", str(p), "15")

    done = len(v.batches)
    v.order(erin, Side.SELL, 15, MID)  # the converted order rests at MID: it is the maker
    settle(conn, v.messages(done))
    n = 20 * p
    assert order_row(conn, buy)[:4] == ("FILLED", 20, 0, 0)
    assert balances(conn, carol) == (CASH - n - fee(n), 0, SHARES + 20, 0)
    assert_clean(conn, v, 3)


def test_an_auction_without_a_price_cancels_the_market_orders_and_frees_their_holds(conn):
    v = DayVenue(conn)
    alice, bob = v.account("alice"), v.account("bob")
    v.close()
    v.send(PreOpen(INST.symbol, v.ts))
    buy = v.order(alice, Side.BUY, 4)
    bid = v.order(bob, Side.BUY, 3, MID - 10)  # no seller at all: no opening price
    v.send(Uncross(INST.symbol, MID, v.ts))
    settle(conn, v.messages())
    assert order_row(conn, buy) == ("CANCELLED", 0, 0, 0, INST.high, "NO_LIQUIDITY")
    assert order_row(conn, bid)[:3] == ("OPEN", 0, buy_hold(INST, MID - 10, 3, FEES))
    assert balances(conn, alice) == (CASH, 0, SHARES, 0)
    assert_clean(conn, v, 2)

    done = len(v.batches)
    v.close()
    v.send(PreOpen(INST.symbol, v.ts))
    waiting = v.order(alice, Side.SELL, 6)  # a market sell waiting for an uncross...
    v.close()  # ...that never comes: it expires, its shares are free again
    settle(conn, v.messages(done))
    assert order_row(conn, waiting)[:4] == ("EXPIRED", 0, 0, 0)
    assert order_row(conn, bid)[:3] == ("EXPIRED", 0, 0)
    assert balances(conn, alice) == (CASH, 0, SHARES, 0)
    assert balances(conn, bob) == (CASH, 0, SHARES, 0)
    assert_clean(conn, v, 2)


def test_a_stop_waits_then_triggers_and_fills_and_another_expires_at_the_close(conn):
    v = DayVenue(conn)
    alice, bob, carol = v.account("alice"), v.account("bob"), v.account("carol")
    v.order(bob, Side.SELL, 10, MID, tif=Tif.GTC)
    v.order(bob, Side.SELL, 10, MID + 10, tif=Tif.GTC)
    v.order(carol, Side.BUY, 2, MID)  # the last price: MID
    stop = v.order(alice, Side.BUY, 5, trigger=MID + 10)  # stop-market: held at the top
    stop_limit = v.order(alice, Side.BUY, 3, MID + 50, trigger=MID + 40)  # at its limit
    sell_stop = v.order(bob, Side.SELL, 4, MID - 60, trigger=MID - 50, tif=Tif.GTC)
    settle(conn, v.messages())
    top = buy_hold(INST, INST.high, 5, FEES)
    assert order_row(conn, stop) == ("TRIGGER_PENDING", 0, top, 0, INST.high, None)
    held = top + buy_hold(INST, MID + 50, 3, FEES)
    assert balances(conn, alice) == (CASH, held, SHARES, 0)
    assert balances(conn, bob)[3] == 18 + 4
    assert_clean(conn, v, 3)

    done = len(v.batches)
    v.order(carol, Side.BUY, 10, MID + 10)  # 8 at MID, 2 at MID + 10: the stop triggers
    kinds = [
        (e.type, e.order_id)
        for e in v.events(done)
        if e.type in (EventType.TRADE, EventType.TRIGGERED)
    ]
    assert kinds[2:] == [(EventType.TRIGGERED, stop), (EventType.TRADE, stop)]
    settle(conn, v.messages(done))
    p = PAISE(MID + 10)
    assert order_row(conn, stop)[:4] == ("FILLED", 5, 0, 0)
    statuses = conn.execute(
        "SELECT status, payload->>'event' FROM order_events WHERE order_id = %s ORDER BY event_id",
        (stop,),
    ).fetchall()
    assert statuses == [
        ("TRIGGER_PENDING", "ACCEPTED"),
        ("OPEN", "TRIGGERED"),
        ("FILLED", "TRADE"),
    ]
    assert balances(conn, alice) == (
        CASH - 5 * p - fee(5 * p),
        buy_hold(INST, MID + 50, 3, FEES),
        SHARES + 5,
        0,
    )
    assert_clean(conn, v, 3)

    done = len(v.batches)
    v.close()  # the DAY stop-limit expires, the GTC sell stop waits on
    settle(conn, v.messages(done))
    assert order_row(conn, stop_limit)[:3] == ("EXPIRED", 0, 0)
    assert order_row(conn, sell_stop)[:4] == ("TRIGGER_PENDING", 0, 0, 4)
    assert balances(conn, alice)[1] == 0
    assert balances(conn, bob)[3] == 3 + 4  # the GTC sell's rest and the waiting stop
    assert_clean(conn, v, 3)


def test_a_triggered_stop_market_without_liquidity_and_a_reband_free_their_holds(conn):
    v = DayVenue(conn)
    alice, bob, carol = v.account("alice"), v.account("bob"), v.account("carol")
    v.order(bob, Side.SELL, 2, MID)
    stop = v.order(alice, Side.BUY, 5, trigger=MID)
    far = v.order(alice, Side.BUY, 5, MID + 900, trigger=MID + 800, tif=Tif.GTC)
    v.order(carol, Side.BUY, 2, MID)  # takes the only ask: the stop finds none
    v.send(Reband(INST.symbol, INST.low, MID + 500, v.ts))  # the far stop's trigger is out
    settle(conn, v.messages())
    reasons = Counter((e.type, e.reason) for e in v.events())
    assert reasons[(EventType.CANCELLED, Reason.NO_LIQUIDITY)] == 1
    assert order_row(conn, stop)[:3] == ("CANCELLED", 0, 0)
    assert order_row(conn, stop)[5] == "NO_LIQUIDITY"
    assert order_row(conn, far)[::5] == ("CANCELLED", "PRICE_OUT_OF_BAND")
    assert balances(conn, alice) == (CASH, 0, SHARES, 0)
    assert_clean(conn, v, 3)


def test_a_halt_moves_no_money_and_an_order_refused_during_it_is_released(conn):
    v = DayVenue(conn)
    alice, bob = v.account("alice"), v.account("bob")
    resting = v.order(bob, Side.SELL, 5, MID, tif=Tif.GTC)
    v.send(Halt(INST.symbol, v.ts))
    refused = v.order(alice, Side.BUY, 5, MID)
    v.send(PreOpen(INST.symbol, v.ts))  # re-opened through an auction
    buy = v.order(alice, Side.BUY, 5, MID + 10)
    v.send(Uncross(INST.symbol, 0, v.ts))
    types = [e.type for e in v.events()]
    assert EventType.HALTED in types and EventType.PRE_OPENED in types
    settle(conn, v.messages())
    assert order_row(conn, refused)[::5] == ("REJECTED", "HALTED")
    assert order_row(conn, resting)[:2] == ("FILLED", 5)
    assert order_row(conn, buy)[:3] == ("FILLED", 5, 0)  # at the seller's MID, by the auction
    p = PAISE(MID)
    assert balances(conn, alice) == (CASH - 5 * p - fee(5 * p), 0, SHARES + 5, 0)
    assert_clean(conn, v, 2)


def test_the_reconciler_still_catches_a_waiting_stop_gone_wrong(conn):
    """A waiting stop holds cash and is in no book: no finding. Its hold tampered with,
    its status behind its events, or a DAY stop still waiting after the close: findings."""
    v = DayVenue(conn)
    alice, bob, carol = v.account("alice"), v.account("bob"), v.account("carol")
    v.order(bob, Side.SELL, 10, MID, tif=Tif.GTC)
    v.order(carol, Side.BUY, 1, MID)  # the last price
    stop = v.order(alice, Side.BUY, 5, trigger=MID + 20)
    settle(conn, v.messages())
    assert order_row(conn, stop)[0] == "TRIGGER_PENDING"
    assert_clean(conn, v, 3)

    after_close = NOW.replace(hour=16)
    late = [str(f) for f in check_invariants(conn, {INST.symbol: SESSION}, after_close)]
    assert late == [
        f"DAY_ORDER_PAST_CLOSE account {alice} order {stop} TRIGGER_PENDING DAY order on "
        "RELIANCE of trade date 2026-03-02, its session closed 2026-03-02 10:00:00 UTC"
    ]
    held = order_row(conn, stop)[2]
    conn.execute("UPDATE orders SET blocked_cash = blocked_cash - 5 WHERE order_id = %s", (stop,))
    kinds = [f.kind for f in check_invariants(conn, {INST.symbol: SESSION}, NOW)]
    assert kinds == ["BLOCKED_CASH_MISMATCH"]
    conn.execute("UPDATE orders SET blocked_cash = %s WHERE order_id = %s", (held, stop))

    v.order(carol, Side.BUY, 9, MID)  # the rest at MID: the stop is not reached
    v.order(bob, Side.SELL, 6, MID + 20, tif=Tif.GTC)
    v.order(carol, Side.BUY, 1, MID + 20)  # a trade at MID + 20: the stop buys the other 5
    assert any(e.type == EventType.TRIGGERED for e in v.events())
    found = [str(f) for f in find_discrepancies(conn, v.events())]  # not settled yet
    assert f"STATUS order {stop} Postgres says TRIGGER_PENDING, the events say FILLED" in found


# --- random trading days ------------------------------------------------------------------

_who = st.integers(0, 2)
_qty = st.integers(1, 15)
_limits = st.tuples(
    st.just("limit"),
    _who,
    st.sampled_from(Side),
    _qty,
    st.integers(-10, 10),
    st.sampled_from([Tif.DAY, Tif.GTC]),
)
_stops = st.tuples(  # trigger: the last price +- distance; a stop-limit's limit beyond it
    st.just("stop"),
    _who,
    st.sampled_from(Side),
    _qty,
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(0, 10)),
    st.sampled_from([Tif.DAY, Tif.GTC]),
)
_actions = {
    "limit": _limits,
    "stop": _stops,
    "market": st.tuples(st.just("market"), _who, st.sampled_from(Side), _qty),
    "cancel": st.tuples(st.just("cancel"), st.integers(0, 30)),
    "session": st.tuples(st.just("session")),  # OPEN -> close, PRE_OPEN; PRE_OPEN -> uncross
    "halt": st.tuples(st.just("halt")),
    "settle": st.tuples(st.just("settle"), st.integers(0, 2)),
}
day_actions = st.lists(  # mostly orders, so that they trade and trigger
    st.sampled_from(
        ["limit"] * 5 + ["stop"] * 3 + ["market"] * 2 + ["cancel", "session", "halt", "settle"]
    ).flatmap(_actions.__getitem__),
    min_size=15,
    max_size=40,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=day_actions, data=st.data())
def test_money_and_shares_are_conserved_over_random_trading_days(conn, actions, data):
    """Orders of every kind, auctions, halts and closes in any order, settled in random
    slices with re-deliveries: never a contradiction, holds always what the open orders
    hold, and in the end cash and shares conserved and every hold released."""
    with conn.transaction(force_rollback=True):  # a fresh start per example
        v = DayVenue(conn)
        accounts = [v.account(f"u{uuid.uuid4().hex}") for _ in range(3)]
        placed = [
            (v.order(accounts[0], Side.SELL, 20, MID + 1, tif=Tif.GTC), accounts[0]),
            (v.order(accounts[1], Side.BUY, 20, MID - 1, tif=Tif.GTC), accounts[1]),
            (v.order(accounts[2], Side.BUY, 1, MID + 1), accounts[2]),  # a last price
        ]
        settled = 0

        def settle_some(redeliver: int) -> None:
            nonlocal settled
            messages = v.messages()
            end = data.draw(st.integers(settled, len(messages)))
            settle(conn, messages[max(0, settled - redeliver) : end])
            settled = end
            assert check_invariants(conn, {INST.symbol: SESSION}, NOW) == []

        for action in actions:
            kind, *args = action
            order = None
            if kind == "limit":
                who, side, qty, offset, tif = args
                order = v.order(accounts[who], side, qty, MID + offset, tif=tif)
            elif kind == "market":
                who, side, qty = args
                order = v.order(accounts[who], side, qty)
            elif kind == "stop":
                who, side, qty, distance, limit, tif = args
                sign = 1 if side == Side.BUY else -1
                trigger = (v.book.last_price or MID) + sign * distance
                price = 0 if limit is None else trigger + sign * limit
                order = v.order(accounts[who], side, qty, price, trigger=trigger, tif=tif)
            elif kind == "cancel":
                v.cancel(*placed[args[0] % len(placed)])
            elif kind == "session":
                v.next_phase()
            elif kind == "halt":
                v.send(Halt(INST.symbol, v.ts))
            else:
                settle_some(args[0])
            if order is not None:
                placed.append((order, accounts[who]))
        if v.book.phase == Phase.PRE_OPEN:
            v.send(Uncross(INST.symbol, 0, v.ts))
        v.close()
        for order_id, account_id in placed:  # what GTC left: cancel it
            v.cancel(order_id, account_id)
        settle_some(2)
        settle(conn, v.messages(settled))
        assert_clean(conn, v, 3)
        live = conn.execute(
            "SELECT count(*) FROM orders WHERE status = ANY(%s)", (list(OPEN_STATUSES),)
        )
        assert live.fetchone()[0] == 0
        kinds = Counter((e.type, e.op) for e in v.events())
        event(f"auction trades: {kinds[(EventType.TRADE, Op.UNCROSS)] > 0}")
        event(f"stops triggered: {any(t == EventType.TRIGGERED for t, _ in kinds)}")
