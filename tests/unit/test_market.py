"""Reference data: tick conversion, session calendars, and the TOML loader's validation."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import pytest

from brokercore.broker.market import MarketInstrument, Session, instruments_by_id, load_market
from brokercore.engine.instruments import Instrument, StpName, load_instruments
from brokercore.engine.records import INT64_MAX, Stp

CONFIG = Path(__file__).resolve().parents[2] / "config" / "instruments.toml"
IST = ZoneInfo("Asia/Kolkata")
NY = ZoneInfo("America/New_York")
D = Decimal

NSE = Session(
    "Asia/Kolkata",
    time(9, 15),
    time(15, 30),
    frozenset({1, 2, 3, 4, 5}),
    frozenset({date(2026, 1, 26)}),
)
NYSE = Session("America/New_York", time(9, 30), time(16, 0))


def instrument(**changes) -> MarketInstrument:
    fields = dict(
        symbol="TEST",
        symbol_id=1,
        tick_size=D("0.05"),
        lot_size=1,
        band_low=D("10000.00"),
        band_high=D("20000.00"),
        max_order_qty=100_000,
        session=NSE,
    )
    fields.update(changes)
    return MarketInstrument(**fields)


# --- the shipped configuration -------------------------------------------------------


def test_config_loads_and_matches_the_engine_view():
    market = load_market(CONFIG)
    engine = load_instruments(CONFIG)
    assert list(market) == [
        "RELIANCE",
        "TCS",
        "INFY",
        "HDFCBANK",
        "ITC",
        "SBIN",
        "WIPRO",
        "AXISBANK",
    ]
    assert [m.symbol_id for m in market.values()] == list(range(1, 9))
    assert [market[i.symbol].engine_instrument() for i in engine] == engine
    for m in market.values():
        assert m.tick_size == D("0.05") and m.lot_size == 1 and m.enabled
        assert m.band_low == m.low * m.tick_size and m.band_high == m.high * m.tick_size
        assert m.session.timezone == "Asia/Kolkata"
        assert m.session.open == time(9, 15) and m.session.close == time(15, 30)
        assert m.session.weekdays == {1, 2, 3, 4, 5}
        assert date(2026, 1, 26) in m.session.holidays
    assert market["TCS"].to_price(300_000) == D("15000.00")
    assert market["RELIANCE"].band_low == D("10000.00")
    assert market["RELIANCE"].band_high == D("20000.00")
    assert instruments_by_id(market.values())[2] is market["TCS"]


def test_engine_instrument_carries_band_lot_stp_and_session_orders():
    m = instrument(lot_size=10, max_order_qty=1000, session_orders=5, stp=Stp.CANCEL_BOTH)
    assert m.engine_instrument() == Instrument("TEST", 1, 200_000, 400_000, 10, Stp.CANCEL_BOTH, 5)


# --- ticks and prices ----------------------------------------------------------------


def test_to_ticks_and_back():
    m = instrument()
    assert m.to_ticks(D("15000.00")) == 300_000
    assert m.to_ticks(D("0.05")) == 1
    assert m.to_ticks(D("10.10")) == 202
    assert m.to_ticks(D("10.1000000000000000000000000000000000")) == 202
    assert m.to_ticks(15000) == 300_000
    assert m.to_price(300_000) == D("15000.00") and str(m.to_price(1)) == "0.05"
    assert m.ticks_to_paise(300_000) == 1_500_000
    for ticks in (1, 7, 199_999, 400_000):
        assert m.to_ticks(m.to_price(ticks)) == ticks


def test_to_ticks_rejects_prices_off_the_tick_grid():
    m = instrument()
    with pytest.raises(
        ValueError,
        match=r"^price 10.03 is not a multiple of the tick size "
        r"0.05$",
    ):
        m.to_ticks(D("10.03"))
    # exact: a context-precision division would round this one onto the grid
    with pytest.raises(ValueError, match="not a multiple"):
        m.to_ticks(D("10.0500000000000000000000000000000001"))
    for bad in (D("NaN"), D("Infinity"), D("1e40")):
        with pytest.raises(ValueError):
            m.to_ticks(bad)
    with pytest.raises(TypeError):
        m.to_ticks(10.05)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(tick_size=D("0")), "tick_size"),
        (dict(tick_size=D("-0.05")), "tick_size"),
        (dict(tick_size=D("0.001"), band_low=D("10"), band_high=D("20")), "whole number of paise"),
        (dict(band_low=D("10000.03")), "band_low"),
        (dict(band_low=D("20000.05")), "band"),
        (dict(band_low=D("0")), "band"),
        (dict(lot_size=0), "lot_size"),
        (dict(max_order_qty=0), "max_order_qty"),
        (dict(lot_size=10, max_order_qty=5), "max_order_qty"),
        (dict(max_order_qty=INT64_MAX // 400_000 + 1), "max_order_qty"),
        (dict(symbol_id=-1), "id"),
        (dict(symbol=""), "symbol"),
        (dict(enabled=1), "enabled"),
        (dict(stp=Stp.DEFAULT), "stp"),
    ],
)
def test_instrument_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        instrument(**changes)


def test_engine_quantity_limit_is_the_largest_max_order_qty():
    assert instrument(max_order_qty=INT64_MAX // 400_000).max_order_qty == INT64_MAX // 400_000


# --- sessions ------------------------------------------------------------------------


def ist(*args) -> datetime:
    return datetime(*args, tzinfo=IST)


def test_session_edges_are_open_inclusive_close_exclusive():
    monday = (2026, 3, 2)
    assert not NSE.is_open(ist(*monday, 9, 14, 59, 999_999))
    assert NSE.is_open(ist(*monday, 9, 15))
    assert NSE.is_open(ist(*monday, 15, 29, 59, 999_999))
    assert not NSE.is_open(ist(*monday, 15, 30))
    assert not NSE.is_open(ist(*monday, 0, 0))


def test_session_uses_the_instant_not_the_callers_zone():
    # 03:45 UTC is 09:15 IST (UTC+5:30, no daylight saving)
    assert NSE.is_open(datetime(2026, 3, 2, 3, 45, tzinfo=UTC))
    assert not NSE.is_open(datetime(2026, 3, 2, 3, 44, 59, tzinfo=UTC))
    assert NSE.is_open(datetime(2026, 3, 1, 23, 0, tzinfo=NY))  # Mon 09:30 IST
    # Sunday 23:00 UTC is Monday 04:30 IST: closed; same wall time in IST is open
    assert not NSE.is_open(datetime(2026, 3, 1, 23, 0, tzinfo=UTC))
    assert NSE.is_open(datetime(2026, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))))


def test_weekends_and_holidays_are_closed():
    assert not NSE.is_open(ist(2026, 3, 7, 10, 0))  # Saturday
    assert not NSE.is_open(ist(2026, 3, 8, 10, 0))  # Sunday
    assert not NSE.is_open(ist(2026, 1, 26, 10, 0))  # Republic Day, a Monday
    assert NSE.is_open(ist(2026, 1, 27, 10, 0))
    assert NSE.is_trading_day(date(2026, 1, 27)) and not NSE.is_trading_day(date(2026, 1, 26))
    saturdays = dataclasses.replace(NSE, weekdays=frozenset({6}))
    assert saturdays.is_open(ist(2026, 3, 7, 10, 0)) and not saturdays.is_open(
        ist(2026, 3, 6, 10, 0)
    )


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        NSE.is_open(datetime(2026, 3, 2, 10, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        NSE.next_open(datetime(2026, 3, 2, 10, 0))


def test_next_open():
    assert NSE.next_open(ist(2026, 3, 2, 9, 15)) == ist(2026, 3, 2, 9, 15)  # at the open
    assert NSE.next_open(ist(2026, 3, 2, 8, 0)) == ist(2026, 3, 2, 9, 15)
    assert NSE.next_open(ist(2026, 3, 2, 9, 15, 0, 1)) == ist(2026, 3, 3, 9, 15)  # in session
    assert NSE.next_open(ist(2026, 3, 6, 15, 30)) == ist(2026, 3, 9, 9, 15)  # Fri -> Mon
    assert NSE.next_open(ist(2026, 3, 7, 12, 0)) == ist(2026, 3, 9, 9, 15)  # Saturday
    assert NSE.next_open(ist(2026, 1, 23, 16, 0)) == ist(2026, 1, 27, 9, 15)  # over a holiday
    opens = NSE.next_open(datetime(2026, 3, 6, 23, 0, tzinfo=UTC))
    assert opens.tzinfo == IST and opens == ist(2026, 3, 9, 9, 15)
    assert NSE.is_open(opens)
    # a long run of holidays
    week = frozenset(date(2026, 3, 9) + timedelta(days=n) for n in range(14))
    closed = dataclasses.replace(NSE, holidays=week)
    assert closed.next_open(ist(2026, 3, 7, 0, 0)) == ist(2026, 3, 23, 9, 15)


def test_daylight_saving_zone_keeps_local_hours():
    # US daylight saving starts Sunday 2026-03-08: 09:30 is 14:30 UTC before, 13:30 after
    assert NYSE.is_open(datetime(2026, 3, 6, 14, 30, tzinfo=UTC))
    assert not NYSE.is_open(datetime(2026, 3, 6, 14, 29, tzinfo=UTC))
    assert NYSE.is_open(datetime(2026, 3, 9, 13, 30, tzinfo=UTC))
    assert not NYSE.is_open(datetime(2026, 3, 9, 13, 29, tzinfo=UTC))
    assert not NYSE.is_open(datetime(2026, 3, 9, 20, 0, tzinfo=UTC))  # 16:00 EDT
    assert NYSE.is_open(datetime(2026, 3, 6, 20, 59, tzinfo=UTC))  # 15:59 EST
    opens = NYSE.next_open(datetime(2026, 3, 6, 21, 0, tzinfo=UTC))
    assert opens.astimezone(UTC) == datetime(2026, 3, 9, 13, 30, tzinfo=UTC)
    # and back: it ends Sunday 2026-11-01
    opens = NYSE.next_open(datetime(2026, 10, 30, 21, 0, tzinfo=UTC))
    assert opens.astimezone(UTC) == datetime(2026, 11, 2, 14, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(timezone="Mars/Olympus"), "time zone"),
        (dict(open=time(15, 30), close=time(9, 15)), "open before it closes"),
        (dict(open=time(9, 15), close=time(9, 15)), "open before it closes"),
        (dict(weekdays=frozenset()), "weekdays"),
        (dict(weekdays=frozenset({0, 1})), "weekdays"),
        (dict(weekdays=frozenset({8})), "weekdays"),
        (dict(holidays=frozenset({"2026-01-26"})), "holidays"),
        (dict(open=time(9, 15, tzinfo=UTC)), "local time"),
    ],
)
def test_session_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(NSE, **changes)


# --- the TOML loader -----------------------------------------------------------------

SESSION = """
[session]
timezone = "Asia/Kolkata"
open = "09:15"
close = "15:30"
weekdays = [1, 2, 3, 4, 5]
holidays = ["2026-01-26"]
"""

ABC = """
[[instrument]]
symbol = "ABC"
id = 1
low = 200
high = 400
tick_size = "0.05"
lot_size = 5
max_order_qty = 1000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "instruments.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_loader_defaults_and_overrides(tmp_path):
    path = write(
        tmp_path,
        SESSION
        + ABC
        + """
[[instrument]]
symbol = "XYZ"
id = 2
low = 1
high = 100
tick_size = "1"
max_order_qty = 10
enabled = false
stp = "DECREMENT"
session_orders = 7

[instrument.session]
close = "17:00"
holidays = [2026-03-02]
""",
    )
    market = load_market(path)
    abc, xyz = market["ABC"], market["XYZ"]
    assert abc.band_low == D("10.00") and abc.band_high == D("20.00") and abc.lot_size == 5
    assert abc.enabled and abc.stp == Stp.CANCEL_NEWEST and abc.session_orders == 0
    assert abc.session == NSE
    assert xyz.tick_size == 1 and xyz.lot_size == 1 and not xyz.enabled
    assert xyz.stp == Stp.DECREMENT and xyz.session_orders == 7
    assert xyz.session.close == time(17, 0) and xyz.session.open == time(9, 15)
    assert xyz.session.holidays == {date(2026, 3, 2)}
    assert not xyz.session.is_open(ist(2026, 3, 2, 10, 0)) and abc.session.is_open(
        ist(2026, 3, 2, 10, 0)
    )
    # the engine's loader reads the same file
    assert [
        market[i.symbol].engine_instrument() for i in load_instruments(path)
    ] == load_instruments(path)


