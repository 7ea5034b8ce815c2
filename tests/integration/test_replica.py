"""The read replica (scripts/postgres/postgres.sh replica-*, brokercore.read.replica) on a
private primary and its streaming replica: a write reaches the replica within the lag
bound; the query service reads the replica while it keeps up, and still sees a write
the moment it is committed (read-your-writes); with the replica stopped, or its replay
paused past the bound, reads answer from the primary, and go back to the replica once it
is healthy again; a primary that must restart for replication is restarted by the
script, and its replica taken afresh."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx
import psycopg
import pytest
import redis

from brokercore.broker.funding import open_account
from brokercore.db.migrations import apply_migrations
from brokercore.realtime.channels import OrderUpdate, encode_message
from brokercore.services.query import create_app
from oms_support import Trader, run
from private_servers import PrivatePostgres, PrivateReplica
from shared_servers import REDIS_URL, service_settings
from ws_support import Server, open_socket, receive

MAX_LAG = 1.0  # seconds: the bound of these tests (the default is 2)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PrivatePostgres, PrivateReplica]]:
    """A private primary, migrated, and its replica, both running."""
    with PrivatePostgres() as primary:
        apply_migrations(primary.url)
        with primary.replica() as replica:
            yield primary, replica


@pytest.fixture
def prefix() -> Iterator[str]:
    """The test's own keys in the shared Redis, removed at the end."""
    prefix = f"r{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


class Query:
    """The query app in this process, reading ``replica``; an HTTP client on it."""

    def __init__(self, primary: PrivatePostgres, replica: PrivateReplica, prefix: str):
        self.primary = primary
        self.app = create_app(
            service_settings(primary.url, prefix, replica_url=replica.url, replica_max_lag=MAX_LAG)
        )

    async def __aenter__(self) -> Query:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._lifespan.__aexit__(*exc)

    @property
    def router(self):
        return self.app.state.query.router

    async def fresh_portfolio(self) -> str:
        """A new user's account opened on the primary, then read at once: the answer
        holds its cash. Returns the server that answered."""
        user = f"u{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.primary.url, autocommit=True) as conn:
            open_account(conn, user, cash=12_345)
        before = dict(self.router.reads)
        async with Trader(user, self.transport) as trader:
            assert (await trader.portfolio()).cash == "123.45" and trader.statuses == [200]
        (server,) = [s for s, n in self.router.reads.items() if n > before[s]]
        return server


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.05)


def test_write_reaches_the_replica_within_the_bound(pair) -> None:
    primary, replica = pair
    table = f"t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(primary.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
        conn.execute(f"INSERT INTO {table} VALUES (42)")
    written = time.monotonic()
    with psycopg.connect(replica.url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        while conn.execute(f"SELECT to_regclass('{table}')").fetchone() == (None,):
            assert time.monotonic() - written < 2.0, "the write took longer than the bound"
            time.sleep(0.01)
        assert conn.execute(f"SELECT x FROM {table}").fetchall() == [(42,)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"INSERT INTO {table} VALUES (1)")


def test_reads_go_to_the_replica_and_see_every_write(pair, prefix) -> None:
    """Each account is read the instant it is committed on the primary: every answer
    holds it (the fence), and the replica gives most of them (the router's count; the
    service's connections are in the replica's pg_stat_activity)."""
    primary, replica = pair

    async def scenario() -> None:
        async with Query(primary, replica, prefix) as api:
            assert api.router.healthy
            servers = [await api.fresh_portfolio() for _ in range(20)]
            assert servers.count("replica") >= 15, servers
            with psycopg.connect(replica.superuser_url(), autocommit=True) as conn:
                seen = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE usename = 'brokercore' AND datname = 'brokercore'"
                ).fetchone()
            assert seen is not None and seen[0] >= 2  # the pool's and the router's own

    run(scenario)


def test_reads_answer_while_the_replica_is_stopped(pair, prefix, caplog) -> None:
    primary, replica = pair
    caplog.set_level(logging.INFO, "brokercore.read.replica")

    async def scenario() -> None:
        async with Query(primary, replica, prefix) as api:
            assert await api.fresh_portfolio() == "replica"
            await asyncio.to_thread(replica.stop)
            for _ in range(10):  # the first ones find it gone, the rest do not try it
                assert await api.fresh_portfolio() == "primary"
            assert not api.router.healthy
            await asyncio.to_thread(replica.start)
            await eventually(
                lambda: _answered_by(api, "replica"), "read from the restarted replica", 30
            )

    run(scenario)
    assert "reads go to the primary" in caplog.text
    assert "reads go to the replica" in caplog.text


