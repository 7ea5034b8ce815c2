"""The placement plan: which shard (partition of orders/events/snapshots) each symbol lives on.

CRC-32 alone puts symbols on shards blind to their volume: at the open one hot symbol can
share a shard (one matcher thread, one transactional producer) with others and hold them
back. The plan is computed from each instrument's expected volume (``weight`` in the
instruments file, default 1; or, with ``brokercore plan --from-events``, the orders each
symbol had in the sessions the events topic retains):

* a symbol whose weight is above ``hot_ratio`` times the fair share (total / shards) is
  hot and gets a shard of its own (its CRC-32 shard if free, else the lowest free one);
* the rest are balanced over the remaining shards, heaviest first (ties by name): each
  goes to its CRC-32 shard while that keeps the shard within the fair share of the rest
  or the shard is among the least loaded, else to the least loaded shard (ties by
  number).

So the same weights give the same plan in every process, and with equal weights and a
placement CRC-32 already balances the plan is CRC-32's. An operator pins a plan with a
plan file (``brokercore plan --write FILE``, read when ``BROKERCORE_SHARD_PLAN`` names
it): the OMS and the engine daemons then route by the file, and a symbol move changes it
(a new ``version``).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from brokercore.config import KafkaSettings
from brokercore.engine.records import EventType
from brokercore.kafka.messages import EventBatch
from brokercore.kafka.topics import partition_of

__all__ = [
    "PlanFile",
    "ShardPlan",
    "Weighted",
    "compute_plan",
    "read_plan",
    "shard_plan",
    "weights_from_events",
]


class Weighted(Protocol):
    """An instrument as the plan sees it (the engine's Instrument, the broker's
    MarketInstrument)."""

    @property
    def symbol(self) -> str: ...

    @property
    def weight(self) -> float: ...


class PlanFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A plan as written to a file (JSON): the shard of every symbol."""

    shards: Annotated[int, msgspec.Meta(ge=1)]
    symbols: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    version: Annotated[int, msgspec.Meta(ge=1)] = 1
    hot: list[str] = []


@dataclass(frozen=True)
class ShardPlan:
    """The shard of every symbol; ``hot`` are the symbols placed alone."""

    shards: int
    symbols: Mapping[str, int]
    version: int = 1
    hot: tuple[str, ...] = ()
    weights: Mapping[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for symbol, shard in self.symbols.items():
            if not 0 <= shard < self.shards:
                raise ValueError(f"{symbol} is on shard {shard}, not one of {self.shards} shards")

    def shard_of(self, symbol: str) -> int:
        """The symbol's shard; KeyError for a symbol the plan does not place."""
        return self.symbols[symbol]

    def on_shard(self, shard: int) -> list[str]:
        """The symbols of ``shard``, by name."""
        return sorted(symbol for symbol, at in self.symbols.items() if at == shard)

    def moved(self, symbol: str, shard: int) -> ShardPlan:
        """This plan with ``symbol`` on ``shard``: the next version."""
        if symbol not in self.symbols:
            raise KeyError(symbol)
        return ShardPlan(
            self.shards,
            {**self.symbols, symbol: shard},
            self.version + 1,
            tuple(s for s in self.hot if s != symbol),
            self.weights,
        )

    def to_file(self) -> bytes:
        """The plan file's text (pretty JSON, symbols by name)."""
        data = PlanFile(self.shards, dict(sorted(self.symbols.items())), self.version, [*self.hot])
        return msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"

    def describe(self) -> list[str]:
        """One line per shard: its load (weights) and symbols, hot ones marked."""
        lines = [
            f"plan version {self.version}: {len(self.symbols)} symbols on {self.shards} shards"
        ]
        for shard in range(self.shards):
            symbols = self.on_shard(shard)
            load = sum(self.weights.get(s, 1.0) for s in symbols)
            names = ", ".join(f"{s} (hot)" if s in self.hot else s for s in symbols)
            lines.append(f"shard {shard}: weight {load:g}: {names or '-'}")
        return lines


def compute_plan(weights: Mapping[str, float], shards: int, hot_ratio: float = 1.0) -> ShardPlan:
    """The plan of ``weights`` (symbol -> expected volume, > 0) on ``shards`` shards (see
    the module's docstring)."""
    if shards < 1:
        raise ValueError("the number of shards must be at least 1")
    for symbol, weight in weights.items():
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"{symbol}: weight must be a positive number, not {weight!r}")
    order = sorted(weights, key=lambda s: (-weights[s], s))
    total = sum(weights.values())
    hot = [s for s in order if weights[s] > hot_ratio * total / shards]
    if len(hot) < len(order):  # the others need a shard too
        hot = hot[: shards - 1]
    hot = hot[:shards]
    placed: dict[str, int] = {}
    for symbol in hot:
        home = partition_of(symbol, shards)
        placed[symbol] = home if home not in placed.values() else _first_free(placed, shards)
    free = [k for k in range(shards) if k not in placed.values()]
    rest = [s for s in order if s not in placed]
    load = dict.fromkeys(free, 0.0)
    fair = sum(weights[s] for s in rest) / len(free) if free else 0.0
    for symbol in rest:
        weight, home = weights[symbol], partition_of(symbol, shards)
        least = min(load.values())
        if home in load and (load[home] + weight <= fair or load[home] <= least):
            shard = home
        else:
            shard = min(load, key=lambda k: (load[k], k))
        placed[symbol] = shard
        load[shard] += weight
    return ShardPlan(shards, placed, hot=tuple(hot), weights=dict(weights))


