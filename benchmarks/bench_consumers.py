"""How fast one consumer of ``events`` (settlement, the projector or the notifier) keeps
up, and what it costs per event, run as ``brokercore service NAME``.

    python benchmarks/bench_consumers.py                          # settlement, a backlog
    python benchmarks/bench_consumers.py --consumer projector --orders 50000
    python benchmarks/bench_consumers.py --rate 5000              # paced: lag p50/p99
    python benchmarks/bench_consumers.py --quick                  # smoke run, ~20 s

Needs the development Postgres, Redis and Kafka up. Set-up, undone at the end: a fresh
database seeded like benchmarks/harness.py (``--users`` funded accounts, half of them
holding every symbol), a fresh topic prefix whose ``events`` has ``--partitions``
partitions. ``--orders`` LIMIT orders (about half crossing, 10 % of the commands cancels,
one symbol at 10x the others) are checked by the OMS's own ``risk.check_order`` and
written to ``orders`` with their holds (cash and shares blocked), then sent through real
engine books; their events are encoded as the engine daemon publishes them
(``codec.EventEncoder``, one message per ``--commands-per-message`` commands of a
symbol, each symbol's session closed at the end) and produced in Kafka transactions.

The consumer starts first and applies one message per partition (started, connected,
partitions assigned). Backlog mode (the default) then pauses it (SIGSTOP), produces the
rest, resumes it and times it until its last offset is stored: events/s, and CPU-µs per
event of the consumer's process and of its Postgres backends (/proc ticks; the WAL
writer and the other backends of the shared server are not counted). Paced mode
(``--rate`` events/s) produces a transaction every 10 ms holding the messages due while
the consumer runs; the lag of each event is the time from its transaction's commit to
the consumer storing an offset past it (settlement and the projector:
``consumer_offsets``, polled every 5 ms; the notifier: its group's committed offsets),
printed as p50/p99/max. It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from brokercore.broker.market import MarketInstrument, load_market
from brokercore.broker.risk import AccountState, FeeSchedule, OrderRequest, OrderType, check_order
from brokercore.config import KafkaSettings
from brokercore.db.migrations import drop_database
from brokercore.engine.records import COMMAND_DTYPE, Side
from brokercore.kafka.codec import EventEncoder, SymbolTable
from brokercore.kafka.messages import CancelOrder, CloseSession, NewOrder
from brokercore.kafka.topics import ensure_topics
from brokercore.notify.consumer import notifier_group_id
from harness import (
    CASH_PAISE,
    HOLDING,
    REPO,
    cpu_ticks,
    create_database,
    dev_server,
    interrupt_on_sigterm,
    seed_accounts,
    write_instruments,
)
from machine import machine_line

KAFKA = "127.0.0.1:19092"
REDIS = "redis://127.0.0.1:16379/0"
FEE_BPS, FEE_FIXED = "3", 2000  # what the holds are computed with and the consumer charges
TICK_S = os.sysconf("SC_CLK_TCK")


def log(line: str = "") -> None:
    print(line, flush=True)


# --- the order flow and its events ---------------------------------------------------


class Flow:
    """Orders (rows as the OMS writes them) and the engine's events of them, as the
    messages of each partition: (payload, events in it)."""

    def __init__(self, partitions: int):
        self.rows: list[tuple[object, ...]] = []
        self.messages: list[list[tuple[bytes, int]]] = [[] for _ in range(partitions)]

    @property
    def events(self) -> int:
        return sum(n for messages in self.messages for _, n in messages)


def make_flow(
    market: dict[str, MarketInstrument],
    symbols: list[str],
    accounts: list[int],
    fees: FeeSchedule,
    *,
    orders: int,
    partitions: int,
    commands_per_message: int,
    seed: int = 1,
    hot: int = 10,
) -> Flow:
    """``orders`` orders over ``symbols`` (the first at ``hot`` times the others),
    cancels, each symbol's close; sent through real books and encoded per partition (symbol n on
    partition n modulo ``partitions``)."""
    rng = random.Random(seed)
    flow = Flow(partitions)
    table = SymbolTable({s: market[s].symbol_id for s in symbols})
    now = datetime.now(UTC).replace(hour=12)
    trade_date, ts = now.date(), time.time_ns()
    holders = accounts[: max(1, len(accounts) // 2)]
    commands: dict[str, list[object]] = {s: [] for s in symbols}
    live: dict[str, list[tuple[int, int]]] = {s: [] for s in symbols}
    weights = [hot] + [1] * (len(symbols) - 1)
    order_id = 0
    while order_id < orders:
        symbol = rng.choices(symbols, weights)[0]
        inst = market[symbol]
        ts += 1000
        if live[symbol] and rng.random() < 0.1:
            victim, account = live[symbol].pop(rng.randrange(len(live[symbol])))
            commands[symbol].append(CancelOrder(victim, account, symbol, ts))
            continue
        order_id += 1
        side = rng.choice((Side.BUY, Side.SELL))
        account = rng.choice(holders if side == Side.SELL else accounts)
        mid = (inst.low + inst.high) // 2
        price = mid + rng.randint(-8, 8) + (4 if side == Side.BUY else -4) * rng.choice((0, 1))
        qty = rng.randint(1, 100) * inst.lot_size
        hold = check_order(
            OrderRequest(symbol, side, OrderType.LIMIT, qty, inst.to_price(price), None),
            inst,
            now,
            AccountState(CASH_PAISE, HOLDING),
            fees=fees,
        )
        assert not hasattr(hold, "code"), hold
        flow.rows.append(
            (
                order_id,
                trade_date,
                account,
                symbol,
                side.name,
                "LIMIT",
                hold.time_in_force.name,
                inst.ticks_to_paise(price),
                qty,
                "PENDING",
                hold.cash or hold.shares,
                hold.price_ticks or 0,
                hold.cash,
                hold.shares,
            )
        )
        commands[symbol].append(
            NewOrder(order_id, account, symbol, side, qty, price, tif=hold.time_in_force, ts=ts)
        )
        live[symbol].append((order_id, account))
    streams: list[list[list[tuple[bytes, int]]]] = [[] for _ in range(partitions)]
    encoders = [EventEncoder(table, shard=p) for p in range(partitions)]
    for n, symbol in enumerate(symbols):
        partition = n % partitions
        encoder, book = encoders[partition], market[symbol].engine_instrument().new_book()
        stream: list[tuple[bytes, int]] = []
        flow_commands = [*commands[symbol], CloseSession(symbol, ts + 1000)]
        per = commands_per_message
        for i in range(0, len(flow_commands), per):
            records = [c.record(table.id_of(symbol)) for c in flow_commands[i : i + per]]
            before = encoder.shard_seq
            payloads = encoder.encode(book.process(np.array(records, dtype=COMMAND_DTYPE)))
            stream += [(p, 0) for p in payloads[:-1]] + [(payloads[-1], encoder.shard_seq - before)]
        streams[partition].append(stream)
    for partition, symbol_streams in enumerate(streams):  # a partition's symbols interleaved
        longest = max(map(len, symbol_streams), default=0)
        flow.messages[partition] = [
            s[i] for i in range(longest) for s in symbol_streams if i < len(s)
        ]
    return flow


def account_ids(url: str) -> list[int]:
    """The ids of harness.seed_accounts's accounts, holders (u0, u1 ...) first."""
    with psycopg.connect(url) as conn:
        return [
            a
            for (a,) in conn.execute(
                "SELECT account_id FROM accounts ORDER BY substr(user_id, 2)::int"
            )
        ]


