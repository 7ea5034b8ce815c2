"""The WebSocket gateway (services/ws) as real uvicorn processes on the real Redis and
Postgres, driven by real WebSocket clients (the ``websockets`` library)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import psycopg
import pytest
import redis
from psycopg.types.json import Jsonb
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from brokercore.consumers.projector import ProjectorConsumer
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.engine.records import Side, Tif
from brokercore.realtime.channels import (
    Notification,
    OrderUpdate,
    book_channel,
    encode_message,
    online_key,
    trades_channel,
    user_channel,
)
from brokercore.services.ws import REPLAY_LIMIT
from shared_servers import REDIS_URL
from trading_day_support import TradingVenue
from venue_support import MARKET, MID, Venue
from ws_support import WAIT, open_socket, receive, token


@pytest.fixture
def bus():
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 120))


async def receive_many(ws: ClientConnection, n: int) -> list[dict]:
    return [await receive(ws) for _ in range(n)]


async def closed(ws: ClientConnection) -> tuple[int, str, list[dict]]:
    """Reads until the server closes: (code, reason, the frames read before)."""
    frames = []
    try:
        while True:
            frames.append(await receive(ws))
    except ConnectionClosed as e:
        assert e.rcvd is not None, f"closed without a close frame: {e}"
        return e.rcvd.code, e.rcvd.reason, frames


async def until(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {WAIT} s")
        await asyncio.sleep(0.02)


def update(seq: int, user_order: int = 1, status: str = "OPEN") -> bytes:
    return encode_message(
        OrderUpdate(
            seq,
            user_order,
            "RELIANCE",
            "BUY",
            "LIMIT",
            status,
            10,
            0,
            None,
            "2847.00",
            None,
            "2026-11-25T06:00:00+00:00",
            1_795_000_000_000,
        )
    )


def notification(ident: str, body: str = "") -> bytes:
    return encode_message(
        Notification(ident, "FILL", "Order filled", body, "RELIANCE", "2026-11-25T06:00:00+00:00")
    )


def registered(bus: redis.Redis, prefix: str, user: str) -> set[str]:
    return {member.decode() for member in bus.zrange(online_key(prefix, user), 0, -1)}


# --- routing --------------------------------------------------------------------------------


def test_each_socket_gets_exactly_its_users_messages_on_any_instance(gateways, bus):
    """alice on A, bob and alice (twice) on B: every socket gets all of its user's
    messages in order and none of the other user's; the online registry lists the
    instances a user is on; an instance leaves it with the user's last socket there."""
    a, b = gateways(2)
    prefix = gateways.prefix

    async def scenario():
        alice_a, welcome_a = await open_socket(a, "alice")
        bob_b, welcome_b = await open_socket(b, "bob", in_query=True)
        alice_b, _ = await open_socket(b, "alice")
        alice_b2, _ = await open_socket(b, "alice", in_query=True)
        instance_a, instance_b = welcome_a["instance"], welcome_b["instance"]
        assert instance_a != instance_b
        assert registered(bus, prefix, "alice") == {instance_a, instance_b}
        assert registered(bus, prefix, "bob") == {instance_b}
        assert bus.zscore(online_key(prefix, "alice"), instance_a) > time.time()

        for i in range(1, 11):
            assert bus.publish(user_channel(prefix, "alice"), update(i)) == 2  # A and B
            assert bus.publish(user_channel(prefix, "bob"), update(100 + i)) == 1
        for user in ("alice", "bob"):
            bus.publish(user_channel(prefix, user), notification(f"end-{user}"))
        for ws in (alice_a, alice_b, alice_b2):
            frames = await receive_many(ws, 11)
            assert [f.get("seq") for f in frames] == [*range(1, 11), None]
            assert frames[-1]["id"] == "end-alice"  # nothing of bob's before it
        frames = await receive_many(bob_b, 11)
        assert [f.get("seq") for f in frames] == [*range(101, 111), None]
        assert frames[-1]["id"] == "end-bob"

        await alice_b2.close()  # alice keeps a socket on B: B stays
        await alice_a.close()  # her last on A: A goes
        await until(lambda: registered(bus, prefix, "alice") == {instance_b}, "A unregistered")
        assert bus.publish(user_channel(prefix, "alice"), update(11)) == 1
        assert (await receive(alice_b))["seq"] == 11
        await alice_b.close()
        await until(lambda: not registered(bus, prefix, "alice"), "alice offline")
        assert registered(bus, prefix, "bob") == {instance_b}
        await bob_b.close()
        await until(lambda: not bus.exists(online_key(prefix, "bob")), "bob offline")

    run(scenario)


