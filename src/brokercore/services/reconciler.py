"""The reconciler: re-publishes orders the engine has not confirmed, compares Kafka's
events with Postgres, and checks Postgres's own invariants (brokercore.consumers.reconcile).

    brokercore service reconciler [--every 30] [--older-than 60] [--once]
    brokercore service reconciler --report       the findings, one a line; exit 1 if any
    brokercore service reconciler --notifications [--once]
                                                 retry dead-lettered pushes
    brokercore service reconciler --postbacks [--once]
                                                 retry dead-lettered postbacks

Every ``--every`` seconds it re-publishes the outbox rows of orders still PENDING after
``--older-than`` seconds (and rows never acknowledged by Kafka), so an order stored by
an OMS that died before publishing it still reaches the engine. The engine drops a
second copy of an order id, so re-publishing is safe. Each round also checks the
invariants of the ledger (money and shares conserved, holds equal to the open orders',
no short holding where shorting is off, no order stuck) and logs every broken one as a
WARNING. Each round and each ``--report`` stores what it found, nothing included
(reconciler_runs and reconciler_findings: the operator's overview shows the latest).
Settings: BROKERCORE_* variables.

With ``--notifications`` it instead retries, every BROKERCORE_DEAD_LETTER_RETRY_INTERVAL
seconds, the pushes the notifier dead-lettered (brokercore.notify.redelivery):
each once more through BROKERCORE_PUSH_URL; one that fails again goes back on the topic.
With ``--postbacks``, likewise the postbacks (docs/postbacks.md), each to its
registration as it is now (one deleted meanwhile is dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import Session, load_market
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.reconcile import (
    Finding,
    check_invariants,
    find_discrepancies,
    record_run,
    settled_events,
)
from brokercore.entry.outbox import OutboxPublisher
from brokercore.faults.backoff import Backoff, transient
from brokercore.notify.dead_letters import DeadLetters, PostbackDeadLetter, PushDeadLetter
from brokercore.notify.postbacks import Breaker, Paused, Postback, Postbacks, target_of
from brokercore.notify.push import HttpPushProvider, PushFailed, PushProvider
from brokercore.notify.redelivery import (
    Letter,
    Redelivery,
    postback_redelivery_group_id,
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
    """Runs the pushes' dead-letter rounds (one if ``once``); returns what they did in all."""
    push = provider or HttpPushProvider(push_url(settings))
    dead_letters = DeadLetters(kafka.bootstrap, kafka.notification_dead_letter_topic)

    async def send(letter: PushDeadLetter) -> None:
        await push.send(letter.device_token, letter.notification)

    try:
        return await _retry_rounds(
            settings,
            kafka.bootstrap,
            redelivery_group_id(kafka.topic_prefix),
            PushDeadLetter,
            send,
            dead_letters,
            once,
            stop,
        )
    finally:
        await asyncio.to_thread(dead_letters.close)
        if isinstance(push, HttpPushProvider):
            await push.aclose()


async def retry_postbacks(
    settings: ServiceSettings, kafka: KafkaSettings, once: bool, stop: asyncio.Event
) -> Redelivery:
    """Runs the postbacks' dead-letter rounds (one if ``once``), each letter sent to its
    registration as it is now (one deleted meanwhile is dropped); returns what they did.
    A URL that fails as many in a row as pause it in the notifier is paused likewise:
    its other letters go back on the topic untried (a dead endpoint costs a pass a few
    sends, not one per letter)."""
    pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=2, open=False)
    breaker = Breaker(settings.postback_breaker_failures, settings.postback_breaker_pause)
    sender = Postbacks(
        DeadLetters(kafka.bootstrap, kafka.postback_dead_letter_topic),
        timeout=settings.postback_timeout,
        per_url=settings.postback_per_url,
        ca_file=settings.postback_ca_file,
        breaker=breaker,
    )
    slots = asyncio.Semaphore(16)

    async def send(letter: PostbackDeadLetter) -> None:
        async with pool.connection() as conn:
            target = await target_of(conn, letter.user_id, letter.postback_id)
        if target is None:
            log.info(
                "postback %s dropped: registration %d deleted",
                letter.notification.id,
                letter.postback_id,
            )
            return
        try:
            await sender.send(Postback(letter.user_id, target, letter.notification), slots)
        except Paused:
            raise
        except PushFailed:
            breaker.dead_lettered(target.url)
            raise
        breaker.delivered(target.url)

    try:
        await pool.open(wait=True)
        return await _retry_rounds(
            settings,
            kafka.bootstrap,
            postback_redelivery_group_id(kafka.topic_prefix),
            PostbackDeadLetter,
            send,
            sender.dead_letters,
            once,
            stop,
        )
    finally:
        await asyncio.to_thread(sender.dead_letters.close)
        await sender.aclose()
        await pool.close()


