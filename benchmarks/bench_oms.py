"""OMS HTTP benchmark: POST /api/v1/orders on ONE uvicorn process, from keep-alive clients.

    python benchmarks/bench_oms.py            # about 1 minute
    python benchmarks/bench_oms.py --quick    # smoke run, about 12 s

Needs the development servers up (scripts/{postgres,redis,kafka}/*.sh start). Set-up,
undone at the end and on Ctrl-C/SIGTERM: a fresh database (migrations, --users accounts,
half of them holding every symbol), a fresh Kafka topic prefix (no engine runs: orders
stay PENDING), config/instruments.toml under an always-open session, uvicorn (uvloop,
httptools). The load comes from this process: a minimal asyncio HTTP/1.1 keep-alive
client, as httpx costs ~40x the CPU on a machine shared with the server. Phases: closed
loop per --clients N (latency send -> answer), then open loop at 50% of the best
closed-loop rate and at --rate, latency from each order's scheduled time (no coordinated
omission); orders never sent or answered count at their wait so far, making the
percentiles lower bounds ('>'). It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import random
import re
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import psycopg
import uvloop
from confluent_kafka.admin import AdminClient

from brokercore.config import DEV_JWT_SECRET, KafkaSettings, ServiceSettings
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.kafka.topics import ensure_topics
from harness import (
    Connection,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    postgres_pids,
    postmaster_of,
    proc_stat,
    seed_accounts,
    start_service,
    stop,
    write_instruments,
)
from machine import machine_line

TARGET_ORDERS_PER_S = 2_000
TARGET_P99_MS = 50.0
PATH = "/api/v1/orders"
# The development servers (or the BROKERCORE_* environment's).
KAFKA, REDIS = KafkaSettings.from_env().bootstrap, ServiceSettings.from_env().redis_url
perf = time.perf_counter
log = functools.partial(print, flush=True)


def order_bodies(instruments: list[dict], users: int, seed: int, prefix: str):
    """Endless (user index, JSON body): 50% buy / 50% sell, 90% LIMIT (DAY, GTC, IOC) within
    +-200 ticks of the band's middle, 10% MARKET, 1..100 shares, a unique idempotencyKey."""
    rng = random.Random(seed)
    symbols = [
        (i["symbol"], (i["low"] + i["high"]) // 2, round(float(i["tick_size"]) * 100))
        for i in instruments
    ]
    for n in range(1 << 62):
        symbol, mid, tick_paise = rng.choice(symbols)
        side, user = (
            ("BUY", rng.randrange(users))
            if rng.random() < 0.5
            else ("SELL", rng.randrange(max(1, users // 2)))
        )
        head = f'{{"symbol":"{symbol}","side":"{side}","quantity":{rng.randint(1, 100)},'
        if rng.random() < 0.1:
            tail = '"type":"MARKET","timeInForce":"IOC"'
        else:
            paise = (mid + rng.randint(-200, 200)) * tick_paise
            tif = rng.choices(("DAY", "GTC", "IOC"), (8, 1, 1))[0]
            tail = (
                f'"type":"LIMIT","price":"{paise // 100}.{paise % 100:02d}","timeInForce":"{tif}"'
            )
        yield user, f'{head}{tail},"idempotencyKey":"{prefix}{n}"}}'.encode()


@dataclass
class Phase:
    label: str
    seconds: float
    rate: float = 0.0  # offered orders/s (open loop); 0: closed loop
    accepted: int = 0  # 202s completed inside the window
    latencies: list = field(default_factory=list)  # s, answered requests
    unanswered: list = field(default_factory=list)  # s waited so far, never answered
    statuses: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # unexpected status -> one body
    cpu: dict = field(default_factory=dict)  # % of one core

    @property
    def per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def bad(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 202)

    def latency_ms(self) -> dict:
        every = np.array(self.latencies + self.unanswered or [float("nan")]) * 1e3
        return {
            **{p: float(np.percentile(every, p)) for p in (50, 99, 99.9)},
            "max": float(every.max()),
        }

    def line(self) -> str:
        lat, mark = self.latency_ms(), ">" if self.unanswered else " "
        return (
            f"{self.label:26} {f'{self.rate:,.0f}' if self.rate else '-':>8} "
            f"{self.per_s:8,.0f} "
            + " ".join(f"{mark}{lat[k]:6.1f}" for k in lat)
            + f" {self.bad:7,} {len(self.unanswered):7,} | "
            + " ".join(f"{self.cpu.get(k, float('nan')):7.0f}" for k in self.cpu)
            + " | "
            + " ".join(f"{self.us_per_order(k):7,.0f}" for k in ("uvicorn", "pg-db", "pg"))
            + "".join(f"  {s}: {n:,}" for s, n in self.statuses.items() if s != 202)
        )

    def us_per_order(self, group: str) -> float:
        """CPU-µs the group spent per accepted order in the window (nan: none accepted)."""
        return self.cpu.get(group, float("nan")) * 1e4 / self.per_s if self.accepted else math.nan


HEADER = (
    f"{'phase':26} {'offered':>8} {'accepted':>8} {'p50':>7} {'p99':>7} {'p99.9':>7} "
    f"{'max':>7} {'non-202':>7} {'unanswd':>7} | {'uvicorn':>7} {'client':>7} {'pg-db':>7} "
    f"{'pg':>7} | {'uvicorn':>7} {'pg-db':>7} {'pg':>7}\n"
    f"{'':26} {'orders/s':>8} {'orders/s':>8} {'ms':>7} {'ms':>7} {'ms':>7} {'ms':>7} "
    f"{'':>7} {'':>7} | {'% core':>7} {'% core':>7} {'% core':>7} {'% core':>7} | "
    f"{'µs/ordr':>7} {'µs/ordr':>7} {'µs/ordr':>7}"
)


async def send(phase: Phase, conn: Connection, requests, since: float, end: float) -> None:
    """One order; its latency counted from ``since``."""
    try:
        status, answer = await conn.send(next(requests))
    except (OSError, RuntimeError) as e:  # ConnectionError is an OSError
        status, answer = type(e).__name__, repr(e).encode()
        conn.close()
    t = perf()
    phase.statuses[status] += 1
    if isinstance(status, int):
        phase.latencies.append(t - since)
    if status == 202:
        phase.accepted += t <= end
    else:
        phase.examples.setdefault(status, answer[:200].decode(errors="replace"))


async def open_loop(
    phase: Phase, conns: list[Connection], orders, start: float, end: float, drain: float
) -> None:
    """Orders due every 1/rate s queue until a connection is free; latency from the due
    time. What is never sent or answered keeps its wait so far (a lower bound)."""
    queue: asyncio.Queue = asyncio.Queue()
    in_flight: dict = {}  # worker task -> due of its request

    async def worker(conn: Connection) -> None:
        while (due := await queue.get()) is not None:
            in_flight[asyncio.current_task()] = due
            await send(phase, conn, orders, due, end)
            del in_flight[asyncio.current_task()]

    workers = [asyncio.create_task(worker(c)) for c in conns]
    due = start
    while due < end:
        now = perf()
        while due <= now and due < end:
            queue.put_nowait(due)
            due += 1 / phase.rate
        await asyncio.sleep(max(due - perf(), 1e-3))  # timers are ~1 ms coarse
    cut = perf()
    while not queue.empty():  # never sent
        phase.unanswered.append(cut - queue.get_nowait())
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=drain)
    cut = perf()
    for task in pending:  # in flight past the drain
        phase.unanswered.append(cut - in_flight[task])
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def run_all(
    args, port: int, tokens: list[str], orders, uvicorn_pid: int, postmaster: str, url: str
) -> list[Phase]:
    """Warm-up, closed loops, open loops at 50% of the best and at --rate; each phase on
    connections opened before its clock starts, its CPU read at the window's ends."""
    heads = [
        (
            f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {t}"
            f"\r\ncontent-type: application/json\r\ncontent-length: "
        ).encode()
        for t in tokens
    ]
    orders = (b"%s%d\r\n\r\n%s" % (heads[user], len(body), body) for user, body in orders)
    phases: list[Phase] = []

    async def run(label: str, connections: int, rate: float = 0.0, seconds=args.seconds):
        phase = Phase(label, seconds, rate)
        conns = [await Connection(port).open() for _ in range(connections)]
        groups = {
            "uvicorn": [uvicorn_pid],
            "client": [os.getpid()],
            "pg-db": database_backends(url),
            "pg": postgres_pids(postmaster),
        }
        start = perf() + 0.1
        end = start + seconds

        async def cpu() -> None:
            await asyncio.sleep(start - perf())
            t0, before = perf(), ticks_by_pid(groups)
            await asyncio.sleep(end - perf())
            scale = os.sysconf("SC_CLK_TCK") * (perf() - t0) / 100
            after = ticks_by_pid(groups)
            phase.cpu = {  # processes gone meanwhile (others' backends) left out
                k: sum(n - before[k][p] for p, n in after[k].items() if p in before[k]) / scale
                for k in groups
            }

        async def client(conn: Connection) -> None:
            while (t0 := perf()) < end:
                await send(phase, conn, orders, t0, end)

        probe = asyncio.create_task(cpu())
        await asyncio.sleep(start - perf())
        if rate:
            await open_loop(phase, conns, orders, start, end, args.drain)
        else:
            await asyncio.gather(*(client(c) for c in conns))
        await probe
        for conn in conns:
            conn.close()
        phases.append(phase)
        log(phase.line())

    log("\n" + HEADER)
    await run("warm-up (not reported)", 8, seconds=args.warmup)
    for n in args.clients:
        await run(f"closed, {n} clients", n)
    half = max(10.0, round(max(p.per_s for p in phases[1:]) / 2, -1))
    await run(f"open, {half:,.0f}/s (50% of best)", args.open_connections, half)
    await run(f"open, {args.rate:,.0f}/s", args.open_connections, args.rate)
    return phases[1:]


def ticks_by_pid(groups: dict[str, list[int]]) -> dict[str, dict[int, int]]:
    """Each group's processes' CPU ticks (utime + stime) by pid; a process gone has none."""
    return {
        k: {p: int(st[11]) + int(st[12]) for p in pids if (st := proc_stat(p))}
        for k, pids in groups.items()
    }


def database_backends(url: str) -> list[int]:
    """The Postgres backends connected to the bench's database (the OMS's pool): the
    server's other processes serve other work on a shared machine."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def batch_sizes(url: str) -> str:
    """Orders per transaction, from the orders' created_at (one timestamp per group
    commit batch; one per order on the single path)."""
    with psycopg.connect(url) as conn:
        sizes = np.array(
            [n for (n,) in conn.execute("SELECT count(*) FROM orders GROUP BY created_at")] or [0]
        )
    weighted = np.repeat(sizes, sizes)  # as an order sees it
    return (
        f"{len(sizes):,} transactions, {sizes.sum():,} orders: mean {sizes.mean():.1f}, "
        f"max {sizes.max()}; per order p50 {np.percentile(weighted, 50):.0f}, p90 "
        f"{np.percentile(weighted, 90):.0f}"
    )


def summary(phases: list[Phase], output: str, code) -> None:
    log(f"\n== summary: POST {PATH}, one uvicorn process (uvloop, httptools) ==\n{HEADER}")
    for p in phases:
        log(p.line())
    log(
        "(latency: closed loop send -> answer, open loop from the scheduled time; '>' = lower "
        "bounds: unanswd requests counted at their wait so far; pg-db = the backends of the "
        "bench's database, pg = all Postgres processes, others' work on a shared machine "
        "included; µs/ordr = CPU-µs per accepted order)"
    )
    bad = Counter({s: n for p in phases for s, n in p.statuses.items() if s != 202})
    answered = sum(sum(p.statuses.values()) for p in phases)
    log(
        f"\nvalid   : NO - unexpected answers {dict(bad)} of {answered:,}"
        if bad
        else f"\nvalid   : yes - all {answered:,} answers were 202"
    )
    for status, example in {s: e for p in phases for s, e in p.examples.items()}.items():
        log(f"          e.g. {status}: {example}")
    for p in (p for p in phases if p.rate >= TARGET_ORDERS_PER_S):
        p99 = p.latency_ms()[99]
        met = p99 < TARGET_P99_MS and p.per_s >= 0.98 * p.rate and not p.bad
        log(
            f"target  : p99 < {TARGET_P99_MS:.0f} ms at >= {TARGET_ORDERS_PER_S:,} orders/s "
            f"per API process: offered {p.rate:,.0f}/s, accepted {p.per_s:,.0f}/s, p99 "
            f"{'>=' if p.unanswered else ''}{p99:.1f} ms -> {'met' if met else 'missed'}"
        )
    errors = Counter(
        re.findall(
            r"^Traceback \(most recent call last\):\n(?:[ \t].*\n)*"
            r"([\w.]+)",
            output,
            re.M,
        )
    )
    log(
        f"uvicorn : exit code {code} (-15: it re-raises our SIGTERM); {sum(errors.values())} "
        "tracebacks" + "".join(f"\n   {n:6,} x {e}" for e, n in errors.most_common(10))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="16,64", help="closed-loop runs, comma-separated")
    parser.add_argument(
        "--rate",
        type=float,
        default=TARGET_ORDERS_PER_S,
        help="offered orders/s of the fixed-rate open loop",
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="open loop: seconds to wait for answers after the window",
    )
    parser.add_argument("--open-connections", type=int, default=128)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run, about 12 s")
    if parser.parse_known_args()[0].quick:  # new defaults; explicit flags win
        parser.set_defaults(clients="32", seconds=3.0, warmup=1.0, drain=3.0)
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]

    log(
        f"== brokercore OMS: POST {PATH} over HTTP, one API process ==\n"
        + machine_line("Postgres, Kafka, Redis")
    )
    t0 = time.monotonic()
    run_id = uuid.uuid4().hex[:10]
    tmp = tempfile.TemporaryDirectory(prefix="bench-oms-")
    instruments_path = os.path.join(tmp.name, "instruments.toml")
    instruments = write_instruments(instruments_path)
    server = dev_server()
    kafka = KafkaSettings(KAFKA, f"bench-oms-{run_id}-", 4)
    log_file = open(os.path.join(tmp.name, "uvicorn.log"), "w+b")
    dbname = uvicorn = None
    phases: list[Phase] = []
    interrupt_on_sigterm()
    try:
        symbols = [i["symbol"] for i in instruments]
        dbname, url = create_database(server)
        seed_accounts(url, symbols, args.users)
        postmaster = postmaster_of(url)
        ensure_topics(kafka)
        uvicorn, port = start_service(
            "oms",
            dict(
                BROKERCORE_DATABASE_URL=url,
                BROKERCORE_KAFKA_BOOTSTRAP=KAFKA,
                BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
                BROKERCORE_SHARDS="4",
                BROKERCORE_INSTRUMENTS=instruments_path,
                BROKERCORE_DEV_MODE="1",
                BROKERCORE_REDIS_URL=REDIS,
                BROKERCORE_REDIS_PREFIX=f"bench-oms-{run_id}:",
                BROKERCORE_RATE_LIMIT_BURST="1000",
                BROKERCORE_RATE_LIMIT_PER_SECOND="1000",
            ),
            log_file,
        )
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        tokens = [mint_token(f"u{n}", jwt, ttl=24 * 3600) for n in range(args.users)]
        orders = order_bodies(instruments, args.users, args.seed, f"{run_id}-")
        log(
            f"set-up  : {time.monotonic() - t0:.1f} s; uvicorn pid {uvicorn.pid}, database "
            f"{dbname}, Kafka prefix {kafka.topic_prefix} (no engine daemon), {args.users} "
            f"users, raw HTTP/1.1 keep-alive client"
        )
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            phases = runner.run(run_all(args, port, tokens, orders, uvicorn.pid, postmaster, url))
        log(f"batches : {batch_sizes(url)}")
    finally:
        code = stop(uvicorn)  # lifespan shutdown: flush, close
        try:
            if dbname is not None:
                drop_database(server, dbname)
            topics = [
                kafka.orders_topic,
                kafka.events_topic,
                kafka.snapshots_topic,
                kafka.dead_letter_topic,
                kafka.leases_topic,
            ]
            admin = AdminClient({"bootstrap.servers": KAFKA})
            for future in admin.delete_topics(topics, request_timeout=30).values():
                future.result(30)
        except Exception as e:  # noqa: BLE001 - reported, run over
            log(f"(clean-up failed: {e!r})")
        log_file.seek(0)
        output = log_file.read().decode(errors="replace")
        log_file.close()
        tmp.cleanup()
        if not phases:
            log(
                "\nthe run did not complete; uvicorn's last lines:\n"
                + "\n".join("   | " + line for line in output.splitlines()[-20:])
            )
    summary(phases, output, code)


if __name__ == "__main__":
    main()
