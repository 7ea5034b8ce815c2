"""The life of a consumer or job process (settlement, projector, notifier, reconciler):
logging, settings, SIGTERM, exit codes. 0 after SIGTERM or Ctrl-C (the batch in hand
finished), 2 for bad settings, 1 for a failure that does not pass by itself (nothing of
the failed batch stored: a restart resumes). A restart of Postgres, Redis or Kafka is not
such a failure: the consumers wait it out (brokercore.faults.backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable

from brokercore.config import KafkaSettings, ServiceSettings

__all__ = ["Run", "run_consumer", "asyncio_stop"]

Run = Callable[[KafkaSettings, ServiceSettings, threading.Event], object]
"""What runs until the stop event is set; an int it returns is the exit code."""


def run_consumer(name: str, prepare: Callable[[KafkaSettings, ServiceSettings], Run]) -> int:
    """``prepare`` checks the settings (raising ValueError or ArithmeticError for bad
    ones) and returns what runs until the stop event is set."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger(f"brokercore.{name}")
    try:
        kafka, settings = KafkaSettings.from_env(), ServiceSettings.from_env()
        run = prepare(kafka, settings)
    except (ValueError, ArithmeticError) as e:
        log.error("bad settings: %s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        code = run(kafka, settings, stop)
    except Exception:
        log.exception("%s failed", name)
        return 1
    return code if isinstance(code, int) else 0


@contextlib.asynccontextmanager
async def asyncio_stop(stop: threading.Event) -> AsyncIterator[asyncio.Event]:
    """An asyncio.Event set once ``stop`` is, for work in asyncio that waits on one.
    ``stop`` is set on the way out (the process is ending), which ends the thread that
    watches it."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch() -> None:
        stop.wait()
        loop.call_soon_threadsafe(stopped.set)

    watcher = asyncio.ensure_future(asyncio.to_thread(watch))
    try:
        yield stopped
    finally:
        stop.set()
        await watcher
