"""Memory of the compiled book: what it allocates is measured by nbytes (not timed)."""

from __future__ import annotations

import pytest

from brokercore import OrderBook, Side


def book_with_resting_orders(mid: int, n: int, **kwargs) -> OrderBook:
    book = OrderBook(int(mid * 0.8), int(mid * 1.2), **kwargs)
    for k in range(n // 2):
        assert book.limit(2 * k + 1, Side.BUY, mid - 1 - 3 * k, 100, account=1) == 1
        assert book.limit(2 * k + 2, Side.SELL, mid + 1 + 3 * k, 100, account=2) == 1
    return book


def test_a_wide_band_costs_memory_only_where_orders_rest():
    """+-20% band at a 0.01 tick around 2,000.00: 80,000 levels, 100 orders near the mid."""
    book = book_with_resting_orders(200_000, 100)
    assert book.open_orders == 100
    # Each side has pages of its own (a pre-open book may cross): dense ladders for both
    # sides would need 1.3 MB of levels.
    assert book.nbytes < 32 * 1024


def test_session_orders_presizes_the_id_map_so_it_never_grows():
    presized = book_with_resting_orders(10_000, 0, session_orders=50_000)
    before = presized.nbytes
    assert before > 50_000 * 2 * 16  # two 16-byte entries per expected order id
    for order_id in range(1, 50_001):
        presized.limit(order_id, Side.BUY, 9_000, 1, account=1)
        presized.cancel(order_id, account=1)
    assert presized.nbytes - before < 64 * 1024  # only the pool and event buffer moved
    presized.close()
    presized.open()  # forgetting spent ids keeps the presized map
    assert presized.nbytes - before < 64 * 1024


@pytest.mark.parametrize("session_orders", [-1, 2**32 + 1])
def test_session_orders_out_of_range_is_refused(session_orders):
    with pytest.raises(ValueError, match="session_orders"):
        OrderBook(1, 10, session_orders=session_orders)
