"""Who hears of what, and where: the users' notification preferences and push devices
(tables ``notification_preferences`` and ``push_devices``), as the REST app edits them
and as the router reads them for many users at once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from psycopg import AsyncConnection

__all__ = [
    "Channel",
    "Preferences",
    "KINDS",
    "DeviceRequest",
    "load_preferences",
    "store_preferences",
    "add_device",
    "remove_device",
    "channels_of",
    "devices_of",
]

Channel = Literal["IN_APP", "PUSH", "NONE"]


class Preferences(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a user hears of each kind; the body of PUT/GET .../preferences. A PUT
    replaces them all: a kind it leaves out is IN_APP again."""

    FILL: Channel = "IN_APP"
    TRIGGERED: Channel = "IN_APP"
    CANCELLED: Channel = "IN_APP"
    EXPIRED: Channel = "IN_APP"
    REJECTED: Channel = "IN_APP"
    PRICE_ALERT: Channel = "IN_APP"
    GTT_TRIGGERED: Channel = "IN_APP"  # a GTT's end (brokercore.notify.owed)
    GTT_FAILED: Channel = "IN_APP"
    GTT_EXPIRED: Channel = "IN_APP"


KINDS = Preferences.__struct_fields__


class DeviceRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """A push device to register: the provider's token (FCM's are base64url with ':',
    APNs' hex), so it can also stand in a URL path."""

    device_token: Annotated[
        str, msgspec.Meta(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_:.\-]+$")
    ]


async def load_preferences(conn: AsyncConnection, user: str) -> Preferences:
    rows = await (
        await conn.execute(
            "SELECT event_type, channel FROM notification_preferences WHERE user_id = %s", (user,)
        )
    ).fetchall()
    return Preferences(**dict(rows))


async def store_preferences(conn: AsyncConnection, user: str, preferences: Preferences) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM notification_preferences WHERE user_id = %s", (user,))
        await conn.cursor().executemany(
            "INSERT INTO notification_preferences (user_id, event_type, channel) "
            "VALUES (%s, %s, %s)",
            [(user, kind, getattr(preferences, kind)) for kind in KINDS],
        )


async def add_device(conn: AsyncConnection, user: str, token: str) -> bool:
    """Register a device for ``user``; True if it is new to them. A device belongs to
    the user who registered it last: a phone that changed accounts stops getting the
    previous account's pushes."""
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM push_devices WHERE device_token = %s AND user_id <> %s", (token, user)
        )
        cursor = await conn.execute(
            "INSERT INTO push_devices (user_id, device_token) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (user, token),
        )
        return cursor.rowcount == 1


async def remove_device(conn: AsyncConnection, user: str, token: str) -> bool:
    cursor = await conn.execute(
        "DELETE FROM push_devices WHERE user_id = %s AND device_token = %s", (user, token)
    )
    return cursor.rowcount == 1


async def channels_of(
    conn: AsyncConnection, users: Sequence[str]
) -> dict[tuple[str, str], Channel]:
    """(user, kind) -> channel, for the kinds these users chose (no row: IN_APP)."""
    return {
        (user, kind): channel
        for user, kind, channel in await (
            await conn.execute(
                "SELECT user_id, event_type, channel FROM notification_preferences "
                "WHERE user_id = ANY(%s)",
                (list(users),),
            )
        ).fetchall()
    }


async def devices_of(conn: AsyncConnection, users: Sequence[str]) -> defaultdict[str, list[str]]:
    """user -> their devices' tokens, oldest registration first (none: an empty list)."""
    devices: defaultdict[str, list[str]] = defaultdict(list)
    for user, token in await (
        await conn.execute(
            "SELECT user_id, device_token FROM push_devices WHERE user_id = "
            "ANY(%s) ORDER BY user_id, created_at",
            (list(users),),
        )
    ).fetchall():
        devices[user].append(token)
    return devices
