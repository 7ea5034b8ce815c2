"""Waiting in the tests: poll a condition until it holds, and fail saying what was awaited
once ``timeout`` has passed. The timeout only guards against a hang: no test asserts a
wall time with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = 30.0, every: float = 0.05
) -> T:
    """The first true value of ``condition()``, polled every ``every`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(every)
    return value
