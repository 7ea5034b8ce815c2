"""Throughput, latency and memory benchmark of the brokercore matching engine.

Run (from the repository root, with brokercore installed):

    python benchmarks/bench_engine.py                   # default, ~3 min (`make demo`)
    python benchmarks/bench_engine.py --quick           # ~30 s smoke run
    python benchmarks/bench_engine.py --profile exchange-core --ops 3000000 --runs 7
    python benchmarks/bench_engine.py --memory-books 0  # skip the memory test

Options: --ops N (timed commands per profile), --runs R (timed repetitions), --profile
mixed|exchange-core|all, --memory-books B, --reference-ops N (prefix the reference model
runs), --cold-runs P (fresh processes of the first-batch row, 0 to skip), --cold-ops N
(its batch), --latency-orders N (per-order calls timed one by one), --seed S, --quick.
The script prints numbers; it asserts nothing.

Workloads (benchmarks/workloads.py) are generated up front, deterministic in --seed:
``mixed`` (60% limit, 10% market, 30% cancel of live orders) and ``exchange-core``
(82% price-moving amends, 9% GTC, 6% cancel, 3% IOC, ~1,000 resting orders on ~750
levels). Each starts from a short untimed prefill that builds the standing book.

What each number means:

* batch process(): ``book.process(commands)`` on the whole timed array, on a fresh
  prefilled book, one untimed warm-up run then R timed runs; median ops/s (commands
  per second, output event array included) and ns/op = 1e9 / that; "CPU" is the median
  per second of this process's CPU time (process_time), which other load on the
  machine changes far less than the wall clock: compare those on a busy machine.
* per-order calls: a Python loop calling ``book.limit/market/cancel/amend`` with
  positional arguments from pre-built tuples (dispatch through a tuple of bound methods
  indexed by op); same warm-up and median. This is what a Python caller pays, loop
  included; the loop's own cost is shown separately (the same loop over no-op methods).
* batch in slices: the same commands fed to process() 16,384 at a time; next to the
  whole-array number it shows what building one huge output array costs.
* first batch, fresh process: P fresh interpreters each load the first --cold-ops
  commands (1,000,000 by default) from a file, build a fresh prefilled book and time
  its first ``process()`` (wall and CPU time, process_time, which includes the thread
  that faults the event buffer in; the batch thread's own CPU, thread_time; the page
  faults of the whole process, ru_minflt); then a second fresh book in the same
  process, the same way. Median and min over the processes, beside the warm median
  above. This is where a process pays for faulting its memory in (the event buffer,
  the id map growing); a second row does the same with the book sized for the run
  (``session_orders`` = the run's new orders), which faults the id map in when the
  book is made. The processes run one after the other, so each may get pages the one
  before it has just freed: a long-running busy host is colder than that. They run
  with one BLAS thread (OPENBLAS_NUM_THREADS=1): numpy's spin for a while after
  start-up, on the core the engine's prefault thread would use.
* latency: per-order calls timed one by one with perf_counter_ns, --latency-orders of
  them (10,000,000 by default: passes over the workload's calls, each pass on a fresh
  prefilled book, so each pass includes a book growing), for the default book and the
  one sized for the run; p50/p99/p99.9/p99.99/max in ns and the calls over 100 us,
  minus the median cost of an empty timer pair (timed right after each call, so under
  the same conditions; printed). The timer is Python's, around the Python call: the
  call's own dispatch (~100 ns) is in every sample, and the clock costs tens of ns,
  so values near zero are coarse; the max is usually a preemption or a growth.
* reference: ``ReferenceBook.process`` (the plain-Python model) on the first
  --reference-ops commands of the same workload, after the same prefill; the ratios
  are engine rate / reference rate.
* events identical: the batch run and a per-order run (collecting ``last_events()``
  after each call) produced the same event array; "reference agrees" compares the
  model's events with the engine's on the prefix. Cross-checks, not tests.
* peak RSS: the process's high-water mark (ru_maxrss) after the profile; it includes
  the workload arrays, the events and the per-order argument tuples, not just books.
  "book nbytes" is the C memory the engine book reports, after the prefill and after
  the whole-array batch run.
* memory test (run in a child process for a clean baseline): B books with a +-20% band
  at a 0.01 tick around prices spread over 1,000..3,000 (mid 100,000..300,000 ticks),
  each holding 100 resting orders (50 bids, 50 asks, 3 ticks apart); RSS growth (total
  and per book, Python objects included), the sum of ``book.nbytes`` and build time.

Targets printed beside the numbers: batch >= 10 M ops/s, per-order >= 3 M ops/s,
per-order p99 <= 1 us, 10k books well under 1 GiB. exchange-core's ~5 M ops/s for its
Java single-book core is quoted as context only; it is not measured here.

If the compiled engine is not importable, the script falls back to the reference model
with small sizes and says so at the top (useful only to check the script itself).
"""

