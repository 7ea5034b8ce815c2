"""Notifications made outside the notifier, delivered live by it.

Some notifications are made by a database transaction of another process, in the
transaction whose change they tell: the end of a GTT (its order placed, refused, or
expired; migration 0019) stores its notification in the user's inbox and in
``owed_notifications``. The notifier reads what is owed every ``OWED_EVERY`` seconds,
publishes it in the app and pushes and posts it as the router does any other
notification (``Notifier.route``, ``Notifier.deliver``), and deletes each once all its
pushes and postbacks are done (delivered or dead-lettered). A notifier that dies before
that leaves it owed: the next one sends it again (at-least-once, like every
notification; clients drop a second copy by its id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import msgspec
import psycopg

from brokercore.notify.router import Delivery, Notifier
from brokercore.realtime.channels import Notification

__all__ = ["OWED_EVERY", "OWED_SQL", "OwedNotifications"]

OWED_EVERY = 1.0
"""Seconds between two reads of what is owed: how late such a notification may be."""

log = logging.getLogger("brokercore.notify.owed")

OWED_SQL = """
SELECT user_id, notification::text FROM owed_notifications
 WHERE NOT notification_id = ANY(%s) ORDER BY owed_since, notification_id LIMIT %s"""

_notification = msgspec.json.Decoder(Notification)


class OwedNotifications:
    """What is owed, taken by one notifier: each notification once while it is on its
    way (``take`` skips those), again after a restart if it was not forgotten."""

    def __init__(self, notifier: Notifier, *, limit: int = 500):
        self.notifier = notifier
        self.limit = limit
        self._sending: set[str] = set()

    async def take(self) -> list[Coroutine[Any, Any, None]]:
        """Publish the owed notifications not on their way yet; returns, for each, the
        coroutine that delivers its pushes and postbacks and then forgets it."""
        async with self.notifier.pool.connection() as conn:
            rows = await (
                await conn.execute(OWED_SQL, (sorted(self._sending), self.limit))
            ).fetchall()
        items = [(user, _notification.decode(text)) for user, text in rows]
        owed = await self.notifier.route(items)
        self._sending |= {n.id for _, n in items}
        return [
            self._deliver(n.id, deliveries) for (_, n), deliveries in zip(items, owed, strict=True)
        ]

    async def _deliver(self, notification_id: str, deliveries: list[Delivery]) -> None:
        try:
            await asyncio.gather(*(self.notifier.deliver(d) for d in deliveries))
            async with self.notifier.pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM owed_notifications WHERE notification_id = %s",
                    (notification_id,),
                )
        except psycopg.OperationalError as e:  # still owed: sent again once Postgres is back
            log.warning("forgetting the delivered notification %s failed: %s", notification_id, e)
        finally:
            self._sending.discard(notification_id)
