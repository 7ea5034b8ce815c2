"""What the settled state should be, and where Postgres is not that.

Two kinds of findings, each naming the account or order and the numbers.

Kafka `events` against Postgres (``find_discrepancies``). The expected state of each
order comes from replaying the engine's events with the same rules the settlement
consumer applies (brokercore.consumers.settlement); only the events settlement says it has applied
(its offsets in consumer_offsets) count, so a consumer that is merely behind shows no
discrepancy:

- STATUS: an order's status differs from what its events say;
- FILLED_QTY: its filled quantity differs;
- FILL_MISSING / FILL_UNEXPECTED: a fill in the events but not in `fills`, or the reverse;
- EVENT_REPEATED: an event committed to `events` more than once (the engine chain is
  exactly-once: each event is published once). The consumers are idempotent, so the
  repeat is counted once for the checks above and reported on its own.

Postgres against its own invariants (``check_invariants``): one set-based query per kind,
so that the long-running reconciler can run them every round on a big database:

- NEGATIVE_HOLDING, NEGATIVE_CASH, BLOCKED_CASH_ABOVE_CASH, BLOCKED_SHARES_ABOVE_HELD:
  a balance outside what the account may have (holdings only where it may not short);
- BLOCKED_CASH_MISMATCH / BLOCKED_SHARES_MISMATCH: an account's blocked cash, or a
  position's blocked shares, differs from what its open orders hold (and, for cash, its
  PENDING withdrawals); HOLD_AFTER_END: a finished order still holds something;
- FILLS_MISMATCH: an order's filled quantity differs from the sum of its fills;
- POSITION_NOT_CONSERVED: a position differs from its shares moved in and out (the
  ``funding`` journal) plus bought minus sold;
- CASH_NOT_CONSERVED: cash differs from deposits - withdrawals - bought + sold - fees,
  to the paisa;
- WITHDRAWAL_NOT_JOURNALLED: a COMPLETED withdrawal without its WITHDRAWAL row of
  ``funding`` (of its account and amount), or another withdrawal with one;
- STUCK_PENDING: an order still PENDING ``late`` after it became so (no event has
  reached settlement: the reconciler's re-publishing should have reached the engine);
  an after-market order becomes PENDING when it is sent, hours after it was placed;
- DAY_ORDER_PAST_CLOSE: a DAY order (a waiting DAY stop too) still open ``late`` after
  its session's close.

A waiting stop (TRIGGER_PENDING) is an open order: it holds cash or shares from its
acceptance although it is in no book, and the hold checks count it as any other.

Each query is a single statement, so it sees one snapshot: the writers (the OMS,
settlement, funding) change the rows an invariant relates in one transaction each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from brokercore.broker.market import Session
from brokercore.broker.orders import END_STATUS, OPEN_STATUSES, trade_id
from brokercore.consumers.pg_consumer import stored_offsets
from brokercore.engine.records import EventType, Reason, Side
from brokercore.kafka.messages import NEW_ORDER_OPS, STOP_OPS, Event, EventBatch

__all__ = [
    "Finding",
    "Expected",
    "ExpectedOrder",
    "expected_state",
    "find_discrepancies",
    "settled_events",
    "check_invariants",
    "Invariant",
    "INVARIANTS",
    "STORED_FINDINGS",
    "record_run",
]


@dataclass(frozen=True)
class Finding:
    """One thing wrong; ``str()`` of it is a line for a report or a log."""

    kind: str
    order_id: int | None
    detail: str
    account_id: int | None = None

    def __str__(self) -> str:
        subject = [f"account {self.account_id}"] if self.account_id is not None else []
        subject += [f"order {self.order_id}"] if self.order_id is not None else []
        return " ".join([self.kind, *subject, self.detail])


@dataclass
class ExpectedOrder:
    """What the events say of one order."""

    status: str = "PENDING"
    filled: int = 0


@dataclass
class Expected:
    """What the events say about the orders they name."""

    orders: dict[int, ExpectedOrder] = field(default_factory=dict)
    fills: set[tuple[str, str]] = field(default_factory=set)  # (trade_id, side)


def expected_state(events: Iterable[Event], ours: dict[int, str]) -> Expected:
    """Replay ``events`` for the orders in ``ours`` (order id -> side name)."""
    state = Expected()

    def order(order_id: int) -> ExpectedOrder | None:
        if order_id not in ours:
            return None
        return state.orders.setdefault(order_id, ExpectedOrder())

    for e in events:
        if e.type == EventType.TRADE:
            taker_side = Side(e.side)
            maker_side = Side.SELL if taker_side == Side.BUY else Side.BUY
            for order_id, side, remaining in (
                (e.order_id, taker_side, e.remaining),
                (e.other_id, maker_side, e.other_remaining),
            ):
                if (found := order(order_id)) is not None:
                    found.filled += e.qty
                    found.status = "FILLED" if remaining == 0 else "PARTIALLY_FILLED"
                    state.fills.add((trade_id(e), side.name))
            continue
        if (found := order(e.order_id)) is None:
            continue
        if e.type == EventType.ACCEPTED and found.status == "PENDING":
            found.status = "TRIGGER_PENDING" if e.op in STOP_OPS else "OPEN"
        elif e.type == EventType.TRIGGERED and found.status == "TRIGGER_PENDING":
            found.status = "OPEN"
        elif e.type == EventType.REJECTED:
            if (
                e.op in NEW_ORDER_OPS
                and e.reason != Reason.DUPLICATE_ORDER_ID
                and found.status == "PENDING"
            ):
                found.status = END_STATUS[e.type]
        elif e.type in END_STATUS and found.status in OPEN_STATUSES:
            found.status = END_STATUS[e.type]
    return state


def find_discrepancies(conn: psycopg.Connection, events: Iterable[Event]) -> list[Finding]:
    """Compare the events (those settlement applied) with the orders and fills tables."""
    rows = conn.execute("SELECT order_id, side, status, filled_quantity FROM orders").fetchall()
    ours = {order_id: side for order_id, side, *_ in rows}
    seen: set[Event] = set()
    once, findings = [], []
    for e in events:
        if e in seen:
            findings.append(
                Finding(
                    "EVENT_REPEATED",
                    e.order_id or None,
                    f"shard event {e.shard_seq} ({e.symbol} {e.type.name} seq {e.seq}) "
                    "is in the events topic again",
                )
            )
        else:
            seen.add(e)
            once.append(e)
    expected = expected_state(once, ours)
    for order_id, _, status, filled in rows:
        if order_id not in expected.orders:
            continue
        want = expected.orders[order_id]
        want_status, want_filled = want.status, want.filled
        if status != want_status:
            findings.append(
                Finding("STATUS", order_id, f"Postgres says {status}, the events say {want_status}")
            )
        if filled != want_filled:
            findings.append(
                Finding(
                    "FILLED_QTY", order_id, f"Postgres says {filled}, the events say {want_filled}"
                )
            )
    fills = set(conn.execute("SELECT trade_id, side FROM fills").fetchall())
    findings += [
        Finding("FILL_MISSING", None, f"{tid} {side}")
        for tid, side in sorted(expected.fills - fills)
    ]
    findings += [
        Finding("FILL_UNEXPECTED", None, f"{tid} {side}")
        for tid, side in sorted(fills - expected.fills)
    ]
    return findings


def settled_events(
    conn: psycopg.Connection, bootstrap: str, topic: str, consumer: str = "settlement"
) -> list[Event]:
    """The events of ``topic`` (read_committed) that ``consumer`` has applied, in order
    per partition: each partition from its start up to the consumer's stored offset."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    upto = {p: o for p, o in stored_offsets(conn, consumer, topic).items() if o > 0}
    if not upto:
        return []
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "brokercore-reconciler",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in upto])
    decode = msgspec.msgpack.Decoder(EventBatch).decode
    events: dict[int, list[Event]] = {p: [] for p in upto}
    done: set[int] = set()
    try:
        while len(done) < len(upto):
            message = reader.poll(10)
            if message is None:
                raise TimeoutError(f"{topic}: no answer from Kafka within 10 s")
            partition, error = message.partition(), message.error()
            assert partition is not None  # a consumer's messages have one
            if error:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                done.add(partition)
                continue
            offset, value = message.offset(), message.value()
            assert offset is not None and value is not None  # a record, not an error
            if offset >= upto[partition]:
                done.add(partition)
            elif partition not in done:
                events[partition] += decode(value).events
    finally:
        reader.close()
    return [e for p in sorted(events) for e in events[p]]


