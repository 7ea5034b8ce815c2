"""The WebSocket half of the client: /ws/v1/orders (services/ws.py's protocol) as an
async iterator that outlives a connection.

Each ORDER_UPDATE carries ``seq``, growing per user. The iterator remembers the last one
it yielded and, when the connection drops (a gateway restarted, the edge reloaded, a
network error, a slow-consumer close), connects again with ``?since=<that seq>``: the
gateway replays every update after it from the read model, then goes live, none twice.
A replay cut short (RESUMED ``truncated``) is resumed the same way. Updates with a seq
already yielded are dropped, so a consumer never sees one twice. NOTIFICATIONs, TRADEs
and BOOKs are live only: those sent while disconnected are not replayed.

Started with ``since=None`` the stream is live from its first connection, and gap-free
from the first ORDER_UPDATE it yields; give ``since`` (0: the user's whole history) to
be gap-free from that point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from brokercore.client.errors import ApiError
from brokercore.realtime.channels import BookUpdate, Notification, OrderUpdate, TradeTick

if TYPE_CHECKING:
    from brokercore.client.api import Client

__all__ = ["Update", "MarketChannel", "stream_updates"]

Update = OrderUpdate | Notification | TradeTick | BookUpdate
MarketChannel = tuple[Literal["trades", "book"], str]

RETRY_FIRST, RETRY_MAX = 0.05, 2.0  # seconds between reconnects: doubling up to the most
_REFUSED = {4400: 400, 4401: 401}  # close codes that a reconnect would not mend


class _Control(msgspec.Struct):
    """The fields of the gateway's own frames the stream acts on."""

    type: str
    truncated: bool = False


_updates = msgspec.json.Decoder(Update)
_control = msgspec.json.Decoder(_Control)
_PONG = msgspec.json.encode({"op": "pong"}).decode()


def _ws_url(base_url: str, since: int | None) -> str:
    scheme, rest = base_url.split("://", 1)
    url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/v1/orders"
    return url if since is None else f"{url}?since={since}"


async def stream_updates(
    client: Client, since: int | None, market: Sequence[MarketChannel]
) -> AsyncIterator[Update]:
    """Every update for ``client``'s user, across reconnects (module docstring). Raises
    ApiError when the gateway refuses the login for good (4401 without a refresh token,
    or after one; 4400 a bad ``since``)."""
    last, delay, refreshed = since, RETRY_FIRST, False
    while True:
        token = client.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with websockets.connect(
                _ws_url(client.base_url, last), additional_headers=headers, open_timeout=10
            ) as socket:
                async for text in socket:
                    kind = _control.decode(text)
                    if kind.type == "WELCOME":
                        delay, refreshed = RETRY_FIRST, False
                        for channel, symbol in market:
                            op = {"op": "subscribe", "channel": channel, "symbol": symbol}
                            await socket.send(msgspec.json.encode(op).decode())
                    elif kind.type == "PING":
                        await socket.send(_PONG)
                    elif kind.type == "RESUMED" and kind.truncated:
                        break  # more are waiting: connect again from the last one
                    elif kind.type in ("ORDER_UPDATE", "NOTIFICATION", "TRADE", "BOOK"):
                        update = _updates.decode(text)
                        if isinstance(update, OrderUpdate):
                            if last is not None and update.seq <= last:
                                continue
                            last = update.seq
                        yield update
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else 1006
            reason = closed.rcvd.reason if closed.rcvd else ""
            if code in _REFUSED:
                error_code, _, message = reason.partition(": ")
                if error_code == "TOKEN_EXPIRED" and client.refresh_token and not refreshed:
                    await client.refresh_expired(token)
                    refreshed = True
                    continue
                raise ApiError(_REFUSED[code], error_code, message) from None
        except (OSError, InvalidHandshake, TimeoutError):
            pass  # the edge or every gateway away for now: try again
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)
