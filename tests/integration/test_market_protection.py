"""Market protection (issue 16): a market or stop-market order reaches the engine as a
limit IOC at its protection's edge, the last trade price ± a percentage (the order's
``marketProtection``, else BROKERCORE_MARKET_PROTECTION_PERCENT, 5), rounded to a tick
inward; a buy's hold and the margin preview use that edge. Through the real OMS,
Postgres, Kafka, the engine daemon and settlement.

The last price is what the projector keeps (read_model.trades); no projector runs here,
so a test writes the one trade it needs there. The other side of each trade is another
broker's order, sent straight to the engine."""

from __future__ import annotations

import asyncio

from brokercore.engine.records import Side, Tif
from brokercore.entry.requests import Blocks
from brokercore.kafka.messages import NewOrder
from kafka_support import OrderProducer
from oms_support import Api, order, run
from platform_support import money, platform

LAST = 1_520_000  # paise: the last trade, 15,200.00
BUY_EDGE = 319_200  # ticks of 0.05: 15,200.00 * 1.05 = 15,960.00
SELL_EDGE = 300_960  # 15,200.00 * 0.99 = 15,048.00 (a sell's own marketProtection of 1 %)
BROKER = {Side.BUY: 9_998, Side.SELL: 9_999}  # another broker's accounts (not the OMS's)
STATE = "SELECT status, reject_reason, filled_quantity, hold_price_ticks FROM orders "
STATE += "WHERE order_id = %s"


def _last_trade(api: Api, paise: int = LAST) -> None:
    api.rows(
        "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, executed_at) "
        "VALUES ('last', 'RELIANCE', 1, %s, 1, now()) RETURNING 1",
        paise,
    )


def test_market_orders_fill_only_inside_their_protection(database, tmp_path):
    """Asks at 15,900 (inside the buy's 15,960 edge) and 16,000; bids at 15,100 (inside
    the sell's 15,048 edge) and 15,000: a market buy of 6 and a market sell of 4 (1 %
    protection) fill only inside, their rest cancelled like an IOC's, every hold
    released and nothing created or lost."""
    with platform(database, tmp_path) as api:
        _last_trade(api)
        before = money(api)
        producer = OrderProducer(api.kafka)

        def other(n: int, side: Side, qty: int, ticks: int) -> NewOrder:
            return NewOrder(10**12 + n, BROKER[side], "RELIANCE", side, qty, price=ticks)

        async def day():
            async with api:
                producer.send(
                    [
                        other(1, Side.SELL, 5, 320_000),  # 16,000.00: beyond the edge
                        other(2, Side.SELL, 3, 318_000),  # 15,900.00
                        other(3, Side.BUY, 5, 300_000),  # 15,000.00: beyond the edge
                        other(4, Side.BUY, 2, 302_000),  # 15,100.00
                    ]
                )
                buy = await api.placed("carol", type="MARKET", price=None, quantity=6)
                sell = await api.placed(
                    "bob", side="SELL", type="MARKET", price=None, quantity=4, market_protection="1"
                )
                buy, sell = buy.order_id, sell.order_id
                for order_id, expected in (
                    (buy, ("CANCELLED", "IOC_REMAINDER", 3, BUY_EDGE)),
                    (sell, ("CANCELLED", "IOC_REMAINDER", 2, 0)),
                ):
                    await asyncio.to_thread(api.wait_rows, STATE, [expected], order_id)
                return buy, sell

        buy, sell = run(day)
        commands = {c.order_id: c for c in api.commands()}
        assert [(commands[o].market, commands[o].price, commands[o].tif) for o in (buy, sell)] == [
            (False, BUY_EDGE, Tif.IOC),
            (False, SELL_EDGE, Tif.IOC),
        ]
        assert api.rows("SELECT order_id, price, quantity FROM fills ORDER BY order_id") == [
            (buy, 1_590_000, 3),
            (sell, 1_510_000, 2),
        ]
        cash, blocked, fees, shares, blocked_shares = money(api)
        assert (blocked, blocked_shares) == (0, 0)  # every hold released
        paid = 3 * 1_590_000 - 2 * 1_510_000 + fees - before[2]
        assert (before[0] - cash, shares - before[3]) == (paid, 3 - 2)


def test_the_hold_and_the_margin_preview_use_the_edge(database):
    """A market buy (2 % protection) and a sell stop-market (the default 5 % below its
    trigger): the preview's cash is the placed order's hold at the edge, the engine gets
    limit IOCs there."""
    market = {"type": "MARKET", "price": None, "market_protection": "2"}  # order()'s fields
    stop = {"side": "SELL", "type": "STOP", "price": None, "trigger_price": "14000.00"}

    async def scenario():
        async with Api(database) as api:
            _last_trade(api)
            preview = await api.trader("alice").margin(order(**market))
            buy = await api.placed(**market)
            sell = await api.placed("bob", **stop)
            return api, preview, buy.order_id, sell.order_id

    api, preview, buy, sell = run(scenario)
    # 15,200.00 * 1.02 = 15,504.00 = 310,080 ticks
    assert preview.orders[0].blocks == Blocks(cash="155040.00")
    assert api.rows(
        "SELECT blocked_cash, hold_price_ticks FROM orders WHERE order_id = %s", buy
    ) == [(15_504_000, 310_080)]
    commands = {c.order_id: c for c in api.commands()}
    assert (commands[buy].market, commands[buy].price, commands[buy].tif) == (
        False,
        310_080,
        Tif.IOC,
    )
    # 14,000.00 * 0.95 = 13,300.00, a stop-limit IOC once triggered
    assert (commands[sell].market, commands[sell].price, commands[sell].stop) == (
        False,
        266_000,
        True,
    )
    assert commands[sell].tif is Tif.IOC


REFUSED = [  # (body, code): each refused with 422, nothing stored
    ({"marketProtection": "0"}, "INVALID_PROTECTION"),
    ({"marketProtection": "-1"}, "INVALID_PROTECTION"),
    ({"marketProtection": "20.01"}, "INVALID_PROTECTION"),
    ({"marketProtection": "NaN"}, "INVALID_PROTECTION"),
    ({"marketProtection": "five"}, "INVALID_REQUEST"),
    ({"type": "LIMIT", "price": "15000", "marketProtection": "5"}, "PROTECTION_NOT_ALLOWED"),
    # a sell stop-market waits as a stop-limit IOC at its edge, which ends with the day
    (
        {"side": "SELL", "type": "STOP", "triggerPrice": "14000", "timeInForce": "GTC"},
        "INVALID_TIF",
    ),
]


def test_bad_protections_are_refused_and_nothing_is_stored(database):
    async def scenario():
        async with Api(database) as api:
            answers = []
            for body, _ in REFUSED:
                user = "bob" if body.get("side") == "SELL" else "alice"
                answers.append(
                    await api.place(user=user, **{"type": "MARKET", "price": None} | body)
                )
            return api, answers

    api, answers = run(scenario)
    assert [(r.status_code, r.json()["error"]["code"]) for r in answers] == [
        (422, code) for _, code in REFUSED
    ]
    assert api.rows("SELECT count(*) FROM orders") == [(0,)]