# --- Postgres against its own invariants ------------------------------------------------


@dataclass(frozen=True)
class Invariant:
    """One kind of finding: a query for the rows that break it (parameters: ``open``,
    ``now``, ``late`` and the sessions as ``symbols``, ``zones``, ``closes``), and the
    finding of one row."""

    kind: str
    sql: str
    finding: Callable[..., tuple[int | None, int | None, str]]  # row -> account, order, detail


def _shares(row_quantity: int, shares_in: int, shares_out: int, bought: int, sold: int) -> str:
    return (
        f"quantity {row_quantity}, expected {shares_in - shares_out + bought - sold} = "
        f"{shares_in} in - {shares_out} out + {bought} bought - {sold} sold"
    )


INVARIANTS = (
    Invariant(
        "NEGATIVE_HOLDING",
        "SELECT p.account_id, p.symbol, p.quantity FROM positions p "
        "JOIN accounts a USING (account_id) WHERE p.quantity < 0 AND NOT a.allow_short "
        "ORDER BY 1, 2",
        lambda a, s, q: (a, None, f"{s} quantity {q} (short selling off)"),
    ),
    Invariant(
        "NEGATIVE_CASH",
        "SELECT account_id, cash FROM accounts WHERE cash < 0 ORDER BY 1",
        lambda a, c: (a, None, f"cash {c} paise"),
    ),
    Invariant(
        "BLOCKED_CASH_ABOVE_CASH",
        "SELECT account_id, blocked_cash, cash FROM accounts WHERE blocked_cash > cash ORDER BY 1",
        lambda a, b, c: (a, None, f"blocked cash {b} paise above cash {c} paise"),
    ),
    Invariant(
        "BLOCKED_SHARES_ABOVE_HELD",
        "SELECT p.account_id, p.symbol, p.blocked_quantity, p.quantity FROM positions p "
        "JOIN accounts a USING (account_id) "
        "WHERE p.blocked_quantity > 0 AND p.blocked_quantity > p.quantity "
        "AND NOT a.allow_short ORDER BY 1, 2",
        lambda a, s, b, q: (a, None, f"{s} blocked {b} shares above {q} held (short selling off)"),
    ),
    Invariant(
        "BLOCKED_CASH_MISMATCH",
        "SELECT account_id, coalesce(a.blocked_cash, 0), coalesce(h.held, 0), "
        "coalesce(h.orders, 0), coalesce(h.withdrawing, 0), coalesce(h.withdrawals, 0) "
        "FROM (SELECT account_id, blocked_cash FROM accounts WHERE blocked_cash <> 0) a "
        "FULL JOIN ("
        "  SELECT account_id, sum(held)::bigint AS held, sum(orders) AS orders,"
        "    sum(withdrawing)::bigint AS withdrawing, sum(withdrawals) AS withdrawals FROM ("
        "    SELECT account_id, blocked_cash AS held, 1 AS orders, 0 AS withdrawing,"
        "      0 AS withdrawals"
        "    FROM orders WHERE status = ANY(%(open)s) AND blocked_cash <> 0 "
        "    UNION ALL "
        "    SELECT account_id, 0, 0, amount, 1 FROM withdrawals WHERE status = 'PENDING') b"
        "  GROUP BY account_id) h USING (account_id) "
        "WHERE coalesce(a.blocked_cash, 0) <> coalesce(h.held + h.withdrawing, 0) ORDER BY 1",
        lambda a, b, h, n, wh, wn: (
            a,
            None,
            f"blocked cash {b} paise, its {n} open orders hold {h} paise"
            + (f" and its {wn} pending withdrawals {wh} paise" if wn else ""),
        ),
    ),
    Invariant(
        "BLOCKED_SHARES_MISMATCH",
        "SELECT account_id, symbol, coalesce(p.blocked_quantity, 0), coalesce(o.held, 0), "
        "coalesce(o.orders, 0) FROM positions p FULL JOIN ("
        "  SELECT account_id, symbol, sum(blocked_shares)::bigint AS held, count(*) AS orders"
        "  FROM orders WHERE status = ANY(%(open)s) AND side = 'SELL' AND blocked_shares <> 0"
        "  GROUP BY account_id, symbol) o USING (account_id, symbol) "
        "WHERE coalesce(p.blocked_quantity, 0) <> coalesce(o.held, 0) ORDER BY 1, 2",
        lambda a, s, b, h, n: (
            a,
            None,
            f"{s} blocked {b} shares, its {n} open sell orders hold {h} shares",
        ),
    ),
    Invariant(
        "HOLD_AFTER_END",
        "SELECT account_id, order_id, status, blocked_cash, blocked_shares FROM orders "
        "WHERE status <> ALL(%(open)s) AND (blocked_cash <> 0 OR blocked_shares <> 0) "
        "ORDER BY 2",
        lambda a, o, s, c, q: (a, o, f"{s}, still holds {c} paise and {q} shares"),
    ),
    Invariant(
        "FILLS_MISMATCH",
        "SELECT coalesce(o.account_id, f.account_id), order_id, o.filled_quantity, "
        "coalesce(f.quantity, 0), coalesce(f.fills, 0) "
        "FROM (SELECT order_id, account_id, filled_quantity FROM orders) o FULL JOIN ("
        "  SELECT order_id, min(account_id) AS account_id, sum(quantity)::bigint AS quantity,"
        "  count(*) AS fills FROM fills GROUP BY order_id) f USING (order_id) "
        "WHERE o.filled_quantity IS DISTINCT FROM coalesce(f.quantity, 0) ORDER BY 2",
        lambda a, o, filled, q, n: (
            a,
            o,
            f"filled quantity {filled}, its {n} fills sum to {q}"
            if filled is not None
            else f"{n} fills of {q} shares of an order not in orders",
        ),
    ),
    Invariant(
        "POSITION_NOT_CONSERVED",
        "WITH moves AS ("
        "  SELECT account_id, symbol,"
        "    CASE kind WHEN 'SHARES_IN' THEN quantity ELSE 0 END AS shares_in,"
        "    CASE kind WHEN 'SHARES_OUT' THEN quantity ELSE 0 END AS shares_out,"
        "    0 AS bought, 0 AS sold"
        "  FROM funding WHERE symbol IS NOT NULL "
        "  UNION ALL "
        "  SELECT account_id, symbol, 0, 0,"
        "    CASE side WHEN 'BUY' THEN quantity ELSE 0 END,"
        "    CASE side WHEN 'SELL' THEN quantity ELSE 0 END"
        "  FROM fills), "
        "expected AS ("
        "  SELECT account_id, symbol, sum(shares_in)::bigint AS shares_in,"
        "    sum(shares_out)::bigint AS shares_out, sum(bought)::bigint AS bought,"
        "    sum(sold)::bigint AS sold"
        "  FROM moves GROUP BY account_id, symbol) "
        "SELECT account_id, symbol, coalesce(p.quantity, 0), coalesce(e.shares_in, 0), "
        "coalesce(e.shares_out, 0), coalesce(e.bought, 0), coalesce(e.sold, 0) "
        "FROM positions p FULL JOIN expected e USING (account_id, symbol) "
        "WHERE coalesce(p.quantity, 0) "
        "  <> coalesce(e.shares_in - e.shares_out + e.bought - e.sold, 0) ORDER BY 1, 2",
        lambda a, s, *numbers: (a, None, f"{s} {_shares(*numbers)}"),
    ),
    Invariant(
        "CASH_NOT_CONSERVED",
        "WITH moves AS ("
        "  SELECT account_id,"
        "    CASE kind WHEN 'DEPOSIT' THEN amount ELSE 0 END AS deposited,"
        "    CASE kind WHEN 'WITHDRAWAL' THEN amount ELSE 0 END AS withdrawn,"
        "    0 AS bought, 0 AS sold, 0 AS fees"
        "  FROM funding WHERE symbol IS NULL "
        "  UNION ALL "
        "  SELECT f.account_id, 0, 0,"
        "    CASE f.side WHEN 'BUY' THEN f.price * f.quantity ELSE 0 END,"
        "    CASE f.side WHEN 'SELL' THEN f.price * f.quantity ELSE 0 END,"
        "    coalesce(fi.amount, 0)"
        "  FROM fills f LEFT JOIN fee_income fi USING (trade_id, side)), "
        "expected AS ("
        "  SELECT account_id, sum(deposited) AS deposited, sum(withdrawn) AS withdrawn,"
        "    sum(bought) AS bought, sum(sold) AS sold, sum(fees) AS fees"
        "  FROM moves GROUP BY account_id) "
        "SELECT a.account_id, a.cash, coalesce(e.deposited, 0)::bigint, "
        "coalesce(e.withdrawn, 0)::bigint, coalesce(e.bought, 0)::bigint, "
        "coalesce(e.sold, 0)::bigint, coalesce(e.fees, 0)::bigint "
        "FROM accounts a LEFT JOIN expected e USING (account_id) "
        "WHERE a.cash <> coalesce(e.deposited - e.withdrawn - e.bought + e.sold - e.fees, 0) "
        "ORDER BY 1",
        lambda a, cash, d, w, b, s, f: (
            a,
            None,
            f"cash {cash} paise, expected {d - w - b + s - f} = {d} deposited - "
            f"{w} withdrawn - {b} bought + {s} sold - {f} fees",
        ),
    ),
    Invariant(
        "WITHDRAWAL_NOT_JOURNALLED",
        "SELECT w.account_id, w.withdrawal_id, w.status, w.amount, f.kind, f.account_id, "
        "f.amount FROM withdrawals w "
        "LEFT JOIN funding f ON f.reference = 'withdrawal:' || w.withdrawal_id "
        "WHERE (w.status = 'COMPLETED') <> (f.funding_id IS NOT NULL) "
        "OR (f.kind, f.account_id, f.amount) <> ('WITHDRAWAL', w.account_id, w.amount) "
        "ORDER BY 2",
        lambda a, w, status, amount, kind, account, paid: (
            a,
            None,
            f"withdrawal {w} {status} of {amount} paise, its funding row: "
            + ("none" if kind is None else f"{kind} of {paid} paise from account {account}"),
        ),
    ),
    Invariant(
        "STUCK_PENDING",
        "SELECT account_id, order_id, updated_at FROM orders "
        "WHERE status = 'PENDING' AND updated_at < %(now)s - %(late)s ORDER BY 2",
        lambda a, o, at: (a, o, f"PENDING since {at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"),
    ),
    Invariant(
        "DAY_ORDER_PAST_CLOSE",
        "SELECT o.account_id, o.order_id, o.status, o.symbol, o.trade_date, "
        "(o.trade_date + s.close) AT TIME ZONE s.zone "
        "FROM orders o JOIN unnest(%(symbols)s::text[], %(zones)s::text[], "
        "  %(closes)s::time[]) AS s (symbol, zone, close) USING (symbol) "
        "WHERE o.time_in_force = 'DAY' "
        "AND o.status IN ('TRIGGER_PENDING', 'OPEN', 'PARTIALLY_FILLED') "
        "AND (o.trade_date + s.close) AT TIME ZONE s.zone < %(now)s - %(late)s ORDER BY 2",
        lambda a, o, status, symbol, day, closed: (
            a,
            o,
            f"{status} DAY order on {symbol} of trade date {day}, its session closed "
            f"{closed.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
        ),
    ),
)
"""Every invariant ``check_invariants`` checks, in the order it reports them."""


