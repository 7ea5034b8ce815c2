"""The life of a consumer process (settlement, projector, notifier): logging, settings,
SIGTERM, exit codes. 0 after SIGTERM or Ctrl-C (the batch in hand finished), 2 for bad
settings, 1 for a failure that does not pass by itself (nothing of the failed batch
stored: a restart resumes). A restart of Postgres, Redis or Kafka is not such a failure:
the consumers wait it out (brokercore.faults.backoff)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

from brokercore.config import KafkaSettings, ServiceSettings

__all__ = ["run_consumer"]

Run = Callable[[KafkaSettings, ServiceSettings, threading.Event], object]


def run_consumer(name: str, prepare: Callable[[KafkaSettings, ServiceSettings], Run]) -> int:
    """``prepare`` checks the settings (raising ValueError or ArithmeticError for bad
    ones) and returns what runs until the stop event is set."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        run(kafka, settings, stop)
    except Exception:
        log.exception("%s failed", name)
        return 1
    return 0
