"""A fill, end to end: from the order over HTTP to the owner's WebSocket.

    python benchmarks/bench_realtime.py            # about 45 s
    python benchmarks/bench_realtime.py --quick    # smoke run

Needs the development Postgres, Redis and Kafka up (scripts/*/*.sh start). It runs, on
a fresh database, topic prefix and Redis prefix: the OMS (uvicorn), one engine daemon
(one shard), the projector, and two WebSocket gateway instances (uvicorn), each a
process of its own; --pairs-per-s crossing pairs of orders (a buy, then a sell at its
price) come from --sockets sellers and as many buyers, half of each connected to each
gateway. Every FILLED ORDER_UPDATE is timed from the engine's event message (its Kafka
timestamp, set before the transaction commits) to its receipt, and the seller's also
from the moment the crossing sell was sent. A FILLED update is published after the
projector's commit, so the first is also an upper bound of how long a fill takes to be
visible in the read model. Everything shares this machine's cores. It prints numbers;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import uvloop
from websockets.asyncio.client import connect

from brokercore.config import DEV_JWT_SECRET, KafkaSettings, ServiceSettings
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.kafka.topics import ensure_topics
from harness import (
    REPO,
    Connection,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    seed_accounts,
    start_service,
    stop,
    write_instruments,
)
from machine import machine_line

# The development servers (or the BROKERCORE_* environment's).
KAFKA, REDIS = KafkaSettings.from_env().bootstrap, ServiceSettings.from_env().redis_url
TARGET_P99_MS = 100.0
perf = time.perf_counter
log = functools.partial(print, flush=True)


def start_process(
    args: list[str], env: dict, log_path: str, ready: str, timeout: float = 60.0
) -> subprocess.Popen:
    """A process of ours, once its log says ``ready``."""
    out = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )
    deadline = time.monotonic() + timeout
    while ready not in open(log_path, errors="replace").read():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{args} did not start; see {log_path}")
        time.sleep(0.1)
    return process


class Owner:
    """One user's socket: the receipt time (epoch ms) of each FILLED order update."""

    def __init__(self, ws):
        self.ws, self.filled = ws, {}

    async def read(self) -> None:
        async for frame in self.ws:
            message = json.loads(frame)
            if message.get("type") == "ORDER_UPDATE" and message["status"] == "FILLED":
                self.filled[message["orderId"]] = (time.time() * 1000, message["eventTimeMs"])


