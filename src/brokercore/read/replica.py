"""Reads routed between the Postgres primary and a streaming read replica.

The query service and the gateways' resume read the replica (``settings.replica_url``)
to spare the primary, which the write path needs; without a replica URL they read the
primary as before. ``ReadRouter.read(query, *args)`` runs ``query(conn, *args)`` on a
connection of whichever pool it picks.

What a replica read may see: everything committed on the primary before the read began,
as a read of the primary would. Both readers need that: a user who has just placed an
order must find it (read-your-writes), and a resuming socket must not miss an update the
projector committed, and published, before the socket subscribed to the live ones. A
timer cannot promise it (a replica is "2 s behind" on average, not per row), and the
query service does not know who wrote what, so each read is fenced by WAL position: the
*fence* is the primary's WAL flush position fetched after the read began (every commit
in this project is synchronous, so one that has been answered is flushed: were a writer
ever to commit asynchronously, the fence would become ``pg_current_wal_insert_lsn()``).
The replica is read only once its replay position has reached the fence, checked before
the read's transaction takes its snapshot; the replay position only grows (a replica
that went away is forgotten until it answers again), so that later snapshot holds every
commit up to the fence. The position fetches are coalesced (``_Position``): concurrent
reads share one fetch begun after each of them arrived, so under load it costs about one
tiny query per round trip on each server, not one per read. A replica that has not
caught up within ``catch_up`` seconds (or was last measured further behind than that)
leaves that read to the primary.

Health: every ``interval`` seconds the router compares the two positions. The replica's
lag is how long ago the primary was first seen past what the replica has replayed, and 0
when it has replayed everything the primary had: an idle primary is no lag (unlike
``now() - pg_last_xact_replay_timestamp()``, which grows while nothing is written). Past
``max_lag``, or while the replica is away, every read goes straight to the primary; back
to the replica once it is within the bound again. A read the replica fails (it went
away mid-read, or cancelled the query for a conflict with recovery) is run again on the
primary. Switches are logged, a line per ``LOG_EVERY`` seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = ["NotStandby", "ReadRouter", "Server"]

log = logging.getLogger("brokercore.read.replica")

T = TypeVar("T")
Server = Literal["primary", "replica"]

LOG_EVERY = 1.0
"""Seconds between two lines about the replica's health, at least."""

POLL = 0.002
"""Seconds a read waits for the replica before each look at its position: about what a
commit takes to stream and replay on loopback, so that the first look mostly finds it
there (each look is a query: CPU)."""

CONNECT_TIMEOUT = 2
"""Seconds a position connection may take to connect (a replica away must not hang it)."""

_FLUSHED = "SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint"
_REPLAYED = "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint"  # NULL: not a standby


class NotStandby(Exception):
    """The replica URL names a server that is not (or no longer) a standby."""


_UNANSWERED = (psycopg.Error, PoolTimeout, OSError, TimeoutError, NotStandby)
"""What a position fetch fails with when its server is away."""
_REPLICA_FAILED = (psycopg.OperationalError, OSError, TimeoutError)
"""What a read fails with on a replica gone away or cancelling it; not a bad query."""


class _Position:
    """A server's WAL position, fetched on a connection of its own (autocommit), each
    caller of ``fresh()`` given the result of a fetch that began after it called; the
    callers that arrive while a fetch runs share the next one."""

    def __init__(self, url: str, statement: str, timeout: float):
        self.url, self.statement, self.timeout = url, statement, timeout
        self._conn: AsyncConnection | None = None
        self._next: asyncio.Future[int] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def fresh(self) -> int:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieved)
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        waiting: asyncio.Future[int] | None = None
        try:
            while self._next is not None:
                waiting, self._next = self._next, None
                try:
                    async with asyncio.timeout(self.timeout):  # no task, unlike wait_for
                        position = await self._fetch()
                    waiting.set_result(position)
                except _UNANSWERED as e:
                    await self.close()
                    waiting.set_exception(e)
        finally:
            self._runner = None
            for left in (waiting, self._next):  # stopped mid-fetch: nobody waits forever
                if left is not None and not left.done():
                    left.set_exception(ConnectionError("the read router is closing"))
            self._next = None

    async def _fetch(self) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = await AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        row = await (await self._conn.execute(self.statement)).fetchone()
        if row is None or row[0] is None:
            raise NotStandby("the server is not a standby in recovery")
        return int(row[0])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_UNANSWERED):
                await conn.close()

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self.close()


def _retrieved(future: asyncio.Future[int]) -> None:
    """A fetch's error is the callers' to handle; none left (all cancelled) is no error."""
    if not future.cancelled():
        future.exception()


def _url(pool: AsyncConnectionPool) -> str:
    """The pool's connection string, which the positions' own connections use."""
    if not isinstance(pool.conninfo, str):
        raise TypeError("a ReadRouter's pools are made from a connection string")
    return pool.conninfo