# --- authentication -------------------------------------------------------------------------


def test_sockets_without_a_valid_token_are_closed_with_4401(gateways):
    """The gateway accepts, sends an ERROR frame with the reason's code, and closes
    with 4401 (or 4400 for a bad since), so that a browser can tell why."""
    [server] = gateways()
    foreign = JwtConfig("brokercore-dev", "brokercore", "another-secret-of-at-least-32-bytes!")
    cases = [
        ({}, {}, 4401, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer " + mint_token("alice", foreign)}, {}, 4401, "INVALID_TOKEN"),
        ({}, {"token": mint_token("alice", foreign)}, 4401, "INVALID_TOKEN"),
        (
            {"Authorization": "Bearer " + token("alice", now=time.time() - 7200)},
            {},
            4401,
            "TOKEN_EXPIRED",
        ),
        ({}, {"token": token("alice", ttl=-60)}, 4401, "TOKEN_EXPIRED"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, {}, 4401, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer " + token("alice")}, {"since": "-1"}, 4400, "INVALID_REQUEST"),
    ]

    async def scenario():
        for headers, params, code, error in cases:
            ws = await connect(server.url(**params), additional_headers=headers, ping_interval=None)
            got_code, reason, frames = await closed(ws)
            assert (got_code, frames[0]["type"], frames[0]["code"]) == (code, "ERROR", error)
            assert reason == f"{error}: {frames[0]['message']}"

    run(scenario)


# --- heartbeats -----------------------------------------------------------------------------


def test_a_silent_client_is_closed_with_4408_and_an_answering_one_stays(gateways):
    [server] = gateways(ws_heartbeat=1.0)

    async def scenario():
        silent, welcome = await open_socket(server, "alice")
        assert welcome["heartbeat"] == 1.0
        answering, _ = await open_socket(server, "bob")

        async def answer(pings: int) -> None:
            for _ in range(pings):
                frame = await receive(answering)
                assert frame["type"] == "PING" and frame["ts"] > 1_700_000_000_000
                await answering.send('{"op": "pong"}')

        # Four PINGs answered: twice as long as a silent socket lives, and still open.
        (code, reason, frames), _ = await asyncio.gather(closed(silent), answer(4))
        assert (code, reason) == (4408, "heartbeat timeout")
        assert {f["type"] for f in frames} == {"PING"}
        await answering.send('{"op": "ping"}')
        while (frame := await receive(answering))["type"] == "PING":
            pass
        assert frame == {"type": "PONG"}
        await answering.close()

    run(scenario)


# --- slow consumers -------------------------------------------------------------------------


def test_a_client_that_does_not_read_is_closed_as_a_slow_consumer(gateways, bus):
    """carol never reads while ~1 KB notifications pour in: once her queue and the
    socket buffers are full she is dropped with 4429 and the reason; what she got
    before is complete and in order. bob, on the same instance, is served on."""
    [server] = gateways(ws_queue_size=20)
    prefix = gateways.prefix
    carol_channel = user_channel(prefix, "carol")

    async def scenario():
        receiver = socket.socket()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
        receiver.connect(("127.0.0.1", server.port))
        carol = await connect(
            server.url(),
            sock=receiver,
            ping_interval=None,
            max_queue=4,
            additional_headers={"Authorization": f"Bearer {token('carol')}"},
        )
        assert (await receive(carol))["type"] == "WELCOME"
        bob, _ = await open_socket(server, "bob")
        published = 0
        while True:  # until the instance lets carol's channel go
            pipe = bus.pipeline(transaction=False)
            for n in range(published, published + 500):
                pipe.publish(carol_channel, notification(str(n), "x" * 1000))
            published += 500
            if pipe.execute()[-1] == 0:
                break
            assert published < 200_000, "carol was never dropped"
        await until(lambda: not registered(bus, prefix, "carol"), "carol unregistered")

        code, reason, frames = await closed(carol)
        assert (code, reason) == (4429, "slow consumer: 20 messages behind")
        assert [f["id"] for f in frames] == [str(n) for n in range(len(frames))]
        assert len(frames) < published
        assert bus.publish(user_channel(prefix, "bob"), notification("still-here")) == 1
        assert (await receive(bob))["id"] == "still-here"
        await bob.close()

    run(scenario)


# --- resume ---------------------------------------------------------------------------------


def store_updates(conn: psycopg.Connection, user: str, seqs) -> None:
    """Rows of read_model.order_updates as the projector writes them (order = seq)."""
    rows = [(seq, user, seq, Jsonb(json.loads(update(seq, seq)))) for seq in seqs]
    conn.cursor().executemany(
        "INSERT INTO read_model.order_updates (update_id, user_id, "
        "order_id, payload) VALUES (%s, %s, %s, %s)",
        rows,
    )


def test_resume_sends_what_was_missed_then_live_updates_without_duplicates(gateways, bus, database):
    """Updates 1..10 of alice in the read model (bob's interleaved); she reconnects
    with since=6. The replay is held up by a lock while updates 11 (also committed)
    and 12 are published live: she gets 7..11 from the read model, RESUMED, then 12
    and 13 live; 11 never twice."""
    [server] = gateways()
    prefix = gateways.prefix
    with psycopg.connect(database) as conn:
        store_updates(conn, "alice", range(1, 11, 2))
        store_updates(conn, "bob", range(101, 106))
        store_updates(conn, "alice", range(2, 11, 2))

    async def scenario():
        with psycopg.connect(database) as blocker:
            blocker.execute("LOCK TABLE read_model.order_updates IN ACCESS EXCLUSIVE MODE")
            store_updates(blocker, "alice", [11])
            alice, _ = await open_socket(server, "alice", since=6)
            assert bus.publish(user_channel(prefix, "alice"), update(11)) == 1
            assert bus.publish(user_channel(prefix, "alice"), update(12)) == 1
        frames = await receive_many(alice, 7)
        assert [f.get("seq") for f in frames] == [7, 8, 9, 10, 11, None, 12]
        assert frames[5] == {
            "type": "RESUMED",
            "since": 6,
            "lastSeq": 11,
            "count": 5,
            "truncated": False,
            "limit": REPLAY_LIMIT,
        }
        assert frames[0]["orderId"] == 7 and frames[0]["status"] == "OPEN"
        bus.publish(user_channel(prefix, "alice"), update(11))  # a late copy
        bus.publish(user_channel(prefix, "alice"), update(13))
        assert (await receive(alice))["seq"] == 13
        await alice.close()

    run(scenario)


def test_resume_as_the_first_frame_skips_what_was_already_sent_live(gateways, bus, database):
    [server] = gateways()
    prefix = gateways.prefix
    with psycopg.connect(database) as conn:
        store_updates(conn, "alice", range(1, 6))

    async def scenario():
        alice, _ = await open_socket(server, "alice")
        bus.publish(user_channel(prefix, "alice"), update(5))  # before her resume
        assert (await receive(alice))["seq"] == 5
        await alice.send('{"op": "resume", "since": 2}')
        frames = await receive_many(alice, 3)
        assert [f.get("seq") for f in frames] == [3, 4, None]
        assert frames[-1]["lastSeq"] == 5 and frames[-1]["count"] == 2
        await alice.send('{"op": "resume", "since": 0}')
        assert (await receive(alice))["code"] == "RESUME_NOT_ALLOWED"
        await alice.close()

    run(scenario)


def test_a_resume_past_the_limit_says_it_was_cut_short(gateways, database):
    [server] = gateways()
    with psycopg.connect(database) as conn:
        store_updates(conn, "alice", range(1, REPLAY_LIMIT + 6))

    async def scenario():
        alice, _ = await open_socket(server, "alice", since=0)
        frames = await receive_many(alice, REPLAY_LIMIT + 1)
        assert [f.get("seq") for f in frames[:-1]] == list(range(1, REPLAY_LIMIT + 1))
        assert frames[-1] == {
            "type": "RESUMED",
            "since": 0,
            "lastSeq": REPLAY_LIMIT,
            "count": REPLAY_LIMIT,
            "truncated": True,
            "limit": REPLAY_LIMIT,
        }
        await alice.close()

    run(scenario)


def test_a_replayed_update_is_the_live_frame_byte_for_byte(gateways, database):
    """The projector's ORDER_UPDATEs of a partly filled buy reach alice live; a socket
    that resumes from 0 gets the same frames, text for text, from the read model."""
    [server] = gateways()
    with (
        psycopg.connect(database, autocommit=True) as conn,
        redis.Redis.from_url(REDIS_URL) as client,
    ):
        projector = ProjectorConsumer(MARKET, client, gateways.prefix)
        v = Venue(conn)
        ids = dict(conn.execute("SELECT user_id, account_id FROM accounts").fetchall())
        v.place(ids["alice"], Side.BUY, 10, MID, Tif.GTC)
        v.place(ids["bob"], Side.SELL, 4, MID)

        async def scenario():
            live, _ = await open_socket(server, "alice")
            projector.committed(projector.apply(conn, v.messages()))
            sent = [await asyncio.wait_for(live.recv(), WAIT) for _ in range(2)]
            replay, _ = await open_socket(server, "alice", since=0)
            replayed = [await asyncio.wait_for(replay.recv(), WAIT) for _ in range(2)]
            assert (await receive(replay))["type"] == "RESUMED"
            for ws in (live, replay):
                await ws.close()
            return sent, replayed

        sent, replayed = run(scenario)
    assert [json.loads(f)["status"] for f in sent] == ["OPEN", "PARTIALLY_FILLED"]
    assert [json.loads(f) for f in replayed] == [json.loads(f) for f in sent]
    assert replayed == sent


# --- market data ----------------------------------------------------------------------------


def test_market_data_subscriptions(gateways, bus):
    """TRADE and BOOK messages reach the sockets subscribed to them, acknowledged
    first; the instance subscribes a channel once for all its sockets and lets it go
    with the last; bad requests get an ERROR frame and the socket stays open."""
    [server] = gateways()
    prefix = gateways.prefix
    trades, book = trades_channel(prefix, "RELIANCE"), book_channel(prefix, "TCS")
    trade = (
        b'{"type":"TRADE","tradeId":"t1","symbol":"RELIANCE","price":"2847.00",'
        b'"quantity":5,"time":"2026-11-25T06:00:00+00:00"}'
    )
    depth = (
        b'{"type":"BOOK","symbol":"TCS","bids":[],"asks":[],"bestBid":null,'
        b'"bestAsk":null,"lastPrice":null}'
    )

    async def scenario():
        alice, _ = await open_socket(server, "alice")
        bob, _ = await open_socket(server, "bob")
        for request, answer in [
            ({"op": "subscribe", "channel": "trades", "symbol": "NOPE"}, "UNKNOWN_SYMBOL"),
            ({"op": "subscribe", "channel": "candles", "symbol": "TCS"}, "INVALID_REQUEST"),
            ({"op": "subscribe", "symbol": "TCS"}, "INVALID_REQUEST"),
            ({"op": "dance"}, "INVALID_REQUEST"),
        ]:
            await alice.send(json.dumps(request))
            assert (await receive(alice))["code"] == answer
        await alice.send("{not json")
        assert (await receive(alice))["code"] == "MALFORMED_JSON"
        await alice.send(b"\x00binary")
        assert (await receive(alice))["code"] == "INVALID_REQUEST"

        for ws, channel, symbol in [
            (alice, "trades", "RELIANCE"),
            (alice, "book", "TCS"),
            (bob, "trades", "RELIANCE"),
        ]:
            await ws.send(json.dumps({"op": "subscribe", "channel": channel, "symbol": symbol}))
            assert await receive(ws) == {"type": "SUBSCRIBED", "channel": channel, "symbol": symbol}
        assert bus.pubsub_numsub(trades) == [(trades.encode(), 1)]  # one per instance
        bus.publish(trades_channel(prefix, "TCS"), trade)  # nobody's
        bus.publish(trades, trade)
        bus.publish(book, depth)
        assert [f["type"] for f in await receive_many(alice, 2)] == ["TRADE", "BOOK"]
        assert (await receive(bob)) == json.loads(trade)

        await alice.send('{"op": "unsubscribe", "channel": "trades", "symbol": "RELIANCE"}')
        assert (await receive(alice))["type"] == "UNSUBSCRIBED"
        bus.publish(trades, trade)
        bus.publish(book, depth)
        assert (await receive(alice))["type"] == "BOOK"  # no TRADE before it
        assert (await receive(bob))["type"] == "TRADE"
        await bob.send('{"op": "unsubscribe", "channel": "trades", "symbol": "RELIANCE"}')
        assert (await receive(bob))["type"] == "UNSUBSCRIBED"
        await until(
            lambda: bus.pubsub_numsub(trades) == [(trades.encode(), 0)], "the trades channel let go"
        )
        await alice.close()
        await until(
            lambda: bus.pubsub_numsub(book) == [(book.encode(), 0)],
            "the book channel let go with the socket",
        )
        await bob.close()

    run(scenario)


def test_a_pre_open_book_reaches_subscribers_with_its_phase_and_indicative(gateways, database):
    """The projector's BOOK of a crossed pre-open book carries the phase and the
    indicative opening to the sockets subscribed to it; the uncross's BOOK the open."""
    [server] = gateways()
    with (
        psycopg.connect(database, autocommit=True) as conn,
        redis.Redis.from_url(REDIS_URL) as client,
    ):
        projector = ProjectorConsumer(MARKET, client, gateways.prefix)
        v = TradingVenue(conn)
        ids = dict(conn.execute("SELECT user_id, account_id FROM accounts").fetchall())

        async def scenario():
            ws, _ = await open_socket(server, "carol")
            await ws.send('{"op": "subscribe", "channel": "book", "symbol": "RELIANCE"}')
            assert (await receive(ws))["type"] == "SUBSCRIBED"
            v.close()
            v.pre_open()
            v.order(ids["alice"], Side.BUY, 10, MID + 1)
            v.order(ids["bob"], Side.SELL, 10, MID)  # crossed, not matched
            projector.committed(projector.apply(conn, v.messages()))
            pre_open = await receive(ws)
            done = len(v.batches)
            v.uncross()
            projector.committed(projector.apply(conn, v.messages(done)))
            opened = await receive(ws)
            await ws.close()
            return pre_open, opened

        pre_open, opened = run(scenario)
    assert (pre_open["phase"], pre_open["halted"], pre_open["bestBid"], pre_open["bestAsk"]) == (
        "PRE_OPEN",
        False,
        {"price": "15000.05", "quantity": 10},
        {"price": "15000.00", "quantity": 10},
    )
    # both candidates trade 10 with no imbalance; no reference: the lower opens
    assert pre_open["indicative"] == {
        "price": "15000.00",
        "volume": 10,
        "imbalance": 0,
        "surplusSide": None,
    }
    assert {k: opened[k] for k in ("phase", "indicative", "lastPrice", "bids", "asks")} == {
        "phase": "OPEN",
        "indicative": None,
        "lastPrice": "15000.00",
        "bids": [],
        "asks": [],
    }


# --- failures and shutdown ------------------------------------------------------------------


def test_a_broken_redis_connection_closes_the_sockets_to_resume_elsewhere(gateways, bus):
    """Messages published while the instance's pub/sub connection is down are lost to
    it, so it closes its sockets (1012) rather than leave gaps; a new socket works."""
    [server] = gateways()
    prefix = gateways.prefix

    async def scenario():
        alice, welcome = await open_socket(server, "alice")
        [client] = [
            c for c in bus.client_list(_type="pubsub") if c["name"] == f"ws-{welcome['instance']}"
        ]
        bus.client_kill_filter(_id=client["id"])
        code, reason, _ = await closed(alice)
        assert code == 1012 and reason.startswith("message stream interrupted")
        alice, _ = await open_socket(server, "alice")
        assert registered(bus, prefix, "alice") == {welcome["instance"]}
        assert bus.publish(user_channel(prefix, "alice"), update(1)) == 1
        got = await receive(alice)
        assert got.get("seq") == 1, got
        await alice.close()

    run(scenario)


def test_a_stopped_instance_closes_its_sockets_and_unregisters(gateways, bus):
    """SIGTERM: the instance's sockets are closed, its registrations removed, and the
    user's sockets elsewhere go on."""
    a, b = gateways(2)
    prefix = gateways.prefix

    async def scenario():
        alice_a, welcome = await open_socket(a, "alice")
        alice_b, _ = await open_socket(b, "alice")
        assert len(registered(bus, prefix, "alice")) == 2
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
        assert await asyncio.to_thread(a.stop) == -15
        assert "Application shutdown complete" in a.log.read_text()
        code, _, _ = await closed(alice_a)
        assert code in (1001, 1012)  # uvicorn closes first (1012), else the app
        assert welcome["instance"] not in registered(bus, prefix, "alice")
        assert bus.publish(user_channel(prefix, "alice"), update(1)) == 1
        assert (await receive(alice_b))["seq"] == 1
        await alice_b.close()

    run(scenario)
