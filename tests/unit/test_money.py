"""Money: rupees and paise, the API's and people's rupee strings, average prices."""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokercore.broker.money import (
    average_fill_price,
    average_price,
    format_paise,
    rupees,
    to_paise,
)

D = Decimal


def test_paise_helpers():
    assert to_paise(D("15000.50")) == 1_500_050
    assert to_paise(D("0.01")) == 1
    with pytest.raises(ValueError):
        to_paise(D("0.001"))
    assert format_paise(1_500_050) == "15,000.50"
    assert format_paise(5) == "0.05"


def test_rupees_has_two_places_or_four_and_no_negative_zero():
    assert rupees(1_500_050) == "15000.50"
    assert rupees(D("1550000.0000")) == "15500.00"
    assert rupees(D("1.6667")) == "0.0167"
    assert rupees(None) is None
    assert [rupees(v) for v in (D("-0"), D("-0.0000"), -0, D("-0.5"), -1)] == [
        "0.00",
        "0.00",
        "0.00",
        "-0.0050",
        "-0.01",
    ]


def test_average_fill_price():
    assert average_fill_price(0, 0) is None  # no fill yet
    assert average_fill_price(3_000_000, 2) == D("1500000.0000")
    assert average_fill_price(5, 3) == D("1.6667")  # 5/3
    assert average_fill_price(100_005, 100_000) == D("1.0001")  # 1.00005: half away from 0
    assert average_fill_price(100_004, 100_000) == D("1.0000")


def test_average_price():
    assert average_price(0, D(0), 10, 1_500_000) == D("1500000.0000")
    assert average_price(10, D(1_500_000), 10, 1_600_000) == D("1550000")
    assert average_price(1, D(1), 2, 2) == D("1.6667")  # 5/3
    assert average_price(2, D(2), 1, 1) == D("1.6667")
    assert average_price(1, D("1.0001"), 1, 1) == D("1.0001")  # 1.00005: half away from 0
    assert average_price(3, D(1), 6, 2) == D("1.6667")
    assert average_price(10, D(1_500_000), -4, 1_700_000) == D(1_500_000)  # selling keeps it
    assert average_price(10, D(1_500_000), -10, 1_700_000) == 0  # flat
    assert average_price(10, D(1_500_000), -15, 1_700_000) == D(1_700_000)  # now short
    assert average_price(-5, D(1_700_000), -5, 1_600_000) == D(1_650_000)  # adding to a short
    assert average_price(-5, D(1_700_000), 2, 1_600_000) == D(1_700_000)  # covering
    assert average_price(-5, D(1_700_000), 8, 1_600_000) == D(1_600_000)  # now long
    with pytest.raises(TypeError):
        average_price(1, 1.5, 1, 1)


def test_average_price_is_exact_for_large_positions():
    # beyond the 28 digits of the default decimal context
    big = 10**20
    assert average_price(big, D(1), 1, 2) == D("1.0000")
    assert average_price(big, D("1.00005"), big, 1) == D("1.0000")  # 1.000025
    assert average_price(1, D("1.00005"), 1, 1) == D("1.0000")  # 1.000025
