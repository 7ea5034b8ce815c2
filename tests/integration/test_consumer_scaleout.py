"""Settlement scaled out by partition: two ``brokercore service settlement`` processes
split the ``events`` partitions (one Kafka consumer group, each partition started at the
offset stored in Postgres); one is killed with SIGKILL mid-stream and the other takes its
partitions over from the committed offsets. At the end every event is applied exactly
once: the database equals the one a single in-process settlement leaves from the same
messages (real Kafka, four partitions, real Postgres)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from decimal import Decimal

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench_consumers import (
    FEE_BPS,
    FEE_FIXED,
    Flow,
    Publisher,
    account_ids,
    in_transactions,
    make_flow,
    write_orders,
)
from brokercore.broker.market import load_market
from brokercore.broker.risk import FeeSchedule
from brokercore.consumers.pg_consumer import Message
from brokercore.consumers.settlement import SettlementConsumer
from brokercore.db.migrations import apply_migrations, drop_database
from brokercore.kafka.messages import EventBatch
from harness import CASH_PAISE, seed_accounts, write_instruments
from processes import LoggedProcess
from shared_servers import REDIS_URL
from waiting import wait_until

FEES = FeeSchedule(Decimal(FEE_BPS), FEE_FIXED)
USERS = 40

# Every table settlement writes, in an order that does not depend on which process
# wrote what when (no serial ids, no clocks).
_TABLES = {
    "accounts": ("account_id", ("updated_at", "created_at")),
    "positions": ("account_id, symbol", ("updated_at",)),
    "orders": ("order_id", ("updated_at", "created_at")),
    "fills": ("trade_id, side", ("created_at",)),
    "fee_income": ("trade_id, side", ("created_at",)),
    "order_events": ("dedupe_key", ("event_id", "recorded_at")),
    "consumer_offsets": ("partition", ("updated_at",)),
}


def dump(conn: psycopg.Connection) -> dict[str, list]:
    return {
        table: [
            {k: v for k, v in row.items() if k not in clocks}
            for (row,) in conn.execute(f"SELECT to_jsonb(t) FROM {table} t ORDER BY {key}")
        ]
        for table, (key, clocks) in _TABLES.items()
    }


def seeded(url: str, instruments: str, symbols: list[str], flow: Flow | None = None) -> Flow:
    """Accounts as the benchmarks seed them, and the orders of ``flow`` (a new one if
    none), written to ``url``."""
    seed_accounts(url, symbols, USERS)
    flow = flow or make_flow(
        load_market(instruments),
        symbols,
        account_ids(url),
        FEES,
        orders=1500,
        partitions=4,
        commands_per_message=3,
        seed=13,
        hot=1,  # as many messages on each partition
    )
    write_orders(url, flow.rows)
    return flow


def assignments(process: LoggedProcess) -> list[set[int]]:
    """The partitions given to the process, assignment by assignment, from its log."""
    return [
        {int(p) for p in found.split(", ")}
        for found in re.findall(r"partitions \[([\d, ]+)\] from offsets", process.text())
    ]


def stored(conn: psycopg.Connection, topic: str) -> dict[int, int]:
    return dict(
        conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets WHERE topic = %s", (topic,)
        ).fetchall()
    )


def produce(publisher: Publisher, transactions: list) -> None:
    """A stream that lasts: a transaction every 20 ms."""
    for transaction in transactions:
        publisher.transaction(transaction)
        time.sleep(0.02)


def test_two_settlements_split_the_partitions_and_one_takes_over_after_kill_9(
    migrated, postgres, kafka, tmp_path
):
    instruments = str(tmp_path / "instruments.toml")
    symbols = [i["symbol"] for i in write_instruments(instruments)][:4]  # one per partition
    flow = seeded(migrated, instruments, symbols)
    publisher = Publisher(kafka.bootstrap, kafka.events_topic, 4)
    transactions = in_transactions(flow, 2)
    env = dict(
        os.environ,
        BROKERCORE_DATABASE_URL=migrated,
        BROKERCORE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
        BROKERCORE_SHARDS="4",
        BROKERCORE_INSTRUMENTS=instruments,
        BROKERCORE_FEE_BPS=FEE_BPS,
        BROKERCORE_FEE_FIXED_PAISE=str(FEE_FIXED),
        BROKERCORE_REDIS_URL=REDIS_URL,
        BROKERCORE_REDIS_PREFIX=f"t{uuid.uuid4().hex[:12]}:",
    )
    a = LoggedProcess(["service", "settlement"], tmp_path / "a.log", env)
    b = LoggedProcess(["service", "settlement"], tmp_path / "b.log", env)
    try:
        # both in the group: two partitions each, none shared
        wait_until(
            lambda: all(assignments(p) and len(assignments(p)[-1]) == 2 for p in (a, b)),
            "two partitions given to each settlement",
        )
        split = assignments(a)[-1], assignments(b)[-1]
        assert split[0] | split[1] == {0, 1, 2, 3} and not split[0] & split[1]

        topic = kafka.events_topic
        with psycopg.connect(migrated, autocommit=True) as conn:
            half = len(transactions) // 2
            for transaction in transactions[:half]:
                publisher.transaction(transaction)
            wait_until(
                lambda: stored(conn, topic) == publisher.ends(),
                "the first half settled by the two",
            )
            # mid-stream: a dies once it settles the second half, which is still produced
            first = publisher.ends()
            rest = threading.Thread(target=produce, args=(publisher, transactions[half:]))
            rest.start()
            wait_until(
                lambda: any(stored(conn, topic)[p] > first[p] for p in split[0]),
                "the first settled by a of the second half",
                every=0.005,
            )
            a.kill()
            at_kill = stored(conn, topic)
            rest.join()
            assert any(at_kill[p] < publisher.ends()[p] for p in split[0])  # left to b
            wait_until(
                lambda: assignments(b)[-1] == {0, 1, 2, 3},
                "all four partitions given to the survivor",
            )
            wait_until(
                lambda: stored(conn, topic) == publisher.ends(),
                "everything settled by the survivor",
                timeout=60,
            )
            assert b.terminate() == 0
            after = dump(conn)
            cash, fees = conn.execute(
                "SELECT (SELECT sum(cash) FROM accounts), "
                "(SELECT coalesce(sum(amount), 0) FROM fee_income)"
            ).fetchone()
    finally:
        a.close()
        b.close()

    assert cash + fees == USERS * CASH_PAISE  # money conserved to the paisa
    assert after == reference(postgres, instruments, symbols, flow, publisher)
    assert after["fills"] and after["fee_income"]


def reference(
    postgres: str, instruments: str, symbols: list[str], flow: Flow, publisher: Publisher
) -> dict:
    """The same orders settled once, in order, by one in-process settlement."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(postgres, dbname=name)
    try:
        apply_migrations(url)
        seeded(url, instruments, symbols, flow)
        decode = msgspec.msgpack.Decoder(EventBatch).decode
        messages = [
            Message(p, offset, decode(payload))
            for p, payloads in enumerate(flow.messages)
            for offset, (payload, _) in zip(publisher.offsets[p], payloads, strict=True)
        ]
        with psycopg.connect(url, autocommit=True) as conn:
            settler = SettlementConsumer(load_market(instruments), FEES, publisher.topic)
            settler.apply(conn, messages)
            return dump(conn)
    finally:
        drop_database(postgres, name)