def test_lag_past_the_bound_sends_reads_to_the_primary(pair, prefix) -> None:
    primary, replica = pair

    async def scenario() -> None:
        async with Query(primary, replica, prefix) as api:
            with psycopg.connect(replica.superuser_url(), autocommit=True) as standby:
                standby.execute("SELECT pg_wal_replay_pause()")
                try:
                    # Before the bound is passed the fence sends each read to the primary.
                    assert await api.fresh_portfolio() == "primary"
                    await eventually(lambda: _unhealthy(api), "replica marked behind", 10 * MAX_LAG)
                    assert api.router.lag > MAX_LAG
                    assert await api.fresh_portfolio() == "primary"
                finally:
                    standby.execute("SELECT pg_wal_replay_resume()")
            await eventually(lambda: _answered_by(api, "replica"), "read from the replica", 30)
            assert api.router.healthy and api.router.lag <= MAX_LAG

    run(scenario)


async def _answered_by(api: Query, server: str) -> bool:
    return await api.fresh_portfolio() == server


async def _unhealthy(api: Query) -> bool:
    return not api.router.healthy


def test_a_resume_misses_nothing_with_the_replica_healthy_or_behind(pair, prefix, tmp_path):
    """A gateway reading the replica: a socket resuming from 0 right after updates are
    committed on the primary gets every one of them, with replay running and paused."""
    primary, replica = pair
    user = f"w{uuid.uuid4().hex[:10]}"
    env = os.environ | {
        "BROKERCORE_DATABASE_URL": primary.url,
        "BROKERCORE_REPLICA_URL": replica.url,
        "BROKERCORE_DEV_MODE": "1",
        "BROKERCORE_REDIS_PREFIX": prefix,
    }
    server = Server(tmp_path / "gateway.log", env)

    def store(count: int) -> None:
        """``count`` ORDER_UPDATEs of the user, as the projector writes them."""
        with psycopg.connect(primary.url, autocommit=True) as conn:
            for _ in range(count):
                seq = conn.execute(
                    "SELECT nextval(pg_get_serial_sequence('read_model.order_updates',"
                    " 'update_id'))"
                ).fetchone()[0]
                message = OrderUpdate(
                    seq,
                    1,
                    "RELIANCE",
                    "BUY",
                    "LIMIT",
                    "OPEN",
                    10,
                    0,
                    None,
                    "2847.00",
                    None,
                    "2026-11-25T06:00:00+00:00",
                    0,
                )
                conn.execute(
                    "INSERT INTO read_model.order_updates (update_id, user_id, order_id,"
                    " payload) VALUES (%s, %s, 1, %s::jsonb)",
                    (seq, user, encode_message(message).decode()),
                )

    async def resumed() -> int:
        ws, _ = await open_socket(server, user, since=0)
        while (frame := await receive(ws))["type"] != "RESUMED":
            assert frame["type"] == "ORDER_UPDATE", frame
        await ws.close()
        return frame["count"]

    try:
        server.wait_ready()
        store(3)
        assert run(resumed) == 3
        with psycopg.connect(replica.superuser_url(), autocommit=True) as standby:
            connected = standby.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE usename = 'brokercore' AND datname = 'brokercore'"
            ).fetchone()
            assert connected is not None and connected[0] >= 2  # the gateway's pool, router
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                store(2)
                assert run(resumed) == 5
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")
    finally:
        server.stop()


def test_a_primary_without_replication_is_restarted_for_it(pair) -> None:
    """wal_level minimal (no WAL senders): replica-start restarts the primary with
    replication, and takes a new base backup for the replica that cannot follow (the
    pair ends as it began, replicating)."""
    primary, replica = pair
    with psycopg.connect(primary.superuser_url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_level = minimal")
        conn.execute("ALTER SYSTEM SET max_wal_senders = 0")
    replica.stop()
    primary.stop()
    primary.start()
    with psycopg.connect(primary.url, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("minimal",)
        conn.execute("CREATE TABLE after_minimal (x int)")
    replica.start()
    with psycopg.connect(primary.url, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
    with psycopg.connect(replica.url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('after_minimal')").fetchone() != (None,)
