"""The margin preview: what new orders would block, and whether each would be taken now,
decided by the order path's own checks (``OrderEntry.check``), storing nothing.

The account is read plainly, without the row lock the order path takes, so a preview
never waits on an order nor delays one; the real POST decides again under the lock,
so what a preview says may be stale by then. The orders of one preview are checked
together, in their order, as a batch of the group commit is: each sees the cash and
shares the earlier accepted ones would block; a refused one blocks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from brokercore.broker.money import rupees
from brokercore.broker.risk import AccountState, Hold
from brokercore.entry.order_entry import OrderEntry, OrderRefused, last_prices, no_account
from brokercore.entry.requests import (
    Blocks,
    ErrorDetail,
    MarginAnswer,
    MarginTotal,
    OrderMargin,
    PlaceOrderRequest,
)

__all__ = [
    "MAX_PREVIEW_ORDERS",
    "MarginOrder",
    "MarginPreview",
    "answer",
    "preview",
]

MAX_PREVIEW_ORDERS = 50
"""The most orders one preview takes."""

# Free cash, the free shares of the asked symbols (as oms_order_facts reads them), the
# rest of what the checks need; a plain read: no FOR UPDATE.
_READ_ACCOUNT = """
SELECT a.cash - a.blocked_cash, a.allow_short, a.kyc_status,
       (SELECT coalesce(json_object_agg(p.symbol, p.quantity - p.blocked_quantity), '{}')
          FROM positions p WHERE p.account_id = a.account_id AND p.symbol = ANY(%s))
  FROM accounts a WHERE a.user_id = %s"""


class MarginOrder(PlaceOrderRequest, kw_only=True, frozen=True):
    """An order body of POST /api/v1/orders, its idempotency key optional (ignored)."""

    idempotency_key: Annotated[str, msgspec.Meta(max_length=128)] = ""


MarginBody: Any = (
    MarginOrder
    | Annotated[list[MarginOrder], msgspec.Meta(min_length=1, max_length=MAX_PREVIEW_ORDERS)]
)
"""POST /api/v1/margins/orders: one order body, or a list of up to 50 (a union, not a
class: Any to a type checker, so it can be decoded as one)."""


@dataclass(frozen=True)
class Previewed:
    """One order's outcome: the hold it would take, or why the real POST would refuse it."""

    request: PlaceOrderRequest
    hold: Hold | OrderRefused


@dataclass
class MarginPreview:
    """Each order's outcome, in order, and the totals of the accepted ones (cash in
    paise, shares per symbol)."""

    orders: list[Previewed] = field(default_factory=list)
    cash: int = 0
    shares: dict[str, int] = field(default_factory=dict)


async def preview(
    entry: OrderEntry, user_id: str, requests: Sequence[PlaceOrderRequest]
) -> MarginPreview:
    """What ``requests`` would block if the user placed them now, one after another;
    OrderRefused (NO_ACCOUNT) for a user without an account."""
    now = entry.clock()
    async with entry.pool.connection() as conn:
        row = await (
            await conn.execute(_READ_ACCOUNT, (sorted({r.symbol for r in requests}), user_id))
        ).fetchone()
        if row is None:
            raise no_account()
        last = await last_prices(conn, requests)
    cash, allow_short, kyc_status, shares = row
    result = MarginPreview()
    for request in requests:
        free = AccountState(cash, shares.get(request.symbol, 0), allow_short)
        try:
            hold = entry.check(request, kyc_status, free, now, last)
        except OrderRefused as refused:
            result.orders.append(Previewed(request, refused))
            continue
        cash -= hold.cash
        shares[request.symbol] = free.shares_available - hold.shares
        result.orders.append(Previewed(request, hold))
        result.cash += hold.cash
        if hold.shares:
            result.shares[request.symbol] = result.shares.get(request.symbol, 0) + hold.shares
    return result


def answer(result: MarginPreview) -> MarginAnswer:
    """The preview as the API answers it, money as rupee strings."""
    orders = []
    for item in result.orders:
        request, hold = item.request, item.hold
        if isinstance(hold, OrderRefused):
            error = ErrorDetail(hold.reason.value, hold.message)
            orders.append(OrderMargin(request.symbol, request.side, False, error=error))
        elif request.side == "BUY":
            blocks = Blocks(cash=rupees(hold.cash))
            orders.append(OrderMargin(request.symbol, request.side, True, blocks))
        else:
            blocks = Blocks(shares=hold.shares, symbol=request.symbol)
            orders.append(OrderMargin(request.symbol, request.side, True, blocks))
    return MarginAnswer(orders, MarginTotal(rupees(result.cash), result.shares))
