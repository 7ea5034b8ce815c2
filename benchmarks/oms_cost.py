"""What one order costs the OMS process in CPU time: POST /api/v1/orders on ONE OMS process,
from keep-alive clients in a closed loop, in rounds, with the CPU time of the OMS, of
Postgres and of Redis read from /proc at each round's ends.

    python benchmarks/oms_cost.py                      # 3 rounds of 5 s, 32 clients
    python benchmarks/oms_cost.py --profile oms.prof   # the OMS under cProfile: top functions

On a machine that others load, wall-clock rates swing; CPU-µs per accepted order (the
figure this prints, median of the rounds) carries from one run to the next. Set-up as
benchmarks/bench_oms.py (a fresh database and Kafka prefix, no engine: orders stay PENDING),
undone at the end. It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
import redis
import uvloop
from confluent_kafka.admin import AdminClient

import brokercore.engine._engine as _engine
from bench_oms import KAFKA, PATH, REDIS, Phase, order_bodies, send
from brokercore.config import DEV_JWT_SECRET, KafkaSettings
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.kafka.topics import ensure_topics
from harness import (
    REPO,
    Connection,
    cpu_ticks,
    create_database,
    dev_server,
    free_port,
    interrupt_on_sigterm,
    proc_stat,
    seed_accounts,
    stop,
    write_instruments,
)

perf = time.perf_counter
_RUN = """
import cProfile, signal, sys
src, out, argv = {src!r}, {out!r}, {argv!r}
if src:  # another tree's brokercore, ahead of the editable install's finder
    sys.meta_path[:] = [f for f in sys.meta_path if "_editable" not in type(f).__module__]
    sys.path.insert(0, src)
from brokercore.cli import main
if not out:
    sys.exit(main(argv))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn re-raises it after shutdown
profile = cProfile.Profile()  # wall time: a CPU-time timer costs a system call per event
profile.enable()
try:
    main(argv)
finally:
    profile.disable()
    profile.dump_stats(out)
