"""Enums and record layouts shared by the engine, the reference model and callers.

The numpy dtypes here mirror the C structs in ``_engine.pxd`` byte for byte; the
extension checks that at import time, so a drift is an ImportError, not a silent
misread. docs/engine.md says what every field means for every command and event.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Op",
    "Side",
    "Tif",
    "Stp",
    "Flags",
    "Phase",
    "EventType",
    "Reason",
    "COMMAND_DTYPE",
    "EVENT_DTYPE",
    "ORDER_DTYPE",
    "LEVEL_DTYPE",
    "MARK_DTYPE",
    "MarkKind",
    "MAX_BAND_LEVELS",
    "INT64_MAX",
    "RestingOrder",
    "AuctionQuote",
    "as_commands",
]

INT64_MAX = 2**63 - 1
MAX_BAND_LEVELS = 2**26
"""Widest band a book accepts, in ticks (high - low + 1)."""


class Op(IntEnum):
    """What a command asks the book to do."""

    LIMIT = 1
    MARKET = 2
    CANCEL = 3
    AMEND = 4
    OPEN = 5
    CLOSE = 6
    REBAND = 7
    STOP = 8  # stop-market: waits for its trigger, then enters as a market order
    STOP_LIMIT = 9  # stop-limit: waits for its trigger, then enters as a limit order
    PRE_OPEN = 10  # start the call (pre-open) phase: orders rest without matching
    UNCROSS = 11  # end the call phase at one opening price, then trade continuously
    HALT = 12  # stop matching; re-open through PRE_OPEN and UNCROSS


class Side(IntEnum):
    BUY = 1
    SELL = 2


class Tif(IntEnum):
    """Time in force: GTC and DAY rest, IOC and FOK never do."""

    GTC = 1
    DAY = 2
    IOC = 3
    FOK = 4


class Stp(IntEnum):
    """Self-trade prevention: what happens when a taker meets its own account's order."""

    DEFAULT = 0
    NONE = 1
    CANCEL_NEWEST = 2
    CANCEL_OLDEST = 3
    CANCEL_BOTH = 4
    DECREMENT = 5


class Flags(IntFlag):
    POST_ONLY = 1


class Phase(IntEnum):
    """Where a book is in its trading day (docs/engine.md, Phases)."""

    CLOSED = 0
    OPEN = 1  # continuous matching
    PRE_OPEN = 2  # call phase: orders rest without matching until UNCROSS
    HALTED = 3  # no matching, new orders refused; re-opened through PRE_OPEN


class EventType(IntEnum):
    ACCEPTED = 1
    REJECTED = 2
    TRADE = 3
    CANCELLED = 4
    EXPIRED = 5
    AMENDED = 6
    OPENED = 7
    CLOSED = 8
    REBANDED = 9
    TRIGGERED = 10  # a waiting stop's trigger was reached: it enters the book now
    PRE_OPENED = 11
    UNCROSSED = 12  # the call phase ended: opening price, volume, imbalance
    HALTED = 13


class Reason(IntEnum):
    """Why a command was rejected or an order cancelled or amended by the engine."""

    NONE = 0
    UNKNOWN_OP = 1
    INVALID_ORDER_ID = 2
    DUPLICATE_ORDER_ID = 3
    UNKNOWN_ORDER = 4
    NOT_OWNER = 5
    INVALID_SIDE = 6
    INVALID_TIF = 7
    INVALID_STP = 8
    INVALID_FLAGS = 9
    INVALID_QUANTITY = 10
    QUANTITY_TOO_LARGE = 11
    PRICE_OUT_OF_BAND = 12
    MARKET_CLOSED = 13
    SESSION_STATE = 14
    INVALID_BAND = 15
    NO_LIQUIDITY = 16
    FOK_NOT_FILLABLE = 17
    POST_ONLY_WOULD_TAKE = 18
    USER_CANCEL = 19
    IOC_REMAINDER = 20
    SELF_TRADE = 21
    UNKNOWN_SYMBOL = 22
    INVALID_TRIGGER = 23
    INVALID_DISCLOSED = 24
    HALTED = 25
    INVALID_PRICE = 26


def _struct(fields: list[tuple[str, str]], itemsize: int) -> np.dtype[np.void]:
    """A dtype with C struct alignment and an explicit total size (trailing padding)."""
    aligned = np.dtype(fields, align=True)
    names = aligned.names or ()
    layout: Mapping[str, tuple[Any, ...]] = aligned.fields or {}
    return np.dtype(
        {
            "names": list(names),
            "formats": [layout[n][0] for n in names],
            "offsets": [layout[n][1] for n in names],
            "itemsize": itemsize,
        }
    )


