"""The trading day's plan (brokercore.broker.session_plan): each symbol's steps from its
calendar (zones, holidays, overrides), the secret random uncross moment, compressed
days, and what a scheduler publishes after being away (``due``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from brokercore.broker.market import AlwaysOpen, Session, load_market
from brokercore.broker.session_plan import (
    CalendarPlan,
    CompressedDay,
    Step,
    Transition,
    due,
    uncross_moment,
)

T = Transition
NSE = Session(
    "Asia/Kolkata",
    time(9, 15),
    time(15, 30),
    holidays=frozenset({date(2026, 1, 26)}),
    pre_open=time(9, 0),
    pre_open_end=time(9, 8),
    uncross_window=60,
)
NYSE = Session("America/New_York", time(9, 30), time(16, 0))  # no pre-open
SECRET = b"test-secret"
MONDAY = date(2026, 3, 2)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def day_steps(plan: CalendarPlan, symbol: str, on: date) -> list[Step]:
    return plan.steps(symbol, on.toordinal())


def test_an_nse_day_is_pre_open_uncross_in_the_last_minute_and_close():
    plan = CalendarPlan({"AAA": NSE}, SECRET)
    pre_open, uncross, close = day_steps(plan, "AAA", MONDAY)
    assert [s.transition for s in (pre_open, uncross, close)] == [T.PRE_OPEN, T.UNCROSS, T.CLOSE]
    assert {s.day for s in (pre_open, uncross, close)} == {"2026-03-02"}
    assert pre_open.at == utc(2026, 3, 2, 3, 30)  # 09:00 IST
    assert utc(2026, 3, 2, 3, 37) <= uncross.at < utc(2026, 3, 2, 3, 38)  # 09:07-09:08 IST
    assert close.at == utc(2026, 3, 2, 10, 0)  # 15:30 IST


def test_holidays_and_weekends_have_no_steps_nor_has_the_always_open_calendar():
    plan = CalendarPlan({"AAA": NSE, "DEV": AlwaysOpen("Asia/Kolkata")}, SECRET)
    assert day_steps(plan, "AAA", date(2026, 1, 26)) == []  # a holiday (Monday)
    assert day_steps(plan, "AAA", date(2026, 3, 7)) == []  # Saturday
    assert day_steps(plan, "AAA", date(2026, 3, 9)) != []
    assert day_steps(plan, "DEV", MONDAY) == []


def test_a_day_without_pre_open_opens_and_closes_in_local_time_across_dst():
    plan = CalendarPlan({"XYZ": NYSE}, SECRET)
    winter = day_steps(plan, "XYZ", date(2026, 3, 6))  # EST, UTC-5
    summer = day_steps(plan, "XYZ", date(2026, 3, 9))  # EDT from March 8, UTC-4
    assert [(s.transition, s.at) for s in winter] == [
        (T.OPEN, utc(2026, 3, 6, 14, 30)),
        (T.CLOSE, utc(2026, 3, 6, 21, 0)),
    ]
    assert [(s.transition, s.at) for s in summer] == [
        (T.OPEN, utc(2026, 3, 9, 13, 30)),
        (T.CLOSE, utc(2026, 3, 9, 20, 0)),
    ]


def test_the_uncross_moment_is_secret_the_same_for_every_scheduler_and_in_its_window():
    end = utc(2026, 3, 2, 3, 38)
    days = range(MONDAY.toordinal(), MONDAY.toordinal() + 140)
    one, two = (CalendarPlan({"AAA": NSE}, SECRET) for _ in range(2))
    moments = [s.at for d in days for s in one.steps("AAA", d) if s.transition == T.UNCROSS]
    assert moments == [s.at for d in days for s in two.steps("AAA", d)[1:2]]  # the same
    assert len(moments) == 100
    assert len({m.second for m in moments}) > 40  # spread over the minute, not one second
    moments = [uncross_moment(SECRET, s, "2026-03-02", end, 60) for s in ("AAA", "BBB", "CCC")]
    assert all(end - timedelta(seconds=60) <= m < end for m in moments)
    assert len(set(moments)) == 3  # per symbol
    other = uncross_moment(b"another secret", "AAA", "2026-03-02", end, 60)
    assert other != moments[0]  # unpredictable without the key


def test_instrument_overrides_and_the_file_keys(tmp_path: Path):
    path = tmp_path / "instruments.toml"
    path.write_text(
        """