from __future__ import annotations

import argparse
import array
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from brokercore.engine.records import COMMAND_DTYPE, EventType, Op, Reason, Stp, Tif
from brokercore.engine.reference import ReferenceBook
from machine import cpu_model
from workloads import (
    PROFILES,
    Workload,
    bound_methods,
    generate,
    memory_book_commands,
    per_order_calls,
    per_order_events,
    run_calls,
)

MIB = 1024 * 1024

TARGET_BATCH_OPS = 10e6
TARGET_PER_ORDER_OPS = 3e6
TARGET_P99_NS = 1_000
TARGET_MEMORY_BYTES_10K = 1024 * MIB
TARGET_COLD_OPS = 7e6
SLOW_CALL_NS = 100_000  # the latency rows count the calls slower than this
EXCHANGE_CORE_OPS = 5e6
SLICE_SIZE = 16_384  # commands per process() call in the sliced batch measurement

DEFAULTS = {
    "ops": 2_000_000,
    "runs": 7,
    "memory_books": 10_000,
    "reference_ops": 50_000,
    "cold_runs": 7,
    "cold_ops": 1_000_000,
    "latency_orders": 10_000_000,
}
QUICK = {
    "ops": 500_000,
    "runs": 3,
    "memory_books": 2_000,
    "reference_ops": 10_000,
    "cold_runs": 3,
    "cold_ops": 500_000,
    "latency_orders": 1_000_000,
}
MODEL_ONLY_CAPS = {
    "ops": 20_000,
    "runs": 2,
    "memory_books": 300,
    "reference_ops": 5_000,
    "cold_runs": 0,
    "cold_ops": 20_000,
    "latency_orders": 20_000,
}


# ------------------------------------------------------------------ environment


@dataclass
class Implementation:
    """The book class under test and how to describe it."""

    book_class: type
    label: str
    is_engine: bool


def load_implementation() -> Implementation:
    """The compiled engine if it imports, else the reference model (flagged)."""
    try:
        from brokercore import OrderBook
    except ImportError as exc:
        return Implementation(
            ReferenceBook, f"REFERENCE MODEL ONLY (engine not importable: {exc})", False
        )
    return Implementation(OrderBook, f"{OrderBook.__module__}.{OrderBook.__qualname__}", True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def brokercore_version() -> str:
    try:
        import brokercore

        return getattr(brokercore, "__version__", "unknown")
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("brokercore")
        except PackageNotFoundError:
            return "unknown (not installed)"


def header_lines(impl: Implementation, settings: dict) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        "== brokercore engine benchmark ==",
        f"machine    : {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()} {platform.machine()}, load avg {load}",
        f"python     : {platform.python_version()} ({platform.python_implementation()})",
        f"numpy      : {np.__version__}",
        f"brokercore : {brokercore_version()}; book under test: {impl.label}",
        "settings   : "
        + ", ".join(
            f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in settings.items()
        ),
    ]


def peak_rss_bytes() -> int:
    """Process high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class GcPaused:
    """Keep the cyclic GC out of timed regions."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


# ------------------------------------------------------------ per-order calls


def _noop(*args):
    """A no-op in place of a book method: the per-order loop's own cost."""
    return 0


NOOP_METHODS = (None, _noop, _noop, _noop, _noop)


# ---------------------------------------------------------------------- runners


def ops_per_second(count: int, elapsed_ns: int) -> float:
    return count * 1e9 / max(elapsed_ns, 1)


@dataclass
class Rates:
    """ops/s of each timed run: per wall second, and per CPU second of this process
    (what a shared machine's other load changes least)."""

    wall: list[float]
    cpu: list[float]


def timed_runs(prepare, execute, n_ops: int, runs: int, label: str):
    """Call ``execute(prepare())`` runs + 1 times, timing only ``execute``; the first
    (warm-up) run is not counted. Returns the Rates and the last run's result."""
    rates, result = Rates([], []), None
    for run in range(runs + 1):
        subject = prepare()
        with GcPaused():
            start, cpu = time.perf_counter_ns(), time.process_time_ns()
            result = execute(subject)
            elapsed, cpu = time.perf_counter_ns() - start, time.process_time_ns() - cpu
        if run:
            rates.wall.append(ops_per_second(n_ops, elapsed))
            rates.cpu.append(ops_per_second(n_ops, cpu))
            log(
                f"[{label}] run {run}/{runs}: {rates.wall[-1] / 1e6:.2f} M ops/s "
                f"(CPU {rates.cpu[-1] / 1e6:.2f})"
            )
    return rates, result


