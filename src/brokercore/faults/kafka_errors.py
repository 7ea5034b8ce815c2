"""Which Kafka errors pass by themselves: a broker restarting or away, a coordinator
still loading (a brand-new broker makes its internal topics on first use), a topic
being created, a leader epoch the client has not caught up with since a restart.
librdkafka flags most of them ``retriable()``, not all (NOT_COORDINATOR from an offset
fetch, its own local transport and time-out codes, FENCED_LEADER_EPOCH), hence the list.

Apart from brokercore.faults.backoff so that the engine daemon, which knows nothing of
Postgres or Redis, shares the same judgement with the consumers and the outbox.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

__all__ = ["QUIET_KAFKA", "transient_kafka"]

_KAFKA_AWAY = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        # A client's leader epochs from before a broker restart: it refreshes them.
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
    }
)

# librdkafka logs every failed reconnect (many lines a second while a broker is away);
# the same errors reach the client's error_cb and are logged once per outage instead.
QUIET_KAFKA = {"log_level": 2}


def transient_kafka(error: BaseException | KafkaError) -> bool:
    """A Kafka error (or the exception carrying it) that passes once the broker is back;
    never a fatal one, nor any other error."""
    if isinstance(error, KafkaException):
        error = error.args[0]
    return (
        isinstance(error, KafkaError)
        and not error.fatal()
        and (error.retriable() or error.code() in _KAFKA_AWAY)
    )
