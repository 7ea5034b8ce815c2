"""Differential state machine: the engine and the reference model, same commands.

Hypothesis drives an engine book and a model book with the same random commands (all
order types, stops, stop-limits, icebergs, cancels, amends, sessions with pre-open call
auctions and halts, re-bands, bad input, small batches) and, after every command,
requires identical events and identical books (orders, depth, phase, last price, the
auction's quote). It also snapshots and restores the engine mid-way (mid-auction and
with waiting stops too; the model carries on untouched), and checks invariants of the
engine's book that hold whatever the model says: never crossed in continuous trading,
FIFO by arrival within a level, quantity conserved per order, seq gap-free.

Accounts and ids are few and prices bunch on a few levels, so crosses, self-trades
and id collisions are frequent; stop triggers are drawn next to the last trade price,
so stops trigger, and cascade, often. Two machines: a narrow band, and a wider one whose
prices sit at power-of-two offsets (levels far apart in the engine's ladder).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from brokercore.engine.records import (
    INT64_MAX,
    MAX_BAND_LEVELS,
    EventType,
    Op,
    Phase,
    Reason,
    Side,
    Stp,
    Tif,
)
from strategies import BOOK_STPS
from support import commands, day_state, engine_class, event_tuples, model_class, order_tuples

accounts = st.integers(1, 3)
sides = st.sampled_from([Side.BUY, Side.SELL])
tifs = st.sampled_from(list(Tif))
stps = st.sampled_from(list(Stp))
# Raw values for the bad-input rules: every valid value plus invalid ones.
raw_sides = st.sampled_from([*Side, 0, 3])
raw_tifs = st.sampled_from([*Tif, 0, 5])
raw_stps = st.sampled_from([*Stp, 6, 255])
invalid_bands = st.sampled_from([(0, 10), (120, 119), (1, MAX_BAND_LEVELS + 1)])


class Ledger:
    """Follows every order through the events, independently of either book.

    It checks, event by event, that quantities add up (accepted = traded + cancelled +
    expired + open, amends resetting the open quantity), that continuous trades happen
    at the maker's price, and it numbers arrivals so FIFO order can be checked (a
    triggered stop arrives when it enters; a market order converted by an uncross goes
    ahead of its level; an iceberg's refresh has no event, so icebergs are left out).
    """

    def __init__(self):
        self.open: dict[int, int] = {}  # order id -> open qty, for live or in-flight orders
        self.price: dict[int, int] = {}
        self.arrival: dict[int, int] = {}  # order id -> when it (last) joined a level tail
        self.clock = 0
        self.seq = 0
        self.front = 0  # arrivals ahead of every other: each uncross's converted orders
        self.converted: list[int] = []  # market orders the uncross being read converted

    def _arrive(self, order_id):
        self.clock += 1
        self.arrival[order_id] = self.clock

    def _take(self, order_id, qty, left):
        """Take qty off an order's open quantity; a finished order leaves the ledger."""
        assert qty > 0
        self.open[order_id] -= qty
        assert self.open[order_id] == left
        if left == 0:
            del self.open[order_id]

    def record(self, events) -> None:
        for e in events:
            self.seq += 1
            assert e["seq"] == self.seq, "seq must be gap-free"
            self._record(e)

    def _record(self, e) -> None:
        kind, oid, qty = e["type"], int(e["order_id"]), int(e["qty"])
        if kind == EventType.ACCEPTED:
            assert oid not in self.open, "an id must not be live twice"
            self.open[oid], self.price[oid] = qty, int(e["price"])
            self._arrive(oid)
        elif kind == EventType.UNCROSSED:  # the converted orders went ahead of their level
            self.front -= len(self.converted)
            for i, converted in enumerate(self.converted):
                self.arrival[converted] = self.front + i
            self.converted = []
        elif kind == EventType.TRIGGERED:
            assert qty == e["remaining"] == self.open[oid], "a stop enters whole"
            self._arrive(oid)
        elif kind == EventType.TRADE:
            maker = int(e["other_id"])
            if e["op"] != Op.UNCROSS:
                assert e["price"] == self.price[maker], "trades execute at the maker's price"
            self._take(oid, qty, e["remaining"])
            self._take(maker, qty, e["other_remaining"])
        elif kind in (EventType.CANCELLED, EventType.EXPIRED):
            self._take(oid, qty, 0)  # the whole open quantity goes
        elif kind == EventType.AMENDED:
            assert qty == e["remaining"] > 0
            old_qty, old_price = self.open[oid], self.price[oid]
            if e["reason"] == Reason.SELF_TRADE:
                assert qty < old_qty, "a decrement shrinks the order"
            elif e["op"] == Op.UNCROSS:
                assert old_price == 0, "an uncross converts market orders only"
                self.converted.append(oid)
            elif e["price"] != old_price or qty > old_qty:
                self._arrive(oid)  # lost its priority
            self.open[oid], self.price[oid] = qty, int(e["price"])

    def check_book(self, orders) -> None:
        live = dict(zip(orders["order_id"].tolist(), orders["qty"].tolist(), strict=True))
        assert live == self.open, "open quantities must add up"
        levels: dict[tuple, list[int]] = {}
        for o in orders[(orders["op"] == Op.LIMIT) & (orders["disclosed"] == 0)]:
            levels.setdefault((int(o["side"]), int(o["price"])), []).append(int(o["order_id"]))
        for ids in levels.values():
            arrivals = [self.arrival[i] for i in ids]
            assert arrivals == sorted(arrivals), "FIFO within a level"


