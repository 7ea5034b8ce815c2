"""Under BROKERCORE_DAY=compressed the OMS's calendar is the scheduler's compressed day
(brokercore.broker.session_plan.trading_market): PRE_OPEN from each day's PRE_OPEN step,
OPEN from the pre-open's end, CLOSED from the CLOSE step; so the OMS refuses what the
book's phase would (NOT_IN_PRE_OPEN, MARKET_CLOSED) instead of the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from brokercore.broker.market import AlwaysOpen, CompressedSession
from brokercore.broker.risk import (
    AccountState,
    OrderRequest,
    OrderType,
    RejectCode,
    RiskRejection,
    check_order,
)
from brokercore.broker.session_plan import CompressedDay, Transition, trading_market
from brokercore.config import ServiceSettings
from brokercore.engine.records import Phase, Side, Tif

INSTRUMENTS = "config/instruments.toml"
SECONDS = "10,2,18,4"  # pre-open, the uncross window, trading, closed
RICH = AccountState(cash_available=10**15, shares_available=10**6)


def settings(**env: str) -> ServiceSettings:
    return ServiceSettings.from_env({"BROKERCORE_INSTRUMENTS": INSTRUMENTS, **env})


def test_the_calendar_follows_the_day_setting_and_its_seconds():
    always = trading_market(settings(BROKERCORE_CALENDAR="always-open"))
    assert all(type(i.session) is AlwaysOpen for i in always.values())
    compressed = trading_market(
        settings(
            BROKERCORE_CALENDAR="always-open",
            BROKERCORE_DAY="compressed",
            BROKERCORE_DAY_SECONDS=SECONDS,
        )
    )
    assert compressed.keys() == always.keys()
    for instrument in compressed.values():
        assert instrument.session == CompressedSession(
            instrument.session.timezone,
            pre_open_seconds=10,
            trading_seconds=18,
            closed_seconds=4,
        )
    with pytest.raises(ValueError, match="BROKERCORE_DAY_SECONDS must be four positive"):
        settings(BROKERCORE_DAY_SECONDS="10,2,18")


def test_the_phase_changes_at_the_scheduler_s_steps():
    symbol, instrument = next(
        iter(
            trading_market(
                settings(BROKERCORE_DAY="compressed", BROKERCORE_DAY_SECONDS=SECONDS)
            ).items()
        )
    )
    session = instrument.session
    day = CompressedDay([symbol], b"key", 10, 2, 18, 4)
    number = day.day_of(datetime(2026, 12, 4, 8, 0, tzinfo=UTC))
    pre_open, uncross, close = day.steps(symbol, number)
    assert (pre_open.transition, close.transition) == (Transition.PRE_OPEN, Transition.CLOSE)
    tick = timedelta(milliseconds=1)
    opening = pre_open.at + timedelta(seconds=10)
    assert session.phase(pre_open.at - tick) is Phase.CLOSED
    assert session.phase(pre_open.at) is Phase.PRE_OPEN
    assert session.phase(uncross.at) is Phase.PRE_OPEN
    assert session.phase(opening - tick) is Phase.PRE_OPEN
    assert session.phase(opening) is Phase.OPEN
    assert session.phase(close.at - tick) is Phase.OPEN
    assert session.phase(close.at) is Phase.CLOSED
    assert session.phase(day.start(number + 1)) is Phase.PRE_OPEN
    assert session.next_open(pre_open.at) == opening
    assert session.next_open(opening + tick) == opening + timedelta(seconds=32)
    assert session.next_open(close.at) == opening + timedelta(seconds=32)


def test_the_oms_checks_refuse_what_the_compressed_day_s_phase_refuses():
    instrument = next(
        iter(
            trading_market(
                settings(BROKERCORE_DAY="compressed", BROKERCORE_DAY_SECONDS=SECONDS)
            ).values()
        )
    )
    price = instrument.to_price((instrument.low + instrument.high) // 2)
    start = CompressedDay((), b"key", 10, 2, 18, 4).start(1_000_000)

    def check(at: datetime, tif: Tif) -> object:
        lot = instrument.lot_size
        request = OrderRequest(instrument.symbol, Side.BUY, OrderType.LIMIT, lot, price, tif)
        return check_order(request, instrument, at, RICH)

    in_pre_open, trading, closed = (start + timedelta(seconds=s) for s in (5, 15, 30))
    refused = check(in_pre_open, Tif.IOC)
    assert isinstance(refused, RiskRejection) and refused.code is RejectCode.NOT_IN_PRE_OPEN
    assert not isinstance(check(in_pre_open, Tif.DAY), RiskRejection)
    assert not isinstance(check(trading, Tif.IOC), RiskRejection)
    closed_refusal = check(closed, Tif.DAY)
    assert isinstance(closed_refusal, RiskRejection)
    assert closed_refusal.code is RejectCode.MARKET_CLOSED