[session]
timezone = "Asia/Kolkata"
pre_open = "09:00"
pre_open_end = "09:08"
uncross_window = 60
open = "09:15"
close = "15:30"

[[instrument]]
symbol = "AAA"
id = 1
low = 1
high = 1000
tick_size = "0.05"
max_order_qty = 100

[[instrument]]
symbol = "LATE"
id = 2
low = 1
high = 1000
tick_size = "0.05"
max_order_qty = 100
session = { pre_open = "10:00", pre_open_end = "10:10", uncross_window = 30, open = "10:15" }
"""
    )
    market = load_market(path)
    assert market["AAA"].session == replace(NSE, holidays=frozenset())
    plan = CalendarPlan({s: i.session for s, i in market.items()}, SECRET)
    pre_open, uncross, close = day_steps(plan, "LATE", MONDAY)
    assert pre_open.at == utc(2026, 3, 2, 4, 30)
    assert utc(2026, 3, 2, 4, 39, 30) <= uncross.at < utc(2026, 3, 2, 4, 40)
    assert close.at == utc(2026, 3, 2, 10, 0)  # the file's close, not overridden


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(pre_open=time(9, 20)), "pre-open must start before it ends"),
        (dict(pre_open_end=time(9, 20)), "pre-open must start before it ends"),
        (dict(pre_open_end=time(8, 59)), "pre-open must start before it ends"),
        (dict(uncross_window=481), "uncross_window must be"),
        (dict(uncross_window=0), "uncross_window must be"),
        (dict(pre_open=None), "pre_open_end needs a pre_open"),
    ],
)
def test_a_pre_open_must_fit_before_the_open(changes: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        replace(NSE, **changes)


def test_is_pre_open_covers_the_collection_window_of_trading_days():
    assert NSE.is_pre_open(utc(2026, 3, 2, 3, 30))  # 09:00 IST
    assert NSE.is_pre_open(utc(2026, 3, 2, 3, 37, 59))
    assert not NSE.is_pre_open(utc(2026, 3, 2, 3, 38))  # 09:08
    assert not NSE.is_pre_open(utc(2026, 1, 26, 3, 35))  # a holiday
    assert not NYSE.is_pre_open(utc(2026, 3, 2, 14, 0))


def test_a_compressed_day_runs_the_cycle_in_minutes_for_every_symbol():
    plan = CompressedDay(("AAA", "BBB"), SECRET, pre_open=60, uncross_window=20, trading=240)
    now = utc(2026, 3, 2, 12, 0, 30)
    day = plan.day_of(now)
    start = plan.start(day)
    assert start <= now < start + timedelta(seconds=plan.length) and plan.length == 360
    pre_open, uncross, close = plan.steps("AAA", day)
    assert pre_open.at == start and close.at == start + timedelta(seconds=300)
    assert start + timedelta(seconds=40) <= uncross.at < start + timedelta(seconds=60)
    assert plan.steps("BBB", day)[1].at != uncross.at
    assert plan.day_of(close.at) == day and plan.day_of(plan.start(day + 1)) == day + 1
    with pytest.raises(ValueError):
        CompressedDay(("AAA",), SECRET, pre_open=10, uncross_window=20)


# --- due: what a scheduler publishes now ----------------------------------------------

PLAN = CalendarPlan({"AAA": NSE}, SECRET)
PRE, UNX, CLS = day_steps(PLAN, "AAA", MONDAY)
FRIDAY = "2026-02-27"


def published(*pairs: tuple[str, str]) -> dict[str, set[tuple[str, str]]]:
    return {"AAA": set(pairs)}


def test_a_symbol_never_seen_is_closed_first_then_follows_the_calendar():
    now = utc(2026, 3, 2, 1, 0)  # Monday 06:30 IST
    steps, upcoming = due(PLAN, ["AAA"], {}, now)
    assert steps == [Step(now, "AAA", "2026-03-01", T.CLOSE)]  # a new book is OPEN
    assert upcoming == PRE.at
    steps, upcoming = due(PLAN, ["AAA"], published(("2026-03-01", "CLOSE")), PRE.at)
    assert steps == [PRE] and upcoming == UNX.at


def test_on_time_each_step_once_then_the_next_day():
    done = published((FRIDAY, "CLOSE"), ("2026-03-02", "PRE_OPEN"))
    assert due(PLAN, ["AAA"], done, UNX.at - timedelta(seconds=1)) == ([], UNX.at)
    assert due(PLAN, ["AAA"], done, UNX.at) == ([UNX], CLS.at)
    done = published(*((s.day, s.transition) for s in (PRE, UNX, CLS)))
    steps, upcoming = due(PLAN, ["AAA"], done, CLS.at + timedelta(hours=1))
    assert steps == [] and upcoming == utc(2026, 3, 3, 3, 30)


def test_a_restart_sends_what_is_missing_late_in_order():
    done = published(("2026-03-02", "PRE_OPEN"))  # died before the uncross
    now = CLS.at + timedelta(minutes=5)
    assert due(PLAN, ["AAA"], done, now)[0] == [UNX, CLS]


def test_days_missed_whole_are_skipped_and_the_last_days_close_is_sent():
    done = published((FRIDAY, "PRE_OPEN"), (FRIDAY, "UNCROSS"))  # died on Friday
    now = utc(2026, 3, 3, 1, 0)  # Tuesday before the pre-open; Monday missed whole
    steps, upcoming = due(PLAN, ["AAA"], done, now)
    assert [(s.day, s.transition) for s in steps] == [(FRIDAY, T.CLOSE)]
    assert upcoming == utc(2026, 3, 3, 3, 30)


def test_a_day_joined_after_its_opening_keeps_only_its_close():
    done = published((FRIDAY, "CLOSE"))
    steps, upcoming = due(PLAN, ["AAA"], done, utc(2026, 3, 2, 5, 0))  # 10:30 IST
    assert steps == [] and upcoming == CLS.at
    steps, _ = due(PLAN, ["AAA"], {}, utc(2026, 3, 2, 5, 0))
    assert steps == []  # never seen, mid-day: no settling CLOSE, the close comes
    late = PRE.at + timedelta(seconds=30)  # the pre-open missed by 30 s, the uncross to come
    assert due(PLAN, ["AAA"], done, late) == ([PRE], UNX.at)


def test_always_open_has_nothing_to_do():
    plan = CalendarPlan({"DEV": AlwaysOpen("Asia/Kolkata")}, SECRET)
    assert due(plan, ["DEV"], {}, utc(2026, 3, 2, 5, 0)) == ([], None)


@pytest.mark.parametrize(
    "line, message",
    [
        ('pre_open = "9am"', r"\[session\]: session.pre_open: must be a local time"),
        ('uncross_window = "60"', r"\[session\]: session.uncross_window: must be a number"),
        ('pre_open = "09:30"', r"\[session\]: session: the pre-open must start before"),
        ('pre_open_end = "09:08"', r"\[session\]: session: pre_open_end needs a pre_open"),
    ],
)
def test_bad_pre_open_keys_name_the_key(tmp_path: Path, line: str, message: str):
    path = tmp_path / "instruments.toml"
    path.write_text(
        f'[session]\ntimezone = "Asia/Kolkata"\nopen = "09:15"\nclose = "15:30"\n{line}\n\n'
        '[[instrument]]\nsymbol = "AAA"\nid = 1\nlow = 1\nhigh = 1000\n'
        'tick_size = "0.05"\nmax_order_qty = 100\n'
    )
    with pytest.raises(ValueError, match=message):
        load_market(path)
