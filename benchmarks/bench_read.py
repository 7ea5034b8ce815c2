"""Read-side benchmark: the query service's GET /api/v1/portfolio and GET /api/v1/orders
with a warm and a cold cache, and WebSocket fan-out to 1,000 connected clients.

    python benchmarks/bench_read.py            # about 2 minutes
    python benchmarks/bench_read.py --quick    # smoke run, about 30 s

Needs the development Postgres and Redis up (scripts/{postgres,redis}/*.sh start). Set-up,
undone at the end: a fresh database with --users accounts, each with 5 positions and
--orders read-model orders (read_model.orders, as the projector writes them), trades
that give every symbol a last price; one query-service uvicorn and one WebSocket-gateway
uvicorn (uvloop, httptools); a fresh Redis key prefix.

HTTP phases (closed loop, --clients keep-alive connections, a random user per request):
"warm" after one read of every user filled the cache; "cold" with the user's cache
generation bumped (brokercore.read.cache) just before each request, so every request misses
and reads Postgres, as the first read after a fill does. Redis's own hit/miss counters
are printed per phase as evidence.

WebSocket phases: --ws-clients sockets (one user each) on one gateway instance. "order
updates": ORDER_UPDATE messages published to random users' channels (user:{id}) at each
--ws-rates rate; "broadcast": every socket subscribed to RELIANCE trades, TRADE messages
published at --broadcast-rate, each delivered to every socket. Latency = receipt in the
client - publish time (both clocks of this machine, microseconds in the message). Client,
gateway, Redis and Postgres share this machine's cores. It prints numbers; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import numpy as np
import psycopg
import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.client import connect

from brokercore.config import DEV_JWT_SECRET, ServiceSettings
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.realtime.channels import (
    OrderUpdate,
    TradeTick,
    encode_message,
    trades_channel,
    user_channel,
)
from harness import (
    Connection,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    start_service,
    stop,
)
from machine import machine_line

REDIS = ServiceSettings.from_env().redis_url  # the development Redis (or BROKERCORE_REDIS_URL)
SYMBOLS = ["RELIANCE", "TCS", "INFY", "HDFCBANK", "ITC"]
perf = time.perf_counter
log = functools.partial(print, flush=True)


# --- data set -----------------------------------------------------------------------------


def seed(url: str, users: int, orders: int) -> None:
    """Accounts, positions, read-model orders and trades, set-based in SQL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (user_id, cash, blocked_cash) SELECT 'u' || g, "
            "10000000000, 250000000 FROM generate_series(0, %s - 1) g",
            (users,),
        )
        conn.execute(
            "INSERT INTO read_model.positions (user_id, symbol, quantity, avg_price) "
            "SELECT 'u' || g, s, 10 + g %% 90, 250000 + g %% 1000 "
            "FROM generate_series(0, %s - 1) g CROSS JOIN unnest(%s::text[]) s",
            (users, SYMBOLS),
        )
        conn.execute(
            """
            INSERT INTO read_model.orders (order_id, user_id, account_id, symbol, side, type,
                time_in_force, price, quantity, filled_quantity, filled_notional, avg_price,
                status, fills, created_at, updated_at)
            SELECT u * %(orders)s + n + 1, 'u' || u, u + 1, (%(symbols)s::text[])[1 + n %% 5],
                   CASE WHEN n %% 2 = 0 THEN 'BUY' ELSE 'SELL' END, 'LIMIT', 'DAY',
                   250000 + n * 5, 10, CASE WHEN n %% 3 = 0 THEN 10 ELSE 0 END,
                   CASE WHEN n %% 3 = 0 THEN 10 * (250000 + n * 5) ELSE 0 END,
                   CASE WHEN n %% 3 = 0 THEN 250000 + n * 5 END,
                   CASE WHEN n %% 3 = 0 THEN 'FILLED' ELSE 'OPEN' END,
                   CASE WHEN n %% 3 = 0 THEN jsonb_build_array(jsonb_build_object(
                       'tradeId', 'T' || u || ':' || n, 'price', '2500.00', 'quantity', 10,
                       'time', '2026-11-25T06:00:00+00:00')) ELSE '[]'::jsonb END,
                   now() - n * interval '1 minute', now() - n * interval '1 minute'
              FROM generate_series(0, %(users)s - 1) u, generate_series(0, %(orders)s - 1) n
            """,
            {"users": users, "orders": orders, "symbols": SYMBOLS},
        )
        conn.execute(
            "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, "
            "executed_at) SELECT s || ':' || g, s, g, 250000 + g * 5, 10, "
            "now() - (100 - g) * interval '1 second' FROM unnest(%s::text[]) s, "
            "generate_series(1, 100) g",
            (SYMBOLS,),
        )
        conn.execute("ANALYZE")


