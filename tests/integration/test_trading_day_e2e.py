"""A compressed trading day end to end: the whole stack of `make up` (the edge, the OMS,
two engine daemons, settlement, the projector, the query service, the WebSocket
gateways and the session scheduler) on private servers, with `make up DAY=compressed`'s
scheduler on a day of a few seconds per phase (BROKERCORE_DAY_SECONDS).

Orders go in during the pre-open and rest crossed while the market data shows the
indicative opening price; the scheduler's uncross fills them at one price; in the
continuous session an iceberg is refreshed and a stop-loss triggers; the close expires
the DAY order left and releases its hold. The read model (through the edge) and the
WebSocket (ORDER_UPDATE and BOOK frames) show each step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
from websockets.asyncio.client import ClientConnection, connect

import oms_support
from brokercore.client import ApiError
from brokercore.read.answers import OrderWithFills
from brokercore.realtime.channels import BookUpdate
from oms_support import order, outcome
from stack_support import stack_fixture  # noqa: F401 (fixture)
from ws_support import token

SYMBOL = "RELIANCE"
# pre-open, the uncross window at its end, continuous trading, closed (seconds)
PRE_OPEN, UNCROSS_WINDOW, TRADING, CLOSED = 10, 2, 18, 4
DAY = PRE_OPEN + TRADING + CLOSED


class Trader:
    """One user's brokercore.client through the edge (``api``) and their WebSocket
    frames."""

    def __init__(self, user: str, edge: str):
        self.user, self.api = user, oms_support.Trader(user, base_url=edge)
        self.frames: list[dict[str, Any]] = []

    async def place(self, **fields: Any) -> int:
        """An order of SYMBOL (``order()``'s ``fields``), accepted (a 202): its id."""
        accepted = await self.api.place(order(symbol=SYMBOL, **fields))
        assert self.api.statuses[-1] == 202, self.api.statuses
        return accepted.order_id

    async def order(self, order_id: int) -> OrderWithFills | None:
        """The order as the read model shows it; None while it does not (refused)."""
        answer = await outcome(self.api.order(order_id))
        return None if isinstance(answer, ApiError) else answer

    async def listen(self, ws_url: str) -> None:
        async with connect(f"{ws_url}?token={token(self.user)}", ping_interval=None) as ws:
            await self._subscribe(ws)
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "PING":
                    await ws.send(json.dumps({"op": "pong"}))
                self.frames.append(frame)

    @staticmethod
    async def _subscribe(ws: ClientConnection) -> None:
        await ws.send(json.dumps({"op": "subscribe", "channel": "book", "symbol": SYMBOL}))

    def statuses(self, order_id: int) -> list[str]:
        return [
            f["status"]
            for f in self.frames
            if f.get("type") == "ORDER_UPDATE" and f["orderId"] == order_id
        ]

    def phases(self) -> list[str]:
        seen: list[str] = []
        for f in self.frames:
            if f.get("type") == "BOOK" and f["symbol"] == SYMBOL and f["phase"] not in seen[-1:]:
                seen.append(f["phase"])
        return seen


async def eventually(check: Callable[[], Any], what: str, timeout: float) -> Any:
    """Await check() (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_a_compressed_day_from_the_pre_open_to_the_close(stack):
    stack.env |= {
        "BROKERCORE_DAY": "compressed",
        "BROKERCORE_DAY_SECONDS": f"{PRE_OPEN},{UNCROSS_WINDOW},{TRADING},{CLOSED}",
    }
    stack.up()
    ws_url = stack.edge.replace("http://", "ws://") + "/ws/v1/orders"
    users = (stack.user_id("alice"), stack.user_id("bob"))
    asyncio.run(day(stack.edge, ws_url, stack.database_url, users))


async def day(edge: str, ws_url: str, database_url: str, users: tuple[str, str]) -> None:
    """alice and bob (``users``: their ids) through the compressed day."""
    alice, bob = Trader(users[0], edge), Trader(users[1], edge)
    async with alice.api, bob.api:

        async def market() -> BookUpdate | None:
            """The market data; None while the edge refuses it."""
            answer = await outcome(alice.api.market_data(SYMBOL))
            return None if isinstance(answer, ApiError) else answer

        def phase(name: str) -> Callable[[], Any]:
            async def check() -> BookUpdate | None:
                data = await market()
                return data if data is not None and data.phase == name else None

            return check

        listeners = [asyncio.create_task(t.listen(ws_url)) for t in (alice, bob)]
        try:
            # A day starts every DAY seconds: wait for the end of this one's pre-open, if
            # any (the orders below must all go in during one pre-open), then the next.
            await eventually(phase("CLOSED"), "the close before a day", 2 * DAY)
            await eventually(phase("PRE_OPEN"), "the pre-open", 2 * DAY)

            # The pre-open: crossing orders rest; the iceberg shows 5 of 20.
            a_open = await alice.place(
                side="BUY", type="LIMIT", quantity=10, price="15010.00", time_in_force="DAY"
            )
            b_open = await bob.place(
                side="SELL", type="LIMIT", quantity=10, price="14990.00", time_in_force="GTC"
            )
            a_bid = await alice.place(
                side="BUY", type="LIMIT", quantity=10, price="14000.00", time_in_force="DAY"
            )
            a_day = await alice.place(
                side="BUY", type="LIMIT", quantity=5, price="13500.00", time_in_force="DAY"
            )
            b_stop = await bob.place(
                side="SELL",
                type="STOP",
                quantity=5,
                price=None,
                trigger_price="14500.00",
                time_in_force="DAY",
            )
            b_ice = await bob.place(
                side="SELL",
                type="LIMIT",
                quantity=20,
                price="15100.00",
                disclosed_quantity=5,
                time_in_force="GTC",
            )

            async def indicative() -> BookUpdate | None:
                data = await market()
                if data is None or data.phase != "PRE_OPEN" or data.indicative is None:
                    return None
                asks = {level.price: level.quantity for level in data.asks}
                return data if asks.get("15100.00") == 5 else None

            pre_open = await eventually(indicative, "the indicative opening", PRE_OPEN)
            # D = 20, 10, 10, 10, 0 and S = 0, 0, 0, 10, 30 at 13500, 14000, 14990, 15010,
            # 15100: the volume 10 at 14990 and 15010 (imbalance 0 at both); no
            # reference (no trade yet): the lower price, 14990.
            assert pre_open.indicative.price == "14990.00", pre_open
            assert pre_open.indicative.volume == 10, pre_open
            assert (await bob.order(b_stop)).status == "TRIGGER_PENDING"

            # The uncross: both crossing orders fill at the one opening price.
            await eventually(phase("OPEN"), "the uncross", PRE_OPEN + 10)

            async def filled(trader: Trader, order_id: int) -> OrderWithFills | None:
                shown = await trader.order(order_id)
                return shown if shown is not None and shown.status == "FILLED" else None

            for trader, order_id in ((alice, a_open), (bob, b_open)):
                shown = await eventually(
                    lambda t=trader, o=order_id: filled(t, o), f"{trader.user}'s auction fill", 15
                )
                assert shown.avg_price == "14990.00", shown

            # Continuous trading: alice takes 10 of the iceberg, two shown parts of 5;
            # it shows 5 again (of 10 left). The OMS's calendar (the compressed day's)
            # is in its pre-open, which takes no IOC, until the pre-open's end, even
            # after the uncross: wait for it (days start every DAY s from the epoch).
            await asyncio.sleep(max(0.0, PRE_OPEN - time.time() % DAY))
            a_take = await alice.place(
                side="BUY", type="LIMIT", quantity=10, price="15100.00", time_in_force="IOC"
            )
            await eventually(lambda: filled(alice, a_take), "alice's take of the iceberg", 15)

            async def refreshed() -> OrderWithFills | None:
                shown, data = await bob.order(b_ice), await market()
                if shown is None or data is None or shown.filled_qty != 10:
                    return None
                asks = {level.price: level.quantity for level in data.asks}
                return shown if asks.get("15100.00") == 5 else None

            await eventually(refreshed, "the iceberg refreshed", 15)

            # bob sells 5 into alice's bid at 14000: the trade reaches his stop's trigger
            # (a sell stop: a trade at or below 14500), which sells 5 more into the bid
            # (inside its market protection: 5 % below the trigger, 13775).
            await bob.place(
                side="SELL", type="LIMIT", quantity=5, price="14000.00", time_in_force="DAY"
            )
            stop = await eventually(lambda: filled(bob, b_stop), "the stop-loss filled", 15)
            assert stop.avg_price == "14000.00", stop
            await eventually(lambda: filled(alice, a_bid), "alice's bid filled", 15)

            # The close: alice's DAY order left expires and frees its hold.
            await eventually(phase("CLOSED"), "the close", TRADING + 10)

            async def expired() -> OrderWithFills | None:
                shown = await alice.order(a_day)
                return shown if shown is not None and shown.status == "EXPIRED" else None

            await eventually(expired, "the DAY order expired", 15)
            assert (await bob.order(b_ice)).status == "PARTIALLY_FILLED"  # GTC: it stays
            await asyncio.sleep(1)  # the last frames
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)

    with psycopg.connect(database_url) as conn:
        blocked = conn.execute(
            "SELECT blocked_cash FROM accounts WHERE user_id = %s", (alice.user,)
        ).fetchone()
    assert blocked == (0,), "no order of alice's is open after the close: nothing is held"

    # The WebSocket showed each step, as the read model did.
    assert alice.statuses(a_open)[-1] == "FILLED" and "OPEN" in alice.statuses(a_open)
    assert alice.statuses(a_day)[-1] == "EXPIRED"
    assert bob.statuses(b_stop)[0] == "TRIGGER_PENDING" and bob.statuses(b_stop)[-1] == "FILLED"
    phases = alice.phases()
    assert phases[phases.index("PRE_OPEN") :][:3] == ["PRE_OPEN", "OPEN", "CLOSED"], phases
    pre_open_frames = [
        f for f in alice.frames if f.get("type") == "BOOK" and f["phase"] == "PRE_OPEN"
    ]
    assert any(
        f["indicative"] and f["indicative"]["price"] == "14990.00" for f in pre_open_frames
    ), pre_open_frames[-3:]
