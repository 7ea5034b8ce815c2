"""Reference data for trading: instruments in currency units and their session calendars.

The engine knows only integer ticks and share quantities; a broker also needs the tick
size in rupees, the circuit limits as prices, an order-size limit, whether a symbol is
halted and when its market is open. ``load_market`` builds all of that from the
instruments file as ``brokercore.engine.instruments`` decodes it for the engine too, so
the two can never disagree about ids, bands or lot sizes.

Money is ``Decimal`` in rupees at the edge and ``int`` paise inside; no floats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from brokercore.broker.money import exact_ratio, to_paise
from brokercore.config import CALENDARS
from brokercore.engine.instruments import (
    Instrument,
    InstrumentTable,
    SessionTable,
    instrument_place,
    read_instruments,
)
from brokercore.engine.records import INT64_MAX, MAX_BAND_LEVELS, Phase, Stp

__all__ = [
    "AlwaysOpen",
    "CompressedSession",
    "MarketInstrument",
    "Session",
    "load_market",
    "instruments_by_id",
]

_WEEKDAYS = range(1, 8)  # ISO: 1 = Monday ... 7 = Sunday


@dataclass(frozen=True)
class Session:
    """A trading calendar: the local hours ``[open, close)`` on trading weekdays (ISO,
    1 = Monday) that are not holidays, in an IANA time zone.

    With ``pre_open`` the day starts with a call auction: orders are collected from
    ``pre_open`` until at the latest ``pre_open_end`` (default ``open``); the uncross
    comes at a random moment of the last ``uncross_window`` seconds of that
    (brokercore.broker.session_plan) and the book trades continuously from it on (NSE:
    09:00, 09:08, 60 s; its continuous session still starts at ``open``, 09:15).

    Times are wall-clock times of the zone, so a zone with daylight saving keeps its
    local hours and moves in UTC. A session must open and close on the same day. An
    opening time inside a DST gap (a wall time that does not exist that day) resolves as
    zoneinfo does (``fold=0``); real exchanges do not open in the gap.
    """

    timezone: str
    open: time
    close: time
    weekdays: frozenset[int] = frozenset({1, 2, 3, 4, 5})
    holidays: frozenset[date] = frozenset()
    pre_open: time | None = None
    pre_open_end: time | None = None
    uncross_window: int = 60

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        for name in ("open", "close"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise ValueError(f"{name} must be a local time without a zone, not {value!r}")
        if not self.open < self.close:
            raise ValueError(
                f"the session must open before it closes (open {self.open}, close {self.close})"
            )
        weekdays = frozenset(self.weekdays)
        if not weekdays or not all(type(d) is int and d in _WEEKDAYS for d in weekdays):
            raise ValueError(
                f"weekdays must be a non-empty set of ISO weekdays 1..7 "
                f"(1 = Monday), not {sorted(weekdays, key=repr)}"
            )
        holidays = frozenset(self.holidays)
        if not all(type(d) is date for d in holidays):
            raise ValueError("holidays must be dates")
        object.__setattr__(self, "weekdays", weekdays)
        object.__setattr__(self, "holidays", holidays)
        self._check_pre_open()

    def _check_pre_open(self) -> None:
        if self.pre_open is None:
            if self.pre_open_end is not None:
                raise ValueError("pre_open_end needs a pre_open")
            return
        for name in ("pre_open", "pre_open_end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, time) or value.tzinfo is not None):
                raise ValueError(f"{name} must be a local time without a zone, not {value!r}")
        end = self.pre_open_end or self.open
        if not self.pre_open < end <= self.open:
            raise ValueError(
                f"the pre-open must start before it ends, at the latest at the open "
                f"(pre_open {self.pre_open}, pre_open_end {end}, open {self.open})"
            )
        length = _seconds(end) - _seconds(self.pre_open)
        if not _is_int(self.uncross_window) or not 1 <= self.uncross_window <= length:
            raise ValueError(
                f"uncross_window must be an integer number of seconds in 1..{length} "
                f"(the pre-open's length), not {self.uncross_window!r}"
            )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_trading_day(self, day: date) -> bool:
        return day.isoweekday() in self.weekdays and day not in self.holidays

    def is_pre_open(self, at: datetime) -> bool:
        """Whether the instant ``at`` is in the pre-open's order collection
        ``[pre_open, pre_open_end)`` of a trading day (the uncross may end it earlier)."""
        if self.pre_open is None:
            return False
        local = self._local(at)
        end = self.pre_open_end or self.open
        return self.is_trading_day(local.date()) and self.pre_open <= local.time() < end

    def is_open(self, at: datetime) -> bool:
        """Whether the market is open at the instant ``at`` (timezone-aware)."""
        local = self._local(at)
        return self.is_trading_day(local.date()) and self.open <= local.time() < self.close

    def phase(self, at: datetime) -> Phase:
        """Where the calendar puts the market at the instant ``at``: OPEN in its hours,
        PRE_OPEN in the pre-open's order collection, else CLOSED. (HALTED is the engine's
        phase, never the calendar's.) The OMS takes orders in PRE_OPEN and OPEN."""
        if self.is_open(at):
            return Phase.OPEN
        return Phase.PRE_OPEN if self.is_pre_open(at) else Phase.CLOSED

    def next_open(self, at: datetime) -> datetime:
        """The first session opening at or after the instant ``at``, in the session's zone.

        While the market is open that is the next session's opening, not this one's.
        """
        local = self._local(at)
        instant = at.astimezone(UTC)
        day = local.date()
        # Any 7 consecutive days hold a trading weekday unless it is a holiday.
        for _ in range(7 * (len(self.holidays) + 1) + 1):
            if self.is_trading_day(day):
                start = datetime.combine(day, self.open, tzinfo=self.zone)
                if start.astimezone(UTC) >= instant:
                    return start
            day += timedelta(days=1)
        raise AssertionError("unreachable: a trading weekday always comes")  # pragma: no cover

    def _local(self, at: datetime) -> datetime:
        if not isinstance(at, datetime):
            raise TypeError(f"expected a datetime, not {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("the time must be timezone-aware (a naive datetime is ambiguous)")
        return at.astimezone(self.zone)


@dataclass(frozen=True)
class AlwaysOpen(Session):
    """The development calendar: every instant of every day is in session. It keeps the
    exchange's time zone, so an order's trade date is still the exchange's date."""

    open: time = time.min
    close: time = time.max
    weekdays: frozenset[int] = frozenset(_WEEKDAYS)

    def is_trading_day(self, day: date) -> bool:
        return True

    def is_open(self, at: datetime) -> bool:
        self._local(at)  # the same checks of ``at`` as a real session
        return True

    def next_open(self, at: datetime) -> datetime:
        return self._local(at)


@dataclass(frozen=True)
class CompressedSession(AlwaysOpen):
    """The calendar of a compressed day (``make up DAY=compressed``; the scheduler's
    brokercore.broker.session_plan.CompressedDay): from the Unix epoch, every
    ``pre_open_seconds + trading_seconds + closed_seconds`` seconds a pre-open, then
    trading, then closed, every day. The OMS checks orders against it, so it refuses
    what the book's phase would (as on an exchange's calendar, the uncross may end the
    book's pre-open before the calendar's)."""

    pre_open_seconds: float = 60.0
    trading_seconds: float = 240.0
    closed_seconds: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.pre_open_seconds, self.trading_seconds, self.closed_seconds) <= 0:
            raise ValueError("a compressed day's pre-open, trading and closed time are positive")

    @property
    def length(self) -> float:
        return self.pre_open_seconds + self.trading_seconds + self.closed_seconds

    def _into_day(self, at: datetime) -> float:
        """Seconds since the start of the compressed day ``at`` falls in."""
        return self._local(at).timestamp() % self.length

    def is_pre_open(self, at: datetime) -> bool:
        return self._into_day(at) < self.pre_open_seconds

    def is_open(self, at: datetime) -> bool:
        return self.pre_open_seconds <= self._into_day(at) < self.length - self.closed_seconds

    def next_open(self, at: datetime) -> datetime:
        wait = self.pre_open_seconds - self._into_day(at)
        if wait < 0:  # trading or closed: the next day's
            wait += self.length
        return (at + timedelta(seconds=wait)).astimezone(self.zone)


