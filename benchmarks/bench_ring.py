"""Throughput of the ring buffer between two Python threads, against queue.SimpleQueue
and collections.deque.

Run (from the repository root, with brokercore installed):

    python benchmarks/bench_ring.py                 # default, under ~1 min
    python benchmarks/bench_ring.py --quick         # a few seconds, smoke run
    python benchmarks/bench_ring.py --records 20000000 --runs 7 --capacity 16384

Options: --records N (records per run at batch 256; batch 16 moves N/2 and batch 1
N/10, since those rates are far lower), --runs R (timed runs per measurement, median
reported), --batches 1,16,256, --capacity C (ring slots), --poll-max M (most records
one ring poll() returns), --quick. The script prints numbers; it asserts nothing.

Setup: one producer thread and one consumer thread, each pinned to its own core with
``os.sched_setaffinity(0, {core})`` called inside the thread (Linux pins the calling
thread); cores are the first two this process may run on. With a single core both
threads share it and BUSY_SPIN is skipped (a spinning consumer would only take time
slices from the producer). Records are 56-byte ``brokercore.COMMAND_DTYPE`` records,
taken from a prebuilt pool of 65,536 (order_id = index in the pool) as prebuilt
slices of ``batch`` records, so slicing is not timed. The clock starts in the
producer once both threads are pinned and waiting at a barrier, and stops in the
consumer when it has received all N records; rate = N / that time.

What each transport does per operation at batch b:

* ring (one row per consumer WaitStrategy): the producer calls ``publish(slice)``
  (b records copied into the ring; it waits when the ring is full: back-pressure);
  the consumer calls ``poll(0, max_records=--poll-max, timeout=None)``, which returns
  everything available up to that limit as a new array (copied out). Reading more
  than b per poll is the ring's batching, part of what is measured.
* SimpleQueue: ``put(slice)`` / ``get()``: one slice of b records per operation, a
  reference to the pool's memory (no copy), unbounded (no back-pressure).
* deque: ``append(slice)`` / ``popleft()``: same unit; when the deque is empty the
  consumer calls ``time.sleep(0)`` (releases the GIL and yields the core), then polls
  again. Unbounded too.

How to read the comparison: the queues hand over references to existing arrays (no
copy; a producer that reuses its buffer would have to copy first, and numpy copies of
this padded structured dtype cost ~1-2 us per call), never make the producer wait, and
under the GIL let it run ahead, so their rates are mostly the cost of put + get in one
thread. The ring copies every record in and out and releases the GIL around each
claim and each wait, so the two threads hand the GIL back and forth.

Cross-check per run (not a test): the consumer counts the records it received and
keeps the last one; both must match what was sent (N, and order_id (N-1) % 65,536).
A mismatch is printed as such.

Target printed: ring >= 20 M records/s at batch 256 (met/missed per wait strategy).
"""

from __future__ import annotations

import os

# Before numpy is imported (hence the imports below it): openblas threads spin on few cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import collections
import platform
import queue
import statistics
import sys
import threading
import time

import numpy as np

from brokercore.engine.records import COMMAND_DTYPE
from brokercore.runtime._ringbuffer import RingBuffer, WaitStrategy
from machine import cpu_model

POOL = 1 << 16  # records in the source pool; a multiple of every batch size used
TARGET_BATCH, TARGET_RATE = 256, 20e6
HANG_GUARD = 600.0  # seconds: a run that takes longer is reported as hung


# --- machine ----------------------------------------------------------------------


def usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})  # 0: the calling thread


# --- one run ------------------------------------------------------------------------


