"""The OMS write path: checks, holds, the order row and its outbox row in one Postgres
transaction. No web framework in here; services/oms wraps it in HTTP.

A new order takes the account's row lock first (SELECT ... FOR UPDATE), so the orders
of one user, retries of one request included, are decided one at a time: the first
inserts the idempotency key, the others find it and get the same order back. Nothing
is stored for an order the checks refuse. The Kafka command is written to ``outbox``
in the same transaction; ``brokercore.entry.outbox`` publishes it afterwards, and the
reconciler re-publishes what was not confirmed (the engine drops a duplicate order id).
``place_batch`` does the same for many orders in one transaction, all their accounts
locked at once (brokercore.entry.group_commit gathers the batches).

The trading day: the calendar's phase decides what is taken (brokercore.broker.risk); a
halt is the engine's alone: an order for a halted symbol is taken here and the engine
refuses it (REJECTED, reason HALTED), which settlement records, its hold released. So
no order waits on a stale copy of the phase, and none is refused by one. Every buy
reaches the engine capped at the price its cash is held at (``_engine_order``): a
re-band may lift the band's top while an order waits, and no fill may cost more than
was held. Market protection: a market or stop-market order (either side) goes as a
limit IOC at its protection's edge (brokercore.broker.risk.protection_price), a
percentage of the order's own ``marketProtection`` or the OMS's default.

After-market orders (``amo``, 0015): placed while the market is closed, checked as at
the start of its next session, held, stored AMO_PENDING with their command in
amo_orders, not the outbox; brokercore.entry.amo sends them at that pre-open, and
``cancel`` ends one that still waits at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import CompressedSession, MarketInstrument, Session
from brokercore.broker.orders import CANCEL_REQUESTED, OPEN_STATUSES
from brokercore.broker.risk import (
    LIMIT_TYPES,
    MAX_PROTECTION_PERCENT,
    NO_FEES,
    STOP_TYPES,
    AccountState,
    FeeSchedule,
    Hold,
    OrderRequest,
    OrderType,
    RejectCode,
    RiskRejection,
    check_order,
)
from brokercore.config import KafkaSettings
from brokercore.engine.records import Phase, Side, Tif
from brokercore.entry.amo import WaitingOrder, cancel_waiting
from brokercore.entry.outbox import OutboxRow
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import CancelOrder, NewOrder, encode
from brokercore.kafka.placement import shard_plan

__all__ = [
    "OrderEntry",
    "OrderReceipt",
    "OrderRefused",
    "Refusal",
    "last_prices",
    "no_account",
]

VERIFIED = "VERIFIED"
"""The KYC status (accounts.kyc_status, 0010_identity.sql) an account needs to order."""

# What the checks need, read by one function call (0004_invariants.sql) that takes the
# account's row lock first and reads the position and the idempotency key after it: a
# single SELECT ... FOR UPDATE would read them from before its lock wait, and concurrent
# sells oversold a holding that way. The account lock orders every writer of the
# account's cash, positions and keys. A fresh order id is drawn for a new key; ids skipped
# by refusals are harmless gaps.
_READ_STATE = "SELECT * FROM oms_order_facts(%s, %s, %s)"

_WRITE_ORDER = """
WITH key AS (
  INSERT INTO idempotency_keys (user_id, key, order_id, request_hash, expires_at)
  VALUES (%(user)s, %(key)s, %(order)s, %(hash)s, %(expires)s)),
cash AS (
  UPDATE accounts SET blocked_cash = blocked_cash + %(cash)s, updated_at = now()
   WHERE account_id = %(account)s AND %(cash)s > 0),
shares AS (
  UPDATE positions SET blocked_quantity = blocked_quantity + %(shares)s, updated_at = now()
   WHERE account_id = %(account)s AND symbol = %(symbol)s AND %(shares)s > 0),
new_order AS (
  INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, time_in_force,
                      price, trigger_price, quantity, disclosed_qty, status, hold_amount,
                      hold_price_ticks, blocked_cash, blocked_shares, created_at, updated_at)
  VALUES (%(order)s, %(trade_date)s, %(account)s, %(symbol)s, %(side)s, %(type)s, %(tif)s,
          %(price)s, %(trigger)s, %(quantity)s, %(disclosed)s, %(status)s, %(hold)s,
          %(hold_price)s, %(cash)s, %(shares)s, %(now)s, %(now)s)),
