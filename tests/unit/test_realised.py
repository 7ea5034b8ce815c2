"""brokercore.broker.ledger.realised: the P&L a fill books on a position."""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokercore.broker.ledger import realised

D = Decimal


@pytest.mark.parametrize(
    ("quantity", "avg", "delta", "price", "fee", "expected"),
    [
        (10, D("100.5"), -4, 110, 3, D(38) - 3),  # a long sold in part: (110 - 100.5) x 4
        (10, D(100), -10, 90, 0, D(-100)),  # closed whole at a loss
        (10, D(100), -15, 120, 5, D(200) - 5),  # sold through zero: only the 10 held close
        (0, D(0), -5, 120, 5, D(-5)),  # a short opened: only the sell's fee
        (10, D(100), 5, 120, 7, D(0)),  # a buy adding to a long: nothing, its fee not counted
        (0, D(0), 5, 120, 7, D(0)),  # a buy opening one
        (-10, D(120), 4, 100, 7, D(80)),  # a short covered in part: (120 - 100) x 4
        (-10, D(120), 12, 130, 7, D(-100)),  # covered through zero: only the 10 short close
        (-10, D(120), -2, 110, 7, D(-7)),  # a short added to: the sell's fee
    ],
)
def test_a_fill_realises_what_it_closes_less_a_sells_fee(
    quantity, avg, delta, price, fee, expected
):
    assert realised(quantity, avg, delta, price, fee) == expected


def test_a_fractional_average_is_kept_exactly():
    assert realised(3, D("100.3333"), -3, 101, 0) == D("2.0001")
