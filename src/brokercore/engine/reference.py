"""A plain-Python model of the matching engine contract (docs/engine.md).

``ReferenceBook`` has the same constructor, methods, views and events as the Cython
``brokercore.OrderBook``, but is written to be obviously correct rather than fast:
per price a list of orders in FIFO order, the best price found with ``min``/``max``
over the non-empty levels, waiting market orders and stops in plain lists, and every
rule of the doc spelled out once, in the order the doc gives it. It is

* the oracle of the differential and fuzz tests: the engine must emit exactly the
  events this model emits, and hold exactly the same book, after every command;
* the baseline of the benchmarks: what the engine's speed is measured against.

Every command, whether it arrives through a per-order method (``limit``, ``cancel``,
...) or in a ``process`` batch, goes through the single ``_apply`` method, so the
semantics have one implementation.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .auction import opening_price
from .records import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    INT64_MAX,
    LEVEL_DTYPE,
    MAX_BAND_LEVELS,
    ORDER_DTYPE,
    AuctionQuote,
    EventType,
    Flags,
    Op,
    Phase,
    Reason,
    RestingOrder,
    Side,
    Stp,
    Tif,
    as_commands,
)

__all__ = ["ReferenceBook"]

_SIDES = (Side.BUY, Side.SELL)
_RESTING_TIFS = (Tif.GTC, Tif.DAY)
_LIMIT_TIFS = (Tif.GTC, Tif.DAY, Tif.IOC, Tif.FOK)
_MARKET_TIFS = (Tif.IOC, Tif.FOK)
_STOP_TIFS = {Op.STOP: (Tif.GTC, Tif.DAY), Op.STOP_LIMIT: (Tif.GTC, Tif.DAY, Tif.IOC)}
_STOPS = (Op.STOP, Op.STOP_LIMIT)
_STPS = tuple(Stp)  # DEFAULT..DECREMENT: what a command may ask for
_BOOK_STPS = tuple(s for s in Stp if s != Stp.DEFAULT)  # what a book default may be
_POST_ONLY = int(Flags.POST_ONLY)  # a plain int: ~ on an IntFlag would drop unknown bits

_Event = tuple[int, ...]  # one EVENT_DTYPE record's fields, in order


@dataclass(eq=False)  # orders are compared by identity: an order is one object
class _Order:
    """A live order (or an incoming taker).

    ``op`` says where a live order is: LIMIT resting in a level, MARKET waiting for an
    uncross (or a market taker), STOP/STOP_LIMIT waiting for its trigger. ``price`` is
    0 for market orders and stop-markets. ``shown`` only means something for an
    iceberg (``disclosed`` > 0); ``visible`` is what the market sees of any order.
    """

    order_id: int
    account: int
    side: int
    price: int
    qty: int  # whole open quantity
    tif: int
    stp: int  # as the command gave it; DEFAULT means the book's mode
    flags: int
    op: int = Op.LIMIT
    disclosed: int = 0
    shown: int = 0
    trigger: int = 0
    stamp: int = 0

    @property
    def post_only(self) -> bool:
        return bool(self.flags & _POST_ONLY)

    @property
    def market(self) -> bool:
        return self.op == Op.MARKET

    @property
    def visible(self) -> int:
        return self.shown if self.disclosed else self.qty

    def show_next_part(self) -> None:
        """An iceberg shows its next part: min(disclosed, open)."""
        self.shown = min(self.disclosed, self.qty)


@dataclass(frozen=True)
class _Command:
    """One COMMAND_DTYPE record as plain Python ints (raw, unvalidated)."""

    symbol: int
    op: int
    side: int
    tif: int
    stp: int
    flags: int
    ts: int
    order_id: int
    account: int
    price: int
    qty: int
    trigger: int
    disclosed: int

    @classmethod
    def from_record(cls, record: np.void) -> _Command:
        """The record's fields in COMMAND_DTYPE order, which is this class's."""
        return cls(*record.item())


def _band_is_valid(low: int, high: int) -> bool:
    """The band rule shared by the constructor and REBAND."""
    return low >= 1 and high >= low and high - low + 1 <= MAX_BAND_LEVELS


def _opposite(side: int) -> int:
    return Side.SELL if side == Side.BUY else Side.BUY


class ReferenceBook:
    """The reference order book for one symbol: price-time priority with STP, a call
    auction, halts, stop orders and icebergs."""

    def __init__(
        self,
        low: int,
        high: int,
        lot_size: int = 1,
        symbol: int = 0,
        stp: int = Stp.CANCEL_NEWEST,
        min_disclosed_percent: int = 10,
    ) -> None:
        low, high, lot_size, symbol, stp, percent = map(
            operator.index, (low, high, lot_size, symbol, stp, min_disclosed_percent)
        )
        if not _band_is_valid(low, high):
            raise ValueError(f"invalid price band [{low}, {high}]")
        if lot_size < 1:
            raise ValueError(f"lot_size must be >= 1, got {lot_size}")
        if stp not in _BOOK_STPS:
            raise ValueError(f"book stp must be one of NONE..DECREMENT, got {stp}")
        if not 0 <= symbol < 2**32:
            raise ValueError(f"symbol must fit in uint32, got {symbol}")
        if not 0 <= percent <= 100:
            raise ValueError(f"min_disclosed_percent must be 0..100, got {percent}")
        self._low, self._high = low, high
        self._lot_size = lot_size
        self._symbol = symbol
        self._stp = Stp(stp)
        self._min_disclosed_percent = percent
        self._phase = Phase.OPEN
        self._last_price = 0
        self._seq = 0
        # side -> price -> orders at that price, oldest first. Empty levels are deleted.
        self._levels: dict[int, dict[int, list[_Order]]] = {Side.BUY: {}, Side.SELL: {}}
        self._markets: dict[int, list[_Order]] = {Side.BUY: [], Side.SELL: []}  # pre-open
        self._stops: list[_Order] = []  # waiting stops, in no particular order
        self._live: dict[int, _Order] = {}  # order_id -> every live order
        self._used_ids: set[int] = set()  # spent this session, live ones included
        self._events: list[_Event] = []  # events of the command being applied
        self._last: list[_Event] = []  # events of the last per-order call
        self._step_prices: list[int] = []  # trade prices of the step being matched

    # ------------------------------------------------------------------ properties

    @property
    def low(self) -> int:
        return self._low

    @property
    def high(self) -> int:
        return self._high

    @property
    def lot_size(self) -> int:
        return self._lot_size

    @property
    def max_qty(self) -> int:
        """Largest order quantity: every price * qty in the band fits in int64."""
        return INT64_MAX // self._high

    @property
    def symbol(self) -> int:
        return self._symbol

    @property
    def stp(self) -> Stp:
        return self._stp

    @property
    def min_disclosed_percent(self) -> int:
        return self._min_disclosed_percent

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def is_open(self) -> bool:
        return self._phase == Phase.OPEN

    @property
    def last_price(self) -> int:
        return self._last_price

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def open_orders(self) -> int:
        return len(self._live)

    # ------------------------------------------------------------ per-order API

    def limit(
        self,
        order_id: int,
        side: int,
        price: int,
        qty: int,
        account: int = 0,
        tif: int = Tif.GTC,
        stp: int = Stp.DEFAULT,
        post_only: bool = False,
        ts: int = 0,
        disclosed: int = 0,
    ) -> int:
        flags = _POST_ONLY if post_only else 0
        return self._call(
            op=Op.LIMIT,
            order_id=order_id,
            side=side,
            price=price,
            qty=qty,
            account=account,
            tif=tif,
            stp=stp,
            flags=flags,
            ts=ts,
            disclosed=disclosed,
        )

    def market(
        self,
        order_id: int,
        side: int,
        qty: int,
        account: int = 0,
        tif: int = Tif.IOC,
        stp: int = Stp.DEFAULT,
        ts: int = 0,
    ) -> int:
        return self._call(
            op=Op.MARKET,
            order_id=order_id,
            side=side,
            qty=qty,
            account=account,
            tif=tif,
            stp=stp,
            ts=ts,
        )

    def stop(
        self,
        order_id: int,
        side: int,
        qty: int,
        trigger: int,
        account: int = 0,
        tif: int = Tif.DAY,
        stp: int = Stp.DEFAULT,
        ts: int = 0,
    ) -> int:
        return self._call(
            op=Op.STOP,
            order_id=order_id,
            side=side,
            qty=qty,
            trigger=trigger,
            account=account,
            tif=tif,
            stp=stp,
            ts=ts,
        )

    def stop_limit(
        self,
        order_id: int,
        side: int,
        price: int,
        qty: int,
        trigger: int,
        account: int = 0,
        tif: int = Tif.DAY,
        stp: int = Stp.DEFAULT,
        ts: int = 0,
    ) -> int:
        return self._call(
            op=Op.STOP_LIMIT,
            order_id=order_id,
            side=side,
            price=price,
            qty=qty,
            trigger=trigger,
            account=account,
            tif=tif,
            stp=stp,
            ts=ts,
        )

    def cancel(self, order_id: int, account: int = 0, ts: int = 0) -> int:
        return self._call(op=Op.CANCEL, order_id=order_id, account=account, ts=ts)

    def amend(
        self,
        order_id: int,
        price: int,
        qty: int,
        account: int = 0,
        ts: int = 0,
        trigger: int = 0,
        disclosed: int = 0,
    ) -> int:
        return self._call(
            op=Op.AMEND,
            order_id=order_id,
            price=price,
            qty=qty,
            account=account,
            ts=ts,
            trigger=trigger,
            disclosed=disclosed,
        )

    def open(self, ts: int = 0) -> int:
        return self._call(op=Op.OPEN, ts=ts)

    def close(self, ts: int = 0) -> int:
        return self._call(op=Op.CLOSE, ts=ts)

    def pre_open(self, ts: int = 0) -> int:
        return self._call(op=Op.PRE_OPEN, ts=ts)

    def uncross(self, reference: int = 0, ts: int = 0) -> int:
        return self._call(op=Op.UNCROSS, price=reference, ts=ts)

    def halt(self, ts: int = 0) -> int:
        return self._call(op=Op.HALT, ts=ts)

    def reband(self, low: int, high: int, ts: int = 0) -> int:
        return self._call(op=Op.REBAND, price=low, qty=high, ts=ts)

    def last_events(self) -> np.ndarray:
        """The events of the last per-order call (none after a batch), as a fresh array."""
        return np.array(self._last, dtype=EVENT_DTYPE)

    def process(self, commands: np.ndarray) -> np.ndarray:
        """Apply a COMMAND_DTYPE batch in order; bad field values are REJECTED, not raised."""
        events: list[_Event] = []
        for record in as_commands(commands):
            events.extend(self._apply(_Command.from_record(record)))
        self._last = []
        return np.array(events, dtype=EVENT_DTYPE)

    def _call(self, **fields: int) -> int:
        """Build one command record (numpy coerces the raw values) and apply it."""
        record = np.zeros(1, dtype=COMMAND_DTYPE)
        for name, value in fields.items():
            record[name] = value
        self._last = self._apply(_Command.from_record(record[0]))
        return len(self._last)

    # ------------------------------------------------------------------- views

    def best_bid(self) -> tuple[int, int] | None:
        return self._best_level(Side.BUY)

    def best_ask(self) -> tuple[int, int] | None:
        return self._best_level(Side.SELL)

    def depth(self, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top n levels per side, best first, as LEVEL_DTYPE arrays (shown quantities)."""
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"depth needs n >= 0, got {n}")

        def side_depth(side: int) -> np.ndarray:
            rows = [
                (price, self._level_qty(side, price), len(self._levels[side][price]))
                for price in self._prices(side)[:n]
            ]
            return np.array(rows, dtype=LEVEL_DTYPE)

        return side_depth(Side.BUY), side_depth(Side.SELL)

    def level(self, price: int) -> np.ndarray:
        """Orders resting at one price, FIFO (buys, then sells: a pre-open book may
        hold both at one price), as an ORDER_DTYPE array."""
        return self._order_array(o for side in _SIDES for o in self._levels[side].get(price, ()))

    def orders(self) -> np.ndarray:
        """Every live order (book order, waiting market orders, waiting stops)."""
        return self._order_array(self._live_order())

    def order(self, order_id: int) -> RestingOrder | None:
        o = self._live.get(order_id)
        if o is None:
            return None
        return RestingOrder(
            o.order_id,
            o.account,
            Side(o.side),
            o.price,
            o.qty,
            Tif(o.tif),
            Stp(o.stp),
            o.post_only,
            o.visible,
            o.disclosed,
            Op(o.op),
            o.trigger,
        )

    def auction(self) -> AuctionQuote | None:
        """What UNCROSS with the book's own reference price would do now."""
        return self._quote(self._own_reference())

    def _best_level(self, side: int) -> tuple[int, int] | None:
        price = self._best_price(side)
        if price is None:
            return None
        return price, self._level_qty(side, price)

    def _level_qty(self, side: int, price: int) -> int:
        """Shown qty of a level; views report int64, so a larger total is an error."""
        total = sum(o.visible for o in self._levels[side][price])
        if total > INT64_MAX:
            raise OverflowError("level quantity exceeds int64")
        return total

    @staticmethod
    def _order_array(orders: Iterable[_Order]) -> np.ndarray:
        rows = [
            (
                o.order_id,
                o.account,
                o.price,
                o.qty,
                o.side,
                o.tif,
                o.stp,
                o.flags,
                o.op,
                o.visible,
                o.disclosed,
                o.trigger,
                o.stamp,
            )
            for o in orders
        ]
        return np.array(rows, dtype=ORDER_DTYPE)

    # ------------------------------------------------------------- book helpers

    def _prices(self, side: int) -> list[int]:
        """Prices with orders on one side, best first (bids high to low, asks low to high)."""
        return sorted(self._levels[side], reverse=(side == Side.BUY))

    def _best_price(self, side: int) -> int | None:
        """Highest bid or lowest ask price, None if that side is empty."""
        prices = self._levels[side]
        if not prices:
            return None
        return max(prices) if side == Side.BUY else min(prices)

    def _book_order(self) -> list[_Order]:
        """Bids from the highest price down, then asks from the lowest up; FIFO within."""
        return [
            o for side in _SIDES for price in self._prices(side) for o in self._levels[side][price]
        ]

    def _waiting_markets(self) -> list[_Order]:
        """Market orders waiting for an uncross: buys, then sells, in arrival order."""
        return self._markets[Side.BUY] + self._markets[Side.SELL]

    def _stop_order(self) -> list[_Order]:
        """Buy stops by trigger ascending, then sell stops by trigger descending; by stamp."""
        return sorted(
            self._stops,
            key=lambda s: (
                (0, s.trigger, s.stamp) if s.side == Side.BUY else (1, -s.trigger, s.stamp)
            ),
        )

    def _live_order(self) -> list[_Order]:
        """Every live order in the order of ``orders()``."""
        return self._book_order() + self._waiting_markets() + self._stop_order()

    def _first_maker(self, taker: _Order) -> _Order | None:
        """The order the taker would meet next, or None if the opposite side does not cross."""
        side = _opposite(taker.side)
        best = self._best_price(side)
        if best is None:
            return None
        if not taker.market and not self._crosses(taker.side, taker.price, best):
            return None
        return self._levels[side][best][0]

    @staticmethod
    def _crosses(side: int, limit: int, opposite_price: int) -> bool:
        """Would a `side` order at `limit` trade with an opposite order at `opposite_price`?"""
        return opposite_price <= limit if side == Side.BUY else opposite_price >= limit

    def _would_take(self, side: int, limit: int) -> bool:
        """Post-only test: is there an opposite order this limit price would trade with?"""
        best = self._best_price(_opposite(side))
        return best is not None and self._crosses(side, limit, best)

    def _rest(self, order: _Order) -> None:
        """Put an order at the tail of its price level (an iceberg shows its next part)."""
        order.op = Op.LIMIT
        order.trigger = order.stamp = 0
        order.show_next_part()
        self._levels[order.side].setdefault(order.price, []).append(order)
        self._live[order.order_id] = order

    def _refresh(self, order: _Order) -> None:
        """An iceberg whose shown part ran out shows the next one at the level's tail."""
        level = self._levels[order.side][order.price]
        level.remove(order)
        level.append(order)
        order.show_next_part()

    def _remove(self, order: _Order) -> None:
        """Take a live order off the book, the waiting markets or the stops (its id stays
        spent)."""
        if order.op == Op.LIMIT:
            level = self._levels[order.side][order.price]
            level.remove(order)
            if not level:
                del self._levels[order.side][order.price]
        elif order.op == Op.MARKET:
            self._markets[order.side].remove(order)
        else:
            self._stops.remove(order)
        del self._live[order.order_id]

    def _mode(self, order: _Order) -> int:
        """The order's self-trade prevention mode, the book's when it asked for DEFAULT."""
        return self._stp if order.stp == Stp.DEFAULT else order.stp

    def _own_reference(self) -> int:
        """The book's reference price: its last trade price if in the band, else none."""
        return self._last_price if self._low <= self._last_price <= self._high else 0

    def _quote(self, reference: int) -> AuctionQuote | None:
        """The opening price an uncross would find (docs/engine.md, Call auction)."""
        return opening_price(
            ((o.price, o.qty) for o in self._book_order() if o.side == Side.BUY),
            ((o.price, o.qty) for o in self._book_order() if o.side == Side.SELL),
            sum(o.qty for o in self._markets[Side.BUY]),
            sum(o.qty for o in self._markets[Side.SELL]),
            reference,
        )

    # ------------------------------------------------------------------ events

    def _emit(
        self,
        c: _Command,
        type_: int,
        reason: int = Reason.NONE,
        order_id: int = 0,
        account: int = 0,
        side: int = 0,
        price: int = 0,
        qty: int = 0,
        remaining: int = 0,
        other_id: int = 0,
        other_account: int = 0,
        other_remaining: int = 0,
    ) -> None:
        """Append one event, numbering it with the book's next seq."""
        self._seq += 1
        self._events.append(
            (
                self._symbol,
                type_,
                reason,
                c.op,
                side,
                self._seq,
                c.ts,
                order_id,
                account,
                price,
                qty,
                remaining,
                other_id,
                other_account,
                other_remaining,
            )
        )

    def _emit_order(
        self, c: _Command, type_: int, reason: int, o: _Order, qty: int, remaining: int = 0
    ) -> None:
        """An event about one order: ACCEPTED, CANCELLED, EXPIRED or AMENDED."""
        self._emit(c, type_, reason, o.order_id, o.account, o.side, o.price, qty, remaining)

    def _emit_trade(self, c: _Command, taker: _Order, maker: _Order, price: int, qty: int) -> None:
        """TRADE names the taker (in an uncross: the buy) and the maker (the sell)."""
        self._emit(
            c,
            EventType.TRADE,
            Reason.NONE,
            taker.order_id,
            taker.account,
            taker.side,
            price,
            qty,
            taker.qty,
            maker.order_id,
            maker.account,
            maker.qty,
        )
        self._last_price = price
        self._step_prices.append(price)

    def _reject(self, c: _Command, reason: int) -> None:
        """REJECTED echoes the command's raw fields."""
        self._emit(c, EventType.REJECTED, reason, c.order_id, c.account, c.side, c.price, c.qty)

    # ---------------------------------------------------------------- commands

    def _apply(self, c: _Command) -> list[_Event]:
        """Apply one command and return its events: the one code path for all calls."""
        self._events = []
        handlers: dict[int, Callable[[_Command], None]] = {
            Op.LIMIT: self._new_order,
            Op.MARKET: self._new_order,
            Op.STOP: self._new_order,
            Op.STOP_LIMIT: self._new_order,
            Op.CANCEL: self._cancel,
            Op.AMEND: self._amend,
            Op.OPEN: self._open_session,
            Op.CLOSE: self._close_session,
            Op.REBAND: self._reband,
            Op.PRE_OPEN: self._pre_open,
            Op.UNCROSS: self._uncross,
            Op.HALT: self._halt,
        }
        handler = handlers.get(c.op)
        if handler is None:
            self._reject(c, Reason.UNKNOWN_OP)
        else:
            handler(c)
        return self._events

    def _new_order(self, c: _Command) -> None:
        """LIMIT, MARKET, STOP or STOP_LIMIT: validate (spending the id), accept, then
        wait (a stop; a market order in pre-open), rest (pre-open) or match (open)."""
        if c.order_id <= 0:
            return self._reject(c, Reason.INVALID_ORDER_ID)
        if c.order_id in self._used_ids:
            return self._reject(c, Reason.DUPLICATE_ORDER_ID)
        self._used_ids.add(c.order_id)  # spent from here on, whatever happens next
        reasons: dict[int, Callable[[_Command], Reason]] = {
            Op.LIMIT: self._limit_reason,
            Op.MARKET: self._market_reason,
            Op.STOP: self._stop_reason,
            Op.STOP_LIMIT: self._stop_reason,
        }
        reason = reasons[c.op](c)
        if reason != Reason.NONE:
            return self._reject(c, reason)
        order = _Order(
            c.order_id,
            c.account,
            c.side,
            0 if c.op == Op.MARKET else c.price,
            c.qty,
            c.tif,
            c.stp,
            c.flags,
            c.op,
            disclosed=c.disclosed,
            trigger=c.trigger,
        )
        self._emit_order(c, EventType.ACCEPTED, Reason.NONE, order, c.qty, c.qty)
        if c.op in _STOPS:
            order.stamp = self._seq  # its ACCEPTED event's seq
            self._stops.append(order)
            self._live[order.order_id] = order
        elif self._phase == Phase.PRE_OPEN:
            if order.market:
                self._markets[order.side].append(order)
                self._live[order.order_id] = order
            else:
                self._rest(order)
        else:
            self._run(c, order)

    def _phase_reason(self) -> Reason:
        """A new order or an amend in a phase that takes none."""
        if self._phase == Phase.CLOSED:
            return Reason.MARKET_CLOSED
        if self._phase == Phase.HALTED:
            return Reason.HALTED
        return Reason.NONE

    def _limit_reason(self, c: _Command) -> Reason:
        """LIMIT checks after the id, in the doc's order; NONE if the order is accepted."""
        pre_open = self._phase == Phase.PRE_OPEN
        reason = self._phase_reason()
        if reason != Reason.NONE:
            return reason
        if c.side not in _SIDES:
            return Reason.INVALID_SIDE
        if c.tif not in _LIMIT_TIFS:
            return Reason.INVALID_TIF
        if pre_open and c.tif not in _RESTING_TIFS:
            return Reason.SESSION_STATE
        if c.stp not in _STPS:
            return Reason.INVALID_STP
        post_only = bool(c.flags & _POST_ONLY)
        if c.flags & ~_POST_ONLY or (post_only and c.tif not in _RESTING_TIFS):
            return Reason.INVALID_FLAGS
        if pre_open and post_only:
            return Reason.SESSION_STATE
        if c.trigger != 0:
            return Reason.INVALID_TRIGGER
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        if c.disclosed and c.tif not in _RESTING_TIFS:
            return Reason.INVALID_DISCLOSED
        reason = self._disclosed_reason(c.disclosed, c.qty)
        if reason != Reason.NONE:
            return reason
        if not self._low <= c.price <= self._high:
            return Reason.PRICE_OUT_OF_BAND
        if pre_open:
            return Reason.NONE
        if post_only and self._would_take(c.side, c.price):
            return Reason.POST_ONLY_WOULD_TAKE
        if c.tif == Tif.FOK and not self._fillable(c, market=False):
            return Reason.FOK_NOT_FILLABLE
        return Reason.NONE

    def _market_reason(self, c: _Command) -> Reason:
        """MARKET checks after the id, in the doc's order; the price field is ignored."""
        pre_open = self._phase == Phase.PRE_OPEN
        reason = self._phase_reason()
        if reason != Reason.NONE:
            return reason
        if c.side not in _SIDES:
            return Reason.INVALID_SIDE
        if c.tif not in _MARKET_TIFS:
            return Reason.INVALID_TIF
        if pre_open and c.tif == Tif.FOK:
            return Reason.SESSION_STATE
        if c.stp not in _STPS:
            return Reason.INVALID_STP
        if c.flags != 0:
            return Reason.INVALID_FLAGS
        if c.trigger != 0:
            return Reason.INVALID_TRIGGER
        if c.disclosed != 0:
            return Reason.INVALID_DISCLOSED
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE or pre_open:
            return reason
        if not self._levels[_opposite(c.side)]:
            return Reason.NO_LIQUIDITY
        if c.tif == Tif.FOK and not self._fillable(c, market=True):
            return Reason.FOK_NOT_FILLABLE
        return Reason.NONE

    def _stop_reason(self, c: _Command) -> Reason:
        """STOP and STOP_LIMIT checks after the id, in the doc's order."""
        reason = self._phase_reason()
        if reason != Reason.NONE:
            return reason
        if c.side not in _SIDES:
            return Reason.INVALID_SIDE
        if c.tif not in _STOP_TIFS[Op(c.op)]:
            return Reason.INVALID_TIF
        if c.stp not in _STPS:
            return Reason.INVALID_STP
        if c.flags != 0:
            return Reason.INVALID_FLAGS
        if c.disclosed != 0:
            return Reason.INVALID_DISCLOSED
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        return self._stop_price_reason(c.op, c.side, c.price, c.trigger)

    def _stop_price_reason(self, op: int, side: int, price: int, trigger: int) -> Reason:
        """A stop's limit and trigger, for new stops and amends of waiting ones."""
        if op == Op.STOP and price != 0:
            return Reason.INVALID_PRICE
        if op == Op.STOP_LIMIT and not self._low <= price <= self._high:
            return Reason.PRICE_OUT_OF_BAND
        if not self._low <= trigger <= self._high or self._reached(side, trigger):
            return Reason.INVALID_TRIGGER
        wrong_side = price < trigger if side == Side.BUY else price > trigger
        if op == Op.STOP_LIMIT and wrong_side:
            return Reason.INVALID_TRIGGER
        return Reason.NONE

    def _reached(self, side: int, trigger: int) -> bool:
        """Has the last trade reached this trigger? Nothing is reached before a trade."""
        last = self._last_price
        return last > 0 and (trigger <= last if side == Side.BUY else trigger >= last)

    def _quantity_reason(self, qty: int) -> Reason:
        """Shared by new orders and amends: positive, whole lots, not above max_qty."""
        if qty <= 0 or qty % self._lot_size:
            return Reason.INVALID_QUANTITY
        if qty > self.max_qty:
            return Reason.QUANTITY_TOO_LARGE
        return Reason.NONE

    def _disclosed_reason(self, disclosed: int, qty: int) -> Reason:
        """An iceberg's disclosed quantity (0: a plain order) against its whole qty."""
        if disclosed == 0:
            return Reason.NONE
        if (
            disclosed < 0
            or disclosed % self._lot_size
            or disclosed > qty
            or disclosed * 100 < qty * self._min_disclosed_percent
        ):
            return Reason.INVALID_DISCLOSED
        return Reason.NONE

    def _fillable(self, c: _Command, market: bool) -> bool:
        """FOK rule: could the order fill completely right now, given its STP mode?
        A level is walked as matching meets it: the FIFO's shown parts in turn, then the
        icebergs' hidden parts, which their refreshes show at the tail."""
        mode = self._stp if c.stp == Stp.DEFAULT else c.stp
        side = _opposite(c.side)
        total = 0
        for price in self._prices(side):
            if not market and not self._crosses(c.side, c.price, price):
                break
            hidden = 0
            for maker in self._levels[side][price]:
                if total >= c.qty:
                    return True
                if maker.account == c.account and mode != Stp.NONE:
                    if mode == Stp.CANCEL_OLDEST:
                        continue  # it would be cancelled (hidden part too), not traded with
                    return False  # STP would stop or shrink the taker here
                total += maker.visible
                hidden += maker.qty - maker.visible
            total += hidden
        return total >= c.qty

    # ---------------------------------------------------------------- matching

    def _run(self, c: _Command, order: _Order) -> None:
        """Match an order in the continuous market, then enter the stops its trades
        reach, and the stops theirs reach, one at a time from the trigger queue."""
        queue: list[_Order] = []
        self._step(c, order, queue)
        while queue:
            self._enter_stop(c, queue.pop(0), queue)

    def _step(self, c: _Command, taker: _Order, queue: list[_Order]) -> None:
        """One step: the taker matches, its remainder rests or is cancelled; then the
        stops its trades reached join the trigger queue."""
        self._step_prices = []
        if self._take(c, taker) and taker.qty > 0:
            if taker.market or taker.tif not in _RESTING_TIFS:
                self._emit_order(c, EventType.CANCELLED, Reason.IOC_REMAINDER, taker, taker.qty)
            else:
                self._rest(taker)
        self._trigger(queue)

    def _trigger(self, queue: list[_Order]) -> None:
        """Move the waiting stops the step's trades reached to the queue, by stamp."""
        if not self._step_prices:
            return
        high, low = max(self._step_prices), min(self._step_prices)
        reached = [
            s
            for s in self._stops
            if (s.trigger <= high if s.side == Side.BUY else s.trigger >= low)
        ]
        for s in reached:
            self._remove(s)
        queue.extend(sorted(reached, key=lambda s: s.stamp))

    def _enter_stop(self, c: _Command, stop: _Order, queue: list[_Order]) -> None:
        """A triggered stop enters: as a market IOC order (STOP) or a limit (STOP_LIMIT)."""
        self._emit(
            c,
            EventType.TRIGGERED,
            Reason.NONE,
            stop.order_id,
            stop.account,
            stop.side,
            stop.price,
            stop.qty,
            stop.qty,
            other_remaining=self._last_price,
        )
        if stop.op == Op.STOP:
            stop.op, stop.tif = Op.MARKET, Tif.IOC
            if not self._levels[_opposite(stop.side)]:
                self._emit_order(c, EventType.CANCELLED, Reason.NO_LIQUIDITY, stop, stop.qty)
                return
        else:
            stop.op = Op.LIMIT
        stop.trigger = stop.stamp = 0
        self._step(c, stop, queue)

    def _take(self, c: _Command, taker: _Order) -> bool:
        """Match the taker against the book; False if self-trade prevention ended it."""
        mode = self._mode(taker)
        while taker.qty > 0:
            maker = self._first_maker(taker)
            if maker is None:
                break
            if maker.account == taker.account and mode != Stp.NONE:
                if not self._prevent_self_trade(c, taker, maker, mode):
                    return False
            else:
                self._trade(c, taker, maker)
        return True

    def _trade(self, c: _Command, taker: _Order, maker: _Order) -> None:
        """One fill at the maker's price, at most its shown part; a filled maker leaves
        the book, an iceberg whose shown part ran out shows its next one."""
        qty = min(taker.qty, maker.visible)
        taker.qty -= qty
        self._take_from_maker(maker, qty)
        self._emit_trade(c, taker, maker, maker.price, qty)
        if maker.qty == 0:
            self._remove(maker)
        elif maker.disclosed and maker.shown == 0:
            self._refresh(maker)

    @staticmethod
    def _take_from_maker(maker: _Order, qty: int) -> None:
        maker.qty -= qty
        if maker.disclosed:
            maker.shown -= qty

    def _prevent_self_trade(self, c: _Command, taker: _Order, maker: _Order, mode: int) -> bool:
        """Apply one STP step; return whether the taker goes on matching."""
        stp = Reason.SELF_TRADE
        if mode == Stp.CANCEL_NEWEST:
            self._emit_order(c, EventType.CANCELLED, stp, taker, taker.qty)
            return False
        if mode in (Stp.CANCEL_OLDEST, Stp.CANCEL_BOTH):
            self._emit_order(c, EventType.CANCELLED, stp, maker, maker.qty)
            self._remove(maker)
            if mode == Stp.CANCEL_OLDEST:
                return True
            self._emit_order(c, EventType.CANCELLED, stp, taker, taker.qty)
            return False
        # DECREMENT: both shrink by the smaller of the taker's open quantity and the
        # maker's shown part; an emptied one is cancelled, an iceberg may refresh.
        d = min(taker.qty, maker.visible)
        if maker.qty > d:
            self._take_from_maker(maker, d)
            self._emit_order(c, EventType.AMENDED, stp, maker, maker.qty, maker.qty)
            if maker.disclosed and maker.shown == 0:
                self._refresh(maker)
        else:
            self._emit_order(c, EventType.CANCELLED, stp, maker, maker.qty)
            self._remove(maker)
        if taker.qty > d:
            taker.qty -= d
            self._emit_order(c, EventType.AMENDED, stp, taker, taker.qty, taker.qty)
            return True
        self._emit_order(c, EventType.CANCELLED, stp, taker, taker.qty)
        return False

    # ---------------------------------------------------------- cancel, amend

    def _cancel(self, c: _Command) -> None:
        """CANCEL by the owner, of any live order; allowed in every phase."""
        o = self._live.get(c.order_id)
        if o is None:
            return self._reject(c, Reason.UNKNOWN_ORDER)
        if o.account != c.account:
            return self._reject(c, Reason.NOT_OWNER)
        self._remove(o)
        self._emit_order(c, EventType.CANCELLED, Reason.USER_CANCEL, o, o.qty)

    def _amend_reason(self, c: _Command, o: _Order) -> Reason:
        """AMEND checks of a live order in the doc's order; NONE if the amend goes ahead."""
        if o.account != c.account:
            return Reason.NOT_OWNER
        reason = self._phase_reason()
        if reason != Reason.NONE:
            return reason
        if o.market:
            return Reason.SESSION_STATE  # a market order waiting for the uncross
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        if o.op in _STOPS:
            if c.disclosed != 0:
                return Reason.INVALID_DISCLOSED
            return self._stop_price_reason(o.op, o.side, c.price, c.trigger or o.trigger)
        if c.trigger != 0:
            return Reason.INVALID_TRIGGER
        if c.disclosed < 0:
            return Reason.INVALID_DISCLOSED
        reason = self._disclosed_reason(c.disclosed or o.disclosed, c.qty)
        if reason != Reason.NONE:
            return reason
        if not self._low <= c.price <= self._high:
            return Reason.PRICE_OUT_OF_BAND
        if (
            self._phase == Phase.OPEN
            and o.post_only
            and c.price != o.price
            and self._would_take(o.side, c.price)
        ):
            return Reason.POST_ONLY_WOULD_TAKE
        return Reason.NONE

    def _amend(self, c: _Command) -> None:
        """A waiting stop takes its new values; a resting order shrinks in place (keeps
        priority) or moves to the tail of its new level, matching first when open."""
        o = self._live.get(c.order_id)
        if o is None:
            return self._reject(c, Reason.UNKNOWN_ORDER)
        reason = self._amend_reason(c, o)
        if reason != Reason.NONE:
            return self._reject(c, reason)
        if o.op in _STOPS:
            return self._amend_stop(c, o)
        disclosed = c.disclosed or o.disclosed
        if c.price == o.price and c.qty <= o.qty and disclosed == o.disclosed:
            o.qty = c.qty
            o.shown = min(o.shown, o.qty)
            self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
            return
        self._remove(o)
        o.price, o.qty, o.disclosed = c.price, c.qty, disclosed
        self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
        if self._phase == Phase.OPEN:
            self._run(c, o)  # only GTC and DAY orders rest, so what is left rests again
        else:
            self._rest(o)

    def _amend_stop(self, c: _Command, o: _Order) -> None:
        """New limit, qty and trigger (0 keeps it); a new stamp unless it only shrank."""
        trigger = c.trigger or o.trigger
        keeps_stamp = c.price == o.price and trigger == o.trigger and c.qty <= o.qty
        o.price, o.qty, o.trigger = c.price, c.qty, trigger
        self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
        if not keeps_stamp:
            o.stamp = self._seq

    # ---------------------------------------------------------------- phases

    def _open_session(self, c: _Command) -> None:
        """OPEN (from CLOSED): forget the spent ids of finished orders."""
        if self._phase != Phase.CLOSED:
            return self._reject(c, Reason.SESSION_STATE)
        self._used_ids = set(self._live)
        self._phase = Phase.OPEN
        self._emit(c, EventType.OPENED)

    def _pre_open(self, c: _Command) -> None:
        """PRE_OPEN from CLOSED (a new session: ids forgotten) or HALTED (ids kept)."""
        if self._phase not in (Phase.CLOSED, Phase.HALTED):
            return self._reject(c, Reason.SESSION_STATE)
        if self._phase == Phase.CLOSED:
            self._used_ids = set(self._live)
        self._phase = Phase.PRE_OPEN
        self._emit(c, EventType.PRE_OPENED)

    def _halt(self, c: _Command) -> None:
        """HALT from PRE_OPEN or OPEN: no matching, no new orders, cancels only."""
        if self._phase not in (Phase.PRE_OPEN, Phase.OPEN):
            return self._reject(c, Reason.SESSION_STATE)
        self._phase = Phase.HALTED
        self._emit(c, EventType.HALTED)

    def _close_session(self, c: _Command) -> None:
        """CLOSE: expire waiting market orders, DAY orders in book order and non-GTC
        stops in stop order, then CLOSED."""
        if self._phase == Phase.CLOSED:
            return self._reject(c, Reason.SESSION_STATE)
        expiring = (
            self._waiting_markets()
            + [o for o in self._book_order() if o.tif == Tif.DAY]
            + [s for s in self._stop_order() if s.tif != Tif.GTC]
        )
        for o in expiring:
            self._remove(o)
            self._emit_order(c, EventType.EXPIRED, Reason.NONE, o, o.qty)
        self._phase = Phase.CLOSED
        self._emit(c, EventType.CLOSED)

    def _uncross(self, c: _Command) -> None:
        """UNCROSS: trade everything that crosses at one opening price, convert or cancel
        the market orders left, open the book, then enter the stops it reached."""
        if self._phase != Phase.PRE_OPEN:
            return self._reject(c, Reason.SESSION_STATE)
        if c.price != 0 and not self._low <= c.price <= self._high:
            return self._reject(c, Reason.PRICE_OUT_OF_BAND)
        quote = self._quote(c.price or self._own_reference())
        self._step_prices = []
        if quote is None:
            for o in self._waiting_markets():
                self._remove(o)
                self._emit_order(c, EventType.CANCELLED, Reason.NO_LIQUIDITY, o, o.qty)
            self._emit(c, EventType.UNCROSSED)
        else:
            self._execute_auction(c, quote.price, quote.volume)
            self._emit(
                c,
                EventType.UNCROSSED,
                side=quote.surplus_side,
                price=quote.price,
                qty=quote.volume,
                remaining=quote.imbalance,
            )
        self._phase = Phase.OPEN
        self._emit(c, EventType.OPENED)
        queue: list[_Order] = []
        self._trigger(queue)
        while queue:
            self._enter_stop(c, queue.pop(0), queue)

    def _execute_auction(self, c: _Command, price: int, volume: int) -> None:
        """Trade `volume` at `price` in priority order on both sides; the market orders
        left become limits at `price`, at the front of that level, in arrival order."""

        def priority(side: int) -> list[_Order]:
            within = [p for p in self._prices(side) if self._crosses(side, p, price)]
            return self._markets[side] + [o for p in within for o in self._levels[side][p]]

        buys, sells = priority(Side.BUY), priority(Side.SELL)
        while volume > 0:
            buy, sell = buys[0], sells[0]
            qty = min(buy.qty, sell.qty)
            volume -= qty
            for o, left in ((buy, buys), (sell, sells)):
                o.qty -= qty
                if o.qty == 0:
                    left.pop(0)
                    self._remove(o)
                elif o.disclosed:
                    o.show_next_part()
            self._emit_trade(c, buy, sell, price, qty)
        converted = self._waiting_markets()
        for o in converted:
            self._remove(o)
            o.op, o.price, o.tif = Op.LIMIT, price, Tif.DAY
            self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
        for side in _SIDES:  # ahead of the limit orders at `price`: they had priority
            ahead = [o for o in converted if o.side == side]
            if ahead:
                self._levels[side].setdefault(price, [])[:0] = ahead
                self._live.update((o.order_id, o) for o in ahead)

    def _reband(self, c: _Command) -> None:
        """REBAND(low=price, high=qty): cancel orders the new band or max_qty excludes,
        each pass in ``orders()`` order (book, waiting market orders, waiting stops)."""
        low, high = c.price, c.qty
        if not _band_is_valid(low, high):
            return self._reject(c, Reason.INVALID_BAND)

        def outside(o: _Order) -> bool:
            """A resting limit's or a stop-limit's price, or a stop's trigger, off the band."""
            if o.op in _STOPS and not low <= o.trigger <= high:
                return True
            return o.op in (Op.LIMIT, Op.STOP_LIMIT) and not low <= o.price <= high

        for o in [o for o in self._live_order() if outside(o)]:
            self._remove(o)
            self._emit_order(c, EventType.CANCELLED, Reason.PRICE_OUT_OF_BAND, o, o.qty)
        new_max_qty = INT64_MAX // high
        for o in [o for o in self._live_order() if o.qty > new_max_qty]:
            self._remove(o)
            self._emit_order(c, EventType.CANCELLED, Reason.QUANTITY_TOO_LARGE, o, o.qty)
        self._low, self._high = low, high
        self._emit(c, EventType.REBANDED, price=low, qty=high)