history AS (
  INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
  VALUES (%(order)s, %(account)s, %(status)s, %(history)s, %(now)s)),
amo AS (
  INSERT INTO amo_orders (order_id, symbol, placed_at, topic, partition, payload)
  SELECT %(order)s, %(symbol)s, %(now)s, %(topic)s, %(partition)s, %(payload)s
   WHERE %(status)s = 'AMO_PENDING')
INSERT INTO outbox (topic, partition, key, payload, order_id)
SELECT %(topic)s, %(partition)s, %(kafka_key)s, %(payload)s, %(order)s
 WHERE %(status)s = 'PENDING'
RETURNING outbox_id"""

# oms_order_facts for a whole batch (0006_group_commit.sql): the accounts locked in
# account_id order, then one row per order, tagged with its index from 1.
_READ_BATCH = "SELECT * FROM oms_batch_facts(%b, %b, %b)"  # binary: no escaping

# _WRITE_ORDER for a batch, its parameters one JSON array of objects (an order's
# _WRITE_ORDER parameters each, bytes as base64): one json.encode in C, where arrays,
# one per column, cost psycopg a Python loop per value. The holds are summed per account
# and per position.
_BATCH_ROWS = """json_to_recordset(%s::json) AS ("user" text, key text, hash text,
    expires timestamptz, "order" bigint, account bigint, symbol text, trade_date date,
    side text, type text, tif text, price bigint, trigger bigint, quantity bigint,
    disclosed bigint, status text, hold bigint, hold_price bigint, cash bigint,
    shares bigint, now timestamptz, history text, topic text, partition int, payload text)"""
_WRITE_BATCH = f"""
WITH r AS (SELECT * FROM ROWS FROM ({_BATCH_ROWS}) WITH ORDINALITY),
key AS (
  INSERT INTO idempotency_keys (user_id, key, order_id, request_hash, expires_at)
  SELECT "user", key, "order", hash, expires FROM r),
cash AS (
  UPDATE accounts a SET blocked_cash = a.blocked_cash + h.total, updated_at = now()
    FROM (SELECT account, sum(cash) AS total FROM r WHERE cash > 0 GROUP BY account) h
   WHERE a.account_id = h.account),
shares AS (
  UPDATE positions p SET blocked_quantity = p.blocked_quantity + h.total, updated_at = now()
    FROM (SELECT account, symbol, sum(shares) AS total FROM r WHERE shares > 0
           GROUP BY account, symbol) h
   WHERE p.account_id = h.account AND p.symbol = h.symbol),
new_order AS (
  INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, time_in_force,
                      price, trigger_price, quantity, disclosed_qty, status, hold_amount,
                      hold_price_ticks, blocked_cash, blocked_shares, created_at, updated_at)
  SELECT "order", trade_date, account, symbol, side, type, tif, price, trigger, quantity,
         disclosed, status, hold, hold_price, cash, shares, now, now FROM r),
history AS (
  INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
  SELECT "order", account, status, history::jsonb, now FROM r ORDER BY ordinality),
amo AS (
  INSERT INTO amo_orders (order_id, symbol, placed_at, topic, partition, payload)
  SELECT "order", symbol, now, topic, partition, decode(payload, 'base64') FROM r
   WHERE status = 'AMO_PENDING')
INSERT INTO outbox (topic, partition, key, payload, order_id)
SELECT topic, partition, convert_to(symbol, 'UTF8'), decode(payload, 'base64'), "order"
  FROM r WHERE status = 'PENDING' ORDER BY ordinality
