"""CPU per deposit and per withdrawal of the funds service (services/funds), and of
Postgres behind it.

    .venv/bin/python benchmarks/bench_funds.py [--requests 2000] [--connections 8]

A fresh database with --connections funded users, `brokercore service funds` (no payment
provider: withdrawals stay PENDING, so nothing but the requests runs), then --requests
deposits and as many withdrawals, each with a key of its own, over kept-alive
connections (one user each). The CPU time of the service and of Postgres (from /proc) is
divided by the requests of each kind; Postgres' is that of the backends on the
benchmark's database (after a warm-up), not the other users of a shared server. It prints
numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

import psycopg

from brokercore.config import DEV_JWT_SECRET
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from harness import (
    Connection,
    cpu_ticks,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    seed_accounts,
    start_service,
    stop,
)
from machine import machine_line

TICKS_PER_SECOND = 100


async def send(port: int, user: str, what: str, n: int) -> None:
    """``n`` requests of "0.01" rupees each on one connection; every answer must be taken."""
    token = mint_token(user, JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET), ttl=3600)
    body = json.dumps({"amount": "0.01"}).encode()
    connection = await Connection(port).open()
    try:
        for _ in range(n):
            status, answer = await connection.send(
                f"POST /api/v1/funds/{what} HTTP/1.1\r\nHost: funds\r\n"
                f"Authorization: Bearer {token}\r\nIdempotency-Key: {uuid.uuid4().hex}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            if status not in (201, 202):
                raise RuntimeError(f"{what}: {status} {answer[:200]!r}")
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="of each kind")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    interrupt_on_sigterm()
    print(machine_line("Postgres and the funds service"))
    server = dev_server()
    name, url = create_database(server, "bench_funds")
    service = None
    try:
        seed_accounts(url, [], args.connections)
        env = {"BROKERCORE_DATABASE_URL": url, "BROKERCORE_DEV_MODE": "1"}
        env |= {
            "BROKERCORE_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:8]}:",
            "BROKERCORE_RATE_LIMIT_BURST": str(10 * args.requests),
            "BROKERCORE_RATE_LIMIT_PER_SECOND": str(10 * args.requests),
        }
        with open("/tmp/bench_funds.log", "ab") as log:
            service, port = start_service("funds", env, log)
        each = args.requests // args.connections
        asyncio.run(_all(send(port, f"u{n}", "deposits", 10) for n in range(args.connections)))
        with psycopg.connect(url) as conn:
            backends = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
        groups = {"funds": [service.pid], "postgres": [pid for (pid,) in backends]}
        for what in ("deposits", "withdrawals"):
            before = cpu_ticks(groups)
            asyncio.run(_all(send(port, f"u{n}", what, each) for n in range(args.connections)))
            spent = {k: v - before[k] for k, v in cpu_ticks(groups).items()}
            done = each * args.connections
            print(
                f"{what:<12} {done} requests: "
                + ", ".join(
                    f"{k} {1e6 * ticks / TICKS_PER_SECOND / done:.0f} µs CPU each"
                    for k, ticks in spent.items()
                )
            )
    finally:
        stop(service)
        drop_database(server, name)


async def _all(jobs) -> None:
    await asyncio.gather(*jobs)


if __name__ == "__main__":
    main()