def write_orders(url: str, rows: list[tuple[object, ...]]) -> None:
    """The orders as the OMS leaves them (PENDING), their holds blocked on the accounts
    and positions, as the OMS blocks them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT create_orders_partition(%s)", (rows[0][1],))
        with conn.cursor().copy(
            "COPY orders (order_id, trade_date, account_id, symbol, side, type, time_in_force,"
            " price, quantity, status, hold_amount, hold_price_ticks, blocked_cash,"
            " blocked_shares) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute("SELECT setval('order_id_seq', %s)", (len(rows) + 1,))
        conn.execute(
            "UPDATE accounts a SET blocked_cash = o.cash FROM (SELECT account_id, "
            "sum(blocked_cash) AS cash FROM orders GROUP BY account_id) o "
            "WHERE a.account_id = o.account_id"
        )
        conn.execute(
            "UPDATE positions p SET blocked_quantity = o.shares FROM (SELECT account_id, "
            "symbol, sum(blocked_shares) AS shares FROM orders GROUP BY account_id, symbol) o "
            "WHERE p.account_id = o.account_id AND p.symbol = o.symbol"
        )
        conn.execute("ANALYZE")


# --- producing -------------------------------------------------------------------------


class Publisher:
    """A transactional producer, as the engine daemon publishes; notes each message's
    offset and the time its transaction committed."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"bench-consumers-{uuid.uuid4().hex}",
                "linger.ms": 5,
            }
        )
        self.producer.init_transactions(30)
        self.offsets: list[list[int]] = [[] for _ in range(partitions)]  # of each message
        self.events: list[list[int]] = [[] for _ in range(partitions)]  # cumulative
        self.committed: list[list[float]] = [[] for _ in range(partitions)]  # per message

    def transaction(self, messages: list[tuple[int, bytes, int]]) -> None:
        """Produce (partition, payload, events) in one transaction and commit it."""
        delivered: list[tuple[int, int, int]] = []

        def noted(error, message, n: int) -> None:
            assert error is None, error
            delivered.append((message.partition(), message.offset(), n))

        self.producer.begin_transaction()
        for partition, payload, n in messages:
            self.producer.produce(
                self.topic,
                payload,
                partition=partition,
                on_delivery=lambda e, m, n=n: noted(e, m, n),
            )
        self.producer.flush(30)
        self.producer.commit_transaction(30)
        at = time.time()
        for partition, offset, n in sorted(delivered):
            self.offsets[partition].append(offset)
            self.events[partition].append((self.events[partition] or [0])[-1] + n)
            self.committed[partition].append(at)

    def applied_events(self, next_offsets: dict[int, int]) -> int:
        """Events in the messages below the next offsets."""
        total = 0
        for partition, offset in next_offsets.items():
            i = bisect.bisect_left(self.offsets[partition], offset)
            total += self.events[partition][i - 1] if i else 0
        return total

    def ends(self) -> dict[int, int]:
        return {p: o[-1] + 1 for p, o in enumerate(self.offsets) if o}