def process_in_slices(book, commands: np.ndarray, slice_size: int) -> None:
    for start in range(0, len(commands), slice_size):
        book.process(commands[start : start + slice_size])


def time_batch(workload: Workload, book_class, runs: int, tag: str):
    """process() over the whole timed array on fresh prefilled books; also returns
    the last run's events and book."""
    rates, (events, book) = timed_runs(
        lambda: workload.prefilled_book(book_class),
        lambda book: (book.process(workload.commands), book),
        len(workload.commands),
        runs,
        f"{tag} batch",
    )
    return rates, events, book


def time_batch_slices(workload: Workload, book_class, runs: int, tag: str) -> Rates:
    """process() fed SLICE_SIZE commands at a time (shows what one huge output costs)."""
    rates, _ = timed_runs(
        lambda: workload.prefilled_book(book_class),
        lambda book: process_in_slices(book, workload.commands, SLICE_SIZE),
        len(workload.commands),
        runs,
        f"{tag} batch in slices",
    )
    return rates


def time_per_order(workload: Workload, book_class, calls: list, runs: int, tag: str):
    """The per-order loop on fresh prefilled books."""
    rates, _ = timed_runs(
        lambda: bound_methods(workload.prefilled_book(book_class)),
        lambda methods: run_calls(methods, calls),
        len(calls),
        runs,
        f"{tag} per-order",
    )
    return rates


def loop_overhead_ns(calls: list) -> float:
    """ns per call of the per-order loop itself: the same loop over no-op methods."""
    with GcPaused():
        start = time.perf_counter_ns()
        run_calls(NOOP_METHODS, calls)
        elapsed = time.perf_counter_ns() - start
    return elapsed / max(len(calls), 1)


@dataclass
class Latency:
    calls: int
    passes: int
    p50: float
    p99: float
    p999: float
    p9999: float
    worst: float
    slow_calls: int  # over SLOW_CALL_NS
    timer_ns: float


def latency_passes(workload: Workload, book_class, calls: list, total: int, **options) -> Latency:
    """Time ``total`` per-order calls one by one: passes over ``calls``, each on a fresh
    prefilled book made with ``options``. Right after each timed call an empty timer pair
    is timed too, under the same conditions; the median of those is subtracted (a mean
    would carry the preemptions of a busy machine)."""
    clock = time.perf_counter_ns
    samples, empty = array.array("q", bytes(8 * total)), array.array("q", bytes(8 * total))
    done = passes = 0
    with GcPaused():
        while done < total:
            methods = bound_methods(workload.prefilled_book(book_class, **options))
            passes += 1
            for op, args in calls[: total - done]:
                method = methods[op]
                t0 = clock()
                method(*args)
                t1 = clock()
                t2 = clock()
                samples[done] = t1 - t0
                empty[done] = t2 - t1
                done += 1
    timer = float(np.median(np.frombuffer(empty, dtype=np.int64)))
    ns = np.frombuffer(samples, dtype=np.int64) - timer
    p50, p99, p999, p9999 = np.percentile(ns, (50, 99, 99.9, 99.99))
    slow = int(np.count_nonzero(ns > SLOW_CALL_NS))
    return Latency(total, passes, p50, p99, p999, p9999, float(ns.max()), slow, timer)


# ------------------------------------------------- first batch in a fresh process


@dataclass
class ColdRuns:
    """The first-batch row: per fresh process, the first and second ``process()``."""

    ops: int
    session_orders: int
    first_wall: list[float]  # ops/s
    first_cpu: list[float]  # ops per CPU second
    first_thread_cpu: list[float]  # ops per CPU second of the thread that ran process()
    first_faults: list[int]  # minor page faults of the whole process
    second_wall: list[float]


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_process(book, commands: np.ndarray) -> tuple[int, int, int, int]:
    """(wall ns, process CPU ns, this thread's CPU ns, minor page faults) of one
    ``process()``; its events are dropped before returning."""
    with GcPaused():
        faults, thread = minor_faults(), time.thread_time_ns()
        wall, cpu = time.perf_counter_ns(), time.process_time_ns()
        events = book.process(commands)
        wall, cpu = time.perf_counter_ns() - wall, time.process_time_ns() - cpu
        thread, faults = time.thread_time_ns() - thread, minor_faults() - faults
    del events
    return wall, cpu, thread, faults


