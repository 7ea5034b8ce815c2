"""The one conftest: lanes, hypothesis profiles and the fixtures shared by test modules.

Lanes: every test under tests/unit and tests/benchmarks is marked ``unit`` (it needs no
server), every test under tests/integration ``integration`` (the real Postgres, Redis and
Kafka), so ``pytest -m unit`` and ``make unit`` are the same lane.

``book_cls`` runs a test against both the Cython engine and the reference model; the
engine is never skipped: a missing build must not pass as green.

Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``dev``):
``dev`` is quick for local runs, ``ci`` runs 2,000 examples per property.

The shared servers' addresses come from tests/shared_servers.py; the tests that stop or
kill a server use private ones (tests/private_servers.py).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

from brokercore.broker.funding import open_account
from brokercore.config import KafkaSettings
from brokercore.db.migrations import apply_migrations, drop_database
from kafka_support import delete_created_topics, instruments, new_settings, write_instruments
from private_servers import PrivatePostgres, PrivateRedis
from shared_servers import DATABASE_URL, KAFKA_BOOTSTRAP
from support import engine_class, model_class
from ws_support import Server

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# dev: the fast lane; ci: `make test`; long: `make fuzz`, the engine's property tests only.
settings.register_profile("dev", max_examples=60, deadline=None)
for name, examples in (("ci", 1000), ("long", 10_000)):
    settings.register_profile(
        name,
        max_examples=examples,
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow],
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


LANES = {"unit": "unit", "benchmarks": "unit", "integration": "integration"}
"""The lane of the tests in each folder of tests/: the benchmarks need no server either."""


FULL_PROFILE = os.environ.get("BROKERCORE_FULL_PROFILE") == "1"
"""Set by the make targets of the long profiles (make crash): the tests marked
``full_profile`` run only there, deselected (and counted as such) in make test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the lane of the folder it lives in; deselect the full-profile
    tests unless their make target runs them."""
    for item in items:
        for folder, lane in LANES.items():
            if item.path.is_relative_to(TESTS / folder):
                item.add_marker(lane)
    if not FULL_PROFILE:
        long = [item for item in items if item.get_closest_marker("full_profile")]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if not item.get_closest_marker("full_profile")]


MODULE_SECONDS: dict[str, float] = {}
"""Each test module's wall time (set-up, call and tear-down of its tests)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The modules that took longest: what make test's 30-minute budget is spent on."""
    if not MODULE_SECONDS:
        return
    slowest = sorted(MODULE_SECONDS.items(), key=lambda pair: -pair[1])[:25]
    terminalreporter.section("slowest modules")
    for module, seconds in slowest:
        terminalreporter.write_line(f"{seconds:8.1f}s {module}")
    terminalreporter.write_line(f"{sum(MODULE_SECONDS.values()):8.1f}s in all")


@pytest.fixture(params=["engine", "model"])
def book_cls(request):
    """The book implementation under test: each test runs once per implementation."""
    return engine_class() if request.param == "engine" else model_class()


# --- the shared servers (tests/shared_servers.py) --------------------------------------------


def start_unless_elsewhere(server: str, variable: str) -> None:
    """``scripts/<server>/<server>.sh start`` (a no-op when it runs), unless ``variable``
    points the tests at a server of someone else's."""
    if variable in os.environ:
        return
    script = REPO / f"scripts/{server}/{server}.sh"
    done = subprocess.run(
        [str(script), "start"], check=False, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"{script.relative_to(REPO)} start failed:\n{done.stderr}")


@pytest.fixture(scope="session")
def postgres() -> str:
    """The URL of a database on the shared server, whose role may create databases."""
    start_unless_elsewhere("postgres", "BROKERCORE_DATABASE_URL")
    return DATABASE_URL


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The shared Kafka's bootstrap address."""
    start_unless_elsewhere("kafka", "BROKERCORE_KAFKA_BOOTSTRAP")
    return KAFKA_BOOTSTRAP


@pytest.fixture(autouse=True, scope="module")
def _created_topics_deleted() -> Iterator[None]:
    """A test module's Kafka topics are deleted after it (kafka_support.new_settings;
    after the module, not each test, since module-scoped fixtures make topics too)."""
    yield
    delete_created_topics()


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    """A deployment of the test's own on the shared Kafka: a fresh topic prefix, four
    shards, its topics created."""
    return new_settings(4, kafka_bootstrap)


@pytest.fixture
def db(postgres: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped at the end (connections and all)."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres, dbname=name)
    finally:
        drop_database(postgres, name)


@pytest.fixture
def migrated(db: str) -> str:
    """``db`` with every migration applied, and no rows."""
    apply_migrations(db)
    return db


@pytest.fixture
def conn(migrated: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's migrated database."""
    with psycopg.connect(migrated, autocommit=True) as connection:
        yield connection


@pytest.fixture
def database(migrated: str) -> str:
    """The test's migrated database with three OMS users: alice and carol with cash, bob
    with 100 RELIANCE and no cash."""
    with psycopg.connect(migrated, autocommit=True) as connection:  # journalled deposits
        open_account(connection, "alice", cash=1_000_000 * 100)
        open_account(connection, "bob", shares={"RELIANCE": 100})
        open_account(connection, "carol", cash=1_000_000 * 100)
    return migrated


# --- private servers, to stop and kill (tests/private_servers.py) ----------------------------


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as server:
        yield server


# --- engine daemons (tests/kafka_support.py) -------------------------------------------------


@pytest.fixture
def instruments_file(tmp_path: Path) -> Path:
    """The instruments file of kafka_support.instruments(), for `brokercore engine`."""
    return write_instruments(tmp_path / "instruments.toml", instruments())


# --- WebSocket gateways (tests/ws_support.py) ----------------------------------------------


@pytest.fixture
def gateways(database, tmp_path):
    """start(n, **settings): n gateway instances sharing a fresh Redis prefix and the
    test's database; the prefix is ``start.prefix``."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    servers: list[Server] = []

    def start(n: int = 1, **settings) -> list[Server]:
        env = (
            os.environ
            | {
                "BROKERCORE_DATABASE_URL": database,
                "BROKERCORE_DEV_MODE": "1",
                "BROKERCORE_REDIS_PREFIX": prefix,
            }
            | {f"BROKERCORE_{key.upper()}": str(value) for key, value in settings.items()}
        )
        started = [Server(tmp_path / f"gateway{len(servers) + i}.log", env) for i in range(n)]
        servers.extend(started)
        for server in started:
            server.wait_ready()
        return started

    start.prefix = prefix
    try:
        yield start
    finally:
        for server in servers:
            server.stop()