def in_transactions(flow: Flow, size: int) -> list[list[tuple[int, bytes, int]]]:
    """The messages in transactions of ``size`` messages per partition, partitions
    interleaved, each partition's messages in order."""
    chunks = []
    longest = max(map(len, flow.messages))
    for i in range(0, longest, size):
        chunks.append(
            [
                (p, payload, n)
                for p, messages in enumerate(flow.messages)
                for payload, n in messages[i : i + size]
            ]
        )
    return chunks


# --- watching the consumer ----------------------------------------------------------


def progress_reader(
    consumer: str, url: str, topic: str, prefix: str, partitions: int
) -> Callable[[], dict[int, int]]:
    """A function returning the consumer's stored next offset per partition."""
    if consumer == "notifier":
        group = Consumer({"bootstrap.servers": KAFKA, "group.id": notifier_group_id(prefix)})
        parts = [TopicPartition(topic, p) for p in range(partitions)]

        def committed() -> dict[int, int]:
            return {
                tp.partition: tp.offset
                for tp in group.committed(parts, timeout=10)
                if tp.offset >= 0
            }

        return committed
    conn = psycopg.connect(url, autocommit=True, application_name="bench_consumers")
    name = consumer

    def stored() -> dict[int, int]:
        return dict(
            conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets "
                "WHERE consumer = %s AND topic = %s",
                (name, topic),
            ).fetchall()
        )

    return stored


def wait_until(
    read: Callable[[], dict[int, int]], ends: dict[int, int], process, every: float, seen: list
) -> None:
    """Poll until every partition's stored offset reaches its end (with no ends: until
    any offset is stored); ``seen`` gets (time, offsets) at each change."""
    last: dict[int, int] = {}
    while True:
        offsets = read()
        if offsets != last:
            seen.append((time.time(), offsets))
            last = offsets
        if all(offsets.get(p, 0) >= end for p, end in ends.items()) and (ends or offsets):
            return
        if process.poll() is not None:
            raise RuntimeError(f"the consumer exited with {process.returncode}")
        time.sleep(every)


