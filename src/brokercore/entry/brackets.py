"""Bracket orders of a user: place, read and exit them (docs/brackets.md). No web
framework here; brokercore.services.bracket_api maps HTTP onto it.

A bracket is a LIMIT DAY entry order with a target and a stop-loss. Its entry is placed
here through ``OrderEntry.place`` (checks, hold, outbox) under the request's idempotency
key (prefixed: no plain order of the user can take it); the bracket row follows, keyed
by the entry's order id, so a retry of a request whose answer was lost gets the same
entry and the same bracket. The legs are the trigger service's
(brokercore.entry.bracket_legs); their prices are checked here first (tick, band, the
order of the three prices), so a bad request changes nothing.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

import msgspec
from psycopg import AsyncConnection

from brokercore.broker.money import rupees
from brokercore.broker.risk import AccountState
from brokercore.entry.order_entry import (
    VERIFIED,
    OrderEntry,
    OrderReceipt,
    OrderRefused,
    Refusal,
)
from brokercore.entry.requests import (
    BracketList,
    BracketQuery,
    BracketView,
    ErrorDetail,
    NewBracket,
    PlaceOrderRequest,
    TargetView,
)

__all__ = [
    "BracketBook",
    "BracketRefusal",
    "BracketRefused",
    "leg_side",
    "stop_request",
    "target_request",
]

_UNLIMITED = AccountState(2**62, 2**62, True)
"""The legs' prices are checked at creation against no balance: their holds come later."""

ENTRY_KEY_PREFIX = "bracket:"


class BracketRefusal(StrEnum):
    """Why a bracket request is refused (besides the order codes). Values are API codes:
    never rename one."""

    BRACKET_NOT_FOUND = "BRACKET_NOT_FOUND"  # none of this user's brackets (404)
    BRACKET_NOT_ACTIVE = "BRACKET_NOT_ACTIVE"  # exit of one stopping or ended (409)
    BRACKET_INVALID_PRICES = "BRACKET_INVALID_PRICES"  # not stop < price < target (422)


