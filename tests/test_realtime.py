"""Step 5 end to end on the real Postgres, Redis and Kafka: orders over HTTP (the OMS
in-process), an engine daemon, settlement and the projector (threads), two WebSocket
gateway instances (uvicorn subprocesses) with real WebSocket clients, and the query
service (in-process) reading what the fills left behind."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
from oms_support import auth
from test_platform import INSTRUMENTS, platform
from ws_support import WAIT, open_socket, receive

from brokercore.config import ServiceSettings
from brokercore.projector import run_projector
from services.query.app import create_app as create_query_app

ROUNDS = 12


def test_fills_reach_their_owners_sockets_on_either_gateway_then_the_read_side(
        database, tmp_path, gateways):
    """alice on gateway A, bob on B, carol (who trades nothing) on A and B: each fill
    reaches its owner's socket as ORDER_UPDATEs ending FILLED, nothing reaches another
    user's socket, and once the updates are in, the query service answers the fills,
    positions and cash (settlement) they describe. The delay from the engine's event
    message (its Kafka timestamp) to the socket is printed, not asserted."""
    with platform(database, tmp_path) as api:
        prefix = api.settings.redis_prefix
        stop = threading.Event()
        projector = threading.Thread(target=run_projector, args=(
            api.kafka.bootstrap, api.kafka.events_topic, database, INSTRUMENTS,
            ServiceSettings().redis_url, prefix), kwargs={"stop_event": stop,
                                                          "say": lambda line: None},
            daemon=True)
        projector.start()
        a, b = gateways(2, redis_prefix=prefix)

        async def scenario():
            async with api:
                alice, _ = await open_socket(a, "alice")
                bob, _ = await open_socket(b, "bob")
                carols = [(await open_socket(g, "carol"))[0] for g in (a, b)]
                buys, sells = [], []
                readers = asyncio.gather(until_filled(alice, buys), until_filled(bob, sells))
                for _ in range(ROUNDS):
                    buy = await api.place(quantity=2, price="15000.00", timeInForce="DAY")
                    sell = await api.place(user="bob", side="SELL", quantity=2,
                                           price="15000.00", timeInForce="DAY")
                    buys.append(buy.json()["orderId"])
                    sells.append(sell.json()["orderId"])
                alice_frames, bob_frames = await readers
                carol_frames = []
                for ws in carols:           # PONG answers after anything queued before it
                    await ws.send('{"op":"ping"}')
                    while (frame := await receive(ws))["type"] != "PONG":
                        carol_frames.append(frame)
                for ws in (alice, bob, *carols):
                    await ws.close()
                return (buys, sells, alice_frames, bob_frames, carol_frames,
                        await read_side(api))

        buys, sells, alice_frames, bob_frames, carol_frames, (orders, portfolio) = asyncio.run(
            asyncio.wait_for(scenario(), 120))
        stop.set()
        projector.join(30)

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
    assert not [f for f in carol_frames if f["type"] == "ORDER_UPDATE"]

    assert {o["orderId"]: (o["status"], o["filledQty"]) for o in orders} == {
        i: ("FILLED", 2) for i in buys}
    assert portfolio["positions"] == [{
        "symbol": "RELIANCE", "quantity": 2 * ROUNDS, "avgPrice": "15000.00",
        "currentPrice": "15000.00", "pnl": "0.00"}]
    assert portfolio["blockedCash"] == "0.00"
    assert portfolio["cash"] == f"{1_000_000 - 2 * ROUNDS * 15_000:.2f}"

    delays = np.array([received - f["eventTimeMs"] for received, f in alice_frames + bob_frames
                       if f["type"] == "ORDER_UPDATE" and f["status"] == "FILLED"])
    print(f"\nevent message -> WebSocket, {len(delays)} fills over 2 gateways: p50 "
          f"{np.percentile(delays, 50):.1f} ms, p99 {np.percentile(delays, 99):.1f} ms, "
          f"max {delays.max():.1f} ms")


async def until_filled(ws, orders: list[int]) -> list[tuple[float, dict]]:
    """Frames (with their receipt time in epoch ms) until ROUNDS orders are FILLED; the
    ids are in ``orders`` by then (placed while this reads)."""
    frames, filled = [], set()
    while len(filled) < ROUNDS:
        frame = await receive(ws)
        frames.append((time.time() * 1000, frame))
        if frame["type"] == "ORDER_UPDATE" and frame["status"] == "FILLED":
            filled.add(frame["orderId"])
    assert filled == set(orders)
    return frames


async def read_side(api) -> tuple[list[dict], dict]:
    """alice's orders and portfolio from the query service, once settlement has moved
    her cash (the projector's updates were in when her socket got them)."""
    settings = ServiceSettings(database_url=api.database, redis_prefix=api.settings.redis_prefix,
                               jwt_hs256_secret=api.settings.jwt_hs256_secret)
    app = create_query_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://query", headers=auth("alice")) as client:
            orders = (await client.get("/api/v1/orders")).json()["orders"]
            deadline = time.monotonic() + WAIT
            while (portfolio := (await client.get("/api/v1/portfolio")).json())[
                    "blockedCash"] != "0.00" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    return orders, portfolio