def check_invariants(
    conn: psycopg.Connection,
    sessions: Mapping[str, Session],
    now: datetime,
    late: timedelta = timedelta(minutes=2),
    invariants: Iterable[Invariant] = INVARIANTS,
) -> list[Finding]:
    """The rows of Postgres that break one of ``invariants`` (default: all). ``sessions``
    (symbol -> its trading session) says when a DAY order should have ended; an order
    may be ``late`` past when it should have moved on before it is a finding."""
    params = {
        "open": list(OPEN_STATUSES),
        "now": now,
        "late": late,
        "symbols": list(sessions),
        "zones": [s.timezone for s in sessions.values()],
        "closes": [s.close for s in sessions.values()],
    }
    findings = []
    for invariant in invariants:
        for row in conn.execute(invariant.sql, params):
            account, order, detail = invariant.finding(*row)
            findings.append(Finding(invariant.kind, order, detail, account))
    return findings


STORED_FINDINGS = 1_000
"""Findings of one run stored at most (its count is stored whole): a ledger broken in
many places costs the table a bounded number of rows every round."""


def record_run(
    conn: psycopg.Connection,
    ran_at: datetime,
    scope: str,
    findings: Sequence[Finding],
    most: int = STORED_FINDINGS,
) -> None:
    """Store a run and its first ``most`` findings (migration 0020) in the caller's
    transaction: ``scope`` INVARIANTS (a round's checks) or FULL (also Kafka against
    Postgres). The operator's overview reads them (brokercore.read.operations)."""
    run = conn.execute(
        "INSERT INTO reconciler_runs (ran_at, scope, findings) VALUES (%s, %s, %s) "
        "RETURNING run_id",
        (ran_at, scope, len(findings)),
    ).fetchone()
    assert run is not None  # an INSERT ... RETURNING returns its row
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO reconciler_findings (run_id, position, kind, account_id, order_id, "
            "detail) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (run[0], n, f.kind, f.account_id, f.order_id, f.detail)
                for n, f in enumerate(findings[:most])
            ],
        )
