"""brokercore service triggers: fire GTTs on the engine's trades until SIGTERM (docs/gtt.md).

Two steps in one process: the watcher (brokercore.consumers.gtt_watch, a thread running
the Postgres-offset consumer of ``events``) marks the GTTs a trade meets TRIGGERED with
its offsets; the placer (brokercore.entry.gtt_orders, asyncio) then places their orders
through the order entry exactly once, publishes them, and ends expired GTTs; it moves the
bracket orders on too (brokercore.entry.bracket_legs: their legs placed, cancelled and
ended; docs/brackets.md). The placer
runs when the watcher fired something, every ``--every`` seconds besides, and every
``CLOSING_EVERY`` while a bracket waits for its cancels (what a
crash left unplaced is placed by the first pass after a restart).

Settings are the BROKERCORE_* variables (brokercore.config): BROKERCORE_DATABASE_URL,
BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, BROKERCORE_SHARDS,
BROKERCORE_INSTRUMENTS, BROKERCORE_CALENDAR, BROKERCORE_DAY, BROKERCORE_FEE_BPS,
BROKERCORE_FEE_FIXED_PAISE, BROKERCORE_MARKET_PROTECTION_PERCENT. SIGTERM or Ctrl-C
exits 0; a restart of Postgres or Kafka is waited out; any other failure exits 1,
nothing of the failed batch stored.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import MarketInstrument
from brokercore.broker.risk import FeeSchedule
from brokercore.broker.session_plan import trading_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.gtt_watch import GttWatcher
from brokercore.consumers.pg_consumer import run_pg_consumer
from brokercore.entry.bracket_legs import bracket_pass, resend_pending
from brokercore.entry.gtt_orders import FIRE_KEY_TTL, expire_gtts, place_fired
from brokercore.entry.order_entry import OrderEntry
from brokercore.entry.outbox import OutboxPublisher
from brokercore.faults.backoff import Backoff, transient
from brokercore.services.consumer import Run, asyncio_stop, run_consumer

log = logging.getLogger("brokercore.triggers")

EXPIRE_EVERY = 60.0
"""Seconds between the passes that end expired GTTs (the watcher ignores them anyway)."""

CLOSING_EVERY = 0.1
"""Seconds between placer passes over the closing brackets while one waits for its
cancels to be settled (a met stop-loss is placed as soon as they are); the passes over
every live bracket stay ``--every`` apart."""


def prepare(kafka: KafkaSettings, settings: ServiceSettings, every: float) -> Run:
    market = trading_market(settings)  # the OMS's calendar: orders checked alike
    fees = FeeSchedule(Decimal(settings.fee_bps), settings.fee_fixed_paise)
    protection = Decimal(settings.market_protection_percent)

    def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> None:
        asyncio.run(serve(kafka, settings, market, fees, protection, every, stop))

    return run


async def serve(
    kafka: KafkaSettings,
    settings: ServiceSettings,
    market: dict[str, MarketInstrument],
    fees: FeeSchedule,
    protection: Decimal,
    every: float,
    stop: threading.Event,
) -> None:
    """The watcher in a thread and the placer here, until ``stop``; a watcher that
    fails stops the placer and is raised. Orders are placed as the OMS places them
    (its fees and market protection)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def woke() -> None:  # from the watcher's thread
        loop.call_soon_threadsafe(wake.set)

    watcher = GttWatcher(kafka.events_topic, market, woke)
    async with asyncio_stop(stop) as stopped:
        watching = asyncio.ensure_future(
            asyncio.to_thread(
                run_pg_consumer,
                watcher,
                kafka.bootstrap,
                settings.database_url,
                "triggers",
                stop,
            )
        )
        watching.add_done_callback(lambda _: stop.set())
        async with AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=3,
            check=AsyncConnectionPool.check_connection,
        ) as pool:
            entry = OrderEntry(
                pool,
                market,
                kafka,
                fees=fees,
                protection_percent=protection,
                idempotency_ttl=FIRE_KEY_TTL,
            )
            publisher = OutboxPublisher(pool, kafka.bootstrap)
            try:
                await _place(entry, publisher, wake, stopped, every)
            finally:
                await publisher.aclose()
        await watching  # raises what stopped it


async def _place(
    entry: OrderEntry,
    publisher: OutboxPublisher,
    wake: asyncio.Event,
    stopped: asyncio.Event,
    every: float,
) -> None:
    """Placer passes (on a wake-up, at least every ``every`` s) until stopped."""
    backoff = Backoff("triggers: Postgres", log)
    expired_at = 0.0
    resent, quick, full_at = False, False, 0.0
    while not stopped.is_set():
        wake.clear()
        closing = 0
        try:
            if not resent:
                publisher.submit(await resend_pending(entry))
                resent = True
            if time.monotonic() - expired_at >= EXPIRE_EVERY:
                if expired := await expire_gtts(entry):
                    log.info("triggers: %d GTTs expired", expired)
                expired_at = time.monotonic()
            while (done := await place_fired(entry)).placed + done.failed:
                publisher.submit(done.outbox)
                log.info("triggers: %d GTT orders placed, %d refused", done.placed, done.failed)
            if not quick:
                full_at = time.monotonic()
            if (legs := await bracket_pass(entry, closing_only=quick)).outbox or legs.failed:
                publisher.submit(legs.outbox)
                log.info("triggers: bracket legs: %d placed, %d refused", legs.placed, legs.failed)
            closing = legs.closing
        except Exception as e:
            if not transient(e):
                raise
            if await backoff.pause(e, stopped):
                return
            continue
        backoff.recovered()
        waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
        woken, pending = await asyncio.wait(
            waits,
            timeout=CLOSING_EVERY if closing else every,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiting in pending:
            waiting.cancel()
        quick = bool(closing) and not woken and time.monotonic() - full_at < every


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brokercore service triggers", description=__doc__)
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds between placer passes at least"
    )
    every = parser.parse_args(argv).every
    return run_consumer("triggers", lambda kafka, settings: prepare(kafka, settings, every))
