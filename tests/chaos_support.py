"""A whole private platform for the chaos test (tests/integration/test_chaos.py): servers, services,
a load of HTTP clients, and the checks that say what did not recover.

The servers are private instances (tests/private_servers.py: own ports, own state under
one temp folder) started by the project's scripts, never the shared ones other tests
use. The services run as real subprocesses, started as scripts/stack/stack.sh starts
them, each logging to its own file, so that kill -9 means what it says and the test can
play the supervisor.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Consumer, TopicPartition

from brokercore.broker.funding import open_account
from brokercore.broker.market import load_market
from brokercore.config import DEV_JWT_SECRET
from brokercore.consumers.reconcile import check_invariants
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.kafka.topics import partition_of
from brokercore.notify.consumer import notifier_group_id
from private_servers import PrivateKafka, PrivatePostgres, PrivateRedis, free_port

REPO = Path(__file__).resolve().parents[1]
JWT = JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET)


NOISE = re.compile(r"\|FAIL\|.*Connection refused")
"""librdkafka's connection refusals while a broker is down: they say nothing of recovery."""


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join([line[:300] for line in text.splitlines() if not NOISE.search(line)][-lines:])


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- servers ---------------------------------------------------------------------------------


class Servers:
    """Private Postgres, Redis and Kafka, each under ``root`` and on ports of its own;
    ``env`` holds the scripts' settings of all three."""

    def __init__(self, root: Path):
        self.root = root
        root.chmod(0o755)  # Postgres runs as its own OS user under root
        self.postgres = PrivatePostgres(root / "pg")
        self.redis = PrivateRedis(root / "redis")
        self.kafka = PrivateKafka(root / "kafka")
        self.env = self.postgres.env | self.redis.env | self.kafka.env
        self.database_url, self.redis_url = self.postgres.url, self.redis.url
        self.bootstrap = self.kafka.bootstrap

    def start(self) -> None:
        for server in (self.postgres, self.redis, self.kafka):
            server.start()

    def keep_logs(self, folder: Path) -> None:
        """Copy the servers' own logs into ``folder`` (their state is removed)."""
        folder.mkdir(parents=True, exist_ok=True)
        for log in (
            "kafka/logs/server.log",
            "kafka/logs/stdout.log",
            "pg/postgres.log",
            "redis/redis.log",
        ):
            if (self.root / log).exists():
                shutil.copy(self.root / log, folder / log.replace("/", "-"))

    def stop(self) -> None:
        for server in (self.kafka, self.redis, self.postgres):
            try:
                server.stop()
            except (AssertionError, subprocess.TimeoutExpired) as e:
                print(f"chaos: stopping {server.server}: {e}", file=sys.stderr)

    def restart_redis(self) -> None:
        """kill -9 and start again: Redis keeps nothing, so every key is gone."""
        self.redis.kill()
        self.redis.start()

    def restart_kafka(self, down_for: float) -> None:
        """kill -9 the broker, leave it down ``down_for`` seconds, start it again."""
        self.kafka.kill()
        time.sleep(down_for)
        self.kafka.start()


# --- services --------------------------------------------------------------------------------


