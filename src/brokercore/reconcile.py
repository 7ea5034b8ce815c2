"""Kafka `events` against Postgres: what the settled state should be, and where it is not.

The expected state of each order comes from replaying the engine's events with the
same rules the settlement consumer applies (brokercore.settlement); only the events
settlement says it has applied (its offsets in consumer_offsets) count, so a consumer
that is merely behind shows no discrepancy. Findings:

- STATUS: an order's status differs from what its events say;
- FILLED_QTY: its filled quantity differs;
- FILL_MISSING / FILL_UNEXPECTED: a fill in the events but not in `fills`, or the reverse;
- STUCK_PENDING: an order still PENDING after ``pending_after`` with no event at all
  (the reconciler's re-publishing should have reached the engine by then).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
import psycopg

from brokercore.messages import Event, EventBatch
from brokercore.records import EventType, Op, Reason, Side
from brokercore.order_entry import OPEN_STATUSES
from brokercore.pgconsumer import stored_offsets
from brokercore.settlement import trade_id

__all__ = ["Finding", "Expected", "expected_state", "find_discrepancies", "settled_events"]

_ENDS = {EventType.CANCELLED: "CANCELLED", EventType.EXPIRED: "EXPIRED"}


@dataclass(frozen=True)
class Finding:
    kind: str
    order_id: int | None
    detail: str


@dataclass
class Expected:
    """What the events say about the orders they name."""

    orders: dict[int, list] = field(default_factory=dict)     # id -> [status, filled]
    fills: set[tuple[str, str]] = field(default_factory=set)   # (trade_id, side)


def expected_state(events: Iterable[Event], ours: dict[int, str]) -> Expected:
    """Replay ``events`` for the orders in ``ours`` (order id -> side name)."""
    state = Expected()

    def order(order_id: int) -> list | None:
        if order_id not in ours:
            return None
        return state.orders.setdefault(order_id, ["PENDING", 0])

    for e in events:
        if e.type == EventType.TRADE:
            taker_side = Side(e.side)
            maker_side = Side.SELL if taker_side == Side.BUY else Side.BUY
            for order_id, side, remaining in ((e.order_id, taker_side, e.remaining),
                                              (e.other_id, maker_side, e.other_remaining)):
                if (found := order(order_id)) is not None:
                    found[1] += e.qty
                    found[0] = "FILLED" if remaining == 0 else "PARTIALLY_FILLED"
                    state.fills.add((trade_id(e), side.name))
            continue
        if (found := order(e.order_id)) is None:
            continue
        if e.type == EventType.ACCEPTED and found[0] == "PENDING":
            found[0] = "OPEN"
        elif e.type in _ENDS and found[0] in OPEN_STATUSES:
            found[0] = _ENDS[e.type]
        elif (e.type == EventType.REJECTED and e.op in (Op.LIMIT, Op.MARKET)
              and e.reason != Reason.DUPLICATE_ORDER_ID and found[0] == "PENDING"):
            found[0] = "REJECTED"
    return state


def find_discrepancies(conn: psycopg.Connection, events: Iterable[Event], now: datetime,
                       pending_after: timedelta = timedelta(minutes=2)) -> list[Finding]:
    """Compare the events (those settlement applied) with the orders and fills tables."""
    rows = conn.execute("SELECT order_id, side, status, filled_quantity, created_at "
                        "FROM orders").fetchall()
    ours = {order_id: side for order_id, side, *_ in rows}
    expected = expected_state(events, ours)
    findings = []
    for order_id, _, status, filled, created_at in rows:
        if order_id not in expected.orders:
            if status == "PENDING" and now - created_at > pending_after:
                findings.append(Finding("STUCK_PENDING", order_id,
                                        f"PENDING since {created_at:%Y-%m-%d %H:%M:%S}"))
            continue
        want_status, want_filled = expected.orders[order_id]
        if status != want_status:
            findings.append(Finding("STATUS", order_id,
                                    f"Postgres says {status}, the events say {want_status}"))
        if filled != want_filled:
            findings.append(Finding("FILLED_QTY", order_id,
                                    f"Postgres says {filled}, the events say {want_filled}"))
    fills = set(conn.execute("SELECT trade_id, side FROM fills").fetchall())
    findings += [Finding("FILL_MISSING", None, f"{tid} {side}")
                 for tid, side in sorted(expected.fills - fills)]
    findings += [Finding("FILL_UNEXPECTED", None, f"{tid} {side}")
                 for tid, side in sorted(fills - expected.fills)]
    return findings


def settled_events(conn: psycopg.Connection, bootstrap: str, topic: str,
                   consumer: str = "settlement") -> list[Event]:
    """The events of ``topic`` (read_committed) that ``consumer`` has applied, in order
    per partition: each partition from its start up to the consumer's stored offset."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    upto = {p: o for p, o in stored_offsets(conn, consumer, topic).items() if o > 0}
    if not upto:
        return []
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "brokercore-reconciler",
                       "isolation.level": "read_committed", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    reader.assign([TopicPartition(topic, p, 0) for p in upto])
    decode = msgspec.msgpack.Decoder(EventBatch).decode
    events, done = {p: [] for p in upto}, set()
    try:
        while len(done) < len(upto):
            message = reader.poll(10)
            if message is None:
                raise TimeoutError(f"{topic}: no answer from Kafka within 10 s")
            partition = message.partition()
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(message.error())
                done.add(partition)
            elif message.offset() >= upto[partition]:
                done.add(partition)
            elif partition not in done:
                events[partition] += decode(message.value()).events
    finally:
        reader.close()
    return [e for p in sorted(events) for e in events[p]]
