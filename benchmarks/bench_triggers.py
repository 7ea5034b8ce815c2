"""What the trigger service costs (docs/gtt.md): the watcher's CPU per event with N
ACTIVE GTTs waiting, and the placer's CPU per fired GTT.

    python benchmarks/bench_triggers.py                       # 0, 1,000 and 10,000 GTTs
    python benchmarks/bench_triggers.py --gtts 0 50000 --events 200000

In this process on the development Postgres (a fresh database, dropped at the end), no
Kafka: synthetic engine batches (``--events-per-message`` events each, one in
``--trade-every`` a TRADE of one of ``--symbols`` symbols, each symbol's price a random
walk of a few ticks) are applied by ``GttWatcher.apply`` ``--batch`` messages at a time,
as the consumer loop hands them over. The waiting GTTs' triggers lie far from the walk
(half ``>=`` above, half ``<=`` below); ``--fire`` more lie inside it and fire. CPU: this
process's (``time.process_time``) and its Postgres backend's (/proc ticks), per event.
Then the placer: the fired GTTs' orders placed by ``place_fired`` through the order
entry (no Kafka: their commands stay in the outbox), CPU per GTT. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings
from brokercore.consumers.gtt_watch import GttWatcher
from brokercore.consumers.pg_consumer import Message
from brokercore.db.migrations import drop_database
from brokercore.engine.records import EventType, Op, Reason
from brokercore.entry.gtt_orders import place_fired
from brokercore.entry.order_entry import OrderEntry
from brokercore.kafka.messages import Event, EventBatch
from harness import cpu_ticks, create_database, dev_server, seed_accounts

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def messages(market, symbols, args, rng) -> list[Message]:
    """The synthetic stream: Kafka timestamps from now on (after every GTT)."""
    walk = {s: (market[s].low + market[s].high) // 2 for s in symbols}
    now_ms, found, seq = int(time.time() * 1000) + 1000, [], 0
    for offset in range(args.events // args.events_per_message):
        events = []
        for _ in range(args.events_per_message):
            seq += 1
            symbol = rng.choice(symbols)
            kind = EventType.TRADE if seq % args.trade_every == 0 else EventType.ACCEPTED
            walk[symbol] += rng.choice((-1, 0, 1))
            events.append(
                Event(
                    seq,
                    symbol,
                    kind,
                    Reason.NONE,
                    Op.LIMIT,
                    0,
                    seq,
                    0,
                    seq,
                    1,
                    walk[symbol],
                    1,
                    0,
                    seq + 1,
                    2,
                    0,
                )  # fmt: skip
            )
        found.append(Message(0, offset, EventBatch(0, events), now_ms + offset))
    return found


def seed_gtts(url: str, market, symbols, waiting: int, firing: int, rng) -> None:
    """``waiting`` GTTs far from the walk and ``firing`` inside it, owned by the seeded
    accounts, each buying 1 share at the middle of the band."""
    rows = []
    for n in range(waiting + firing):
        symbol = symbols[n % len(symbols)]
        instrument = market[symbol]
        middle = (instrument.low + instrument.high) // 2
        away = 5000 if n < waiting else -1000  # ticks: never reached, or already met
        condition = ">=" if n % 2 else "<="
        trigger = middle + away if condition == ">=" else middle - away
        price = instrument.ticks_to_paise(middle)
        order = f'{{"side": "BUY", "type": "LIMIT", "quantity": 1, "price": "{price / 100}"}}'
        paise = instrument.ticks_to_paise(trigger)
        rows.append((f"u{rng.randrange(10)}", symbol, condition, paise, order))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gtts (account_id, symbol, kind, condition_1, trigger_1, order_1, "
            "expires_at) SELECT account_id, %s, 'SINGLE', %s, %s, %s, now() + interval '1 day' "
            "FROM accounts WHERE user_id = %s",
            [(s, c, t, o, u) for u, s, c, t, o in rows],
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE gtts")


def watch(url: str, market, stream: list[Message], batch: int) -> tuple[float, float, int]:
    """CPU-s of this process and of its backend applying ``stream``; GTTs fired."""
    watcher = GttWatcher("events", market)
    fired = 0
    with psycopg.connect(url, autocommit=True) as conn:
        backend = [conn.info.backend_pid]
        before, started = cpu_ticks({"pg": backend}), time.process_time()
        for i in range(0, len(stream), batch):
            fired += watcher.apply(conn, stream[i : i + batch]).fired
        python = time.process_time() - started
        postgres = (cpu_ticks({"pg": backend})["pg"] - before["pg"]) / TICKS_PER_SECOND
    return python, postgres, fired


async def place(url: str, market) -> tuple[float, float, int, int]:
    """CPU-s of this process and of the Postgres backends placing every fired GTT; how
    many were placed and refused."""
    kafka = KafkaSettings(topic_prefix="bench-triggers.")
    async with AsyncConnectionPool(url, min_size=2, max_size=2) as pool:
        entry = OrderEntry(pool, market, kafka)
        pids = []
        for _ in range(2):
            async with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
        before, started, placed, failed = cpu_ticks({"pg": pids}), time.process_time(), 0, 0
        while (done := await place_fired(entry)).placed + done.failed:
            placed, failed = placed + done.placed, failed + done.failed
        python = time.process_time() - started
        postgres = (cpu_ticks({"pg": pids})["pg"] - before["pg"]) / TICKS_PER_SECOND
    return python, postgres, placed, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gtts", type=int, nargs="+", default=[0, 1000, 10_000])
    parser.add_argument("--fire", type=int, default=200)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--events-per-message", type=int, default=20)
    parser.add_argument("--trade-every", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50, help="messages per apply")
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    market = load_market("config/instruments.toml", "always-open")
    symbols = sorted(market)[: args.symbols]
    server = dev_server()
    for waiting in args.gtts:
        rng = random.Random(args.seed)
        name, url = create_database(server, "bench_triggers")
        try:
            seed_accounts(url, symbols, 10)
            seed_gtts(url, market, symbols, waiting, args.fire, rng)
            stream = messages(market, symbols, args, rng)
            python, postgres, fired = watch(url, market, stream, args.batch)
            per = 1e6 / args.events
            print(
                f"watch, {waiting:,} GTTs waiting: {args.events:,} events, {fired} fired; "
                f"CPU µs/event: watcher {python * per:.2f}, its Postgres {postgres * per:.2f}"
            )
            python, postgres, placed, failed = asyncio.run(place(url, market))
            done = placed + failed
            print(
                f"place: {placed} GTT orders placed, {failed} refused; CPU µs/GTT: placer "
                f"{python * 1e6 / done:.0f}, Postgres {postgres * 1e6 / done:.0f}"
            )
        finally:
            drop_database(server, name)


if __name__ == "__main__":
    main()