class Service:
    """One long-running process of the platform, its output in ``log``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict,
        log: Path,
        ready: str | None,
        port: int | None = None,
    ):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.ready, self.port = ready, port  # a log line, or an HTTP port, to wait for
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None and alive(self.pid)

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- chaos: start #{self.starts} ---\n".encode())
            out.flush()
            self._mark = out.tell()
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) at "
                    f"start:\n{tail(self.log, 30)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout} s:\n{tail(self.log, 30)}")
            time.sleep(0.1)

    def is_ready(self) -> bool:
        if self.port is not None:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2).status_code > 0
            except httpx.HTTPError:
                return False
        if self.ready is None:
            return True
        with open(self.log, "rb") as log:
            log.seek(self._mark)
            return self.ready.encode() in log.read()

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def describe(self) -> str:
        if self.running():
            return f"{self.name} running (pid {self.pid})"
        code = None if self.process is None else self.process.returncode
        return f"{self.name} DEAD (exit {code}); last lines of {self.log}:\n{tail(self.log)}"


@dataclass(frozen=True)
class Symbol:
    name: str
    shard: int
    mid: Decimal  # rupees
    tick: Decimal


class Platform:
    """Everything `make up` runs, on ``servers``: migrations, funded accounts, one engine
    daemon per shard, the OMS and query APIs, settlement, projector, notifier, reconciler."""

    def __init__(self, servers: Servers, root: Path, users: int, shards: int = 2):
        self.servers, self.root, self.shards = servers, root, shards
        (root / "logs").mkdir(exist_ok=True)
        self.oms_port, self.query_port = free_port(), free_port()
        self.env = (
            os.environ
            | servers.env
            | {
                "BROKERCORE_DEV_MODE": "1",
                "BROKERCORE_SHARDS": str(shards),
                "BROKERCORE_DATABASE_URL": servers.database_url,
                "BROKERCORE_REDIS_URL": servers.redis_url,
                "BROKERCORE_KAFKA_BOOTSTRAP": servers.bootstrap,
                "BROKERCORE_CALENDAR": "always-open",
            }
        )  # as `make up`: trades at any hour
        for name in (
            "BROKERCORE_TOPIC_PREFIX",
            "BROKERCORE_REDIS_PREFIX",
            "BROKERCORE_INSTRUMENTS",
        ):
            self.env.pop(name, None)
        self.users = [f"chaos{i:02d}" for i in range(users)]
        self.symbols = self._symbols()
        py = sys.executable

        def api(name, module, port):
            return Service(
                name,
                [py, "-m", "brokercore.cli", "service", module, "--port", str(port)],
                self.env,
                self._log(name),
                None,
                port,
            )

        self.services: dict[str, Service] = {}
        for shard in range(shards):
            self._add(
                Service(
                    f"engine-{shard}",
                    [
                        py,
                        "-m",
                        "brokercore.cli",
                        "engine",
                        "--shard",
                        str(shard),
                        "--shards",
                        str(shards),
                    ],
                    self.env,
                    self._log(f"engine-{shard}"),
                    "active from",
                )
            )
        self._add(api("oms", "oms", self.oms_port))
        self._add(api("query", "query", self.query_port))
        for name in ("settlement", "projector"):
            self._add(
                Service(
                    name,
                    [py, "-m", "brokercore.cli", "service", name],
                    self.env,
                    self._log(name),
                    "from offsets",
                )
            )
        self._add(
            Service(
                "notifier",
                [py, "-m", "brokercore.cli", "service", "notifier"],
                self.env,
                self._log("notifier"),
                None,
            )
        )
        # Rounds every 5 s, not 30: a round that dies of a fault shows within the test.
        self._add(
            Service(
                "reconciler",
                [py, "-m", "brokercore.cli", "service", "reconciler", "--every", "5"],
                self.env,
                self._log("reconciler"),
                None,
            )
        )

    def _add(self, service: Service) -> None:
        self.services[service.name] = service

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _symbols(self) -> list[Symbol]:
        """Two symbols of each shard, traded around the middle of their price band."""
        chosen, per_shard = [], Counter()
        for i in load_market(REPO / "config/instruments.toml").values():
            shard = partition_of(i.symbol, self.shards)
            if per_shard[shard] < 2:
                per_shard[shard] += 1
                mid = ((i.band_low + i.band_high) / 2 / i.tick_size).to_integral_value()
                chosen.append(Symbol(i.symbol, shard, mid * i.tick_size, i.tick_size))
        return chosen

    def prepare(self) -> None:
        """Migrations and the funded accounts (as `make up` runs the migrations)."""
        subprocess.run(
            [sys.executable, "-m", "brokercore.db.migrations"],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        fund_accounts(self.servers.database_url, self.users, [s.name for s in self.symbols])

    def start(self) -> list[str]:
        """Engines first (they create the topics), then the rest; each waited for. One
        that dies at start is started again, up to twice, as a supervisor would: returns
        what had to be restarted (a failure of its own, reported by the test)."""
        engines = [s for s in self.services.values() if s.name.startswith("engine-")]
        others = [s for s in self.services.values() if s not in engines]
        restarted = []
        for group in (engines, others):
            for service in group:
                service.start()
            for service in group:
                for attempt in range(3):
                    try:
                        service.wait_ready()
                        break
                    except AssertionError as e:
                        if attempt == 2:
                            raise
                        restarted.append(
                            f"{service.name} failed at start and was started again: {e}"
                        )
                        service.stop()
                        service.start()
        return restarted

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    def pids(self) -> dict[str, int | None]:
        return {name: s.pid for name, s in self.services.items()}

    def connect(self):
        return psycopg.connect(self.servers.database_url, connect_timeout=5)


# Each account's starting cash and shares: far more than the load can ever use.
CASH = 10**12  # paise
SHARES = 1_000_000


def fund_accounts(url: str, users: list[str], symbols: list[str]) -> None:
    """Accounts with cash and shares, through the funding journal (brokercore.broker.funding)."""
    with psycopg.connect(url) as conn:
        for user in users:
            open_account(conn, user, cash=CASH, shares={symbol: SHARES for symbol in symbols})


# --- the load --------------------------------------------------------------------------------


@dataclass
class Placed:
    """One order a client meant to place: its key, and the id it was given (if any)."""

    key: str
    user: str
    symbol: str
    sent_at: float
    order_id: int | None = None
    accepted_at: float | None = None
    refused: str | None = None
    attempts: int = 0
    ids_seen: set = field(default_factory=set)


class Load:
    """``clients`` concurrent HTTP clients, one per user, placing crossing LIMIT buys and
    sells (and some cancels) at ``rate`` orders/s in all. Each request is retried with
    the same idempotency key on a 5xx, a 429, a timeout or a connection error, as a real
    client would, until it gets a 202 or a refusal."""

    def __init__(self, platform: Platform, rate: float, seed: int = 11):
        self.platform, self.rate = platform, rate
        self.url = f"http://127.0.0.1:{platform.oms_port}"
        self.rng = random.Random(seed)
        self.placed: list[Placed] = []
        self.answers: list[tuple[float, str]] = []  # (time, kind), every attempt
        self.errors: list[str] = []  # clients that crashed (a bug here)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """No new requests; those in flight are retried until answered, up to ``timeout``."""
        self._stop.set()
        self._give_up_at = time.monotonic() + timeout
        self._thread.join(timeout + 30)

    async def _run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.url, timeout=10.0, limits=httpx.Limits(max_connections=100)
        ) as http:
            await asyncio.gather(
                *(
                    self._client(http, user, random.Random(self.rng.random()))
                    for user in self.platform.users
                )
            )

    async def _client(self, http: httpx.AsyncClient, user: str, rng: random.Random) -> None:
        try:
            await self._orders(http, user, rng)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"client {user}: {e!r}")

    async def _orders(self, http: httpx.AsyncClient, user: str, rng: random.Random) -> None:
        headers = {"Authorization": f"Bearer {mint_token(user, JWT, ttl=6 * 3600)}"}
        mine: list[Placed] = []
        per_client = self.rate / len(self.platform.users)
        while not self._stop.is_set():
            await asyncio.sleep(rng.expovariate(per_client))
            accepted = [p for p in mine[-50:] if p.order_id is not None]
            if accepted and rng.random() < 0.1:
                order = rng.choice(accepted).order_id
                await self._send(http, "DELETE", f"/api/v1/orders/{order}", headers, None)
                continue
            symbol = rng.choice(self.platform.symbols)
            side = rng.choice(("BUY", "SELL"))
            price = symbol.mid + rng.randint(-5, 5) * symbol.tick
            placed = Placed(uuid.uuid4().hex, user, symbol.name, time.monotonic())
            self.placed.append(placed)
            mine.append(placed)
            body = {
                "symbol": symbol.name,
                "side": side,
                "type": "LIMIT",
                "quantity": rng.randint(1, 20),
                "price": str(price),
                "timeInForce": "GTC",
                "idempotencyKey": placed.key,
            }
            await self._send(http, "POST", "/api/v1/orders", headers, body, placed)

    async def _send(
        self,
        http,
        method: str,
        path: str,
        headers: dict,
        body: dict | None,
        placed: Placed | None = None,
    ) -> None:
        delay = 0.1
        while True:
            if placed is not None:
                placed.attempts += 1
            try:
                response = await http.request(method, path, headers=headers, json=body)
                status = response.status_code
            except httpx.TimeoutException:
                status, response = "timeout", None
            except httpx.TransportError:
                status, response = "connection", None
            now = time.monotonic()
            kind = str(status)
            if status == 202:
                if placed is not None:
                    placed.order_id = response.json()["orderId"]
                    placed.ids_seen.add(placed.order_id)
                    placed.accepted_at = placed.accepted_at or now
                self.answers.append((now, kind))
                return
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                if placed is not None:
                    placed.refused = f"{status} {_code(response)}"
                self.answers.append((now, f"{kind} {_code(response)}"))
                return
            self.answers.append((now, kind))
            if self._stop.is_set() and time.monotonic() > getattr(self, "_give_up_at", 1e18):
                return
            retry_after = _retry_after(response)
            await asyncio.sleep(min(2.0, retry_after if retry_after is not None else delay))
            delay = min(2.0, delay * 2)

    # what happened, for the checks and the summary

    def accepted(self, before: float | None = None) -> dict[int, Placed]:
        return {
            p.order_id: p
            for p in list(self.placed)
            if p.order_id is not None and (before is None or p.accepted_at <= before)
        }

    def count(self, start: float, end: float, kinds=lambda kind: True) -> int:
        return sum(1 for t, kind in list(self.answers) if start <= t <= end and kinds(kind))


def _code(response: httpx.Response | None) -> str:
    try:
        return response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not the JSON error shape
        return "(not the JSON error shape)"


def _retry_after(response: httpx.Response | None) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def is_5xx(kind: str) -> bool:
    return kind[:1] == "5"


# --- checks ----------------------------------------------------------------------------------


def pending(platform: Platform, ids: list[int]) -> list[tuple]:
    """(order id, symbol) of the given orders that the engine has not answered yet."""
    with platform.connect() as conn:
        return conn.execute(
            "SELECT order_id, symbol FROM orders WHERE status = 'PENDING' "
            "AND order_id = ANY(%s) ORDER BY order_id",
            (ids,),
        ).fetchall()


def missing(platform: Platform, ids: list[int]) -> list[int]:
    with platform.connect() as conn:
        found = {
            row[0]
            for row in conn.execute("SELECT order_id FROM orders WHERE order_id = ANY(%s)", (ids,))
        }
    return sorted(set(ids) - found)


def end_offsets(platform: Platform) -> dict[int, int]:
    """The events topic's high watermark per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": platform.servers.bootstrap,
            "group.id": f"chaos-probe-{uuid.uuid4().hex}",
        }
    )
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition("events", p), timeout=5)[1]
            for p in range(platform.shards)
        }
    finally:
        consumer.close()