class EngineMatchesModel(RuleBasedStateMachine):
    """Drive both books identically; compare after every command.

    A narrow band (41 ticks) so that a few orders already cross and share levels.
    """

    LOW, HIGH = 100, 140
    PRICES = st.integers(LOW - 3, HIGH + 3)
    BANDS = st.tuples(st.integers(90, 110), st.integers(130, 150))  # re-bands move the edges

    def __init__(self):
        super().__init__()
        self.engine = self.model = None
        self.ledger = Ledger()
        self.seen_ids: list[int] = [1]
        self.next_id = 0
        self.may_be_crossed = False  # since a pre-open that no uncross ended

    @initialize(
        data=st.data(),
        lot=st.sampled_from([1, 1, 5]),
        stp=st.sampled_from(BOOK_STPS),
        symbol=st.integers(0, 2**32 - 1),
        percent=st.sampled_from([10, 10, 1, 25]),
    )
    def make_books(self, data, lot, stp, symbol, percent):
        """Both books, with the same few orders already placed (so most runs trade)."""
        params = dict(
            low=self.LOW,
            high=self.HIGH,
            lot_size=lot,
            symbol=symbol,
            stp=stp,
            min_disclosed_percent=percent,
        )
        self.engine, self.model = engine_class()(**params), model_class()(**params)
        seed = data.draw(
            st.lists(
                st.tuples(
                    sides,
                    self.PRICES,
                    st.integers(1, 10),
                    accounts,
                    st.sampled_from([Tif.GTC, Tif.DAY]),
                ),
                max_size=10,
            ),
            label="seed orders",
        )
        for side, price, lots, account, tif in seed:
            self.call("limit", self.fresh_id(), side, price, lots * lot, account=account, tif=tif)

    # ----------------------------------------------------------------- drawing

    def fresh_id(self):
        self.next_id += 1
        self.seen_ids.append(self.next_id)
        return self.next_id

    def live_or_any_id(self, data):
        """Mostly a live order's id; sometimes a finished, unknown or invalid one."""
        live = self.model.orders()["order_id"].tolist()
        return data.draw(st.sampled_from(live * 3 + self.seen_ids[-3:] + [0]), label="target")

    def owner_or_other(self, data, order_id):
        found = self.model.order(order_id)
        own = st.just(found.account) if found else accounts
        return data.draw(st.one_of(own, own, accounts), label="account")

    def qty(self, data):
        """A few whole lots, now and then the largest valid quantity."""
        lot, max_qty = self.model.lot_size, self.model.max_qty
        lots = data.draw(st.integers(0, 12), label="lots")
        return lots * lot if lots else max_qty - max_qty % lot

    def raw_qty(self, data):
        """Any quantity a bad command may carry: invalid, off-lot, or just too large."""
        too_large = min(self.model.max_qty + 1, INT64_MAX)  # a re-band to [1, 1] allows all
        return data.draw(st.one_of(st.integers(-2, 13), st.just(too_large)), label="raw qty")

    def price(self, data):
        return data.draw(self.PRICES, label="price")

    def trigger_price(self, data, side):
        """Mostly a trigger one to three ticks away from the last trade (sometimes at it:
        already reached), else any price."""
        last = self.model.last_price
        if not last or not data.draw(st.integers(0, 3), label="near last"):
            return self.price(data)
        away = data.draw(st.sampled_from([1, 1, 2, 3, 0]), label="away")
        return last + away if side == Side.BUY else last - away

    def disclosed(self, data, qty):
        """Mostly a valid disclosed quantity for qty (0: a plain order); sometimes not."""
        lot = self.model.lot_size
        return data.draw(
            st.one_of(
                st.integers(1, 4).map(lambda k: k * lot),
                st.just(qty),
                st.sampled_from([0, -lot, lot + 1, qty + lot if qty <= INT64_MAX - lot else -lot]),
            ),
            label="disclosed",
        )

    def crossing_price(self, data, side):
        """A price at or through the opposite best, if there is one."""
        best = self.model.best_ask() if side == Side.BUY else self.model.best_bid()
        if best is None:
            return self.price(data)
        through = data.draw(st.integers(0, 3), label="through")
        return best[0] + through if side == Side.BUY else best[0] - through

    # ------------------------------------------------------------------ sending

    def call(self, method, *args, **kwargs):
        """One per-order call on both books; they must agree."""
        n = getattr(self.engine, method)(*args, **kwargs)
        assert n == getattr(self.model, method)(*args, **kwargs)
        events = self.engine.last_events()
        assert event_tuples(events) == event_tuples(self.model.last_events())
        assert n == len(events)
        self.record(events)

    def record(self, events):
        """Into the ledger; a pre-open may leave the book crossed until an uncross."""
        self.ledger.record(events)
        for kind in events["type"].tolist():
            if kind in (EventType.PRE_OPENED, EventType.UNCROSSED):
                self.may_be_crossed = kind == EventType.PRE_OPENED

    def compare_books(self):
        e, m = self.engine, self.model
        assert day_state(e) == day_state(m)
        for price in set(m.orders()["price"].tolist()) - {0}:  # both sides in a pre-open
            assert order_tuples(e.level(price)) == order_tuples(m.level(price))
        for order_id in self.seen_ids[-5:] + m.orders()["order_id"].tolist():
            assert e.order(order_id) == m.order(order_id)

    # -------------------------------------------------------------------- rules

    @rule(data=st.data(), side=sides, account=accounts, tif=tifs, stp=stps, post_only=st.booleans())
    def limit(self, data, side, account, tif, stp, post_only):
        post_only = post_only and tif in (Tif.GTC, Tif.DAY)
        self.call(
            "limit",
            self.fresh_id(),
            side,
            self.price(data),
            self.qty(data),
            account=account,
            tif=tif,
            stp=stp,
            post_only=post_only,
        )

    @rule(data=st.data(), side=sides, account=accounts, tif=tifs, stp=stps)
    def crossing_limit(self, data, side, account, tif, stp):
        price = self.crossing_price(data, side)
        self.call(
            "limit", self.fresh_id(), side, price, self.qty(data), account=account, tif=tif, stp=stp
        )

    @rule(
        data=st.data(),
        side=sides,
        account=accounts,
        tif=st.sampled_from([Tif.GTC, Tif.DAY, Tif.DAY, Tif.IOC]),
        stp=stps,
        limit=st.booleans(),
        trade_there=st.booleans(),
    )
    def stop(self, data, side, account, tif, stp, limit, trade_there):
        """A stop-market or stop-limit near the last trade (its limit sometimes on the
        wrong side of the trigger), then maybe a trade at its trigger between two other
        orders, so that stops trigger and cascade often."""
        trigger, qty = self.trigger_price(data, side), self.qty(data)
        if limit:
            through = data.draw(st.integers(-1, 3), label="limit through trigger")
            price = trigger + through if side == Side.BUY else trigger - through
            self.call(
                "stop_limit",
                self.fresh_id(),
                side,
                price,
                qty,
                trigger,
                account=account,
                tif=tif,
                stp=stp,
            )
        else:
            self.call(
                "stop", self.fresh_id(), side, qty, trigger, account=account, tif=tif, stp=stp
            )
        if trade_there:
            maker, taker = account % 3 + 1, (account + 1) % 3 + 1
            lots = self.model.lot_size * data.draw(st.integers(1, 4), label="lots there")
            self.call("limit", self.fresh_id(), 3 - side, trigger, lots, account=maker)
            self.call("limit", self.fresh_id(), side, trigger, lots, account=taker, tif=Tif.IOC)

    @rule(
        data=st.data(),
        side=sides,
        account=accounts,
        tif=st.sampled_from([Tif.GTC, Tif.DAY, Tif.IOC]),
        stp=stps,
        crossing=st.booleans(),
    )
    def iceberg(self, data, side, account, tif, stp, crossing):
        price = self.crossing_price(data, side) if crossing else self.price(data)
        qty = self.qty(data)
        self.call(
            "limit",
            self.fresh_id(),
            side,
            price,
            qty,
            account=account,
            tif=tif,
            stp=stp,
            disclosed=self.disclosed(data, qty),
        )

    @rule(
        data=st.data(),
        side=sides,
        account=accounts,
        tif=st.sampled_from([Tif.IOC, Tif.FOK]),
        stp=stps,
    )
    def market(self, data, side, account, tif, stp):
        self.call(
            "market", self.fresh_id(), side, self.qty(data), account=account, tif=tif, stp=stp
        )

    @rule(
        data=st.data(),
        market=st.booleans(),
        side=raw_sides,
        account=accounts,
        tif=raw_tifs,
        stp=raw_stps,
        post_only=st.booleans(),
    )
    def doubtful_new_order(self, data, market, side, account, tif, stp, post_only):
        """A new order with a reused or invalid id, raw enums and a raw quantity."""
        oid = data.draw(
            st.one_of(
                st.sampled_from(self.seen_ids), st.integers(-1, 0), st.just(self.next_id + 1)
            ),
            label="order_id",
        )
        qty = data.draw(st.one_of(st.just(self.qty(data)), st.just(self.raw_qty(data))))
        if market:
            self.call("market", oid, side, qty, account=account, tif=tif, stp=stp)
        else:
            self.call(
                "limit",
                oid,
                side,
                self.price(data),
                qty,
                account=account,
                tif=tif,
                stp=stp,
                post_only=post_only,
            )

    @rule(data=st.data())
    def cancel(self, data):
        oid = self.live_or_any_id(data)
        self.call("cancel", oid, account=self.owner_or_other(data, oid))

    @rule(data=st.data(), crossing=st.booleans())
    def amend(self, data, crossing):
        oid = self.live_or_any_id(data)
        found = self.model.order(oid)
        if crossing and found:
            price = self.crossing_price(data, found.side)
        elif found and data.draw(st.booleans(), label="same price"):
            price = found.price
        else:
            price = self.price(data)
        qty = data.draw(st.one_of(st.just(self.qty(data)), st.just(self.raw_qty(data))))
        extra = {}
        if found and found.op in (Op.STOP, Op.STOP_LIMIT) and data.draw(st.booleans()):
            extra["trigger"] = self.trigger_price(data, found.side)
        elif data.draw(st.booleans(), label="disclosed"):
            extra["disclosed"] = self.disclosed(data, qty)
        self.call("amend", oid, price, qty, account=self.owner_or_other(data, oid), **extra)

    @rule(then=st.sampled_from(["pre_open", "pre_open", "open", "open", None]))
    def close(self, then):
        """Sessions: mostly a close and a pre-open (then orders, then an uncross), or
        an open, so the book is mostly trading or collecting orders."""
        self.call("close")
        if then:
            self.call(then)

    @precondition(lambda self: self.model is not None and self.model.phase == Phase.CLOSED)
    @rule()
    def open(self):
        self.call("open")

    @precondition(
        lambda self: self.model is not None and self.model.phase in (Phase.CLOSED, Phase.HALTED)
    )
    @rule()
    def pre_open(self):
        self.call("pre_open")

    @precondition(lambda self: self.model is not None and self.model.phase == Phase.PRE_OPEN)
    @rule(
        data=st.data(),
        with_reference=st.booleans(),
        last_orders=st.lists(st.tuples(sides, accounts, st.booleans()), min_size=1, max_size=4),
    )
    def uncross(self, data, with_reference, last_orders):
        """A few last crossing limits or market orders, then the auction, with the
        book's own reference or one given (sometimes off band)."""
        for side, account, market in last_orders:
            if market:
                self.call("market", self.fresh_id(), side, self.qty(data), account=account)
            else:
                price = self.crossing_price(data, side)
                self.call("limit", self.fresh_id(), side, price, self.qty(data), account=account)
        reference = self.price(data) if with_reference else 0
        self.call("uncross", reference)

    @rule(method=st.sampled_from(["halt", "open", "pre_open", "uncross", "close"]))
    def any_session_command(self, method):
        """Halts, and session commands in any phase (SESSION_STATE where not allowed)."""
        self.call(method)

    @rule(data=st.data(), valid=st.booleans())
    def reband(self, data, valid):
        self.call("reband", *data.draw(self.BANDS if valid else invalid_bands, label="band"))

    @rule(data=st.data())
    def batch(self, data):
        """A few raw commands of any op (also unknown ones) through ``process``."""
        rows = data.draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "op": st.sampled_from(list(Op) + [0, 13]),
                        "order_id": st.integers(-1, 40),
                        "account": accounts,
                        "side": raw_sides,
                        "tif": raw_tifs,
                        "stp": raw_stps,
                        "flags": st.sampled_from([0, 0, 1, 2]),
                        "price": self.PRICES,
                        "qty": st.sampled_from([-1, 0, 1, 3, 5, 10, 25]),
                        "trigger": st.one_of(st.sampled_from([0, 0, -1]), self.PRICES),
                        "disclosed": st.sampled_from([0, 0, 0, -1, 1, 5, 10]),
                        "ts": st.integers(0, 99),
                    }
                ),
                min_size=1,
                max_size=5,
            ),
            label="batch",
        )
        batch = commands(*rows)
        events = self.engine.process(batch)
        assert event_tuples(events) == event_tuples(self.model.process(batch))
        self.record(events)

    @rule()
    def snapshot_and_restore_engine(self):
        self.engine = type(self.engine).restore(self.engine.snapshot())
        self.compare_books()

    # --------------------------------------------------------------- invariants

    @invariant()
    def books_agree(self):
        if self.engine is not None:
            self.compare_books()

    @invariant()
    def engine_book_is_sound(self):
        if self.engine is None:
            return
        bid, ask = self.engine.best_bid(), self.engine.best_ask()
        if not self.may_be_crossed:
            assert bid is None or ask is None or bid[0] < ask[0], "book crossed"
        assert self.engine.seq == self.ledger.seq
        self.ledger.check_book(self.engine.orders())


class EngineMatchesModelAcrossPowersOfTwo(EngineMatchesModel):
    """The same on a 1..1100 band, with prices clustered around power-of-two offsets
    from the low edge: still few levels (so orders cross), but far apart, as a
    bucketed or bitmap price ladder sees them at its word and page boundaries."""

    LOW, HIGH = 1, 1100
    PRICES = st.tuples(
        st.sampled_from([1, 63, 64, 65, 128, 255, 256, 257, 512, 1024]), st.integers(-2, 2)
    ).map(sum)
    BANDS = st.tuples(st.integers(1, 70), st.integers(250, 1100))


TestEngineMatchesModel = EngineMatchesModel.TestCase
TestEngineMatchesModel.settings = settings(stateful_step_count=40)
TestEngineMatchesModelAcrossPowersOfTwo = EngineMatchesModelAcrossPowersOfTwo.TestCase
TestEngineMatchesModelAcrossPowersOfTwo.settings = settings(stateful_step_count=40)