# --- HTTP phases ---------------------------------------------------------------------------


@dataclass
class HttpPhase:
    label: str
    seconds: float
    latencies: list = field(default_factory=list)  # s
    statuses: dict = field(default_factory=dict)
    redis: dict = field(default_factory=dict)  # keyspace hits / misses in the phase

    def line(self) -> str:
        ms = np.array(self.latencies or [float("nan")]) * 1e3
        ok = self.statuses.get(200, 0)
        bad = sum(n for s, n in self.statuses.items() if s != 200)
        return (
            f"{self.label:34} {ok / self.seconds:9,.0f} {np.percentile(ms, 50):7.2f} "
            f"{np.percentile(ms, 99):7.2f} {ms.max():7.1f} {bad:7,} "
            f"{self.redis.get('keyspace_hits', 0):9,} "
            f"{self.redis.get('keyspace_misses', 0):9,}"
        )


HTTP_HEADER = (
    f"{'phase':34} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
    f"{'non-200':>7} {'redis hit':>9} {'miss':>9}\n"
    f"{'':34} {'':>9} {'':>7} {'':>7} {'':>7} {'':>7} {'(2 GETs a request)':>19}"
)


async def redis_stats(client) -> dict:
    info = await client.info("stats")
    return {k: info[k] for k in ("keyspace_hits", "keyspace_misses")}


async def http_phase(
    label: str,
    port: int,
    path: str,
    tokens: list[str],
    clients: int,
    seconds: float,
    cold: bool,
    client,
    prefix: str,
) -> HttpPhase:
    phase = HttpPhase(label, seconds)
    heads = [
        (
            f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {t}\r\n\r\n"
        ).encode()
        for t in tokens
    ]
    conns = [await Connection(port).open() for _ in range(clients)]
    rng = random.Random(label)
    before = await redis_stats(client)
    end = perf() + seconds

    async def loop(conn: Connection) -> None:
        while perf() < end:
            user = rng.randrange(len(tokens))
            if cold:  # what a projector or settlement commit does
                await client.incr(f"{prefix}cache:u{user}:gen")
            t0 = perf()
            status, _ = await conn.send(heads[user])
            phase.latencies.append(perf() - t0)
            phase.statuses[status] = phase.statuses.get(status, 0) + 1

    await asyncio.gather(*(loop(c) for c in conns))
    after = await redis_stats(client)
    phase.redis = {k: after[k] - before[k] for k in after}
    for conn in conns:
        conn.close()
    return phase


# --- WebSocket phases ---------------------------------------------------------------------


@dataclass
class WsPhase:
    label: str
    seconds: float
    offered: float  # deliveries/s offered
    published: int = 0
    latencies: list = field(default_factory=list)  # s, publish -> receipt
    lost: int = 0  # published in the window, not received by the end

    def line(self) -> str:
        ms = np.array(self.latencies or [float("nan")]) * 1e3
        return (
            f"{self.label:34} {self.offered:9,.0f} {len(self.latencies) / self.seconds:9,.0f} "
            f"{np.percentile(ms, 50):7.2f} {np.percentile(ms, 99):7.2f} {ms.max():7.1f} "
            f"{self.lost:7,}"
        )


WS_HEADER = (
    f"{'phase':34} {'offered':>9} {'deliv/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'max ms':>7} {'missing':>7}"
)
_decoder = msgspec.json.Decoder(OrderUpdate | TradeTick)


def _sent_at(message) -> float:
    stamp = message.updated_at if isinstance(message, OrderUpdate) else message.time
    return datetime.fromisoformat(stamp).timestamp()


