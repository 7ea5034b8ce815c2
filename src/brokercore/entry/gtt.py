"""GTT triggers (good till triggered) of a user: create, list, read, change and cancel
them (docs/gtt.md). No web framework here; brokercore.services.gtt_api maps HTTP onto it.

A GTT's orders are checked when it is stored as a new order would be (``OrderEntry.check``:
KYC, symbol, type, lot, tick, band, size) at a moment the market is open, but no hold is
taken while it waits, as Kite does: cash and shares are checked when it fires, and that
order may be refused then (the GTT ends FAILED with the reason). The trigger service
fires them (brokercore.consumers.gtt_watch, brokercore.entry.gtt_orders).

Every change of an ACTIVE GTT is one UPDATE ... WHERE status = 'ACTIVE' under its row
lock, the way the trigger service marks one TRIGGERED: a cancel (or a change) racing a
firing is ordered by Postgres, one of the two wins, never both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from brokercore.broker.money import rupees
from brokercore.broker.risk import AccountState, RejectCode
from brokercore.engine.records import Phase
from brokercore.entry.order_entry import OrderEntry, OrderRefused, Refusal, no_account
from brokercore.entry.requests import (
    ErrorDetail,
    GttChange,
    GttLeg,
    GttLegView,
    GttList,
    GttOrder,
    GttView,
    NewGtt,
    PlaceOrderRequest,
)

__all__ = [
    "MAX_ACTIVE_GTTS",
    "GttBook",
    "GttRefusal",
    "GttRefused",
    "leg_request",
]

MAX_ACTIVE_GTTS = 250
"""The most ACTIVE GTTs a user may have (Kite's limit): what the trigger service watches
stays bounded per user."""

_UNLIMITED = AccountState(2**62, 2**62, True)
"""No hold is taken while a GTT waits: its orders are checked against no balance."""

_MAX_TRIGGER = Decimal(10**12)
"""Rupees: no trigger price is larger."""
_PAISA = Decimal("0.01")


class GttRefusal(StrEnum):
    """Why a GTT request is refused (besides an order check's ``RejectCode``). Values
    are API codes: never rename one."""

    GTT_NOT_FOUND = "GTT_NOT_FOUND"  # none of this user's GTTs (404)
    GTT_NOT_ACTIVE = "GTT_NOT_ACTIVE"  # triggered, cancelled, expired or failed (409)
    GTT_INVALID_LEGS = "GTT_INVALID_LEGS"  # legs that do not make the kind (422)
    GTT_INVALID_EXPIRY = "GTT_INVALID_EXPIRY"  # past, or beyond the longest life (422)
    GTT_LIMIT = "GTT_LIMIT"  # MAX_ACTIVE_GTTS reached (422)


class GttRefused(Exception):
    """A GTT request refused, nothing changed: ``reason`` is the API code."""

    def __init__(self, reason: GttRefusal, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


_COLUMNS = """g.gtt_id, g.symbol, g.kind, g.status, g.condition_1, g.trigger_1, g.order_1,
    g.condition_2, g.trigger_2, g.order_2, g.fired_leg, g.fired_price, g.triggered_at,
    g.order_id, g.failure_code, g.failure_message, g.expires_at, g.created_at, g.updated_at"""

_OWNED = f"""SELECT {_COLUMNS} FROM gtts g JOIN accounts a ON a.account_id = g.account_id
 WHERE a.user_id = %(user)s"""

_INSERT = f"""
WITH g AS (
  INSERT INTO gtts (account_id, symbol, kind, condition_1, trigger_1, order_1, condition_2,
                    trigger_2, order_2, expires_at, idempotency_key, request_hash)
  VALUES (%(account)s, %(symbol)s, %(kind)s, %(condition_1)s, %(trigger_1)s, %(order_1)s,
          %(condition_2)s, %(trigger_2)s, %(order_2)s, coalesce(%(expires)s, now() + %(life)s),
          %(key)s, %(hash)s)
  RETURNING *)
SELECT {_COLUMNS} FROM g"""

_KEYED = f"""SELECT g.request_hash, {_COLUMNS} FROM gtts g
 WHERE g.account_id = %s AND g.idempotency_key = %s"""

_UPDATE = f"""
WITH g AS (
  UPDATE gtts SET condition_1 = %(condition_1)s, trigger_1 = %(trigger_1)s,
                  order_1 = %(order_1)s, condition_2 = %(condition_2)s,
                  trigger_2 = %(trigger_2)s, order_2 = %(order_2)s,
                  expires_at = coalesce(%(expires)s, expires_at), updated_at = now()
   WHERE gtt_id = %(gtt)s AND status = 'ACTIVE'
  RETURNING *)
SELECT {_COLUMNS} FROM g"""

_CANCEL = f"""
WITH g AS (
  UPDATE gtts g SET status = 'CANCELLED', updated_at = now() FROM accounts a
   WHERE g.gtt_id = %(gtt)s AND a.account_id = g.account_id AND a.user_id = %(user)s
     AND g.status = 'ACTIVE'
  RETURNING g.*)
SELECT {_COLUMNS} FROM g"""


class GttBook:
    """The GTTs of the OMS's users; ``life`` is a GTT's default and longest life."""

    def __init__(self, entry: OrderEntry, life: timedelta):
        self.entry = entry
        self.life = life

    async def create(self, user_id: str, gtt: NewGtt) -> GttView:
        """Check and store a new GTT (its account locked, so the limit of ACTIVE ones
        and one GTT per idempotency key hold under concurrent requests); with the key
        of a GTT made before, that GTT as it is now, if the request is the same."""
        fingerprint = _fingerprint(gtt)
        async with self.entry.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "SELECT account_id, kyc_status, (SELECT count(*) FROM gtts g WHERE "
                    "g.account_id = a.account_id AND g.status = 'ACTIVE') FROM accounts a "
                    "WHERE user_id = %s FOR UPDATE",
                    (user_id,),
                )
            ).fetchone()
            if row is None:
                raise no_account()
            account_id, kyc_status, active = row
            if gtt.idempotency_key is not None:
                keyed = await (
                    await conn.execute(_KEYED, (account_id, gtt.idempotency_key))
                ).fetchone()
                if keyed is not None:
                    if keyed[0] != fingerprint:
                        raise OrderRefused(
                            Refusal.IDEMPOTENCY_KEY_REUSED,
                            "this idempotency key was used for a different GTT",
                        )
                    return _view(keyed[1:])
            expires = self._expiry(gtt.expires_at)  # after: a retry's may have passed
            legs = self._checked(gtt.symbol, gtt.kind, gtt.legs, kyc_status)
            if active >= MAX_ACTIVE_GTTS:
                raise GttRefused(
                    GttRefusal.GTT_LIMIT, f"a user may have {MAX_ACTIVE_GTTS} active GTTs"
                )
            params = {
                "account": account_id,
                "symbol": gtt.symbol,
                "kind": gtt.kind,
                "expires": expires,
                "life": self.life,
                "key": gtt.idempotency_key,
                "hash": gtt.idempotency_key and fingerprint,
            } | legs
            created = await (await conn.execute(_INSERT, params)).fetchone()
        assert created is not None  # an INSERT ... RETURNING
        return _view(created)

    async def list(self, user_id: str, status: str | None) -> GttList:
        """The user's GTTs (of one status when given), newest first, up to 500."""
        query = _OWNED + (" AND g.status = %(status)s" if status else "")
        async with self.entry.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    query + " ORDER BY g.gtt_id DESC LIMIT 500", {"user": user_id, "status": status}
                )
            ).fetchall()
        return GttList([_view(row) for row in rows])

    async def get(self, user_id: str, gtt_id: int) -> GttView:
        async with self.entry.pool.connection() as conn:
            return _view(await _owned(conn, user_id, gtt_id))

    async def change(self, user_id: str, gtt_id: int, change: GttChange) -> GttView:
        """New legs (and expiry) of an ACTIVE GTT, checked as at creation."""
        expires = self._expiry(change.expires_at)
        async with self.entry.pool.connection() as conn, conn.transaction():
            row = await _owned(conn, user_id, gtt_id, lock=True)
            _require_active(row)
            kyc = await (
                await conn.execute("SELECT kyc_status FROM accounts WHERE user_id = %s", (user_id,))
            ).fetchone()
            assert kyc is not None  # the GTT's account
            legs = self._checked(row[1], row[2], change.legs, kyc[0])
            params = {"gtt": gtt_id, "expires": expires} | legs
            changed = await (await conn.execute(_UPDATE, params)).fetchone()
        assert changed is not None  # locked and ACTIVE above
        return _view(changed)

    async def cancel(self, user_id: str, gtt_id: int) -> GttView:
        """CANCELLED if still ACTIVE (else GTT_NOT_ACTIVE: it fired, expired or was
        cancelled first)."""
        async with self.entry.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_CANCEL, {"gtt": gtt_id, "user": user_id})).fetchone()
            if row is None:
                _require_active(await _owned(conn, user_id, gtt_id))
                raise AssertionError("unreachable: an ACTIVE GTT of the user is cancelled")
        return _view(row)

    def _expiry(self, asked: datetime | None) -> datetime | None:
        if asked is None:
            return None
        now = datetime.now(UTC)
        if not now < asked <= now + self.life:
            raise GttRefused(
                GttRefusal.GTT_INVALID_EXPIRY,
                f"expiresAt must be in the future and at most {self.life.days} days away",
            )
        return asked

    def _checked(
        self, symbol: str, kind: str, legs: Sequence[GttLeg], kyc_status: str
    ) -> dict[str, object]:
        """The legs as their columns (paise, the order as JSON) if they make the kind
        and each order passes the order checks (at the next moment the market is open);
        else GttRefused or OrderRefused."""
        if len(legs) != (1 if kind == "SINGLE" else 2):
            raise GttRefused(
                GttRefusal.GTT_INVALID_LEGS,
                f"a {kind} GTT has {1 if kind == 'SINGLE' else 2} leg(s)",
            )
        triggers = [_trigger_paise(leg.trigger_price, n) for n, leg in enumerate(legs, 1)]
        if kind == "OCO":
            low, high = sorted(zip(triggers, (leg.condition for leg in legs), strict=True))
            if (low[1], high[1]) != ("<=", ">=") or low[0] == high[0]:
                raise GttRefused(
                    GttRefusal.GTT_INVALID_LEGS,
                    "an OCO's legs are one '<=' trigger below one '>=' trigger",
                )
        instrument = self.entry.market.get(symbol)
        now = self.entry.clock()
        if instrument is not None and instrument.session.phase(now) is not Phase.OPEN:
            now = instrument.session.next_open(now)
        columns: dict[str, object] = {}
        for n in (1, 2):
            leg = legs[n - 1] if n <= len(legs) else None
            if leg is not None:
                request = leg_request(symbol, leg.order, "check")
                try:
                    self.entry.check(request, kyc_status, _UNLIMITED, now, {})
                except OrderRefused as refused:
                    raise OrderRefused(refused.reason, f"leg {n}: {refused.message}") from None
            columns |= {
                f"condition_{n}": leg and leg.condition,
                f"trigger_{n}": leg and triggers[n - 1],
                f"order_{n}": leg and Jsonb(msgspec.to_builtins(leg.order)),
            }
        return columns