def cold_child(folder: str, book_class) -> dict:
    """In a fresh interpreter: the first and second ``process()`` of the saved batch,
    each on a fresh prefilled book. Nothing else runs in this process before them."""
    with open(os.path.join(folder, "book.json")) as f:
        meta = json.load(f)
    prefill = np.fromfile(os.path.join(folder, "prefill.bin"), dtype=COMMAND_DTYPE)
    commands = np.fromfile(os.path.join(folder, "commands.bin"), dtype=COMMAND_DTYPE)
    workload = Workload("cold", "", meta["low"], meta["high"], meta["stp"], prefill, commands)
    options = {"session_orders": meta["session_orders"]} if meta["session_orders"] else {}
    runs = [timed_process(workload.prefilled_book(book_class, **options), commands) for _ in (1, 2)]
    return {"first": runs[0], "second": runs[1]}


def measure_cold(workload: Workload, args, session_orders: int) -> ColdRuns:
    """--cold-runs fresh interpreters (``cold_child``) on the first --cold-ops commands."""
    commands = workload.commands[: args.cold_ops]
    walls, cpus, threads, faults, seconds = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as folder:
        workload.prefill.tofile(os.path.join(folder, "prefill.bin"))
        commands.tofile(os.path.join(folder, "commands.bin"))
        with open(os.path.join(folder, "book.json"), "w") as f:
            json.dump(
                {
                    "low": workload.low,
                    "high": workload.high,
                    "stp": workload.book_stp,
                    "session_orders": session_orders,
                },
                f,
            )
        command = [sys.executable, os.path.abspath(__file__), "--cold-child", folder]
        # numpy's BLAS threads spin for a while after start-up, on the cores the batch's
        # prefault thread would use; the engine uses no BLAS, a long-running server's
        # are asleep by the time a batch comes.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        for run in range(args.cold_runs):
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, env=env)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            (wall, cpu, thread, faulted), second = result["first"], result["second"][0]
            walls.append(ops_per_second(len(commands), wall))
            cpus.append(ops_per_second(len(commands), cpu))
            threads.append(ops_per_second(len(commands), thread))
            faults.append(faulted)
            seconds.append(ops_per_second(len(commands), second))
            log(
                f"[{workload.name} first batch, session_orders={session_orders:,}] process "
                f"{run + 1}/{args.cold_runs}: {walls[-1] / 1e6:.2f} M ops/s "
                f"(CPU {cpus[-1] / 1e6:.2f}, batch thread {threads[-1] / 1e6:.2f}, "
                f"{faulted:,} page faults), second call {seconds[-1] / 1e6:.2f}"
            )
    return ColdRuns(len(commands), session_orders, walls, cpus, threads, faults, seconds)


def time_reference(workload: Workload, commands: np.ndarray):
    """The model's rate on a command prefix (one run; it is slow and steady)."""
    book = workload.prefilled_book(ReferenceBook)
    with GcPaused():
        start = time.perf_counter_ns()
        events = book.process(commands)
        elapsed = time.perf_counter_ns() - start
    return ops_per_second(len(commands), elapsed), events


# ------------------------------------------------------------ workload facts


def op_mix(commands: np.ndarray) -> dict:
    """Share of each op, and of IOC among limits."""
    ops = commands["op"]
    limits = ops == Op.LIMIT
    mix = {op.name: float(np.mean(ops == op)) for op in (Op.LIMIT, Op.MARKET, Op.CANCEL, Op.AMEND)}
    mix["IOC share of limits"] = (
        float(np.mean(commands["tif"][limits] == Tif.IOC)) if limits.any() else 0.0
    )
    return mix


def targeted_hits(events: np.ndarray, op: Op, hit_type: EventType, hit_reason: Reason):
    """(hits, misses) of cancels or amends: the expected event vs a REJECTED one."""
    of_op = events["op"] == op
    hits = of_op & (events["type"] == hit_type) & (events["reason"] == hit_reason)
    misses = of_op & (events["type"] == EventType.REJECTED)
    return int(hits.sum()), int(misses.sum())


def traded_command_share(events: np.ndarray, counts: list) -> float:
    """Share of commands that produced at least one TRADE event."""
    command_of_event = np.repeat(np.arange(len(counts)), counts)
    return np.unique(command_of_event[events["type"] == EventType.TRADE]).size / max(len(counts), 1)


def book_shape(book) -> tuple[int, int]:
    """(resting orders, occupied price levels) of a book now."""
    orders = book.open_orders
    bids, asks = book.depth(max(orders, 1))
    return orders, len(bids) + len(asks)