class Run:
    """A producer and a consumer thread handing n records over in slices."""

    def __init__(self, slices, n_batches, cores):
        self.slices, self.n_batches, self.cores = slices, n_batches, cores
        self.n_records = n_batches * len(slices[0])
        self.barrier = threading.Barrier(2)
        self.t0 = self.t1 = 0.0
        self.received = 0
        self.last = None
        self.errors = []

    def _thread(self, core, body):
        def run():
            try:
                pin(core)
                self.barrier.wait()
                body()
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                self.errors.append(error)
                self.abort()

        return threading.Thread(target=run, daemon=True)

    def abort(self):
        """Unblock the other thread (overridden by the transports)."""
        self.barrier.abort()

    def go(self, produce, consume) -> float:
        threads = [self._thread(self.cores[0], produce), self._thread(self.cores[1], consume)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_GUARD)
            if thread.is_alive():
                self.abort()
                thread.join(10)
                raise RuntimeError("a benchmark thread hung")
        if self.errors:
            raise self.errors[0]
        return self.n_records / (self.t1 - self.t0)

    def check(self) -> str:
        expected_last = (self.n_records - 1) % POOL
        last = None if self.last is None else int(self.last["order_id"])
        if self.received == self.n_records and last == expected_last:
            return "ok"
        return (
            f"MISMATCH: received {self.received} of {self.n_records}, "
            f"last order_id {last}, expected {expected_last}"
        )


def run_ring(slices, n_batches, cores, capacity, wait, poll_max):
    r = Run(slices, n_batches, cores)
    ring = RingBuffer(capacity, COMMAND_DTYPE, consumers=(wait,))

    def abort():
        r.barrier.abort()
        ring.close()  # wakes (and stops) a waiting or spinning thread

    r.abort = abort

    def produce():
        publish, batches, mask = ring.publish, slices, len(slices) - 1
        r.t0 = time.perf_counter()
        for i in range(n_batches):
            publish(batches[i & mask])

    def consume():
        poll, n, got, batch = ring.poll, r.n_records, 0, None
        while got < n:
            batch = poll(0, poll_max, None)
            if not len(batch):  # closed (aborted)
                break
            got += len(batch)
        r.t1 = time.perf_counter()
        r.received, r.last = got, None if batch is None or not len(batch) else batch[-1]

    try:
        rate = r.go(produce, consume)
    finally:
        ring.close()
    return rate, r.check()


def run_simple_queue(slices, n_batches, cores):
    r = Run(slices, n_batches, cores)
    q = queue.SimpleQueue()

    def abort():
        r.barrier.abort()
        q.put(None)

    r.abort = abort

    def produce():
        put, batches, mask = q.put, slices, len(slices) - 1
        r.t0 = time.perf_counter()
        for i in range(n_batches):
            put(batches[i & mask])

    def consume():
        get, n, got, batch = q.get, r.n_records, 0, None
        while got < n:
            batch = get()
            if batch is None:
                break
            got += len(batch)
        r.t1 = time.perf_counter()
        r.received, r.last = got, None if batch is None else batch[-1]

    return r.go(produce, consume), r.check()


def run_deque(slices, n_batches, cores):
    r = Run(slices, n_batches, cores)
    dq = collections.deque()
    stop = threading.Event()

    def abort():
        r.barrier.abort()
        stop.set()

    r.abort = abort

    def produce():
        append, batches, mask = dq.append, slices, len(slices) - 1
        r.t0 = time.perf_counter()
        for i in range(n_batches):
            append(batches[i & mask])

    def consume():
        popleft, sleep, n, got, batch = dq.popleft, time.sleep, r.n_records, 0, None
        while got < n:
            if dq:
                batch = popleft()
                got += len(batch)
            elif stop.is_set():
                break
            else:
                sleep(0)
        r.t1 = time.perf_counter()
        r.received, r.last = got, None if batch is None else batch[-1]

    return r.go(produce, consume), r.check()


# --- driver -------------------------------------------------------------------------


