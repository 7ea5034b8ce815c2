"""Watchlists: named lists of symbols per user, each symbol shown with its last price and
the day's change (GET/POST /api/v1/watchlists, GET/PUT/DELETE /api/v1/watchlists/{id}).

Limits: 20 lists a user, 50 symbols a list, names unique per user; the database refuses
a 21st list (a list takes one of the slots 1..20) and a 51st symbol (positions 0..49).
Whether a symbol is a known instrument is the service's check (the instruments file).
The day's change is the last trade price less the previous close, the last trade before
the symbol's trading day began (``brokercore.read.queries.day_prices``); None while the
symbol has not traded before today. Lists are read and written on the primary, so a
user reads their own change at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

import msgspec
from psycopg import AsyncConnection, errors

from brokercore.broker.money import rupees
from brokercore.read.queries import day_prices

__all__ = [
    "MAX_LISTS",
    "MAX_SYMBOLS",
    "WatchlistRequest",
    "WatchSymbol",
    "Watchlist",
    "TooManyLists",
    "NameTaken",
    "list_watchlists",
    "get_watchlist",
    "create_watchlist",
    "replace_watchlist",
    "delete_watchlist",
]

MAX_LISTS = 20
"""Lists a user may have (the slots of watchlists_slot_valid)."""

MAX_SYMBOLS = 50
"""Symbols a list may have (the positions of watchlist_symbols_position_valid)."""

Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class WatchlistRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """POST and PUT bodies: the list's name (1..64 characters, not only spaces) and its
    symbols in order (each once)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\S")]
    symbols: Annotated[list[Symbol], msgspec.Meta(max_length=MAX_SYMBOLS)] = []


class WatchSymbol(msgspec.Struct, rename="camel", frozen=True):
    symbol: str
    last_price: str | None  # None before the first trade
    previous_close: str | None  # the last price before today; None if none
    change: str | None  # last - previous close
    change_percent: str | None  # of the previous close, two decimals


class Watchlist(msgspec.Struct, rename="camel", frozen=True):
    id: int
    name: str
    symbols: list[WatchSymbol]
    created_at: str
    updated_at: str


class Watchlists(msgspec.Struct, frozen=True):
    """GET /api/v1/watchlists' answer: the user's lists, oldest first."""

    watchlists: list[Watchlist]


class TooManyLists(Exception):
    """The user has MAX_LISTS lists already."""


class NameTaken(Exception):
    """The user has another list of that name."""


_LISTS = """
SELECT w.watchlist_id, w.name, w.created_at, w.updated_at,
       coalesce(array_agg(s.symbol ORDER BY s.position) FILTER (WHERE s.symbol IS NOT NULL),
                '{}')
  FROM watchlists w LEFT JOIN watchlist_symbols s ON s.watchlist_id = w.watchlist_id
 WHERE w.user_id = %(user)s AND (%(id)s::bigint IS NULL OR w.watchlist_id = %(id)s)
 GROUP BY w.watchlist_id
 ORDER BY w.watchlist_id"""

# The lowest free slot; nothing when none is free, or when a concurrent create took the
# slot or the name meanwhile (ON CONFLICT: the caller looks again).
_CREATE = """
INSERT INTO watchlists (user_id, slot, name)
SELECT %(user)s, s, %(name)s FROM generate_series(1, %(lists)s) s
 WHERE s NOT IN (SELECT slot FROM watchlists WHERE user_id = %(user)s)
 ORDER BY s LIMIT 1
ON CONFLICT DO NOTHING
RETURNING watchlist_id"""

_TAKEN = """
SELECT count(*), count(*) FILTER (WHERE name = %(name)s) FROM watchlists WHERE user_id = %(user)s"""

_RENAME = """
UPDATE watchlists SET name = %(name)s, updated_at = now()
 WHERE watchlist_id = %(id)s AND user_id = %(user)s RETURNING watchlist_id"""

_SET_SYMBOLS = """
INSERT INTO watchlist_symbols (watchlist_id, position, symbol)
SELECT %(id)s, n - 1, symbol FROM unnest(%(symbols)s::text[]) WITH ORDINALITY AS u (symbol, n)"""