def consumer_positions(platform: Platform) -> dict[str, dict[int, int]]:
    """Where each events consumer stands: settlement and projector keep their offsets in
    Postgres, the notifier in its Kafka group."""
    with platform.connect() as conn:
        rows = conn.execute(
            "SELECT consumer, partition, next_offset FROM consumer_offsets WHERE topic = 'events'"
        ).fetchall()
    positions: dict[str, dict[int, int]] = defaultdict(dict)
    for consumer, partition, offset in rows:
        positions[consumer][partition] = offset
    probe = Consumer(
        {"bootstrap.servers": platform.servers.bootstrap, "group.id": notifier_group_id("")}
    )
    try:
        for tp in probe.committed(
            [TopicPartition("events", p) for p in range(platform.shards)], timeout=5
        ):
            positions["notifier"][tp.partition] = tp.offset
    finally:
        probe.close()
    return positions


def lagging(platform: Platform, ends: dict[int, int]) -> list[str]:
    """The consumers (and partitions) not yet past ``ends``."""
    positions = consumer_positions(platform)
    return [
        f"{name} partition {p} at {positions.get(name, {}).get(p)} < {end}"
        for name in ("settlement", "projector", "notifier")
        for p, end in ends.items()
        if end > 0 and positions.get(name, {}).get(p, -1) < end
    ]