def test_instrument_without_global_session_needs_its_own(tmp_path):
    assert (
        load_market(
            write(
                tmp_path,
                ABC
                + """
[instrument.session]
timezone = "America/New_York"
open = 09:30:00
close = 16:00:00
""",
            )
        )["ABC"].session
        == NYSE
    )
    with pytest.raises(ValueError, match=r"instrument ABC \(#1\): session: no \[session\]"):
        load_market(write(tmp_path, ABC))


def test_empty_file_is_an_empty_market(tmp_path):
    assert load_market(write(tmp_path, SESSION)) == {}


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('tick_size = "0.05"\n', "", r"instrument ABC \(#1\): tick_size: missing"),
        (
            'tick_size = "0.05"',
            "tick_size = 0.05",
            r"ABC \(#1\): tick_size: must be a decimal "
            r"string",
        ),
        ('tick_size = "0.05"', 'tick_size = "five"', r"ABC \(#1\): tick_size: 'five' is not"),
        (
            'tick_size = "0.05"',
            'tick_size = "0.001"',
            r"ABC \(#1\): tick_size 0.001 is not a "
            r"whole number of paise",
        ),
        ('tick_size = "0.05"', 'tick_size = "-0.05"', r"ABC \(#1\): tick_size must be positive"),
        ('tick_size = "0.05"', 'tick_size = "NaN"', r"ABC \(#1\): tick_size: must be a decimal"),
        ("max_order_qty = 1000\n", "", r"ABC \(#1\): max_order_qty: missing"),
        ("max_order_qty = 1000", "max_order_qty = 3", r"ABC \(#1\): max_order_qty must be"),
        (
            "max_order_qty = 1000",
            'max_order_qty = "1000"',
            r"ABC \(#1\): max_order_qty: must be "
            r"an integer",
        ),
        ("lot_size = 5", "lot_size = 0", r"ABC \(#1\): lot_size must be"),
        ("lot_size = 5", "lot_size = true", r"ABC \(#1\): lot_size: must be an integer"),
        ("low = 200", "low = 0", r"ABC \(#1\): low: must be at least 1 tick"),
        ("high = 400", "high = 100", r"ABC \(#1\): high: must be at least low"),
        ("id = 1\n", "", r"ABC \(#1\): id: missing"),
        ("id = 1", "id = -3", r"ABC \(#1\): id must be"),
        ('symbol = "ABC"', "symbol = 5", r"instrument #1: symbol: must be a non-empty string"),
        (
            "lot_size = 5",
            "lot_size = 5\nenabled = 1",
            r"ABC \(#1\): enabled: must be true or "
            r"false",
        ),
        ("lot_size = 5", "lot_size = 5\nenable = false", r"ABC \(#1\): unknown key\(s\) enable"),
        ("lot_size = 5", 'lot_size = 5\nstp = "SOMETIMES"', r"ABC \(#1\): stp: must be one of"),
        ("lot_size = 5", "lot_size = 5\nsession = 3", r"ABC \(#1\): session: must be a table"),
        (
            "lot_size = 5",
            'lot_size = 5\nsession = { close = "25:00" }',
            r"ABC \(#1\): session.close: must be a local time",
        ),
        (
            "lot_size = 5",
            'lot_size = 5\nsession = { closes = "16:00" }',
            r"ABC \(#1\): session: unknown key\(s\) closes",
        ),
    ],
)
def test_loader_names_the_instrument_and_key(tmp_path, old, new, message):
    text = SESSION + ABC
    assert old in text
    with pytest.raises(ValueError, match=message):
        load_market(write(tmp_path, text.replace(old, new, 1)))


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            'timezone = "Asia/Kolkata"',
            'timezone = "Asia/Nowhere"',
            r"\[session\]: session: "
            r"unknown time zone",
        ),
        ('timezone = "Asia/Kolkata"\n', "", r"\[session\]: session.timezone: missing"),
        ('open = "09:15"', 'open = "9.15am"', r"\[session\]: session.open: must be a local time"),
        (
            'close = "15:30"',
            'close = "09:00"',
            r"\[session\]: session: the session must open "
            r"before it closes",
        ),
        ("weekdays = [1, 2, 3, 4, 5]", "weekdays = [0, 1]", r"\[session\]: session: weekdays"),
        ("weekdays = [1, 2, 3, 4, 5]", 'weekdays = ["Mon"]', r"\[session\]: session.weekdays"),
        (
            'holidays = ["2026-01-26"]',
            'holidays = ["26/01/2026"]',
            r"\[session\]: "
            r"session.holidays: '26/01",
        ),
        (
            'holidays = ["2026-01-26"]',
            'holidays = "2026-01-26"',
            r"\[session\]: "
            r"session.holidays: must be",
        ),
        (
            'holidays = ["2026-01-26"]',
            "holidays = []\nhalfdays = []",
            r"\[session\]: session: "
            r"unknown key",
        ),
    ],
)
def test_loader_validates_the_session(tmp_path, old, new, message):
    text = SESSION + ABC
    assert old in text
    with pytest.raises(ValueError, match=message):
        load_market(write(tmp_path, text.replace(old, new, 1)))