class BracketRefused(Exception):
    """A bracket request refused, nothing changed: ``reason`` is the API code."""

    def __init__(self, reason: BracketRefusal, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


_COLUMNS = """b.bracket_id, b.symbol, b.side, b.quantity, b.price, b.target, b.stop,
    b.stop_limit, b.status, b.entry_order_id, b.stop_price, b.stop_order_id, b.stop_quantity,
    b.failure_code, b.failure_message, b.created_at, b.updated_at, b.request_hash,
    (SELECT coalesce(jsonb_agg(jsonb_build_array(t.quantity, t.order_id, t.failure_code,
                                                 t.failure_message) ORDER BY t.seq), '[]')
       FROM bracket_targets t WHERE t.bracket_id = b.bracket_id)"""

_OWNED = f"""SELECT {_COLUMNS} FROM brackets b JOIN accounts a ON a.account_id = b.account_id
 WHERE a.user_id = %(user)s"""

# A user's brackets by their account (known before the plan runs: an index range of
# brackets_account_idx, where a join on user_id would walk every user's brackets by id).
_LISTED = f"""SELECT {_COLUMNS} FROM brackets b
 WHERE b.account_id = (SELECT account_id FROM accounts WHERE user_id = %(user)s)"""

_INSERT = """
INSERT INTO brackets (account_id, symbol, side, quantity, price, target, stop, stop_limit,
                      entry_order_id, request_hash)
SELECT o.account_id, %(symbol)s, %(side)s, %(quantity)s, %(price)s, %(target)s, %(stop)s,
       %(stop_limit)s, o.order_id, %(hash)s
  FROM orders o WHERE o.order_id = %(order)s
ON CONFLICT (entry_order_id) DO NOTHING"""

_EXIT = """
UPDATE brackets b SET status = 'EXITING', updated_at = now() FROM accounts a
 WHERE b.bracket_id = %(bracket)s AND a.account_id = b.account_id AND a.user_id = %(user)s
   AND b.status = 'ACTIVE'"""


def leg_side(entry_side: str) -> Literal["BUY", "SELL"]:
    """The legs' side: the other one."""
    return "SELL" if entry_side == "BUY" else "BUY"


def target_request(
    symbol: str, entry_side: str, quantity: int, target: Decimal, key: str
) -> PlaceOrderRequest:
    """A target leg: a LIMIT DAY order of the other side at the target."""
    return PlaceOrderRequest(
        symbol, leg_side(entry_side), "LIMIT", quantity, key, price=target, time_in_force="DAY"
    )


def stop_request(
    symbol: str, entry_side: str, quantity: int, limit: Decimal | None, key: str
) -> PlaceOrderRequest:
    """The stop-loss leg once met: a market order (with the OMS's market protection), or
    a LIMIT DAY at ``limit`` (a stop-limit)."""
    if limit is None:
        return PlaceOrderRequest(symbol, leg_side(entry_side), "MARKET", quantity, key)
    return PlaceOrderRequest(
        symbol, leg_side(entry_side), "LIMIT", quantity, key, price=limit, time_in_force="DAY"
    )


class BracketBook:
    """The brackets of the OMS's users."""

    def __init__(self, entry: OrderEntry):
        self.entry = entry

    async def create(self, user_id: str, new: NewBracket) -> tuple[BracketView, OrderReceipt]:
        """Check the legs' prices, place the entry, store the bracket: the bracket and
        the entry's receipt (its command to publish). The same request again (its key)
        gets the same bracket; the key with another request, IDEMPOTENCY_KEY_REUSED."""
        entry = PlaceOrderRequest(
            new.symbol,
            new.side,
            "LIMIT",
            new.quantity,
            ENTRY_KEY_PREFIX + new.idempotency_key,
            price=new.price,
            time_in_force="DAY",
        )
        self._check(new, entry)
        receipt = await self.entry.place(user_id, entry)
        fingerprint = hashlib.sha256(msgspec.json.encode(new)).hexdigest()
        params = {
            "symbol": new.symbol,
            "side": new.side,
            "quantity": new.quantity,
            "price": _paise(new.price),
            "target": _paise(new.target),
            "stop": _paise(new.stop_loss),
            "stop_limit": None if new.stop_limit is None else _paise(new.stop_limit),
            "order": receipt.order_id,
            "hash": fingerprint,
        }
        async with self.entry.pool.connection() as conn, conn.transaction():
            await conn.execute(_INSERT, params)
            row = await (
                await conn.execute(
                    _OWNED + " AND b.entry_order_id = %(order)s",
                    {"user": user_id, "order": receipt.order_id},
                )
            ).fetchone()
        assert row is not None  # inserted now or by the first request
        if row[-2] != fingerprint:
            raise OrderRefused(
                Refusal.IDEMPOTENCY_KEY_REUSED, "this idempotency key was used for another bracket"
            )
        return _view(row), receipt

    async def list(self, user_id: str, query: BracketQuery) -> BracketList:
        """A page of the user's brackets (of one status when asked), newest first; the
        cursor is the page's last bracket id, for the next page's older ones."""
        sql = _LISTED
        if query.status is not None:
            sql += " AND b.status = %(status)s"
        if query.cursor is not None:
            sql += " AND b.bracket_id < %(cursor)s"
        sql += " ORDER BY b.bracket_id DESC LIMIT %(limit)s"
        params = {"user": user_id, **msgspec.structs.asdict(query), "limit": query.limit + 1}
        async with self.entry.pool.connection() as conn:
            rows = await (await conn.execute(sql, params)).fetchall()
        page = [_view(tuple(row)) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return BracketList(page, str(page[-1].bracket_id) if more else None)

    async def get(self, user_id: str, bracket_id: int) -> BracketView:
        async with self.entry.pool.connection() as conn:
            return _view(await _owned(conn, user_id, bracket_id))

    async def exit(self, user_id: str, bracket_id: int) -> BracketView:
        """EXITING if ACTIVE: the trigger service cancels the entry (its unfilled part)
        and the open targets, and the stop-loss is no longer watched; the position
        bought so far stays. BRACKET_NOT_ACTIVE once the stop was met or it ended."""
        async with self.entry.pool.connection() as conn, conn.transaction():
            exits = await conn.execute(_EXIT, {"bracket": bracket_id, "user": user_id})
            row = await _owned(conn, user_id, bracket_id)
        if not exits.rowcount:
            raise BracketRefused(
                BracketRefusal.BRACKET_NOT_ACTIVE, f"bracket {bracket_id} is {row[8]}"
            )
        return _view(row)

    def _check(self, new: NewBracket, entry: PlaceOrderRequest) -> None:
        """Each price a valid limit of the symbol (tick, band; the entry's by the entry's
        checks), then the three in order for the side: else OrderRefused or
        BracketRefused."""
        legs = [("price", new.price), ("target", new.target), ("stopLoss", new.stop_loss)]
        if new.stop_limit is not None:
            legs.append(("stopLimit", new.stop_limit))
        for name, price in legs:
            request = target_request(new.symbol, new.side, new.quantity, price, "check")
            try:
                self.entry.check(
                    entry if name == "price" else request,
                    VERIFIED,
                    _UNLIMITED,
                    self.entry.clock(),
                    {},
                )
            except OrderRefused as refused:
                raise OrderRefused(refused.reason, f"{name}: {refused.message}") from None
        low, high = (
            (new.stop_loss, new.target) if new.side == "BUY" else (new.target, new.stop_loss)
        )
        limit_beyond_stop = new.stop_limit is None or (
            new.stop_limit <= new.stop_loss
            if new.side == "BUY"
            else new.stop_limit >= new.stop_loss
        )
        if not (low < new.price < high and limit_beyond_stop):
            raise BracketRefused(
                BracketRefusal.BRACKET_INVALID_PRICES,
                "a buy's stopLoss is below its price, its target above (a sell's the other "
                "way round), and a stopLimit at or beyond the stopLoss",
            )


def _paise(price: Decimal) -> int:
    """A checked price (on a tick of whole paise) in paise."""
    return int(price.scaleb(2))


async def _owned(conn: AsyncConnection, user_id: str, bracket_id: int) -> tuple[Any, ...]:
    """The user's bracket, else BRACKET_NOT_FOUND: another user's looks the same as none."""
    query = _OWNED + " AND b.bracket_id = %(bracket)s"
    row = await (await conn.execute(query, {"user": user_id, "bracket": bracket_id})).fetchone()
    if row is None:
        raise BracketRefused(BracketRefusal.BRACKET_NOT_FOUND, f"no bracket {bracket_id}")
    return tuple(row)


def _view(row: tuple[Any, ...]) -> BracketView:
    (bracket_id, symbol, side, quantity, price, target, stop, stop_limit, status, entry_id,
     stop_price, stop_order, stop_quantity, code, message, created, updated, _, targets,
     ) = row  # fmt: skip
    return BracketView(
        bracket_id,
        symbol,
        side,
        quantity,
        rupees(price),
        rupees(target),
        rupees(stop),
        status,
        entry_id,
        [
            TargetView(q, order, None if c is None else ErrorDetail(c, m))
            for q, order, c, m in targets
        ],
        created.isoformat(),
        updated.isoformat(),
        rupees(stop_limit),
        rupees(stop_price),
        stop_order,
        stop_quantity,
        None if code is None else ErrorDetail(code, message),
    )
