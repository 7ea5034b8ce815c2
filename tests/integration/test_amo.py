"""After-market orders (issue 16, migration 0015): an order placed with ``amo: true``
while its market is closed is checked as at its next session's start (the pre-open),
held, stored AMO_PENDING and not sent; when the engine has started that pre-open (its
PRE_OPENED, as the projector keeps it in read_model.phases) the OMS sends the waiting
orders of the symbol once, in the order placed; a cancel while it waits ends it at
once. Through the real OMS, Postgres, Kafka, the engine daemon and settlement, and
on a compressed day the session scheduler (killed -9 at the pre-open) and projector."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from brokercore.broker.market import CompressedSession
from brokercore.consumers.projector import run_projector
from brokercore.consumers.reconcile import check_invariants
from brokercore.entry.requests import CancelRequested, CancelsRequested
from brokercore.kafka.messages import CancelOrder, CloseSession, NewOrder, PreOpen, Uncross
from brokercore.services.reconciler import market_sessions
from http_support import Services
from kafka_support import OrderProducer
from oms_support import OPEN_MARKET, SUNDAY, Api, change, order, refusal, run
from platform_support import INSTRUMENTS, money, platform
from processes import LoggedProcess
from shared_servers import REDIS_URL

AMO = {"amo": True, "time_in_force": "DAY"}
ORDER = (
    "SELECT status, trade_date::text, blocked_cash, blocked_shares, "
    "(SELECT count(*) FROM amo_orders a WHERE a.order_id = o.order_id), "
    "(SELECT count(*) FROM outbox b WHERE b.order_id = o.order_id) "
    "FROM orders o WHERE order_id = %s"
)


def test_amos_are_sent_once_at_the_pre_open_and_the_uncross_fills_them(database, tmp_path):
    """Three AMOs on a Sunday, checked for Monday's pre-open (where a market buy is
    refused) and held: a buy (a retry with its key gets it back), a sell that crosses
    it, and a buy cancelled while waiting (its hold released at once). Nothing is sent
    while the book is closed; at its pre-open the two left rest in the book (OPEN) and
    the uncross fills them at one price; each is sent exactly once, in the order
    placed, the cancelled one never; nothing is created or lost. In session, amo is
    refused (AMO_MARKET_OPEN)."""
    with platform(database, tmp_path) as api:
        before = money(api)
        operator = OrderProducer(api.kafka)
        statuses = "SELECT order_id, status, filled_quantity FROM orders ORDER BY order_id"

        async def day():
            async with api:
                alice, carol = api.trader("alice"), api.trader("carol")
                operator.send([CloseSession("RELIANCE", ts=1)])
                api.now = SUNDAY
                keyed = order(quantity=10, price="15010.00", idempotency_key="a", **AMO)
                placed = await alice.place(keyed)
                again = await alice.place(keyed)
                assert again == placed and placed.status == "AMO_PENDING"
                buy = placed.order_id
                market = await refusal(alice.place(order(type="MARKET", price=None, amo=True)))
                assert market[1] == "NOT_IN_PRE_OPEN"
                sell = order(side="SELL", quantity=10, price="14990.00", **AMO)
                sell = (await api.trader("bob").place(sell)).order_id
                gone = (await carol.place(order(quantity=5, **AMO))).order_id
                held = api.rows(ORDER, gone)
                cancel = await carol.cancel(gone)
                assert (carol.statuses[-1], cancel.status) == (202, "CANCELLED")
                assert api.rows(ORDER, gone) == [("CANCELLED", "2026-11-30", 0, 0, 0, 0)]
                assert held == [("AMO_PENDING", "2026-11-30", 5 * 1_500_000, 0, 1, 0)]
                await asyncio.sleep(2)  # two rounds of the release job: nothing due yet
                waiting = api.rows(statuses)
                api.now = SUNDAY.replace(day=30)  # Monday 11:30 in Mumbai: in session
                in_session = await refusal(alice.place(order(quantity=1, **AMO)))
                assert in_session[1] == "AMO_MARKET_OPEN"
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


DAY = {"--pre-open": 4, "--uncross-window": 1, "--trading": 1, "--closed": 3}  # seconds


def test_a_scheduler_killed_at_the_pre_open_leaves_each_amo_sent_once(database, tmp_path):
    """A compressed day (the scheduler, the projector, the OMS on the same calendar):
    two crossing AMOs placed while closed wait; the scheduler is killed (-9) as soon as
    it has published the pre-open and restarted at once; the AMOs are sent once each,
    the pre-open once, and they trade."""
    with platform(database, tmp_path) as api:
        stop = threading.Event()
        projector = threading.Thread(
            target=run_projector,
            args=(api.kafka.bootstrap, api.kafka.events_topic, database, INSTRUMENTS),
            kwargs={
                "redis_url": REDIS_URL,
                "redis_prefix": api.kafka.topic_prefix,
                "stop_event": stop,
            },
            daemon=True,
        )
        env = os.environ | {
            "BROKERCORE_KAFKA_BOOTSTRAP": api.kafka.bootstrap,
            "BROKERCORE_TOPIC_PREFIX": api.kafka.topic_prefix,
            "BROKERCORE_SHARDS": str(api.kafka.shards),
            "BROKERCORE_INSTRUMENTS": INSTRUMENTS,
            "BROKERCORE_DAY": "compressed",
            "BROKERCORE_SCHEDULER_SECRET": "test-amo",
        }
        flags = [str(part) for item in DAY.items() for part in item]
        schedulers = [LoggedProcess(["service", "scheduler", *flags], tmp_path / "s1.log", env)]
        seconds = list(DAY.values())
        session = CompressedSession(
            "Asia/Kolkata",
            pre_open_seconds=seconds[0],
            trading_seconds=seconds[2],
            closed_seconds=seconds[3],
        )
        try:
            projector.start()

            async def day():
                async with api:
                    entry = api.app.state.oms.entry
                    entry.market = {
                        s: dataclasses.replace(i, session=session) for s, i in entry.market.items()
                    }
                    entry.clock = lambda: datetime.now(UTC)
                    # into the next closed spell, with a second or more of it left
                    while True:
                        into = time.time() % session.length
                        if seconds[0] + seconds[2] <= into < session.length - 1.5:
                            break
                        await asyncio.sleep(0.2)
                    pre_opens = schedulers[0].text().count("RELIANCE PRE_OPEN")
                    buy = await api.trader("alice").place(
                        order(quantity=10, price="15010.00", **AMO)
                    )
                    sell = await api.trader("bob").place(
                        order(side="SELL", quantity=10, price="14990.00", **AMO)
                    )
                    ids = buy.order_id, sell.order_id
                    assert [buy.status, sell.status] == ["AMO_PENDING"] * 2
                    await asyncio.to_thread(
                        schedulers[0].wait_for, "RELIANCE PRE_OPEN", 30, pre_opens + 1
                    )
                    schedulers[0].kill()
                    schedulers.append(
                        LoggedProcess(["service", "scheduler", *flags], tmp_path / "s2.log", env)
                    )
                    await asyncio.to_thread(
                        api.wait_rows,
                        "SELECT status FROM orders WHERE order_id IN (%s, %s)",
                        [("FILLED",), ("FILLED",)],
                        *ids,
                    )
                    return ids

            ids = run(day)
            schedulers[1].wait_for("RELIANCE UNCROSS")
        finally:
            stop.set()
            for scheduler in schedulers:
                scheduler.close()
            projector.join(30)
        commands = api.commands()
        sent = [c.order_id for c in commands if isinstance(c, NewOrder)]
        assert sorted(sent) == sorted(ids)  # once each
        pre_opens = Counter(c.ts for c in commands if isinstance(c, PreOpen))
        assert pre_opens and max(pre_opens.values()) == 1  # each day's once


BLOCKED_SHARES = (
    "SELECT blocked_quantity FROM positions p JOIN accounts a USING (account_id) "
    "WHERE a.user_id = 'bob' AND p.symbol = 'RELIANCE'"
)


def test_cancel_all_ends_the_waiting_amos_at_once(database):
    """DELETE /api/v1/orders: bob's sell in session is asked of the engine
    (CANCEL_REQUESTED), his two waiting AMO sells (one modified from 2 to 4 shares: its
    shares held at once) end CANCELLED at once, their shares released, nothing sent for
    them; the books stay consistent."""

    async def scenario():
        async with Api(database) as api:
            bob = api.trader("bob")
            live = (await bob.place(order(side="SELL", quantity=1))).order_id
            api.now = SUNDAY
            amos = [
                (await bob.place(order(side="SELL", quantity=n, **AMO))).order_id for n in (2, 3)
            ]
            await bob.modify(amos[0], change(idempotency_key="s", quantity=4))
            held = [api.rows(ORDER, amo) for amo in amos] + api.rows(BLOCKED_SHARES)
            answer = await bob.cancel_all()
            status = bob.statuses[-1]
            again = await bob.cancel_all()
            return api, live, amos, held, (status, answer), again

    api, live, amos, held, answer, again = run(scenario)
    assert held == [
        [("AMO_PENDING", "2026-11-30", 0, 4, 1, 0)],
        [("AMO_PENDING", "2026-11-30", 0, 3, 1, 0)],
        (1 + 4 + 3,),
    ]
    assert answer == (
        202,
        CancelsRequested(
            [
                CancelRequested(live, "CANCEL_REQUESTED"),
                *(CancelRequested(amo, "CANCELLED") for amo in amos),
            ],
            more=False,
        ),
    )
    assert again == CancelsRequested([], more=False)
    for amo in amos:
        assert api.rows(ORDER, amo) == [("CANCELLED", "2026-11-30", 0, 0, 0, 0)]
    assert api.rows(BLOCKED_SHARES) == [(1,)], "only the live order's share is still held"
    sent = [c.order_id for c in api.commands() if isinstance(c, CancelOrder)]
    assert sent == [live]
    with psycopg.connect(database) as conn:
        # at the live order's time: without an engine it is PENDING still
        assert check_invariants(conn, market_sessions(api.settings), OPEN_MARKET) == []


def test_a_just_sent_amo_is_not_stuck_pending(database):
    """The reconciler's STUCK_PENDING counts from when an order became PENDING: an AMO
    placed on Sunday and sent at Monday's pre-open (no engine here to accept it) is
    not a finding then, only once it has been PENDING too long since it was sent."""

    async def scenario():
        async with Api(database) as api:
            api.now = SUNDAY
            amo = (await api.trader("alice").place(order(quantity=1, **AMO))).order_id
            api.rows(
                "INSERT INTO read_model.phases VALUES ('RELIANCE', 'PRE_OPEN', 1, now()) "
                "RETURNING 1"
            )
            status = "SELECT status FROM orders WHERE order_id = %s"
            await asyncio.to_thread(api.wait_rows, status, [("PENDING",)], amo)
            return api, amo

    api, amo = run(scenario)
    (sent,) = api.rows("SELECT updated_at FROM orders WHERE order_id = %s", amo)[0]
    sessions = market_sessions(api.settings)
    with psycopg.connect(database) as conn:
        stuck = [f for f in check_invariants(conn, sessions, sent) if f.kind == "STUCK_PENDING"]
        assert stuck == []
        later = check_invariants(conn, sessions, sent + timedelta(minutes=3))
    assert [(f.kind, f.order_id) for f in later if f.kind == "STUCK_PENDING"] == [
        ("STUCK_PENDING", amo)
    ]


def test_a_waiting_amo_is_modified_at_once_and_sent_with_its_new_terms(database):
    """A waiting AMO buy modified (price and quantity) changes at once: its hold moves to
    exactly what a new AMO of the new terms holds (the account's too), a retry with the
    key changes nothing more, terms the account cannot pay are refused with nothing
    changed, the modify is counted, the books stay consistent; at the pre-open the
    engine gets ONE NewOrder, with the new terms."""
    terms = "SELECT price, quantity, modifications, blocked_cash FROM orders WHERE order_id = %s"
    blocked = "SELECT blocked_cash FROM accounts WHERE user_id = 'alice'"

    async def scenario():
        async with Api(database) as api:
            alice = api.trader("alice")
            api.now = SUNDAY
            amo = (await alice.place(order(quantity=10, price="15010.00", **AMO))).order_id
            before = api.rows(terms, amo)
            new_terms = change(idempotency_key="m1", price="15020.00", quantity=6)
            changed = await alice.modify(amo, new_terms)
            again = await alice.modify(amo, new_terms)
            statuses = alice.statuses[-2:]
            after = api.rows(terms, amo) + api.rows(blocked)
            too_much = await refusal(alice.modify(amo, change(idempotency_key="m2", quantity=100)))
            refused = api.rows(terms, amo) + api.rows(blocked)
            like = (await alice.place(order(quantity=6, price="15020.00", **AMO))).order_id
            like_hold = api.rows("SELECT blocked_cash FROM orders WHERE order_id = %s", like)
            await alice.cancel(like)
            with psycopg.connect(database) as conn:
                findings = check_invariants(conn, market_sessions(api.settings), api.now)
            api.rows(
                "INSERT INTO read_model.phases VALUES ('RELIANCE', 'PRE_OPEN', 1, now()) "
                "RETURNING 1"
            )
            status = "SELECT status FROM orders WHERE order_id = %s"
            await asyncio.to_thread(api.wait_rows, status, [("PENDING",)], amo)
            answers = changed, again, statuses, too_much
            return api, amo, like_hold, before, answers, after, refused, findings

    api, amo, like_hold, before, answers, after, refused, findings = run(scenario)
    changed, again, statuses, too_much = answers
    assert before[0][:3] == (1_501_000, 10, 0)
    assert changed.status == "AMO_PENDING" and again == changed and statuses == [202, 202]
    (paise, quantity, modifications, hold), (account_blocked,) = after
    assert (paise, quantity, modifications) == (1_502_000, 6, 1)
    assert like_hold == [(hold,)] and account_blocked == hold < before[0][3]
    assert too_much[1] == "INSUFFICIENT_FUNDS" and refused == after
    assert findings == []
    ticks = api.app.state.oms.entry.market["RELIANCE"].to_ticks(Decimal("15020.00"))
    sent = [(c.order_id, c.qty, c.price) for c in api.commands() if isinstance(c, NewOrder)]
    assert sent == [(amo, 6, ticks)]


def test_the_user_sees_a_waiting_amo_and_one_cancelled_while_waiting(database):
    """Through the query service: a waiting AMO is listed AMO_PENDING (the projector has
    no event of it yet), with its terms after a modify; cancelled while waiting (never
    sent, so never projected) it stays listed, CANCELLED, once."""

    async def scenario():
        async with Services(database) as services:
            services.apps["oms"].state.oms.entry.clock = lambda: SUNDAY
            alice = services.trader("alice")
            amo = (await alice.place(order(quantity=3, idempotency_key="p", **AMO))).order_id
            await alice.modify(amo, change(quantity=2, idempotency_key="m"))
            waiting = await alice.orders()
            await alice.cancel(amo)
            return amo, waiting, await alice.orders(), await alice.order(amo)

    amo, waiting, ended, one = run(scenario)
    shown = [(o.order_id, o.status, o.quantity, o.price) for o in waiting.orders]
    assert shown == [(amo, "AMO_PENDING", 2, "15000.00")]
    shown = [(o.order_id, o.status, o.quantity) for o in ended.orders]
    assert shown == [(amo, "CANCELLED", 2)] and ended.pagination.total == 1
    assert (one.order_id, one.status, one.fills) == (amo, "CANCELLED", [])
