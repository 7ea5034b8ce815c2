"""Step 5 end to end on the real Postgres, Redis and Kafka: orders over HTTP (the OMS
in-process), an engine daemon, settlement and the projector (threads), two WebSocket
gateway instances (uvicorn subprocesses) with real WebSocket clients, and the query
service (in-process) reading what the fills left behind."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import msgspec
import numpy as np
import psycopg
import redis
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from brokercore.consumers.projector import ProjectorConsumer, run_projector
from brokercore.engine.records import Side, Tif
from brokercore.notify.consumer import run_notifier
from brokercore.notify.dead_letters import DeadLetters
from brokercore.notify.router import Notifier
from brokercore.read.answers import Order, Portfolio
from brokercore.services.query import create_app as create_query_app
from oms_support import Trader
from platform_support import INSTRUMENTS, platform
from shared_servers import KAFKA_BOOTSTRAP, REDIS_URL, service_settings
from venue_support import MARKET, MID, Venue
from ws_support import WAIT, open_socket, receive

ROUNDS = 12


def test_fills_reach_their_owners_sockets_on_either_gateway_then_the_read_side(
    database, tmp_path, gateways
):
    """alice on gateway A, bob on B, carol (who trades nothing) on A and B: each fill
    reaches its owner's socket as ORDER_UPDATEs ending FILLED, then (the notifier runs
    too) its FILL notification, nothing reaches another user's socket, and once the
    updates are in, the query service answers the fills, positions and cash
    (settlement) they describe. The delay from the engine's event message (its Kafka
    timestamp) to the socket is printed, not asserted."""
    with platform(database, tmp_path) as api:
        prefix = api.settings.redis_prefix
        stop = threading.Event()
        projector = threading.Thread(
            target=run_projector,
            args=(
                api.kafka.bootstrap,
                api.kafka.events_topic,
                database,
                INSTRUMENTS,
                REDIS_URL,
                prefix,
            ),
            kwargs={"stop_event": stop, "say": lambda line: None},
            daemon=True,
        )
        projector.start()
        notifier = threading.Thread(
            target=lambda: asyncio.run(
                run_notifier(api.settings, api.kafka, stop, from_beginning=True)
            ),
            daemon=True,
        )
        notifier.start()
        # these clients answer no PING: no heartbeat timeout while the notifier joins
        a, b = gateways(2, redis_prefix=prefix, ws_heartbeat=4 * WAIT)

        async def scenario():
            async with api:
                alice, _ = await open_socket(a, "alice")
                bob, _ = await open_socket(b, "bob")
                carols = [(await open_socket(g, "carol"))[0] for g in (a, b)]
                buys, sells = [], []
                readers = asyncio.gather(until_filled(alice, buys), until_filled(bob, sells))
                for _ in range(ROUNDS):
                    buy = await api.placed(quantity=2, price="15000.00", time_in_force="DAY")
                    sell = await api.placed(
                        "bob", side="SELL", quantity=2, price="15000.00", time_in_force="DAY"
                    )
                    buys.append(buy.order_id)
                    sells.append(sell.order_id)
                alice_frames, bob_frames = await readers
                carol_frames = []
                for ws in carols:  # PONG answers after anything queued before it
                    await ws.send('{"op":"ping"}')
                    while (frame := await receive(ws))["type"] != "PONG":
                        carol_frames.append(frame)
                for ws in (alice, bob, *carols):
                    await ws.close()
                return (buys, sells, alice_frames, bob_frames, carol_frames, await read_side(api))

        buys, sells, alice_frames, bob_frames, carol_frames, (orders, portfolio) = asyncio.run(
            asyncio.wait_for(scenario(), 120)
        )
        stop.set()
        projector.join(30)
        notifier.join(30)

    for frames, mine, theirs in ((alice_frames, buys, sells), (bob_frames, sells, buys)):
        updates = [f for _, f in frames if f["type"] == "ORDER_UPDATE"]
        assert {u["orderId"] for u in updates} == set(mine)
        assert not {u["orderId"] for u in updates} & set(theirs)
        seqs = [u["seq"] for u in updates]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for order_id in mine:
            statuses = [u["status"] for u in updates if u["orderId"] == order_id]
            assert statuses[-1] == "FILLED" and set(statuses) <= {"OPEN", "FILLED"}
            filled = [u for u in updates if u["orderId"] == order_id][-1]
            assert (filled["filledQty"], filled["avgPrice"]) == (2, "15000.00")
            about = [
                (f["type"], f.get("status", f.get("kind")))
                for _, f in frames
                if f.get("orderId") == order_id
            ]
            assert about[-2:] == [("ORDER_UPDATE", "FILLED"), ("NOTIFICATION", "FILL")], about
    assert not [f for f in carol_frames if f["type"] == "ORDER_UPDATE"]

    assert {o.order_id: (o.status, o.filled_qty) for o in orders} == {
        i: ("FILLED", 2) for i in buys
    }
    assert msgspec.to_builtins(portfolio.positions) == [
        {
            "symbol": "RELIANCE",
            "quantity": 2 * ROUNDS,
            "avgPrice": "15000.00",
            "currentPrice": "15000.00",
            "pnl": "0.00",
            "realisedPnl": "0.00",
            "dayPnl": "0.00",
        }
    ]
    assert portfolio.blocked_cash == "0.00"
    assert portfolio.cash == f"{1_000_000 - 2 * ROUNDS * 15_000:.2f}"

    delays = np.array(
        [
            received - f["eventTimeMs"]
            for received, f in alice_frames + bob_frames
            if f["type"] == "ORDER_UPDATE" and f["status"] == "FILLED"
        ]
    )
    print(
        f"\nevent message -> WebSocket, {len(delays)} fills over 2 gateways: p50 "
        f"{np.percentile(delays, 50):.1f} ms, p99 {np.percentile(delays, 99):.1f} ms, "
        f"max {delays.max():.1f} ms"
    )


async def until_filled(ws, orders: list[int]) -> list[tuple[float, dict]]:
    """Frames (with their receipt time in epoch ms) until ROUNDS orders are FILLED and
    told of; the ids are in ``orders`` by then (placed while this reads)."""
    frames, filled, told = [], set(), set()
    while len(filled) < ROUNDS or len(told) < ROUNDS:
        frame = await receive(ws)
        frames.append((time.time() * 1000, frame))
        if frame["type"] == "ORDER_UPDATE" and frame["status"] == "FILLED":
            filled.add(frame["orderId"])
        elif frame["type"] == "NOTIFICATION":
            told.add(frame["orderId"])
    assert filled == told == set(orders)
    return frames


async def read_side(api) -> tuple[list[Order], Portfolio]:
    """alice's orders and portfolio from the query service, once settlement has moved
    her cash (the projector's updates were in when her socket got them)."""
    settings = service_settings(api.database, api.settings.redis_prefix)
    app = create_query_app(settings)
    async with app.router.lifespan_context(app):
        async with Trader("alice", httpx.ASGITransport(app=app)) as alice:
            orders = (await alice.orders()).orders
            deadline = time.monotonic() + WAIT
            while (portfolio := await alice.portfolio()).blocked_cash != "0.00" and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
    return orders, portfolio


@contextlib.asynccontextmanager
async def in_app_notifier(database: str, prefix: str, projector_wait: float):
    """A Notifier of in-app notifications (no push provider) on the ``events`` topic."""
    pool = AsyncConnectionPool(database, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    client = Redis.from_url(REDIS_URL)
    dead = DeadLetters(KAFKA_BOOTSTRAP, "unused-dead-letters")
    try:
        yield Notifier(
            pool,
            client,
            prefix,
            MARKET,
            None,
            dead,
            events_topic="events",
            projector_wait=projector_wait,
        )
    finally:
        dead.close()
        await client.aclose()
        await pool.close()


def test_an_order_update_reaches_the_socket_before_the_notification_about_it(database, gateways):
    """The notifier, ahead of the projector, tells of alice's fill only once the
    projector has published the fill's ORDER_UPDATE: her socket (through Redis and a
    gateway) gets FILLED, then the FILL notification. With the projector down, a
    cancel's notification still goes out after the bounded wait, and the next batch
    does not wait again for a projector that has not moved; once it has, waits resume."""
    [gateway] = gateways()
    prefix = gateways.prefix

    async def scenario(conn, client):
        v = Venue(conn)
        ids = dict(conn.execute("SELECT user_id, account_id FROM accounts").fetchall())
        projector = ProjectorConsumer(MARKET, client, prefix)

        def project(start: int) -> None:
            projector.committed(projector.apply(conn, v.messages(start)))

        def rest_and_cancel() -> int:
            """alice's resting buy and its cancel: the index of their first message."""
            start = len(v.batches)
            v.cancel(v.place(ids["alice"], Side.BUY, 5, MID - 100, Tif.GTC), ids["alice"])
            return start

        def told(start: int) -> list:
            return [(m.partition, m.offset, m.batch) for m in v.messages(start)]

        async def frames(n: int) -> list[tuple[str, str]]:
            got = [await receive(alice) for _ in range(n)]
            return [(f["type"], f["status"] if "status" in f else f["kind"]) for f in got]

        async with in_app_notifier(database, prefix, WAIT) as notifier:
            alice, _ = await open_socket(gateway, "alice")
            v.place(ids["alice"], Side.BUY, 10, MID, Tif.GTC)
            v.place(ids["bob"], Side.SELL, 10, MID)
            telling = asyncio.create_task(notifier.handle(told(0)))
            await asyncio.sleep(0.2)  # the notifier is ahead of the projector
            await asyncio.to_thread(project, 0)
            await telling
            assert await frames(3) == [
                ("ORDER_UPDATE", "OPEN"),
                ("ORDER_UPDATE", "FILLED"),
                ("NOTIFICATION", "FILL"),
            ]

            notifier.projector_wait = 0.2  # the projector is down from here
            first = rest_and_cancel()
            await notifier.handle(told(first))
            notifier.projector_wait = 3600  # not waited for: it has not moved
            second = rest_and_cancel()
            await asyncio.wait_for(notifier.handle(told(second)), WAIT)
            assert await frames(2) == [("NOTIFICATION", "CANCELLED")] * 2
            assert notifier.overtaken == 2

            await asyncio.to_thread(project, first)  # back, and caught up
            assert await frames(4) == [("ORDER_UPDATE", "OPEN"), ("ORDER_UPDATE", "CANCELLED")] * 2
            third = rest_and_cancel()
            telling = asyncio.create_task(notifier.handle(told(third)))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(project, third)
            await asyncio.wait_for(telling, WAIT)
            assert await frames(3) == [
                ("ORDER_UPDATE", "OPEN"),
                ("ORDER_UPDATE", "CANCELLED"),
                ("NOTIFICATION", "CANCELLED"),
            ]
            assert notifier.overtaken == 2
            await alice.close()

    with (
        psycopg.connect(database, autocommit=True) as conn,
        redis.Redis.from_url(REDIS_URL) as client,
    ):
        asyncio.run(asyncio.wait_for(scenario(conn, client), 120))