def leg_request(symbol: str, order: GttOrder, key: str) -> PlaceOrderRequest:
    """The new order a leg places, ``key`` its idempotency key."""
    return PlaceOrderRequest(symbol, order.side, order.type, order.quantity, key, price=order.price)


def _fingerprint(gtt: NewGtt) -> str:
    """The request without its key: what a retry must repeat."""
    body = msgspec.json.encode(msgspec.structs.replace(gtt, idempotency_key=None))
    return hashlib.sha256(body).hexdigest()


def _trigger_paise(price: Decimal, leg: int) -> int:
    """A leg's trigger price in paise; INVALID_TRIGGER unless positive, in whole paise
    and at most _MAX_TRIGGER (checked before any arithmetic: NaN and 1E+999999999 too)."""
    if not (price.is_finite() and 0 < price <= _MAX_TRIGGER):
        raise OrderRefused(
            RejectCode.INVALID_TRIGGER,
            f"leg {leg}: the trigger price must be a positive amount up to {_MAX_TRIGGER:,}",
        )
    whole = price.quantize(_PAISA)  # at most 15 digits: bounded above
    if whole != price:
        raise OrderRefused(
            RejectCode.INVALID_TRIGGER, f"leg {leg}: the trigger price must be in whole paise"
        )
    return int(whole.scaleb(2))