def median_rate(fn, runs):
    rates, checks = [], []
    for _ in range(runs):
        rate, check = fn()
        rates.append(rate)
        checks.append(check)
    bad = [c for c in checks if c != "ok"]
    return statistics.median(rates), min(rates), max(rates), (bad[0] if bad else "ok")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records",
        type=int,
        default=5_000_000,
        help="records per run at batch 256 (batch 16: /2, batch 1: /10)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs, median reported")
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--capacity", type=int, default=4096, help="ring slots")
    parser.add_argument(
        "--poll-max", type=int, default=4096, help="max_records of each ring poll()"
    )
    parser.add_argument("--quick", action="store_true", help="~10x fewer records, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.runs = max(1, args.records // 10), 1
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        if b < 1 or POOL % b or b > args.capacity:
            parser.error(f"batch {b}: must divide {POOL} and fit in the ring")

    cores = usable_cores()
    two = len(cores) >= 2
    pinned = (cores[0], cores[1]) if two else (cores[0], cores[0])
    waits = list(WaitStrategy) if two else [WaitStrategy.YIELD, WaitStrategy.BLOCKING]

    print("ring buffer throughput: 1 producer thread -> 1 consumer thread")
    print(
        f"cpu: {cpu_model()}; {os.cpu_count()} logical cpus, {len(cores)} usable (affinity {cores})"
    )
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"python {platform.python_version()} ({'GIL' if gil else 'free-threaded'}), "
        f"numpy {np.__version__}, {platform.system()} {platform.release()}"
    )
    if hasattr(os, "getloadavg"):
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(
        f"record: COMMAND_DTYPE, {COMMAND_DTYPE.itemsize} bytes; ring capacity "
        f"{args.capacity}; ring poll max_records {args.poll_max}; {args.runs} timed "
        f"run(s) per cell, median (min-max)"
    )
    if two:
        print(f"producer pinned to core {pinned[0]}, consumer to core {pinned[1]}")
    else:
        print(f"ONE usable core: both threads on core {pinned[0]}; BUSY_SPIN skipped")
    print()

    pool = np.zeros(POOL, dtype=COMMAND_DTYPE)
    pool["order_id"] = np.arange(POOL)
    pool["op"], pool["side"], pool["tif"] = 1, 1, 1
    pool["price"], pool["qty"] = 10_000, 1

    def transports(b):
        out = [
            (
                f"ring {w.name}",
                lambda w=w: run_ring(slices, n_batches, pinned, args.capacity, w, args.poll_max),
            )
            for w in waits
        ]
        out.append(("SimpleQueue", lambda: run_simple_queue(slices, n_batches, pinned)))
        out.append(("deque", lambda: run_deque(slices, n_batches, pinned)))
        return out

    # Warm-up (untimed): imports, thread machinery, caches.
    slices, n_batches = [pool[i : i + 16] for i in range(0, POOL, 16)], 2_000
    for _, fn in transports(16):
        fn()

    target_lines = []
    started = time.perf_counter()
    for b in batches:
        n = args.records if b >= 256 else args.records // (2 if b >= 16 else 10)
        n_batches = max(1, n // b)
        slices = [pool[i : i + b] for i in range(0, POOL, b)]
        print(f"batch {b}: {n_batches * b:,} records per run ({n_batches:,} operations)")
        print(
            f"  {'transport':<16} {'M rec/s':>9} {'(min-max)':>15} {'ns/rec':>8} "
            f"{'ring/SimpleQueue':>17} {'ring/deque':>11}  check"
        )
        results = [(name, median_rate(fn, args.runs)) for name, fn in transports(b)]
        rate_of = {name: res[0] for name, res in results}
        for name, (med, lo, hi, check) in results:
            ratios = ("", "")
            if name.startswith("ring"):
                ratios = (f"{med / rate_of['SimpleQueue']:.3g}x", f"{med / rate_of['deque']:.3g}x")
            print(
                f"  {name:<16} {med / 1e6:9.2f} {f'({lo / 1e6:.2f}-{hi / 1e6:.2f})':>15} "
                f"{1e9 / med:8.1f} {ratios[0]:>17} {ratios[1]:>11}  {check}"
            )
            if b == TARGET_BATCH and name.startswith("ring"):
                verdict = "met" if med >= TARGET_RATE else "missed"
                target_lines.append(f"  {name:<16} {med / 1e6:6.2f} M/s: {verdict}")
        print()
    print("queues: references handed over, no copy, unbounded (see the docstring)\n")

    print(f"target: ring >= {TARGET_RATE / 1e6:.0f} M records/s at batch {TARGET_BATCH}")
    print(
        "\n".join(target_lines)
        if target_lines
        else f"  not measured (batch {TARGET_BATCH} not among --batches)"
    )
    print(f"\ntimed part took {time.perf_counter() - started:.1f} s")
    if hasattr(os, "getloadavg"):
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