TOTALS = {
    # The reconciler (brokercore.consumers.reconcile.check_invariants) checks each account against
    # its funding and fills; these check what that rests on, over all accounts at once.
    "cash + fee income not constant (paise)": (
        "SELECT total FROM (SELECT (SELECT sum(cash) FROM accounts) + (SELECT "
        "coalesce(sum(amount), 0) FROM fee_income) AS total) t WHERE total <> %(cash)s"
    ),
    "shares of a symbol not constant": (
        "SELECT symbol, sum(quantity) FROM positions GROUP BY symbol "
        "HAVING sum(quantity) <> %(shares)s"
    ),
    "a trade without exactly one buy and one sell fill of the same size and price": (
        "SELECT trade_id, array_agg(side), array_agg(quantity) FROM fills GROUP BY trade_id "
        "HAVING count(*) <> 2 OR count(DISTINCT side) <> 2 OR count(DISTINCT quantity) <> 1 "
        "OR count(DISTINCT price) <> 1"
    ),
    "a status that does not match the filled quantity": (
        "SELECT order_id, status, quantity, filled_quantity FROM orders WHERE "
        "(status = 'FILLED') <> (filled_quantity = quantity) "
        "OR (status = 'PARTIALLY_FILLED' AND filled_quantity = 0) "
        "OR (status IN ('OPEN', 'PENDING') AND filled_quantity <> 0)"
    ),
}
SESSIONS = {
    symbol: instrument.session
    for symbol, instrument in load_market(REPO / "config/instruments.toml", "always-open").items()
}