async def _owned(
    conn: AsyncConnection, user_id: str, gtt_id: int, *, lock: bool = False
) -> tuple[Any, ...]:
    """The user's GTT (locked for a change), else GTT_NOT_FOUND: another user's looks
    the same as none."""
    query = _OWNED + " AND g.gtt_id = %(gtt)s" + (" FOR UPDATE OF g" if lock else "")
    row = await (await conn.execute(query, {"user": user_id, "gtt": gtt_id})).fetchone()
    if row is None:
        raise GttRefused(GttRefusal.GTT_NOT_FOUND, f"no GTT {gtt_id}")
    return tuple(row)


def _require_active(row: tuple[Any, ...]) -> None:
    if row[3] != "ACTIVE":
        raise GttRefused(GttRefusal.GTT_NOT_ACTIVE, f"GTT {row[0]} is {row[3]}")


def _view(row: Sequence[Any]) -> GttView:
    (gtt_id, symbol, kind, status, c1, t1, o1, c2, t2, o2, fired, price, triggered_at) = row[:13]
    order_id, failure_code, failure_message, expires_at, created_at, updated_at = row[13:]
    legs = []
    for n, (condition, trigger, order) in enumerate(((c1, t1, o1), (c2, t2, o2)), 1):
        if condition is None:
            continue
        leg_status = status if fired is None or fired == n else "CANCELLED"
        order_struct = msgspec.convert(order, GttOrder)
        legs.append(GttLegView(condition, rupees(trigger), order_struct, leg_status))
    return GttView(
        gtt_id,
        symbol,
        kind,
        status,
        legs,
        expires_at.isoformat(),
        created_at.isoformat(),
        updated_at.isoformat(),
        triggered_at.isoformat() if triggered_at else None,
        rupees(price),
        order_id,
        ErrorDetail(failure_code, failure_message) if failure_code else None,
    )