def weights_from_events(settings: KafkaSettings, timeout: float = 30.0) -> dict[str, float]:
    """Orders per symbol in the events topic as Kafka retains it (its ACCEPTED events):
    the volume of the sessions before, for a plan computed from what happened."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap,
            "group.id": f"brokercore-plan-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partitions = range(settings.shards)
    consumer.assign(
        [TopicPartition(settings.events_topic, p, OFFSET_BEGINNING) for p in partitions]
    )
    counts: Counter[str] = Counter()
    decode, ended = msgspec.msgpack.Decoder(EventBatch).decode, set[int]()
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < settings.shards:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the events topic not read to its end in {timeout} s")
                continue
            deadline = time.monotonic() + timeout
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                partition = message.partition()
                assert partition is not None  # an end of partition says which
                ended.add(partition)
                continue
            batch = decode(message.value() or b"")
            counts.update(e.symbol for e in batch.events if e.type == EventType.ACCEPTED)
    finally:
        consumer.close()
    return {symbol: float(n) for symbol, n in counts.items()}


def _first_free(placed: Mapping[str, int], shards: int) -> int:
    return next(k for k in range(shards) if k not in placed.values())


def read_plan(path: str | os.PathLike[str]) -> ShardPlan:
    """A plan file; ValueError naming the file for anything wrong in it."""
    try:
        with open(path, "rb") as f:
            data = msgspec.json.decode(f.read(), type=PlanFile)
        return ShardPlan(data.shards, data.symbols, data.version, tuple(data.hot))
    except (msgspec.DecodeError, ValueError) as e:
        raise ValueError(f"shard plan {path}: {e}") from None


def shard_plan(settings: KafkaSettings, instruments: Iterable[Weighted]) -> ShardPlan:
    """The plan every process of a deployment uses: the file ``settings.shard_plan``
    names if set (it must place every instrument, on ``settings.shards`` shards), else
    the one computed from the instruments' weights."""
    weights = {i.symbol: i.weight for i in instruments}
    if not settings.shard_plan:
        return compute_plan(weights, settings.shards)
    plan = read_plan(settings.shard_plan)
    if plan.shards != settings.shards:
        raise ValueError(
            f"shard plan {settings.shard_plan} is for {plan.shards} shards, "
            f"the configuration says {settings.shards}"
        )
    missing = sorted(set(weights) - set(plan.symbols))
    if missing:
        raise ValueError(f"shard plan {settings.shard_plan} does not place {', '.join(missing)}")
    return ShardPlan(plan.shards, plan.symbols, plan.version, plan.hot, weights)