# ----------------------------------------------------------------- one profile


@dataclass
class ProfileResult:
    """Everything measured on one workload."""

    workload: Workload
    batch_rates: Rates
    slice_rates: Rates
    per_order_rates: Rates
    loop_overhead_ns: float
    latency: Latency
    sized_latency: Latency | None  # the book sized for the run (engine only)
    cold: list[ColdRuns]
    batch_events: np.ndarray
    counts: list[int]
    events_identical: bool
    reference_rate: float
    reference_ops: int
    reference_agrees: bool
    final_shape: tuple[int, int]
    nbytes_prefilled: int | None
    nbytes_after: int | None
    peak_rss: int

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def batch_ops(self) -> float:
        return statistics.median(self.batch_rates.wall)

    @property
    def per_order_ops(self) -> float:
        return statistics.median(self.per_order_rates.wall)


def measure_profile(name: str, impl: Implementation, args) -> ProfileResult:
    """Generate one workload and run every measurement on it."""
    book_class = impl.book_class
    log(f"[{name}] generating {args.ops:,} commands (seed {args.seed}) ...")
    start = time.perf_counter()
    workload = generate(
        PROFILES[name],
        args.ops,
        args.seed,
        book_class,
        progress=lambda done, total: log(f"[{name}]   {done:,}/{total:,}"),
    )
    log(f"[{name}] generated in {time.perf_counter() - start:.1f} s; building call tuples")
    calls = per_order_calls(workload.commands)

    batch_rates, batch_events, final_book = time_batch(workload, book_class, args.runs, name)
    slice_rates = time_batch_slices(workload, book_class, args.runs, name)
    per_order_rates = time_per_order(workload, book_class, calls, args.runs, name)
    sized = {"session_orders": workload.session_orders()} if impl.is_engine else None
    log(f"[{name}] latency: {args.latency_orders:,} per-order calls timed one by one")
    latency = latency_passes(workload, book_class, calls, args.latency_orders)
    sized_latency = None
    if sized is not None:
        log(f"[{name}] latency again, books made with session_orders={sized['session_orders']:,}")
        sized_latency = latency_passes(workload, book_class, calls, args.latency_orders, **sized)
    cold = []
    if args.cold_runs > 0:
        prefix_orders = workload.session_orders(workload.commands[: args.cold_ops])
        cold = [measure_cold(workload, args, hint) for hint in (0, prefix_orders)]
    log(f"[{name}] per-order event cross-check")
    po_events, counts = per_order_events(workload, book_class, calls, len(batch_events))

    prefix = workload.commands[: args.reference_ops]
    log(f"[{name}] reference model on {len(prefix):,} commands")
    reference_rate, reference_events = time_reference(workload, prefix)
    engine_prefix_events = workload.prefilled_book(book_class).process(prefix)

    return ProfileResult(
        workload=workload,
        batch_rates=batch_rates,
        slice_rates=slice_rates,
        per_order_rates=per_order_rates,
        loop_overhead_ns=loop_overhead_ns(calls),
        latency=latency,
        sized_latency=sized_latency,
        cold=cold,
        batch_events=batch_events,
        counts=counts,
        events_identical=po_events is not None and np.array_equal(po_events, batch_events),
        reference_rate=reference_rate,
        reference_ops=len(prefix),
        reference_agrees=np.array_equal(reference_events, engine_prefix_events),
        final_shape=book_shape(final_book),
        nbytes_prefilled=getattr(workload.prefilled_book(book_class), "nbytes", None),
        nbytes_after=getattr(final_book, "nbytes", None),
        peak_rss=peak_rss_bytes(),
    )


def fmt_rate(ops: float) -> str:
    return f"{ops / 1e6:.2f} M ops/s" if ops >= 1e6 else f"{ops / 1e3:.1f} k ops/s"


def fmt_rates(rates: Rates) -> str:
    """Median rate, its ns/op, the spread over the runs (in the median's unit) and the
    median per CPU second."""
    median = statistics.median(rates.wall)
    scale, unit = (1e6, "M") if median >= 1e6 else (1e3, "k")
    return (
        f"{fmt_rate(median):>16} {1e9 / median:>9.1f} ns/op   min..max "
        f"{min(rates.wall) / scale:.2f}..{max(rates.wall) / scale:.2f} {unit} ops/s "
        f"over {len(rates.wall)} runs; CPU {fmt_rate(statistics.median(rates.cpu))}"
    )


