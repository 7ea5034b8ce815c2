"""No buy ever fills above the price its cash was held at (a market or stop-market buy:
its market protection's edge, 5 % above its reference), even after a re-band raises the
band's top while it waits (docs/engine.md: REBAND is allowed in every phase), through the
OMS, the engine daemon and settlement: the engine is given the held price as a cap, so
settlement never meets a fill it cannot pay for and never stops.

The other side of each trade is another broker's order, sent straight to the engine (the
OMS's band is the old one, and settlement ignores orders it does not know)."""

from __future__ import annotations

import asyncio

from brokercore.engine.records import Side, Tif
from brokercore.kafka.messages import Halt, NewOrder, PreOpen, Reband, Uncross
from kafka_support import OrderProducer
from oms_support import Api, run
from platform_support import money, platform

NEW_TOP = 500_000  # ticks of 0.05: RELIANCE's band top lifted from 20,000 to 25,000
STOP_HELD = 325_500  # ticks: a buy stop-market at 15,500.00 is held 5 % above, 16,275.00
MARKET_HELD = 315_000  # a market buy without a last trade: 5 % above the band's middle
BROKER = {Side.BUY: 9_998, Side.SELL: 9_999}  # another broker's accounts (not the OMS's)
STATE = (
    "SELECT status, reject_reason, filled_quantity, blocked_cash FROM orders WHERE order_id = %s"
)


class _Market:
    """Another broker's orders, numbered from 10**12 (far from the OMS's ids)."""

    def __init__(self, api: Api):
        self.producer = OrderProducer(api.kafka)
        self.next_id = 10**12

    def send(self, *commands) -> None:
        self.producer.send(commands)

    def order(self, side: Side, qty: int, price: int, tif: Tif = Tif.GTC) -> NewOrder:
        self.next_id += 1
        return NewOrder(self.next_id, BROKER[side], "RELIANCE", side, qty, price=price, tif=tif)


async def _wait(api: Api, order_id: int, expected: tuple) -> None:
    await asyncio.to_thread(api.wait_rows, STATE, [expected], order_id)


def test_a_stop_market_or_market_buy_never_fills_above_its_hold_after_a_reband(database, tmp_path):
    """A buy stop-market waits (held at its protection, 16,275); a re-band raises the
    top; a trade reaches its trigger with asks at 16,000 and 21,000: it buys the 4 at
    16,000, never the 21,000 ones its hold cannot pay, and the rest is cancelled like a
    stop-market's remainder. A market buy placed after the re-band fills nothing above
    its protection either."""
    with platform(database, tmp_path) as api:
        before = money(api)
        market = _Market(api)

        async def day():
            async with api:
                market.send(  # the last trade: 15,000.00
                    market.order(Side.SELL, 1, 300_000), market.order(Side.BUY, 1, 300_000)
                )
                stop = await api.placed(
                    quantity=10, type="STOP", price=None, trigger_price="15500.00"
                )
                stop = stop.order_id
                await _wait(api, stop, ("TRIGGER_PENDING", None, 0, STOP_HELD * 5 * 10))
                market.send(
                    Reband("RELIANCE", 200_000, NEW_TOP),
                    market.order(Side.SELL, 6, 420_000),  # 21,000.00: above the hold
                    market.order(Side.SELL, 4, 320_000),  # 16,000.00
                    market.order(Side.SELL, 1, 310_000),
                    market.order(Side.BUY, 1, 310_000),  # 15,500.00 trades: the trigger
                )
                await _wait(api, stop, ("CANCELLED", "IOC_REMAINDER", 4, 0))
                buy = await api.placed("carol", type="MARKET", price=None, quantity=3)
                buy = buy.order_id
                await _wait(api, buy, ("CANCELLED", "IOC_REMAINDER", 0, 0))
                return stop, buy

        stop, buy = run(day)
        assert api.rows(
            "SELECT order_id, type, time_in_force, avg_fill_price, hold_price_ticks "
            "FROM orders ORDER BY 1"
        ) == [  # stored as the customer sent them
            (stop, "STOP", "DAY", 1_600_000, STOP_HELD),
            (buy, "MARKET", "IOC", None, MARKET_HELD),
        ]
        assert api.rows("SELECT order_id, price, quantity FROM fills ORDER BY trade_id") == [
            (stop, 1_600_000, 4)
        ]
        cash, blocked, fees, shares, blocked_shares = money(api)
        assert (blocked, blocked_shares) == (0, 0)  # every hold released
        assert (before[0] - cash, shares - before[3]) == (4 * 1_600_000 + fees - before[2], 4)


def test_a_market_buy_never_waits_for_an_auction_a_reband_could_lift(database, tmp_path):
    """A market buy cannot be capped and wait for a call auction at once (an uncross
    gives a waiting market order priority at any price): one that meets an engine's
    pre-open (here a halt's re-opening, which the calendar does not know) is refused by
    the engine, its hold released; a re-band and an uncross above the old top then
    trade nothing of ours. A waiting buy stop-market is capped as a stop-limit at its
    protection, so a re-band that drops the band's top below that cap cancels it
    (PRICE_OUT_OF_BAND), its hold released."""
    with platform(database, tmp_path) as api:
        before = money(api)
        market = _Market(api)

        async def day():
            async with api:
                stop = await api.placed(
                    "carol", quantity=2, type="STOP", price=None, trigger_price="15500.00"
                )
                stop = stop.order_id
                await _wait(api, stop, ("TRIGGER_PENDING", None, 0, STOP_HELD * 5 * 2))
                market.send(Halt("RELIANCE", ts=1), Reband("RELIANCE", 200_000, STOP_HELD - 1))
                await _wait(api, stop, ("CANCELLED", "PRICE_OUT_OF_BAND", 0, 0))
                market.send(PreOpen("RELIANCE", ts=2))
                buy = await api.placed("carol", type="MARKET", price=None, quantity=3)
                buy = buy.order_id
                await _wait(api, buy, ("REJECTED", "SESSION_STATE", 0, 0))
                market.send(
                    Reband("RELIANCE", 200_000, NEW_TOP),
                    market.order(Side.SELL, 3, 420_000, Tif.DAY),  # 21,000.00
                    market.order(Side.BUY, 3, 440_000, Tif.DAY),
                    Uncross("RELIANCE", ts=3),
                )
                # an IOC limit is refused in the pre-open and cancelled once open: the
                # uncross has run when it is cancelled
                probe = await api.placed(quantity=1, time_in_force="IOC")
                await _wait(api, probe.order_id, ("CANCELLED", "IOC_REMAINDER", 0, 0))
                return buy

        buy = run(day)
        assert api.rows("SELECT type, time_in_force FROM orders WHERE order_id = %s", buy) == [
            ("MARKET", "IOC")
        ]
        assert money(api) == before  # nothing of ours traded, nothing held
