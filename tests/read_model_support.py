"""Reading what the projector wrote, for the read-model tests: rows, ORDER_UPDATEs, the
depth and the BOOK message as the query service computes them."""

from __future__ import annotations

import json

from brokercore.consumers.pg_consumer import Message
from brokercore.read.candles import (
    AUCTION_SQL,
    DEPTH_LEVELS,
    DEPTH_SQL,
    LAST_PRICE_SQL,
    PHASES_SQL,
    book_update,
)
from brokercore.realtime.channels import BookUpdate, OrderUpdate, decode_message
from venue_support import INST, Venue

T0 = 1_772_000_000_000  # Kafka timestamp (ms) of the hand-made messages
SYMBOL = INST.symbol


def accounts(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT user_id, account_id FROM accounts").fetchall())


def stamped(v: Venue, start: int = 0) -> list[Message]:
    """The venue's messages from its ``start``-th on, with a Kafka timestamp each."""
    return [m._replace(timestamp_ms=T0 + m.offset) for m in v.messages(start)]


def order_row(conn, order_id: int):
    return conn.execute(
        "SELECT user_id, status, price, quantity, filled_quantity, filled_notional, avg_price,"
        " reject_reason, fills, last_update_id FROM read_model.orders WHERE order_id = %s",
        (order_id,),
    ).fetchone()


def updates(conn, user: str) -> list[tuple[int, OrderUpdate]]:
    """(update_id, the payload as a client decodes it) of a user, in order."""
    return [
        (i, decode_message(json.dumps(p)))
        for i, p in conn.execute(
            "SELECT update_id, payload FROM read_model.order_updates WHERE user_id = %s "
            "ORDER BY update_id",
            (user,),
        )
    ]


def depth(conn, symbol: str = SYMBOL) -> list[tuple]:
    return conn.execute(DEPTH_SQL, {"symbol": symbol, "levels": DEPTH_LEVELS}).fetchall()


def current_book(conn, symbol: str = SYMBOL) -> BookUpdate:
    """The BOOK message of the symbol from the read model, as the query service reads it."""
    last = conn.execute(LAST_PRICE_SQL, {"symbol": symbol}).fetchone()
    phase = conn.execute(PHASES_SQL, {"symbols": [symbol]}).fetchone()
    auction = conn.execute(AUCTION_SQL, {"symbols": [symbol]}).fetchall()
    return book_update(
        symbol,
        depth(conn, symbol),
        last[0] if last else None,
        phase[1] if phase else "OPEN",
        [row[1:] for row in auction],
        band=INST.band_paise,
    )
