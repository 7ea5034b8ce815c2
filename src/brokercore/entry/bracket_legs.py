"""The legs of bracket orders, placed exactly once (the trigger service's bracket step,
docs/brackets.md).

A pass reads each live bracket's entry and legs from the orders as settled (the hold of
a sell leg needs the shares the entry's fills credited) and moves it on:

- ACTIVE: a target leg is planned for what the entry filled beyond the legs so far (a
  ``bracket_targets`` row committed before its order is placed, so a replay places the
  same quantity under the same key); an entry that ended CANCELLED or REJECTED, or a
  refused leg, makes it EXITING; once the entry and every leg are closed it is DONE (the
  targets sold all the entry bought) or EXPIRED (the day ended with a position left, or
  the entry expired unfilled).
- STOPPING (the watcher saw a trade meet the stop-loss) and EXITING: the entry and the
  open targets are cancelled; once all are closed, a STOPPING bracket places its
  stop-loss order for the position left (entry filled - targets filled; DONE if none)
  and an EXITING one ends CANCELLED (FAILED after a refused leg).

Every order goes through ``OrderEntry.place`` under a key made of the bracket's
``leg_key`` (never shown), the bracket rows locked (SKIP LOCKED: two placers never
handle one bracket at once). A crash after an order's commit and before the bracket's
leaves the leg without its order id: the next pass places it again with the same key and
quantity and gets the same order back. A cancel sent twice is refused by the engine the
second time and changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import NamedTuple

from psycopg import AsyncConnection

from brokercore.broker.orders import OPEN_STATUSES
from brokercore.entry.brackets import stop_request, target_request
from brokercore.entry.gtt_orders import Placed
from brokercore.entry.order_entry import OrderEntry, OrderRefused
from brokercore.entry.outbox import OutboxRow

__all__ = ["BracketPass", "bracket_pass", "resend_pending"]

_LIVE = """
SELECT b.bracket_id, b.status, a.user_id, b.symbol, b.side, b.stop_limit, b.leg_key,
       b.entry_order_id, b.entry_cancel_sent, b.failure_code, e.status, e.filled_quantity
  FROM brackets b JOIN accounts a ON a.account_id = b.account_id
  JOIN orders e ON e.order_id = b.entry_order_id
 WHERE b.status IN ({statuses}) AND b.bracket_id > %s
 ORDER BY b.bracket_id LIMIT %s FOR UPDATE OF b SKIP LOCKED"""

_LEGS = """
SELECT t.bracket_id, t.seq, t.quantity, t.order_id, t.cancel_sent, t.failure_code,
       t.failure_message, o.status, o.filled_quantity
  FROM bracket_targets t LEFT JOIN orders o ON o.order_id = t.order_id
 WHERE t.bracket_id = ANY(%s) ORDER BY t.bracket_id, t.seq"""

_TO_PLACE = """
SELECT t.bracket_id, t.seq, t.quantity, a.user_id, b.symbol, b.side, b.target, b.leg_key
  FROM bracket_targets t JOIN brackets b ON b.bracket_id = t.bracket_id
  JOIN accounts a ON a.account_id = b.account_id
 WHERE t.order_id IS NULL AND t.failure_code IS NULL
 ORDER BY t.bracket_id, t.seq LIMIT %s FOR UPDATE OF t SKIP LOCKED"""


# The legs whose order is still PENDING (not yet accepted by the engine; its command may
# never have been published, the placer killed after the order's commit): the request
# that placed each, to place again under its key.
_PENDING = """
SELECT a.user_id, b.symbol, b.side, t.quantity, b.target, b.leg_key || ':t' || t.seq, false
  FROM orders o JOIN bracket_targets t ON t.order_id = o.order_id
  JOIN brackets b ON b.bracket_id = t.bracket_id JOIN accounts a ON a.account_id = b.account_id
 WHERE o.status = 'PENDING'
