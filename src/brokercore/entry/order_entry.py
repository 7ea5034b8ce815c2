"""The OMS write path: checks, holds, the order row and its outbox row in one Postgres
transaction. No web framework in here; services/oms wraps it in HTTP.

A new order takes the account's row lock first (SELECT ... FOR UPDATE), so the orders
of one user, retries of one request included, are decided one at a time: the first
inserts the idempotency key, the others find it and get the same order back. Nothing
is stored for an order the checks refuse. The Kafka command is written to ``outbox``
in the same transaction; ``brokercore.entry.outbox`` publishes it afterwards, and the
reconciler re-publishes what was not confirmed (the engine drops a duplicate order id).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import MarketInstrument
from brokercore.broker.orders import CANCEL_REQUESTED, OPEN_STATUSES
from brokercore.broker.risk import (
    NO_FEES,
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
from brokercore.engine.records import Side, Tif
from brokercore.entry.outbox import OutboxRow
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.kafka.messages import CancelOrder, NewOrder, encode
from brokercore.kafka.placement import shard_plan

__all__ = ["OrderEntry", "OrderReceipt", "OrderRefused", "Refusal"]

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
                      price, quantity, status, hold_amount, hold_price_ticks, blocked_cash,
                      blocked_shares, created_at, updated_at)
  VALUES (%(order)s, %(trade_date)s, %(account)s, %(symbol)s, %(side)s, %(type)s, %(tif)s,
          %(price)s, %(quantity)s, 'PENDING', %(hold)s, %(hold_price)s, %(cash)s,
          %(shares)s, %(now)s, %(now)s)),
history AS (
  INSERT INTO order_events (order_id, account_id, status, payload, occurred_at)
  VALUES (%(order)s, %(account)s, 'PENDING', %(history)s, %(now)s))
INSERT INTO outbox (topic, partition, key, payload, order_id)
VALUES (%(topic)s, %(partition)s, %(kafka_key)s, %(payload)s, %(order)s)
RETURNING outbox_id"""


class Refusal(StrEnum):
    """Why the OMS refuses a request before any check of the order itself (those refuse
    with a ``RejectCode``). Values are API codes: never rename one."""

    NO_ACCOUNT = "NO_ACCOUNT"  # the user has no trading account
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"  # the key names another order
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"  # none of this user's orders
    ORDER_NOT_OPEN = "ORDER_NOT_OPEN"  # finished: nothing to cancel


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
        self.protection_percent = protection_percent
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        self._partitions: set[date] = set()

    # --- new orders ------------------------------------------------------------------

    async def place(self, user_id: str, request: PlaceOrderRequest) -> OrderReceipt:
        """Check, hold and store a new order; a retry with the same key (racing or not)
        gets the first order back, and its command again if that was never published."""
        now = self.clock()
        instrument = self.market.get(request.symbol)
        fingerprint = _fingerprint(request)
        if instrument is not None:
            trade_date = now.astimezone(instrument.session.zone).date()
            await self._ensure_partition(trade_date)
        # Two statements in one transaction: read (and lock) what the checks need, then
        # write everything. Round trips are what an order costs here.
        async with self.pool.connection() as conn, conn.transaction():
            state = await (
                await conn.execute(_READ_STATE, (user_id, request.symbol, request.idempotency_key))
            ).fetchone()
            if state is None:
                raise OrderRefused(Refusal.NO_ACCOUNT, "this user has no trading account")
            (
                account_id,
                cash,
                blocked_cash,
                allow_short,
                shares,
                order_id,
                key_order,
                key_hash,
                key_expires,
                key_status,
                key_updated,
                unpublished_id,
                unpublished_payload,
            ) = state
            if key_order is not None:
                if key_expires > now:
                    if key_hash != fingerprint:
                        raise OrderRefused(
                            Refusal.IDEMPOTENCY_KEY_REUSED,
                            "this idempotency key was used for a different order",
                        )
                    return OrderReceipt(
                        key_order,
                        key_status,
                        key_updated,
                        None
                        if (unpublished_id is None)
                        else self._row(unpublished_id, request.symbol, bytes(unpublished_payload)),
                    )
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE user_id = %s AND key = %s",
                    (user_id, request.idempotency_key),
                )
                order_id = await _returned_id(conn, "SELECT nextval('order_id_seq')")
            order = OrderRequest(
                request.symbol,
                Side[request.side],
                OrderType(request.type),
                request.quantity,
                request.price,
                Tif[request.time_in_force] if request.time_in_force else None,
            )
            hold = check_order(
                order,
                instrument,
                now,
                AccountState(cash - blocked_cash, shares or 0, allow_short),
                fees=self.fees,
                protection_percent=self.protection_percent,
            )
            if isinstance(hold, RiskRejection):
                raise OrderRefused(hold.code, hold.message)
            assert instrument is not None  # check_order refuses an unknown symbol
            limit_ticks = instrument.to_ticks(request.price) if request.price is not None else None
            price, market = _engine_price(limit_ticks, hold, instrument)
            command = NewOrder(
                order_id,
                account_id,
                request.symbol,
                Side[request.side],
                request.quantity,
                price=price,
                market=market,
                tif=hold.time_in_force,
                ts=_nanoseconds(now),
            )
            payload = encode(command)
            outbox_id = await _returned_id(
                conn,
                _WRITE_ORDER,
                {
                    "user": user_id,
                    "key": request.idempotency_key,
                    "hash": fingerprint,
                    "expires": now + self.idempotency_ttl,
                    "order": order_id,
                    "account": account_id,
                    "symbol": request.symbol,
                    "trade_date": trade_date,
                    "side": request.side,
                    "type": request.type,
                    "tif": hold.time_in_force.name,
                    "price": (
                        instrument.ticks_to_paise(limit_ticks) if limit_ticks is not None else None
                    ),
                    "quantity": request.quantity,
                    "hold": hold.cash or hold.shares,
                    "hold_price": hold.price_ticks or 0,
                    "cash": hold.cash,
                    "shares": hold.shares,
                    "now": now,
                    "history": json.dumps({"request": msgspec.to_builtins(request)}),
                    "topic": self.kafka.orders_topic,
                    "partition": self.plan.shard_of(request.symbol),
                    "kafka_key": request.symbol.encode(),
                    "payload": payload,
                },
            )
        return OrderReceipt(order_id, "PENDING", now, self._row(outbox_id, request.symbol, payload))

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
                    "SELECT o.account_id, o.symbol, o.status, o.filled_quantity FROM orders o "
                    "JOIN accounts a ON a.account_id = o.account_id "
                    "WHERE o.order_id = %s AND a.user_id = %s FOR UPDATE OF o",
                    (order_id, user_id),
                )
            ).fetchone()
            if row is None:  # another user's order looks the same
                raise OrderRefused(Refusal.ORDER_NOT_FOUND, f"no order {order_id}")
            account_id, symbol, status, filled = row
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


def _engine_price(
    limit_ticks: int | None, hold: Hold, instrument: MarketInstrument
) -> tuple[int, bool]:
    """(price in ticks, market?) of the engine order. A market buy held below the band's
    top must never fill above its hold, so it goes as an IOC/FOK limit at that price."""
    if limit_ticks is not None:
        return limit_ticks, False
    if hold.price_ticks and hold.price_ticks < instrument.high:
        return hold.price_ticks, False
    return 0, True


def _fingerprint(request: PlaceOrderRequest) -> str:
    body = msgspec.to_builtins(request)
    body.pop("idempotencyKey", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _nanoseconds(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1_000
