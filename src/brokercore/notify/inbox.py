"""The notification inbox: every notification the notifier renders, stored for its user to
page through and mark read (GET /api/v1/notifications, POST .../{id}/read, POST
.../read-all, served by notifier-api).

The notifier stores a batch's notifications (``store``) in one statement before it
publishes them, in the transaction that moves the batch's price alerts, so a client
told of a notification on its WebSocket finds it in the inbox. A re-delivered event
renders the same notification id, stored once (the id is unique). The inbox shows the
unread ones first, then the newest (the order they were stored); a page's cursor is the
place of its last row in that order, so paging while nothing is marked read shows each
notification once (marking read moves one to the read part). Marking read keeps the
first read time (idempotent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from psycopg import AsyncConnection, sql

from brokercore.realtime.channels import Notification, encode_message

__all__ = [
    "MAX_PAGE",
    "InboxQuery",
    "InboxItem",
    "InboxPage",
    "BadCursor",
    "store",
    "inbox_page",
    "mark_read",
    "mark_all_read",
]

MAX_PAGE = 200
"""Notifications one page may have."""


class InboxQuery(msgspec.Struct, rename="camel", frozen=True):
    """GET /notifications: only the unread ones?, the page's size and the cursor a
    previous page gave."""

    unread_only: bool = False
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 50
    cursor: Annotated[str, msgspec.Meta(max_length=40)] | None = None


class InboxItem(msgspec.Struct, rename="camel", frozen=True):
    """A notification as pushed (``channels.Notification``'s fields) and whether it
    was read."""

    id: str
    kind: str
    title: str
    body: str
    symbol: str
    created_at: str
    order_id: int | None
    read: bool
    read_at: str | None


class InboxPage(msgspec.Struct, rename="camel", frozen=True):
    notifications: list[InboxItem]
    unread_count: int
    next_cursor: str | None  # None: this was the last page


class BadCursor(ValueError):
    """A cursor this service did not make."""


class _Row(msgspec.Struct, array_like=True):
    user: str
    notification: Notification


# The batch is one JSON array of [user, notification] (one parameter: three text arrays
# cost psycopg ~45 µs of Python per notification, this ~3).
_STORE = """
INSERT INTO notification_inbox (notification_id, user_id, notification)
SELECT r -> 1 ->> 'id', r ->> 0, r -> 1 FROM jsonb_array_elements(%s::jsonb) r
ON CONFLICT (notification_id) DO NOTHING"""


async def store(conn: AsyncConnection, items: Sequence[tuple[str, Notification]]) -> None:
    """Store (user, notification) pairs, each notification id once."""
    if items:
        rows = [_Row(user, n) for user, n in items]
        await conn.execute(_STORE, (encode_message(rows).decode(),))


_PAGE = """
SELECT inbox_id, read_at IS NULL, read_at, notification::text
  FROM notification_inbox
 WHERE user_id = %(user)s AND {filters}
 ORDER BY read_at IS NULL DESC, inbox_id DESC
 LIMIT %(limit)s"""

_UNREAD = """
SELECT count(*) FROM notification_inbox WHERE user_id = %s AND read_at IS NULL"""

_CURSOR = re.compile(r"([01])\.([0-9]{1,18})")

_notification = msgspec.json.Decoder(Notification)


async def inbox_page(conn: AsyncConnection, user: str, query: InboxQuery) -> InboxPage:
    """A page of the user's inbox (unread first, then newest) and their unread count.
    Raises ``BadCursor``."""
    filters = [sql.SQL("read_at IS NULL")] if query.unread_only else []
    params: dict[str, object] = {"user": user, "limit": query.limit + 1}
    if query.cursor is not None:
        place = _CURSOR.fullmatch(query.cursor)
        if place is None:
            raise BadCursor("not a cursor of this endpoint")
        filters.append(sql.SQL("(read_at IS NULL, inbox_id) < (%(unread)s, %(id)s)"))
        params |= {"unread": place[1] == "1", "id": int(place[2])}
    statement = sql.SQL(_PAGE).format(
        filters=sql.SQL(" AND ").join(filters) if filters else sql.SQL("true")
    )
    async with conn.transaction():  # one snapshot for the page and the count
        rows = await (await conn.execute(statement, params)).fetchall()
        unread = await (await conn.execute(_UNREAD, (user,))).fetchone()
    following = None
    if len(rows) > query.limit:
        inbox_id, is_unread, *_ = rows[query.limit - 1]
        following = f"{int(is_unread)}.{inbox_id}"
    return InboxPage(
        [_item(read_at, text) for _, _, read_at, text in rows[: query.limit]],
        unread[0] if unread is not None else 0,
        following,
    )


async def mark_read(conn: AsyncConnection, user: str, notification_id: str) -> InboxItem | None:
    """Mark the user's notification read (the first read time stays); None if the user
    has no such notification."""
    row = await (
        await conn.execute(
            "UPDATE notification_inbox SET read_at = coalesce(read_at, now()) "
            "WHERE notification_id = %s AND user_id = %s RETURNING read_at, notification::text",
            (notification_id, user),
        )
    ).fetchone()
    return None if row is None else _item(*row)


async def mark_all_read(conn: AsyncConnection, user: str) -> int:
    """Mark every unread notification of the user read; how many were unread."""
    cursor = await conn.execute(
        "UPDATE notification_inbox SET read_at = now() WHERE user_id = %s AND read_at IS NULL",
        (user,),
    )
    return cursor.rowcount


def _item(read_at: datetime | None, text: str) -> InboxItem:
    n = _notification.decode(text)
    return InboxItem(
        n.id,
        n.kind,
        n.title,
        n.body,
        n.symbol,
        n.created_at,
        n.order_id,
        read_at is not None,
        None if read_at is None else read_at.astimezone(UTC).isoformat(),
    )
