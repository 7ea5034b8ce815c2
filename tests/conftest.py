"""Shared fixtures and hypothesis profiles.

``book_cls`` runs a test against both the Cython engine and the reference model. If
the engine cannot be imported, its parameter errors (it is never skipped): a missing
build must not pass as green. While the engine is not built,
``pytest tests/unit/test_orders.py -k "not engine"`` runs the model half alone (the other
modules compare the engine with the model, or test engine snapshots, and need it).

Hypothesis profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``dev``):
``dev`` is quick for local runs, ``ci`` runs 2,000 examples per property.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from hypothesis import HealthCheck, settings

from brokercore.broker.funding import open_account
from brokercore.db.migrations import apply_migrations, database_url, drop_database
from support import engine_class, model_class
from ws_support import Server

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=2000,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["engine", "model"])
def book_cls(request):
    """The book implementation under test: each test runs once per implementation."""
    return engine_class() if request.param == "engine" else model_class()


# --- real Postgres (scripts/postgres/postgres.sh) ------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server() -> str:
    """The URL of a database on a running server whose role may create databases."""
    if "BROKERCORE_DATABASE_URL" not in os.environ:
        done = subprocess.run([str(REPO / "scripts/postgres/postgres.sh"), "start"], check=False,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"scripts/postgres/postgres.sh start failed:\n{done.stderr}")
    return database_url()


@pytest.fixture
def db(server: str):
    """A fresh, empty database for one test; dropped at the end (connections and all)."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        drop_database(server, name)


@pytest.fixture
def database(db):
    """A migrated database with three OMS users: alice and carol with cash, bob with
    100 RELIANCE and no cash."""
    apply_migrations(db)
    with psycopg.connect(db, autocommit=True) as conn:       # journalled deposits
        open_account(conn, "alice", cash=1_000_000 * 100)
        open_account(conn, "bob", shares={"RELIANCE": 100})
        open_account(conn, "carol", cash=1_000_000 * 100)
    return db


# --- WebSocket gateways (tests/ws_support.py) ----------------------------------------------

@pytest.fixture
def gateways(database, tmp_path):
    """start(n, **settings): n gateway instances sharing a fresh Redis prefix and the
    test's database; the prefix is ``start.prefix``."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    servers: list[Server] = []

    def start(n: int = 1, **settings) -> list[Server]:
        env = os.environ | {"BROKERCORE_DATABASE_URL": database, "BROKERCORE_DEV_MODE": "1",
                            "BROKERCORE_REDIS_PREFIX": prefix} | {
            f"BROKERCORE_{key.upper()}": str(value) for key, value in settings.items()}
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
