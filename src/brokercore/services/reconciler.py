"""The reconciler: re-publishes orders the engine has not confirmed, compares Kafka's
events with Postgres, and checks Postgres's own invariants (brokercore.consumers.reconcile).

    brokercore service reconciler [--every 30] [--older-than 60] [--once]
    brokercore service reconciler --report       the findings, one a line; exit 1 if any
    brokercore service reconciler --notifications [--once]
                                                 retry dead-lettered pushes

Every ``--every`` seconds it re-publishes the outbox rows of orders still PENDING after
``--older-than`` seconds (and rows never acknowledged by Kafka), so an order stored by
an OMS that died before publishing it still reaches the engine. The engine drops a
second copy of an order id, so re-publishing is safe. Each round also checks the
invariants of the ledger (money and shares conserved, holds equal to the open orders',
no short holding where shorting is off, no order stuck) and logs every broken one as a
WARNING. Settings: BROKERCORE_* variables.

With ``--notifications`` it instead retries, every BROKERCORE_DEAD_LETTER_RETRY_INTERVAL
seconds, the pushes the notifier dead-lettered (brokercore.notify.redelivery):
each once more through BROKERCORE_PUSH_URL; one that fails again goes back on the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import Session, load_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.reconcile import (
    Finding,
    check_invariants,
    find_discrepancies,
    settled_events,
)
from brokercore.entry.outbox import OutboxPublisher
from brokercore.faults.backoff import Backoff, transient
from brokercore.notify.dead_letters import DeadLetters
from brokercore.notify.push import HttpPushProvider, PushProvider
from brokercore.notify.redelivery import (
    Redelivery,
    redeliver_dead_letters,
    redelivery_group_id,
)
from brokercore.services.consumer import Run, asyncio_stop, run_consumer

log = logging.getLogger("brokercore.reconciler")


async def republish(
    settings: ServiceSettings,
    kafka: KafkaSettings,
    every: float,
    older_than: float,
    once: bool,
    stop: asyncio.Event,
) -> int:
    """Runs the re-publishing rounds; returns how many rows it re-published in all. A
    round that Postgres or Kafka failed (a restart) is tried again with back-off (the
    pool checks its connections, so a restart costs no more than that); any other
    error, or any error of a single round (``once``), is raised."""
    total = 0
    sessions = market_sessions(settings)
    backoff = Backoff("reconciler", log)
    async with AsyncConnectionPool(
        settings.database_url, min_size=1, max_size=2, check=AsyncConnectionPool.check_connection
    ) as pool:
        publisher = OutboxPublisher(pool, kafka.bootstrap)
        try:
            while True:
                try:
                    done = await publisher.publish_stale(timedelta(seconds=older_than))
                    total += len(done)
                    if done:
                        log.info("re-published %d outbox rows: %s", len(done), done[:20])
                    await asyncio.to_thread(warn_broken_invariants, settings, sessions)
                except Exception as e:
                    if once or not transient(e):
                        raise
                    if await backoff.pause(e, stop):
                        return total
                    continue
                backoff.recovered()
                if once:
                    return total
                try:
                    await asyncio.wait_for(stop.wait(), every)
                    return total
                except TimeoutError:
                    pass
        finally:
            await publisher.aclose()


async def retry_notifications(
    settings: ServiceSettings,
    kafka: KafkaSettings,
    once: bool,
    stop: asyncio.Event,
    provider: PushProvider | None = None,
) -> Redelivery:
    """Runs the dead-letter rounds (one if ``once``); returns what they did in all."""
    if provider is None:
        provider = HttpPushProvider(push_url(settings))
    topic = kafka.notification_dead_letter_topic
    dead_letters = DeadLetters(kafka.bootstrap, topic)
    total = Redelivery()
    try:
        while True:
            done = await redeliver_dead_letters(
                kafka.bootstrap,
                topic,
                redelivery_group_id(kafka.topic_prefix),
                provider,
                dead_letters,
            )
            total += done
            if done.delivered or done.failed or done.unreadable:
                log.info(
                    "dead-lettered pushes: %d delivered, %d failed again, %d unreadable",
                    done.delivered,
                    done.failed,
                    done.unreadable,
                )
            if once:
                return total
            try:
                await asyncio.wait_for(stop.wait(), settings.dead_letter_retry_interval)
                return total
            except TimeoutError:
                pass
    finally:
        await asyncio.to_thread(dead_letters.close)
        if isinstance(provider, HttpPushProvider):
            await provider.aclose()


def push_url(settings: ServiceSettings) -> str:
    """Where the dead letters are pushed again; ValueError (bad settings) if nowhere."""
    if not settings.push_url:
        raise ValueError("BROKERCORE_PUSH_URL is not set: there is nowhere to push to")
    return settings.push_url


def market_sessions(settings: ServiceSettings) -> dict[str, Session]:
    """The trading session of each symbol, as the OMS sees it."""
    market = load_market(settings.instruments, settings.calendar)
    return {symbol: instrument.session for symbol, instrument in market.items()}


def warn_broken_invariants(
    settings: ServiceSettings, sessions: dict[str, Session], most: int = 100
) -> list[Finding]:
    """One round of the invariant checks: each broken one (the first ``most``) is
    logged as a WARNING, after a line with how many there are."""
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        broken = check_invariants(conn, sessions, datetime.now(UTC))
    if broken:
        log.warning(
            "%d INVARIANT(S) BROKEN (brokercore service reconciler --report lists them all)",
            len(broken),
        )
    for finding in broken[:most]:
        log.warning("INVARIANT BROKEN: %s", finding)
    return broken


def report(settings: ServiceSettings, kafka: KafkaSettings) -> int:
    """Print the findings, one a line; 0 if there are none, 1 otherwise."""
    with psycopg.connect(settings.database_url) as conn:
        events = settled_events(conn, kafka.bootstrap, kafka.events_topic)
        findings = find_discrepancies(conn, events)
        broken = check_invariants(conn, market_sessions(settings), datetime.now(UTC))
    print(f"{len(events):,} settled events compared with Postgres: {len(findings)} finding(s)")
    print(f"invariants of the ledger: {len(broken)} broken")
    for finding in findings + broken:
        print(f"  {finding}")
    return 1 if findings or broken else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brokercore service reconciler", description=__doc__)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between rounds")
    parser.add_argument(
        "--older-than",
        type=float,
        default=60.0,
        help="age in seconds after which a PENDING order is re-published",
    )
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument(
        "--report",
        action="store_true",
        help="compare the settled events with Postgres, print the findings",
    )
    parser.add_argument(
        "--notifications",
        action="store_true",
        help="retry the dead-lettered pushes (every BROKERCORE_DEAD_LETTER_RETRY_INTERVAL seconds)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per push

    async def notifications(
        settings: ServiceSettings, kafka: KafkaSettings, stop: threading.Event
    ) -> Redelivery:
        async with asyncio_stop(stop) as stopped:
            return await retry_notifications(settings, kafka, args.once, stopped)

    async def outbox(settings: ServiceSettings, kafka: KafkaSettings, stop: threading.Event) -> int:
        async with asyncio_stop(stop) as stopped:
            return await republish(settings, kafka, args.every, args.older_than, args.once, stopped)

    def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> int:
        if args.report:
            return report(settings, kafka)
        if args.notifications:
            done = asyncio.run(notifications(settings, kafka, stop))
            print(
                f"dead-lettered pushes: {done.delivered} delivered, {done.failed} failed "
                f"again, {done.unreadable} unreadable"
            )
        else:
            print(f"re-published {asyncio.run(outbox(settings, kafka, stop))} outbox rows")
        return 0

    def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
        if args.notifications:
            push_url(settings)
        return run

    return run_consumer("reconciler", prepare)
