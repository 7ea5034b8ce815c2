"""Group commit against the single path, in process: what one order costs the OMS's
order entry in CPU (this process) and Postgres (the database's backends), no HTTP.

    python benchmarks/bench_group_commit.py            # about 1 minute
    python benchmarks/bench_group_commit.py --quick    # smoke run, about 10 s

Set-up as benchmarks/bench_oms.py (a fresh database with --users funded accounts, half of
them holding every symbol, instruments under an always-open session), undone at the end;
nothing is published (no Kafka). Rounds alternate between ``OrderEntry.place`` and
``GroupCommit.place``, each with --callers concurrent callers placing orders back to back
(the OMS's request handlers, without their HTTP). It prints, per path, the median over
the rounds of orders/s, CPU-µs per order of this process and of Postgres, and the batch
sizes. It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import msgspec
import uvloop
from psycopg_pool import AsyncConnectionPool

from bench_oms import database_backends, order_bodies
from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings
from brokercore.db.migrations import drop_database
from brokercore.entry.group_commit import GroupCommit
from brokercore.entry.order_entry import OrderEntry, OrderReceipt, OrderRefused
from brokercore.entry.requests import PlaceOrderRequest
from harness import cpu_ticks, create_database, dev_server, seed_accounts, write_instruments

Place = Callable[[str, PlaceOrderRequest], Awaitable[OrderReceipt]]


def requests(instruments: list[dict], users: int) -> Iterator[tuple[str, PlaceOrderRequest]]:
    """bench_oms's order mix, decoded: (user, request)."""
    for user, body in order_bodies(instruments, users, 1, "k"):
        yield f"u{user}", msgspec.json.decode(body, type=PlaceOrderRequest)


async def one_round(
    place: Place,
    orders: Iterator[tuple[str, PlaceOrderRequest]],
    callers: int,
    seconds: float,
    url: str,
) -> dict[str, float]:
    """``callers`` concurrent callers for ``seconds``: orders/s, CPU-µs per order."""
    groups = {"oms": [os.getpid()], "pg": database_backends(url)}
    placed = refused = 0
    end = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal placed, refused
        while time.perf_counter() < end:
            user, request = next(orders)
            try:
                await place(user, request)
                placed += 1
            except OrderRefused:
                refused += 1

    t0, before = time.perf_counter(), cpu_ticks(groups)
    await asyncio.gather(*(caller() for _ in range(callers)))
    spent, elapsed = cpu_ticks(groups), time.perf_counter() - t0
    per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
    done = max(1, placed + refused)
    return {
        "orders/s": done / elapsed,
        **{f"{k} µs/order": (spent[k] - before[k]) * per_tick / done for k in groups},
        "refused": refused,
    }


async def run(args, url: str, instruments_path: str, instruments: list[dict]) -> None:
    market = load_market(instruments_path)
    kafka = KafkaSettings("127.0.0.1:1", "bench-gc-", 4)  # nothing is published
    async with AsyncConnectionPool(url, min_size=args.callers, max_size=args.callers) as pool:
        entry = OrderEntry(pool, market, kafka)
        batcher = GroupCommit(entry)
        paths: dict[str, Place] = {"single": entry.place, "group commit": batcher.place}
        orders = requests(instruments, args.users)
        for place in paths.values():  # warm-up: connections, prepared statements
            await one_round(place, orders, args.callers, args.warmup, url)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for n in range(args.rounds):
            for name, place in paths.items():
                batches = batcher.batches, batcher.orders
                r = await one_round(place, orders, args.callers, args.seconds, url)
                if place == batcher.place:
                    r["orders/batch"] = (batcher.orders - batches[1]) / max(
                        1, batcher.batches - batches[0]
                    )
                results[name].append(r)
                print(
                    f"{name:12} round {n}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()),
                    flush=True,
                )
    print(f"\n== median of {args.rounds} rounds, {args.callers} concurrent callers ==")
    for name, rounds in results.items():
        print(
            f"{name:12} "
            + ", ".join(f"{k} {statistics.median(r[k] for r in rounds):,.1f}" for k in rounds[0])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="smoke run, about 10 s")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(seconds=1.0, rounds=2, warmup=0.5)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench-gc-")
    instruments_path = os.path.join(tmp.name, "instruments.toml")
    instruments = write_instruments(instruments_path)
    server = dev_server()
    dbname, url = create_database(server)
    try:
        seed_accounts(url, [i["symbol"] for i in instruments], args.users)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args, url, instruments_path, instruments))
    finally:
        drop_database(server, dbname)
        tmp.cleanup()


if __name__ == "__main__":
    main()
