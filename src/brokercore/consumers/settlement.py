"""Settlement: the engine's ``events`` applied to the OMS's tables, exactly once (hop 5).

One Postgres transaction per batch of Kafka messages holds every write the batch causes
*and* the consumer's next offsets (``consumer_offsets``), so a batch is applied entirely
or not at all, and a re-delivered message (offset below the stored next offset) is
skipped. Fills are unique by ``(trade_id, side)`` and history rows by their dedupe key,
a second guard should offsets ever be lost.

The money rules are ``brokercore.broker.ledger``'s: this module loads the rows a batch touches,
applies the ledger's deltas event by event in memory, and writes the rows back once.

Locks, always in this order: the consumer's ``consumer_offsets`` rows (so two settlement
processes on one topic take turns), then accounts by id, positions by (account, symbol),
orders by id. The OMS locks an account before its position and otherwise one order row
alone, so the two can wait on each other but never in a cycle.

The trading day (docs/engine.md): a stop is TRIGGER_PENDING from its ACCEPTED to its
TRIGGERED (it holds from the start, since it may fire at any time; no money moves on
either); an auction's TRADEs are fills like any other (order_id the buy, other_id the
sell); a market order the auction turned into a limit order (AMENDED, op UNCROSS) can no
longer execute above the opening price, so a buy's hold shrinks to that price at once.
Session events (PRE_OPENED, UNCROSSED, HALTED, ...) name no order and move nothing.

A modify (brokercore.entry.modify) reserves its new terms' hold on the order besides
the old one (0014_order_modify.sql); the engine's AMENDED (op AMEND) sets the order's
open quantity and price, so the order's total becomes what filled plus that, and it
keeps only what those terms need; a REJECTED amend, or the order's end, releases the
reserve.

Events of orders that are not in ``orders`` (another broker's) are ignored; an event
that contradicts an order we know (a fill of a finished order, more than it has open,
another account) raises ``SettlementError``: the consumer stops rather than guess.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import date
from decimal import Decimal
from typing import Any, TypeAlias

import msgspec
import psycopg
import redis

from brokercore.broker.ledger import (
    AccountDelta,
    OrderDelta,
    OrderHold,
    PositionDelta,
    Settlement,
    SettlementError,
    amend,
    realised,
    release,
    reprice,
    settle_fill,
)
from brokercore.broker.market import MarketInstrument, load_market
from brokercore.broker.money import average_fill_price, average_price
from brokercore.broker.orders import END_STATUS, OPEN_STATUSES, trade_id
from brokercore.broker.risk import NO_FEES, FeeSchedule
from brokercore.consumers.pg_consumer import Message, claim_offsets, run_pg_consumer, store_offsets
from brokercore.engine.records import EventType, Op, Reason, Side
from brokercore.kafka.messages import NEW_ORDER_OPS, STOP_OPS, Event
from brokercore.read.cache import Invalidator

__all__ = ["SettlementConsumer", "BatchStats", "run_settlement"]


@dataclass
class BatchStats:
    """What one or more batches did (counts add up with ``+``)."""

    messages: int = 0  # applied
    skipped: int = 0  # re-delivered, below the stored offset
    events: int = 0
    fills: int = 0  # fill rows written (one per side of ours)
    updates: int = 0  # order history rows written

    def __add__(self, other: BatchStats) -> BatchStats:
        return BatchStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


# --- the rows a batch works on, in memory -------------------------------------------


@dataclass
class _Modify:
    """An order's modify in flight (0014_order_modify.sql): what it reserves besides the
    hold (a part of the order's blocks), the trigger to restore if the engine refuses
    it, the disclosed quantity to take if the engine amends the order."""

    cash: int
    shares: int
    undo_trigger: int | None
    disclosed: int | None


@dataclass
class _Order:
    order_id: int
    trade_date: date
    account_id: int
    symbol: str
    side: Side
    status: str
    reject_reason: str | None
    hold: OrderHold  # without the reserve of a modify in flight
    modify: _Modify | None = None  # a modify in flight
    terms: _TermsRow | None = None  # the row's terms once its modify is settled
    changed: bool = False


@dataclass
class _Account:
    user_id: str
    cash: int
    blocked_cash: int
    changed: bool = False


@dataclass
class _Position:
    quantity: int = 0
    blocked_quantity: int = 0
    avg_price: Decimal = Decimal(0)
    realised_pnl: Decimal = Decimal(0)
    changed: bool = False


_Payload: TypeAlias = dict[str, object]  # of an order_events row, as JSON


# The rows a batch writes, sent as one JSON array per table (``_write``): field names
# are the columns of the statement's json_to_recordset; times are µs since the epoch.


class _FillRow(msgspec.Struct):
    trade_id: str
    side: str
    order_id: int
    account_id: int
    symbol: str
    price: int
    quantity: int
    us: int


class _FeeRow(msgspec.Struct):
    trade_id: str
    side: str
    amount: int


class _HistoryRow(msgspec.Struct):
    order_id: int
    account_id: int
    status: str
    filled_quantity: int
    payload: _Payload
    dedupe_key: str
    us: int


class _AccountRow(msgspec.Struct):
    account_id: int
    cash: int
    blocked_cash: int


class _PositionRow(msgspec.Struct):
    account_id: int
    symbol: str
    quantity: int
    blocked_quantity: int
    avg_price: Decimal
    realised_pnl: Decimal


class _OrderRow(msgspec.Struct):
    trade_date: date
    order_id: int
    status: str
    reject_reason: str | None
    hold_price_ticks: int
    blocked_cash: int
    blocked_shares: int
    filled_quantity: int
    filled_notional: int
    fees: int
    avg_fill_price: Decimal | None


class _TermsRow(msgspec.Struct):
    """An order's terms once its modify is settled (None: unchanged): the engine's for
    an amend, the trigger before it for a refused one."""

    trade_date: date
    order_id: int
    quantity: int | None
    price: int | None
    disclosed: int | None
    trigger: int | None


_json = msgspec.json.Encoder().encode


@dataclass
class _Batch:
    """The locked rows of one transaction and the rows it will insert."""

    orders: dict[int, _Order]
    accounts: dict[int, _Account]
    positions: dict[tuple[int, str], _Position]
    known_fills: set[tuple[str, str]]
    fills: list[_FillRow] = field(default_factory=list)
    fee_income: list[_FeeRow] = field(default_factory=list)
    history: list[_HistoryRow] = field(default_factory=list)


class SettlementConsumer:
    """Applies batches of ``events`` messages for one consumer of one topic."""

    def __init__(
        self,
        market: Mapping[str, MarketInstrument],
        fees: FeeSchedule = NO_FEES,
        topic: str = "events",
        consumer: str = "settlement",
        invalidate: Callable[[set[str]], object] | None = None,
    ):
        self.market = market
        self.fees = fees
        self.topic = topic
        self.consumer = consumer
        self.invalidate = invalidate  # of the users' read caches, after a commit
        self._touched: set[str] = set()

    def apply(self, conn: psycopg.Connection, messages: Sequence[Message]) -> BatchStats:
        """Apply the messages (in their order) and store the next offsets, in one
        transaction on ``conn`` (autocommit or idle, so that it commits here; inside a
        caller's transaction it is a savepoint). Messages below the stored offsets are
        skipped."""
        stats = BatchStats()
        with conn.transaction():
            fresh, offsets = claim_offsets(conn, self.consumer, self.topic, messages)
            stats.skipped = len(messages) - len(fresh)
            stats.messages = len(fresh)
            events = [(m.batch.shard, e) for m in fresh for e in m.batch.events]
            stats.events = len(events)
            if events:
                batch = self._load(conn, [e for _, e in events])
                for shard, event in events:
                    self._event(batch, shard, event)
                self._write(conn, batch)
                self._touched.update(a.user_id for a in batch.accounts.values() if a.changed)
                stats.fills, stats.updates = len(batch.fills), len(batch.history)
            store_offsets(conn, self.consumer, self.topic, offsets)
        return stats

    new_stats = BatchStats

    def committed(self, stats: BatchStats) -> None:
        """Invalidate the read caches of the users whose accounts changed."""
        if self.invalidate is not None and self._touched:
            self.invalidate(self._touched)
        self._touched = set()

    @staticmethod
    def describe(s: BatchStats) -> str:
        return (
            f"{s.messages} messages, {s.events} events, {s.fills} fills, "
            f"{s.updates} order updates, {s.skipped} re-delivered skipped"
        )

    # --- loading and locking -------------------------------------------------------------

    def _load(self, conn: psycopg.Connection, events: list[Event]) -> _Batch:
        ids = sorted({i for e in events for i in (e.order_id, e.other_id) if i > 0})
        owners = conn.execute(
            "SELECT DISTINCT account_id, symbol FROM orders WHERE order_id = ANY(%s)", (ids,)
        ).fetchall()
        accounts = {
            a: _Account(*rest)
            for a, *rest in conn.execute(
                "SELECT account_id, user_id, cash, blocked_cash FROM accounts "
                "WHERE account_id = ANY(%s) "
                "ORDER BY account_id FOR UPDATE",
                (sorted({a for a, _ in owners}),),
            )
        }
        positions = {
            (a, s): _Position(q, b, p, r)
            for a, s, q, b, p, r in conn.execute(
                "SELECT account_id, symbol, quantity, blocked_quantity, avg_price, realised_pnl "
                "FROM positions "
                "WHERE (account_id, symbol) IN (SELECT * FROM unnest(%s::bigint[], %s::text[])) "
                "ORDER BY account_id, symbol FOR UPDATE",
                ([a for a, _ in owners], [s for _, s in owners]),
            )
        }
        orders = {}
        pending = []
        for row in conn.execute(
            "SELECT order_id, trade_date, account_id, symbol, side, status, reject_reason, "
            "quantity, hold_price_ticks, blocked_cash - modify_cash, "
            "blocked_shares - modify_shares, filled_quantity, filled_notional, fees, "
            "modify_pending FROM orders WHERE order_id = ANY(%s) ORDER BY order_id FOR UPDATE",
            (ids,),
        ):
            order_id, trade_date, account_id, symbol, side, status, reason, *rest = row
            orders[order_id] = _Order(
                order_id,
                trade_date,
                account_id,
                symbol,
                Side[side],
                status,
                reason,
                OrderHold(Side[side], *rest[:7]),
            )
            if rest[7]:
                pending.append(order_id)
        if pending:  # rare: read what they reserve only then
            for order_id, *modify in conn.execute(
                "SELECT order_id, modify_cash, modify_shares, modify_undo_trigger, "
                "modify_disclosed FROM orders WHERE order_id = ANY(%s)",
                (pending,),
            ):
                orders[order_id].modify = _Modify(*modify)
        trades = sorted({trade_id(e) for e in events if e.type == EventType.TRADE})
        known = (
            set(
                conn.execute(
                    "SELECT trade_id, side FROM fills WHERE trade_id = ANY(%s)", (trades,)
                ).fetchall()
            )
            if trades
            else set()
        )
        return _Batch(orders, accounts, positions, known)

    # --- one event -------------------------------------------------------------------------

    def _event(self, batch: _Batch, shard: int, e: Event) -> None:
        kind = e.type
        if kind == EventType.TRADE:
            self._fill(batch, shard, e, e.order_id, e.account, Side(e.side), e.remaining)
            self._fill(
                batch,
                shard,
                e,
                e.other_id,
                e.other_account,
                Side.SELL if e.side == Side.BUY else Side.BUY,
                e.other_remaining,
            )
            return
        order = self._order(batch, e.order_id, e.account)
        if order is None:
            return
        if kind == EventType.ACCEPTED:
            if order.status == "PENDING":
                waits = e.op in STOP_OPS  # outside the book until its trigger is reached
                self._set_status(batch, shard, e, order, "TRIGGER_PENDING" if waits else "OPEN")
        elif kind == EventType.TRIGGERED:
            if order.status == "TRIGGER_PENDING":  # it enters the book: money moves on fills
                last: _Payload = {"last_price": self._paise(order, e.other_remaining)}
                self._set_status(batch, shard, e, order, "OPEN", last)
        elif kind == EventType.REJECTED and e.op not in NEW_ORDER_OPS:
            # a refused cancel or amend: the order stays as it is, its history says why;
            # an amend's reserve is released and its old trigger comes back
            if e.op == Op.AMEND:
                self._release_modify(batch, order)
            self._record(batch, shard, e, order, {"refused": Op(e.op).name})
        elif kind in END_STATUS:
            if kind == EventType.REJECTED and (
                order.status != "PENDING" or e.reason == Reason.DUPLICATE_ORDER_ID
            ):
                return  # a re-sent order: the first one is the order, not this one
            if order.status in OPEN_STATUSES:
                reason = Reason(e.reason).name if e.reason != Reason.NONE else None
                self._end(batch, shard, e, order, END_STATUS[kind], reason)
        elif kind == EventType.AMENDED:
            instrument = self.market[order.symbol]
            if e.op == Op.UNCROSS:  # a market order left by the auction, now a limit at e.price
                self._settle(batch, order, reprice(order.hold, e.price, instrument, self.fees))
            elif e.op == Op.AMEND and e.reason == Reason.NONE:
                self._amended(batch, order, e.price, e.qty, instrument)
            self._record(
                batch,
                shard,
                e,
                order,
                {"price": self._paise(order, e.price), "open_quantity": e.qty},
            )

    def _fill(
        self,
        batch: _Batch,
        shard: int,
        e: Event,
        order_id: int,
        account: int,
        side: Side,
        remaining: int,
    ) -> None:
        order = self._order(batch, order_id, account)
        if order is None:
            return
        tid = trade_id(e)
        if (tid, order.side.name) in batch.known_fills:
            return
        if order.side != side or order.status not in OPEN_STATUSES:
            raise SettlementError(
                f"trade {tid}: order {order_id} is a {order.side.name} "
                f"{order.status}, the event says a {side.name} fill"
            )
        instrument = self.market[order.symbol]
        settlement = settle_fill(order.hold, e.price, e.qty, instrument, self.fees)
        self._settle(batch, order, settlement)
        price = instrument.ticks_to_paise(e.price)
        batch.fills.append(
            _FillRow(
                tid,
                order.side.name,
                order.order_id,
                order.account_id,
                order.symbol,
                price,
                e.qty,
                e.ts // 1000,  # µs since the epoch, as broker.orders.event_time
            )
        )
        batch.known_fills.add((tid, order.side.name))
        if settlement.fee:
            batch.fee_income.append(_FeeRow(tid, order.side.name, settlement.fee))
        payload = {"trade_id": tid, "price": price, "quantity": e.qty, "fee": settlement.fee}
        if remaining == 0:  # nothing open: whatever it still holds goes back
            self._end(batch, shard, e, order, "FILLED", None, payload)
        else:
            self._set_status(batch, shard, e, order, "PARTIALLY_FILLED", payload)

    def _end(
        self,
        batch: _Batch,
        shard: int,
        e: Event,
        order: _Order,
        status: str,
        reason: str | None,
        payload: _Payload | None = None,
    ) -> None:
        self._release_modify(batch, order)
        self._settle(batch, order, release(order.hold))
        order.reject_reason = reason
        self._set_status(batch, shard, e, order, status, payload)

    def _settle(self, batch: _Batch, order: _Order, s: Settlement) -> None:
        """Apply the ledger's deltas to the account, the position and the order."""
        account = batch.accounts[order.account_id]
        account.cash += s.account.cash
        account.blocked_cash += s.account.blocked_cash
        account.changed = True
        d = s.position
        if d.quantity or d.blocked_quantity:
            position = batch.positions.setdefault((order.account_id, order.symbol), _Position())
            if d.quantity:
                position.realised_pnl += realised(
                    position.quantity, position.avg_price, d.quantity, d.price, s.fee
                )
                position.avg_price = average_price(
                    position.quantity, position.avg_price, d.quantity, d.price
                )
            position.quantity += d.quantity
            position.blocked_quantity += d.blocked_quantity
            position.changed = True
        order.hold = s.apply(order.hold)
        order.changed = True

    # --- modify (brokercore.entry.modify) -----------------------------------------------

    def _amended(
        self,
        batch: _Batch,
        order: _Order,
        price_ticks: int,
        open_quantity: int,
        instrument: MarketInstrument,
    ) -> None:
        """The engine amended the order to ``open_quantity`` at ``price_ticks``: its
        total is what filled plus that (a fill between the request and the amend adds to
        the asked total, as the engine did), its hold and reserve are repriced to what
        the new terms need, the rest released."""
        m = order.modify or _Modify(0, 0, None, None)
        h = order.hold
        order.hold = replace(
            h,
            quantity=h.filled_quantity + open_quantity,
            blocked_cash=h.blocked_cash + m.cash,
            blocked_shares=h.blocked_shares + m.shares,
        )
        order.modify = None  # its reserve is now a part of the hold
        self._settle(batch, order, amend(order.hold, price_ticks, instrument, self.fees))
        order.terms = _TermsRow(
            order.trade_date,
            order.order_id,
            order.hold.quantity,
            instrument.ticks_to_paise(price_ticks),
            m.disclosed,
            None,
        )

    def _release_modify(self, batch: _Batch, order: _Order) -> None:
        """A modify the engine refuses (its REJECTED, or the order's end first: the
        engine will refuse it) gives back its reserve and the old trigger."""
        m = order.modify
        if m is None:
            return
        self._settle(
            batch,
            order,
            Settlement(
                AccountDelta(blocked_cash=-m.cash),
                PositionDelta(blocked_quantity=-m.shares),
                OrderDelta(),
            ),
        )
        order.modify = None
        order.terms = _TermsRow(order.trade_date, order.order_id, None, None, None, m.undo_trigger)

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _order(batch: _Batch, order_id: int, account: int) -> _Order | None:
        order = batch.orders.get(order_id)
        if order is not None and order.account_id != account:
            raise SettlementError(
                f"order {order_id} belongs to account {order.account_id}, the event says {account}"
            )
        return order

    def _paise(self, order: _Order, ticks: int) -> int:
        return self.market[order.symbol].ticks_to_paise(ticks)

    def _set_status(
        self,
        batch: _Batch,
        shard: int,
        e: Event,
        order: _Order,
        status: str,
        payload: _Payload | None = None,
    ) -> None:
        order.status = status
        order.changed = True
        self._record(batch, shard, e, order, payload or {})

    @staticmethod
    def _record(batch: _Batch, shard: int, e: Event, order: _Order, payload: _Payload) -> None:
        body = {
            "event": EventType(e.type).name,
            "shard": shard,
            "shard_seq": e.shard_seq,
            **({"reason": Reason(e.reason).name} if e.reason else {}),
            **payload,
        }
        batch.history.append(
            _HistoryRow(
                order.order_id,
                order.account_id,
                order.status,
                order.hold.filled_quantity,
                body,
                f"{shard}:{e.shard_seq}:{order.order_id}",
                e.ts // 1000,
            )
        )

    # --- writing back ------------------------------------------------------------------------

    @staticmethod
    def _write(conn: psycopg.Connection, batch: _Batch) -> None:
        """One statement per table for the whole batch, its rows one JSON array, the
        statements pipelined: a statement per row cost ~100 µs per event on each side."""
        h = [o for _, o in sorted(batch.orders.items()) if o.changed]
        terms = [o.terms for o in h if o.terms is not None]
        writes: list[tuple[str, Sequence[msgspec.Struct]]] = [
            (
                _UPDATE_ACCOUNTS,
                [
                    _AccountRow(i, a.cash, a.blocked_cash)
                    for i, a in sorted(batch.accounts.items())
                    if a.changed
                ],
            ),
            (
                _UPSERT_POSITIONS,
                [
                    _PositionRow(a, s, p.quantity, p.blocked_quantity, p.avg_price, p.realised_pnl)
                    for (a, s), p in sorted(batch.positions.items())
                    if p.changed
                ],
            ),
            (_UPDATE_TERMS, terms),  # first: a fill may exceed the old quantity
            (_UPDATE_ORDERS, [_order_row(o) for o in h]),
            (_INSERT_FILLS, batch.fills),
            (_INSERT_FEES, batch.fee_income),
            (_INSERT_HISTORY, batch.history),
        ]
        with conn.pipeline():
            for statement, rows in writes:
                if rows:
                    conn.execute(statement, (_json(rows).decode(),))


def _order_row(o: _Order) -> _OrderRow:
    h, m = o.hold, o.modify
    return _OrderRow(
        o.trade_date,
        o.order_id,
        o.status,
        o.reject_reason,
        h.hold_price_ticks,
        h.blocked_cash + (m.cash if m else 0),
        h.blocked_shares + (m.shares if m else 0),
        h.filled_quantity,
        h.filled_notional,
        h.fees,
        average_fill_price(h.filled_notional, h.filled_quantity),
    )


_OCCURRED = "timestamptz 'epoch' + v.us * interval '1 microsecond'"
_UPDATE_ACCOUNTS = (
    "UPDATE accounts a SET cash = v.cash, blocked_cash = v.blocked_cash, updated_at = now() "
    "FROM json_to_recordset(%s::json) AS v (account_id bigint, cash bigint, "
    "blocked_cash bigint) WHERE a.account_id = v.account_id"
)
_UPSERT_POSITIONS = (
    "INSERT INTO positions (account_id, symbol, quantity, blocked_quantity, avg_price, "
    "realised_pnl) SELECT * FROM json_to_recordset(%s::json) AS v (account_id bigint, "
    "symbol text, quantity bigint, blocked_quantity bigint, avg_price numeric, "
    "realised_pnl numeric) "
    "ON CONFLICT (account_id, symbol) DO UPDATE SET quantity = EXCLUDED.quantity, "
    "blocked_quantity = EXCLUDED.blocked_quantity, avg_price = EXCLUDED.avg_price, "
    "realised_pnl = EXCLUDED.realised_pnl, updated_at = now()"
)
_UPDATE_ORDERS = (
    "UPDATE orders o SET status = v.status, reject_reason = v.reject_reason, "
    "hold_price_ticks = v.hold_price_ticks, "
    "blocked_cash = v.blocked_cash, blocked_shares = v.blocked_shares, "
    "hold_amount = v.blocked_cash + v.blocked_shares, filled_quantity = v.filled_quantity, "
    "filled_notional = v.filled_notional, fees = v.fees, avg_fill_price = v.avg_fill_price, "
    "updated_at = now() FROM json_to_recordset(%s::json) AS v (trade_date date, "
    "order_id bigint, status text, reject_reason text, hold_price_ticks bigint, "
    "blocked_cash bigint, "
    "blocked_shares bigint, filled_quantity bigint, filled_notional bigint, fees bigint, "
    "avg_fill_price numeric) WHERE o.trade_date = v.trade_date AND o.order_id = v.order_id"
)
_UPDATE_TERMS = (
    "UPDATE orders o SET quantity = coalesce(v.quantity, o.quantity), "
    "price = coalesce(v.price, o.price), disclosed_qty = coalesce(v.disclosed, o.disclosed_qty), "
    "trigger_price = coalesce(v.trigger, o.trigger_price), modify_pending = false, "
    "modify_cash = 0, modify_shares = 0, modify_undo_trigger = NULL, "
    "modify_disclosed = NULL FROM json_to_recordset(%s::json) AS v (trade_date date, "
    "order_id bigint, quantity bigint, price bigint, disclosed bigint, trigger bigint) "
    "WHERE o.trade_date = v.trade_date AND o.order_id = v.order_id"
)
_INSERT_FILLS = (
    "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, quantity, "
    "executed_at) SELECT v.trade_id, v.side, v.order_id, v.account_id, v.symbol, v.price, "
    f"v.quantity, {_OCCURRED} FROM json_to_recordset(%s::json) AS v (trade_id text, "
    "side text, order_id bigint, account_id bigint, symbol text, price bigint, "
    "quantity bigint, us bigint) ON CONFLICT DO NOTHING"
)
_INSERT_FEES = (
    "INSERT INTO fee_income (trade_id, side, amount) SELECT * FROM json_to_recordset(%s::json)"
    " AS v (trade_id text, side text, amount bigint) ON CONFLICT DO NOTHING"
)
_INSERT_HISTORY = (
    "INSERT INTO order_events (order_id, account_id, status, filled_quantity, payload, "
    "dedupe_key, occurred_at) SELECT v.order_id, v.account_id, v.status, v.filled_quantity, "
    f"v.payload, v.dedupe_key, {_OCCURRED} FROM ROWS FROM (json_to_recordset(%s::json) AS "
    "(order_id bigint, account_id bigint, status text, filled_quantity bigint, "
    "payload jsonb, dedupe_key text, us bigint)) WITH ORDINALITY AS v (order_id, account_id, "
    "status, filled_quantity, payload, dedupe_key, us, n) ORDER BY v.n "
    "ON CONFLICT (dedupe_key) DO NOTHING"
)


def run_settlement(
    bootstrap: str,
    topic: str,
    database_url: str,
    market_path: str,
    fees: FeeSchedule = NO_FEES,
    consumer_name: str = "settlement",
    stop_event: threading.Event | None = None,
    *,
    redis_url: str | None = None,
    redis_prefix: str = "",
    **options: Any,
) -> BatchStats:
    """Settle ``topic`` until ``stop_event`` is set (``pgconsumer.run_pg_consumer``, whose
    keyword options pass through); returns the totals. An event that contradicts an
    order is raised like a database error: nothing of its batch is stored. With a
    ``redis_url``, the read caches of the users it changes are invalidated."""
    invalidate = (
        Invalidator(redis.Redis.from_url(redis_url, socket_timeout=1.0), redis_prefix)
        if redis_url
        else None
    )
    settler = SettlementConsumer(load_market(market_path), fees, topic, consumer_name, invalidate)
    return run_pg_consumer(
        settler, bootstrap, database_url, f"settlement {consumer_name}", stop_event, **options
    )
