"""Does a failed login take longer for a registered email than for an unknown one?

    .venv/bin/python benchmarks/bench_login_timing.py [--logins 300] [--url URL]

Logs in ``--logins`` times with a wrong password for registered emails and as many times
for unknown ones, interleaved (so that the machine's load drifts over both alike), against
the accounts service at ``--url``, or else one started here on a fresh database (then its
CPU time per failed login is shown too). Each login has its own client address
(X-Forwarded-For, which the service trusts from loopback as it trusts the edge's) and
each registered email takes at most 4 failures, so the lockout (5 per email, 20 per
address) never answers instead of the password check. Prints both latency distributions
(median, p10, p90), the Mann-Whitney U test and the two-sample Kolmogorov-Smirnov
statistic with their p-values: a large p-value means the two are indistinguishable. A
benchmark prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
import uuid

from brokercore.config import ServiceSettings
from brokercore.db.migrations import drop_database
from harness import (
    Connection,
    cpu_ticks,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    start_service,
    stop,
)
from machine import machine_line

PASSWORD = "a right password for the benchmark"
FAILURES_PER_EMAIL = 4  # the fifth locks the email


def request(path: str, body: dict, address: str) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: accounts\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nX-Forwarded-For: {address}\r\n\r\n"
    ).encode() + data


def address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def registered_emails(logins: int, run_id: str) -> list[str]:
    return [
        f"bench-{run_id}-{n}@example.com" for n in range(math.ceil(logins / FAILURES_PER_EMAIL))
    ]


async def sign_up(port: int, emails: list[str]) -> None:
    connection = await Connection(port).open()
    for n, email in enumerate(emails):
        status, body = await connection.send(
            request("/api/v1/auth/signup", {"email": email, "password": PASSWORD}, address(n))
        )
        assert status == 202, body
    await connection.send(  # warm-up: the first login of a process pays for imports
        request("/api/v1/auth/login", {"email": emails[0], "password": "x"}, "10.255.0.1")
    )
    connection.close()


async def fail_logins(
    port: int, logins: int, registered: list[str], run_id: str
) -> tuple[list[float], list[float]]:
    """Latencies (seconds) of the failed logins: (registered, unknown)."""
    connection = await Connection(port).open()
    timings: dict[bool, list[float]] = {True: [], False: []}
    for n in range(2 * logins):
        known = n % 2 == 0
        email = (
            registered[(n // 2) // FAILURES_PER_EMAIL]
            if known
            else f"nobody-{run_id}-{n}@example.com"
        )
        message = request(
            "/api/v1/auth/login", {"email": email, "password": "wrong password"}, address(n + 1024)
        )
        started = time.perf_counter()
        status, body = await connection.send(message)
        timings[known].append(time.perf_counter() - started)
        if status != 401:
            raise RuntimeError(f"a failed login answered {status}: {body[:200]!r}")
    connection.close()
    return timings[True], timings[False]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def mann_whitney(a: list[float], b: list[float]) -> tuple[float, float]:
    """U of ``a`` and its two-sided p-value (normal approximation, ranks of ties averaged)."""
    merged = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(merged)
    i = 0
    while i < len(merged):
        j = i
        while j + 1 < len(merged) and merged[j + 1][0] == merged[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    n1, n2 = len(a), len(b)
    u = (
        sum(r for r, (_, group) in zip(ranks, merged, strict=True) if group == 0)
        - n1 * (n1 + 1) / 2
    )
    z = (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return u, math.erfc(abs(z) / math.sqrt(2))


def kolmogorov_smirnov(a: list[float], b: list[float]) -> tuple[float, float]:
    """The largest gap D between the two empirical distributions and its asymptotic
    p-value (Kolmogorov's series)."""
    points = sorted(set(a) | set(b))
    sa, sb = sorted(a), sorted(b)
    d, i, j = 0.0, 0, 0
    for x in points:
        while i < len(sa) and sa[i] <= x:
            i += 1
        while j < len(sb) and sb[j] <= x:
            j += 1
        d = max(d, abs(i / len(sa) - j / len(sb)))
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def describe(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<10}: n {len(ms)}, median {statistics.median(ms):.2f} ms, "
        f"p10 {percentile(ms, 0.10):.2f} ms, p90 {percentile(ms, 0.90):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=300, help="failed logins of each kind")
    parser.add_argument(
        "--url", help="a running accounts service (http://127.0.0.1:PORT); default: start one"
    )
    args = parser.parse_args()
    print(f"== brokercore accounts: failed-login timing ==\n{machine_line('Postgres, Redis')}")
    run_id = uuid.uuid4().hex[:10]
    server = dev_server()
    dbname = service = None
    interrupt_on_sigterm()
    try:
        if args.url:
            port = int(args.url.rstrip("/").rsplit(":", 1)[1])
        else:
            dbname, url = create_database(server, "bench_login")
            log_file = tempfile.TemporaryFile()
            service, port = start_service(
                "accounts",
                {
                    "BROKERCORE_DATABASE_URL": url,
                    "BROKERCORE_REDIS_URL": ServiceSettings.from_env().redis_url,
                    "BROKERCORE_REDIS_PREFIX": f"bench-login-{run_id}:",
                    "BROKERCORE_DEV_MODE": "1",
                    "BROKERCORE_READ_RATE_LIMIT_BURST": "100000",
                    "BROKERCORE_READ_RATE_LIMIT_PER_SECOND": "100000",
                },
                log_file,
            )
        registered = registered_emails(args.logins, run_id)
        asyncio.run(sign_up(port, registered))
        before = cpu_ticks({"service": [service.pid]}) if service else None
        known, unknown = asyncio.run(fail_logins(port, args.logins, registered, run_id))
        print(describe("registered", known))
        print(describe("unknown", unknown))
        u, p_u = mann_whitney(known, unknown)
        d, p_d = kolmogorov_smirnov(known, unknown)
        print(f"Mann-Whitney U {u:,.0f} (of {len(known) * len(unknown):,}), p = {p_u:.3f}")
        print(f"Kolmogorov-Smirnov D {d:.3f}, p = {p_d:.3f}")
        if service is not None and before is not None:
            ticks = cpu_ticks({"service": [service.pid]})["service"] - before["service"]
            print(
                f"service CPU: {ticks / 100:.2f} s for {2 * args.logins} failed logins, "
                f"{ticks * 10 / (2 * args.logins):.1f} ms each (argon2id dominates)"
            )
    finally:
        stop(service)
        if dbname is not None:
            drop_database(server, dbname)


if __name__ == "__main__":
    main()
