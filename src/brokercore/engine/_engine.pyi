"""Type stubs for the compiled order book (see docs/engine.md for the behaviour)."""

from typing import Self

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer, disjoint_base

from brokercore.engine.records import AuctionQuote, Phase, RestingOrder, Stp

@disjoint_base
class OrderBook:
    """The order book of one symbol: price-time priority matching inside a price band."""

    def __init__(
        self,
        low: int,
        high: int,
        lot_size: int = 1,
        symbol: int = 0,
        stp: int = ...,
        session_orders: int = 0,
        min_disclosed_percent: int = 10,
    ) -> None: ...
    # per-order API: each returns the number of events, read them with last_events()
    def limit(
        self,
        order_id: int,
        side: int,
        price: int,
        qty: int,
        account: int = 0,
        tif: int = 1,
        stp: int = 0,
        post_only: bool = False,
        ts: int = 0,
        disclosed: int = 0,
    ) -> int: ...
    def market(
        self,
        order_id: int,
        side: int,
        qty: int,
        account: int = 0,
        tif: int = 3,
        stp: int = 0,
        ts: int = 0,
    ) -> int: ...
    def cancel(self, order_id: int, account: int = 0, ts: int = 0) -> int: ...
    def amend(
        self,
        order_id: int,
        price: int,
        qty: int,
        account: int = 0,
        ts: int = 0,
        trigger: int = 0,
        disclosed: int = 0,
    ) -> int: ...
    def stop(
        self,
        order_id: int,
        side: int,
        qty: int,
        trigger: int,
        account: int = 0,
        tif: int = 2,
        stp: int = 0,
        ts: int = 0,
    ) -> int: ...
    def stop_limit(
        self,
        order_id: int,
        side: int,
        price: int,
        qty: int,
        trigger: int,
        account: int = 0,
        tif: int = 2,
        stp: int = 0,
        ts: int = 0,
    ) -> int: ...
    def open(self, ts: int = 0) -> int: ...
    def close(self, ts: int = 0) -> int: ...
    def pre_open(self, ts: int = 0) -> int: ...
    def uncross(self, reference: int = 0, ts: int = 0) -> int: ...
    def halt(self, ts: int = 0) -> int: ...
    def reband(self, low: int, high: int, ts: int = 0) -> int: ...
    def last_events(self) -> npt.NDArray[np.void]: ...
    # batch API: COMMAND_DTYPE in, EVENT_DTYPE out, one nogil call
    def process(self, commands: npt.NDArray[np.void]) -> npt.NDArray[np.void]: ...
    # views
    def best_bid(self) -> tuple[int, int] | None: ...
    def best_ask(self) -> tuple[int, int] | None: ...
    def depth(self, n: int = 10) -> tuple[npt.NDArray[np.void], npt.NDArray[np.void]]: ...
    def level(self, price: int) -> npt.NDArray[np.void]: ...
    def orders(self) -> npt.NDArray[np.void]: ...
    def order(self, order_id: int) -> RestingOrder | None: ...
    def auction(self) -> AuctionQuote | None: ...
    @property
    def open_orders(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def last_price(self) -> int: ...
    @property
    def min_disclosed_percent(self) -> int: ...
    @property
    def low(self) -> int: ...
    @property
    def high(self) -> int: ...
    @property
    def lot_size(self) -> int: ...
    @property
    def max_qty(self) -> int: ...
    @property
    def symbol(self) -> int: ...
    @property
    def stp(self) -> Stp: ...
    @property
    def nbytes(self) -> int: ...
    # snapshots
    def snapshot(self) -> bytes: ...
    @classmethod
    def restore(cls, data: Buffer) -> Self: ...