COMMAND_DTYPE = _struct(
    [
        ("symbol", "<u4"),
        ("op", "u1"),
        ("side", "u1"),
        ("tif", "u1"),
        ("stp", "u1"),
        ("flags", "u1"),
        ("ts", "<i8"),
        ("order_id", "<i8"),
        ("account", "<i8"),
        ("price", "<i8"),
        ("qty", "<i8"),
        ("trigger", "<i8"),
        ("disclosed", "<i8"),
    ],
    72,
)
"""One command to a book (72 bytes). For REBAND, price is the new low and qty the new
high; for UNCROSS, price is the reference price (0: the book's last trade price);
trigger is a stop's trigger price and disclosed an iceberg's disclosed quantity."""

EVENT_DTYPE = _struct(
    [
        ("symbol", "<u4"),
        ("type", "u1"),
        ("reason", "u1"),
        ("op", "u1"),
        ("side", "u1"),
        ("seq", "<i8"),
        ("ts", "<i8"),
        ("order_id", "<i8"),
        ("account", "<i8"),
        ("price", "<i8"),
        ("qty", "<i8"),
        ("remaining", "<i8"),
        ("other_id", "<i8"),
        ("other_account", "<i8"),
        ("other_remaining", "<i8"),
    ],
    88,
)
"""One event out of a book (88 bytes). For TRADE, other_* describe the maker."""

ORDER_DTYPE = _struct(
    [
        ("order_id", "<i8"),
        ("account", "<i8"),
        ("price", "<i8"),
        ("qty", "<i8"),
        ("side", "u1"),
        ("tif", "u1"),
        ("stp", "u1"),
        ("flags", "u1"),
        ("op", "u1"),
        ("shown", "<i8"),
        ("disclosed", "<i8"),
        ("trigger", "<i8"),
        ("stamp", "<i8"),
    ],
    72,
)
"""A live order as the L3 views return it: qty is the whole open quantity, shown the
part the market sees (qty unless an iceberg), disclosed the iceberg's peak (0: none).
op is LIMIT for a resting order, MARKET for a market order waiting for an uncross,
STOP or STOP_LIMIT for a waiting stop (trigger its trigger price, stamp its priority
among stops); trigger and stamp are 0 for the others."""


class MarkKind(IntEnum):
    BATCH = 1  # the matcher finished a batch
    SNAPSHOT = 2  # the shard took a snapshot at this point


MARK_DTYPE = np.dtype([("kind", "<i8"), ("commands", "<i8"), ("events", "<i8")])
"""A progress mark of a shard's matcher: commands applied and events published so far
(counted from the start of this run), after a batch or at a snapshot."""

LEVEL_DTYPE = np.dtype([("price", "<i8"), ("qty", "<i8"), ("orders", "<i8")])
"""One aggregated price level of an L2 depth view (qty: the shown quantities)."""


class AuctionQuote(NamedTuple):
    """What an uncross would do now (docs/engine.md, Call auction)."""

    price: int  # the opening price
    volume: int  # quantity that would trade at it
    imbalance: int  # |demand - supply| at that price
    surplus_side: int  # Side with the surplus, 0 when balanced


class RestingOrder(NamedTuple):
    """A live order looked up by id."""

    order_id: int
    account: int
    side: Side
    price: int
    qty: int
    tif: Tif
    stp: Stp
    post_only: bool
    shown: int = 0
    disclosed: int = 0
    op: Op = Op.LIMIT
    trigger: int = 0


def as_commands(commands: object) -> np.ndarray:
    """A one-dimensional contiguous COMMAND_DTYPE array of the given commands.

    Arrays with the same fields in another layout (numpy drops the padding when it
    concatenates or promotes structured arrays) or with strides are copied into the
    canonical layout; anything else is a TypeError or ValueError.
    """
    if not isinstance(commands, np.ndarray):
        raise TypeError("commands must be a numpy array of COMMAND_DTYPE records")
    dtype = commands.dtype
    canonical: Mapping[str, tuple[Any, ...]] = COMMAND_DTYPE.fields or {}
    if dtype != COMMAND_DTYPE and (
        dtype.names != COMMAND_DTYPE.names
        or any(layout[0] != canonical[name][0] for name, layout in (dtype.fields or {}).items())
    ):
        raise TypeError(f"commands must have the fields of brokercore.COMMAND_DTYPE, not {dtype}")
    if commands.ndim != 1:
        raise ValueError("commands must be a one-dimensional array")
    return np.ascontiguousarray(commands, dtype=COMMAND_DTYPE)