RETURNING outbox_id, order_id"""

# The last trade price (paise) of each symbol, as the projector keeps it: what a new stop's
# trigger must not have reached. Read only for batches with stops, in their transaction.
_LAST_PRICES = """
SELECT s.symbol, (SELECT t.price FROM read_model.trades t WHERE t.symbol = s.symbol
                   ORDER BY t.seq DESC LIMIT 1)
  FROM unnest(%s::text[]) AS s (symbol)"""


class Refusal(StrEnum):
    """Why the OMS refuses a request before any check of the order itself (those refuse
    with a ``RejectCode``). Values are API codes: never rename one."""

    NO_ACCOUNT = "NO_ACCOUNT"  # the user has no trading account
    ACCOUNT_NOT_VERIFIED = "ACCOUNT_NOT_VERIFIED"  # KYC PENDING or REJECTED: no new orders
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # the key names another order
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"  # none of this user's orders
    ORDER_NOT_OPEN = "ORDER_NOT_OPEN"  # finished: nothing to cancel or modify
    ORDER_PENDING = "ORDER_PENDING"  # not yet accepted by the engine: modify later
    ORDER_NOT_MODIFIABLE = "ORDER_NOT_MODIFIABLE"  # a market or stop-market order
    MODIFY_PENDING = "MODIFY_PENDING"  # the order's last modify is not settled yet
    MODIFY_LIMIT_REACHED = "MODIFY_LIMIT_REACHED"  # the order took its most modifies
    AMO_MARKET_OPEN = "AMO_MARKET_OPEN"  # an after-market order while the market takes orders


class OrderRefused(Exception):
    """A request the OMS will not act on: ``reason`` says why (its value is the stable
    API code), the message is for people. Nothing was stored."""

    def __init__(self, reason: Refusal | RejectCode, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class OrderReceipt:
    order_id: int
    status: str
    timestamp: datetime
    outbox: OutboxRow | None  # the command to publish now; None when nothing new


class _Facts(NamedTuple):
    """What oms_order_facts and oms_batch_facts (0013) read for one order."""

    account_id: int
    cash: int
    blocked_cash: int
    allow_short: bool
    free_shares: int | None  # None without a position
    new_order_id: int | None  # None from oms_order_facts for a known key
    key_order_id: int | None
    key_request_hash: str | None
    key_expires_at: datetime | None
    key_order_status: str | None
    key_order_updated_at: datetime | None
    unpublished_outbox_id: int | None
    unpublished_payload: bytes | None
    kyc_status: str


@dataclass(frozen=True)
class _Placement:
    """An accepted order before it is written: ``params`` are _WRITE_ORDER's."""

    order_id: int
    symbol: str
    fingerprint: str
    hold: Hold
    payload: bytes
    now: datetime
    params: dict[str, object]


@dataclass
class _Batch:
    """What a batch's earlier orders changed: free cash per account, free shares per
    (account, symbol), the keys they used, and expired keys to delete before reuse."""

    cash: dict[int, int] = field(default_factory=dict)
    shares: dict[tuple[int, str], int] = field(default_factory=dict)
    keys: dict[tuple[str, str], _Placement] = field(default_factory=dict)
    expired: list[tuple[str, str]] = field(default_factory=list)