@dataclass(frozen=True)
class MarketInstrument:
    """One tradable symbol as the broker sees it.

    ``tick_size`` is in rupees and a whole number of paise, so every price is an int
    number of paise and the engine's ticks convert exactly. ``band_low``/``band_high``
    are the circuit limits (inclusive) as prices; ``max_order_qty`` is the largest order
    in shares, at most what the engine accepts for the band (its int64 notional limit).
    """

    symbol: str
    symbol_id: int
    tick_size: Decimal
    lot_size: int
    band_low: Decimal
    band_high: Decimal
    max_order_qty: int
    session: Session
    enabled: bool = True
    session_orders: int = 0
    stp: Stp = Stp.CANCEL_NEWEST
    weight: float = 1.0  # expected volume, relative (the shard plan's)
    tick_paise: int = field(init=False, repr=False, compare=False)  # paise per tick
    low: int = field(init=False, repr=False, compare=False)  # band in ticks
    high: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol:
            raise ValueError("symbol must be a non-empty string")
        if not _is_int(self.symbol_id) or not 0 <= self.symbol_id <= 2**32 - 1:
            raise ValueError(f"id must be an integer in 0..2**32-1, not {self.symbol_id!r}")
        if not isinstance(self.tick_size, Decimal):
            raise ValueError(f"tick_size must be a Decimal, not {self.tick_size!r}")
        if not self.tick_size.is_finite() or self.tick_size <= 0:
            raise ValueError(f"tick_size must be positive, not {self.tick_size}")
        try:
            tick_paise = to_paise(self.tick_size)
        except ValueError:
            raise ValueError(
                f"tick_size {self.tick_size} is not a whole number of paise (0.01)"
            ) from None
        object.__setattr__(self, "tick_paise", tick_paise)
        if not _is_int(self.lot_size) or self.lot_size < 1:
            raise ValueError(f"lot_size must be an integer >= 1, not {self.lot_size!r}")
        low = self._band_ticks("band_low", self.band_low)
        high = self._band_ticks("band_high", self.band_high)
        if low < 1 or high < low:
            raise ValueError(
                f"the band must satisfy tick_size <= band_low <= band_high "
                f"(band {self.band_low}..{self.band_high})"
            )
        if high - low + 1 > MAX_BAND_LEVELS:
            raise ValueError(
                f"the band {self.band_low}..{self.band_high} is wider than {MAX_BAND_LEVELS} ticks"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        engine_max = INT64_MAX // high
        if not _is_int(self.max_order_qty) or not self.lot_size <= self.max_order_qty <= engine_max:
            raise ValueError(
                f"max_order_qty must be an integer in {self.lot_size}..{engine_max} "
                f"(lot size .. the engine's limit for this band), "
                f"not {self.max_order_qty!r}"
            )
        if not isinstance(self.session, Session):
            raise ValueError("session must be a Session")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, not {self.enabled!r}")
        if not _is_int(self.session_orders) or self.session_orders < 0:
            raise ValueError(f"session_orders must be an integer >= 0, not {self.session_orders!r}")
        if not isinstance(self.stp, Stp) or self.stp == Stp.DEFAULT:
            raise ValueError(f"stp must be a Stp mode other than DEFAULT, not {self.stp!r}")

    def _band_ticks(self, name: str, price: Decimal) -> int:
        if not isinstance(price, Decimal):
            raise ValueError(f"{name} must be a Decimal, not {price!r}")
        try:
            return self.to_ticks(price)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None

    def to_ticks(self, price: Decimal) -> int:
        """A price in rupees as ticks; ValueError if it is not a multiple of the tick size."""
        try:
            return exact_ratio(price, self.tick_size, "price")
        except ValueError as e:
            if "not a multiple" in str(e):
                raise ValueError(
                    f"price {price} is not a multiple of the tick size {self.tick_size}"
                ) from None
            raise

    def to_price(self, ticks: int) -> Decimal:
        """Ticks as a price in rupees (exact, with the tick size's decimal places)."""
        return self.tick_size * ticks

    def ticks_to_paise(self, ticks: int) -> int:
        return ticks * self.tick_paise

    @property
    def band_paise(self) -> tuple[int, int]:
        """The circuit limits (inclusive) in paise."""
        return self.ticks_to_paise(self.low), self.ticks_to_paise(self.high)

    def engine_instrument(self) -> Instrument:
        """The engine's view of this symbol (band in ticks), as ``load_instruments`` gives."""
        return Instrument(
            symbol=self.symbol,
            symbol_id=self.symbol_id,
            low=self.low,
            high=self.high,
            lot_size=self.lot_size,
            stp=self.stp,
            session_orders=self.session_orders,
            weight=self.weight,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(t: time) -> float:
    """Seconds since midnight of a local time."""
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


# --- the instruments file --------------------------------------------------------------


class _Invalid(ValueError):
    """A bad value; the caller prefixes where it is."""


def _session(table: SessionTable) -> Session:
    timezone, opens, closes = table.timezone, table.open, table.close
    if timezone is None or opens is None or closes is None:
        missing = "timezone" if timezone is None else "open" if opens is None else "close"
        raise _Invalid(f"session.{missing}: missing")
    weekdays = Session.weekdays if table.weekdays is None else frozenset(table.weekdays)
    try:
        return Session(
            timezone=timezone,
            open=opens,
            close=closes,
            weekdays=weekdays,
            holidays=frozenset(table.holidays or ()),
            pre_open=table.pre_open,
            pre_open_end=table.pre_open_end,
            uncross_window=(
                Session.uncross_window if table.uncross_window is None else table.uncross_window
            ),
        )
    except ValueError as e:
        raise _Invalid(f"session: {e}") from None


def _tick_size(value: str | int | None) -> Decimal:
    if value is None:
        raise _Invalid("tick_size: missing")
    try:
        tick = Decimal(value)
    except InvalidOperation:
        raise _Invalid(f"tick_size: {value!r} is not a decimal number") from None
    if not tick.is_finite():
        raise _Invalid(
            f'tick_size: must be a decimal string such as "0.05" (not a float), not {value!r}'
        )
    return tick


def _instrument(table: InstrumentTable, default_session: SessionTable | None) -> MarketInstrument:
    tick = _tick_size(table.tick_size)
    if table.max_order_qty is None:
        raise _Invalid("max_order_qty: missing")
    own = table.session
    session = own.over(default_session) if own is not None else default_session
    if session is None:
        raise _Invalid("session: no [session] table at the top level or in the instrument")
    try:
        return MarketInstrument(
            symbol=table.symbol,
            symbol_id=table.id,
            tick_size=tick,
            lot_size=table.lot_size,
            band_low=tick * table.low,
            band_high=tick * table.high,
            max_order_qty=table.max_order_qty,
            session=_session(session),
            enabled=table.enabled,
            session_orders=table.session_orders,
            stp=Stp[table.stp],
            weight=table.weight,
        )
    except _Invalid:
        raise
    except ValueError as e:
        raise _Invalid(str(e)) from None


def load_market(
    path: str | os.PathLike[str], calendar: str = "exchange"
) -> dict[str, MarketInstrument]:
    """The instruments of the file by symbol, every key validated.

    ``read_instruments`` (brokercore.engine.instruments) decodes the file: the engine's
    keys plus, per instrument, tick_size (a decimal string), max_order_qty and enabled
    (default true), and a top-level ``[session]`` table (timezone, open, close, weekdays,
    holidays, pre_open, pre_open_end, uncross_window) that an instrument's own
    ``session`` table overrides key by key. Here the
    prices, limits and sessions are checked, so a file that loads makes a working market.

    ``calendar`` is one of ``brokercore.config.CALENDARS``: ``exchange`` keeps the
    file's sessions; ``always-open`` gives every instrument an ``AlwaysOpen`` session in
    its session's zone (the development stack's, ServiceSettings.calendar).
    """
    if calendar not in CALENDARS:
        raise ValueError(f"unknown calendar {calendar!r}: one of {', '.join(CALENDARS)}")
    file = read_instruments(path)
    if file.session is not None:
        try:
            _session(file.session)
        except _Invalid as e:
            raise ValueError(f"{path}: [session]: {e}") from None
    market: dict[str, MarketInstrument] = {}
    for n, table in enumerate(file.instrument, 1):
        try:
            instrument = _instrument(table, file.session)
        except _Invalid as e:
            raise ValueError(f"{path}: {instrument_place(n, table.symbol)}: {e}") from None
        if calendar == "always-open":
            instrument = replace(instrument, session=AlwaysOpen(instrument.session.timezone))
        market[instrument.symbol] = instrument
    return market


def instruments_by_id(market: Iterable[MarketInstrument]) -> dict[int, MarketInstrument]:
    """Symbol id -> instrument, for consumers of engine events (which carry ids)."""
    return {i.symbol_id: i for i in market}