def workload_lines(r: ProfileResult) -> list[str]:
    """What the workload turned out to be, measured from its commands and events."""
    workload, events = r.workload, r.batch_events
    commands = workload.commands
    lines = [
        f"workload   : {len(commands):,} timed commands after a {len(workload.prefill):,}-command "
        f"prefill; {workload.description}",
        "measured   : " + ", ".join(f"{k} {v:.1%}" for k, v in op_mix(commands).items()),
    ]
    for op, hit_type, hit_reason, noun in (
        (Op.CANCEL, EventType.CANCELLED, Reason.USER_CANCEL, "cancels"),
        (Op.AMEND, EventType.AMENDED, Reason.NONE, "amends"),
    ):
        hits, misses = targeted_hits(events, op, hit_type, hit_reason)
        if hits + misses:
            lines.append(
                f"             {noun} that hit a live order: {hits / (hits + misses):.2%} "
                f"({hits:,} of {hits + misses:,}; the rest REJECTED UNKNOWN_ORDER)"
            )
    trades = int(np.sum(events["type"] == EventType.TRADE))
    traded = (
        f"; commands that traded: {traded_command_share(events, r.counts):.1%}"
        if r.events_identical
        else ""
    )
    stats = workload.stats
    orders, levels = r.final_shape
    lines += [
        f"             trade events per command: {trades / len(commands):.3f}{traded}",
        f"             resting orders: mean {stats['mean_resting_orders']:,.0f} on "
        f"{stats['mean_levels']:,.0f} price levels while generating; {orders:,} on {levels:,} "
        "levels at the end",
    ]
    return lines


def latency_lines(lat: Latency, book: str) -> list[str]:
    return [
        f"  per-order latency, {book:<27} p50 {lat.p50:,.0f}   p99 {lat.p99:,.0f}   "
        f"p99.9 {lat.p999:,.0f}   p99.99 {lat.p9999:,.0f}   max {lat.worst:,.0f} ns; "
        f"{lat.slow_calls:,} calls over {SLOW_CALL_NS / 1000:,.0f} us",
    ]


def cold_lines(r: ProfileResult) -> list[str]:
    """The first-batch rows, each beside the warm median."""
    lines = []
    for c in r.cold:
        book = f"session_orders={c.session_orders:,}" if c.session_orders else "default book"
        first = statistics.median(c.first_wall)
        lines += [
            f"  first batch, fresh process {fmt_rate(first):>16} median, min "
            f"{fmt_rate(min(c.first_wall))}, CPU {fmt_rate(statistics.median(c.first_cpu))}; "
            f"{first / r.batch_ops:.2f}x the warm median",
            f"     (batch thread's CPU {fmt_rate(statistics.median(c.first_thread_cpu))}, "
            f"{statistics.median(c.first_faults):,.0f} page faults; {book}; {c.ops:,} commands; "
            f"{len(c.first_wall)} fresh processes;",
            f"     that process's second batch: {fmt_rate(statistics.median(c.second_wall))})",
        ]
    return lines


def result_lines(r: ProfileResult) -> list[str]:
    """The measured numbers of one profile."""
    lat = r.latency
    if r.nbytes_after is None:
        nbytes = "n/a (book has no nbytes)"
    else:
        nbytes = (
            f"{r.nbytes_prefilled / MIB:,.2f} MiB after the prefill, "
            f"{r.nbytes_after / MIB:,.2f} MiB after the whole-array batch run"
        )
    latency = latency_lines(lat, "default book")
    if r.sized_latency is not None:
        latency += latency_lines(r.sized_latency, "session_orders for the run")
    return [
        f"  batch process()            {fmt_rates(r.batch_rates)}",
        *cold_lines(r),
        f"  batch, {SLICE_SIZE:,}-cmd slices  {fmt_rates(r.slice_rates)}",
        f"  per-order calls            {fmt_rates(r.per_order_rates)}",
        f"     of which the Python loop itself: {r.loop_overhead_ns:.1f} ns/op "
        "(same loop, no-op methods)",
        *latency,
        f"     ({lat.calls:,} calls, {lat.passes} passes over the workload, each on a fresh "
        "book; timed alone with perf_counter_ns around the Python call; median empty "
        f"timer pair {lat.timer_ns:.1f} ns subtracted)",
        f"  reference model process()  {fmt_rate(r.reference_rate):>16} "
        f"{1e9 / r.reference_rate:>9.1f} ns/op   on the first {r.reference_ops:,} commands",
        f"  engine / reference         batch {r.batch_ops / r.reference_rate:,.1f}x   "
        f"per-order {r.per_order_ops / r.reference_rate:,.1f}x",
        f"  events identical (batch vs per-order): {'yes' if r.events_identical else 'NO'};  "
        f"reference agrees on the prefix: {'yes' if r.reference_agrees else 'NO'}",
        f"  peak RSS so far            {r.peak_rss / MIB:,.0f} MiB (process high-water mark, "
        "workload arrays and call tuples included)",
        f"  book nbytes                {nbytes}",
    ]


