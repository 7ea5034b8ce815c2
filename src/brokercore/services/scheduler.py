"""The session scheduler: publishes each symbol's pre-open, uncross, open and close into
its partition of ``orders`` at the planned times, exactly once per symbol and day.

    brokercore service scheduler [--once] [--pre-open S --uncross-window S --trading S --closed S]

The plan (brokercore.broker.session_plan) comes from the instruments' calendar
(BROKERCORE_INSTRUMENTS, BROKERCORE_CALENDAR: the always-open calendar has no steps, so
the scheduler only waits), or with BROKERCORE_DAY=compressed from a compressed day of
every symbol (the flags' seconds: pre-open, the uncross's window at its end, trading,
closed). BROKERCORE_SCHEDULER_SECRET is the key of the random uncross moments (dev mode:
a public development key). Publishing is brokercore.kafka.session_log's: any number of
schedulers may run, and one restarted at any moment sends what is missing, nothing
twice. ``--once`` publishes what is due now and exits.

The operator's ``brokercore halt SYMBOL``, ``brokercore resume SYMBOL`` and ``brokercore
reband SYMBOL --low X --high Y`` (``operate``) publish through the same path: HALT; or
PRE_OPEN at once and UNCROSS ``--uncross-after`` seconds later (the call auction that
re-opens a halted book); or REBAND to the new circuit limits (rupees). Each invocation has an id
(``--id``, else a new one, printed): run again with it, it sends only what is missing,
and a resume killed while it waits keeps the uncross time of its pre-open.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from brokercore.broker.market import load_market
from brokercore.broker.session_plan import (
    CalendarPlan,
    CompressedDay,
    DayPlan,
    Step,
    Transition,
    due,
)
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.faults.backoff import Backoff, transient
from brokercore.kafka.placement import shard_plan
from brokercore.kafka.session_log import SessionPublisher, ensure_session_log, nanoseconds
from brokercore.services.consumer import Run, run_consumer

log = logging.getLogger("brokercore.scheduler")

DEV_SCHEDULER_SECRET = "brokercore-development-uncross-key"
"""The uncross key of dev mode (BROKERCORE_DEV_MODE=1): public, so never in production."""
MAX_SLEEP = 60.0
"""Seconds between looks at the plan when nothing is due sooner (a clock that jumps)."""


def scheduler_secret(settings: ServiceSettings) -> bytes:
    """The uncross key; ValueError (bad settings) if there is none outside dev mode."""
    if settings.scheduler_secret:
        return settings.scheduler_secret.encode()
    if settings.dev_mode:
        return DEV_SCHEDULER_SECRET.encode()
    raise ValueError("BROKERCORE_SCHEDULER_SECRET is not set: the uncross moments need a key")


def schedule(
    plan: DayPlan,
    symbols: Sequence[str],
    publisher: SessionPublisher,
    stop: threading.Event,
    *,
    once: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Publish the plan's steps as they come due until ``stop`` is set (one round if
    ``once``); how many it published. Kafka being away is waited out."""
    backoff = Backoff("scheduler: Kafka", log)
    total = 0
    while not stop.is_set():
        try:
            steps, upcoming = due(plan, symbols, publisher.published, clock())
            done = publisher.publish(steps)
            if steps and not done:
                continue  # fenced by another scheduler: what is due, again, from the log
        except Exception as e:
            if once or not transient(e):
                raise
            if backoff.wait(e, stop):
                break
            continue
        backoff.recovered()
        for step in done:
            log.info(
                "%s %s of %s (planned %s)",
                step.symbol,
                step.transition,
                step.day,
                step.at.isoformat(timespec="milliseconds"),
            )
        total += len(done)
        if once:
            break
        wait = MAX_SLEEP if upcoming is None else (upcoming - clock()).total_seconds()
        stop.wait(min(max(wait, 0.0), MAX_SLEEP))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brokercore service scheduler", description=__doc__)
    parser.add_argument("--once", action="store_true", help="publish what is due, then exit")
    for name in ("pre-open", "uncross-window", "trading", "closed"):
        parser.add_argument(
            f"--{name}",
            type=float,
            help="seconds of a compressed day (BROKERCORE_DAY=compressed; default: "
            "BROKERCORE_DAY_SECONDS's, which the OMS's calendar follows)",
        )
    args = parser.parse_args(argv)

    def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
        market = load_market(settings.instruments, settings.calendar)
        routes = shard_plan(kafka, market.values())
        secret = scheduler_secret(settings)
        symbols = sorted(market)  # disabled ones too: their DAY orders expire at the close
        plan: DayPlan
        if settings.day == "compressed":
            given = (args.pre_open, args.uncross_window, args.trading, args.closed)
            seconds = [
                s if g is None else g for g, s in zip(given, settings.day_seconds, strict=True)
            ]
            plan = CompressedDay(symbols, secret, *seconds)
        else:
            plan = CalendarPlan({s: market[s].session for s in symbols}, secret)

        def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> int:
            backoff = Backoff("scheduler: Kafka", log)
            while True:
                try:
                    ensure_session_log(kafka)
                    break
                except Exception as e:
                    if not transient(e):
                        raise
                    if backoff.wait(e, stop):
                        return 0
            log.info(
                "scheduler: %d symbols, %s days (%s calendar)",
                len(symbols),
                settings.day,
                settings.calendar,
            )
            publisher = SessionPublisher(kafka, routes)
            try:
                total = schedule(plan, symbols, publisher, stop, once=args.once)
            finally:
                publisher.close()
            log.info("scheduler: %d steps published", total)
            return 0

        return run

    return run_consumer("scheduler", prepare)


