"""What the trigger service's bracket step costs (docs/brackets.md): CPU per target leg
placed, per bracket whose stop-loss was met (its target's cancel sent), and per stop-loss
order placed.

    python benchmarks/bench_brackets.py                 # 500 brackets
    python benchmarks/bench_brackets.py --brackets 2000

In this process on the development Postgres (a fresh database, dropped at the end), no
Kafka and no engine: ``--brackets`` brackets (a buy of 1 RELIANCE each, owned by seeded
accounts that hold shares) are made through ``BracketBook.create``; their entries are
then marked FILLED in SQL (as settlement would), and ``bracket_pass`` runs until it has
nothing left to do: the target legs. Then every bracket is marked STOPPING (as the
watcher would): the passes cancel the targets; the targets are marked CANCELLED: the
passes place the stop-losses. Between the first two, one pass with nothing to do (what
every pass costs while brackets wait). CPU: this process's (``time.process_time``) and its
Postgres backends' (/proc ticks). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from psycopg_pool import AsyncConnectionPool

from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings
from brokercore.db.migrations import drop_database
from brokercore.entry.bracket_legs import bracket_pass
from brokercore.entry.brackets import BracketBook, NewBracket
from brokercore.entry.order_entry import OrderEntry
from harness import cpu_ticks, create_database, dev_server, seed_accounts

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
HOLDERS = 10  # seed_accounts' first half of 20 users hold shares


async def run(url: str, brackets: int) -> None:
    market = load_market("config/instruments.toml", "always-open")
    instrument = market["RELIANCE"]
    middle = (instrument.low + instrument.high) // 2
    kafka = KafkaSettings(topic_prefix="bench-brackets.")
    async with AsyncConnectionPool(url, min_size=3, max_size=3) as pool:
        entry = OrderEntry(pool, market, kafka)
        book = BracketBook(entry)
        for n in range(brackets):
            new = NewBracket(
                "RELIANCE",
                "BUY",
                1,
                instrument.to_price(middle),
                instrument.to_price(middle + 10),
                instrument.to_price(middle - 10),
                uuid.uuid4().hex,
            )
            await book.create(f"u{n % HOLDERS}", new)
        pids = []
        for _ in range(3):
            async with pool.connection() as conn:
                pids.append(conn.info.backend_pid)

        async def step(name: str, setup: str) -> None:
            async with pool.connection() as conn:
                await conn.execute(setup)
            before, started, passes = cpu_ticks({"pg": pids}), time.process_time(), 0
            while (done := await bracket_pass(entry)).outbox or done.failed or done.closing:
                passes += 1
                if not done.outbox and not done.failed:
                    break  # waiting for cancels no one settles here
            python = time.process_time() - started
            postgres = (cpu_ticks({"pg": pids})["pg"] - before["pg"]) / TICKS_PER_SECOND
            async with pool.connection() as conn:
                states = await (
                    await conn.execute(
                        "SELECT b.status, count(t.order_id), count(b.stop_order_id) "
                        "FROM brackets b LEFT JOIN bracket_targets t USING (bracket_id) "
                        "GROUP BY 1 ORDER BY 1"
                    )
                ).fetchall()
            per = 1e6 / brackets
            print(
                f"{name}: {brackets} brackets, {passes} passes; CPU µs per bracket: "
                f"placer {python * per:.0f}, Postgres {postgres * per:.0f}; "
                f"(status, legs, stop orders): {states}"
            )

        await step(
            "target legs",
            "UPDATE orders SET status = 'FILLED', filled_quantity = quantity WHERE side = 'BUY'",
        )
        before, started = cpu_ticks({"pg": pids}), time.process_time()
        await bracket_pass(entry)  # every bracket waits for its target: nothing to do
        python = time.process_time() - started
        postgres = (cpu_ticks({"pg": pids})["pg"] - before["pg"]) / TICKS_PER_SECOND
        print(
            f"an idle pass over {brackets} live brackets: CPU µs per bracket: placer "
            f"{python * 1e6 / brackets:.0f}, Postgres {postgres * 1e6 / brackets:.0f}"
        )
        await step(
            "stop met, targets cancelled",
            "UPDATE brackets SET status = 'STOPPING', stop_price = stop, stopped_at = now()",
        )
        await step(
            "stop-losses placed",
            "UPDATE orders SET status = 'CANCELLED' WHERE side = 'SELL' AND type = 'LIMIT'",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brackets", type=int, default=500)
    args = parser.parse_args()
    server = dev_server()
    name, url = create_database(server, "bench_brackets")
    try:
        seed_accounts(url, ["RELIANCE"], 2 * HOLDERS)
        asyncio.run(run(url, args.brackets))
    finally:
        drop_database(server, name)


if __name__ == "__main__":
    main()
