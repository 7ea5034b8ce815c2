"""Time of the call auction's uncross on a large pre-open book, and of the auction() view.

Run (from the repository root, with brokercore installed):

    python benchmarks/bench_auction.py                  # 1,000,000 orders on 2,000 levels
    python benchmarks/bench_auction.py --quick          # 100,000 orders, a few seconds
    python benchmarks/bench_auction.py --orders 2000000 --levels 5000 --runs 7

Options: --orders N (orders in the pre-open book), --levels L (price levels of the band),
--market-share F (share of market orders), --runs R (timed runs, a fresh book each,
median reported), --seed S, --quick. The script prints numbers; it asserts nothing.

The book: a band of L ticks starting at 10,000; the engine is put in PRE_OPEN (close,
then pre_open) and given N orders in one untimed process() call: half buys with limits
uniform over the lower 60 % of the band, half sells uniform over the upper 60 %, so the
two sides cross over the middle 20 %; quantities 1..100; a share of the orders (1 % by
default) are market orders, which wait for the uncross. Each run builds a fresh book.

What is timed, per run: ``book.auction()`` (the indicative opening: one walk over the
levels summing whole quantities, one sweep over the candidate prices), then
``book.uncross()`` (the same computation, every trade at the opening price as TRADE
events, the market orders left converted, UNCROSSED and OPENED); wall time with
perf_counter and CPU time of this process with process_time (on a shared machine the
wall time includes waiting for a core; CPU time is the steadier number). Printed: the
opening price, volume, imbalance, trades, events, the medians in ms, and a cross-check
of the opening price against ``brokercore.engine.auction.opening_price`` (the
pure-Python rule the reference model uses) on the same book.

Target printed: uncross <= 50 ms for 1,000,000 orders on 2,000 levels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from brokercore import COMMAND_DTYPE, EventType, Op, OrderBook, Side, Tif
from brokercore.engine.auction import opening_price

LOW = 10_000
TARGET_MS = 50.0


def pre_open_commands(orders: int, levels: int, market_share: float, seed: int) -> np.ndarray:
    """N new-order commands for a crossed pre-open book (see the module docstring)."""
    rng = np.random.default_rng(seed)
    c = np.zeros(orders, dtype=COMMAND_DTYPE)
    buy = rng.random(orders) < 0.5
    span = int(levels * 0.6)
    c["side"] = np.where(buy, Side.BUY, Side.SELL)
    c["price"] = np.where(
        buy, LOW + rng.integers(0, span, orders), LOW + levels - 1 - rng.integers(0, span, orders)
    )
    market = rng.random(orders) < market_share
    c["op"] = np.where(market, Op.MARKET, Op.LIMIT)
    c["price"][market] = 0
    c["tif"] = np.where(market, Tif.IOC, Tif.GTC)
    c["qty"] = rng.integers(1, 101, orders)
    c["order_id"] = np.arange(1, orders + 1)
    c["account"] = rng.integers(1, 10_001, orders)
    return c


def pre_open_book(commands: np.ndarray, levels: int) -> OrderBook:
    book = OrderBook(LOW, LOW + levels - 1, session_orders=len(commands))
    book.close()
    book.pre_open()
    events = book.process(commands)
    rejected = int(np.count_nonzero(events["type"] == EventType.REJECTED))
    if rejected:
        raise SystemExit(f"{rejected} of the book's orders were rejected")
    return book


def python_opening(book: OrderBook) -> tuple[int, int, int, int] | None:
    """The opening price by the reference model's pure-Python rule, from orders()."""
    live = book.orders()
    markets = live["op"] == Op.MARKET
    quote = opening_price(
        *(_levels(live[~markets & (live["side"] == side)]) for side in (Side.BUY, Side.SELL)),
        market_buy=int(live["qty"][markets & (live["side"] == Side.BUY)].sum()),
        market_sell=int(live["qty"][markets & (live["side"] == Side.SELL)].sum()),
        reference=book.last_price,
    )
    return None if quote is None else tuple(quote)


def _levels(orders: np.ndarray) -> list[tuple[int, int]]:
    prices, index = np.unique(orders["price"], return_inverse=True)
    totals = np.bincount(index, weights=orders["qty"]).astype(np.int64)
    return list(zip(prices.tolist(), totals.tolist(), strict=True))


def timed(call) -> tuple[float, float, object]:
    """(wall ms, CPU ms, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--levels", type=int, default=2_000)
    parser.add_argument("--market-share", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=5, help="timed runs, median reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100,000 orders, 3 runs")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.runs = 100_000, 3

    commands = pre_open_commands(args.orders, args.levels, args.market_share, args.seed)
    print(
        f"pre-open book: {args.orders:,} orders ({args.market_share:.0%} market) on "
        f"{args.levels:,} levels, {args.runs} runs (a fresh book each)"
    )
    view, uncross = [], []
    for run in range(args.runs):
        start = time.perf_counter()
        book = pre_open_book(commands, args.levels)
        built = time.perf_counter() - start
        if run == 0:
            expected = python_opening(book)
        view_wall, view_cpu, quote = timed(book.auction)
        wall, cpu, count = timed(book.uncross)
        view.append((view_wall, view_cpu))
        uncross.append((wall, cpu))
        events = book.last_events()
        trades = int(np.count_nonzero(events["type"] == EventType.TRADE))
        done = events[events["type"] == EventType.UNCROSSED][0]
        print(
            f"  run {run + 1}: built in {built:.2f} s; auction() {view_wall:.1f} ms; "
            f"uncross {wall:.1f} ms wall, {cpu:.1f} ms CPU: price {done['price']}, "
            f"volume {done['qty']:,}, imbalance {done['remaining']:,}, {trades:,} trades, "
            f"{count:,} events, {book.open_orders:,} orders left"
        )
    agrees = quote is not None and tuple(quote) == expected
    print(f"opening price agrees with brokercore.engine.auction.opening_price: {agrees}")
    median_wall = statistics.median(w for w, _ in uncross)
    median_cpu = statistics.median(c for _, c in uncross)
    print(
        f"auction() view: median {statistics.median(w for w, _ in view):.1f} ms wall, "
        f"{statistics.median(c for _, c in view):.1f} ms CPU"
    )
    print(f"uncross: median {median_wall:.1f} ms wall, {median_cpu:.1f} ms CPU")
    if args.orders == 1_000_000 and args.levels == 2_000:
        verdicts = [
            f"{name} {'met' if value <= TARGET_MS else 'missed'}"
            for name, value in (("wall", median_wall), ("CPU", median_cpu))
        ]
        print(
            f"target uncross <= {TARGET_MS:.0f} ms (1,000,000 orders, 2,000 levels): "
            f"{', '.join(verdicts)} (on a busy machine wall time includes waiting for a core)"
        )


if __name__ == "__main__":
    main()
