"""The orders of fired GTTs, placed exactly once; expired GTTs ended (the trigger
service's second step, docs/gtt.md).

brokercore.consumers.gtt_watch marks a GTT TRIGGERED in the transaction that stores its
Kafka offsets. Its order is placed here afterwards by ``OrderEntry.place``, the normal
write path (checks, hold, the order and its outbox row in one transaction), under the
GTT's ``fire_key`` as idempotency key; then the GTT gets the order's id, or ends FAILED
with the refusal. A pass holds the row locks of the GTTs it places (SKIP LOCKED: two
processes never place one GTT at once), so a GTT's outcome is written by the pass that
placed it. A crash between the order's commit and the GTT's only leaves a TRIGGERED GTT
without an order id: the next pass places it again with the same key, and the order
entry answers with the order already placed (its command again if it was never
published). The key lives ``FIRE_KEY_TTL``, far longer than any restart takes.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from brokercore.entry.gtt import leg_request
from brokercore.entry.order_entry import OrderEntry, OrderRefused
from brokercore.entry.outbox import OutboxRow
from brokercore.entry.requests import GttOrder

__all__ = ["FIRE_KEY_TTL", "Placed", "expire_gtts", "place_fired"]

FIRE_KEY_TTL = timedelta(days=30)
"""How long a fired GTT's idempotency key is kept (the OMS's are kept 24 h)."""

_TO_PLACE = """
SELECT g.gtt_id, a.user_id, g.symbol, g.fire_key,
       CASE g.fired_leg WHEN 1 THEN g.order_1 ELSE g.order_2 END
  FROM gtts g JOIN accounts a ON a.account_id = g.account_id
 WHERE g.status = 'TRIGGERED' AND g.order_id IS NULL
 ORDER BY g.gtt_id LIMIT %s FOR UPDATE OF g SKIP LOCKED"""


class Placed(msgspec.Struct):
    """What a pass did: orders placed, GTTs FAILED, and the commands to publish."""

    placed: int = 0
    failed: int = 0
    outbox: list[OutboxRow] = []


async def place_fired(entry: OrderEntry, limit: int = 200) -> Placed:
    """Place the orders of up to ``limit`` TRIGGERED GTTs that have none yet."""
    done = Placed()
    async with entry.pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(_TO_PLACE, (limit,))).fetchall()
        for gtt_id, user_id, symbol, key, order in rows:
            request = leg_request(symbol, msgspec.convert(order, GttOrder), key)
            try:
                receipt = await entry.place(user_id, request)
            except OrderRefused as refused:
                await conn.execute(
                    "UPDATE gtts SET status = 'FAILED', failure_code = %s, "
                    "failure_message = %s, updated_at = now() WHERE gtt_id = %s",
                    (refused.reason.value, refused.message, gtt_id),
                )
                done.failed += 1
                continue
            await conn.execute(
                "UPDATE gtts SET order_id = %s, updated_at = now() WHERE gtt_id = %s",
                (receipt.order_id, gtt_id),
            )
            done.placed += 1
            if receipt.outbox is not None:
                done.outbox.append(receipt.outbox)
    return done


async def expire_gtts(entry: OrderEntry) -> int:
    """ACTIVE GTTs past their expiry become EXPIRED; how many."""
    async with entry.pool.connection() as conn:
        cursor = await conn.execute(
            "UPDATE gtts SET status = 'EXPIRED', updated_at = now() "
            "WHERE status = 'ACTIVE' AND expires_at <= now()"
        )
        return cursor.rowcount
