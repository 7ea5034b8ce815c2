"""The trading day's plan: when each symbol's book goes to pre-open, uncrosses and closes.

A day of a calendar (``Session``) with a pre-open is PRE_OPEN at ``pre_open``, UNCROSS
at a random moment of the last ``uncross_window`` seconds before ``pre_open_end`` (the
engine's uncross ends in OPENED: continuous trading follows it, no OPEN is sent) and
CLOSE at ``close`` (DAY orders expire). A day without a pre-open is OPEN at ``open``
and CLOSE at ``close``. Holidays and other weekdays have no steps; the always-open
development calendar has none at all. A ``CompressedDay`` is the same cycle in minutes,
for watching a whole day on a development stack.

The uncross moment is HMAC-SHA256(secret, symbol and day), so every scheduler that
holds the secret picks the same moment (two schedulers publish the same command) while
nobody without it can time the end of the call phase. The uncross's reference price is
0: the engine then uses the book's last trade price, i.e. the previous session's last
trade (NSE uses the previous close, which the engine does not know).

``due`` decides what a scheduler publishes now from what it knows to be published
already (a set of (day, transition) per symbol): every step whose time has come and
that is not published yet, oldest first, with these rules for a scheduler that was away:

- only the steps after the last one published are looked at (a step left out before
  stays out);
- a day of which nothing was published and whose close has come is skipped whole;
- a day of which nothing was published and whose opening (UNCROSS or OPEN) has come
  loses its opening steps, not its close: the book keeps its phase until the close;
- a symbol that has nothing published at all gets a CLOSE (filed under the day before)
  before its first opening step: a new book is OPEN (docs/engine.md), and PRE_OPEN
  needs a CLOSED book.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import groupby
from typing import Protocol

from brokercore.broker.market import (
    AlwaysOpen,
    CompressedSession,
    MarketInstrument,
    Session,
    load_market,
)
from brokercore.config import ServiceSettings

__all__ = [
    "CalendarPlan",
    "CompressedDay",
    "DayPlan",
    "Published",
    "Step",
    "Transition",
    "due",
    "trading_market",
    "uncross_moment",
]


class Transition(StrEnum):
    """A session command the scheduler sends; HALT and REBAND only an operator's
    (``brokercore halt``, ``brokercore reband``), whose steps are filed under a day key
    of their own."""

    PRE_OPEN = "PRE_OPEN"
    UNCROSS = "UNCROSS"
    OPEN = "OPEN"
    CLOSE = "CLOSE"
    HALT = "HALT"
    REBAND = "REBAND"


_OPENING = (Transition.UNCROSS, Transition.OPEN)
_STARTING = (Transition.PRE_OPEN, Transition.OPEN)


@dataclass(frozen=True, order=True)
class Step:
    """One transition of one symbol's day, at an instant (UTC)."""

    at: datetime
    symbol: str
    day: str  # the day's key: its date, or a compressed day's start
    transition: Transition
    band: tuple[int, int] | None = None  # a REBAND's new (low, high), in ticks


Published = Mapping[str, Collection[tuple[str, str]]]
"""Per symbol, the (day, transition) pairs already published."""


class DayPlan(Protocol):
    """Days numbered in order (any int); each has a key and per symbol its steps."""

    def day_of(self, at: datetime) -> int:
        """The number of the day the instant ``at`` falls in."""
        ...

    def key(self, day: int) -> str: ...

    def steps(self, symbol: str, day: int) -> list[Step]:
        """The day's steps of the symbol in time order; [] on a day without trading."""
        ...


def uncross_moment(secret: bytes, symbol: str, day: str, end: datetime, window: float) -> datetime:
    """A moment in ``[end - window s, end)``, to the microsecond, the same for the same
    secret, symbol and day, and unpredictable without the secret."""
    digest = hmac.new(secret, f"{symbol}\x00{day}".encode(), hashlib.sha256).digest()
    micros = round(window * 1_000_000)
    return (
        end
        - timedelta(microseconds=micros)
        + timedelta(microseconds=int.from_bytes(digest[:8], "big") % micros)
    )


@dataclass(frozen=True)
class CalendarPlan:
    """The days of each symbol's session; a day is a date (numbered by its ordinal)."""

    sessions: Mapping[str, Session]
    secret: bytes

    def day_of(self, at: datetime) -> int:
        # Every symbol's session could have another zone: the day is the UTC date's
        # neighbourhood, and ``due`` looks at the days around it.
        return at.astimezone(UTC).date().toordinal()

    def key(self, day: int) -> str:
        return date.fromordinal(day).isoformat()

    def steps(self, symbol: str, day: int) -> list[Step]:
        return list(_calendar_day(self.sessions[symbol], self.secret, symbol, day))


