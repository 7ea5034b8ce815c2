"""Riding out an outage of Postgres, Redis or Kafka: which errors pass by themselves,
and a bounded exponential back-off that logs once per outage.

A long-running process (the Postgres-offset consumers, the notifier, the outbox
publishers) must neither die nor spin on a dependency that restarts: it waits 0.1 s,
0.2 s, 0.4 s ... at most 5 s between attempts, says so once when the outage starts and
once when it ends (not a traceback per attempt), and still stops promptly when asked.
Errors that do not pass by themselves (a schema error, an event that contradicts an
order) are not transient: the caller lets them stop the process, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException

from brokercore.faults.kafka_errors import transient_kafka

__all__ = ["Backoff", "retry_delay", "transient"]


def retry_delay(retry: int, base: float, cap: float) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): base, 2·base, 4·base ..., at
    most ``cap``."""
    return min(cap, base * 2.0 ** min(retry - 1, 62))


def transient(error: BaseException) -> bool:
    """An error that passes by itself: Postgres restarting or unreachable (a lost
    connection, a refused one, a pool that found none) or rolling back a deadlock, Redis
    unreachable, a Kafka broker away."""
    if isinstance(error, psycopg.OperationalError):
        return True
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(error, KafkaException) and transient_kafka(error)


class Backoff:
    """Bounded exponential back-off for one dependency. ``failed`` counts an attempt that
    failed and gives the delay before the next; the first failure of an outage is
    logged (one line, no traceback), and so is the end of the outage (``recovered``)."""

    def __init__(self, what: str, logger: logging.Logger, *, base: float = 0.1, cap: float = 5.0):
        self.what = what
        self.log = logger
        self.base = base
        self.cap = cap
        self.failures = 0
        self._since = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, error: BaseException | KafkaError | str) -> float:
        if not self.failures:
            self._since = time.monotonic()
            self.log.warning(
                "%s failed (%s); retrying, every %.1f s to %.1f s, until it is back",
                self.what,
                _one_line(error),
                self.base,
                self.cap,
            )
        self.failures += 1
        return retry_delay(self.failures, self.base, self.cap)

    def recovered(self) -> None:
        if self.failures:
            self.log.warning(
                "%s back after %.1f s (%d failures)",
                self.what,
                time.monotonic() - self._since,
                self.failures,
            )
            self.failures = 0

    def wait(self, error: BaseException | KafkaError | str, stop: threading.Event) -> bool:
        """Count the failure and sleep its delay (threads); True if stopped meanwhile."""
        return stop.wait(self.failed(error))

    async def pause(
        self, error: BaseException | KafkaError | str, stop: asyncio.Event | None = None
    ) -> bool:
        """Count the failure and sleep its delay (asyncio); True if stopped meanwhile."""
        delay = self.failed(error)
        if stop is None:
            await asyncio.sleep(delay)
            return False
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return True
        except TimeoutError:
            return False


def _one_line(error: BaseException | KafkaError | str) -> str:
    text = str(error).strip().replace("\n", " ")
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    return f"{name}: {text}" if name else text