class Socket:
    """One connected client: every ORDER_UPDATE or TRADE it gets goes to ``sink``."""

    def __init__(self, ws):
        self.ws, self.sink = ws, None

    async def read(self) -> None:
        async for frame in self.ws:
            if self.sink is not None and ('"ORDER_UPDATE"' in frame or '"TRADE"' in frame):
                self.sink.append(time.time() - _sent_at(_decoder.decode(frame)))


async def open_sockets(port: int, tokens: list[str], n: int) -> list[Socket]:
    sockets = []
    for i in range(n):
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/v1/orders?token={tokens[i]}",
            max_queue=None,
            ping_interval=None,
        )
        welcome = msgspec.json.decode(await ws.recv())
        if welcome.get("type") != "WELCOME":
            raise RuntimeError(f"the gateway did not welcome client {i}: {welcome}")
        sockets.append(Socket(ws))
    for s in sockets:
        asyncio.create_task(s.read())
    return sockets


async def publish_at(rate: float, seconds: float, make, client, phase: WsPhase) -> None:
    """Publish ``make()`` (channel, bytes) at ``rate`` messages/s, in 5 ms ticks."""
    start, sent = perf(), 0
    while (elapsed := perf() - start) < seconds:
        due = int(elapsed * rate) - sent
        if due > 0:
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(due):
                    pipe.publish(*make())
                await pipe.execute()
            sent += due
        await asyncio.sleep(0.005)
    phase.published = sent


async def ws_phases(args, port: int, tokens: list[str], client, prefix: str) -> list[WsPhase]:
    t0 = perf()
    sockets = await open_sockets(port, tokens, args.ws_clients)
    log(f"websocket: {len(sockets):,} clients connected and welcomed in {perf() - t0:.1f} s")
    phases, rng, seq = [], random.Random(2), iter(range(1, 1 << 62))

    def update():
        user = rng.randrange(len(sockets))
        stamp = datetime.now(UTC).isoformat()
        message = OrderUpdate(
            next(seq),
            user + 1,
            "RELIANCE",
            "BUY",
            "LIMIT",
            "FILLED",
            10,
            10,
            "2500.00",
            "2500.00",
            None,
            stamp,
            0,
        )
        return user_channel(prefix, f"u{user}"), encode_message(message)

    def tick():
        stamp = datetime.now(UTC).isoformat()
        message = TradeTick(f"RELIANCE:{next(seq)}", "RELIANCE", "2500.00", 10, stamp)
        return trades_channel(prefix, "RELIANCE"), encode_message(message)

    async def run(label: str, rate: float, fanout: int, make, seconds: float = 0.0) -> None:
        phase = WsPhase(label, seconds or args.ws_seconds, rate * fanout)
        for s in sockets:
            s.sink = phase.latencies
        await publish_at(rate, phase.seconds, make, client, phase)
        deadline = perf() + 5.0  # let the last ones arrive
        while len(phase.latencies) < phase.published * fanout and perf() < deadline:
            await asyncio.sleep(0.05)
        phase.lost = phase.published * fanout - len(phase.latencies)
        for s in sockets:
            s.sink = None
        phases.append(phase)
        log(phase.line())

    log("\n" + WS_HEADER)
    await run("warm-up (not in the summary)", 500, 1, update, 2.0)
    phases.clear()
    for rate in args.ws_rates:
        await run(f"order updates, {rate:,}/s", rate, 1, update)
    for s in sockets:
        await s.ws.send('{"op":"subscribe","channel":"trades","symbol":"RELIANCE"}')
    await asyncio.sleep(1.0)  # the subscriptions acknowledged (SUBSCRIBED frames)
    await run(
        f"broadcast to {len(sockets):,}, {args.broadcast_rate:,}/s",
        args.broadcast_rate,
        len(sockets),
        tick,
    )
    for s in sockets:
        await s.ws.close()
    return phases


# --- main ---------------------------------------------------------------------------------