@lru_cache(maxsize=1 << 16)
def _calendar_day(session: Session, secret: bytes, symbol: str, day: int) -> tuple[Step, ...]:
    """A symbol's steps on a day of its calendar, remembered: a scheduler looks at the
    same two weeks of every symbol each time a step comes due."""
    on = date.fromordinal(day)
    if isinstance(session, AlwaysOpen) or not session.is_trading_day(on):
        return ()
    key = on.isoformat()

    def at(local: time) -> datetime:
        return datetime.combine(on, local, tzinfo=session.zone).astimezone(UTC)

    close = Step(at(session.close), symbol, key, Transition.CLOSE)
    if session.pre_open is None:
        return (Step(at(session.open), symbol, key, Transition.OPEN), close)
    end = at(session.pre_open_end or session.open)
    uncross = uncross_moment(secret, symbol, key, end, session.uncross_window)
    return (
        Step(at(session.pre_open), symbol, key, Transition.PRE_OPEN),
        Step(uncross, symbol, key, Transition.UNCROSS),
        close,
    )


@dataclass(frozen=True)
class CompressedDay:
    """A day every ``pre_open + trading + closed`` seconds from the Unix epoch, the same
    for every symbol: PRE_OPEN at its start, UNCROSS in the last ``uncross_window``
    seconds of the pre-open, CLOSE ``trading`` seconds after the pre-open ends. Days
    are counted from the epoch, so every scheduler agrees on them."""

    symbols: Collection[str]
    secret: bytes
    pre_open: float = 60.0
    uncross_window: float = 20.0
    trading: float = 240.0
    closed: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.uncross_window <= self.pre_open:
            raise ValueError("the uncross window must be positive and within the pre-open")
        if self.trading <= 0 or self.closed <= 0:
            raise ValueError("a compressed day needs trading and closed time")

    @property
    def length(self) -> float:
        return self.pre_open + self.trading + self.closed

    def day_of(self, at: datetime) -> int:
        return int(at.timestamp() // self.length)

    def start(self, day: int) -> datetime:
        return datetime.fromtimestamp(day * self.length, UTC)

    def key(self, day: int) -> str:
        return self.start(day).isoformat(timespec="seconds")

    def steps(self, symbol: str, day: int) -> list[Step]:
        start, key = self.start(day), self.key(day)
        end = start + timedelta(seconds=self.pre_open)
        return [
            Step(start, symbol, key, Transition.PRE_OPEN),
            Step(
                uncross_moment(self.secret, symbol, key, end, self.uncross_window),
                symbol,
                key,
                Transition.UNCROSS,
            ),
            Step(end + timedelta(seconds=self.trading), symbol, key, Transition.CLOSE),
        ]


def due(
    plan: DayPlan,
    symbols: Iterable[str],
    published: Published,
    now: datetime,
    lookback: int = 7,
) -> tuple[list[Step], datetime | None]:
    """The steps to publish now, in time order, and when the next one comes (None: no
    step in the next ``lookback`` days). Only days from ``lookback`` before now's are
    looked at. The module docstring has the rules for a scheduler that was away."""
    today = plan.day_of(now)
    days = range(today - lookback, today + lookback + 1)
    steps: list[Step] = []
    upcoming: list[datetime] = []
    for symbol in symbols:
        done = published.get(symbol, ())
        window = [(day, s) for day in days for s in plan.steps(symbol, day)]
        last = max(
            (i for i, (_, s) in enumerate(window) if (s.day, s.transition) in done), default=-1
        )
        going_on = window[last][0] if last >= 0 else None  # the day of the last one published
        late: list[tuple[int, Step]] = []
        later: tuple[int, Step] | None = None
        for day, group in groupby(window[last + 1 :], key=lambda pair: pair[0]):
            day_steps = [s for _, s in group]
            if day != going_on:  # nothing of this day published yet
                if any(s.at <= now for s in day_steps if s.transition == Transition.CLOSE):
                    continue  # missed whole
                if any(s.at <= now for s in day_steps if s.transition in _OPENING):
                    day_steps = [s for s in day_steps if s.transition == Transition.CLOSE]
            late += ((day, s) for s in day_steps if s.at <= now)
            later = next(((day, s) for s in day_steps if s.at > now), None)
            if later is not None:
                break
        first = late[0] if late else later
        if not done and first is not None and first[1].transition in _STARTING:
            day, step = first
            settle = Step(min(step.at, now), symbol, plan.key(day - 1), Transition.CLOSE)
            steps.append(settle)
        steps += (s for _, s in late)
        if later is not None:
            upcoming.append(later[1].at)
    steps.sort(key=lambda s: s.at)
    return steps, min(upcoming, default=None)


def trading_market(settings: ServiceSettings) -> dict[str, MarketInstrument]:
    """The instruments on the calendar the scheduler follows: the file's sessions or the
    always-open ones (BROKERCORE_CALENDAR), or with BROKERCORE_DAY=compressed every
    symbol on the compressed day of BROKERCORE_DAY_SECONDS; the OMS takes orders by it."""
    market = load_market(settings.instruments, settings.calendar)
    if settings.day != "compressed":
        return market
    pre_open, _, trading, closed = settings.day_seconds
    return {
        symbol: replace(
            instrument,
            session=CompressedSession(
                instrument.session.timezone,
                pre_open_seconds=pre_open,
                trading_seconds=trading,
                closed_seconds=closed,
            ),
        )
        for symbol, instrument in market.items()
    }