"""


REQUEST_PATH = [
    "src/brokercore/services/oms.py",
    "src/brokercore/services/http.py",
    "src/brokercore/edge",
    "src/brokercore/read/cache.py",
    "src/brokercore/entry/outbox.py",
]
"""What an order's HTTP request runs through around the order entry (--paths' default)."""


def tree_at(revision: str, paths: list[str], into: str) -> str:
    """This tree's ``src`` with ``paths`` as they are at ``revision``, and the installed
    compiled extensions: the rest of the tree is the same on both sides of a comparison."""
    shutil.copytree(os.path.join(REPO, "src"), os.path.join(into, "src"))
    archive = subprocess.run(
        ["git", "archive", revision, *paths], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    built = os.path.dirname(os.path.dirname(_engine.__file__))  # .../brokercore
    for extension in glob.glob("*/*.so", root_dir=built):
        shutil.copy(os.path.join(built, extension), os.path.join(into, "src/brokercore", extension))
    return os.path.join(into, "src")


def start_oms(
    env: dict, log_file, src: str | None = None, profile: str | None = None
) -> tuple[subprocess.Popen, int]:
    """``brokercore service oms`` on a free port, from ``src`` if given (else this tree),
    under cProfile with ``profile``."""
    port = free_port()
    argv = ["service", "oms", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN.format(src=src, out=profile, argv=argv)],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            asyncio.run(asyncio.wait_for(Connection(port).open(), 1))
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the OMS did not start (exit code {process.poll()})")


async def one_round(
    label: str, seconds: float, clients: int, port: int, requests, pids: dict, url: str
) -> dict:
    """A closed loop of ``clients`` connections for ``seconds``: accepted/s and the CPU-µs
    per accepted order of each process group."""
    phase = Phase(label, seconds)
    conns = [await Connection(port).open() for _ in range(clients)]
    pids["pg"] = database_backends(url)  # this database's backends only: the server is shared
    end = perf() + seconds
    before, threads = cpu_ticks(pids), thread_ticks(pids["oms"][0])

    async def client(conn: Connection) -> None:
        while (t0 := perf()) < end:
            await send(phase, conn, requests, t0, end)

    await asyncio.gather(*(client(c) for c in conns))
    ticks = {k: v - before[k] for k, v in cpu_ticks(pids).items()}
    threads = {k: v - threads.get(k, 0) for k, v in thread_ticks(pids["oms"][0]).items()}
    for conn in conns:
        conn.close()
    seconds_per_tick = 1 / os.sysconf("SC_CLK_TCK")
    return {
        "accepted/s": phase.per_s,
        **{k: v * seconds_per_tick * 1e6 / max(1, phase.accepted) for k, v in ticks.items()},
        "non-202": phase.bad,
        "examples": phase.examples,
        "threads": {
            k: v * seconds_per_tick * 1e6 / max(1, phase.accepted)
            for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
            if v
        },
    }


def listener_pids(port: int) -> list[int]:
    """The process listening on a loopback TCP port (the shared Kafka broker: others'
    load counts too, so its figure is a rough one)."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True
    ).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks of the process's threads, summed by thread name (the event loop's is
    "python"; librdkafka's "rdk:..."; the outbox's "outbox-poller")."""
    ticks: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            stat = proc_stat(f"{pid}/task/{task}")
        except OSError:
            continue
        if stat:
            ticks[name] = ticks.get(name, 0) + int(stat[11]) + int(stat[12])
    return ticks


def database_backends(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def requests_to(port: int, tokens: list[str], orders):
    """Endless whole HTTP requests (head and body) of the orders, to ``port``."""
    heads = [
        (
            f"POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {t}"
            f"\r\ncontent-type: application/json\r\ncontent-length: "
        ).encode()
        for t in tokens
    ]
    return (b"%s%d\r\n\r\n%s" % (heads[user], len(body), body) for user, body in orders)


async def measure(args, servers: dict, tokens: list[str], orders, shared: dict, url: str) -> dict:
    """Idle CPU, a warm-up, then ``--rounds`` rounds of each server, alternating."""
    streams = {name: requests_to(port, tokens, orders) for name, (_, port) in servers.items()}
    groups = {name: {"oms": [p.pid], **shared} for name, (p, _) in servers.items()}
    for name, pids in groups.items():
        before, threads = cpu_ticks(pids)["oms"], thread_ticks(pids["oms"][0])
        await asyncio.sleep(args.idle)
        per_s = os.sysconf("SC_CLK_TCK") * args.idle
        threads = {k: v - threads.get(k, 0) for k, v in thread_ticks(pids["oms"][0]).items()}
        print(
            f"{name:12} idle: oms {(cpu_ticks(pids)['oms'] - before) / per_s:.2%} of a core ("
            + ", ".join(f"{k} {v / per_s:.2%}" for k, v in threads.items() if v)
            + ")"
        )
        await one_round(
            "warm-up", args.warmup, args.clients, servers[name][1], streams[name], pids, url
        )
    results: dict[str, list[dict]] = {name: [] for name in servers}
    for n in range(args.rounds):
        for name, (_, port) in servers.items():
            r = await one_round(
                f"round {n}", args.seconds, args.clients, port, streams[name], groups[name], url
            )
            results[name].append(r)
            print(
                f"{name:12} round {n}: {r['accepted/s']:7,.0f} accepted/s, "
                + ", ".join(f"{k} {r[k]:6,.0f}" for k in groups[name])
                + f" CPU-µs/order, non-202 {r['non-202']}; oms threads: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in r["threads"].items())
                + "".join(f"  e.g. {s}: {e}" for s, e in r["examples"].items()),
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle, measured first")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also an OMS with --paths as at git revision REV, rounds alternating",
    )
    parser.add_argument("--paths", nargs="+", default=REQUEST_PATH)
    parser.add_argument("--profile", help="write the OMS's cProfile here and print its top")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:10]
    tmp = tempfile.TemporaryDirectory(prefix="oms-cost-")
    instruments_path = os.path.join(tmp.name, "instruments.toml")
    instruments = write_instruments(instruments_path)
    server = dev_server()
    kafka = KafkaSettings(KAFKA, f"oms-cost-{run_id}-", 4)
    log_file = open(os.path.join(tmp.name, "oms.log"), "w+b")
    dbname = None
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    interrupt_on_sigterm()
    try:
        dbname, url = create_database(server)
        seed_accounts(url, [i["symbol"] for i in instruments], args.users)
        ensure_topics(kafka)
        env = dict(
            BROKERCORE_DATABASE_URL=url,
            BROKERCORE_KAFKA_BOOTSTRAP=KAFKA,
            BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
            BROKERCORE_SHARDS="4",
            BROKERCORE_INSTRUMENTS=instruments_path,
            BROKERCORE_DEV_MODE="1",
            BROKERCORE_REDIS_URL=REDIS,
            BROKERCORE_REDIS_PREFIX=f"oms-cost-{run_id}:",
            BROKERCORE_RATE_LIMIT_BURST="1000",
            BROKERCORE_RATE_LIMIT_PER_SECOND="1000",
        )
        if args.against:
            src = tree_at(args.against, args.paths, tmp.name)
            servers[args.against] = start_oms(env, log_file, src)
        servers["working tree"] = start_oms(env, log_file, profile=args.profile)
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        tokens = [mint_token(f"u{n}", jwt, ttl=24 * 3600) for n in range(args.users)]
        orders = order_bodies(instruments, args.users, 1, f"{run_id}-")
        shared = {
            "pg": [],  # the database's backends, at each round's start
            "redis": [int(redis.Redis.from_url(REDIS).info("server")["process_id"])],
            "kafka": listener_pids(int(KAFKA.rpartition(":")[2])),
        }
        print(f"{args.clients} clients, {args.users} users, {args.seconds} s rounds", flush=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(measure(args, servers, tokens, orders, shared, url))
        for name, rows in results.items():
            print(
                f"{name:12} median: "
                + ", ".join(
                    f"{k} {statistics.median(r[k] for r in rows):,.0f}"
                    for k in rows[0]
                    if k not in ("examples", "threads")
                )
                + "  (CPU-µs per accepted order)"
            )
    finally:
        for process, _ in servers.values():
            stop(process)
        if dbname is not None:
            drop_database(server, dbname)
        topics = [kafka.orders_topic, kafka.events_topic, kafka.snapshots_topic]
        topics += [kafka.dead_letter_topic, kafka.leases_topic]
        admin = AdminClient({"bootstrap.servers": KAFKA})
        for future in admin.delete_topics(topics, request_timeout=30).values():
            future.result(30)
        log_file.seek(0)
        output = log_file.read().decode(errors="replace")
        if "Traceback" in output:
            print("an OMS logged errors:\n" + output[-3000:])
        log_file.close()
        tmp.cleanup()
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    main()
