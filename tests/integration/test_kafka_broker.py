"""The development Kafka (scripts/kafka/kafka.sh, started by `make test`) is real and
fit for the exactly-once chain: transactions initialise on a single node and a
read_committed consumer sees committed records only."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from shared_servers import KAFKA_BOOTSTRAP


@pytest.fixture
def topic():
    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    name = f"test-{uuid.uuid4().hex}"
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


def read_committed(topic: str) -> tuple[list[bytes], int]:
    """Every committed value of the topic, and its high watermark (offsets in use)."""
    consumer = Consumer(
        {
            "bootstrap.servers": KAFKA_BOOTSTRAP,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    # From the first offset: no consumer group (and so no group coordinator) involved.
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values, empty_polls = [], 0
    try:
        while empty_polls < 3:
            message = consumer.poll(2.0)
            if message is None:
                empty_polls += 1
                continue
            if message.error():
                raise KafkaException(message.error())
            values.append(message.value())
            empty_polls = 0
        high = consumer.get_watermark_offsets(TopicPartition(topic, 0), 10)[1]
    finally:
        consumer.close()
    return values, high


def test_transactions_commit_and_abort_on_the_single_node_broker(topic):
    producer = Producer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed-1")
    producer.produce(topic, b"committed-2")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(30)  # on the broker, then aborted
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed-3")
    producer.commit_transaction(30)

    values, high_watermark = read_committed(topic)
    assert values == [b"committed-1", b"committed-2", b"committed-3"]
    # The aborted record and the three transaction markers were written all the same.
    assert high_watermark == 7
