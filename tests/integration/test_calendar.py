"""The trading calendar setting: the exchange's hours (the default, for production and
the session tests) or always open (what `make up` runs, so a developer can trade at
night and at weekends). One setting, BROKERCORE_CALENDAR, read in brokercore.config."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from brokercore.broker.market import load_market
from brokercore.config import ServiceSettings
from oms_support import SUNDAY, Api, order, refusal, run

CONFIG = Path(__file__).resolve().parents[2] / "config" / "instruments.toml"
REPUBLIC_DAY = datetime(2026, 1, 26, 6, 0, tzinfo=UTC)  # a Monday, an NSE holiday
MIDNIGHT_IST = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)  # Thursday 00:00 in Mumbai


def test_the_setting_defaults_to_the_exchange_and_refuses_unknown_names():
    assert ServiceSettings.from_env({}).calendar == "exchange"
    assert (
        ServiceSettings.from_env({"BROKERCORE_CALENDAR": "always-open"}).calendar == "always-open"
    )
    with pytest.raises(ValueError, match="BROKERCORE_CALENDAR"):
        ServiceSettings.from_env({"BROKERCORE_CALENDAR": "nyse"})
    with pytest.raises(ValueError, match="calendar"):
        load_market(CONFIG, "nyse")


def test_always_open_trades_every_instant_and_keeps_the_exchange_zone():
    exchange, always = load_market(CONFIG), load_market(CONFIG, "always-open")
    assert exchange.keys() == always.keys()
    for symbol, instrument in always.items():
        session = instrument.session
        for at in (
            SUNDAY,
            REPUBLIC_DAY,
            MIDNIGHT_IST,
            datetime(2026, 11, 25, 18, 29, 59, 999_999, tzinfo=UTC),
        ):
            assert session.is_open(at), (symbol, at)
            assert not exchange[symbol].session.is_open(at)
            assert session.next_open(at) == at
        assert session.is_trading_day(date(2026, 1, 26))
        assert session.timezone == exchange[symbol].session.timezone == "Asia/Kolkata"
        # everything but the calendar is the file's
        assert (instrument.band_low, instrument.tick_size, instrument.max_order_qty) == (
            exchange[symbol].band_low,
            exchange[symbol].tick_size,
            exchange[symbol].max_order_qty,
        )
    assert exchange["RELIANCE"].session.open == time(9, 15)


def test_an_oms_on_the_always_open_calendar_accepts_an_order_on_a_sunday(database):
    async def scenario():
        async with Api(database, calendar="always-open") as api:
            api.now = SUNDAY
            return api, await api.placed()

    api, placed = run(scenario)
    # the trade date is the exchange's (Mumbai) date of the instant
    assert api.rows("SELECT trade_date FROM orders WHERE order_id = %s", placed.order_id) == [
        (date(2026, 11, 29),)
    ]


def test_an_oms_on_the_exchange_calendar_still_refuses_a_sunday(database):
    async def scenario():
        async with Api(database) as api:
            api.now = SUNDAY
            return await refusal(api.trader("alice").place(order()))

    assert run(scenario) == (422, "MARKET_CLOSED")