def backends(url: str) -> list[int]:
    """The Postgres backends of the benchmark's database but this one: the consumer's
    (the shared server's other backends and its background writers are others' too)."""
    with psycopg.connect(url) as conn:
        return [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                "AND application_name <> 'bench_consumers'"
            )
        ]


def start_consumer(args, env: dict[str, str], log_file) -> subprocess.Popen:
    extra = ["--from-beginning"] if args.consumer == "notifier" else []
    return subprocess.Popen(
        [sys.executable, "-m", "brokercore.cli", "service", args.consumer, *extra],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )


def lags(publisher: Publisher, seen: list) -> list[float]:
    """Per event: seconds from its transaction's commit to the first poll that saw an
    offset past it stored."""
    out: list[float] = []
    for partition, offsets in enumerate(publisher.offsets):
        previous = 0
        for i, offset in enumerate(offsets):
            stored_at = next(t for t, o in seen if o.get(partition, 0) > offset)
            n = publisher.events[partition][i] - previous
            previous = publisher.events[partition][i]
            out += [stored_at - publisher.committed[partition][i]] * n
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: str) -> None:
    run_id = uuid.uuid4().hex[:10]
    kafka = KafkaSettings(KAFKA, f"bench-consumers-{run_id}-", args.partitions)
    instruments_path = os.path.join(tmp, "instruments.toml")
    symbols = [i["symbol"] for i in write_instruments(instruments_path)][: args.symbols]
    market = load_market(instruments_path)
    fees = FeeSchedule(Decimal(FEE_BPS), FEE_FIXED)
    server = dev_server()
    dbname, url = create_database(server, "bench_consumers")
    consumer = None
    log_file = open(os.path.join(tmp, "consumer.log"), "w+b")
    try:
        t0 = time.monotonic()
        seed_accounts(url, symbols, args.users)
        accounts = account_ids(url)
        flow = make_flow(
            market,
            symbols,
            accounts,
            fees,
            orders=args.orders,
            partitions=args.partitions,
            commands_per_message=args.commands_per_message,
            seed=args.seed,
        )
        write_orders(url, flow.rows)
        ensure_topics(kafka)
        publisher = Publisher(KAFKA, kafka.events_topic, args.partitions)
        log(
            f"set-up  : {time.monotonic() - t0:.1f} s; database {dbname}, prefix "
            f"{kafka.topic_prefix}, {len(flow.rows):,} orders, {flow.events:,} events in "
            f"{sum(map(len, flow.messages)):,} messages over {args.partitions} partitions, "
            f"{len(symbols)} symbols"
        )
        env = dict(
            BROKERCORE_DATABASE_URL=url,
            BROKERCORE_KAFKA_BOOTSTRAP=KAFKA,
            BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
            BROKERCORE_SHARDS=str(args.partitions),
            BROKERCORE_INSTRUMENTS=instruments_path,
            BROKERCORE_REDIS_URL=REDIS,
            BROKERCORE_REDIS_PREFIX=f"bench-consumers-{run_id}:",
            BROKERCORE_FEE_BPS=FEE_BPS,
            BROKERCORE_FEE_FIXED_PAISE=str(FEE_FIXED),
        )
        read = progress_reader(
            args.consumer, url, kafka.events_topic, kafka.topic_prefix, args.partitions
        )
        consumer = start_consumer(args, env, log_file)
        warm_up(flow, publisher, read, consumer)
        pg = backends(url)
        if args.rate:
            paced(args, flow, publisher, read, consumer, pg)
        else:
            consumer.send_signal(signal.SIGSTOP)  # paused while the backlog is produced
            for transaction in in_transactions(flow, args.per_transaction):
                publisher.transaction(transaction)
            start, before = time.time(), cpu_ticks({"consumer": [consumer.pid], "postgres": pg})
            consumer.send_signal(signal.SIGCONT)
            wait_until(read, publisher.ends(), consumer, 0.005, [])
            end, after = time.time(), cpu_ticks({"consumer": [consumer.pid], "postgres": pg})
            log(
                f"{args.consumer}: a backlog of {flow.events:,} events in {end - start:.2f} s = "
                f"{flow.events / (end - start):,.0f} events/s; CPU-µs per event: "
                + ", ".join(
                    f"{k} {(after[k] - before[k]) / TICK_S * 1e6 / flow.events:.1f}" for k in after
                )
            )
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait(30)
        log_file.seek(0)
        tail = log_file.read().decode(errors="replace").splitlines()[-args.log_lines :]
        log("consumer log, last lines:\n" + "\n".join("   | " + line for line in tail))
        log_file.close()
        try:
            drop_database(server, dbname)
            admin = AdminClient({"bootstrap.servers": KAFKA})
            for future in admin.delete_topics(
                [kafka.orders_topic, kafka.events_topic, kafka.snapshots_topic], request_timeout=30
            ).values():
                future.result(30)
        except Exception as e:  # noqa: BLE001 - reported, run over
            log(f"(clean-up failed: {e!r})")


