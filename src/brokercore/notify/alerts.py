"""Price alerts: "notify me when SYMBOL crosses PRICE" (table ``price_alerts``).

An alert remembers on which side of its price the last trade was (``side``: -1 below,
1 at or above, 0 not known yet) and fires each time a trade lands on the other side, so
it fires once per crossing however many trades follow on the same side. A side of 0
(no trade seen yet) is only recorded, never fired: "crossing" needs a before.

The notifier (``brokercore.notify.router``) evaluates **every trade in order**, not only the
last of a batch: a batch holding an up-move and a down-move fires both crossings, and
each fire names the trade that made it, the same however Kafka splits the stream into
batches. The new sides of a batch are written back in one UPDATE.

The sides are stored when the notifier handles a batch, before its pushes are done, so
a re-delivered trade fires nothing again. Its fires are therefore kept in the same
transaction (``alert_fires``, by brokercore.notify.router) until the notifier has committed
the trade's Kafka offset; a notifier that starts sends again what a predecessor left
there (at-least-once, like the rest of its notifications).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

import msgspec
from psycopg import AsyncConnection

from brokercore.broker.money import rupees
from brokercore.read.candles import LAST_PRICE_SQL

__all__ = [
    "Alert",
    "TradePrice",
    "AlertChange",
    "Fire",
    "side_of",
    "cross",
    "apply_trades",
    "AlertRequest",
    "AlertBody",
    "MAX_ALERTS_PER_USER",
    "CREATE_SQL",
    "LIST_SQL",
    "DELETE_SQL",
    "initial_side",
    "alert_body",
]

MAX_ALERTS_PER_USER = 100
"""Every trade of a symbol is compared with its alerts: a user cannot add thousands."""


@dataclass(frozen=True)
class Alert:
    alert_id: int
    user_id: str
    symbol: str
    price: int  # paise
    side: int  # -1 below, 1 at or above, 0 unknown


@dataclass(frozen=True)
class TradePrice:
    trade_id: str  # brokercore.broker.orders.trade_id
    symbol: str
    price: int  # paise
    time: datetime


@dataclass(frozen=True)
class AlertChange:
    """What a batch does to one alert: its new side, and the fires it added."""

    side: int
    fired: int = 0
    fired_at: datetime | None = None  # the trade time of the last fire


@dataclass(frozen=True)
class Fire:
    """An alert that fired on a trade."""

    alert: Alert
    trade: TradePrice


def side_of(alert_price: int, last_price: int) -> int:
    """Where the last price stands against the alert's: 1 at or above, -1 below."""
    return 1 if last_price >= alert_price else -1


def cross(
    alerts: Iterable[Alert], trades: Sequence[TradePrice]
) -> tuple[list[Fire], dict[int, AlertChange]]:
    """The fires of ``trades`` (taken in order) on ``alerts``, and the change of every
    alert whose side moved."""
    by_symbol: dict[str, list[Alert]] = defaultdict(list)
    for alert in alerts:
        by_symbol[alert.symbol].append(alert)
    fires: list[Fire] = []
    changed: dict[int, AlertChange] = {}
    for trade in trades:
        for alert in by_symbol.get(trade.symbol, ()):
            now = changed.get(alert.alert_id) or AlertChange(alert.side)
            new = side_of(alert.price, trade.price)
            if new == now.side:
                continue
            if now.side == 0:  # the first price seen: a position, not a crossing
                changed[alert.alert_id] = AlertChange(new, now.fired, now.fired_at)
            else:
                fires.append(Fire(alert, trade))
                changed[alert.alert_id] = AlertChange(new, now.fired + 1, trade.time)
    return fires, changed


# --- the rows -----------------------------------------------------------------------

_CHANGING_SQL = """
SELECT a.alert_id, a.user_id, a.symbol, a.price, a.side
  FROM price_alerts a
  JOIN unnest(%s::text[], %s::bigint[], %s::bigint[]) AS t (symbol, low, high)
    ON a.symbol = t.symbol
 WHERE a.side = 0 OR (a.side = 1 AND a.price > t.low) OR (a.side = -1 AND a.price <= t.high)
 ORDER BY a.alert_id
   FOR UPDATE OF a"""
"""The alerts that trades between low and high (paise) can move, locked. The others
stay put: one at or above with its price at or under the lowest trade, one below with
its price over the highest."""

_UPDATE_SQL = """
UPDATE price_alerts a
   SET side = u.side, fired = a.fired + u.fired,
       last_fired_at = coalesce(u.fired_at, a.last_fired_at)
  FROM unnest(%s::bigint[], %s::smallint[], %s::int[], %s::timestamptz[])
       AS u (alert_id, side, fired, fired_at)
 WHERE a.alert_id = u.alert_id"""


async def apply_trades(conn: AsyncConnection, trades: Sequence[TradePrice]) -> list[Fire]:
    """Move the alerts of the trades' symbols through ``trades`` (in order) and store
    their new sides, in one transaction on ``conn``; returns the fires."""
    if not trades:
        return []
    ranges: dict[str, tuple[int, int]] = {}
    for t in trades:
        low, high = ranges.get(t.symbol, (t.price, t.price))
        ranges[t.symbol] = (min(low, t.price), max(high, t.price))
    async with conn.transaction():
        rows = await (
            await conn.execute(
                _CHANGING_SQL,
                (list(ranges), [r[0] for r in ranges.values()], [r[1] for r in ranges.values()]),
            )
        ).fetchall()
        fires, changed = cross([Alert(*row) for row in rows], trades)
        if changed:
            await conn.execute(
                _UPDATE_SQL,
                (
                    list(changed),
                    [c.side for c in changed.values()],
                    [c.fired for c in changed.values()],
                    [c.fired_at for c in changed.values()],
                ),
            )
    return fires


# --- the REST bodies (services/notifier) and their SQL ---------------------------------


class AlertRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    price: Decimal  # rupees


class AlertBody(msgspec.Struct, rename="camel", frozen=True):
    alert_id: int
    symbol: str
    price: str  # rupees
    fired: int  # how many crossings it has notified
    last_fired_at: str | None
    created_at: str


_COLUMNS = "alert_id, symbol, price, fired, last_fired_at, created_at"

CREATE_SQL = f"""
INSERT INTO price_alerts (user_id, symbol, price, side)
SELECT %(user)s, %(symbol)s, %(price)s, %(side)s
 WHERE (SELECT count(*) FROM price_alerts WHERE user_id = %(user)s) < %(limit)s
RETURNING {_COLUMNS}"""
"""No row comes back when the user already has ``limit`` alerts."""

LIST_SQL = f"SELECT {_COLUMNS} FROM price_alerts WHERE user_id = %s ORDER BY alert_id"

DELETE_SQL = "DELETE FROM price_alerts WHERE alert_id = %s AND user_id = %s"


async def initial_side(conn: AsyncConnection, symbol: str, price: int) -> int:
    """A new alert's side: from the symbol's last trade in the read model, 0 if none."""
    row = await (await conn.execute(LAST_PRICE_SQL, {"symbol": symbol})).fetchone()
    return 0 if row is None else side_of(price, row[0])


def alert_body(row: tuple[int, str, int, int, datetime | None, datetime]) -> AlertBody:
    """The body of a row of ``_COLUMNS``."""
    alert_id, symbol, price, fired, last_fired_at, created_at = row
    return AlertBody(
        alert_id,
        symbol,
        rupees(price),
        fired,
        last_fired_at.astimezone(UTC).isoformat() if last_fired_at else None,
        created_at.astimezone(UTC).isoformat(),
    )
