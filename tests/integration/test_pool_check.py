"""The API pools' check before a connection is handed out (check_idle_connection), on the
real Postgres: a live idle connection costs no round trip, a dead one is found."""

from __future__ import annotations

import asyncio
import select

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from brokercore.services.http import check_idle_connection
from waiting import wait_until


def last_query(url: str, pid: int) -> str:
    with psycopg.connect(url, autocommit=True) as other:
        row = other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert row is not None
    return str(row[0])


def terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))


def readable(conn: psycopg.AsyncConnection) -> bool:
    return bool(select.select([conn.fileno()], [], [], 0)[0])


def test_a_live_idle_connection_passes_without_a_round_trip(db):
    """pg_stat_activity shows a backend's last statement: a round trip would replace it."""

    async def scenario():
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await conn.execute("SELECT 'the last statement'")
            await check_idle_connection(conn)
            ours = last_query(db, conn.info.backend_pid)
            await AsyncConnectionPool.check_connection(conn)
            return ours, last_query(db, conn.info.backend_pid)

    ours, psycopg_pools = asyncio.run(scenario())
    assert ours == "SELECT 'the last statement'"
    assert psycopg_pools == "", "psycopg_pool's own check is a round trip"


def test_a_killed_backend_is_found_dead(db):
    async def scenario():
        async with await psycopg.AsyncConnection.connect(db) as conn:
            terminate(db, conn.info.backend_pid)
            wait_until(lambda: readable(conn), "goodbye from the killed backend")
            with pytest.raises(psycopg.OperationalError):
                await check_idle_connection(conn)

    asyncio.run(scenario())


def test_the_pool_hands_out_a_working_connection_after_its_backend_is_killed(db):
    async def scenario():
        async with AsyncConnectionPool(
            db, min_size=1, max_size=1, check=check_idle_connection, open=False
        ) as pool:
            await pool.open(wait=True)
            async with pool.connection() as conn:
                first = conn.info.backend_pid
                terminate(db, first)
                wait_until(lambda: readable(conn), "goodbye from the killed backend")
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                return first, conn.info.backend_pid

    first, second = asyncio.run(scenario())
    assert second != first
