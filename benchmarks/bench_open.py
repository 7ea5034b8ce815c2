"""A market open, end to end: the whole stack of `make up` under an open loop of orders.

    python benchmarks/bench_open.py                     # 60 s, peak 1,000 orders/s
    python benchmarks/bench_open.py --quick             # CI-sized: 10 s at a low rate
    python benchmarks/bench_open.py --oms 2 --json open.json

Needs the development servers up (scripts/{postgres,redis,kafka}/*.sh start). Set-up,
undone at the end and on Ctrl-C/SIGTERM: a fresh database (--users funded accounts, half
of them holding every symbol, all journalled), a fresh Kafka topic prefix and Redis key
prefix, and scripts/stack/stack.sh up on private ports with a private state folder (its
engines, OMS, query, WebSocket, notification APIs, consumers, reconciler, and the edge
and --oms processes where stack.sh has them). It is taken down through its own
supervisord (stack.sh down would also stop the shared servers).

The load: every user has a token, orders go over keep-alive HTTP (through the edge
when the stack has one), OPEN LOOP: each request has a scheduled time and its latency is
counted from it (no coordinated omission; requests never sent or answered count at their
wait so far, which makes the percentiles lower bounds, marked '>'). The shape of an
open: a ramp to --peak-rate over the first 1/12 of --duration, the peak until half of
it, a tail at 23 % of the peak after that, so 80 % of the orders come in the first half
(the first 30 s of a 60 s run); one symbol at 10x the weight of each other; about half
the orders priced to cross, the rest resting; --cancels of the requests cancel one of
the user's own resting orders.

It prints per phase the offered and accepted orders/s, latency p50/p99/p99.9 and the
statuses; each consumer's lag (messages behind, and seconds to catch up with where the
end was); CPU-µs per accepted order of each process group from /proc (the load generator
apart, not in the total); the stack's idle CPU; the time after the load until every
order is settled and projected. Then its checks, PASS or FAIL each; exit status 1 if
one fails. Postgres's server processes, Kafka and Redis are shared with whatever else
uses the development servers: their CPU is only the stack's on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import functools
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
import xmlrpc.client
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import psycopg
import redis
import uvloop
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo
from supervisor.xmlrpc import SupervisorTransport

from brokercore.config import DEV_JWT_SECRET, KafkaSettings, ServiceSettings
from brokercore.consumers.reconcile import find_discrepancies, settled_events
from brokercore.db.migrations import drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.engine.records import EventType, Op, Reason
from brokercore.kafka.lag import KafkaLagProbe
from brokercore.services.monitor import platform_lags
from harness import (
    REPO,
    Connection,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    pid_in,
    postmaster_of,
    proc_stat,
    process_trees,
    seed_accounts,
)
from machine import machine_line

STACK = os.path.join(REPO, "scripts/stack/stack.sh")
KAFKA = KafkaSettings.from_env().bootstrap
REDIS = ServiceSettings.from_env().redis_url
TICK = os.sysconf("SC_CLK_TCK")
PG_CONSUMERS = ("settlement", "projector")
SHARED = ("postgres server", "kafka", "redis")  # the development servers' processes
BACKENDS = "postgres backends"  # the run database's, one group per service, and their sum
BENCH_APP = "bench-open"  # the application_name of the benchmark's own connections
MACHINE = "machine"  # every process on it, from /proc/stat
perf = time.perf_counter
log = functools.partial(print, flush=True)


# -- the stack ------------------------------------------------------------------------


def free_base(span: int = 64) -> int:
    """A port base with ``span`` free loopback ports after it (stack.sh numbers its
    processes' ports from BROKERCORE_PORT_BASE)."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000, 100)  # below the ephemeral ports
        sockets = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {span} free ports in a row")


class Stack:
    """scripts/stack/stack.sh on a private state folder and ports; the settings it
    reads from the environment (its header) name what it can do: an edge (nginx, run by
    scripts/edge/nginx.sh, here in a folder and on a port of its own), N OMS."""

    EDGE = os.path.join(REPO, "scripts/edge/nginx.sh")

    def __init__(self, state: str, env: dict[str, str], oms: int | None):
        with open(STACK) as f:
            header = f.read()
        self.state, self.env = state, dict(os.environ, **env)
        self.base = free_base()
        self.env["BROKERCORE_PORT_BASE"] = str(self.base)
        self.env["BROKERCORE_STACK_STATE"] = state
        self.edge = "BROKERCORE_EDGE_PORT" in header
        self.port = self.base  # where orders go: the OMS, or the edge
        if self.edge:
            self.port = self.base + 63  # past the API processes' ports (up to 15 of a kind)
            self.env["BROKERCORE_EDGE_PORT"] = str(self.port)
            self.env["BROKERCORE_EDGE_STATE"] = f"{state}/edge"
        if oms is not None:
            if "BROKERCORE_OMS_PROCESSES" not in header:
                raise SystemExit(f"--oms {oms}: stack.sh has no BROKERCORE_OMS_PROCESSES yet")
            self.env["BROKERCORE_OMS_PROCESSES"] = str(oms)

    def up(self) -> None:
        done = subprocess.run(
            [STACK, "up"], env=self.env, capture_output=True, text=True, timeout=600
        )
        if done.returncode:
            raise RuntimeError(f"stack.sh up failed:\n{done.stderr[-4000:]}\n{self.tails()}")

    def programs(self) -> dict[str, int]:
        """Each process supervisord runs, and the edge's master: its pid (0 when none)."""
        transport = SupervisorTransport(None, None, f"unix://{self.state}/supervisor.sock")
        # The host is a placeholder: the transport connects to the unix socket.
        supervisor = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        found = {p["name"]: p["pid"] for p in supervisor.supervisor.getAllProcessInfo()}
        if self.edge:
            found["edge"] = (pid_in(f"{self.state}/edge/nginx.pid") or [0])[0]
        return found

    def down(self) -> None:
        """The edge, every process, then supervisord; never the shared servers (which
        stack.sh down stops too)."""
        if self.edge:
            subprocess.run([self.EDGE, "stop"], env=self.env, capture_output=True, timeout=60)
        conf = f"{self.state}/supervisord.conf"
        if not os.path.exists(f"{self.state}/supervisor.sock"):
            return
        ctl = [f"{REPO}/.venv/bin/supervisorctl", "-c", conf]
        daemon = pid_in(f"{self.state}/supervisord.pid")
        subprocess.run([*ctl, "stop", "all"], capture_output=True, timeout=120)
        subprocess.run([*ctl, "shutdown"], capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while daemon and proc_stat(daemon[0]) and time.monotonic() < deadline:
            time.sleep(0.2)

    def tails(self, lines: int = 15) -> str:
        """The last lines of each process's log."""
        folder, out = f"{self.state}/logs", []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            with open(f"{folder}/{name}", errors="replace") as f:
                out += [f"--- {name}", *f.read().splitlines()[-lines:]]
        return "\n".join(out)


def group_of(program: str) -> str:
    """engine-0 -> engines, oms-1 -> oms: the processes of one kind are one group."""
    name = re.sub(r"[-_]?\d+$", "", program)
    return "engines" if name == "engine" else name


def backends_group(application_name: str) -> str:
    """The group of a Postgres backend of the run's database, by the application_name its
    client gave: brokercore-settlement -> postgres backends/settlement (the services name
    theirs, brokercore.services.run_service), the benchmark's own -> the load generator."""
    if application_name == BENCH_APP:
        return "load generator"
    service = application_name.removeprefix("brokercore-")
    return f"{BACKENDS}/{group_of(service) if service != application_name else 'other'}"


# -- CPU ------------------------------------------------------------------------------


class Cpu:
    """CPU ticks per process group, from /proc: the stack's processes (and their children)
    from supervisord, the Postgres backends of the benchmark's database, the Postgres
    server's own processes, Kafka's JVM, Redis, and the load generator."""

    def __init__(self, stack: Stack, url: str, dbname: str):
        self.stack, self.dbname = stack, dbname
        self.conn = psycopg.connect(url, autocommit=True)
        self.postmaster = int(postmaster_of(url))
        kafka_state = os.environ.get("BROKERCORE_KAFKA_STATE", f"{REPO}/.kafka")
        redis_state = os.environ.get("BROKERCORE_REDIS_STATE", f"{REPO}/.redis")
        self.servers = {
            "kafka": pid_in(f"{kafka_state}/kafka.pid"),
            "redis": pid_in(f"{redis_state}/redis.pid"),
        }
        self.pids: dict[str, set[int]] = defaultdict(set)  # each program's, over the run

    def restarted(self) -> list[str]:
        """The programs that ran as more than one process (supervisord restarted them)."""
        return sorted(name for name, pids in self.pids.items() if len(pids - {0}) > 1)

    def groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        programs = self.stack.programs()
        trees = process_trees([pid for pid in programs.values() if pid])
        for name, pid in programs.items():
            self.pids[name].add(pid)
            groups[group_of(name)] += trees.get(pid, [])
        rows = self.conn.execute(
            "SELECT pid, datname = %s, backend_type = 'client backend', application_name "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
            (self.dbname,),
        ).fetchall()
        for pid, ours, _, name in rows:
            if ours:
                groups[backends_group(name)].append(pid)
        groups["postgres server"] = [self.postmaster] + [
            pid for pid, _, client, _ in rows if client is False
        ]
        groups.update(self.servers)
        groups["load generator"] = [os.getpid()]
        return groups

    def snapshot(self) -> tuple[float, dict[str, dict[int, int]]]:
        """(time, {group: {pid: ticks}}), and the whole machine's busy ticks (/proc/stat:
        all but idle and iowait) as the group MACHINE."""
        snap = {
            group: {pid: int(s[11]) + int(s[12]) for pid in pids if (s := proc_stat(pid))}
            for group, pids in self.groups().items()
        }
        with open("/proc/stat") as f:
            ticks = [int(n) for n in f.readline().split()[1:9]]
        snap[MACHINE] = {0: sum(ticks) - ticks[3] - ticks[4]}
        return perf(), snap

    @staticmethod
    def spent(a, b) -> tuple[float, dict[str, float]]:
        """(seconds between, {group: CPU seconds}) from snapshot a to b; a process that
        appeared meanwhile counts from zero."""
        (t0, before), (t1, after) = a, b
        return t1 - t0, {
            group: sum(n - before.get(group, {}).get(pid, 0) for pid, n in pids.items()) / TICK
            for group, pids in after.items()
        }

    def close(self) -> None:
        self.conn.close()


# -- consumer positions and lag --------------------------------------------------------


class Positions:
    """Where each consumer is against the end of its topic, per partition, as the lag
    monitor reads it (brokercore.services.monitor.platform_lags: the engines' group
    offsets on ``orders``, settlement's and the projector's offsets in Postgres, the
    notifier's group on ``events``; positions read before the ends, so an engine that
    has read an order has committed its events by the time the ends of ``events`` are
    read, and "everyone at the end" means every order settled)."""

    def __init__(self, url: str, kafka: KafkaSettings):
        self.kafka, self.url = kafka, url
        self.probe = KafkaLagProbe(kafka.bootstrap)
        self.conn = psycopg.connect(url, autocommit=True)

    def read(self) -> dict[str, dict[int, tuple[int, int]]]:
        """{consumer: {partition: (end, position)}}; a consumer that stored nothing yet is
        at the start of every partition."""
        lags, problems = platform_lags(self.kafka, self.url, self.probe)
        if problems:
            raise RuntimeError("; ".join(problems))
        found: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for name, readings in lags.items():
            for lag in readings:
                at = lag.start if lag.position is None else lag.position
                found[lag.consumer if name == "engine" else name][lag.partition] = (lag.end, at)
        for consumer in PG_CONSUMERS:
            if consumer not in found:
                found[consumer] = {p: (end, 0) for p, (end, _) in found["notifier"].items()}
        return found

    def close(self) -> None:
        self.conn.close()


def caught_up(partitions: dict[int, tuple[int, int]]) -> bool:
    """Within one message of the end: a transaction's closing marker takes an offset
    that a consumer which read all of it may not have stored yet."""
    return all(position >= end - 1 for end, position in partitions.values())


class LagSampler(threading.Thread):
    """Reads the positions every ``every`` seconds while the load runs."""

    def __init__(self, positions: Positions, every: float):
        super().__init__(daemon=True)
        self.positions, self.every = positions, every
        self.samples: list[tuple[float, dict]] = []
        self.errors: Counter = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.samples.append((perf(), self.positions.read()))
            except Exception as e:  # noqa: BLE001 - a missed sample is counted, not fatal
                self.errors[type(e).__name__] += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per consumer: messages behind (summed over partitions) p99 and max, and the
        seconds it took to reach where each partition's end was at a sample (p99, max;
        to the sampling period; a sample never caught up counts until the last)."""
        out = {}
        consumers = self.samples[0][1] if self.samples else {}
        for consumer in consumers:
            behind = [sum(max(0, e - p) for e, p in s[consumer].values()) for _, s in self.samples]
            waits = []
            for partition in consumers[consumer]:
                times = [t for t, _ in self.samples]
                positions = [s[consumer][partition][1] for _, s in self.samples]
                best = np.maximum.accumulate(positions).tolist()
                for t, s in self.samples:
                    end = s[consumer][partition][0]
                    if end - 1 <= s[consumer][partition][1]:
                        waits.append(0.0)
                        continue
                    j = bisect.bisect_left(best, end - 1)
                    waits.append((times[j] if j < len(times) else times[-1]) - t)
            out[consumer] = {
                "behind_p99": float(np.percentile(behind, 99)),
                "behind_max": float(max(behind)),
                "catch_up_p99_s": float(np.percentile(waits, 99)),
                "catch_up_max_s": float(max(waits)),
            }
        return out


# -- the load -------------------------------------------------------------------------


def schedule(duration: float, peak: float) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The scheduled send times (s from the start) and the phases (name, from, to): a
    linear ramp over duration/12, the peak until duration/2, then the tail at the rate
    that leaves 80 % of the orders in the first half."""
    ramp, half = duration / 12, duration / 2
    tail = peak * (half - ramp / 2) * 0.25 / (duration - half)
    step = 1e-3
    t = np.arange(0, duration, step)
    rate = np.where(t < ramp, peak * t / ramp, np.where(t < half, peak, tail))
    cumulative = np.cumsum(rate * step)
    due = np.searchsorted(cumulative, np.arange(1, int(cumulative[-1]) + 1)) * step
    return due, [("ramp", 0.0, ramp), ("peak", ramp, half), ("tail", half, duration)]


@dataclass
class Phase:
    name: str
    start: float
    end: float
    offered: int = 0
    accepted: int = 0  # POSTs answered 202 within the phase (the stack's throughput)
    latencies: list = field(default_factory=list)  # s from the scheduled time
    unanswered: int = 0
    statuses: Counter = field(default_factory=Counter)  # "POST 202", "DELETE 409" ...
    examples: dict = field(default_factory=dict)
    cpu: tuple = (0.0, {})  # (seconds, {group: CPU seconds}) of the phase's window

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def latency_ms(self) -> dict[str, float]:
        every = np.array(self.latencies or [float("nan")]) * 1e3
        return {f"p{p}": float(np.percentile(every, p)) for p in (50, 99, 99.9)}


class Orders:
    """What each request is: a cancel of one of the user's resting orders (--cancels of
    the requests, when the user has one) or a new LIMIT order: half buys by any user,
    half sells by the users holding shares (the first half), half of them priced to
    cross (buys 60 ticks above the band's middle, sells below), the rest resting within
    50 ticks on their own side; 1..100 shares; the hot symbol 10x as likely as another."""

    def __init__(self, instruments: list[dict], users: int, args, port: int, run_id: str):
        self.rng, self.users, self.cancels = random.Random(args.seed), users, args.cancels
        self.symbols = [
            (i["symbol"], (i["low"] + i["high"]) // 2, round(float(i["tick_size"]) * 100))
            for i in instruments
        ]
        self.weights = [10] + [1] * (len(self.symbols) - 1)
        jwt = JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET)
        self.heads = [
            f"host: 127.0.0.1:{port}\r\nauthorization: Bearer "
            f"{mint_token(f'u{n}', jwt, ttl=24 * 3600)}\r\n".encode()
            for n in range(users)
        ]
        self.resting: list[list[int]] = [[] for _ in range(users)]
        self.prefix, self.n = run_id, 0

    def next(self) -> tuple[str, int, bool, bytes]:
        """(method, user, whether the order should rest, request bytes)."""
        rng = self.rng
        buy = rng.random() < 0.5
        user = rng.randrange(self.users if buy else max(1, self.users // 2))  # holders sell
        if rng.random() < self.cancels and self.resting[user]:
            mine = self.resting[user]
            order_id = mine.pop(rng.randrange(len(mine)))
            return (
                "DELETE",
                user,
                False,
                b"DELETE /api/v1/orders/%d HTTP/1.1\r\n%scontent-length: 0\r\n\r\n"
                % (order_id, self.heads[user]),
            )
        (symbol, mid, tick), *_ = rng.choices(self.symbols, self.weights)
        cross = rng.random() < 0.5
        ticks = 60 if cross else -rng.randint(1, 50)
        paise = (mid + (ticks if buy else -ticks)) * tick
        self.n += 1
        body = (
            f'{{"symbol":"{symbol}","side":"{"BUY" if buy else "SELL"}","type":"LIMIT",'
            f'"quantity":{rng.randint(1, 100)},"price":"{paise // 100}.{paise % 100:02d}",'
            f'"timeInForce":"DAY","idempotencyKey":"{self.prefix}-{self.n}"}}'
        ).encode()
        request = b"POST /api/v1/orders HTTP/1.1\r\n%scontent-type: application/json\r\n"
        request += b"content-length: %d\r\n\r\n%s"
        return "POST", user, not cross, request % (self.heads[user], len(body), body)


async def run_load(args, port: int, orders: Orders, cpu: Cpu, phases: list[Phase], due) -> dict:
    """Sends each request at its time, on --connections keep-alive connections (a request
    due while all are busy waits for one: its wait counts); CPU snapshots at the phases'
    ends. Returns the ids of the orders answered 202 and the CPU snapshots."""
    queue: asyncio.Queue = asyncio.Queue()
    accepted: list[int] = []
    in_flight: dict = {}
    conns = [await Connection(port).open() for _ in range(args.connections)]

    def phase_of(t: float) -> Phase:
        return next((p for p in phases if t < p.end), phases[-1])

    async def send(conn: Connection, t: float) -> None:
        method, user, rests, request = orders.next()
        try:
            status, body = await conn.send(request)
        except (OSError, RuntimeError) as e:  # ConnectionError is an OSError
            status, body = type(e).__name__, repr(e).encode()
            conn.close()
        phase, now = phase_of(t), perf() - start
        phase.latencies.append(now - t)
        phase.statuses[f"{method} {status}"] += 1
        if status == 202 and method == "POST":
            if now < phases[-1].end:  # what the stack did within the phases' windows
                phase_of(now).accepted += 1
            order_id = json.loads(body)["orderId"]
            accepted.append(order_id)
            if rests:  # a cancel may still find it filled by then: a 409
                orders.resting[user].append(order_id)
        elif status != 202:
            phase.examples.setdefault(f"{method} {status}", body[:200].decode(errors="replace"))

    async def worker(conn: Connection) -> None:
        while (t := await queue.get()) is not None:
            in_flight[asyncio.current_task()] = t
            await send(conn, t)
            del in_flight[asyncio.current_task()]

    snapshots = [await asyncio.to_thread(cpu.snapshot)]
    start = perf()
    workers = [asyncio.create_task(worker(c)) for c in conns]
    i = 0
    for phase in phases:
        while True:
            now = perf() - start
            while i < len(due) and due[i] <= now and due[i] < phase.end:
                queue.put_nowait(float(due[i]))
                phase.offered += 1
                i += 1
            if i == len(due) or due[i] >= phase.end:
                break
            await asyncio.sleep(max(due[i] - (perf() - start), 1e-3))  # timers: ~1 ms
        await asyncio.sleep(max(phase.end - (perf() - start), 0))
        snapshots.append(await asyncio.to_thread(cpu.snapshot))
    cut = perf() - start
    while not queue.empty():  # never sent
        t = queue.get_nowait()
        phase_of(t).latencies.append(cut - t)
        phase_of(t).unanswered += 1
    for _ in workers:
        queue.put_nowait(None)
    done, pending = await asyncio.wait(workers, timeout=args.drain)
    for task in done:
        task.result()  # a worker's own error (not the stack's answer) stops the run
    cut = perf() - start
    for task in pending:  # in flight past the drain
        t = in_flight[task]
        phase_of(t).latencies.append(cut - t)
        phase_of(t).unanswered += 1
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for conn in conns:
        conn.close()
    return {"accepted": accepted, "snapshots": snapshots, "load_end": start + phases[-1].end}


# -- after the load: caught up, and the checks ----------------------------------------

UNPROJECTED = """
SELECT count(*) FROM orders o LEFT JOIN read_model.orders r USING (order_id)
 WHERE r.order_id IS NULL OR r.status <> o.status OR r.filled_quantity <> o.filled_quantity
"""
CASH = """
SELECT (SELECT coalesce(sum(cash), 0) FROM accounts)
     + (SELECT coalesce(sum(amount), 0) FROM fee_income),
       (SELECT coalesce(sum(amount) FILTER (WHERE kind = 'DEPOSIT'), 0)
             - coalesce(sum(amount) FILTER (WHERE kind = 'WITHDRAWAL'), 0) FROM funding)
"""
SHARES = """
SELECT symbol, held, moved
  FROM (SELECT symbol, sum(quantity) AS held FROM positions GROUP BY symbol) p
  FULL JOIN (SELECT symbol, coalesce(sum(quantity) FILTER (WHERE kind = 'SHARES_IN'), 0)
                          - coalesce(sum(quantity) FILTER (WHERE kind = 'SHARES_OUT'), 0) AS moved
               FROM funding WHERE symbol IS NOT NULL GROUP BY symbol) f USING (symbol)
 WHERE held IS DISTINCT FROM moved
"""


EVENT_TO_ROW = {
    # the OMS taking the command (an event's ts is its command's) -> settlement's
    # order_events row of the event (its dedupe key names the event; the OMS's own rows
    # have none): the whole write path
    "settlement": "SELECT extract(epoch FROM recorded_at - occurred_at) FROM order_events "
    "WHERE dedupe_key IS NOT NULL",
    # the Kafka timestamp of the event's message -> the projector's ORDER_UPDATE row
    "projector": "SELECT extract(epoch FROM created_at) - (payload->>'eventTimeMs')::float8 / 1e3 "
    "FROM read_model.order_updates",
}


def event_to_row(conn: psycopg.Connection) -> dict[str, dict[str, float]]:
    """Per consumer, seconds to an event's row in Postgres (EVENT_TO_ROW), p50/p99/max over
    the run (the row's time is its transaction's start: a slight understatement)."""
    out = {}
    for consumer, query in EVENT_TO_ROW.items():
        row = conn.execute(
            f"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), "
            f"percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s), count(*) "
            f"FROM ({query}) AS lags (s)"
        ).fetchone()
        out[consumer] = dict(zip(("p50_s", "p99_s", "max_s", "rows"), map(float, row), strict=True))
    return out


def wait_caught_up(positions: Positions, since: float, timeout: float) -> dict[str, float | None]:
    """Seconds from ``since`` (the load's end) until every order is settled (the engines
    and settlement at the ends of their topics, no order PENDING) and projected (the
    projector too, and the read model's orders as the ledger's); None: not within
    ``timeout``."""
    done: dict[str, float | None] = {"settled": None, "projected": None}
    deadline = perf() + timeout
    while perf() < deadline and None in done.values():
        found = positions.read()
        engines = all(caught_up(v) for k, v in found.items() if k.startswith("engine-"))
        pending = positions.conn.execute(
            "SELECT count(*) FROM orders WHERE status = 'PENDING'"
        ).fetchone()[0]
        if done["settled"] is None and engines and not pending and caught_up(found["settlement"]):
            done["settled"] = perf() - since
        if (
            done["projected"] is None
            and engines
            and caught_up(found["projector"])
            and not positions.conn.execute(UNPROJECTED).fetchone()[0]
        ):
            done["projected"] = perf() - since
        time.sleep(0.2)
    return done


def check(results: list, name: str, passed: bool, detail: str) -> None:
    results.append({"check": name, "passed": passed, "detail": detail})
    log(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")


def run_checks(
    url: str, kafka: KafkaSettings, accepted: list[int], env, statuses, restarted: list[str]
) -> list:
    """Every order reached the engine once and is settled once, the read model agrees,
    money and shares are conserved, the reconciler finds nothing, no 5xx answer, no
    process of the stack died (supervisord started it again) during the run."""
    results: list = []
    with psycopg.connect(url) as conn:
        events = settled_events(conn, kafka.bootstrap, kafka.events_topic)
        decided = Counter(
            e.order_id
            for e in events
            if e.op in (Op.LIMIT, Op.MARKET)
            and e.type in (EventType.ACCEPTED, EventType.REJECTED)
            and e.reason != Reason.DUPLICATE_ORDER_ID
        )
        stored = {row[0] for row in conn.execute("SELECT order_id FROM orders")}
        lost = set(accepted) - stored
        never = [o for o in stored if not decided[o]]
        twice = [o for o in stored if decided[o] > 1]
        phantom = set(decided) - stored
        check(
            results,
            "every order reached the engine exactly once",
            not (lost or never or twice or phantom) and len(set(accepted)) == len(accepted),
            f"{len(accepted):,} answered 202, {len(stored):,} stored; not stored "
            f"{len(lost)}, never decided {len(never)}, decided twice {len(twice)}, decided "
            f"but not stored {len(phantom)} {sorted(lost | set(never + twice) | phantom)[:5]}",
        )
        findings = find_discrepancies(conn, events)
        pending = conn.execute("SELECT count(*) FROM orders WHERE status = 'PENDING'").fetchone()
        check(
            results,
            "every order settled exactly once",
            not findings and not pending[0],
            f"{len(events):,} settled events against the orders and fills: "
            f"{len(findings)} finding(s), {pending[0]} PENDING "
            + "; ".join(map(str, findings[:3])),
        )
        unprojected = conn.execute(UNPROJECTED).fetchone()[0]
        check(
            results,
            "every order projected",
            not unprojected,
            f"{unprojected} order(s) whose read model differs from the ledger",
        )
        held, funded = conn.execute(CASH).fetchone()
        shares = conn.execute(SHARES).fetchall()
        check(
            results,
            "money conserved to the paisa",
            held == funded and not shares,
            f"cash + fees {held:,} paise, funded {funded:,} (difference {held - funded:,}); "
            f"symbols whose shares differ from those moved in: {shares[:5]}",
        )
    report = subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "service", "reconciler", "--report"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = report.stdout.strip().splitlines() or report.stderr.strip().splitlines()[-5:]
    check(
        results,
        "the reconciler's report is empty",
        report.returncode == 0,
        " | ".join(lines[:8]),
    )
    errors = {s: n for s, n in statuses.items() if s.split()[1].startswith("5")}
    check(results, "no 5xx answer", not errors, f"{errors or 'none'}")
    check(
        results,
        "no process restarted",
        not restarted,
        f"started again by supervisord: {', '.join(restarted) or 'none'}",
    )
    return results


# -- the report -----------------------------------------------------------------------


def cores(seconds: float, cpu: dict[str, float]) -> str:
    return f"{sum(cpu.values()) / seconds:.2f}"


def report(args, phases, load_accepted, idle, whole, lag, caught, sampler_errors) -> dict:
    log(
        f"\n{'phase':6} {'secs':>5} {'offered/s':>9} {'accepted/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'p99.9 ms':>8} {'unanswd':>7}  statuses"
    )
    for p in phases:
        lat, mark = p.latency_ms(), ">" if p.unanswered else " "
        log(
            f"{p.name:6} {p.seconds:5.1f} {p.offered / p.seconds:9,.0f} "
            f"{p.accepted / p.seconds:10,.0f} "
            + " ".join(f"{mark}{v:7.1f}" for v in lat.values())
            + f" {p.unanswered:7,}  "
            + ", ".join(f"{s}: {n:,}" for s, n in sorted(p.statuses.items()))
        )
        for status, body in p.examples.items():
            log(f"{'':8}e.g. {status}: {body}")
    log(
        "(by the requests due in the phase: offered, latency from the scheduled time ('>': "
        "lower bounds, unanswered ones counted at their wait), statuses; accepted/s: 202s "
        "answered within the phase)"
    )

    log(
        f"\n{'consumer':12} {'behind p99':>10} {'max':>8} {'catch-up p99 s':>15} {'max s':>7}"
        f" | {'to row p50 ms':>17} {'p99 ms':>8} {'max ms':>8}"
    )
    for consumer, v in lag["kafka"].items():
        rows = lag["event_to_row"].get(consumer)
        log(
            f"{consumer:12} {v['behind_p99']:10,.0f} {v['behind_max']:8,.0f} "
            f"{v['catch_up_p99_s']:15.2f} {v['catch_up_max_s']:7.2f} | "
            + (
                f"{rows['p50_s'] * 1e3:17,.0f} {rows['p99_s'] * 1e3:8,.0f} "
                f"{rows['max_s'] * 1e3:8,.0f}"
                if rows and rows["rows"]
                else f"{'-':>17}"
            )
        )
    log(
        f"(messages behind the high watermark, all partitions, transaction markers "
        f"included; catch-up: seconds to reach where the end was, to the sampling period "
        f"of {args.sample_every} s; to row: settlement from the OMS taking the order (or "
        f"cancel) to its event's order_events row, the projector from the engine's event "
        f"message to its order_updates row"
        + (f"; samples failed: {dict(sampler_errors)}" if sampler_errors else "")
        + ")"
    )

    idle_s, idle_cpu = idle

    def order(group: str) -> tuple[bool, bool, str]:
        return group == "load generator", group in SHARED, group

    groups = sorted((g for g in whole[1] if g != MACHINE), key=order)
    accepted = len(load_accepted)
    head = " ".join(f"{p.name + ' µs':>10}" for p in phases)
    log(f"\n{'CPU per accepted order':22} {'idle cores':>10} {head} {'whole run':>10}")
    table: dict[str, dict[str, float | None]] = {}
    split = [g for g in groups if g.startswith(BACKENDS + "/")]
    for group in [*sorted([*groups, BACKENDS], key=order), "stack total"]:
        row: dict[str, float | None] = {}
        members = {
            "stack total": [g for g in groups if g != "load generator"],
            BACKENDS: split,
        }.get(group, [group])
        row["idle_cores"] = sum(idle_cpu.get(g, 0) for g in members) / idle_s
        for p in phases:
            spent = sum(p.cpu[1].get(g, 0) for g in members)
            row[p.name] = spent / p.accepted * 1e6 if p.accepted else None
        row["whole"] = sum(whole[1].get(g, 0) for g in members) / max(accepted, 1) * 1e6
        table[group] = row
        label = group.replace(BACKENDS + "/", "  ") + (" (shared)" if group in SHARED else "")
        log(
            f"{label:22} {row['idle_cores']:10.3f} "
            + " ".join(f"{'-' if (v := row[p.name]) is None else f'{v:,.0f}':>10}" for p in phases)
            + f" {row['whole']:10,.0f}"
        )
    log(
        f"(phases: CPU in the phase's window / orders answered 202 in it; whole "
        f"run: from the load's start until every order was settled and projected, "
        f"{whole[0]:.1f} s; idle over {idle_s:.1f} s before the load; the load generator is "
        f"not in the total)"
    )
    stack = [g for g in groups if g != "load generator"]
    busy = {p.name: sum(p.cpu[1].get(g, 0) for g in stack) / p.cpu[0] for p in phases}
    machine = {p.name: p.cpu[1][MACHINE] / p.cpu[0] for p in phases}
    log(
        f"cores busy of {os.cpu_count()}, the stack's (the machine's, everything on it): "
        + ", ".join(f"{p.name} {busy[p.name]:.2f} ({machine[p.name]:.2f})" for p in phases)
    )
    for key, seconds in caught.items():
        log(
            f"{key:9}: "
            + (
                f"{seconds:.1f} s after the load's end"
                if seconds is not None
                else f"NOT within {args.settle_timeout:.0f} s"
            )
        )
    return {
        "phases": [
            {
                "phase": p.name,
                "seconds": p.seconds,
                "offered_per_s": p.offered / p.seconds,
                "accepted_per_s": p.accepted / p.seconds,
                **{f"{k}_ms": v for k, v in p.latency_ms().items()},
                "unanswered": p.unanswered,
                "statuses": dict(p.statuses),
            }
            for p in phases
        ],
        "lag": lag,
        "cpu_us_per_order": table,
        "cores_busy": busy,
        "machine_cores_busy": machine,
        "caught_up_s": caught,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--peak-rate", type=float, default=1000.0, help="orders/s at the peak")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--connections", type=int, default=128, help="keep-alive connections")
    parser.add_argument("--cancels", type=float, default=0.1, help="share of the requests")
    parser.add_argument("--oms", type=int, help="OMS processes (stack.sh's default if unset)")
    parser.add_argument("--shards", type=int, default=2, help="engine daemons")
    parser.add_argument("--drain", type=float, default=10.0, help="s to wait for answers")
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--idle", type=float, default=5.0, help="s of idle CPU measured")
    parser.add_argument("--sample-every", type=float, default=0.5, help="s between lag reads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the numbers to this file")
    parser.add_argument("--keep-logs", help="copy the stack's logs into this folder")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 10 s at 60/s peak")
    if parser.parse_known_args()[0].quick:  # new defaults; explicit flags win
        parser.set_defaults(
            duration=10.0,
            peak_rate=60.0,
            users=40,
            connections=16,
            drain=5.0,
            settle_timeout=60.0,
            idle=2.0,
            sample_every=0.25,
        )
    args = parser.parse_args()

    log(
        "== brokercore: a market open, end to end (scripts/stack/stack.sh) ==\n"
        + machine_line("the whole stack, Postgres, Kafka, Redis")
    )
    run_id = uuid.uuid4().hex[:10]
    tmp = tempfile.TemporaryDirectory(prefix="bench-open-")
    os.chmod(tmp.name, 0o755)  # the edge's workers (www-data, under root) read their folder
    kafka = KafkaSettings(KAFKA, f"bench-open-{run_id}-", args.shards)
    server = dev_server()
    with open(os.path.join(REPO, "config/instruments.toml"), "rb") as f:
        instruments = tomllib.load(f)["instrument"]
    dbname = stack = cpu = positions = catcher = sampler = None
    code = 1
    interrupt_on_sigterm()
    try:
        t0 = time.monotonic()
        dbname, url = create_database(server, "bench_open")
        seed_accounts(url, [i["symbol"] for i in instruments], args.users)
        env = {
            "BROKERCORE_DATABASE_URL": url,
            "BROKERCORE_TOPIC_PREFIX": kafka.topic_prefix,
            "BROKERCORE_SHARDS": str(args.shards),
            "BROKERCORE_CALENDAR": "always-open",
            "BROKERCORE_REDIS_URL": REDIS,
            "BROKERCORE_REDIS_PREFIX": f"bench-open-{run_id}:",
            "BROKERCORE_RATE_LIMIT_BURST": "100000",
            "BROKERCORE_RATE_LIMIT_PER_SECOND": "100000",
            "BROKERCORE_STACK_WAIT": "300",
        }
        stack = Stack(os.path.join(tmp.name, "stack"), env, args.oms)
        stack.up()
        programs = stack.programs()
        log(
            f"set-up  : {time.monotonic() - t0:.1f} s; database {dbname}, Kafka prefix "
            f"{kafka.topic_prefix}, {args.users} users; orders to 127.0.0.1:{stack.port} "
            f"({'the edge' if stack.edge else 'the OMS: stack.sh has no edge yet'}); "
            f"processes: {', '.join(sorted(programs))}"
        )
        own = make_conninfo(url, application_name=BENCH_APP)
        cpu = Cpu(stack, own, dbname)
        positions = Positions(own, kafka)
        due, spans = schedule(args.duration, args.peak_rate)
        phases = [Phase(name, a, b) for name, a, b in spans]
        orders = Orders(instruments, args.users, args, stack.port, run_id)
        log(
            f"load    : {len(due):,} requests over {args.duration:.0f} s, peak "
            f"{args.peak_rate:,.0f}/s, {args.connections} connections, {args.cancels:.0%} "
            f"cancels, hot symbol {instruments[0]['symbol']} at 10x"
        )
        idle_start = cpu.snapshot()
        time.sleep(args.idle)
        idle_spent = Cpu.spent(idle_start, cpu.snapshot())
        sampler = LagSampler(positions, args.sample_every)
        sampler.start()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            load = runner.run(run_load(args, stack.port, orders, cpu, phases, due))
        snaps = load["snapshots"]
        for i, phase in enumerate(phases):
            phase.cpu = Cpu.spent(snaps[i], snaps[i + 1])
        catcher = Positions(own, kafka)
        caught = wait_caught_up(catcher, load["load_end"], args.settle_timeout)
        whole = Cpu.spent(snaps[0], cpu.snapshot())
        sampler.stop()
        lag = {"kafka": sampler.summary(), "event_to_row": event_to_row(catcher.conn)}
        numbers = report(
            args,
            phases,
            load["accepted"],
            idle_spent,
            whole,
            lag,
            caught,
            sampler.errors,
        )
        log("")
        statuses = sum((p.statuses for p in phases), Counter())
        results = run_checks(own, kafka, load["accepted"], stack.env, statuses, cpu.restarted())
        code = 0 if all(r["passed"] for r in results) else 1
        if args.json:
            config = {k: v for k, v in vars(args).items() if k not in ("json", "keep_logs")}
            config.update(edge=stack.edge, processes=sorted(programs))
            with open(args.json, "w") as f:
                json.dump({"config": config, **numbers, "checks": results}, f, indent=2)
        if code:
            log(f"\nthe stack's logs:\n{stack.tails()}")
    finally:
        if sampler is not None:
            sampler.stop()
        for closing in (positions, catcher, cpu):
            if closing is not None:
                closing.close()
        if stack is not None:
            if args.keep_logs:
                subprocess.run(["cp", "-r", f"{stack.state}/logs", args.keep_logs], check=False)
            stack.down()
        clean_up(server, dbname, kafka, f"bench-open-{run_id}:")
        tmp.cleanup()
    return code


def clean_up(server: str, dbname: str | None, kafka: KafkaSettings, redis_prefix: str) -> None:
    """The database, the run's topics and consumer groups, its Redis keys."""
    try:
        if dbname is not None:
            drop_database(server, dbname)
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        topics = [
            t for t in admin.list_topics(timeout=30).topics if t.startswith(kafka.topic_prefix)
        ]
        for future in (admin.delete_topics(topics, request_timeout=30) if topics else {}).values():
            future.result(30)
        listed = admin.list_consumer_groups(request_timeout=30).result(30).valid
        groups = [g.group_id for g in listed if g.group_id.startswith(kafka.topic_prefix)]
        for future in (admin.delete_consumer_groups(groups) if groups else {}).values():
            future.result(30)
        keys = redis.Redis.from_url(REDIS)
        for key in keys.scan_iter(f"{redis_prefix}*", count=1000):
            keys.delete(key)
        keys.close()
    except Exception as e:  # noqa: BLE001 - reported, the run is over
        log(f"(clean-up failed: {e!r})")


if __name__ == "__main__":
    sys.exit(main())