class ReadRouter:
    """Picks the pool each read runs on: ``replica`` when one is given, healthy and
    caught up with the read's fence, else ``primary``. ``reads`` counts the reads each
    answered; ``lag`` is the replica's last measured lag in seconds (None: away). The
    primary's pool is its maker's to open and close; the replica's is the router's."""

    def __init__(
        self,
        primary: AsyncConnectionPool,
        replica: AsyncConnectionPool | None = None,
        *,
        max_lag: float = 2.0,
        interval: float = 0.5,
        catch_up: float = 0.05,
    ):
        self.primary, self.replica = primary, replica
        self.max_lag, self.interval, self.catch_up = max_lag, interval, catch_up
        timeout = max(1.0, interval)
        self._flushed = _Position(_url(primary), _FLUSHED, timeout)
        self._replayed = (
            _Position(_url(replica), _REPLAYED, timeout) if replica is not None else None
        )
        self.reads: dict[Server, int] = {"primary": 0, "replica": 0}
        self.healthy = False
        self.lag: float | None = None
        self.replayed = 0  # the highest replay position seen since the replica came back
        self._history: deque[tuple[float, int]] = deque(maxlen=int(max_lag / interval) + 4)
        self._watcher: asyncio.Task[None] | None = None
        self._logged: bool | None = None
        self._log_after = 0.0
        self._switches = 0

    async def open(self) -> None:
        """The replica's pool opened without waiting (a service starts while its replica
        is away), its health checked once, then every ``interval``."""
        if self.replica is not None:
            await self.replica.open(wait=False)
            await self._check()
            self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for position in (self._flushed, self._replayed):
            if position is not None:
                await position.stop()
        if self.replica is not None:
            await self.replica.close()

    async def read(self, query: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``query(conn, *args)`` on the replica when it may answer, else (or when it
        fails to) on the primary."""
        if self.replica is not None and await self._caught_up():
            try:
                async with self.replica.connection(timeout=self.interval) as conn:
                    found = await query(conn, *args)
            except PoolTimeout:
                pass  # every replica connection busy: this read to the primary, no switch
            except _REPLICA_FAILED as e:
                self._away(e)
            else:
                self.reads["replica"] += 1
                return found
        async with self.primary.connection() as conn:
            found = await query(conn, *args)
        self.reads["primary"] += 1
        return found

    async def _caught_up(self) -> bool:
        """The replica is healthy and has replayed the primary's WAL up to a fence
        fetched now (within ``catch_up`` seconds)."""
        if not self.healthy or self._replayed is None or (self.lag or 0.0) > self.catch_up:
            return False  # not worth the fence: no waiting this long would do
        try:
            fence = await self._flushed.fresh()
        except _UNANSWERED:
            return False  # the primary answers the read, or the client, if it can
        deadline = time.monotonic() + self.catch_up
        while self.replayed < fence:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)  # first the time WAL takes to stream and replay
            try:
                self.replayed = max(self.replayed, await self._replayed.fresh())
            except _UNANSWERED as e:
                self._away(e)
                return False
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._check()

    async def _check(self) -> None:
        """Both positions, then the lag and the health they make."""
        assert self._replayed is not None
        try:
            flushed = await self._flushed.fresh()
        except _UNANSWERED:
            return  # nothing to compare with; the reads try the primary themselves
        now = time.monotonic()
        self._history.append((now, flushed))
        try:
            replayed = await self._replayed.fresh()
        except _UNANSWERED as e:
            self._away(e)
            return
        self.replayed = max(self.replayed, replayed)
        self.lag = next((now - at for at, lsn in self._history if lsn > self.replayed), 0.0)
        self._health(self.lag <= self.max_lag, f"{self.lag:.2f} s behind the primary")

    def _away(self, error: BaseException) -> None:
        self.replayed, self.lag = 0, None
        self._health(False, f"away ({type(error).__name__}: {str(error).strip()[:200]})")

    def _health(self, healthy: bool, why: str) -> None:
        """Set, and logged when it differs from the last line: a switch to the primary at
        once (however short the outage, the operator sees it), a return to the replica
        once the last line is ``LOG_EVERY`` seconds old (a flapping replica is two lines a
        second at most, with its count of switches)."""
        if healthy != self.healthy:
            self._switches += 1
        self.healthy = healthy
        now = time.monotonic()
        if healthy == self._logged or (healthy and now < self._log_after):
            return
        switches = f" ({self._switches} switches since the last line)" if self._switches > 1 else ""
        if healthy:
            log.info("replica %s: reads go to the replica%s", why, switches)
        else:
            log.warning(
                "replica %s (bound %.1f s): reads go to the primary%s", why, self.max_lag, switches
            )
        self._logged, self._log_after, self._switches = healthy, now + LOG_EVERY, 0