def test_loader_refuses_duplicates_and_bad_toml(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"instrument ABC \(#2\): symbol ABC is configured "
        r"twice",
    ):
        load_market(write(tmp_path, SESSION + ABC + ABC.replace("id = 1", "id = 2")))
    with pytest.raises(ValueError, match=r"instrument DEF \(#2\): id 1 is already used by ABC"):
        load_market(write(tmp_path, SESSION + ABC + ABC.replace('"ABC"', '"DEF"')))
    with pytest.raises(ValueError, match="not valid TOML"):
        load_market(write(tmp_path, "[[instrument]\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            SESSION + ABC.replace("lot_size = 5", "lot_size = 5\nenable = false"),
            r"instrument ABC \(#1\): unknown key\(s\) enable",
        ),
        (
            SESSION + ABC + ABC.replace('"ABC"', '"DEF"'),
            r"instrument DEF \(#2\): id 1 is already used by ABC",
        ),
        (
            SESSION.replace('open = "09:15"', 'open = "9.15am"') + ABC,
            r"\[session\]: session.open: must be a local time",
        ),
        ("[sessions]\n", r"instruments.toml: unknown key\(s\) sessions"),
        ("instrument = [1]\n", r"instrument #1: must be a table, not 1"),
    ],
)
def test_the_engine_and_the_broker_refuse_a_file_alike(tmp_path, text, message):
    path = write(tmp_path, text)
    for load in (load_market, load_instruments):
        with pytest.raises(ValueError, match=message):
            load(path)


def test_stp_names_are_the_modes_but_default():
    assert set(get_args(StpName)) == {mode.name for mode in Stp} - {"DEFAULT"}


def test_the_market_loads_without_the_shard_runtime():
    """The broker's reference data needs neither the matcher nor the rings."""
    code = (
        "import sys; from brokercore.broker.market import load_market; "
        f"load_market({str(CONFIG)!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('brokercore.runtime')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
