"""The instruments file (``config/instruments.toml``): one msgspec schema for every reader.

The engine takes symbol, id, the band in ticks (low..high), lot_size, stp and
session_orders from each ``[[instrument]]`` table (``load_instruments``), and the shard
plan (``brokercore.kafka.placement``) its weight, the expected volume. The broker
(``brokercore.broker.market``) builds its instruments and sessions from the same decoded
file: tick_size, max_order_qty, enabled, the top-level ``[session]`` and an instrument's
own ``[instrument.session]``. One schema means one set of keys and one set of errors, so
the two readers cannot disagree about a file. Unknown keys are errors: a misspelt
``enabled`` cannot silently leave a symbol trading.

Only the book extension is imported here (as by ``import brokercore``), never the shard
runtime: the broker reads the file without loading the matcher or the rings.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from dataclasses import dataclass
from datetime import date, time
from typing import Annotated, Any, Literal

import msgspec

from brokercore.engine._engine import OrderBook
from brokercore.engine.records import Stp

__all__ = [
    "Instrument",
    "InstrumentTable",
    "InstrumentsFile",
    "LocalTime",
    "SessionTable",
    "StpName",
    "instrument_place",
    "load_instruments",
    "read_instruments",
]

StpName = Literal["NONE", "CANCEL_NEWEST", "CANCEL_OLDEST", "CANCEL_BOTH", "DECREMENT"]
"""The ``stp`` values a file may name: every Stp but DEFAULT (which defers to the book's)."""


def _is(description: str) -> msgspec.Meta:
    """What a key must be, in the words of the loader's error messages."""
    return msgspec.Meta(description=description)


class LocalTime(time):
    """A wall-clock time, written "09:15" or as a TOML local time. msgspec's own ``time``
    wants the seconds, so this type is decoded by ``_decode_hook``."""


class SessionTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A ``[session]`` table. Every key is optional here: an instrument's own table
    overrides the top-level one key by key (``over``), and the broker says what a session
    needs."""

    timezone: Annotated[str | None, _is("an IANA time zone name")] = None
    open: Annotated[LocalTime | None, _is('a local time such as "09:15"')] = None
    close: Annotated[LocalTime | None, _is('a local time such as "15:30"')] = None
    weekdays: Annotated[
        list[Annotated[int, _is("an ISO weekday 1..7 (1 = Monday)")]] | None,
        _is("an array of ISO weekdays 1..7 (1 = Monday)"),
    ] = None
    holidays: Annotated[
        list[Annotated[date, _is('a date such as "2026-01-26"')]] | None, _is("an array of dates")
    ] = None
    pre_open: Annotated[LocalTime | None, _is('a local time such as "09:00"')] = None
    pre_open_end: Annotated[LocalTime | None, _is('a local time such as "09:08"')] = None
    uncross_window: Annotated[int | None, _is("a number of seconds")] = None

    def over(self, base: SessionTable | None) -> SessionTable:
        """This table's keys over ``base``'s."""
        if base is None:
            return self
        own = {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None
        }
        return msgspec.structs.replace(base, **own)


class InstrumentTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ``[[instrument]]`` table. The keys after stp are the broker's; the engine's
    own files (tests, benchmarks) may leave them out."""

    symbol: Annotated[str, msgspec.Meta(min_length=1, description="a non-empty string")]
    id: Annotated[int, _is("an integer")]
    low: Annotated[int, msgspec.Meta(ge=1, description="at least 1 tick")]
    high: Annotated[int, _is("an integer")]
    lot_size: Annotated[int, _is("an integer")] = 1
    session_orders: Annotated[int, _is("an integer")] = 0
    stp: Annotated[StpName, _is(f"one of {', '.join(typing.get_args(StpName))}")] = "CANCEL_NEWEST"
    tick_size: Annotated[str | int | None, _is('a decimal string such as "0.05" (not a float)')] = (
        None
    )
    max_order_qty: Annotated[int | None, _is("an integer")] = None
    enabled: Annotated[bool, _is("true or false")] = True
    session: Annotated[SessionTable | None, _is("a table")] = None
    weight: Annotated[float, msgspec.Meta(gt=0, description="a positive number")] = 1.0


class InstrumentsFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole file: a default ``[session]`` and the ``[[instrument]]`` tables."""

    session: Annotated[SessionTable | None, _is("a table")] = None
    instrument: Annotated[
        list[Annotated[InstrumentTable, _is("a table")]], _is("an array of tables ([[instrument]])")
    ] = []


@dataclass(frozen=True)
class Instrument:
    """One tradable symbol as the engine sees it: its numeric id (carried by commands),
    band and lot size."""

    symbol: str
    symbol_id: int
    low: int
    high: int
    lot_size: int = 1
    stp: Stp = Stp.CANCEL_NEWEST
    session_orders: int = 0  # orders a session is sized for (OrderBook)
    weight: float = 1.0  # expected volume, relative: the shard plan's (kafka.placement)

    @classmethod
    def from_table(cls, table: InstrumentTable) -> Instrument:
        return cls(
            symbol=table.symbol,
            symbol_id=table.id,
            low=table.low,
            high=table.high,
            lot_size=table.lot_size,
            stp=Stp[table.stp],
            session_orders=table.session_orders,
            weight=table.weight,
        )

    def new_book(self) -> OrderBook:
        """An empty book for this symbol."""
        return OrderBook(
            self.low, self.high, self.lot_size, self.symbol_id, self.stp, self.session_orders
        )


def load_instruments(path: str | os.PathLike[str]) -> list[Instrument]:
    """The engine's view of the instruments of a file (see ``read_instruments``)."""
    return [Instrument.from_table(table) for table in read_instruments(path).instrument]


def read_instruments(path: str | os.PathLike[str]) -> InstrumentsFile:
    """The file decoded and checked; ValueError naming the file, the instrument and the
    key of the first problem, e.g. ``instruments.toml: instrument ABC (#1): id: missing``."""
    with open(path, "rb") as f:
        try:
            document = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    try:
        decoded = msgspec.convert(document, InstrumentsFile, dec_hook=_decode_hook)
    except msgspec.ValidationError as e:
        raise ValueError(f"{path}: {_explain(str(e), document)}") from None
    symbols: set[str] = set()
    ids: dict[int, str] = {}
    for n, table in enumerate(decoded.instrument, 1):
        where = f"{path}: {instrument_place(n, table.symbol)}"
        if table.high < table.low:
            raise ValueError(
                f"{where}: high: must be at least low ({table.low} ticks), not {table.high}"
            )
        if table.symbol in symbols:
            raise ValueError(f"{where}: symbol {table.symbol} is configured twice")
        if table.id in ids:
            raise ValueError(f"{where}: id {table.id} is already used by {ids[table.id]}")
        symbols.add(table.symbol)
        ids[table.id] = table.symbol
    return decoded


def instrument_place(number: int, symbol: object) -> str:
    """How errors name the ``number``-th instrument of a file: by symbol if it has one."""
    if isinstance(symbol, str) and symbol:
        return f"instrument {symbol} (#{number})"
    return f"instrument #{number}"


def _decode_hook(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it does not decode itself: LocalTime."""
    if kind is LocalTime:
        if isinstance(value, time):
            return LocalTime(
                value.hour, value.minute, value.second, value.microsecond, value.tzinfo
            )
        if isinstance(value, str):
            return LocalTime.fromisoformat(value)
        raise TypeError(f"not a time: {value!r}")
    raise NotImplementedError(kind)


# --- error messages ---------------------------------------------------------------------

_AT = re.compile(r" - at `\$(.*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_FIELD = re.compile(r"^Object (missing required|contains unknown) field `([^`]+)`")


def _descriptions(hint: Any) -> list[str]:
    """The ``_is`` descriptions in a type hint, outermost first (a key's, then its items')."""
    found = [
        meta.description
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, msgspec.Meta) and meta.description
    ]
    for arg in typing.get_args(hint):
        found += _descriptions(arg)
    return found


_DESCRIPTIONS = {
    name: _descriptions(hint)
    for struct in (InstrumentsFile, InstrumentTable, SessionTable)
    for name, hint in typing.get_type_hints(struct, include_extras=True).items()
}


def _explain(message: str, document: dict[str, Any]) -> str:
    """msgspec's message (``Expected `int`, got `str` - at `$.instrument[0].id```) in
    the file's terms: where (an instrument by symbol and number, or ``[session]``), the
    key, what it must be and what it is."""
    at = _AT.search(message)
    steps: list[str | int] = [
        name if name else int(index) for name, index in _STEP.findall(at.group(1) if at else "")
    ]
    where = ""
    if steps[:1] == ["instrument"] and len(steps) > 1:
        n = typing.cast(int, steps[1])
        document, steps = document["instrument"][n], steps[2:]
        symbol = document.get("symbol") if isinstance(document, dict) else None
        where = f"{instrument_place(n + 1, symbol)}: "
    elif steps[:1] == ["session"]:
        where = "[session]: "
    key = ".".join(str(step) for step in steps if isinstance(step, str))
    field = _FIELD.match(message)
    if field:
        missing, name = field.group(1) == "missing required", field.group(2)
        return (
            f"{where}{key + '.' if key else ''}{name}: missing"
            if missing
            else f"{where}{key + ': ' if key else ''}unknown key(s) {name}"
        )
    value: Any = document
    for step in steps:
        value = value[step]
    if not key:  # an [[instrument]] that is no table
        return f"{where}must be a table, not {value!r}"
    described = _DESCRIPTIONS[key.rpartition(".")[2]]
    if isinstance(steps[-1], int):  # an item of an array
        return f"{where}{key}: {value!r} is not {described[-1]}"
    return f"{where}{key}: must be {described[0]}, not {value!r}"
