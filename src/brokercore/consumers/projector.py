"""The projector: the engine's ``events`` turned into the read model and pushed to clients.

One Postgres transaction per batch of Kafka messages writes ``read_model`` (our orders
with their fills and a numbered ORDER_UPDATE per change, our users' positions, every
resting order and every trade for market data) *and* the consumer's next offsets, so a
batch is projected entirely or not at all and a re-delivered message is skipped. Trades
are unique by id, a second guard: a trade already in ``read_model.trades`` changes
nothing again.

An ORDER_UPDATE is an order's state after an engine command, never in the middle of
one: the events of one command (consecutive in its shard's stream, see
``_starts_command``) change an order as often as they like, and make one update, with
its final state, when the command ends. A market order that fills shows FILLED, not OPEN
first; a resting order filled by three later commands shows three updates. (A command
whose events straddle two messages, as only a transaction of over 8,192 events makes,
and that two batches apply, shows one more update, where the first batch ended.)

The trading day (docs/engine.md): a waiting stop is TRIGGER_PENDING until its TRIGGERED
(then OPEN, and it matches like a new order); an uncross's trades fill both orders and
its AMENDED makes a waiting market order a limit at the opening price. The market data
follows the engine's views at command boundaries: ``book_orders`` holds each order's
shown part (an iceberg's current peak: a maker's trades take it down, and at 0 the next
peak is shown; a taker that rests, or an order an uncross filled in part, shows
min(disclosed, open)) and the market orders waiting for an uncross (no price);
``phases`` holds each symbol's phase from the session events, and in PRE_OPEN the BOOK
message carries the indicative opening, recomputed whenever the book changes.

Like settlement, it loads the rows a batch touches, applies the events in memory (the
same reading of each event as ``brokercore.consumers.settlement``) and writes the rows back with a
few set-based statements, pipelined, so a batch costs a handful of round trips whatever
its size. Batches are serialised by a transaction-level advisory lock on the
ORDER_UPDATEs' sequence, so even with several projector processes (each owning some
partitions) the ORDER_UPDATE ids (which clients resume from) become visible in the order
they were drawn; the lock also makes the batch the sequence's only user, so it draws its
ids as one block (its next value read with the rows, moved once by the writes).

After the commit, Redis: the caches of the users whose read model changed are
invalidated, then each ORDER_UPDATE goes to its user's channel, each trade and the new
book of each symbol that changed to the market data channels, the book is stored
under ``{prefix}md:{symbol}`` (the query service's fast path) and, last, the batch's
next offsets under ``channels.projected_key`` (the notifier tells of an event once they
have passed it, so that a client gets an order's update before the notification). A
partition's offset there only moves forward: when partitions change hands between
projector processes, the one that lost a partition may publish its last batch after the
new owner published later ones.
Redis is an accelerator here: an error is logged and the projector goes on;
invalidations and book keys that failed are written again after the next batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
import redis

from brokercore.broker.market import MarketInstrument, load_market
from brokercore.broker.money import average_fill_price, average_price, rupees
from brokercore.broker.orders import END_STATUS, OPEN_STATUSES, event_time, trade_id
from brokercore.consumers.pg_consumer import Message, claim_offsets, run_pg_consumer, store_offsets
from brokercore.engine.records import EventType, Op, Phase, Reason, Side
from brokercore.kafka.messages import NEW_ORDER_OPS, STOP_OPS, Event
from brokercore.read.cache import Invalidator
from brokercore.read.candles import (
    AUCTION_SQL,
    DEPTH_LEVELS,
    DEPTH_SQL,
    LAST_PRICE_SQL,
    PHASES_SQL,
    book_update,
)
from brokercore.realtime.channels import (
    BookUpdate,
    OrderUpdate,
    TradeTick,
    book_channel,
    encode_message,
    md_key,
    projected_key,
    trades_channel,
    user_channel,
)

__all__ = ["ProjectorConsumer", "ProjectorStats", "Publication", "run_projector"]

log = logging.getLogger("brokercore.consumers.projector")


@dataclass
class Publication:
    """What a committed batch publishes on Redis (and the caches it invalidates there)."""

    users: set[str] = field(default_factory=set)  # caches to invalidate
    updates: list[tuple[str, bytes]] = field(default_factory=list)  # ORDER_UPDATEs, encoded
    ticks: list[TradeTick] = field(default_factory=list)
    books: dict[str, BookUpdate] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next


@dataclass
class ProjectorStats:
    """What one or more batches did; counts add up with ``+`` (``push`` does not: it is
    one batch's, for ``committed``)."""

    messages: int = 0  # applied
    skipped: int = 0  # re-delivered, below the stored offset
    events: int = 0
    updates: int = 0  # ORDER_UPDATEs (read_model.order_updates rows)
    trades: int = 0
    push: Publication | None = field(default=None, repr=False, compare=False)

    def __add__(self, other: ProjectorStats) -> ProjectorStats:
        return ProjectorStats(
            *(
                getattr(self, f.name) + getattr(other, f.name)
                for f in fields(self)
                if f.name != "push"
            )
        )


_ENDED_BY = (
    EventType.REJECTED,
    EventType.OPENED,
    EventType.CLOSED,
    EventType.REBANDED,
    EventType.PRE_OPENED,
    EventType.HALTED,
)

_PHASE_OF = {
    EventType.OPENED: Phase.OPEN,
    EventType.PRE_OPENED: Phase.PRE_OPEN,
    EventType.HALTED: Phase.HALTED,
    EventType.CLOSED: Phase.CLOSED,
}
"""The phase a book is in after each session event (an UNCROSSED is followed by the
uncross's OPENED)."""


def _starts_command(e: Event, previous: Event | None) -> bool:
    """Whether ``e`` begins an engine command, ``previous`` being the event before it of
    the same symbol (docs/engine.md). A book applies one command at a time, so the events
    of a command are consecutive and begin with: the new order's ACCEPTED, a REJECTED
    (a command's only event), a cancel's or an open's only event, an amend's AMENDED of
    its own order (a self-trade's AMENDED says SELF_TRADE), or the first event of a close,
    re-band or uncross, which follows a command of another op or one ended by its last
    event. An uncross's OPENED is not its last: the stops its trades reached enter after
    it, and a stop's TRIGGERED goes on the command that triggered it."""
    return (
        previous is None
        or previous.op != e.op
        or (previous.type in _ENDED_BY and previous.op != Op.UNCROSS)
        or e.type in (EventType.ACCEPTED, EventType.REJECTED)
        or e.op in (Op.CANCEL, Op.OPEN)
        or (e.type == EventType.AMENDED and e.op == Op.AMEND and e.reason == Reason.NONE)
    )


# --- the rows a batch works on, in memory -------------------------------------------


@dataclass
class _Order:
    """A read_model.orders row (new ones start from the OMS's order, PENDING)."""

    order_id: int
    user_id: str
    account_id: int
    symbol: str
    side: str
    type: str
    time_in_force: str
    created_at: datetime
    trigger_price: int | None  # paise, a stop's (the OMS's, amends included)
    disclosed_qty: int  # an iceberg's disclosed quantity (the OMS's), 0: none
    price: int | None
    quantity: int
    filled_quantity: int
    filled_notional: int
    status: str
    reject_reason: str | None
    updated_at: datetime
    last_update_id: int
    stored: bool  # a read_model.orders row exists (the writes update it; else insert)
    new_fills: list[dict[str, object]] = field(default_factory=list)
    changed: bool = False


@dataclass
class _Position:
    quantity: int = 0
    avg_price: Decimal = Decimal(0)
    changed: bool = False


@dataclass
class _Resting:
    """A read_model.book_orders row (price None: a market order waiting for an uncross)."""

    symbol: str
    side: str
    price: int | None
    open_quantity: int
    shown_quantity: int
    disclosed_quantity: int = 0  # an iceberg's peak, 0: a plain order

    def show(self) -> None:
        """The next peak of an iceberg (a plain order shows all that is open)."""
        d = self.disclosed_quantity
        self.shown_quantity = min(d, self.open_quantity) if d else self.open_quantity


@dataclass
class _Batch:
    orders: dict[int, _Order]
    positions: dict[tuple[str, str], _Position]
    book: dict[int, _Resting]
    known_trades: set[str]
    next_update_id: int  # the ORDER_UPDATEs' sequence's next value
    book_written: set[int] = field(default_factory=set)  # upserted, or deleted if gone
    symbols: set[str] = field(default_factory=set)  # whose market data changed
    last_prices: dict[str, int] = field(default_factory=dict)  # of the batch's trades
    trades: list[tuple[object, ...]] = field(default_factory=list)  # rows to insert
    updates: list[tuple[_Order, OrderUpdate]] = field(default_factory=list)  # seq 0 yet
    push: Publication = field(default_factory=Publication)
    # per symbol, the orders its command in progress changed (and its Kafka timestamp)
    commands: dict[str, dict[int, tuple[_Order, int]]] = field(default_factory=dict)
    # per symbol, the order matching in its command in progress (none in an auction)
    takers: dict[str, int] = field(default_factory=dict)
    phases: dict[str, tuple[str, int, datetime]] = field(default_factory=dict)  # to write


_LOAD_ORDERS = """
SELECT o.order_id, a.user_id, o.account_id, o.symbol, o.side, o.type, o.time_in_force,
       o.created_at, o.trigger_price, o.disclosed_qty,
       CASE WHEN r.order_id IS NULL THEN o.price ELSE r.price END,
       coalesce(r.quantity, o.quantity), coalesce(r.filled_quantity, 0),
       coalesce(r.filled_notional, 0), coalesce(r.status, 'PENDING'), r.reject_reason,
       coalesce(r.updated_at, o.created_at), coalesce(r.last_update_id, 0),
       r.order_id IS NOT NULL
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
  LEFT JOIN read_model.orders r ON r.order_id = o.order_id
 WHERE o.order_id = ANY(%s)"""

# The writes: one statement per table whatever the batch's size, its rows as arrays
# (one per column, ``_columns``; sent binary, which psycopg dumps without escaping, and
# numbers as text, which it dumps 4x faster than binary numerics), so neither psycopg nor
# Postgres pays per row.
_UPDATES_SEQUENCE = "read_model.order_updates_update_id_seq"

# An order row's columns that events change (the ones an update writes), then the others.
_CHANGING = """order_id, price, quantity, filled_quantity, filled_notional, avg_price, status,
    reject_reason, fills, updated_at, last_update_id, trigger_price, disclosed_qty"""
_CHANGING_ARRAYS = """%b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
    %b::text[]::numeric[], %b::text[], %b::text[], %b::text[]::jsonb[], %b::timestamptz[],
    %b::bigint[], %b::bigint[], %b::bigint[]"""
_CHANGING_COUNT = _CHANGING.count(",") + 1
_FIXED = "user_id, account_id, symbol, side, type, time_in_force, created_at"
_ORDER_WIDTH = _CHANGING_COUNT + _FIXED.count(",") + 1
_FIXED_ARRAYS = (
    "%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[]"
)

_INSERT_ORDERS = f"""
INSERT INTO read_model.orders ({_CHANGING}, {_FIXED})
SELECT * FROM unnest({_CHANGING_ARRAYS}, {_FIXED_ARRAYS})"""

_UPDATE_ORDERS = f"""
UPDATE read_model.orders o SET price = u.price, quantity = u.quantity,
    filled_quantity = u.filled_quantity, filled_notional = u.filled_notional,
    avg_price = u.avg_price, status = u.status, reject_reason = u.reject_reason,
    fills = o.fills || u.fills, updated_at = u.updated_at, last_update_id = u.last_update_id,
    trigger_price = u.trigger_price, disclosed_qty = u.disclosed_qty
  FROM unnest({_CHANGING_ARRAYS}) AS u ({_CHANGING})
 WHERE o.order_id = u.order_id"""

_WRITE_UPDATES = """
INSERT INTO read_model.order_updates (update_id, user_id, order_id, payload)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[]::jsonb[])"""

_WRITE_POSITIONS = """
INSERT INTO read_model.positions (user_id, symbol, quantity, avg_price)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[]::numeric[])
ON CONFLICT (user_id, symbol) DO UPDATE SET quantity = EXCLUDED.quantity,
    avg_price = EXCLUDED.avg_price, updated_at = now()"""

_WRITE_BOOK = """
INSERT INTO read_model.book_orders (order_id, symbol, side, price, open_quantity,
    shown_quantity, disclosed_quantity)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
    %b::bigint[], %b::bigint[])
ON CONFLICT (order_id) DO UPDATE SET price = EXCLUDED.price,
    open_quantity = EXCLUDED.open_quantity, shown_quantity = EXCLUDED.shown_quantity,
    disclosed_quantity = EXCLUDED.disclosed_quantity"""

_WRITE_PHASES = """
INSERT INTO read_model.phases (symbol, phase, seq, changed_at)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::timestamptz[])
ON CONFLICT (symbol) DO UPDATE SET phase = EXCLUDED.phase, seq = EXCLUDED.seq,
    changed_at = EXCLUDED.changed_at"""

_WRITE_TRADES = """
INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, executed_at)
SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
    %b::timestamptz[])
ON CONFLICT DO NOTHING"""


# The books of the symbols whose market data changed: DEPTH_SQL and LAST_PRICE_SQL for
# all of them in one statement each (a symbol that traded in the batch has its last price
# from the batch); PHASES_SQL and AUCTION_SQL take the symbols as they are.
_BOOKS_SQL = f"""
SELECT s.symbol, d.* FROM unnest(%(symbols)s::text[]) AS s (symbol)
CROSS JOIN LATERAL ({DEPTH_SQL.replace("%(symbol)s", "s.symbol")}) AS d"""

_LAST_PRICES_SQL = f"""
SELECT s.symbol, ({LAST_PRICE_SQL.replace("%(symbol)s", "s.symbol")})
  FROM unnest(%(symbols)s::text[]) AS s (symbol)"""

_PRICED = ("LIMIT", "STOP_LIMIT")  # order types whose price is a limit

_fills = msgspec.json.Encoder().encode


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _order_row(o: _Order) -> tuple[object, ...]:
    """The order's row, ``_CHANGING`` then ``_FIXED`` (its fills: the new ones)."""
    return (
        o.order_id,
        o.price,
        o.quantity,
        o.filled_quantity,
        o.filled_notional,
        _text(average_fill_price(o.filled_notional, o.filled_quantity)),
        o.status,
        o.reject_reason,
        _fills(o.new_fills).decode(),
        o.updated_at,
        o.last_update_id,
        o.trigger_price,
        o.disclosed_qty,
        o.user_id,
        o.account_id,
        o.symbol,
        o.side,
        o.type,
        o.time_in_force,
        o.created_at,
    )


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows as one list per column (the parameters of an ``unnest`` statement)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


_ADVANCE = """
for i = 1, #ARGV, 2 do
  local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > stored then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""
"""The projected offsets (KEYS[1], a hash) moved to ARGV's (partition, next offset)
pairs, each only forward."""


class ProjectorConsumer:
    """Projects batches of ``events`` messages for one consumer of one topic."""

    def __init__(
        self,
        market: Mapping[str, MarketInstrument],
        client: redis.Redis,
        redis_prefix: str,
        topic: str = "events",
        consumer: str = "projector",
    ):
        self.market = market
        self.redis = client
        self.prefix = redis_prefix
        self.topic = topic
        self.consumer = consumer
        self.invalidate = Invalidator(client, redis_prefix)
        self._advance = client.register_script(_ADVANCE)
        self.pending_books: dict[str, BookUpdate] = {}  # md keys not yet stored

    new_stats = ProjectorStats

    def apply(self, conn: psycopg.Connection, messages: Sequence[Message]) -> ProjectorStats:
        """Project the messages (in their order) and store the next offsets, in one
        transaction on ``conn``. Messages below the stored offsets are skipped; the
        returned stats carry what ``committed`` pushes."""
        stats = ProjectorStats()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_UPDATES_SEQUENCE,))
            fresh, offsets = claim_offsets(conn, self.consumer, self.topic, messages)
            stats.skipped = len(messages) - len(fresh)
            stats.messages = len(fresh)
            stats.events = sum(len(m.batch.events) for m in fresh)
            events = [(e, m.timestamp_ms) for m in fresh for e in m.batch.events]
            if any(e.order_id > 0 or e.type in _PHASE_OF for e, _ in events):
                batch = self._load(conn, [e for e, _ in events if e.order_id > 0])
                previous: dict[str, Event] = {}
                for event, event_time_ms in events:
                    if _starts_command(event, previous.get(event.symbol)):
                        self._command_done(batch, event.symbol)
                    previous[event.symbol] = event
                    if event.order_id > 0:
                        self._event(batch, event, event_time_ms)
                    elif event.type in _PHASE_OF:
                        phase = _PHASE_OF[event.type].name
                        batch.phases[event.symbol] = (phase, event.seq, event_time(event.ts))
                        batch.symbols.add(event.symbol)
                for symbol in list(batch.commands):
                    self._command_done(batch, symbol)
                self._write(conn, batch)
                stats.updates, stats.trades = len(batch.updates), len(batch.trades)
                stats.push = batch.push
            if offsets:
                stats.push = stats.push or Publication()
                stats.push.offsets = offsets
            store_offsets(conn, self.consumer, self.topic, offsets)
        return stats

    def committed(self, stats: ProjectorStats) -> None:
        """Invalidate the changed users' caches, then publish the batch's messages, store
        the new books and, last, the offsets projected (one pipeline). Errors are
        logged, never raised."""
        push = stats.push or Publication()
        self.invalidate(push.users)
        self.pending_books.update(push.books)
        if not (push.updates or push.ticks or self.pending_books or push.offsets):
            return
        pipe = self.redis.pipeline(transaction=False)
        for user, update in push.updates:
            pipe.publish(user_channel(self.prefix, user), update)
        for tick in push.ticks:
            pipe.publish(trades_channel(self.prefix, tick.symbol), encode_message(tick))
        for symbol, book in push.books.items():
            pipe.publish(book_channel(self.prefix, symbol), encode_message(book))
        for symbol, book in self.pending_books.items():
            pipe.set(md_key(self.prefix, symbol), encode_message(book))
        if push.offsets:
            self._advance(
                keys=[projected_key(self.prefix, self.topic)],
                args=[x for p, o in sorted(push.offsets.items()) for x in (p, o)],
                client=pipe,
            )
        try:
            pipe.execute()
        except redis.RedisError as e:
            log.warning(
                "publishing %d order updates, %d trades and %d books failed (%s); "
                "the books are stored again after the next batch",
                len(push.updates),
                len(push.ticks),
                len(push.books),
                e,
            )
            return
        self.pending_books.clear()

    @staticmethod
    def describe(s: ProjectorStats) -> str:
        return (
            f"{s.messages} messages, {s.events} events, {s.updates} order updates, "
            f"{s.trades} trades, {s.skipped} re-delivered skipped"
        )

    # --- loading ---------------------------------------------------------------------------

    @staticmethod
    def _load(conn: psycopg.Connection, events: list[Event]) -> _Batch:
        """The batch's rows, read in one round trip."""
        ids = sorted({i for e in events for i in (e.order_id, e.other_id) if i > 0})
        trades = sorted({trade_id(e) for e in events if e.type == EventType.TRADE})
        with conn.pipeline():
            orders = conn.execute(_LOAD_ORDERS, (ids,))
            book = conn.execute(
                "SELECT order_id, symbol, side, price, open_quantity, shown_quantity, "
                "disclosed_quantity FROM read_model.book_orders WHERE order_id = ANY(%s)",
                (ids,),
            )
            known = conn.execute(
                "SELECT trade_id FROM read_model.trades WHERE trade_id = ANY(%s)", (trades,)
            )
            positions = conn.execute(
                "SELECT p.user_id, p.symbol, p.quantity, p.avg_price FROM orders o "
                "JOIN accounts a ON a.account_id = o.account_id JOIN read_model.positions p "
                "ON p.user_id = a.user_id AND p.symbol = o.symbol WHERE o.order_id = ANY(%s)",
                (ids,),
            )
            sequence = conn.execute(
                "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END "
                f"FROM {_UPDATES_SEQUENCE}"
            )
            return _Batch(
                {row[0]: _Order(*row) for row in orders.fetchall()},
                {(u, s): _Position(q, p) for u, s, q, p in positions.fetchall()},
                {i: _Resting(*rest) for i, *rest in book.fetchall()},
                {t for (t,) in known.fetchall()},
                sequence.fetchall()[0][0],
            )

    # --- one event ---------------------------------------------------------------------------

    def _event(self, b: _Batch, e: Event, event_time_ms: int) -> None:
        kind = e.type
        if kind == EventType.TRADE:
            tid = trade_id(e)
            if tid not in b.known_trades:
                b.known_trades.add(tid)
                self._trade(b, e, tid, event_time_ms)
            return
        order = self._ours(b, e.order_id, e.account)
        self._book_event(b, e, order)
        if order is None:
            return
        if kind == EventType.ACCEPTED:
            if order.status == "PENDING":
                order.status = "TRIGGER_PENDING" if e.op in STOP_OPS else "OPEN"
                self._changed(b, e, order, event_time_ms)
        elif kind == EventType.TRIGGERED:
            if order.status == "TRIGGER_PENDING":
                order.status = "OPEN"
                self._changed(b, e, order, event_time_ms)
        elif kind == EventType.REJECTED and e.op not in NEW_ORDER_OPS:
            return  # a refused cancel or amend: the order stays as it is
        elif kind in END_STATUS:
            if kind == EventType.REJECTED and (
                order.status != "PENDING" or e.reason == Reason.DUPLICATE_ORDER_ID
            ):
                return  # a re-sent order: the first one is the order, not this one
            if order.status in OPEN_STATUSES:
                order.status = END_STATUS[kind]
                order.reject_reason = Reason(e.reason).name if e.reason != Reason.NONE else None
                self._changed(b, e, order, event_time_ms)
        elif kind == EventType.AMENDED:
            # a market order's engine price is its cap, until an uncross makes it a limit
            if order.type in _PRICED or e.op == Op.UNCROSS:
                order.price = self._paise(order.symbol, e.price)
            order.quantity = order.filled_quantity + e.qty
            self._changed(b, e, order, event_time_ms)

    def _book_event(self, b: _Batch, e: Event, order: _Order | None) -> None:
        """What an order's event (not a trade) does to the book as the market sees it."""
        kind = e.type
        if kind in (EventType.ACCEPTED, EventType.TRIGGERED):
            b.takers[e.symbol] = e.order_id
            if e.op == Op.MARKET or (kind == EventType.TRIGGERED and e.price != 0):
                # a market order (it waits when the book is in PRE_OPEN) or a triggered
                # stop-limit: on the book until filled, cancelled or expired
                price = None if kind == EventType.ACCEPTED else self._paise(e.symbol, e.price)
                b.book[e.order_id] = _Resting(
                    e.symbol, Side(e.side).name, price, e.remaining, e.remaining
                )
                self._rested(b, e.order_id)
            elif kind == EventType.ACCEPTED and e.op == Op.LIMIT:
                disclosed = order.disclosed_qty if order is not None else 0
                limit = _Resting(
                    e.symbol,
                    Side(e.side).name,
                    self._paise(e.symbol, e.price),
                    e.remaining,
                    0,
                    disclosed,
                )
                limit.show()
                b.book[e.order_id] = limit
                self._rested(b, e.order_id)
        elif kind in (EventType.CANCELLED, EventType.EXPIRED):
            self._rested(b, e.order_id, 0)
        elif kind == EventType.AMENDED:
            resting = b.book.get(e.order_id)
            if resting is None:
                return  # a waiting stop
            price = self._paise(e.symbol, e.price)
            if e.reason == Reason.SELF_TRADE and b.takers.get(e.symbol) != e.order_id:
                self._made(resting, resting.open_quantity - e.remaining)  # a maker's decrement
            elif e.op == Op.AMEND and e.reason == Reason.NONE:
                b.takers[e.symbol] = e.order_id
                # an amend keeps its place (and what it shows, at most the new quantity)
                # when only the quantity went down; else it shows a new peak
                new_peak = order is not None and order.disclosed_qty != resting.disclosed_quantity
                in_place = (
                    not new_peak and price == resting.price and e.remaining <= resting.open_quantity
                )
                if new_peak and order is not None:
                    resting.disclosed_quantity = order.disclosed_qty
                resting.open_quantity = e.remaining
                if in_place:
                    resting.shown_quantity = min(resting.shown_quantity, e.remaining)
                else:
                    resting.show()
            else:  # the taker's self-trade decrement, or an uncross's market order
                resting.open_quantity = e.remaining
                resting.show()
            self._rested(b, e.order_id, e.remaining, price)

    def _trade(self, b: _Batch, e: Event, tid: str, event_time_ms: int) -> None:
        price = self._paise(e.symbol, e.price)
        when = event_time(e.ts)
        b.trades.append((tid, e.symbol, e.seq, price, e.qty, when))
        b.last_prices[e.symbol] = price  # a symbol's trades come in their order
        b.push.ticks.append(TradeTick(tid, e.symbol, rupees(price), e.qty, when.isoformat()))
        b.symbols.add(e.symbol)
        # a taker (and both orders of an uncross's auction, which has no taker) shows
        # min(disclosed, open) when it rests; a maker's trade takes its shown part down
        auction = e.symbol not in b.takers
        for order_id, remaining, maker in (
            (e.order_id, e.remaining, False),
            (e.other_id, e.other_remaining, not auction),
        ):
            resting = b.book.get(order_id)
            if resting is not None and remaining > 0:
                if maker:
                    self._made(resting, resting.open_quantity - remaining)
                else:
                    resting.open_quantity = remaining
                    resting.show()
            self._rested(b, order_id, remaining)
        fill = {"tradeId": tid, "price": rupees(price), "quantity": e.qty, "time": when.isoformat()}
        for order_id, account, remaining in (
            (e.order_id, e.account, e.remaining),
            (e.other_id, e.other_account, e.other_remaining),
        ):
            order = self._ours(b, order_id, account)
            if order is None:
                continue
            order.filled_quantity += e.qty
            order.filled_notional += price * e.qty
            order.new_fills.append(fill)
            order.status = "FILLED" if remaining == 0 else "PARTIALLY_FILLED"
            self._changed(b, e, order, event_time_ms)
            position = b.positions.setdefault((order.user_id, order.symbol), _Position())
            delta = e.qty if order.side == "BUY" else -e.qty
            position.avg_price = average_price(position.quantity, position.avg_price, delta, price)
            position.quantity += delta
            position.changed = True

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _ours(b: _Batch, order_id: int, account: int) -> _Order | None:
        """The order of ours the event names (same id *and* account), if any."""
        order = b.orders.get(order_id)
        return order if order is not None and order.account_id == account else None

    @staticmethod
    def _made(resting: _Resting, quantity: int) -> None:
        """A resting order gave up ``quantity`` as a maker (a trade or a self-trade
        decrement, at most its shown part): the next peak shows when this one is gone."""
        resting.open_quantity -= quantity
        resting.shown_quantity -= quantity
        if resting.shown_quantity <= 0:
            resting.show()

    @staticmethod
    def _rested(
        b: _Batch, order_id: int, open_quantity: int | None = None, price: int | None = None
    ) -> None:
        """A resting order changed: new open quantity (0 = gone) and price. An order that
        is not resting (a market order) is left alone."""
        resting = b.book.get(order_id)
        if resting is None:
            return
        if open_quantity == 0:
            del b.book[order_id]
        else:
            if open_quantity is not None:
                resting.open_quantity = open_quantity
            if price is not None:
                resting.price = price
        b.book_written.add(order_id)
        b.symbols.add(resting.symbol)

    def _paise(self, symbol: str, ticks: int) -> int:
        return self.market[symbol].ticks_to_paise(ticks)

    @staticmethod
    def _changed(b: _Batch, e: Event, order: _Order, event_time_ms: int) -> None:
        """The event changed the order: it has an ORDER_UPDATE when its command ends."""
        order.updated_at = event_time(e.ts)
        order.changed = True
        b.commands.setdefault(e.symbol, {})[order.order_id] = (order, event_time_ms)
        b.push.users.add(order.user_id)

    @staticmethod
    def _command_done(b: _Batch, symbol: str) -> None:
        """The command in progress on ``symbol`` has ended: an ORDER_UPDATE (seq set
        later) with the state it left of each order it changed; its taker is done."""
        b.takers.pop(symbol, None)
        for order, event_time_ms in b.commands.pop(symbol, {}).values():
            b.updates.append(
                (
                    order,
                    OrderUpdate(
                        0,
                        order.order_id,
                        order.symbol,
                        order.side,
                        order.type,
                        order.status,
                        order.quantity,
                        order.filled_quantity,
                        rupees(average_fill_price(order.filled_notional, order.filled_quantity)),
                        rupees(order.price),
                        order.reject_reason,
                        order.updated_at.isoformat(),
                        event_time_ms,
                        rupees(order.trigger_price),
                        order.disclosed_qty,
                    ),
                )
            )

    # --- writing back -----------------------------------------------------------------------------

    def _write(self, conn: psycopg.Connection, b: _Batch) -> None:
        """Number the updates from the sequence's next value, then write every row, move
        the sequence past them and read the changed books, in one round trip."""
        rows = []
        for update_id, (order, update) in enumerate(b.updates, b.next_update_id):
            message = encode_message(msgspec.structs.replace(update, seq=update_id))
            order.last_update_id = update_id
            rows.append((update_id, order.user_id, order.order_id, message.decode()))
            b.push.updates.append((order.user_id, message))
        changed = [o for _, o in sorted(b.orders.items()) if o.changed]
        stored = [_order_row(o) for o in changed if o.stored]
        new = [_order_row(o) for o in changed if not o.stored]
        positions = [
            (u, s, p.quantity, str(p.avg_price))
            for (u, s), p in sorted(b.positions.items())
            if p.changed
        ]
        book = [
            (i, r.symbol, r.side, r.price, r.open_quantity, r.shown_quantity, r.disclosed_quantity)
            for i, r in sorted(b.book.items())
            if i in b.book_written
        ]
        phases = [(symbol, *phase) for symbol, phase in sorted(b.phases.items())]
        symbols = sorted(b.symbols)
        with conn.pipeline():
            if stored:
                conn.execute(_UPDATE_ORDERS, _columns(stored, _ORDER_WIDTH)[:_CHANGING_COUNT])
            if new:
                conn.execute(_INSERT_ORDERS, _columns(new, _ORDER_WIDTH))
            if rows:
                conn.execute(_WRITE_UPDATES, _columns(rows, 4))
                conn.execute("SELECT setval(%s, %s)", (_UPDATES_SEQUENCE, rows[-1][0]))
            if positions:
                conn.execute(_WRITE_POSITIONS, _columns(positions, 4))
            gone = [i for i in sorted(b.book_written) if i not in b.book]
            if gone:
                conn.execute("DELETE FROM read_model.book_orders WHERE order_id = ANY(%s)", (gone,))
            if book:
                conn.execute(_WRITE_BOOK, _columns(book, 7))
            if b.trades:
                conn.execute(_WRITE_TRADES, _columns(b.trades, 6))
            if phases:
                conn.execute(_WRITE_PHASES, _columns(phases, 4))
            depth = conn.execute(_BOOKS_SQL, {"symbols": symbols, "levels": DEPTH_LEVELS})
            untraded = [symbol for symbol in symbols if symbol not in b.last_prices]
            older = conn.execute(_LAST_PRICES_SQL, {"symbols": untraded}) if untraded else None
            stored_phases = conn.execute(PHASES_SQL, {"symbols": symbols})
            auctions = conn.execute(AUCTION_SQL, {"symbols": symbols})
            levels: dict[str, list[tuple[str, int, int]]] = {symbol: [] for symbol in symbols}
            for symbol, side, price, quantity in depth.fetchall():
                levels[symbol].append((side, price, quantity))
            prices = dict(b.last_prices)
            prices.update(older.fetchall() if older is not None else [])
            phase_of: dict[str, str] = dict(stored_phases.fetchall())
            auction: dict[str, list[tuple[str, int | None, int]]] = {s: [] for s in symbols}
            for symbol, side, price, quantity in auctions.fetchall():
                auction[symbol].append((side, price, quantity))
            for symbol in symbols:
                b.push.books[symbol] = book_update(
                    symbol,
                    levels[symbol],
                    prices[symbol],
                    phase_of.get(symbol, Phase.OPEN.name),
                    auction[symbol],
                    band=self.market[symbol].band_paise,
                )


def run_projector(
    bootstrap: str,
    topic: str,
    database_url: str,
    market_path: str,
    redis_url: str,
    redis_prefix: str,
    stop_event: threading.Event | None = None,
    **options: Any,
) -> ProjectorStats:
    """Project ``topic`` until ``stop_event`` is set (``pgconsumer.run_pg_consumer``, whose
    keyword options pass through); returns the totals."""
    client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        projector = ProjectorConsumer(load_market(market_path), client, redis_prefix, topic)
        return run_pg_consumer(
            projector, bootstrap, database_url, "projector", stop_event, **options
        )
    finally:
        client.close()
