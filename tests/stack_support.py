"""The development stack (`make up`: scripts/stack/stack.sh) run by a test on ports and
state folders of its own, so that it never touches the shared servers other tests use
(Postgres 15432, Redis 16379, Kafka 19092, the edge 8080, and .postgres/.redis/.kafka/
.stack/.edge)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from oms_support import auth
from private_servers import free_port

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "scripts/stack/stack.sh"
STATE_DIRS = (".kafka", ".postgres", ".postgres-replica", ".redis", ".stack", ".edge")
# BROKERCORE_* settings of the caller that would point the stack elsewhere.
INHERITED = (
    "BROKERCORE_DATABASE_URL",
    "BROKERCORE_REPLICA_URL",
    "BROKERCORE_REDIS_URL",
    "BROKERCORE_KAFKA_BOOTSTRAP",
    "BROKERCORE_TOPIC_PREFIX",
    "BROKERCORE_REDIS_PREFIX",
    "BROKERCORE_CALENDAR",
    "BROKERCORE_DAY",
    "BROKERCORE_DAY_SECONDS",
    "BROKERCORE_SHARDS",
    "BROKERCORE_PUSH_URL",
    "BROKERCORE_OMS_PROCESSES",
    "BROKERCORE_QUERY_PROCESSES",
    "BROKERCORE_WS_PROCESSES",
    "BROKERCORE_EDGE_OMS",
    "BROKERCORE_EDGE_QUERY",
    "BROKERCORE_EDGE_WS",
    "BROKERCORE_EDGE_NOTIFY",
)


class PrivateStack:
    """stack.sh up/down/status under a temporary folder and on free ports: the API
    processes (two of each kind) on base..base+7 (scripts/lib/ports.sh), the edge base+8,
    Postgres base+9, Redis base+10, Kafka base+11 (its controller base+12), the Postgres
    replica base+13; its processes
    under a supervisord of its own (socket in the temporary folder). ``edge`` is the edge's
    URL, ``oms`` and ``query`` those of the first OMS and query processes."""

    def __init__(self) -> None:
        # Postgres runs as the `postgres` OS user under root: the folder must be searchable.
        self.root = Path(tempfile.mkdtemp(prefix="brokercore-stack-"))
        self.root.chmod(0o755)
        self.base = free_port(span=42)  # the accounts and funds APIs: base+40, base+41
        self.env = {k: v for k, v in os.environ.items() if k not in INHERITED} | {
            "BROKERCORE_STACK_STATE": str(self.root / ".stack"),
            "BROKERCORE_PORT_BASE": str(self.base),
            "BROKERCORE_EDGE_PORT": str(self.base + 8),
            "BROKERCORE_EDGE_STATE": str(self.root / ".edge"),
            "BROKERCORE_PG_PORT": str(self.base + 9),
            "BROKERCORE_PG_STATE": str(self.root / ".postgres"),
            "BROKERCORE_PG_REPLICA_PORT": str(self.base + 13),
            "BROKERCORE_PG_REPLICA_STATE": str(self.root / ".postgres-replica"),
            "BROKERCORE_REDIS_PORT": str(self.base + 10),
            "BROKERCORE_REDIS_STATE": str(self.root / ".redis"),
            "BROKERCORE_KAFKA_PORT": str(self.base + 11),
            "BROKERCORE_KAFKA_STATE": str(self.root / ".kafka"),
            # Also set here, so that a stack.sh that ignores the Kafka port (the old one)
            # still cannot reach the shared broker.
            "BROKERCORE_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.base + 11}",
            "BROKERCORE_STACK_WAIT": os.environ.get("BROKERCORE_STACK_WAIT", "120"),
        }
        self.edge = f"http://127.0.0.1:{self.base + 8}"
        self.oms = f"http://127.0.0.1:{self.base}"
        self.query = f"http://127.0.0.1:{self.base + 1}"
        self.database_url = (
            f"postgresql://brokercore:brokercore@127.0.0.1:{self.base + 9}/brokercore"
        )

    def stack(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``stack.sh COMMAND``, its output (stdout and stderr together) in .stdout."""
        return subprocess.run(
            [str(STACK), command],
            env=self.env,
            cwd=REPO,
            timeout=timeout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def fresh(self) -> None:
        """Remove every state folder, as `rm -rf .kafka .postgres .redis .stack` does."""
        for name in STATE_DIRS:
            shutil.rmtree(self.root / name, ignore_errors=True)

    def up(self) -> str:
        done = self.stack("up")
        assert done.returncode == 0, f"stack.sh up failed:\n{done.stdout}\n{self.logs()}"
        assert "brokercore is up" in done.stdout, done.stdout
        return done.stdout

    def down(self) -> str:
        done = self.stack("down", timeout=300)
        assert done.returncode == 0, f"stack.sh down failed:\n{done.stdout}"
        return done.stdout

    def whole(self, timeout: float = 60) -> None:
        """Wait until ``stack.sh status`` finds every process running and ready (after a
        test restarted or killed some); fail with its last answer."""
        deadline = time.monotonic() + timeout
        while (done := self.stack("status", timeout=60)).returncode != 0:
            assert time.monotonic() < deadline, f"stack not whole in {timeout} s:\n{done.stdout}"
            time.sleep(0.5)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """``supervisorctl ARGS`` on the stack's supervisord (its socket in the state folder)."""
        return subprocess.run(
            [
                str(REPO / ".venv/bin/supervisorctl"),
                "-c",
                str(self.root / ".stack/supervisord.conf"),
                *args,
            ],
            env=self.env,
            cwd=REPO,
            timeout=60,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def pid(self, name: str | None = None) -> int:
        """The pid of the stack's process NAME as supervisord gives it (0 when it is not
        running), or of supervisord itself."""
        done = self.ctl("pid", *([name] if name else []))
        assert done.stdout.strip().isdigit(), f"supervisorctl pid {name}: {done.stdout}"
        return int(done.stdout)

    def edge_pid(self) -> int:
        """The pid of the stack's edge (nginx's master process)."""
        return int((self.root / ".edge/nginx.pid").read_text())

    def user_id(self, name: str) -> str:
        """The user id of a demo user (alice, bob, ops): `make up` signs them up."""
        made = json.loads((self.root / ".stack/demo-users.json").read_text())
        user_id: str = made[name]["userId"]
        return user_id

    def logs(self, lines: int = 30) -> str:
        """The end of every process log, to explain a failure."""
        parts = []
        for log in sorted((self.root / ".stack/logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        try:
            self.stack("down", timeout=300)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# Registered as `stack` and `stack_up` (name=): a test's parameter does not shadow the
# function its module imports to register it.
@pytest.fixture(name="stack")
def stack_fixture():
    """A private stack's folders and ports, taken down and removed at the end."""
    stack = PrivateStack()
    try:
        yield stack
    finally:
        stack.close()


def brought_up() -> Iterator[PrivateStack]:
    """A private stack brought up from nothing, taken down and removed at the end (the
    body of a fixture: the module's here, a package's in tests/integration/front_door)."""
    stack = PrivateStack()
    try:
        stack.up()
        yield stack
    finally:
        stack.close()


@pytest.fixture(name="stack_up", scope="module")
def stack_up_fixture():
    """A private stack brought up from nothing once for the module's tests."""
    yield from brought_up()


def trade_on_every_shard(stack: PrivateStack, timeout: float = 60) -> list[dict]:
    """alice buys and bob sells 10 RELIANCE (shard 0 of 2) and 10 ITC (shard 1) at the
    same price, through the edge (the OMS processes); returns the four orders once the
    query service (the projector's read model, through the edge) and Postgres's orders
    table (settlement's) show each FILLED."""
    orders = []
    with httpx.Client(timeout=10) as client:
        for symbol, price in (("RELIANCE", "15000.00"), ("ITC", "2200.00")):
            for user, side in (("alice", "BUY"), ("bob", "SELL")):
                body = {
                    "symbol": symbol,
                    "side": side,
                    "type": "LIMIT",
                    "quantity": 10,
                    "price": price,
                    "idempotencyKey": f"{user}-{symbol}-{time.time_ns()}",
                }
                user_id = stack.user_id(user)
                answer = client.post(
                    f"{stack.edge}/api/v1/orders", json=body, headers=auth(user_id)
                )
                assert answer.status_code == 202, answer.text
                orders.append((user_id, answer.json()["orderId"]))
        deadline = time.monotonic() + timeout
        seen = []
        for user, order_id in orders:
            while True:
                answer = client.get(f"{stack.edge}/api/v1/orders/{order_id}", headers=auth(user))
                assert answer.status_code == 200, answer.text
                if answer.json()["status"] == "FILLED" and settled(stack, order_id) == "FILLED":
                    seen.append(answer.json())
                    break
                assert time.monotonic() < deadline, (
                    f"order {order_id} of {user} not FILLED: {answer.text}\n{stack.logs()}"
                )
                time.sleep(0.2)
    return seen


def settled(stack: PrivateStack, order_id: int) -> str:
    """The order's status in the OMS's own table, which settlement updates."""
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(
            "SELECT status FROM orders WHERE order_id = %s", (order_id,)
        ).fetchone()[0]
