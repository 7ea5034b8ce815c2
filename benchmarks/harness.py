"""What the HTTP benchmarks share: a minimal keep-alive HTTP/1.1 client (httpx costs
~40x the CPU on a machine shared with the server), uvicorn started as a subprocess on a
free port, throw-away databases with funded accounts, instruments that trade at any
hour, and the CPU time of processes from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid

import httptools
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from brokercore.db.migrations import apply_migrations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASH_PAISE = 10**14  # no buy ever runs out of money
HOLDING = 10**9  # shares of every symbol a holder has


class _Answer(asyncio.Protocol):
    """One TCP connection: feeds httptools (uvicorn's parser), resolves the waiter."""

    def __init__(self):
        self.parser, self.waiter, self.body = httptools.HttpResponseParser(self), None, []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._resolve(exc=RuntimeError(f"bad HTTP answer: {e!r}"))

    def connection_lost(self, exc) -> None:
        self.lost = True
        self._resolve(exc=ConnectionError(f"connection lost: {exc!r}"))

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self._resolve((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def _resolve(self, result=None, exc=None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc) if exc else waiter.set_result(result)


class Connection:
    """A keep-alive HTTP/1.1 connection, one request at a time; reconnects after an error."""

    def __init__(self, port: int):
        self.port, self.transport, self.protocol = port, None, None

    async def open(self) -> Connection:
        self.transport, self.protocol = await asyncio.get_running_loop().create_connection(
            _Answer, "127.0.0.1", self.port
        )
        return self

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Write one whole request (head and body); (status, body) of the answer."""
        if self.protocol is None or self.protocol.lost:
            await self.open()
        self.protocol.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.protocol.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = self.protocol = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    name: str, env: dict, log_file, timeout: float = 60.0
) -> tuple[subprocess.Popen, int]:
    """``brokercore service NAME`` (uvicorn with uvloop, httptools) on a free loopback
    port, in its own session (a Ctrl-C reaches the benchmark, which stops it); returns
    once it listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "brokercore.cli", "service", name, "--port", str(port)],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"service {name} did not start (exit code {process.poll()})")


def stop(process: subprocess.Popen | None) -> int | None:
    """SIGTERM (a graceful shutdown), SIGKILL after 15 s; the exit code."""
    if process is None:
        return None
    process.terminate()
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


def dev_server() -> str:
    """The URL of the development Postgres (scripts/postgres/postgres.sh)."""
    return subprocess.run(
        [f"{REPO}/scripts/postgres/postgres.sh", "url"], check=True, capture_output=True, text=True
    ).stdout.strip()


def create_database(server: str, prefix: str = "bench") -> tuple[str, str]:
    """A fresh, migrated database on the server: (name, url)."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server, dbname=name)
    apply_migrations(url)
    return name, url


def interrupt_on_sigterm() -> None:
    """SIGTERM as Ctrl-C, and Ctrl-C honoured even in a background job: the benchmark's
    clean-up (servers stopped, database dropped) runs either way."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


def proc_stat(pid) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: [1] = ppid, [11] + [12] = CPU ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return []


def postgres_pids(postmaster: str) -> list[int]:
    """The postmaster and its children (backends, WAL writer ...); none if unknown ("")."""
    return [
        int(pid)
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if pid == postmaster or proc_stat(pid)[1:2] == [postmaster]
    ]


def postmaster_of(url: str) -> str:
    """The pid of the server's postmaster (the parent of a backend), as a string."""
    with psycopg.connect(url) as conn:
        return "".join(proc_stat(conn.info.backend_pid)[1:2])


def cpu_ticks(groups: dict[str, list[int]]) -> dict[str, int]:
    return {
        k: sum(int(s[11]) + int(s[12]) for s in map(proc_stat, pids) if s)
        for k, pids in groups.items()
    }


def seed_accounts(url: str, symbols: list[str], users: int) -> None:
    """``users`` accounts, the first half of them holding every symbol (only they sell).
    Their cash and shares are journalled in ``funding`` (and the shares in the read
    model) as brokercore.broker.funding would, so the reconciler's conservation checks
    hold; set-based, as funding one account at a time costs seconds."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO accounts (user_id, cash, kyc_status) SELECT 'u' || g, %s, 'VERIFIED' "
            "FROM generate_series(0, %s - 1) g",
            (CASH_PAISE, users),
        )
        conn.execute(
            "INSERT INTO funding (account_id, kind, amount, reference) "
            "SELECT account_id, 'DEPOSIT', cash, 'seed-' || user_id FROM accounts"
        )
        holders = "FROM accounts a CROSS JOIN unnest(%s::text[]) s "
        holders += "WHERE substr(a.user_id, 2)::int < %s"
        held = (symbols, max(1, users // 2))
        conn.execute(
            f"INSERT INTO positions (account_id, symbol, quantity) "
            f"SELECT a.account_id, s, {HOLDING} {holders}",
            held,
        )
        conn.execute(
            f"INSERT INTO funding (account_id, kind, symbol, quantity) "
            f"SELECT a.account_id, 'SHARES_IN', s, {HOLDING} {holders}",
            held,
        )
        conn.execute(
            f"INSERT INTO read_model.positions (user_id, symbol, quantity) "
            f"SELECT a.user_id, s, {HOLDING} {holders}",
            held,
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def process_trees(pids: list[int]) -> dict[int, list[int]]:
    """Each process with its descendants (nginx's workers, a wrapper's child), from one
    read of /proc."""
    children: dict[int, list[int]] = {}
    for other in filter(str.isdigit, os.listdir("/proc")):
        if parent := proc_stat(other)[1:2]:
            children.setdefault(int(parent[0]), []).append(int(other))
    trees = {}
    for pid in pids:
        tree, todo = [], [pid]
        while todo:
            tree.append(todo.pop())
            todo += children.get(tree[-1], [])
        trees[pid] = tree
    return trees


def pid_in(path: str) -> list[int]:
    """The pid a server's pid file names (its first line), or none."""
    try:
        with open(path) as f:
            return [int(f.readline())]
    except (OSError, ValueError):
        return []


def write_instruments(path: str) -> list[dict]:
    """config/instruments.toml's instruments under an always-open session (their own sessions
    dropped), so that the benchmark runs at any hour; 23:59 UTC still gets 422s."""
    with open(os.path.join(REPO, "config/instruments.toml"), "rb") as f:
        instruments = tomllib.load(f)["instrument"]
    lines = [
        '[session]\ntimezone = "UTC"\nopen = "00:00"\nclose = "23:59"',
        "weekdays = [1, 2, 3, 4, 5, 6, 7]\nholidays = []\n",
    ]
    for instrument in instruments:  # JSON scalars are valid TOML (true, 1, "0.05")
        lines.append("[[instrument]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in instrument.items() if k != "session"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return instruments
