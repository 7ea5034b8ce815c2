"""Shard pipeline benchmark: feeder -> input ring -> pinned matcher -> output ring -> reader.

Run (from the repository root, with brokercore installed):

    python benchmarks/bench_shard.py            # default, about a minute
    python benchmarks/bench_shard.py --quick    # a few seconds
    python benchmarks/bench_shard.py --orders 5000000 --rate 1000000

For each wait strategy of the rings (busy-spin, yield, blocking) it runs the built-in
order flow (brokercore.runtime.loadgen: 45% limit, 10% market, 45% cancel, 4 symbols) through a
``Shard`` whose matcher thread is pinned to the last core, the feeding/reading thread
(brokercore.runtime.driver) staying on the others:

* throughput: commands submitted as fast as the shard takes them; orders/s is every
  command from the first submit to the last event read, divided by that time;
* latency: the same flow paced at --rate commands/s (below saturation, so queueing in
  the rings does not dominate); p50/p99/p99.9 of "command published -> its event read",
  measured per event with the monotonic clock.

It prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin here

from brokercore.engine.instruments import Instrument
from brokercore.runtime._ringbuffer import WaitStrategy
from brokercore.runtime.driver import drive
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from brokercore.runtime.shard import Shard
from machine import cpu_model

TARGET_ORDERS_PER_S = 3e6
TARGET_P99_US = 50.0
SYMBOLS = [
    Instrument(name, n, MID - HALF_BAND, MID + HALF_BAND)
    for n, name in enumerate(("AAA", "BBB", "CCC", "DDD"), 1)
]


def one_run(wait: WaitStrategy, orders: int, rate: float | None, batch: int, seed: int):
    cores = sorted(os.sched_getaffinity(0))
    matcher_core = cores[-1] if len(cores) > 1 else None
    # Id maps sized for the whole run: growing one mid-run stalls the matcher.
    instruments = [replace(s, session_orders=orders // len(SYMBOLS) + 1) for s in SYMBOLS]
    shard = Shard.from_instruments(instruments, core=matcher_core, wait=wait)
    if matcher_core is not None:
        os.sched_setaffinity(0, set(cores[:-1]))  # the driver stays off the matcher
    flow = list(order_flow([s.symbol_id for s in SYMBOLS], orders, seed))  # not timed
    try:
        shard.start()
        return drive(shard, flow, batch=batch, rate=rate)
    finally:
        os.sched_setaffinity(0, set(cores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=3_000_000)
    parser.add_argument("--latency-orders", type=int, default=1_000_000)
    parser.add_argument(
        "--rate",
        type=float,
        default=500_000,
        help="commands/s of the latency runs (default: %(default)s)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.latency_orders = 300_000, 100_000

    print(
        f"== brokercore shard pipeline ==\nmachine : {cpu_model()}, "
        f"{len(os.sched_getaffinity(0))} cores; matcher pinned to the last one\n"
        f"flow    : brokercore.runtime.loadgen, 4 symbols, "
        f"batch {args.batch} commands per submit\n"
    )
    rows = []
    for wait in WaitStrategy:
        throughput = one_run(wait, args.orders, None, args.batch, args.seed)
        latency = one_run(wait, args.latency_orders, args.rate, args.batch, args.seed)
        pct = latency.latency_percentiles_us()
        rows.append((wait, throughput, latency, pct))
        print(f"-- {wait.name}: throughput run")
        print("\n".join("   " + line for line in throughput.summary_lines()))
        print(f"-- {wait.name}: latency run at {args.rate:,.0f} commands/s")
        print("\n".join("   " + line for line in latency.summary_lines()) + "\n")

    print(
        f"{'wait':10} {'orders/s':>14} {'events/s':>14} {'p50 us':>9} {'p99 us':>9} "
        f"{'p99.9 us':>9}   (latency at {args.rate:,.0f}/s)"
    )
    for wait, throughput, _, pct in rows:
        print(
            f"{wait.name:10} {throughput.commands_per_second / 1e6:11.2f} M "
            f"{throughput.events_per_second / 1e6:11.2f} M {pct[50]:9.1f} {pct[99]:9.1f} "
            f"{pct[99.9]:9.1f}"
        )
    best = max(t.commands_per_second for _, t, _, _ in rows)
    spin_p99 = next(p[99] for w, _, _, p in rows if w == WaitStrategy.BUSY_SPIN)
    print(
        f"\ntarget  : >= {TARGET_ORDERS_PER_S / 1e6:.0f} M orders/s end to end: best "
        f"{best / 1e6:.2f} M ({best / TARGET_ORDERS_PER_S:.2f}x) "
        f"{'met' if best >= TARGET_ORDERS_PER_S else 'missed'}"
    )
    print(
        f"target  : p99 <= {TARGET_P99_US:.0f} us with busy-spin: {spin_p99:.1f} us "
        f"{'met' if spin_p99 <= TARGET_P99_US else 'missed'}"
    )


if __name__ == "__main__":
    main()