def warm_up(flow: Flow, publisher: Publisher, read, consumer) -> None:
    """The first message of each partition (taken out of ``flow``) produced and applied:
    the consumer has started, connected and been assigned its partitions."""
    publisher.transaction([(p, *messages.pop(0)) for p, messages in enumerate(flow.messages)])
    wait_until(read, publisher.ends(), consumer, 0.005, [])
    for partition in range(len(publisher.offsets)):  # counted neither as events nor lag
        publisher.offsets[partition].clear()
        publisher.events[partition].clear()
        publisher.committed[partition].clear()


def paced(args, flow: Flow, publisher: Publisher, read, consumer, pg: list[int]) -> None:
    """Produce at ``args.rate`` events/s (a transaction every 10 ms with what is due)
    while the consumer runs."""
    pending = [m for t in in_transactions(flow, 1) for m in t]
    seen: list = []
    done = threading.Event()

    def produce() -> None:
        start, sent, i = time.monotonic(), 0, 0
        while i < len(pending):
            due = args.rate * (time.monotonic() - start)
            transaction = []
            while i < len(pending) and sent + pending[i][2] <= max(due, 1):
                transaction.append(pending[i])
                sent += pending[i][2]
                i += 1
            if transaction:
                publisher.transaction(transaction)
            time.sleep(0.01)
        done.set()

    producer = threading.Thread(target=produce)
    start, before = time.time(), cpu_ticks({"consumer": [consumer.pid], "postgres": pg})
    producer.start()
    last: dict[int, int] = {}
    while not (done.is_set() and all(last.get(p, 0) >= e for p, e in publisher.ends().items())):
        offsets = read()
        if offsets != last:
            seen.append((time.time(), offsets))
            last = offsets
        if consumer.poll() is not None:
            raise RuntimeError(f"the consumer exited with {consumer.returncode}")
        time.sleep(0.005)
    producer.join()
    end, after = time.time(), cpu_ticks({"consumer": [consumer.pid], "postgres": pg})
    lag = lags(publisher, seen)
    events = len(lag)
    log(
        f"{args.consumer}: paced at {args.rate:,} events/s offered, {events:,} events in "
        f"{end - start:.2f} s = {events / (end - start):,.0f} events/s; lag (commit -> "
        f"offset stored) p50 {percentile(lag, 0.5) * 1e3:.0f} ms, p99 "
        f"{percentile(lag, 0.99) * 1e3:.0f} ms, max {max(lag) * 1e3:.0f} ms; CPU-µs per "
        "event: "
        + ", ".join(f"{k} {(after[k] - before[k]) / TICK_S * 1e6 / events:.1f}" for k in after)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--consumer", choices=("settlement", "projector", "notifier"), default="settlement"
    )
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--commands-per-message", type=int, default=20)
    parser.add_argument(
        "--per-transaction", type=int, default=50, help="backlog: messages per partition"
    )
    parser.add_argument("--rate", type=int, default=0, help="paced mode: events/s offered")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-lines", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 orders")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(orders=10_000, users=200)
    args = parser.parse_args()
    interrupt_on_sigterm()
    log(f"== brokercore consumers: {args.consumer} ==\n" + machine_line("Postgres, Kafka, Redis"))
    with tempfile.TemporaryDirectory(prefix="bench-consumers-") as tmp:
        run(args, tmp)


if __name__ == "__main__":
    main()