async def list_watchlists(
    conn: AsyncConnection, user: str, starts: Mapping[str, datetime]
) -> list[Watchlist]:
    """The user's lists, oldest first, with their symbols' prices (``starts``: when each
    symbol's day began, ``queries.day_starts``)."""
    return await _read(conn, user, None, starts)


async def get_watchlist(
    conn: AsyncConnection, user: str, watchlist_id: int, starts: Mapping[str, datetime]
) -> Watchlist | None:
    """The user's list; None if the user has no such list (another's included)."""
    found = await _read(conn, user, watchlist_id, starts)
    return found[0] if found else None


async def create_watchlist(conn: AsyncConnection, user: str, request: WatchlistRequest) -> int:
    """A new list of the user's (in the caller's transaction, at READ COMMITTED); its id.
    Raises ``TooManyLists`` or ``NameTaken``."""
    params = {"user": user, "name": request.name, "lists": MAX_LISTS}
    while True:
        row = await (await conn.execute(_CREATE, params)).fetchone()
        if row is not None:
            await _set_symbols(conn, row[0], request.symbols)
            return int(row[0])
        counts = await (await conn.execute(_TAKEN, params)).fetchone()
        lists, same_name = counts if counts is not None else (0, 0)
        if same_name:
            raise NameTaken(request.name)
        if lists >= MAX_LISTS:
            raise TooManyLists()
        # a concurrent create took the free slot: the next statement sees it


async def replace_watchlist(
    conn: AsyncConnection, user: str, watchlist_id: int, request: WatchlistRequest
) -> bool:
    """Rename the user's list and replace its symbols (in the caller's transaction);
    False if the user has no such list. Raises ``NameTaken``."""
    try:
        async with conn.transaction():
            row = await (
                await conn.execute(
                    _RENAME, {"id": watchlist_id, "user": user, "name": request.name}
                )
            ).fetchone()
    except errors.UniqueViolation:
        raise NameTaken(request.name) from None
    if row is None:
        return False
    await conn.execute("DELETE FROM watchlist_symbols WHERE watchlist_id = %s", (watchlist_id,))
    await _set_symbols(conn, watchlist_id, request.symbols)
    return True


async def delete_watchlist(conn: AsyncConnection, user: str, watchlist_id: int) -> bool:
    """Delete the user's list (its symbols go with it); False if there is none."""
    cursor = await conn.execute(
        "DELETE FROM watchlists WHERE watchlist_id = %s AND user_id = %s",
        (watchlist_id, user),
    )
    return cursor.rowcount == 1


async def _set_symbols(conn: AsyncConnection, watchlist_id: int, symbols: list[str]) -> None:
    if symbols:
        await conn.execute(_SET_SYMBOLS, {"id": watchlist_id, "symbols": symbols})


async def _read(
    conn: AsyncConnection, user: str, watchlist_id: int | None, starts: Mapping[str, datetime]
) -> list[Watchlist]:
    rows = await (await conn.execute(_LISTS, {"user": user, "id": watchlist_id})).fetchall()
    wanted = {symbol for *_, symbols in rows for symbol in symbols if symbol in starts}
    prices = {
        p.symbol: (p.last, p.previous_close)
        for p in await day_prices(conn, {s: starts[s] for s in sorted(wanted)})
    }
    return [
        Watchlist(
            watchlist_id,
            name,
            [_symbol(s, *prices.get(s, (None, None))) for s in symbols],
            created.astimezone(UTC).isoformat(),
            updated.astimezone(UTC).isoformat(),
        )
        for watchlist_id, name, created, updated, symbols in rows
    ]


def _symbol(symbol: str, last: int | None, close: int | None) -> WatchSymbol:
    if last is None or close is None:
        return WatchSymbol(symbol, rupees(last), rupees(close), None, None)
    percent = (Decimal(100 * (last - close)) / close).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return WatchSymbol(
        symbol,
        rupees(last),
        rupees(close),
        rupees(last - close),
        f"{percent.copy_abs() if percent.is_zero() else percent:f}",
    )
