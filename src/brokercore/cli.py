"""The ``brokercore`` command line: ``brokercore shard`` runs a shard on a built-in load."""

from __future__ import annotations

import argparse
import os
import sys

from brokercore import __version__
from brokercore.driver import drive, print_progress
from brokercore.loadgen import HALF_BAND, MID, order_flow
from brokercore.shard import Instrument, Shard, load_instruments
from brokercore._ringbuffer import WaitStrategy

_WAITS = {"busy-spin": WaitStrategy.BUSY_SPIN, "yield": WaitStrategy.YIELD,
          "blocking": WaitStrategy.BLOCKING}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brokercore", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    shard = commands.add_parser(
        "shard", help="run one shard fed by a built-in deterministic order flow",
        description="Run one shard (its matcher pinned to --core) on a built-in, seeded "
                    "order flow; print progress each second and a summary at the end.")
    shard.add_argument("--core", type=int, help="CPU core for the matcher thread")
    symbols = shard.add_mutually_exclusive_group()
    symbols.add_argument("--symbols", default="AAA,BBB,CCC,DDD",
                         help="comma-separated symbol names (ids 1.., band around "
                              f"{MID} ticks) (default: %(default)s)")
    symbols.add_argument("--instruments", help="TOML file of [[instrument]] tables")
    shard.add_argument("--orders", type=int, default=2_000_000,
                       help="commands to send (default: %(default)s)")
    shard.add_argument("--batch", type=int, default=256,
                       help="commands per submit (default: %(default)s)")
    shard.add_argument("--rate", type=float, help="commands per second (default: as fast "
                                                  "as the shard takes them)")
    shard.add_argument("--wait", choices=_WAITS, default="blocking",
                       help="wait strategy of the rings (default: %(default)s)")
    shard.add_argument("--ring-capacity", type=int, default=1 << 16)
    shard.add_argument("--seed", type=int, default=1)
    return parser


def _instruments(args) -> list[Instrument]:
    if args.instruments:
        return load_instruments(args.instruments)
    names = [name.strip() for name in args.symbols.split(",") if name.strip()]
    per_book = args.orders // max(len(names), 1) + 1    # id maps sized for the whole run
    return [Instrument(name, n, MID - HALF_BAND, MID + HALF_BAND, session_orders=per_book)
            for n, name in enumerate(names, 1)]


def run_shard(args) -> int:
    instruments = _instruments(args)
    if not instruments:
        print("brokercore shard: no instruments", file=sys.stderr)
        return 2
    shard = Shard.from_instruments(instruments, core=args.core, wait=_WAITS[args.wait],
                                   ring_capacity=args.ring_capacity)
    driver_cores = os.sched_getaffinity(0) - ({args.core} if args.core is not None else set())
    if driver_cores:
        os.sched_setaffinity(0, driver_cores)   # keep this (feeder) thread off the matcher
    print(f"brokercore shard: {len(instruments)} symbols, matcher on core "
          f"{args.core if args.core is not None else 'any'}, wait {args.wait}, "
          f"{args.orders:,} commands, batch {args.batch}"
          + (f", {args.rate:,.0f} commands/s" if args.rate else ", as fast as possible"),
          file=sys.stderr)
    # Generated up front, so that making the flow never stalls the measured pipeline.
    flow = list(order_flow([i.symbol_id for i in instruments], args.orders, args.seed))
    shard.start()
    report = drive(shard, flow, batch=args.batch, rate=args.rate, progress=print_progress)
    for line in report.summary_lines():
        print(line)
    if shard.last_error is not None:
        print(f"matcher failed: {shard.last_error!r}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run_shard(args)
    except (ValueError, OSError) as e:
        print(f"brokercore {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