async def run(args, oms_port: int, gateway_ports: list[int], tokens: list[str]) -> dict:
    half = len(tokens) // 2  # u0 .. u(half-1) hold shares: the sellers
    sellers, buyers = range(args.sockets), range(half, half + args.sockets)
    owners = {}
    for n, user in enumerate([*sellers, *buyers]):
        port = gateway_ports[n % len(gateway_ports)]
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/v1/orders?token={tokens[user]}",
            max_queue=None,
            ping_interval=None,
        )
        assert json.loads(await ws.recv())["type"] == "WELCOME"
        owners[user] = Owner(ws)
    readers = [asyncio.create_task(o.read()) for o in owners.values()]
    conn = await Connection(oms_port).open()
    heads = [
        (
            f"POST /api/v1/orders HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n"
            "content-type: application/json\r\ncontent-length: "
        ).encode()
        for t in tokens
    ]
    run_id = uuid.uuid4().hex[:8]

    async def place(user: int, side: str, n: int) -> int:
        body = (
            f'{{"symbol":"RELIANCE","side":"{side}","type":"LIMIT","quantity":1,'
            f'"price":"15000.00","timeInForce":"DAY","idempotencyKey":"{run_id}-{side}-{n}"}}'
        ).encode()
        status, answer = await conn.send(b"%s%d\r\n\r\n%s" % (heads[user], len(body), body))
        if status != 202:
            raise RuntimeError(f"the OMS answered {status}: {answer[:200]!r}")
        return json.loads(answer)["orderId"]

    sent, placed = {}, []  # sell order id -> when sent (epoch ms)
    start, n, counted = perf(), 0, 0
    while perf() - start < args.warmup + args.seconds:
        if n < (perf() - start) * args.pairs_per_s:
            seller, buyer = sellers[n % len(sellers)], buyers[n % len(buyers)]
            measured = perf() - start >= args.warmup
            buy = await place(buyer, "BUY", n)
            at = time.time() * 1000
            sell = await place(seller, "SELL", n)
            if measured:
                sent[sell] = at
                placed += [(buyer, buy), (seller, sell)]
                counted += 1
            n += 1
        else:
            await asyncio.sleep(0.002)
    deadline = perf() + 15
    while perf() < deadline and any(i not in owners[u].filled for u, i in placed):
        await asyncio.sleep(0.05)
    conn.close()
    for task in readers:
        task.cancel()
    for owner in owners.values():
        await owner.ws.close()
    from_event = [
        got - event
        for u, i in placed
        if (got_event := owners[u].filled.get(i))
        for got, event in [got_event]
    ]
    from_post = [
        owners[u].filled[i][0] - sent[i] for u, i in placed if i in sent and i in owners[u].filled
    ]
    return {
        "pairs": counted,
        "fills": len(placed),
        "received": len(from_event),
        "from_event": from_event,
        "from_post": from_post,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs-per-s", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of pairs not counted")
    parser.add_argument("--sockets", type=int, default=50, help="sellers (and buyers)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(seconds=4.0, warmup=1.0, sockets=10)
    args = parser.parse_args()
    log(
        "== brokercore: a fill from HTTP to the owner's WebSocket ==\n"
        + machine_line("Postgres, Kafka, Redis")
    )
    t0 = time.monotonic()
    run_id = uuid.uuid4().hex[:10]
    tmp = tempfile.TemporaryDirectory(prefix="bench-realtime-")
    instruments = os.path.join(tmp.name, "instruments.toml")
    write_instruments(instruments)
    server, dbname, processes = dev_server(), None, []
    interrupt_on_sigterm()
    result = None
    try:
        dbname, url = create_database(server, "bench_realtime")
        users = 2 * max(args.sockets, 10)
        seed_accounts(url, ["RELIANCE"], users)
        kafka = KafkaSettings(KAFKA, f"bench-rt-{run_id}-", 1)
        ensure_topics(kafka)
        env = dict(
            BROKERCORE_DATABASE_URL=url,
            BROKERCORE_REDIS_URL=REDIS,
            BROKERCORE_REDIS_PREFIX=f"bench-rt-{run_id}:",
            BROKERCORE_DEV_MODE="1",
            BROKERCORE_KAFKA_BOOTSTRAP=KAFKA,
            BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
            BROKERCORE_SHARDS="1",
            BROKERCORE_INSTRUMENTS=instruments,
            BROKERCORE_RATE_LIMIT_BURST="1000",
            BROKERCORE_RATE_LIMIT_PER_SECOND="1000",
        )
        path = functools.partial(os.path.join, tmp.name)
        processes.append(
            start_process(
                [
                    "-m",
                    "brokercore.cli",
                    "engine",
                    "--shard",
                    "0",
                    "--shards",
                    "1",
                    "--bootstrap",
                    KAFKA,
                    "--topic-prefix",
                    kafka.topic_prefix,
                    "--instruments",
                    instruments,
                ],
                env,
                path("engine.log"),
                "active from",
            )
        )
        processes.append(
            start_process(
                ["-m", "brokercore.cli", "service", "projector"],
                env,
                path("projector.log"),
                "from offsets",
            )
        )
        oms, oms_port = start_service("oms", env, open(path("oms.log"), "ab"))
        processes.append(oms)
        ports = []
        for k in range(2):
            gateway, port = start_service("ws", env, open(path(f"ws{k}.log"), "ab"))
            processes.append(gateway)
            ports.append(port)
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        tokens = [mint_token(f"u{n}", jwt, ttl=24 * 3600) for n in range(users)]
        log(
            f"set-up  : {time.monotonic() - t0:.1f} s; OMS, engine daemon, projector, 2 "
            f"gateways; {args.pairs_per_s:g} crossing pairs/s for {args.warmup:g} s (warm-up) "
            f"+ {args.seconds:g} s, "
            f"{2 * args.sockets} sockets"
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run(args, oms_port, ports, tokens))
    finally:
        for process in reversed(processes):
            stop(process)
        if dbname is not None:
            drop_database(server, dbname)
        tmp.cleanup()
    if result is None:
        log("the run did not complete")
        return
    log(
        f"\nfills   : {result['fills']:,} ORDER_UPDATEs FILLED expected "
        f"({result['pairs']:,} pairs), {result['received']:,} received"
    )
    for label, values in (
        ("event message -> socket", result["from_event"]),
        ("sell sent -> seller's socket", result["from_post"]),
    ):
        ms = np.array(values or [float("nan")])
        log(
            f"{label:30}: p50 {np.percentile(ms, 50):6.1f} ms, p90 "
            f"{np.percentile(ms, 90):6.1f} ms, p99 {np.percentile(ms, 99):6.1f} ms, "
            f"max {ms.max():6.1f} ms  ({len(values):,} fills)"
        )
    p99 = float(np.percentile(result["from_event"] or [float("nan")], 99))
    met = p99 < TARGET_P99_MS and result["received"] == result["fills"]
    log(
        f"target  : p99 < {TARGET_P99_MS:.0f} ms from the event's commit to the socket, every "
        f"fill delivered -> {'met' if met else 'missed'} (p99 {p99:.1f} ms)"
    )


if __name__ == "__main__":
    main()
