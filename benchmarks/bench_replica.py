"""The read replica's price and what it takes off the primary: CPU per GET /portfolio of
the query service, of the primary and of the replica, reading the primary alone and
reading through brokercore.read.replica (the per-read WAL fence included).

    python benchmarks/bench_replica.py            # about a minute
    python benchmarks/bench_replica.py --quick    # smoke run

A private primary and its replica (scripts/postgres/postgres.sh on ports and folders of
their own in /tmp, removed at the end), so no other work on the development server
counts; the development Redis under a fresh prefix. Every read misses the cache (a TTL
of 1 ms) and so reads Postgres. Closed loop, --clients keep-alive connections, a random
user per request; CPU from /proc (harness.cpu_ticks). It prints numbers; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid

from brokercore.config import DEV_JWT_SECRET
from brokercore.db.migrations import apply_migrations
from brokercore.edge.auth import JwtConfig, mint_token
from harness import (
    REPO,
    Connection,
    cpu_ticks,
    free_port,
    interrupt_on_sigterm,
    postgres_pids,
    postmaster_of,
    seed_accounts,
    start_service,
    stop,
)

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def postgres_script(env: dict[str, str], command: str) -> str:
    done = subprocess.run(
        [os.path.join(REPO, "scripts/postgres/postgres.sh"), command],
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


async def load(port: int, tokens: list[str], reads: int, clients: int) -> float:
    """``reads`` GET /api/v1/portfolio over ``clients`` connections; seconds taken."""
    left = reads

    async def client() -> None:
        nonlocal left
        conn = await Connection(port).open()
        try:
            while left > 0:
                left -= 1
                token = random.choice(tokens)
                status, body = await conn.send(
                    b"GET /api/v1/portfolio HTTP/1.1\r\nHost: q\r\n"
                    b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
                )
                if status != 200:
                    raise RuntimeError(f"{status}: {body[:200]!r}")
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--quick", action="store_true", help="500 reads, for a smoke run")
    args = parser.parse_args()
    interrupt_on_sigterm()
    if args.quick:
        args.reads = 500

    state = os.path.join(tempfile.gettempdir(), f"brokercore-bench-replica-{uuid.uuid4().hex[:8]}")
    env = {
        "BROKERCORE_PG_PORT": str(free_port()),
        "BROKERCORE_PG_STATE": state + "-primary",
        "BROKERCORE_PG_REPLICA_PORT": str(free_port()),
        "BROKERCORE_PG_REPLICA_STATE": state + "-replica",
    }
    services = []
    try:
        postgres_script(env, "start")
        primary_url = postgres_script(env, "url")
        apply_migrations(primary_url)
        seed_accounts(primary_url, ["RELIANCE"], args.users)
        postgres_script(env, "replica-start")
        replica_url = postgres_script(env, "replica-url")
        postmasters = {"primary": postmaster_of(primary_url), "replica": postmaster_of(replica_url)}
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        tokens = [mint_token(f"u{n}", jwt, ttl=3600) for n in range(args.users)]
        print(f"{args.reads} cold GET /api/v1/portfolio per row; CPU-µs per read")
        print(
            f"{'reads from':<10} {'clients':>7} {'reads/s':>8} {'query':>7}"
            f" {'primary':>8} {'replica':>8}"
        )
        for clients in args.clients:
            for mode, replica in (("primary", ""), ("replica", replica_url)):
                log = open(f"{state}-primary/query-{mode}-{clients}.log", "w")
                process, port = start_service(
                    "query",
                    {
                        "BROKERCORE_DATABASE_URL": primary_url,
                        "BROKERCORE_REPLICA_URL": replica,
                        "BROKERCORE_DEV_MODE": "1",
                        "BROKERCORE_REDIS_PREFIX": f"bench-replica-{uuid.uuid4().hex[:8]}:",
                        "BROKERCORE_CACHE_TTL": "0.001",
                        "BROKERCORE_READ_RATE_LIMIT_BURST": "1000000000",
                        "BROKERCORE_READ_RATE_LIMIT_PER_SECOND": "1000000000",
                    },
                    log,
                )
                services.append(process)
                asyncio.run(load(port, tokens, min(200, args.reads), clients))  # warm-up
                groups = {k: postgres_pids(pm) for k, pm in postmasters.items()}  # backends too
                groups["query"] = [process.pid]
                before = cpu_ticks(groups)
                seconds = asyncio.run(load(port, tokens, args.reads, clients))
                after = cpu_ticks(groups)
                stop(process)
                services.remove(process)
                us = {k: (after[k] - before[k]) * TICK_US / args.reads for k in after}
                print(
                    f"{mode:<10} {clients:>7} {args.reads / seconds:>8.0f} {us['query']:>7.0f}"
                    f" {us['primary']:>8.0f} {us['replica']:>8.0f}",
                    flush=True,
                )
    finally:
        for process in services:
            stop(process)
        for command in ("replica-stop", "stop"):
            subprocess.run(
                [os.path.join(REPO, "scripts/postgres/postgres.sh"), command],
                env=os.environ | env,
                capture_output=True,
            )
        for suffix in ("-primary", "-replica"):
            shutil.rmtree(state + suffix, ignore_errors=True)


if __name__ == "__main__":
    main()
