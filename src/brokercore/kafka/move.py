"""Moving a symbol to another shard at a session boundary, its book with it.

Done while the daemons of both shards are stopped gracefully (each stop commits its
input offset and a snapshot at exactly that offset) and the symbol's session is closed:

1. the source shard's newest snapshot must be at its committed input offset (a daemon
   killed rather than stopped leaves it behind: start and stop that daemon first), so
   the symbol's book in it reflects every order the source shard ever committed;
2. the target shard's newest snapshot gets that book added, rewritten in one Kafka
   transaction under the target shard's transactional.id (fencing any zombie of it) at
   the same input offset and event count: the target shard has no command of the symbol
   before that offset, so its replay from there is unchanged;
3. the plan file (BROKERCORE_SHARD_PLAN) is replaced, atomically, by the plan's next
   version with the symbol on the target shard: this is the commit point.

Before 3 the old plan holds: the source shard still owns the symbol and its book, and
the target daemon drops the copy it does not own when it starts (EngineDaemon keeps
only its plan's books); after 3 the target owns the book and the source drops its copy.
Either way exactly one shard applies the symbol's orders, each once, and a move cut
short by a crash is simply run again. The OMS processes read the plan when they start:
restart them after a move. An order that reaches the old shard after the move (an OMS
on the old plan, a re-published outbox row) is refused by it (UNKNOWN_SYMBOL, a
REJECTED event the consumers release the order's hold on), never lost or applied twice.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from brokercore.config import KafkaSettings
from brokercore.engine.instruments import Instrument
from brokercore.kafka.daemon import lease_members
from brokercore.kafka.messages import ShardSnapshot, encode
from brokercore.kafka.placement import ShardPlan, shard_plan
from brokercore.kafka.topics import SNAPSHOT_MAX_BYTES
from brokercore.runtime.shard import Shard, read_snapshot

__all__ = ["MoveRefused", "move_symbol"]

_NO_OFFSET = -1001
TIMEOUT = 30.0


class MoveRefused(ValueError):
    """The move cannot be done now (and nothing was changed): why, in words."""


def move_symbol(
    settings: KafkaSettings,
    instruments: Sequence[Instrument],
    symbol: str,
    target: int,
    say: Callable[[str], None] = print,
) -> ShardPlan:
    """Move ``symbol`` to shard ``target`` (see the module's docstring); the new plan,
    written to ``settings.shard_plan``. MoveRefused if a precondition does not hold."""
    if not settings.shard_plan:
        raise MoveRefused(
            "a move changes the plan file: pin the plan first (brokercore plan --write "
            "FILE, BROKERCORE_SHARD_PLAN=FILE for every process)"
        )
    plan = shard_plan(settings, instruments)
    if symbol not in plan.symbols:
        raise MoveRefused(f"{symbol} is not in the plan")
    if not 0 <= target < settings.shards:
        raise MoveRefused(f"shard {target} is not one of the {settings.shards} shards")
    source = plan.shard_of(symbol)
    if source == target:
        raise MoveRefused(f"{symbol} is on shard {target} already")
    running = lease_members(AdminClient({"bootstrap.servers": settings.bootstrap}), settings)
    for shard in (source, target):
        members = running[shard].active + running[shard].standby
        if members:
            raise MoveRefused(
                f"shard {shard} has daemons running ({', '.join(members)}): stop them"
            )
    symbol_id = next(i.symbol_id for i in instruments if i.symbol == symbol)
    books, applied, snapshots = {}, {}, {}
    for shard in (source, target):
        snapshot = _newest_snapshot(settings, shard)
        committed = _committed_offset(settings, shard)
        if snapshot is None or snapshot.next_offset != committed:
            raise MoveRefused(
                f"shard {shard}'s newest snapshot is not at its committed input offset "
                f"{committed}: start its daemon and stop it gracefully (SIGTERM) first"
            )
        books[shard], applied[shard] = read_snapshot(snapshot.books)
        snapshots[shard] = snapshot
    book = books[source].get(symbol_id)
    if book is not None and book.is_open:
        raise MoveRefused(f"{symbol}'s session is open on shard {source}: move it after CLOSE")
    if book is not None:
        books[target][symbol_id] = book
    moved = ShardSnapshot(
        target,
        snapshots[target].next_offset,
        snapshots[target].events,
        Shard(books[target], commands_applied=applied[target]).snapshot(),
    )
    _publish_snapshot(settings, moved)
    say(
        f"moved {symbol}'s book ({book.open_orders if book else 0} resting orders) from "
        f"shard {source} to shard {target}'s snapshot at input offset {moved.next_offset}"
    )
    new_plan = plan.moved(symbol, target)
    _replace(settings.shard_plan, new_plan.to_file())
    say(f"plan version {new_plan.version} written to {settings.shard_plan}: restart the OMS")
    return new_plan


def _committed_offset(settings: KafkaSettings, shard: int) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": settings.engine_group(shard),
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
        }
    )
    try:
        [found] = consumer.committed([TopicPartition(settings.orders_topic, shard)], TIMEOUT)
    finally:
        consumer.close()
    if found.error is not None:
        raise KafkaException(found.error)
    return 0 if found.offset == _NO_OFFSET else int(found.offset)


def _newest_snapshot(settings: KafkaSettings, shard: int) -> ShardSnapshot | None:
    """The last committed snapshot on the shard's partition of the snapshots topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"brokercore-move-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": SNAPSHOT_MAX_BYTES,
            "max.partition.fetch.bytes": SNAPSHOT_MAX_BYTES,
            "receive.message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
        }
    )
    consumer.assign([TopicPartition(settings.snapshots_topic, shard, OFFSET_BEGINNING)])
    newest, decoder = None, msgspec.msgpack.Decoder(ShardSnapshot)
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() > deadline:
                    raise MoveRefused(f"no answer from Kafka reading shard {shard}'s snapshots")
                continue
            error = message.error()
            if error:
                if error.code() == KafkaError._PARTITION_EOF:
                    return newest
                raise KafkaException(error)
            snapshot = decoder.decode(message.value() or b"")
            if snapshot.shard == shard:
                newest = snapshot
    finally:
        consumer.close()


def _publish_snapshot(settings: KafkaSettings, snapshot: ShardSnapshot) -> None:
    """Produce ``snapshot`` in a transaction of the shard's own transactional.id."""
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap,
            "transactional.id": settings.transactional_id(snapshot.shard),
            "message.max.bytes": SNAPSHOT_MAX_BYTES + (1 << 20),
        }
    )
    producer.init_transactions(TIMEOUT)
    producer.begin_transaction()
    producer.produce(
        settings.snapshots_topic,
        encode(snapshot),
        str(snapshot.shard),
        partition=snapshot.shard,
    )
    producer.commit_transaction(TIMEOUT)


def _replace(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
