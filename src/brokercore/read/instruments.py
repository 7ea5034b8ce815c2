"""Reference data (GET /api/v1/instruments): each instrument's trading terms, its session
calendar, today's phase and the next step of its day's plan.

The terms and the calendar are configuration (``brokercore.broker.market.load_market``):
they are built into structs once per process (``Catalogue``). The phase is the read
model's (``read_model.phases``, which the projector keeps from the engine's session
events; no row: OPEN, as a new book is), read with each answer. The next transition is
the day's plan (``brokercore.broker.session_plan``) after now, with one thing held
back: the uncross comes at a secret moment of its window (``uncross_moment``), so an
UNCROSS is given as its window, ``at`` its earliest and ``latest`` its latest instant
(the two are equal for every other step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta

import msgspec
from psycopg import AsyncConnection

from brokercore.broker.market import AlwaysOpen, MarketInstrument, Session
from brokercore.broker.money import rupees
from brokercore.broker.session_plan import CalendarPlan, Step, Transition
from brokercore.engine.records import Phase
from brokercore.read.answers import Band, Calendar, Instrument, NextTransition
from brokercore.read.candles import PHASES_SQL

__all__ = ["Catalogue", "phases"]

_NO_SECRET = b""
"""The plan's key here: the uncross moment it picks is never shown (only its window)."""


async def phases(conn: AsyncConnection, symbols: list[str]) -> dict[str, str]:
    """The read model's phase of the symbols that have had a session event."""
    rows = await (await conn.execute(PHASES_SQL, {"symbols": symbols})).fetchall()
    return dict(rows)


def _calendar(session: Session) -> Calendar:
    def local(t: time | None) -> str | None:
        return None if t is None else t.isoformat()

    always = isinstance(session, AlwaysOpen)
    return Calendar(
        timezone=session.timezone,
        always_open=always,
        pre_open=local(session.pre_open),
        pre_open_end=local(session.pre_open_end or (session.open if session.pre_open else None)),
        uncross_window=session.uncross_window if session.pre_open else None,
        open=session.open.isoformat(),
        close=session.close.isoformat(),
        weekdays=sorted(session.weekdays),
        holidays=[] if always else sorted(d.isoformat() for d in session.holidays),
    )


def _terms(instrument: MarketInstrument) -> Instrument:
    return Instrument(
        symbol=instrument.symbol,
        tick_size=rupees(instrument.tick_paise),
        lot_size=instrument.lot_size,
        band=Band(
            rupees(instrument.ticks_to_paise(instrument.low)),
            rupees(instrument.ticks_to_paise(instrument.high)),
        ),
        max_order_quantity=instrument.max_order_qty,
        enabled=instrument.enabled,
        session=_calendar(instrument.session),
    )


class Catalogue:
    """The instruments' terms, built once; ``answer`` adds the phases and the clock's
    next transitions (``clock``: the instant now, replaceable in tests)."""

    def __init__(self, market: Mapping[str, MarketInstrument]):
        self.sessions = {symbol: i.session for symbol, i in market.items()}
        self.terms = {symbol: _terms(i) for symbol, i in market.items()}
        self.plan = CalendarPlan(self.sessions, _NO_SECRET)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def answer(self, symbol: str, phase_of: Mapping[str, str]) -> Instrument:
        """The symbol's reference data with ``phase_of``'s phase (absent: OPEN)."""
        phase = phase_of.get(symbol, Phase.OPEN.name)
        return msgspec.structs.replace(
            self.terms[symbol],
            phase=phase,
            next_transition=self.next_transition(symbol, phase, self.clock()),
        )

    def next_transition(self, symbol: str, phase: str, now: datetime) -> NextTransition | None:
        """The first step of the plan still to come after ``now``. An uncross whose window
        has begun is still to come only while the book is in PRE_OPEN."""
        session = self.sessions[symbol]
        today = self.plan.day_of(now)
        # Every zone's day is within a day of UTC's; a week holds a trading day unless
        # holidays fill it (as Session.next_open counts).
        for day in range(today - 1, today + 7 * (len(session.holidays) + 1) + 2):
            for step in self.plan.steps(symbol, day):
                earliest, latest = self._window(session, step)
                if latest <= now:
                    continue
                if step.transition == Transition.UNCROSS and earliest <= now:
                    if phase != Phase.PRE_OPEN.name:
                        continue
                return NextTransition(step.transition.value, _iso(earliest), _iso(latest))
        return None

    @staticmethod
    def _window(session: Session, step: Step) -> tuple[datetime, datetime]:
        if step.transition != Transition.UNCROSS:
            return step.at, step.at
        end_time = session.pre_open_end or session.open
        end = datetime.combine(date.fromisoformat(step.day), end_time, tzinfo=session.zone)
        end = end.astimezone(UTC)  # as the plan counts the window: in elapsed time
        return end - timedelta(seconds=session.uncross_window), end


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()
