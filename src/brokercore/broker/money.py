"""Money: int paise inside, ``Decimal`` rupees at the edge, never a float.

One home for the conversions every stage needs (rupees to paise, paise to the API's and
to people's rupee strings) and for the rounding of average prices, which settlement,
the projector and the read side must agree on to the last digit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypeGuard, overload

__all__ = [
    "PAISE_PER_RUPEE",
    "AVG_PRICE_PLACES",
    "is_decimal",
    "exact_ratio",
    "to_paise",
    "format_paise",
    "rupees",
    "average_price",
    "average_fill_price",
]

PAISE_PER_RUPEE = 100
"""Minor units per currency unit: every amount of money inside brokercore is int paise."""

AVG_PRICE_PLACES = 4
"""Decimal places (of a paisa) an average price keeps, rounded half away from zero."""

_PAISA = Decimal(1) / PAISE_PER_RUPEE
_CENT, _BASIS_POINT = Decimal("0.01"), Decimal("0.0001")


def is_decimal(value: object) -> TypeGuard[Decimal | int]:
    """Whether ``value`` is a Decimal or an int (not a bool): a float is never money.
    For values from callers without types, such as a decoded request."""
    return isinstance(value, (Decimal, int)) and not isinstance(value, bool)


def exact_ratio(value: object, unit: Decimal, what: str) -> int:
    """value / unit as an int, exactly (no context rounding); ValueError if not whole,
    TypeError if ``value`` is not ``is_decimal``."""
    if not is_decimal(value):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    value = Decimal(value)
    if not value.is_finite():
        raise ValueError(f"{what} {value} is not a finite number")
    if value.adjusted() > 30:
        raise ValueError(f"{what} {value} is out of range")
    n, d = value.as_integer_ratio()
    un, ud = unit.as_integer_ratio()
    quotient, remainder = divmod(n * ud, d * un)
    if remainder:
        raise ValueError(f"{what} {value} is not a multiple of {unit}")
    return quotient


def to_paise(amount: Decimal) -> int:
    """Rupees (Decimal) to int paise; ValueError if it is not a whole number of paise."""
    return exact_ratio(amount, _PAISA, "amount")


def format_paise(paise: int) -> str:
    """Paise as a human-readable rupee amount: 1500050 -> '15,000.50'."""
    return f"{Decimal(paise).scaleb(-2):,.2f}"


@overload
def rupees(paise: int | Decimal) -> str: ...
@overload
def rupees(paise: None) -> None: ...
@overload
def rupees(paise: int | Decimal | None) -> str | None: ...
def rupees(paise: int | Decimal | None) -> str | None:
    """Paise as the API's rupee string with two decimals (four for a fractional average).
    Zero is "0.00" whatever its sign: a short position's zero P&L is a negative zero."""
    if paise is None:
        return None
    value = Decimal(paise).scaleb(-2)
    value = value.quantize(_CENT if value == value.quantize(_CENT) else _BASIS_POINT)
    return f"{value.copy_abs() if value.is_zero() else value:f}"


def _no_floats(*prices: object) -> None:
    """Callers without types get a TypeError, not a rounding, for a float price."""
    if any(isinstance(p, float) for p in prices):
        raise TypeError("prices are Decimal or int paise, never float")


def _rounded(num: int, den: int) -> Decimal:
    """num / den to AVG_PRICE_PLACES places, half away from zero (as PostgreSQL's
    round(numeric)); ``den`` is positive."""
    scale = 10**AVG_PRICE_PLACES
    sign = -1 if num < 0 else 1
    return Decimal(f"{sign * ((2 * abs(num) * scale + den) // (2 * den))}e-{AVG_PRICE_PLACES}")


def average_price(quantity: int, avg_price: Decimal, delta: int, price: int) -> Decimal:
    """A position's average price in paise after ``delta`` shares trade at ``price`` paise.

    Adding to a position (or opening one) gives the weighted average; reducing it keeps
    the average; crossing zero starts again at the trade price; flat is 0. Rounded to
    ``AVG_PRICE_PLACES`` places, half away from zero (as PostgreSQL's round(numeric)).
    """
    _no_floats(avg_price, price)
    after = quantity + delta
    if after == 0:
        return Decimal(0)
    if quantity == 0 or (quantity > 0) == (delta > 0):
        n, d = Decimal(avg_price).as_integer_ratio()
        num = abs(quantity) * n + abs(delta) * price * d  # exact weighted sum * d
        den = abs(after) * d
    elif (after > 0) == (quantity > 0):
        num, den = Decimal(avg_price).as_integer_ratio()
    else:
        num, den = price, 1
    return _rounded(num, den)


def average_fill_price(notional: int, quantity: int) -> Decimal | None:
    """An order's average fill price: notional / quantity paise, rounded as
    ``average_price``; None before the first fill."""
    if quantity == 0:
        return None
    return _rounded(notional, quantity)