async def run_all(args, query_port: int, ws_port: int, tokens: list[str], prefix: str):
    client = aioredis.Redis.from_url(REDIS)
    async with client.pipeline(transaction=False) as pipe:  # every user has a generation,
        for user in range(len(tokens)):  # so a lookup is 2 GETs: gen,
            pipe.incr(f"{prefix}cache:u{user}:gen")  # then the entry
        await pipe.execute()
    http = []
    for name, path in (
        ("portfolio", "/api/v1/portfolio"),
        ("orders", "/api/v1/orders?page=1&pageSize=20"),
    ):
        conn = await Connection(query_port).open()  # one read of every user: cached
        for t in tokens:
            await conn.send(
                (f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n\r\n").encode()
            )
        conn.close()
        for cold in (False, True):
            phase = await http_phase(
                f"GET {name}, {'cold' if cold else 'warm'} cache",
                query_port,
                path,
                tokens,
                args.clients,
                args.seconds,
                cold,
                client,
                prefix,
            )
            http.append(phase)
            log(phase.line())
    ws = await ws_phases(args, ws_port, tokens, client, prefix)
    await client.aclose()
    return http, ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=50, help="read-model orders per user")
    parser.add_argument("--clients", type=int, default=16, help="HTTP keep-alive connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of an HTTP phase")
    parser.add_argument("--ws-clients", type=int, default=1000)
    parser.add_argument("--ws-rates", default="1000,4000", help="ORDER_UPDATEs/s, comma list")
    parser.add_argument("--broadcast-rate", type=int, default=10, help="TRADEs/s to all")
    parser.add_argument("--ws-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="smoke run, about 30 s")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(seconds=2.0, ws_seconds=2.0, ws_clients=200, users=200, ws_rates="1000")
    args = parser.parse_args()
    args.ws_rates = [int(r) for r in args.ws_rates.split(",")]
    args.ws_clients = min(args.ws_clients, args.users)

    log(
        "== brokercore reads: query service and WebSocket gateway, one process each ==\n"
        + machine_line("Postgres and Redis")
    )
    t0 = time.monotonic()
    prefix = f"bench-read-{uuid.uuid4().hex[:10]}:"
    tmp = tempfile.TemporaryDirectory(prefix="bench-read-")
    server, dbname, query, gateway = dev_server(), None, None, None
    query_log = open(os.path.join(tmp.name, "query.log"), "w+b")
    ws_log = open(os.path.join(tmp.name, "ws.log"), "w+b")
    interrupt_on_sigterm()
    http, ws = [], []
    try:
        dbname, url = create_database(server, "bench_read")
        seed(url, args.users, args.orders)
        env = dict(
            BROKERCORE_DATABASE_URL=url,
            BROKERCORE_REDIS_URL=REDIS,
            BROKERCORE_REDIS_PREFIX=prefix,
            BROKERCORE_DEV_MODE="1",
            BROKERCORE_WS_QUEUE_SIZE="10000",  # reads are measured, not limited:
            BROKERCORE_READ_RATE_LIMIT_BURST="1000000",
            BROKERCORE_READ_RATE_LIMIT_PER_SECOND="1000000",
        )
        query, query_port = start_service("query", env, query_log)
        gateway, ws_port = start_service("ws", env, ws_log)
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        tokens = [mint_token(f"u{n}", jwt, ttl=24 * 3600) for n in range(args.users)]
        log(
            f"set-up  : {time.monotonic() - t0:.1f} s; {args.users:,} users x {args.orders} "
            f"orders, 5 positions each; query pid {query.pid}, gateway pid {gateway.pid}; "
            f"{args.clients} HTTP connections\n\n{HTTP_HEADER}"
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            http, ws = runner.run(run_all(args, query_port, ws_port, tokens, prefix))
    finally:
        codes = stop(query), stop(gateway)
        if dbname is not None:
            drop_database(server, dbname)
        for name, f in (("query", query_log), ("gateway", ws_log)):
            f.seek(0)
            tail = f.read().decode(errors="replace").splitlines()[-5:]
            if tail:
                log(f"({name}'s last log lines:)\n" + "\n".join("   | " + t for t in tail))
            f.close()
        tmp.cleanup()
    log(
        f"\n== summary (one run; latency from request sent, or from publish) ==\n"
        f"{HTTP_HEADER}\n"
        + "\n".join(p.line() for p in http)
        + f"\n\n{WS_HEADER}\n"
        + "\n".join(p.line() for p in ws)
        + f"\nexit codes: query {codes[0]}, gateway {codes[1]} (-15: SIGTERM re-raised)"
    )


if __name__ == "__main__":
    main()