def profile_lines(r: ProfileResult) -> list[str]:
    return [f"== profile {r.name} =="] + workload_lines(r) + [""] + result_lines(r)


# ------------------------------------------------------------------ memory test


def build_memory_books(book_class, n_books: int, seed: int) -> dict:
    """Build ``n_books`` books of 100 resting orders each and measure what they hold.
    Stops early (and extrapolates) if RSS growth nears half the available memory."""
    rng = np.random.default_rng(seed)
    mids = rng.integers(100_000, 300_001, size=n_books)
    memory_limit = (available_memory_bytes() or 8 * 1024 * MIB) // 2
    books = []
    gc.collect()
    rss_before = current_rss_bytes()
    start = time.perf_counter()
    for symbol, mid in enumerate(mids.tolist()):
        book = book_class(
            mid * 4 // 5, mid * 6 // 5, lot_size=1, symbol=symbol, stp=Stp.CANCEL_NEWEST
        )
        book.process(memory_book_commands(mid, 50, 3, rng))
        books.append(book)
        if symbol % 500 == 499:
            log(f"[memory] {symbol + 1:,}/{n_books:,} books")
            if current_rss_bytes() - rss_before > memory_limit:
                log("[memory] stopping early: RSS growth passed half the available memory")
                break
    elapsed = time.perf_counter() - start
    gc.collect()
    growth = current_rss_bytes() - rss_before
    nbytes = [getattr(b, "nbytes", None) for b in books]
    return {
        "requested": n_books,
        "built": len(books),
        "seconds": elapsed,
        "rss_growth": growth,
        "resting_orders": sum(b.open_orders for b in books),
        "nbytes_sum": None if None in nbytes else sum(nbytes),
        "rss_before": rss_before,
        "rss_after": rss_before + growth,
    }


