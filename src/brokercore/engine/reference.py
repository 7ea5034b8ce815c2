"""A plain-Python model of the matching engine contract (docs/engine.md).

``ReferenceBook`` has the same constructor, methods, views and events as the Cython
``brokercore.OrderBook``, but is written to be obviously correct rather than fast:
per price a list of orders in FIFO order, the best price found with ``min``/``max``
over the non-empty levels, and every rule of the doc spelled out once, in the order
the doc gives it. It is

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

from .records import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    INT64_MAX,
    LEVEL_DTYPE,
    MAX_BAND_LEVELS,
    ORDER_DTYPE,
    EventType,
    Flags,
    Op,
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
_STPS = tuple(Stp)  # DEFAULT..DECREMENT: what a command may ask for
_BOOK_STPS = tuple(s for s in Stp if s != Stp.DEFAULT)  # what a book default may be
_POST_ONLY = int(Flags.POST_ONLY)  # a plain int: ~ on an IntFlag would drop unknown bits

_Event = tuple[int, ...]  # one EVENT_DTYPE record's fields, in order


@dataclass
class _Order:
    """A live order (or an incoming taker). ``price`` is 0 for a market order."""

    order_id: int
    account: int
    side: int
    price: int
    qty: int  # open quantity
    tif: int
    stp: int  # as the command gave it; DEFAULT means the book's mode
    flags: int
    market: bool = False

    @property
    def post_only(self) -> bool:
        return bool(self.flags & _POST_ONLY)


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

    @classmethod
    def from_record(cls, record: np.void) -> _Command:
        return cls(**{name: int(record[name]) for name in COMMAND_DTYPE.names or ()})


def _band_is_valid(low: int, high: int) -> bool:
    """The band rule shared by the constructor and REBAND."""
    return low >= 1 and high >= low and high - low + 1 <= MAX_BAND_LEVELS


def _opposite(side: int) -> int:
    return Side.SELL if side == Side.BUY else Side.BUY


class ReferenceBook:
    """The reference order book for one symbol: price-time priority with STP."""

    def __init__(
        self, low: int, high: int, lot_size: int = 1, symbol: int = 0, stp: int = Stp.CANCEL_NEWEST
    ) -> None:
        low, high, lot_size, symbol, stp = map(operator.index, (low, high, lot_size, symbol, stp))
        if not _band_is_valid(low, high):
            raise ValueError(f"invalid price band [{low}, {high}]")
        if lot_size < 1:
            raise ValueError(f"lot_size must be >= 1, got {lot_size}")
        if stp not in _BOOK_STPS:
            raise ValueError(f"book stp must be one of NONE..DECREMENT, got {stp}")
        if not 0 <= symbol < 2**32:
            raise ValueError(f"symbol must fit in uint32, got {symbol}")
        self._low, self._high = low, high
        self._lot_size = lot_size
        self._symbol = symbol
        self._stp = Stp(stp)
        self._is_open = True
        self._seq = 0
        # side -> price -> orders at that price, oldest first. Empty levels are deleted.
        self._levels: dict[int, dict[int, list[_Order]]] = {Side.BUY: {}, Side.SELL: {}}
        self._live: dict[int, _Order] = {}  # order_id -> resting order
        self._used_ids: set[int] = set()  # spent this session, live ones included
        self._events: list[_Event] = []  # events of the command being applied
        self._last: list[_Event] = []  # events of the last per-order call

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
    def is_open(self) -> bool:
        return self._is_open

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

    def cancel(self, order_id: int, account: int = 0, ts: int = 0) -> int:
        return self._call(op=Op.CANCEL, order_id=order_id, account=account, ts=ts)

    def amend(self, order_id: int, price: int, qty: int, account: int = 0, ts: int = 0) -> int:
        return self._call(
            op=Op.AMEND, order_id=order_id, price=price, qty=qty, account=account, ts=ts
        )

    def open(self, ts: int = 0) -> int:
        return self._call(op=Op.OPEN, ts=ts)

    def close(self, ts: int = 0) -> int:
        return self._call(op=Op.CLOSE, ts=ts)

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
        """Top n levels per side, best first, as LEVEL_DTYPE arrays."""
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
        """Orders resting at one price, FIFO, as an ORDER_DTYPE array."""
        orders = self._levels[Side.BUY].get(price) or self._levels[Side.SELL].get(price) or []
        return self._order_array(orders)

    def orders(self) -> np.ndarray:
        """Every live order in book order, as an ORDER_DTYPE array."""
        return self._order_array(self._book_order())

    def order(self, order_id: int) -> RestingOrder | None:
        o = self._live.get(order_id)
        if o is None:
            return None
        return RestingOrder(
            o.order_id, o.account, Side(o.side), o.price, o.qty, Tif(o.tif), Stp(o.stp), o.post_only
        )

    def _best_level(self, side: int) -> tuple[int, int] | None:
        price = self._best_price(side)
        if price is None:
            return None
        return price, self._level_qty(side, price)

    def _level_qty(self, side: int, price: int) -> int:
        """Total open qty of a level; views report int64, so a larger total is an error."""
        total = sum(o.qty for o in self._levels[side][price])
        if total > INT64_MAX:
            raise OverflowError("level quantity exceeds int64")
        return total

    @staticmethod
    def _order_array(orders: Iterable[_Order]) -> np.ndarray:
        rows = [
            (o.order_id, o.account, o.price, o.qty, o.side, o.tif, o.stp, o.flags) for o in orders
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
        """Put an order at the tail of its price level."""
        self._levels[order.side].setdefault(order.price, []).append(order)
        self._live[order.order_id] = order

    def _remove(self, order: _Order) -> None:
        """Take a live order off the book (it keeps its spent id)."""
        level = self._levels[order.side][order.price]
        level.remove(order)
        if not level:
            del self._levels[order.side][order.price]
        del self._live[order.order_id]

    def _mode(self, order: _Order) -> int:
        """The order's self-trade prevention mode, the book's when it asked for DEFAULT."""
        return self._stp if order.stp == Stp.DEFAULT else order.stp

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
            Op.CANCEL: self._cancel,
            Op.AMEND: self._amend,
            Op.OPEN: self._open_session,
            Op.CLOSE: self._close_session,
            Op.REBAND: self._reband,
        }
        handler = handlers.get(c.op)
        if handler is None:
            self._reject(c, Reason.UNKNOWN_OP)
        else:
            handler(c)
        return self._events

    def _new_order(self, c: _Command) -> None:
        """LIMIT or MARKET: validate (spending the id), accept, match, then rest or cancel."""
        if c.order_id <= 0:
            return self._reject(c, Reason.INVALID_ORDER_ID)
        if c.order_id in self._used_ids:
            return self._reject(c, Reason.DUPLICATE_ORDER_ID)
        self._used_ids.add(c.order_id)  # spent from here on, whatever happens next
        market = c.op == Op.MARKET
        reason = self._market_reason(c) if market else self._limit_reason(c)
        if reason != Reason.NONE:
            return self._reject(c, reason)
        taker = _Order(
            c.order_id,
            c.account,
            c.side,
            0 if market else c.price,
            c.qty,
            c.tif,
            c.stp,
            c.flags,
            market,
        )
        self._emit_order(c, EventType.ACCEPTED, Reason.NONE, taker, c.qty, c.qty)
        if self._take(c, taker) and taker.qty > 0:
            if taker.market or taker.tif not in _RESTING_TIFS:
                self._emit_order(c, EventType.CANCELLED, Reason.IOC_REMAINDER, taker, taker.qty)
            else:
                self._rest(taker)

    def _limit_reason(self, c: _Command) -> Reason:
        """LIMIT checks after the id, in the doc's order; NONE if the order is accepted."""
        if not self._is_open:
            return Reason.MARKET_CLOSED
        if c.side not in _SIDES:
            return Reason.INVALID_SIDE
        if c.tif not in _LIMIT_TIFS:
            return Reason.INVALID_TIF
        if c.stp not in _STPS:
            return Reason.INVALID_STP
        post_only = bool(c.flags & _POST_ONLY)
        if c.flags & ~_POST_ONLY or (post_only and c.tif not in _RESTING_TIFS):
            return Reason.INVALID_FLAGS
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        if not self._low <= c.price <= self._high:
            return Reason.PRICE_OUT_OF_BAND
        if post_only and self._would_take(c.side, c.price):
            return Reason.POST_ONLY_WOULD_TAKE
        if c.tif == Tif.FOK and not self._fillable(c, market=False):
            return Reason.FOK_NOT_FILLABLE
        return Reason.NONE

    def _market_reason(self, c: _Command) -> Reason:
        """MARKET checks after the id, in the doc's order; the price field is ignored."""
        if not self._is_open:
            return Reason.MARKET_CLOSED
        if c.side not in _SIDES:
            return Reason.INVALID_SIDE
        if c.tif not in _MARKET_TIFS:
            return Reason.INVALID_TIF
        if c.stp not in _STPS:
            return Reason.INVALID_STP
        if c.flags != 0:
            return Reason.INVALID_FLAGS
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        if not self._levels[_opposite(c.side)]:
            return Reason.NO_LIQUIDITY
        if c.tif == Tif.FOK and not self._fillable(c, market=True):
            return Reason.FOK_NOT_FILLABLE
        return Reason.NONE

    def _quantity_reason(self, qty: int) -> Reason:
        """Shared by new orders and amends: positive, whole lots, not above max_qty."""
        if qty <= 0 or qty % self._lot_size:
            return Reason.INVALID_QUANTITY
        if qty > self.max_qty:
            return Reason.QUANTITY_TOO_LARGE
        return Reason.NONE

    def _fillable(self, c: _Command, market: bool) -> bool:
        """FOK rule: could the order fill completely right now, given its STP mode?"""
        mode = self._stp if c.stp == Stp.DEFAULT else c.stp
        side = _opposite(c.side)
        total = 0
        for price in self._prices(side):
            if not market and not self._crosses(c.side, c.price, price):
                break
            for maker in self._levels[side][price]:
                if total >= c.qty:
                    return True
                if maker.account == c.account and mode != Stp.NONE:
                    if mode == Stp.CANCEL_OLDEST:
                        continue  # it would be cancelled, not traded with
                    return False  # STP would stop or shrink the taker here
                total += maker.qty
        return total >= c.qty

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
        """One fill at the maker's price; a fully filled maker leaves the book."""
        qty = min(taker.qty, maker.qty)
        taker.qty -= qty
        maker.qty -= qty
        self._emit(
            c,
            EventType.TRADE,
            Reason.NONE,
            taker.order_id,
            taker.account,
            taker.side,
            maker.price,
            qty,
            taker.qty,
            maker.order_id,
            maker.account,
            maker.qty,
        )
        if maker.qty == 0:
            self._remove(maker)

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
        # DECREMENT: both shrink by the smaller open quantity; an emptied one is cancelled.
        d = min(taker.qty, maker.qty)
        if maker.qty > d:
            maker.qty -= d
            self._emit_order(c, EventType.AMENDED, stp, maker, maker.qty, maker.qty)
        else:
            self._emit_order(c, EventType.CANCELLED, stp, maker, maker.qty)
            self._remove(maker)
        if taker.qty > d:
            taker.qty -= d
            self._emit_order(c, EventType.AMENDED, stp, taker, taker.qty, taker.qty)
            return True
        self._emit_order(c, EventType.CANCELLED, stp, taker, taker.qty)
        return False

    def _cancel(self, c: _Command) -> None:
        """CANCEL by the owner; allowed in and out of session."""
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
        if not self._is_open:
            return Reason.MARKET_CLOSED
        reason = self._quantity_reason(c.qty)
        if reason != Reason.NONE:
            return reason
        if not self._low <= c.price <= self._high:
            return Reason.PRICE_OUT_OF_BAND
        if o.post_only and c.price != o.price and self._would_take(o.side, c.price):
            return Reason.POST_ONLY_WOULD_TAKE
        return Reason.NONE

    def _amend(self, c: _Command) -> None:
        """Shrink in place (keeps priority), or re-enter as a taker at the new price/qty."""
        o = self._live.get(c.order_id)
        if o is None:
            return self._reject(c, Reason.UNKNOWN_ORDER)
        reason = self._amend_reason(c, o)
        if reason != Reason.NONE:
            return self._reject(c, reason)
        if c.price == o.price and c.qty <= o.qty:
            o.qty = c.qty
            self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
            return
        self._remove(o)
        o.price, o.qty = c.price, c.qty
        self._emit_order(c, EventType.AMENDED, Reason.NONE, o, o.qty, o.qty)
        if self._take(c, o) and o.qty > 0:
            self._rest(o)  # only GTC and DAY orders rest, so it rests again

    def _close_session(self, c: _Command) -> None:
        """CLOSE: expire DAY orders in book order, then CLOSED."""
        if not self._is_open:
            return self._reject(c, Reason.SESSION_STATE)
        for o in self._book_order():
            if o.tif == Tif.DAY:
                self._remove(o)
                self._emit_order(c, EventType.EXPIRED, Reason.NONE, o, o.qty)
        self._is_open = False
        self._emit(c, EventType.CLOSED)

    def _open_session(self, c: _Command) -> None:
        """OPEN: forget the spent ids of finished orders (live ones stay taken)."""
        if self._is_open:
            return self._reject(c, Reason.SESSION_STATE)
        self._used_ids = set(self._live)
        self._is_open = True
        self._emit(c, EventType.OPENED)

    def _reband(self, c: _Command) -> None:
        """REBAND(low=price, high=qty): cancel orders the new band or max_qty excludes."""
        low, high = c.price, c.qty
        if not _band_is_valid(low, high):
            return self._reject(c, Reason.INVALID_BAND)
        for o in self._book_order():
            if not low <= o.price <= high:
                self._remove(o)
                self._emit_order(c, EventType.CANCELLED, Reason.PRICE_OUT_OF_BAND, o, o.qty)
        new_max_qty = INT64_MAX // high
        for o in self._book_order():
            if o.qty > new_max_qty:
                self._remove(o)
                self._emit_order(c, EventType.CANCELLED, Reason.QUANTITY_TOO_LARGE, o, o.qty)
        self._low, self._high = low, high
        self._emit(c, EventType.REBANDED, price=low, qty=high)