class OrderEntry:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        market: Mapping[str, MarketInstrument],
        kafka: KafkaSettings,
        *,
        fees: FeeSchedule = NO_FEES,
        protection_percent: Decimal | None = None,
        idempotency_ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.pool = pool
        self.market = market
        self.kafka = kafka
        self.plan = shard_plan(kafka, market.values())  # the same as the engine daemons'
        self.fees = fees
        if protection_percent is not None and not _valid_protection(protection_percent):
            raise ValueError(
                f"the market protection must be in (0, {MAX_PROTECTION_PERCENT}] percent, "
                f"not {protection_percent}"
            )
        self.protection_percent = protection_percent  # None: market orders unprotected
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        self._partitions: set[date] = set()

    # --- new orders ------------------------------------------------------------------

    async def place(self, user_id: str, request: PlaceOrderRequest) -> OrderReceipt:
        """Check, hold and store a new order; a retry with the same key (racing or not)
        gets the first order back, and its command again if that was never published."""
        now = self.clock()
        fingerprint = _fingerprint(request)
        trade_date = await self._trade_date(request, now)
        # Two statements in one transaction: read (and lock) what the checks need, then
        # write everything. Round trips are what an order costs here.
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(_READ_STATE, (user_id, request.symbol, request.idempotency_key))
            ).fetchone()
            if row is None:
                raise no_account()
            facts = _Facts(*row)
            if facts.key_order_id is not None:
                retry = self._retried(facts, fingerprint, now, request.symbol)
                if retry is not None:
                    return retry
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE user_id = %s AND key = %s",
                    (user_id, request.idempotency_key),
                )
                order_id = await _returned_id(conn, "SELECT nextval('order_id_seq')")
                facts = facts._replace(new_order_id=order_id)
            last = await last_prices(conn, [request])
            placement = self._decide(
                user_id, request, fingerprint, now, trade_date, facts, _free(facts), last
            )
            written = await (await conn.execute(_WRITE_ORDER, placement.params)).fetchone()
        return self._receipt(placement, None if written is None else written[0])

    async def place_batch(
        self, orders: Sequence[tuple[str, PlaceOrderRequest]]
    ) -> list[OrderReceipt | OrderRefused]:
        """``place`` for many orders (user, request) in ONE transaction of three round
        trips: each order's answer, in their order. Each order is decided as ``place``
        would decide it after the ones before it (a user's later order sees the holds of
        the earlier ones; a key used twice gets the first one's order); a refused order
        is not written and changes nothing for the others. Raises if the transaction
        fails: nothing of the batch is stored then (the caller may retry it order by
        order, see brokercore.entry.group_commit)."""
        now = self.clock()
        dates = [await self._trade_date(request, now) for _, request in orders]
        batch = _Batch()
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    _READ_BATCH,
                    (
                        [user_id for user_id, _ in orders],
                        [request.symbol for _, request in orders],
                        [request.idempotency_key for _, request in orders],
                    ),
                )
            ).fetchall()
            facts = {row[0]: _Facts(*row[1:]) for row in rows}
            last = await last_prices(conn, [request for _, request in orders])
            decided: list[_Placement | OrderReceipt | OrderRefused] = []
            for n, ((user_id, request), trade_date) in enumerate(zip(orders, dates, strict=True)):
                try:
                    decided.append(
                        self._decide_in(
                            batch, user_id, request, now, trade_date, facts.get(n + 1), last
                        )
                    )
                except OrderRefused as refused:
                    decided.append(refused)
            if batch.expired:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE (user_id, key) IN "
                    "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                    ([user for user, _ in batch.expired], [key for _, key in batch.expired]),
                )
            placed = [p for p in decided if isinstance(p, _Placement)]
            outbox: dict[int, int] = {}
            if placed:
                written = await conn.execute(
                    _WRITE_BATCH, (msgspec.json.encode([p.params for p in placed]).decode(),)
                )
                outbox = {order_id: outbox_id for outbox_id, order_id in await written.fetchall()}
        return [
            self._receipt(p, outbox.get(p.order_id)) if isinstance(p, _Placement) else p
            for p in decided
        ]

    def _decide_in(
        self,
        batch: _Batch,
        user_id: str,
        request: PlaceOrderRequest,
        now: datetime,
        trade_date: date | None,
        facts: _Facts | None,
        last: Mapping[str, Decimal],
    ) -> _Placement | OrderReceipt:
        """One order of a batch, decided after the batch's earlier ones."""
        if facts is None:
            raise no_account()
        fingerprint = _fingerprint(request)
        key = (user_id, request.idempotency_key)
        earlier = batch.keys.get(key)
        if earlier is not None:  # a retry inside the batch: its command goes with the first
            if earlier.fingerprint != fingerprint:
                raise _key_reused()
            return OrderReceipt(earlier.order_id, _status(earlier.params), now, None)
        if facts.key_order_id is not None:
            retry = self._retried(facts, fingerprint, now, request.symbol)
            if retry is not None:
                return retry
            batch.expired.append(key)
        position = (facts.account_id, request.symbol)
        free = AccountState(
            batch.cash.get(facts.account_id, facts.cash - facts.blocked_cash),
            batch.shares.get(position, facts.free_shares or 0),
            facts.allow_short,
        )
        placement = self._decide(user_id, request, fingerprint, now, trade_date, facts, free, last)
        batch.cash[facts.account_id] = free.cash_available - placement.hold.cash
        batch.shares[position] = free.shares_available - placement.hold.shares
        batch.keys[key] = placement
        return placement

    def _retried(
        self, facts: _Facts, fingerprint: str, now: datetime, symbol: str
    ) -> OrderReceipt | None:
        """The answer to a retry of the key's order; None if the key has expired (it is
        free for a new order)."""
        assert facts.key_expires_at is not None and facts.key_order_id is not None
        if facts.key_expires_at <= now:
            return None
        if facts.key_request_hash != fingerprint:
            raise _key_reused()
        assert facts.key_order_status is not None and facts.key_order_updated_at is not None
        return OrderReceipt(
            facts.key_order_id,
            facts.key_order_status,
            facts.key_order_updated_at,
            None
            if (facts.unpublished_outbox_id is None or facts.unpublished_payload is None)
            else self._row(facts.unpublished_outbox_id, symbol, bytes(facts.unpublished_payload)),
        )

    def _decide(
        self,
        user_id: str,
        request: PlaceOrderRequest,
        fingerprint: str,
        now: datetime,
        trade_date: date | None,
        facts: _Facts,
        free: AccountState,
        last: Mapping[str, Decimal],
    ) -> _Placement:
        """What to write for a new order if it passes ``check`` (else OrderRefused)."""
        hold = self.check(request, facts.kyc_status, free, now, last)
        order_type = OrderType(request.type)
        stop = order_type in STOP_TYPES
        side = Side[request.side]
        instrument = self.market[request.symbol]  # check refuses an unknown symbol
        limit_ticks = instrument.to_ticks(request.price) if request.price is not None else None
        price, market, tif = _engine_order(order_type, limit_ticks, hold)
        order_id = facts.new_order_id
        assert order_id is not None  # drawn for every new key
        payload = encode(
            NewOrder(
                order_id,
                facts.account_id,
                request.symbol,
                side,
                request.quantity,
                price=price,
                market=market,
                tif=tif,
                ts=_nanoseconds(now),
                stop=stop,
                trigger=hold.trigger_ticks or 0,
                disclosed=request.disclosed_quantity or 0,
            )
        )
        params = {
            "user": user_id,
            "key": request.idempotency_key,
            "hash": fingerprint,
            "expires": now + self.idempotency_ttl,
            "order": order_id,
            "account": facts.account_id,
            "symbol": request.symbol,
            "trade_date": trade_date,
            "side": request.side,
            "type": request.type,
            "tif": hold.time_in_force.name,
            "price": instrument.ticks_to_paise(limit_ticks) if limit_ticks is not None else None,
            "trigger": (
                instrument.ticks_to_paise(hold.trigger_ticks)
                if hold.trigger_ticks is not None
                else None
            ),
            "quantity": request.quantity,
            "disclosed": request.disclosed_quantity or 0,
            "status": "AMO_PENDING" if request.amo else "PENDING",
            "hold": hold.cash or hold.shares,
            "hold_price": hold.price_ticks or 0,
            "cash": hold.cash,
            "shares": hold.shares,
            "now": now,
            "history": msgspec.json.encode({"request": request}).decode(),
            "topic": self.kafka.orders_topic,
            "partition": self.plan.shard_of(request.symbol),
            "kafka_key": request.symbol.encode(),
            "payload": payload,
        }
        return _Placement(order_id, request.symbol, fingerprint, hold, payload, now, params)

    def check(
        self,
        request: PlaceOrderRequest,
        kyc_status: str,
        free: AccountState,
        now: datetime,
        last: Mapping[str, Decimal],
    ) -> Hold:
        """The checks of a new order against what its account has ``free`` (a stop's
        trigger against its symbol's ``last`` trade price, when known), after the
        account's KYC status: the hold it takes if it passes, else OrderRefused. The one
        decision of both the order path and the margin preview (brokercore.entry.margins)."""
        if kyc_status != VERIFIED:
            raise OrderRefused(
                Refusal.ACCOUNT_NOT_VERIFIED,
                f"this account's KYC is {kyc_status}: orders need a verified account",
            )
        order_type = OrderType(request.type)
        protection = self._protection(request, order_type)
        at = self._session_time(request, now)
        order = OrderRequest(
            request.symbol,
            Side[request.side],
            order_type,
            request.quantity,
            request.price,
            Tif[request.time_in_force] if request.time_in_force else None,
            request.trigger_price,
            request.disclosed_quantity or 0,
        )
        hold = check_order(
            order,
            self.market.get(request.symbol),
            at,
            free,
            fees=self.fees,
            last_price=last.get(request.symbol),
            protection_percent=protection,
        )
        if isinstance(hold, RiskRejection):
            raise OrderRefused(hold.code, hold.message)
        return hold

    def _session_time(self, request: PlaceOrderRequest, now: datetime) -> datetime:
        """When the order's checks apply: now, or for an after-market order, which only
        a closed market takes, the start of its market's next session."""
        instrument = self.market.get(request.symbol)
        if not request.amo or instrument is None:  # the checks refuse an unknown symbol
            return now
        if instrument.session.phase(now) is not Phase.CLOSED:
            raise OrderRefused(
                Refusal.AMO_MARKET_OPEN,
                f"the market for {request.symbol} takes orders now: place the order without amo",
            )
        return _next_session(instrument.session, now)

    def _protection(self, request: PlaceOrderRequest, order_type: OrderType) -> Decimal | None:
        """The order's market protection in percent: its own if it gives one (only a
        market or stop-market order may, within bounds), else the OMS's default."""
        percent = request.market_protection
        if percent is None:
            return self.protection_percent
        if order_type in LIMIT_TYPES:
            raise OrderRefused(
                RejectCode.PROTECTION_NOT_ALLOWED,
                f"a {order_type.name.lower().replace('_', '-')} order takes no "
                "marketProtection (its price is its protection)",
            )
        if not _valid_protection(percent):
            raise OrderRefused(
                RejectCode.INVALID_PROTECTION,
                f"marketProtection must be a percentage above 0 and at most "
                f"{MAX_PROTECTION_PERCENT}, not {percent}",
            )
        return percent

    def _receipt(self, placement: _Placement, outbox_id: int | None) -> OrderReceipt:
        """The answer to a new order; an after-market order has no command to send yet."""
        return OrderReceipt(
            placement.order_id,
            _status(placement.params),
            placement.now,
            None
            if outbox_id is None
            else self._row(outbox_id, placement.symbol, placement.payload),
        )

    async def _trade_date(self, request: PlaceOrderRequest, now: datetime) -> date | None:
        """The order's trade date (an after-market order's: its session's), its partition
        of orders made if missing; None for an unknown symbol or an after-market order
        refused (the checks refuse them)."""
        instrument = self.market.get(request.symbol)
        if instrument is None:
            return None
        try:
            at = self._session_time(request, now)
        except OrderRefused:
            return None
        trade_date = at.astimezone(instrument.session.zone).date()
        await self._ensure_partition(trade_date)
        return trade_date

    async def _ensure_partition(self, trade_date: date) -> None:
        """The day's partition of orders, made in a transaction of its own: it locks the
        whole table, which inside an order's transaction would deadlock with others."""
        if trade_date not in self._partitions:
            async with self.pool.connection() as conn:
                await conn.execute("SELECT create_orders_partition(%s)", (trade_date,))
            self._partitions.add(trade_date)

    def _row(self, outbox_id: int, symbol: str, payload: bytes) -> OutboxRow:
        return OutboxRow(
            outbox_id,
            self.kafka.orders_topic,
            self.plan.shard_of(symbol),
            symbol.encode(),
            payload,
        )

    async def _outbox(
        self, conn: AsyncConnection, order_id: int, symbol: str, payload: bytes
    ) -> OutboxRow:
        row = self._row(0, symbol, payload)
        outbox_id = await _returned_id(
            conn,
            "INSERT INTO outbox (topic, partition, key, payload, order_id) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING outbox_id",
            (row.topic, row.partition, row.key, payload, order_id),
        )
        return row._replace(outbox_id=outbox_id)

    # --- cancels -----------------------------------------------------------------------

    async def cancel(self, user_id: str, order_id: int) -> OrderReceipt:
        """Ask the engine to cancel an open order of this user; the order's status
        changes when the engine's CANCELLED (or REJECTED) event is settled, so the
        receipt's status is CANCEL_REQUESTED, and the order's history records the
        request with the quantity filled so far."""
        now = self.clock()
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT o.account_id, o.symbol, o.status, o.filled_quantity, o.trade_date, "
                    "o.blocked_cash, o.blocked_shares FROM orders o "
                    "JOIN accounts a ON a.account_id = o.account_id "
                    "WHERE o.order_id = %s AND a.user_id = %s FOR UPDATE OF o",
                    (order_id, user_id),
                )
            ).fetchone()
            if row is None:  # another user's order looks the same
                raise OrderRefused(Refusal.ORDER_NOT_FOUND, f"no order {order_id}")
            account_id, symbol, status, filled, trade_date, cash, shares = row
            if status == "AMO_PENDING":  # not sent yet: ended here, its hold released
                await cancel_waiting(
                    conn, WaitingOrder(order_id, trade_date, account_id, symbol, cash, shares), now
                )
                return OrderReceipt(order_id, "CANCELLED", now, None)
            if status not in OPEN_STATUSES:
                raise OrderRefused(
                    Refusal.ORDER_NOT_OPEN, f"order {order_id} is {status} and cannot be cancelled"
                )
            await conn.execute(
                "INSERT INTO order_events (order_id, account_id, status, filled_quantity, "
                "payload, occurred_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (order_id, account_id, status, filled, json.dumps({"request": "cancel"}), now),
            )
            row = await self._outbox(
                conn,
                order_id,
                symbol,
                encode(CancelOrder(order_id, account_id, symbol, ts=_nanoseconds(now))),
            )
        return OrderReceipt(order_id, CANCEL_REQUESTED, now, row)

    # --- upkeep -------------------------------------------------------------------------

    async def expire_idempotency_keys(self) -> int:
        """Delete keys past their expiry (24 h by default); returns how many."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= %s", (self.clock(),)
            )
            return cursor.rowcount


def _free(facts: _Facts) -> AccountState:
    return AccountState(facts.cash - facts.blocked_cash, facts.free_shares or 0, facts.allow_short)


def no_account() -> OrderRefused:
    return OrderRefused(Refusal.NO_ACCOUNT, "this user has no trading account")


def _key_reused() -> OrderRefused:
    return OrderRefused(
        Refusal.IDEMPOTENCY_KEY_REUSED, "this idempotency key was used for a different order"
    )


async def _returned_id(
    conn: AsyncConnection,
    query: str,
    params: Mapping[str, object] | tuple[object, ...] | None = None,
) -> int:
    """The id that ``query`` (a nextval, an INSERT ... RETURNING) gives back."""
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None  # such a statement returns one row
    value: int = row[0]
    return value


async def last_prices(
    conn: AsyncConnection, requests: Sequence[PlaceOrderRequest]
) -> dict[str, Decimal]:
    """The last trade price (rupees) of each symbol the stops and market orders among
    ``requests`` are for (a stop's trigger must not have reached it, a market order's
    protection is around it), when it has traded; no round trip for limit orders only."""
    symbols = sorted({r.symbol for r in requests if r.type != OrderType.LIMIT})
    if not symbols:
        return {}
    rows = await (await conn.execute(_LAST_PRICES, (symbols,))).fetchall()
    return {symbol: Decimal(paise).scaleb(-2) for symbol, paise in rows if paise is not None}


def _engine_order(
    order_type: OrderType, limit_ticks: int | None, hold: Hold
) -> tuple[int, bool, Tif]:
    """(price in ticks, market?, time in force) of the engine order. A buy never fills
    above the price its cash is held at, even after a re-band lifts the band's top, and
    a protected order never beyond its protection's edge: a market order goes as an
    IOC/FOK limit at that price, a stop-market as a stop-limit IOC at it (risk refuses
    the orders that could not be capped so). An unprotected sell (a market sell waiting
    for the pre-open's auction) goes as it is."""
    if limit_ticks is not None:
        return limit_ticks, False, hold.time_in_force
    cap = hold.price_ticks if hold.protection_ticks is None else hold.protection_ticks
    if cap is None:  # a sell's price_ticks is its limit's alone
        return 0, True, hold.time_in_force
    stop = order_type is OrderType.STOP
    return cap, False, Tif.IOC if stop else hold.time_in_force


def _next_session(session: Session, now: datetime) -> datetime:
    """The first moment after ``now`` at which the session takes orders: its next
    pre-open's start (a millisecond in), else its opening."""
    opens = session.next_open(now)
    while True:
        if session.pre_open is not None:
            start = datetime.combine(opens.date(), session.pre_open, tzinfo=session.zone)
        elif isinstance(session, CompressedSession):
            start = opens - timedelta(seconds=session.pre_open_seconds)
        else:
            start = opens
        if start > now:
            return start + timedelta(milliseconds=1)
        opens = session.next_open(opens + timedelta(seconds=1))


def _status(params: Mapping[str, object]) -> str:
    """A placed order's status: PENDING, or AMO_PENDING for an after-market order."""
    return str(params["status"])


def _valid_protection(percent: Decimal) -> bool:
    return percent.is_finite() and 0 < percent <= MAX_PROTECTION_PERCENT


def _fingerprint(request: PlaceOrderRequest) -> str:
    body = msgspec.to_builtins(request)
    body.pop("idempotencyKey", None)
    for added in ("triggerPrice", "disclosedQuantity", "marketProtection"):  # absent: as before
        if body[added] is None:
            del body[added]
    if not body["amo"]:
        del body["amo"]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _nanoseconds(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1_000