def measure_memory_in_child(args) -> dict:
    """Run the memory test in a fresh interpreter, so earlier allocations don't blur it."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-only",
        "--memory-books",
        str(args.memory_books),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_lines(m: dict) -> list[str]:
    built = max(m["built"], 1)
    lines = ["== memory: books with 100 resting orders, +-20% band, mid 100,000..300,000 ticks =="]
    if m["built"] < m["requested"]:
        lines.append(
            f"  STOPPED EARLY after {m['built']:,} of {m['requested']:,} books "
            "(RSS growth passed half the available memory)"
        )
    lines += [
        f"  books built                {m['built']:,} ({m['resting_orders']:,} resting orders) "
        f"in {m['seconds']:.2f} s ({m['seconds'] / built * 1e6:,.1f} us per book)",
        f"  RSS growth                 {m['rss_growth'] / MIB:,.1f} MiB total, "
        f"{m['rss_growth'] / built / 1024:,.1f} KiB per book (Python objects included)",
    ]
    if m["nbytes_sum"] is None:
        lines.append("  sum of book.nbytes         n/a (book has no nbytes)")
    else:
        lines.append(
            f"  sum of book.nbytes         {m['nbytes_sum'] / MIB:,.1f} MiB, "
            f"{m['nbytes_sum'] / built / 1024:,.1f} KiB per book"
        )
    lines.append(
        f"  child process RSS          {m['rss_before'] / MIB:,.0f} MiB before, "
        f"{m['rss_after'] / MIB:,.0f} MiB after"
    )
    return lines


# ----------------------------------------------------------------------- targets


def verdict(measured: float, target: float, at_least: bool) -> str:
    ratio = measured / target
    met = ratio >= 1 if at_least else ratio <= 1
    return f"{'met' if met else 'MISSED'} ({ratio:.2f}x {'target' if at_least else 'limit'})"


def target_lines(results: list[ProfileResult], memory: dict | None) -> list[str]:
    rows = []
    for r in results:
        rows += [
            (
                f"batch >= 10 M ops/s [{r.name}]",
                fmt_rate(r.batch_ops),
                verdict(r.batch_ops, TARGET_BATCH_OPS, True),
            ),
            (
                f"per-order >= 3 M ops/s [{r.name}]",
                fmt_rate(r.per_order_ops),
                verdict(r.per_order_ops, TARGET_PER_ORDER_OPS, True),
            ),
            (
                f"per-order p99 <= 1 us [{r.name}]",
                f"{r.latency.p99:,.0f} ns",
                verdict(r.latency.p99, TARGET_P99_NS, False),
            ),
        ]
        for c in r.cold:
            first = statistics.median(c.first_wall)
            book = f"session_orders={c.session_orders:,}" if c.session_orders else "default book"
            rows.append(
                (
                    f"first batch (fresh process) >= 7 M ops/s [{r.name}, {book}]",
                    fmt_rate(first),
                    verdict(first, TARGET_COLD_OPS, True),
                )
            )
    if memory is not None:
        per_10k = memory["rss_growth"] / max(memory["built"], 1) * 10_000
        scaled = "" if memory["built"] == 10_000 else " (scaled to 10k books)"
        rows.append(
            (
                "10k books well under 1 GiB (RSS growth)",
                f"{per_10k / MIB:,.0f} MiB{scaled}",
                verdict(per_10k, TARGET_MEMORY_BYTES_10K, False),
            )
        )
    width = max(len(r[0]) for r in rows) + 2
    measured_width = max(len(r[1]) for r in rows)
    lines = ["== targets ==", f"  {'target':<{width}}{'measured':>{measured_width}}   status"]
    lines += [f"  {t:<{width}}{m:>{measured_width}}   {s}" for t, m, s in rows]
    lines.append(
        f"  context: exchange-core publishes ~{EXCHANGE_CORE_OPS / 1e6:.0f} M ops/s "
        "for its Java single-book core (Xeon X5690, its own workload); "
        "not measured here."
    )
    return lines


# -------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, help=f"timed commands per profile ({DEFAULTS['ops']:,})")
    parser.add_argument("--runs", type=int, help=f"timed runs per measurement ({DEFAULTS['runs']})")
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    parser.add_argument(
        "--memory-books",
        type=int,
        help=f"books in the memory test, 0 to skip ({DEFAULTS['memory_books']:,})",
    )
    parser.add_argument(
        "--reference-ops",
        type=int,
        help=f"commands the reference model runs ({DEFAULTS['reference_ops']:,})",
    )
    parser.add_argument(
        "--cold-runs",
        type=int,
        help="fresh processes of the first-batch row, 0 to skip "
        f"({DEFAULTS['cold_runs']}; each runs the row's two books)",
    )
    parser.add_argument(
        "--cold-ops",
        type=int,
        help=f"commands of the first-batch row's batch ({DEFAULTS['cold_ops']:,})",
    )
    parser.add_argument(
        "--latency-orders",
        type=int,
        help=f"per-order calls timed one by one ({DEFAULTS['latency_orders']:,})",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="~30 s smoke run")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold-child", metavar="FOLDER", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve_sizes(args, impl: Implementation) -> list[str]:
    """Fill unset sizes from --quick or the defaults; cap them for the slow model.
    Returns notes to print."""
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if impl.is_engine:
        return []
    for key, cap in MODEL_ONLY_CAPS.items():
        setattr(args, key, min(getattr(args, key), cap))
    return [
        "WARNING: the compiled engine is not importable; every 'engine' number below is "
        "the reference model, with sizes capped to "
        + ", ".join(f"{k}={v:,}" for k, v in MODEL_ONLY_CAPS.items())
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    impl = load_implementation()
    if args.cold_child:  # before anything else allocates in this process
        print(json.dumps(cold_child(args.cold_child, impl.book_class)))
        return
    notes = resolve_sizes(args, impl)
    if args.memory_only:
        print(json.dumps(build_memory_books(impl.book_class, args.memory_books, args.seed)))
        return
    settings = {
        "ops": args.ops,
        "runs": args.runs,
        "profile": args.profile,
        "reference_ops": args.reference_ops,
        "memory_books": args.memory_books,
        "cold_runs": args.cold_runs,
        "cold_ops": args.cold_ops,
        "latency_orders": args.latency_orders,
        "seed": args.seed,
    }
    header = header_lines(impl, settings) + notes
    log("\n".join(header))
    memory = None
    if args.memory_books > 0:  # first, while this process is still small
        log(f"[memory] building {args.memory_books:,} books in a child process")
        memory = measure_memory_in_child(args)
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    results = [measure_profile(name, impl, args) for name in names]
    report = header + [""]
    for r in results:
        report += profile_lines(r) + [""]
    if memory is not None:
        report += memory_lines(memory) + [""]
    report += target_lines(results, memory)
    print("\n".join(report))


if __name__ == "__main__":
    main()
