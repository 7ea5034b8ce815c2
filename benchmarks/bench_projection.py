"""CPU per engine event of the projector's and the notifier's batch work, in process
(no Kafka: ``bench_consumers.py`` measures the whole consumer loop).

    python benchmarks/bench_projection.py --consumer projector
    python benchmarks/bench_projection.py --consumer notifier --orders 20000

Set-up, undone at the end: a fresh database with --users funded accounts, --orders
LIMIT orders (rows as the OMS writes them, about half crossing, one in ten cancelled
later) over the instruments of config/instruments.toml, matched by real engine books and
encoded as the engine daemon publishes them (--commands commands per message), plus
price alerts and preferences for a few users; a private redis-server. Then the consumer
applies the messages, --batch messages per call (as ``run_pg_consumer`` hands them on).
It prints the events, the CPU seconds of this process, of the database's backends and of
the private Redis, per event and as a ceiling (events per CPU second of the busiest);
on a loaded machine the wall time means little. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import tempfile
import time
import uuid

import msgspec
import numpy as np
import psycopg
import redis

from brokercore.broker.market import MarketInstrument, load_market
from brokercore.consumers.pg_consumer import Message
from brokercore.consumers.projector import ProjectorConsumer
from brokercore.db.migrations import drop_database
from brokercore.engine.records import COMMAND_DTYPE, Side, Tif
from brokercore.kafka.codec import EventEncoder, SymbolTable
from brokercore.kafka.messages import CancelOrder, EventBatch, NewOrder
from harness import (
    create_database,
    dev_server,
    free_port,
    interrupt_on_sigterm,
    proc_stat,
    seed_accounts,
    write_instruments,
)
from machine import machine_line

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def ticks(pids: list[int]) -> int:
    return sum(int(s[11]) + int(s[12]) for s in map(proc_stat, pids) if s)


def backends(conn: psycopg.Connection, database: str) -> list[int]:
    return [
        pid
        for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    ]


def make_messages(
    url: str, market: dict[str, MarketInstrument], orders: int, per_message: int, seed: int
) -> list[Message]:
    """Write the orders as the OMS does and run them through real books; the engine's
    messages (one partition per symbol group of four shards)."""
    rng = random.Random(seed)
    symbols = sorted(market)
    books = {s: market[s].engine_instrument().new_book() for s in symbols}
    shards = 4
    encoders = [
        EventEncoder(SymbolTable({s: market[s].symbol_id for s in symbols}), shard)
        for shard in range(shards)
    ]
    decoder = msgspec.msgpack.Decoder(EventBatch)
    with psycopg.connect(url, autocommit=True) as conn:
        accounts = [a for (a,) in conn.execute("SELECT account_id FROM accounts ORDER BY 1")]
        sellers = set(accounts[: max(1, len(accounts) // 2)])
        first = conn.execute("SELECT setval('order_id_seq', 1000)").fetchone()[0] + 1
        rows, commands = [], []
        live: list[tuple[int, int, str]] = []
        ts = time.time_ns()
        for n in range(orders):
            ts += 1000
            if live and rng.random() < 0.1:
                order_id, account, symbol = live.pop(rng.randrange(len(live)))
                commands.append((symbol, CancelOrder(order_id, account, symbol, ts)))
                continue
            symbol = symbols[n % len(symbols)]
            inst = market[symbol]
            account = rng.choice(accounts)
            side = Side.SELL if account in sellers and rng.random() < 0.5 else Side.BUY
            mid = (inst.low + inst.high) // 2
            price = mid + (rng.randint(-5, 3) if side == Side.BUY else rng.randint(-3, 5))
            qty = rng.randint(1, 10) * inst.lot_size
            order_id = first + n
            rows.append(
                (
                    order_id,
                    "2026-03-02",
                    account,
                    symbol,
                    side.name,
                    "LIMIT",
                    "DAY",
                    inst.ticks_to_paise(price),
                    qty,
                )
            )
            commands.append(
                (symbol, NewOrder(order_id, account, symbol, side, qty, price, tif=Tif.DAY, ts=ts))
            )
            live.append((order_id, account, symbol))
        with conn.cursor().copy(
            "COPY orders (order_id, trade_date, account_id, symbol, side, type, "
            "time_in_force, price, quantity) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute("ANALYZE")
    messages: list[Message] = []
    offsets = [0] * shards
    for start in range(0, len(commands), per_message):
        pending: list[list[np.ndarray]] = [[] for _ in range(shards)]
        for symbol, command in commands[start : start + per_message]:
            record = np.array([command.record(market[symbol].symbol_id)], dtype=COMMAND_DTYPE)
            pending[market[symbol].symbol_id % shards].append(books[symbol].process(record))
        for shard, chunks in enumerate(pending):
            if chunks:
                for payload in encoders[shard].encode(np.concatenate(chunks)):
                    messages.append(
                        Message(shard, offsets[shard], decoder.decode(payload), ts // 10**6)
                    )
                    offsets[shard] += 2  # a transaction's commit marker takes one
    return messages


def seed_extras(url: str, market: dict[str, MarketInstrument], users: int, alerts: int) -> None:
    """Price alerts around each symbol's mid and a few users' preferences (only they
    change what the notifier does per event)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(alerts):
            inst = market[sorted(market)[i % len(market)]]
            conn.execute(
                "INSERT INTO price_alerts (user_id, symbol, price, side) VALUES (%s, %s, %s, 1)",
                (f"u{i % users}", inst.symbol, inst.ticks_to_paise((inst.low + inst.high) // 2)),
            )
        conn.execute(
            "INSERT INTO notification_preferences (user_id, event_type, channel) "
            "SELECT 'u' || g, 'FILL', 'NONE' FROM generate_series(0, %s - 1, 10) g",
            (users,),
        )


class Meter:
    """CPU of this process, of the database's backends and of the private Redis, from
    ``start`` (once the consumer's connections are open) to ``stop``."""

    def __init__(self, database: str, watcher: psycopg.Connection, redis_pid: int):
        self.database, self.watcher, self.redis_pid = database, watcher, redis_pid

    def _now(self) -> tuple[float, int, int, float]:
        pids = backends(self.watcher, self.database)
        return time.process_time(), ticks(pids), ticks([self.redis_pid]), time.perf_counter()

    def start(self) -> None:
        self.before = self._now()

    def stop(self, label: str, events: int) -> None:
        after = self._now()
        own = after[0] - self.before[0]
        postgres = (after[1] - self.before[1]) / TICKS_PER_SECOND
        redis_cpu = (after[2] - self.before[2]) / TICKS_PER_SECOND
        busiest = max(own, postgres, redis_cpu)
        print(
            f"{label}: {events:,} events in {after[3] - self.before[3]:.2f} s wall; CPU-us "
            f"per event: consumer {own / events * 1e6:.1f}, Postgres "
            f"{postgres / events * 1e6:.1f}, Redis {redis_cpu / events * 1e6:.1f}; ceiling "
            f"~{events / busiest:,.0f} events/s (busiest process on a core of its own), "
            f"{events / (own + postgres + redis_cpu):,.0f} events/s (all on one core)"
        )


def run_projector(url: str, market, redis_url: str, chunks, meter: Meter, events: int) -> None:
    client = redis.Redis.from_url(redis_url)
    projector = ProjectorConsumer(market, client, f"b{uuid.uuid4().hex[:8]}:", "events")
    with psycopg.connect(url, autocommit=True) as conn:
        meter.start()
        for chunk in chunks:
            projector.committed(projector.apply(conn, chunk))
        meter.stop("projector", events)
    client.close()


def run_notifier(url: str, market, redis_url: str, chunks, meter: Meter, events: int) -> None:
    from psycopg_pool import AsyncConnectionPool
    from redis.asyncio import Redis

    from brokercore.notify.dead_letters import DeadLetters
    from brokercore.notify.router import Notifier

    async def main() -> None:
        async with AsyncConnectionPool(url, min_size=4, max_size=4) as pool:
            await pool.wait()
            client = Redis.from_url(redis_url)
            notifier = Notifier(
                pool,
                client,
                f"b{uuid.uuid4().hex[:8]}:",
                market,
                None,
                DeadLetters("127.0.0.1:1", "unused"),
            )
            meter.start()
            for chunk in chunks:
                await notifier.handle([(m.partition, m.offset, m.batch) for m in chunk])
            meter.stop("notifier", events)
            await client.aclose()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumer", choices=("projector", "notifier"), default="projector")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=40_000)
    parser.add_argument("--commands", type=int, default=50, help="engine commands per message")
    parser.add_argument("--batch", type=int, default=100, help="messages per apply")
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    interrupt_on_sigterm()
    print(machine_line("Postgres and whatever else runs here"))
    server = dev_server()
    name, url = create_database(server, "bench_projection")
    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "instruments.toml")
            write_instruments(path)
            market = load_market(path)
        seed_accounts(url, sorted(market), args.users)
        seed_extras(url, market, args.users, args.alerts)
        messages = make_messages(url, market, args.orders, args.commands, args.seed)
        events = sum(len(m.batch.events) for m in messages)
        chunks = [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]
        print(
            f"{len(messages):,} messages, {events:,} events, {len(chunks)} batches of "
            f"<= {args.batch} messages"
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.2)
        run = run_projector if args.consumer == "projector" else run_notifier
        with psycopg.connect(url, autocommit=True) as watcher:
            run(url, market, redis_url, chunks, Meter(name, watcher, redis_server.pid), events)
    finally:
        redis_server.terminate()
        redis_server.wait(10)
        drop_database(server, name)


if __name__ == "__main__":
    main()