UNION ALL
SELECT a.user_id, b.symbol, b.side, b.stop_quantity, b.stop_limit, b.leg_key || ':stop', true
  FROM orders o JOIN brackets b ON b.stop_order_id = o.order_id
  JOIN accounts a ON a.account_id = b.account_id
 WHERE o.status = 'PENDING'"""


class BracketPass(Placed):
    """A pass's ``Placed`` (cancels' commands in its outbox too), and how many brackets
    wait for their cancels to be settled (worth a pass again soon)."""

    closing: int = 0


class _Bracket(NamedTuple):
    bracket_id: int
    status: str
    user_id: str
    symbol: str
    side: str
    stop_limit: int | None
    leg_key: str
    entry_id: int
    entry_cancel_sent: bool
    failure_code: str | None
    entry_status: str
    entry_filled: int


class _Leg(NamedTuple):
    bracket_id: int
    seq: int
    quantity: int
    order_id: int | None
    cancel_sent: bool
    failure_code: str | None
    failure_message: str | None
    status: str | None  # its order's; None before it is placed
    filled: int | None

    @property
    def unplaced(self) -> bool:
        return self.order_id is None and self.failure_code is None

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES


async def bracket_pass(
    entry: OrderEntry, page: int = 200, *, closing_only: bool = False
) -> BracketPass:
    """One pass over every live bracket (``closing_only``: the STOPPING and EXITING
    ones), ``page`` at a time (a transaction each): the legs planned before placed, the
    page's brackets moved on, the legs planned now placed. What it placed or refused,
    and the commands to publish."""
    done = BracketPass()
    live = _LIVE.format(
        statuses="'STOPPING', 'EXITING'" if closing_only else "'ACTIVE', 'STOPPING', 'EXITING'"
    )
    after: int | None = 0
    while after is not None:
        await _place_targets(entry, page, done)
        after = await _advance(entry, live, after, page, done)
    await _place_targets(entry, page, done)
    return done


async def resend_pending(entry: OrderEntry) -> list[OutboxRow]:
    """The commands of the legs' PENDING orders that were never published (a restart's
    first step): each leg placed again under its key gets its order back, with the
    command when it is still unpublished (the OMS's outbox sweep would send it too, but
    only a sweep interval later)."""
    async with entry.pool.connection() as conn:
        rows = await (await conn.execute(_PENDING)).fetchall()
    outbox = []
    for user_id, symbol, side, quantity, price, key, stop in rows:
        limit = None if price is None else _rupees(price)
        if stop:
            request = stop_request(symbol, side, quantity, limit, key)
        else:
            assert limit is not None  # a target's price
            request = target_request(symbol, side, quantity, limit, key)
        receipt = await entry.place(user_id, request)
        if receipt.outbox is not None:
            outbox.append(receipt.outbox)
    return outbox


async def _place_targets(entry: OrderEntry, limit: int, done: BracketPass) -> None:
    """Place the planned target legs; a refused one records why (its bracket exits)."""
    async with entry.pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(_TO_PLACE, (limit,))).fetchall()
        for bracket_id, seq, quantity, user_id, symbol, side, target, key in rows:
            request = target_request(symbol, side, quantity, _rupees(target), f"{key}:t{seq}")
            try:
                receipt = await entry.place(user_id, request)
            except OrderRefused as refused:
                await conn.execute(
                    "UPDATE bracket_targets SET failure_code = %s, failure_message = %s "
                    "WHERE bracket_id = %s AND seq = %s",
                    (refused.reason.value, refused.message, bracket_id, seq),
                )
                done.failed += 1
                continue
            await conn.execute(
                "UPDATE bracket_targets SET order_id = %s WHERE bracket_id = %s AND seq = %s",
                (receipt.order_id, bracket_id, seq),
            )
            done.placed += 1
            if receipt.outbox is not None:
                done.outbox.append(receipt.outbox)


async def _advance(
    entry: OrderEntry, live: str, after: int, page: int, done: BracketPass
) -> int | None:
    """Move on the brackets ``live`` reads after id ``after``, up to ``page``; the last
    one's id when there may be more."""
    async with entry.pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(live, (after, page))).fetchall()
        brackets = [_Bracket(*row) for row in rows]
        if not brackets:
            return None
        legs: defaultdict[int, list[_Leg]] = defaultdict(list)
        ids = [b.bracket_id for b in brackets]
        for row in await (await conn.execute(_LEGS, (ids,))).fetchall():
            legs[row[0]].append(_Leg(*row))
        for b in brackets:
            if b.status == "ACTIVE":
                await _active(conn, b, legs[b.bracket_id])
            else:
                await _closing(entry, conn, b, legs[b.bracket_id], done)
    return brackets[-1].bracket_id if len(brackets) == page else None


