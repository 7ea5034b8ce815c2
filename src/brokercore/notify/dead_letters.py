"""Pushes and postbacks that failed every attempt, kept on Kafka (the notifications' and
the postbacks' dead-letter topics, msgpack, keyed by the notification's id); the
reconciler tries the pushes again (``brokercore.notify.redelivery``)."""

from __future__ import annotations

import asyncio
import threading

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from brokercore.faults.kafka_errors import QUIET_KAFKA
from brokercore.kafka.messages import encode
from brokercore.realtime.channels import Notification

__all__ = ["PushDeadLetter", "PostbackDeadLetter", "DeadLetters"]


class PushDeadLetter(msgspec.Struct, rename="camel", frozen=True):
    """A push that failed every attempt."""

    notification: Notification
    user_id: str
    device_token: str
    attempts: int
    last_error: str
    failed_at: str  # ISO 8601 UTC


class PostbackDeadLetter(msgspec.Struct, rename="camel", frozen=True):
    """A postback that failed every attempt (its registration's secret is not copied)."""

    notification: Notification
    user_id: str
    postback_id: int
    url: str
    attempts: int
    last_error: str
    failed_at: str  # ISO 8601 UTC


class DeadLetters:
    """Produces dead letters, each acknowledged by Kafka before ``put`` returns."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 10.0):
        self.topic, self.timeout = topic, timeout
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": int(timeout * 1000),
                **QUIET_KAFKA,
            }
        )
        self._lock = threading.Lock()  # one flush at a time sees its own report

    async def put(self, letter: PushDeadLetter | PostbackDeadLetter) -> None:
        """KafkaException if the broker did not acknowledge it."""
        await asyncio.to_thread(self._put, letter.notification.id.encode(), encode(letter))

    def _put(self, key: bytes, value: bytes) -> None:
        reports: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _: Message) -> None:
            reports.append(error)

        with self._lock:
            self._producer.produce(self.topic, value, key, on_delivery=delivered)
            self._producer.flush(self.timeout + 1)
        if not reports:
            raise KafkaException(f"no acknowledgement from {self.topic}")
        if reports[0] is not None:
            raise KafkaException(reports[0])

    def close(self) -> None:
        self._producer.flush(self.timeout)