def broken_invariants(platform: Platform) -> list[str]:
    """The reconciler's invariant findings and the broken TOTALS, with their first rows,
    all read in one snapshot (so they hold under load too)."""
    params = {"cash": CASH * len(platform.users), "shares": SHARES * len(platform.users)}
    found = []
    with platform.connect() as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        findings = check_invariants(conn, SESSIONS, datetime.now(UTC))
        for kind, n in Counter(f.kind for f in findings).items():
            found.append(
                f"{kind}: {n} finding(s), e.g. {[str(f) for f in findings if f.kind == kind][:3]}"
            )
        for name, query in TOTALS.items():
            rows = conn.execute(query, params).fetchall()
            if rows:
                found.append(f"{name}: {len(rows)} row(s), e.g. {rows[:5]}")
        conn.execute("COMMIT")
    return found


def read_model_differences(platform: Platform) -> list[str]:
    """Where the projector's read model disagrees with the ledger (checked at rest)."""
    queries = {
        "read_model.orders differs from orders": (
            "SELECT o.order_id, o.status, o.filled_quantity, r.status, r.filled_quantity "
            "FROM orders o LEFT JOIN read_model.orders r USING (order_id) "
            "WHERE r.order_id IS NULL OR (o.status, o.filled_quantity) "
            "<> (r.status, r.filled_quantity)"
        ),
        "read_model.positions differs from positions": (
            "SELECT a.user_id, p.symbol, p.quantity, r.quantity FROM positions p "
            "JOIN accounts a USING (account_id) LEFT JOIN read_model.positions r "
            "ON r.user_id = a.user_id AND r.symbol = p.symbol "
            "WHERE r.quantity IS DISTINCT FROM p.quantity"
        ),
    }
    found = []
    with platform.connect() as conn:
        for name, query in queries.items():
            rows = conn.execute(query).fetchall()
            if rows:
                found.append(f"{name}: {len(rows)} row(s), e.g. {rows[:5]}")
    return found


def reconciler_report(platform: Platform) -> tuple[int, str]:
    """`brokercore service reconciler --report` on the platform: exit code and output."""
    done = subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "service", "reconciler", "--report"],
        cwd=REPO,
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def http_problems(platform: Platform) -> list[str]:
    """The HTTP services answer (JSON, not 5xx) a request of a funded user."""
    headers = {"Authorization": f"Bearer {mint_token(platform.users[0], JWT)}"}
    probes = {
        "oms": (
            "DELETE",
            f"http://127.0.0.1:{platform.oms_port}/api/v1/orders/999999999999",
        ),  # no such order: a 404
        "query": ("GET", f"http://127.0.0.1:{platform.query_port}/api/v1/portfolio"),
    }
    found = []
    for name, (method, url) in probes.items():
        try:
            status = httpx.request(method, url, headers=headers, timeout=10).status_code
        except httpx.HTTPError as e:
            found.append(f"{name} does not answer HTTP: {e!r}")
            continue
        if status >= 500:
            found.append(f"{name} answered {status} to {method} {url}")
    return found


def log_errors(path: Path, since: int, limit: int = 8) -> list[str]:
    """The distinct error lines written to a log after byte ``since``, for the report
    (numbers masked to tell them apart; NOISE left out)."""
    with open(path, "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    seen, lines = set(), []
    for line in text.splitlines():
        if not re.search(
            r"Error|Exception|Traceback|lost|fenced|failed|FATAL|CRITICAL", line
        ) or NOISE.search(line):
            continue
        shape = re.sub(r"\d+", "#", line)
        if shape not in seen:
            seen.add(shape)
            lines.append(line[:300])
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
