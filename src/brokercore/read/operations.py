"""What the operator's overview shows (GET /api/v1/operator/overview): each shard's engine
daemons, offsets and lag; each consumer's lag; the reconciler's latest runs with their
findings.

The Kafka figures are the ones ``brokercore status`` and the monitor read (the lease
groups: brokercore.kafka.daemon.lease_members; the lags: brokercore.kafka.lag), put
together here by ``overview``; the findings are those the reconciler stored (migration
0020, brokercore.consumers.reconcile.record_run), read by ``latest_runs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec
from psycopg import AsyncConnection

from brokercore.kafka.daemon import LeaseMembers
from brokercore.kafka.lag import PartitionLag
from brokercore.kafka.placement import ShardPlan

__all__ = [
    "SHOWN_FINDINGS",
    "ShardState",
    "PartitionReading",
    "ConsumerLag",
    "StoredFinding",
    "ReconcilerRun",
    "Overview",
    "latest_runs",
    "overview",
]

SHOWN_FINDINGS = 100
"""Findings of a run the overview shows at most (the run says how many it had)."""

ENGINE = "engine"
"""The readings of the engine daemons in the lags (``brokercore.services.monitor``)."""


class ShardState(msgspec.Struct, rename="camel", frozen=True):
    """A shard: its partition of ``orders``, ``events`` and ``snapshots``, its symbols,
    its daemons (``alive``: one holds the lease), how far the daemon has read its orders
    (``engine_offset``, committed with its events) and how far it has written events."""

    shard: int
    partition: int
    symbols: list[str]
    hot: list[str]  # its symbols placed alone
    alive: bool
    active: list[str]
    standby: list[str]
    orders_end: int  # the orders partition's high watermark
    engine_offset: int | None  # None: the daemon has committed nothing yet
    lag: int
    events_end: int  # the events partition's high watermark


class PartitionReading(msgspec.Struct, rename="camel", frozen=True):
    topic: str
    partition: int
    position: int | None  # None: nothing committed yet
    end: int
    lag: int


class ConsumerLag(msgspec.Struct, rename="camel", frozen=True):
    """A consumer of ``events`` (settlement, the projector, the notifier ...): its lag in
    all and on each partition."""

    consumer: str
    lag: int
    partitions: list[PartitionReading]


class StoredFinding(msgspec.Struct, rename="camel", frozen=True):
    kind: str  # brokercore.consumers.reconcile's kinds: STATUS, NEGATIVE_CASH, ...
    account_id: int | None
    order_id: int | None
    detail: str


class ReconcilerRun(msgspec.Struct, rename="camel", frozen=True):
    """A run: INVARIANTS (a round of the reconciler) or FULL (``--report``: Kafka's events
    against Postgres too); ``findings`` counts them all, ``items`` are the first ones."""

    run_id: int
    ran_at: datetime
    scope: str
    findings: int
    items: list[StoredFinding]


class Overview(msgspec.Struct, rename="camel", frozen=True):
    """The answer; ``problems`` says in words what could not be measured (Kafka or
    Postgres away), the rest of the answer being what could."""

    measured_at: datetime
    shards: list[ShardState]
    consumers: list[ConsumerLag]
    reconciler: list[ReconcilerRun]  # the latest run of each scope, the newest first
    problems: list[str]


_LATEST_RUNS = """
SELECT DISTINCT ON (scope) run_id, ran_at, scope, findings
  FROM reconciler_runs ORDER BY scope, ran_at DESC, run_id DESC"""

_FINDINGS = """
SELECT run_id, kind, account_id, order_id, detail FROM reconciler_findings
 WHERE run_id = ANY(%s) AND position < %s ORDER BY run_id, position"""


async def latest_runs(conn: AsyncConnection, most: int = SHOWN_FINDINGS) -> list[ReconcilerRun]:
    """The latest stored run of each scope with its first ``most`` findings, the newest
    run first."""
    runs = await (await conn.execute(_LATEST_RUNS)).fetchall()
    found: dict[int, list[StoredFinding]] = {run_id: [] for run_id, *_ in runs}
    rows = await (await conn.execute(_FINDINGS, (list(found), most))).fetchall()
    for run_id, *finding in rows:
        found[run_id].append(StoredFinding(*finding))
    answer = [
        ReconcilerRun(run_id, ran_at, scope, count, found[run_id])
        for run_id, ran_at, scope, count in runs
    ]
    return sorted(answer, key=lambda run: (run.ran_at, run.run_id), reverse=True)


def overview(
    plan: ShardPlan,
    daemons: Mapping[int, LeaseMembers],
    lags: Mapping[str, Sequence[PartitionLag]],
    runs: list[ReconcilerRun],
    problems: list[str],
    measured_at: datetime,
) -> Overview:
    """The overview from the lease groups' members, the lags as the monitor reads them
    (consumer -> readings; ``engine``: each shard's daemon on its orders partition) and
    the stored runs. Without Kafka's figures (``daemons`` and ``lags`` empty) it has the
    runs alone."""
    engine = {reading.partition: reading for reading in lags.get(ENGINE, ())}
    events_end = {
        reading.partition: reading.end
        for name, readings in lags.items()
        if name != ENGINE
        for reading in readings
    }
    shards = [
        ShardState(
            shard,
            shard,
            plan.on_shard(shard),
            [symbol for symbol in plan.on_shard(shard) if symbol in plan.hot],
            bool(members.active),
            members.active,
            members.standby,
            engine[shard].end,
            engine[shard].position,
            engine[shard].lag,
            events_end.get(shard, 0),
        )
        for shard, members in sorted(daemons.items())
    ]
    consumers = [
        ConsumerLag(
            name,
            sum(reading.lag for reading in readings),
            [PartitionReading(r.topic, r.partition, r.position, r.end, r.lag) for r in readings],
        )
        for name, readings in lags.items()
        if name != ENGINE
    ]
    return Overview(measured_at, shards, consumers, runs, problems)