async def _retry_rounds(
    settings: ServiceSettings,
    bootstrap: str,
    group: str,
    kind: type[Letter],
    send: Callable[[Letter], Awaitable[None]],
    dead_letters: DeadLetters,
    once: bool,
    stop: asyncio.Event,
) -> Redelivery:
    """A pass over the dead letters on ``dead_letters``' topic every
    BROKERCORE_DEAD_LETTER_RETRY_INTERVAL seconds (one if ``once``) until ``stop``; what
    they did in all."""
    total = Redelivery()
    while True:
        done = await redeliver_dead_letters(
            bootstrap, dead_letters.topic, group, kind, send, dead_letters
        )
        total += done
        if done.delivered or done.failed or done.unreadable:
            log.info(
                "%s: %d delivered, %d failed again, %d unreadable",
                dead_letters.topic,
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
    """One round of the invariant checks, stored (``record_run``): each broken one (the
    first ``most``) is logged as a WARNING, after a line with how many there are."""
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        now = datetime.now(UTC)
        broken = check_invariants(conn, sessions, now)
        record_run(conn, now, "INVARIANTS", broken)
    if broken:
        log.warning(
            "%d INVARIANT(S) BROKEN (brokercore service reconciler --report lists them all)",
            len(broken),
        )
    for finding in broken[:most]:
        log.warning("INVARIANT BROKEN: %s", finding)
    return broken


def report(settings: ServiceSettings, kafka: KafkaSettings) -> int:
    """Print the findings, one a line, and store them (``record_run``); 0 if there are
    none, 1 otherwise."""
    with psycopg.connect(settings.database_url) as conn:
        now = datetime.now(UTC)
        events = settled_events(conn, kafka.bootstrap, kafka.events_topic)
        findings = find_discrepancies(conn, events)
        broken = check_invariants(conn, market_sessions(settings), now)
        record_run(conn, now, "FULL", findings + broken)
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
    parser.add_argument(
        "--postbacks", action="store_true", help="retry the dead-lettered postbacks, likewise"
    )
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per push

    async def notifications(
        settings: ServiceSettings, kafka: KafkaSettings, stop: threading.Event
    ) -> Redelivery:
        async with asyncio_stop(stop) as stopped:
            if args.postbacks:
                return await retry_postbacks(settings, kafka, args.once, stopped)
            return await retry_notifications(settings, kafka, args.once, stopped)

    async def outbox(settings: ServiceSettings, kafka: KafkaSettings, stop: threading.Event) -> int:
        async with asyncio_stop(stop) as stopped:
            return await republish(settings, kafka, args.every, args.older_than, args.once, stopped)

    def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> int:
        if args.report:
            return report(settings, kafka)
        if args.notifications or args.postbacks:
            done = asyncio.run(notifications(settings, kafka, stop))
            print(
                f"dead-lettered {'postbacks' if args.postbacks else 'pushes'}: "
                f"{done.delivered} delivered, {done.failed} failed again, "
                f"{done.unreadable} unreadable"
            )
        else:
            print(f"re-published {asyncio.run(outbox(settings, kafka, stop))} outbox rows")
        return 0

    def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
        if args.notifications:
            push_url(settings)
        return run

    return run_consumer("reconciler", prepare)
