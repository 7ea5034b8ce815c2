"""After-market orders (issue 16, migration 0015): an order placed with ``amo: true``
while its market is closed is checked as at its next session's start (the pre-open),
held, stored AMO_PENDING and not sent; when the engine has started that pre-open (its
PRE_OPENED, as the projector keeps it in read_model.phases) the OMS sends the waiting
orders of the symbol once, in the order placed; a cancel while it waits ends it at
once. Through the real OMS, Postgres, Kafka, the engine daemon and settlement."""

from __future__ import annotations

import asyncio

from brokercore.kafka.messages import CancelOrder, CloseSession, NewOrder, PreOpen, Uncross
from kafka_support import OrderProducer
from oms_support import SUNDAY, Api, run
from platform_support import money, platform

AMO = {"amo": True, "timeInForce": "DAY"}
ORDER = (
    "SELECT status, trade_date::text, blocked_cash, blocked_shares, "
    "(SELECT count(*) FROM amo_orders a WHERE a.order_id = o.order_id), "
    "(SELECT count(*) FROM outbox b WHERE b.order_id = o.order_id) "
    "FROM orders o WHERE order_id = %s"
)


def test_an_amo_is_held_not_sent_and_a_cancel_releases_it_at_once(database):
    """On a Sunday: a buy AMO is checked for Monday's pre-open (a market buy is refused
    as the pre-open refuses it), held and stored, with nothing in the outbox; a retry
    with its key gets it back; its cancel ends it with its hold released and nothing
    sent. In session, amo is refused (AMO_MARKET_OPEN)."""

    async def scenario():
        async with Api(database) as api:
            api.now = SUNDAY
            buy = await api.place(quantity=10, idempotencyKey="amo-1", **AMO)
            again = await api.place(quantity=10, idempotencyKey="amo-1", **AMO)
            market = await api.place(type="MARKET", price=None, amo=True)
            held = api.rows(ORDER, buy.json()["orderId"])
            cancel = await api.cancel(buy.json()["orderId"])
            api.now = SUNDAY.replace(day=30)  # Monday 11:30 in Mumbai: in session
            open_ = await api.place(quantity=10, **AMO)
            return api, buy, again, market, held, cancel, open_

    api, buy, again, market, held, cancel, open_ = run(scenario)
    assert (buy.status_code, buy.json()["status"]) == (202, "AMO_PENDING"), buy.text
    assert again.json() == buy.json()
    assert (market.status_code, market.json()["error"]["code"]) == (422, "NOT_IN_PRE_OPEN")
    assert held == [("AMO_PENDING", "2026-11-30", 10 * 1_500_000, 0, 1, 0)]
    assert (cancel.status_code, cancel.json()["status"]) == (202, "CANCELLED"), cancel.text
    assert api.rows(ORDER, buy.json()["orderId"]) == [("CANCELLED", "2026-11-30", 0, 0, 0, 0)]
    assert api.rows("SELECT sum(blocked_cash) FROM accounts") == [(0,)]
    assert api.commands() == []  # nothing ever sent
    assert (open_.status_code, open_.json()["error"]["code"]) == (422, "AMO_MARKET_OPEN")


def test_amos_are_sent_once_at_the_pre_open_and_the_uncross_fills_them(database, tmp_path):
    """Three AMOs on a Sunday (a buy, a sell that crosses it, and a buy cancelled while
    waiting): nothing is sent while the book is closed; at its pre-open the two left
    rest in the book (OPEN) and the uncross fills them at one price; each is sent
    exactly once, in the order placed, the cancelled one never; nothing is created or
    lost."""
    with platform(database, tmp_path) as api:
        before = money(api)
        operator = OrderProducer(api.kafka)
        statuses = "SELECT order_id, status, filled_quantity FROM orders ORDER BY order_id"

        async def day():
            async with api:
                operator.send([CloseSession("RELIANCE", ts=1)])
                api.now = SUNDAY
                buy = (await api.place(quantity=10, price="15010.00", **AMO)).json()["orderId"]
                sell = await api.place(
                    user="bob", side="SELL", quantity=10, price="14990.00", **AMO
                )
                sell = sell.json()["orderId"]
                gone = (await api.place(user="carol", quantity=5, **AMO)).json()["orderId"]
                await api.cancel(gone, user="carol")
                await asyncio.sleep(2)  # two rounds of the release job: nothing due yet
                waiting = api.rows(statuses)
                # the pre-open starts: the engine's PRE_OPEN, then the projector's row
                operator.send([PreOpen("RELIANCE", ts=2)])
                api.rows(
                    "INSERT INTO read_model.phases VALUES ('RELIANCE', 'PRE_OPEN', 1, now()) "
                    "RETURNING 1"
                )
                await asyncio.to_thread(
                    api.wait_rows,
                    statuses,
                    [(buy, "OPEN", 0), (sell, "OPEN", 0), (gone, "CANCELLED", 0)],
                )
                operator.send([Uncross("RELIANCE", ts=3)])
                await asyncio.to_thread(
                    api.wait_rows,
                    statuses,
                    [(buy, "FILLED", 10), (sell, "FILLED", 10), (gone, "CANCELLED", 0)],
                )
                return waiting, buy, sell, gone

        waiting, buy, sell, gone = run(day)
        assert waiting == [
            (buy, "AMO_PENDING", 0),
            (sell, "AMO_PENDING", 0),
            (gone, "CANCELLED", 0),
        ]
        sent = [c.order_id for c in api.commands() if isinstance(c, NewOrder | CancelOrder)]
        assert sent == [buy, sell]  # once each, in the order placed
        prices = api.rows("SELECT DISTINCT price FROM fills WHERE order_id IN (%s, %s)", buy, sell)
        assert len(prices) == 1  # the opening price
        cash, blocked, fees, shares, blocked_shares = money(api)
        assert (blocked, blocked_shares) == (0, 0)  # every hold released
        assert (cash + fees, shares) == (before[0] + before[2], before[3])