def operate(
    kafka: KafkaSettings,
    action: str,
    symbol: str,
    command_id: str | None,
    uncross_after: float = 0.0,
    band: tuple[Decimal, Decimal] | None = None,
) -> int:
    """``brokercore halt`` (``action`` "halt"), ``brokercore close`` ("close"),
    ``brokercore resume`` ("resume") or ``brokercore reband`` ("reband", to ``band``:
    the new low and high in rupees) of
    ``symbol`` on the deployment ``kafka``, exactly once per ``command_id``; prints what it
    published. 0 when done, 1 when stopped (SIGTERM, Ctrl-C) before a resume's uncross."""
    settings = ServiceSettings.from_env()
    market = load_market(settings.instruments, settings.calendar)
    if symbol not in market:
        raise ValueError(f"unknown symbol {symbol!r}")
    if uncross_after < 0:
        raise ValueError("--uncross-after must be at least 0 seconds")
    ticks = None
    if band is not None:  # the instrument's own checks: tick multiples, order, width
        rebanded = dataclasses.replace(market[symbol], band_low=band[0], band_high=band[1])
        ticks = (rebanded.low, rebanded.high)
    command_id = command_id or uuid.uuid4().hex[:12]
    day = f"{action}:{command_id}"
    ensure_session_log(kafka)
    publisher = SessionPublisher(kafka, shard_plan(kafka, market.values()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        now = datetime.now(UTC)
        if action in _AT_ONCE:
            _publish(publisher, Step(now, symbol, day, _AT_ONCE[action]), command_id)
            return 0
        if action == "reband":
            _publish(publisher, Step(now, symbol, day, Transition.REBAND, ticks), command_id)
            return 0
        began = publisher.published[symbol].get((day, Transition.PRE_OPEN))
        if began is None:
            _publish(publisher, Step(now, symbol, day, Transition.PRE_OPEN), command_id)
        start = now if began is None else datetime.fromtimestamp(began / 1e9, UTC)
        uncross = Step(start + timedelta(seconds=uncross_after), symbol, day, Transition.UNCROSS)
        print(f"{symbol}: the uncross at {uncross.at.isoformat(timespec='seconds')}")
        if stop.wait(max(0.0, (uncross.at - datetime.now(UTC)).total_seconds())):
            print(f"stopped before the uncross: run again with --id {command_id} to send it")
            return 1
        _publish(publisher, uncross, command_id)
        return 0
    finally:
        publisher.close()


# The operator's commands that are one step, published at once.
_AT_ONCE = {"halt": Transition.HALT, "close": Transition.CLOSE}


def _publish(publisher: SessionPublisher, step: Step, command_id: str) -> None:
    """Publish ``step`` unless the log has it (trying again while fenced); say which."""
    while (step.day, step.transition) not in publisher.published[step.symbol]:
        if publisher.publish([step]):
            print(f"{step.symbol}: {step.transition} published (ts {nanoseconds(step.at)})")
            print(f"id {command_id} (run again with --id {command_id}: nothing is sent twice)")
            return
    print(f"{step.symbol}: {step.transition} already published (id {command_id})")