async def _active(conn: AsyncConnection, b: _Bracket, legs: list[_Leg]) -> None:
    """Plan a target leg for a new fill, or exit, or end the bracket."""
    refused = next((leg for leg in legs if leg.failure_code is not None), None)
    legged = sum(leg.quantity for leg in legs)
    if refused is not None or b.entry_status in ("CANCELLED", "REJECTED"):
        await conn.execute(
            "UPDATE brackets SET status = 'EXITING', failure_code = %s, failure_message = %s, "
            "updated_at = now() WHERE bracket_id = %s",
            (
                refused and refused.failure_code,
                refused and f"target leg: {refused.failure_message}",
                b.bracket_id,
            ),
        )
    elif b.entry_filled > legged:
        await conn.execute(
            "INSERT INTO bracket_targets (bracket_id, seq, quantity) VALUES (%s, %s, %s)",
            (b.bracket_id, len(legs) + 1, b.entry_filled - legged),
        )
        await conn.execute(
            "UPDATE brackets SET armed_at = coalesce(armed_at, now()), updated_at = now() "
            "WHERE bracket_id = %s",
            (b.bracket_id,),
        )
    elif b.entry_status not in OPEN_STATUSES and not any(leg.unplaced or leg.open for leg in legs):
        sold = sum(leg.filled or 0 for leg in legs)
        await _end(conn, b, "DONE" if 0 < b.entry_filled == sold else "EXPIRED")


async def _closing(
    entry: OrderEntry, conn: AsyncConnection, b: _Bracket, legs: list[_Leg], done: BracketPass
) -> None:
    """STOPPING or EXITING: cancel what is open; once all is closed, the stop-loss order
    for the position left (STOPPING) or the end (EXITING)."""
    if any(leg.unplaced for leg in legs):
        done.closing += 1
        return  # placed first (it may exist already): then cancelled
    if b.entry_status in OPEN_STATUSES and not b.entry_cancel_sent:
        await _cancel(entry, b.user_id, b.entry_id, done)
        await conn.execute(
            "UPDATE brackets SET entry_cancel_sent = true WHERE bracket_id = %s", (b.bracket_id,)
        )
    for leg in legs:
        if leg.open and not leg.cancel_sent:
            assert leg.order_id is not None  # open: placed
            await _cancel(entry, b.user_id, leg.order_id, done)
            await conn.execute(
                "UPDATE bracket_targets SET cancel_sent = true WHERE bracket_id = %s AND seq = %s",
                (b.bracket_id, leg.seq),
            )
    if b.entry_status in OPEN_STATUSES or any(leg.open for leg in legs):
        done.closing += 1
        return  # the cancels are settled by a later pass's reading
    if b.status == "EXITING":
        await _end(conn, b, "CANCELLED" if b.failure_code is None else "FAILED")
        return
    position = b.entry_filled - sum(leg.filled or 0 for leg in legs)
    if position == 0:
        await _end(conn, b, "DONE")  # the targets sold it all before the stop-loss
        return
    limit = None if b.stop_limit is None else _rupees(b.stop_limit)
    request = stop_request(b.symbol, b.side, position, limit, f"{b.leg_key}:stop")
    try:
        receipt = await entry.place(b.user_id, request)
    except OrderRefused as refused:
        await conn.execute(
            "UPDATE brackets SET status = 'FAILED', failure_code = %s, failure_message = %s, "
            "updated_at = now() WHERE bracket_id = %s",
            (refused.reason.value, f"stop-loss: {refused.message}", b.bracket_id),
        )
        done.failed += 1
        return
    await conn.execute(
        "UPDATE brackets SET status = 'STOPPED', stop_order_id = %s, stop_quantity = %s, "
        "updated_at = now() WHERE bracket_id = %s",
        (receipt.order_id, position, b.bracket_id),
    )
    done.placed += 1
    if receipt.outbox is not None:
        done.outbox.append(receipt.outbox)


async def _cancel(entry: OrderEntry, user_id: str, order_id: int, done: BracketPass) -> None:
    """Ask the engine to cancel an order; one that closed meanwhile needs none."""
    try:
        receipt = await entry.cancel(user_id, order_id)
    except OrderRefused:
        return  # ORDER_NOT_OPEN: filled or ended since it was read
    if receipt.outbox is not None:
        done.outbox.append(receipt.outbox)


async def _end(conn: AsyncConnection, b: _Bracket, status: str) -> None:
    await conn.execute(
        "UPDATE brackets SET status = %s, updated_at = now() WHERE bracket_id = %s",
        (status, b.bracket_id),
    )


def _rupees(paise: int) -> Decimal:
    return Decimal(paise).scaleb(-2)
