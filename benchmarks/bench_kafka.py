"""Kafka engine benchmark: producer -> ``orders`` -> engine daemon -> ``events`` -> reader.

Run (from the repository root, with brokercore installed and the development Kafka up:
``scripts/kafka/kafka.sh start``):

    python benchmarks/bench_kafka.py                # default, about 1 minute
    python benchmarks/bench_kafka.py --quick        # smoke run, about 10 s
    python benchmarks/bench_kafka.py --linger-ms 0,5 --no-transactions "" --rate 30000 --runs 3

Each run starts a fresh engine daemon (``brokercore engine --shard 0 --shards 1``, a
subprocess, with its own topic prefix so runs never see each other's data, on a temporary
instruments file of 4 symbols whose id maps are sized for the run) and waits until it
says it is active. The order flow (brokercore.runtime.loadgen: ~45% limit, ~10% market, ~45%
cancel) is generated and msgpack-encoded in the producer process before the clock
starts; producing only writes each command's ``ts`` (time.time_ns()) into its 8 bytes.
A last command, a cancel of an unknown order id, is the sentinel: its REJECTED event is
the last one. Processes (nothing pinned unless --matcher-core; they share the machine
with the broker JVM, which the header says):

* producer: confluent_kafka Producer (enable.idempotence, linger.ms --producer-linger-ms),
  one command per Kafka message, the only wire format (each input offset then lies
  between two whole commands, which the exactly-once offset commits rely on);
* daemon: consumer thread (read_committed, decode, input ring), matcher thread,
  publisher thread (encode events; one Kafka transaction per gathered batch of marks,
  with the input offset), librdkafka's threads;
* reader: a read_committed Consumer on ``events`` partition 0 from the beginning; it
  decodes every EventBatch, checks that shard_seq has no gap and times every event.

Per daemon setting (publisher --linger-ms, exactly-once or --no-transactions):

* throughput: everything produced as fast as possible. orders/s = commands whose events
  were committed and read / (first produce -> sentinel event read); "sustained" = the
  rate from 10% to 90% of the commands committed. The events read are compared with a
  direct engine run of the same flow (OrderBook.process per symbol): a lost or
  duplicated event would show;
* latency: paced at --rate commands/s (below saturation); p50/p99/p99.9/max in ms of
  "command produced (its ts) -> its event read by the read_committed reader", per event
  (the reader polls, so it takes each message as soon as it arrives).

While a run goes, the CPU time of each process and of each daemon thread is read from
/proc (the daemon runs under a shim that names its Python threads for the OS and dumps
their stacks on SIGUSR1; the daemon code is unchanged). A run whose events stop for
--stall-timeout seconds is reported as STALLED with the daemon's stacks, and its numbers
(marked *) cover what was read before the stall. --no-transactions is NOT exactly-once;
it shows what exactly-once costs. The script prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin here

import msgspec
import numpy as np

from brokercore.config import KafkaSettings
from brokercore.engine.instruments import Instrument
from brokercore.engine.records import Op
from brokercore.kafka.messages import (
    CancelOrder,
    EventBatch,
    NewOrder,
    encode,
)
from brokercore.kafka.topics import ensure_topics, partition_of
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from machine import cpu_model

TARGET_ORDERS_PER_S = 100_000
TARGET_P99_MS = 50.0
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ts placeholder: encoded as msgpack uint64 (0xcf + 8 bytes), the last field of a command;
# the producer writes time.time_ns() there at produce time, the rest is encoded beforehand.
_TS_PLACEHOLDER = 0x7EDC_BA98_7654_3210
_TS_BYTES = _TS_PLACEHOLDER.to_bytes(8, "big")

# Runs `brokercore.cli engine` unchanged, after giving each Python thread its name as
# the OS thread name (prctl PR_SET_NAME), so that /proc shows which thread burns CPU,
# and letting SIGUSR1 dump every thread's Python stack to stderr (asked for on a stall).
_DAEMON_SHIM = r"""
import ctypes, faulthandler, signal, sys, threading
faulthandler.register(signal.SIGUSR1, all_threads=True)     # stacks on demand (a stall)
_prctl = ctypes.CDLL(None).prctl
def _name(name):
    _prctl(15, name.encode()[:15], 0, 0, 0)
_run = threading.Thread.run
def _named_run(self):
    _name(self.name)
    _run(self)
threading.Thread.run = _named_run
_name("engine-main")
from brokercore.cli import main
sys.exit(main(sys.argv[1:]))
"""
_THREAD_LABELS = (
    ("brokercore-matc", "matcher"),
    ("engine-consumer", "consumer"),
    ("engine-publishe", "publisher"),
    ("engine-main", "main"),
    ("rdk:", "librdkafka"),
)
_SUMMARY = re.compile(r"(\w+): ([\d,]+) orders in, ([\d,]+) events out, ([\d,]+) transactions")


def log(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------- the order flow


def _flow(orders: int, seed: int) -> np.ndarray:
    return np.concatenate(list(order_flow(range(1, len(SYMBOLS) + 1), orders, seed)))


def _commands(flow: np.ndarray) -> list:
    """Wire commands of the flow's records, with the ts placeholder."""
    names = dict(enumerate(SYMBOLS, 1))
    out = []
    append = out.append
    for symbol, op, side, tif, _stp, _flags, _ts, order_id, account, price, qty in flow.tolist():
        if op == Op.CANCEL:
            append(CancelOrder(order_id, account, names[symbol], ts=_TS_PLACEHOLDER))
        else:
            append(
                NewOrder(
                    order_id,
                    account,
                    names[symbol],
                    side,
                    qty,
                    price=price,
                    market=op == Op.MARKET,
                    tif=tif,
                    ts=_TS_PLACEHOLDER,
                )
            )
    return out


def _prefixes(commands: list) -> list[bytes]:
    """Each command's encoding less its 8 ts bytes: a message is prefix + ts."""
    prefixes = []
    for command in commands:
        payload = encode(command)
        assert payload.endswith(_TS_BYTES)  # ts is the last field
        prefixes.append(payload[:-8])
    return prefixes


def _expected_events(flow: np.ndarray, instruments: list[Instrument]) -> int:
    """Events a direct engine run of the flow yields (books are independent)."""
    total = 0
    for instrument in instruments:
        book = instrument.new_book()
        total += len(book.process(flow[flow["symbol"] == instrument.symbol_id]))
    return total + 1  # + the sentinel's REJECTED


def _instruments(orders: int) -> list[Instrument]:
    per_book = orders // len(SYMBOLS) + orders // 20 + 1_000  # id maps sized for the run
    return [
        Instrument(name, n, MID - HALF_BAND, MID + HALF_BAND, session_orders=per_book)
        for n, name in enumerate(SYMBOLS, 1)
    ]


def _write_instruments(path: str, instruments: list[Instrument]) -> None:
    with open(path, "w") as f:
        f.writelines(
            f'[[instrument]]\nsymbol = "{i.symbol}"\nid = {i.symbol_id}\nlow = {i.low}\n'
            f"high = {i.high}\nsession_orders = {i.session_orders}\n\n"
            for i in instruments
        )


# ----------------------------------------------------------------------- producer process


def _producer_main(
    conn,
    bootstrap: str,
    topic: str,
    orders: int,
    seed: int,
    rate: float | None,
    linger_ms: float,
    produced,
) -> None:
    """Pre-encode, say ready, wait for go, produce everything (paced at ``rate``
    commands/s if given), then the sentinel; report times (time.time_ns)."""
    from confluent_kafka import Producer

    t = time.perf_counter()
    flow = _flow(orders, seed)
    prefixes = _prefixes(_commands(flow))
    sentinel = encode(CancelOrder(orders + 1, 1, SYMBOLS[0], ts=_TS_PLACEHOLDER))[:-8]
    expected = _expected_events(flow, _instruments(orders))
    del flow
    prepare_s = time.perf_counter() - t
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1 << 21,
        }
    )
    producer.list_topics(topic, timeout=30)  # connected, metadata known
    conn.send(
        ("ready", {"expected_events": expected, "messages": len(prefixes), "prepare_s": prepare_s})
    )
    if conn.recv() != "go":
        return
    produce, poll, now_ns = producer.produce, producer.poll, time.time_ns
    gap_ns = 1e9 / rate if rate else 0.0
    max_behind_ns = 0
    cpu0 = time.process_time()
    first = now_ns()
    start = time.perf_counter_ns()
    for i, prefix in enumerate(prefixes):
        if gap_ns:
            due = start + int(i * gap_ns)
            ahead = due - time.perf_counter_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
            else:
                max_behind_ns = max(max_behind_ns, -ahead)
        value = prefix + now_ns().to_bytes(8, "big")
        while True:
            try:
                produce(topic, value, partition=0)
                break
            except BufferError:  # local queue full: let it drain
                poll(0.001)
        if not i & 255:
            poll(0)
            produced.value = i
    produce(topic, sentinel + now_ns().to_bytes(8, "big"), partition=0)
    last = now_ns()
    produced.value = orders
    remaining = producer.flush(60)
    flushed = now_ns()
    conn.send(
        (
            "done",
            {
                "first_ns": first,
                "last_ns": last,
                "flushed_ns": flushed,
                "unflushed": remaining,
                "max_behind_ms": max_behind_ns / 1e6,
                "cpu_s": time.process_time() - cpu0,
            },
        )
    )


# ----------------------------------------------------------------------- reader process


def _reader_main(
    conn,
    bootstrap: str,
    topic: str,
    group: str,
    sentinel_id: int,
    stall_s: float,
    events_read,
    committed,
    stop,
) -> None:
    """Read ``events`` (read_committed) until the sentinel's event; report counts,
    gaps, per-event latencies (percentiles) and the committed-commands timeline."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaException,
        TopicPartition,
    )

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,  # never joined nor committed
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    partition = TopicPartition(topic, 0, OFFSET_BEGINNING)
    consumer.assign([partition])
    consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)  # connected
    conn.send(("ready", None))
    decode = msgspec.msgpack.Decoder(EventBatch).decode
    now_ns = time.time_ns
    latencies, timeline_t, timeline_done = [], [], []
    events = messages = gaps = done = 0
    next_seq, end_ns, failure = 1, None, None
    last_progress = time.monotonic()
    cpu0 = time.process_time()
    try:
        while end_ns is None and not stop.value:
            # consume(n, timeout) waits for n messages or the whole timeout: take what
            # is here, else block in poll(), which returns as soon as one arrives.
            batch = consumer.consume(1_000, timeout=0)
            if not batch:
                message = consumer.poll(0.1)
                batch = [message] if message is not None else []
            if not batch:
                if time.monotonic() - last_progress > stall_s:
                    failure = f"no event for {stall_s:.0f} s"
                    break
                continue
            now = now_ns()
            last_progress = time.monotonic()
            for message in batch:
                if message.error():
                    raise KafkaException(message.error())
                evs = decode(message.value()).events
                messages += 1
                if not evs:
                    continue
                if evs[0].shard_seq != next_seq:
                    gaps += 1
                next_seq = evs[-1].shard_seq + 1
                events += len(evs)
                latencies.append(now - np.fromiter((e.ts for e in evs), np.int64, len(evs)))
                done = max(done, max((e.order_id for e in evs if e.op != Op.CANCEL), default=0))
                last = evs[-1]
                if last.order_id == sentinel_id and last.op == Op.CANCEL:
                    end_ns = now
            timeline_t.append(now)
            timeline_done.append(done if end_ns is None else sentinel_id)
            events_read.value, committed.value = events, min(done, sentinel_id - 1)
    except (KafkaException, msgspec.DecodeError) as e:  # reported: the parent waits
        failure = repr(e)
    finally:
        consumer.close()
    lat = np.concatenate(latencies) if latencies else np.zeros(0, np.int64)
    pct = (
        (
            {p: float(np.percentile(lat, p)) / 1e6 for p in (50, 99, 99.9)}
            | {"max": float(lat.max()) / 1e6}
        )
        if len(lat)
        else {}
    )
    conn.send(
        (
            "done",
            {
                "end_ns": end_ns,
                "events": events,
                "messages": messages,
                "gaps": gaps,
                "latency_ms": pct,
                "failure": failure,
                "timeline": (np.array(timeline_t), np.array(timeline_done)),
                "cpu_s": time.process_time() - cpu0,
            },
        )
    )


# ----------------------------------------------------------------------- CPU sampling


def _ticks(path: str) -> int:
    with open(path) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def _thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[int(tid)] = (name, _ticks(f"/proc/{pid}/task/{tid}/stat"))
        except OSError:
            pass  # the thread just ended
    return out


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class CpuSample:
    t: float
    daemon: dict
    processes: dict
    machine: tuple

    @classmethod
    def take(cls, daemon_pid: int, pids: dict[str, int]) -> CpuSample:
        processes = {}
        for name, pid in pids.items():
            try:
                processes[name] = _ticks(f"/proc/{pid}/stat")
            except OSError:
                pass
        return cls(time.monotonic(), _thread_ticks(daemon_pid), processes, _machine_ticks())

    def usage(self, before: CpuSample) -> dict[str, float]:
        """% of one core over the interval: each process, the daemon's thread kinds,
        and the whole machine (% of all its cores)."""
        hz = os.sysconf("SC_CLK_TCK")
        seconds = self.t - before.t
        out: dict[str, float] = defaultdict(float)
        for tid, (name, ticks) in self.daemon.items():
            label = next(
                (lab for prefix, lab in _THREAD_LABELS if name.startswith(prefix)), "other"
            )
            used = ticks - before.daemon.get(tid, (name, 0))[1]
            out["daemon." + label] += used / hz / seconds * 100
            out["daemon"] += used / hz / seconds * 100
        for name, ticks in self.processes.items():
            if name in before.processes:
                out[name] = (ticks - before.processes[name]) / hz / seconds * 100
        busy, total = (a - b for a, b in zip(self.machine, before.machine, strict=True))
        out["machine"] = busy / total * 100 if total else 0.0
        return dict(out)


# ----------------------------------------------------------------------- one run


@dataclass
class Setting:
    transactions: bool
    linger_ms: float

    @property
    def label(self) -> str:
        return f"{'exactly-once' if self.transactions else 'no-txn'} linger {self.linger_ms:g} ms"


@dataclass
class RunResult:
    ok: bool = False  # every command's events committed and read
    stalled: bool = False  # events stopped coming: numbers up to the stall
    failure: str = ""
    elapsed_s: float = 0.0
    done: int = 0  # commands whose events were read
    orders_per_s: float = 0.0
    sustained_per_s: float = 0.0
    producer_per_s: float = 0.0
    producer_behind_ms: float = 0.0
    events: int = 0
    expected_events: int = 0
    gaps: int = 0
    transactions: int = 0
    latency_ms: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.ok or (self.stalled and self.done > 0)


class Daemon:
    """The engine daemon subprocess and what its stderr says."""

    def __init__(self, args, prefix: str, instruments_path: str, setting: Setting):
        self.command = [
            sys.executable,
            "-c",
            _DAEMON_SHIM,
            "engine",
            "--shard",
            "0",
            "--shards",
            "1",
            "--topic-prefix",
            prefix,
            "--bootstrap",
            args.bootstrap,
            "--instruments",
            instruments_path,
            "--linger-ms",
            f"{setting.linger_ms:g}",
        ]
        if not setting.transactions:
            self.command.append("--no-transactions")
        if args.matcher_core is not None:
            self.command += ["--core", str(args.matcher_core)]
        self.lines: deque[str] = deque(maxlen=400)
        self.count = 0  # lines read so far
        self.stopped = False  # it logged its final summary
        self.active = threading.Event()
        self.stats = (0, 0, 0)  # orders in, events out, transactions
        self.process = subprocess.Popen(
            self.command, cwd=REPO, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            self.count += 1
            if "active from input offset" in line:
                self.active.set()
            self.stopped = self.stopped or ": stopped: " in line
            found = _SUMMARY.search(line)
            if found:
                self.stats = tuple(int(g.replace(",", "")) for g in found.groups()[1:])

    def stacks(self) -> list[str]:
        """Every thread's Python stack (the shim's faulthandler, on SIGUSR1)."""
        if self.process.poll() is not None:
            return []
        before = self.count
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return list(self.lines)[-(self.count - before) :] if self.count > before else []

    def stop(self, timeout: float = 60) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        return self.process.returncode

    def suspicious(self) -> list[str]:
        words = ("failed", "Traceback", "Error", "aborted", "lost", "retrying")
        return [line for line in self.lines if any(w in line for w in words)]


def _sustained(timeline, orders: int) -> float:
    """Commands/s over the middle of the run: from 10% to 90% of the commands committed
    (start-up and the drain at the end left out); 0 if the run is too short to tell."""
    t, done = timeline
    lo, hi = np.searchsorted(done, 0.1 * orders), np.searchsorted(done, 0.9 * orders)
    if hi >= len(t) or hi <= lo or t[hi] - t[lo] < 1e9:
        return 0.0
    return float(done[hi] - done[lo]) / ((t[hi] - t[lo]) / 1e9)


def _delete(bootstrap: str, settings: KafkaSettings, groups: list[str]) -> None:
    """Best effort: drop the run's topics and consumer groups from the broker."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [
        settings.orders_topic,
        settings.events_topic,
        settings.snapshots_topic,
        settings.dead_letter_topic,
        settings.leases_topic,
    ]
    for future in list(admin.delete_topics(topics, request_timeout=30).values()) + list(
        admin.delete_consumer_groups(groups, request_timeout=30).values()
    ):
        try:
            future.result(30)
        except KafkaException as e:
            if e.args[0].code() not in (
                KafkaError.GROUP_ID_NOT_FOUND,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
            ):
                log(f"   clean-up: {e}")


def one_run(args, setting: Setting, orders: int, rate: float | None) -> RunResult:
    ctx = mp.get_context("spawn")  # no fork with Kafka clients around
    result = RunResult()
    prefix = f"bench-{uuid.uuid4().hex[:12]}-"
    settings = KafkaSettings(args.bootstrap, prefix, 1)
    assert partition_of(SYMBOLS[0], settings.shards) == 0
    for _ in range(10):  # right after a deletion the new topics can lag in
        try:  # the broker's metadata ("not available: missing")
            ensure_topics(settings)
            break
        except RuntimeError as e:
            log(f"   ensure_topics: {e}; retrying")
            time.sleep(0.5)
    tmp = tempfile.mkdtemp(prefix="bench-kafka-")
    instruments_path = os.path.join(tmp, "instruments.toml")
    _write_instruments(instruments_path, _instruments(orders))
    produced, events_read, committed = (ctx.Value("q", 0, lock=False) for _ in range(3))
    stop = ctx.Value("b", 0, lock=False)
    producer_conn, producer_end = ctx.Pipe()
    reader_conn, reader_end = ctx.Pipe()
    reader_group = prefix + "bench-reader"
    producer = ctx.Process(
        target=_producer_main,
        name="bench-producer",
        args=(
            producer_end,
            args.bootstrap,
            settings.orders_topic,
            orders,
            args.seed,
            rate,
            args.producer_linger_ms,
            produced,
        ),
    )
    reader = ctx.Process(
        target=_reader_main,
        name="bench-reader",
        args=(
            reader_end,
            args.bootstrap,
            settings.events_topic,
            reader_group,
            orders + 1,
            args.stall_timeout,
            events_read,
            committed,
            stop,
        ),
    )
    producer.start()
    reader.start()
    daemon = Daemon(args, prefix, instruments_path, setting)
    pace = f"paced at {rate:,.0f} orders/s" if rate else "as fast as possible"
    log(f"-- {setting.label}, {orders:,} orders, {pace}  (prefix {prefix})")
    read = sent = None
    try:
        t0 = time.monotonic()
        ready = producer_conn.recv()[1]  # pre-encoding happens meanwhile
        reader_conn.recv()
        while not daemon.active.wait(0.2):
            if daemon.process.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError("the daemon did not become active")
        result.expected_events = ready["expected_events"]
        log(
            f"   ready after {time.monotonic() - t0:.1f} s (pre-encoding "
            f"{ready['messages']:,} messages took {ready['prepare_s']:.1f} s); go"
        )
        pids = {
            "broker": args.broker_pid,
            "producer": producer.pid,
            "reader": reader.pid,
            "bench": os.getpid(),
        }
        pids = {k: v for k, v in pids.items() if v}
        cpu_before = CpuSample.take(daemon.process.pid, pids)
        cpu_last = None  # at the last second with progress
        producer_conn.send("go")
        start = time.monotonic()
        next_report, last_done = start + 1, 0
        while not reader_conn.poll(0.05):
            now = time.monotonic()
            if now >= next_report:
                done = committed.value
                log(
                    f"   {now - start:5.1f} s  sent {produced.value:>10,}  committed "
                    f"{done:>10,} orders ({(done - last_done) / 1e3:6.1f} k/s)  "
                    f"{events_read.value:>10,} events  daemon: {daemon.stats[0]:,} in, "
                    f"{daemon.stats[1]:,} out, {daemon.stats[2]:,} txns"
                )
                if done > last_done or cpu_last is None:
                    cpu_last = CpuSample.take(daemon.process.pid, pids)
                last_done, next_report = done, next_report + 1
            if daemon.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.process.returncode}")
        cpu_end = CpuSample.take(daemon.process.pid, pids)
        read = reader_conn.recv()[1]
        sent = producer_conn.recv()[1] if producer_conn.poll(30) else None
        if read["end_ns"] is None:
            log(f"   STALLED ({read['failure']}); last daemon lines and its thread stacks:")
            stacks = [
                line
                for line in daemon.stacks()  # the daemon's own frames
                if line.startswith(("Thread", "Current thread")) or "/brokercore/" in line
            ]
            for line in list(daemon.lines)[-2:] + stacks:
                log(f"   | {line}")
        transactions = daemon.stats[2]  # as of its last per-second line
    except (RuntimeError, EOFError) as e:
        result.failure = str(e)
    finally:
        stop.value = 1
        code = daemon.stop()
        if read is not None and read["end_ns"] is not None and daemon.stopped:
            transactions = daemon.stats[2] - 1  # its final line, less the stop's own
        for process in (producer, reader):
            process.join(10)
            if process.is_alive():
                process.kill()
        if not args.keep_topics:
            _delete(
                args.bootstrap,
                settings,
                [settings.engine_group(0), settings.lease_group(0), reader_group],
            )
        os.unlink(instruments_path)
        os.rmdir(tmp)
    notes = daemon.suspicious()
    if code not in (0, None) or notes:
        log(f"   daemon exit code {code}" + ("; stderr lines of note:" if notes else ""))
        for line in notes[-10:]:
            log(f"   | {line}")
    if read is None or sent is None:
        result.failure = result.failure or "no result from the producer or the reader"
        log(f"   FAILED: {result.failure}")
        return result
    t, done = read["timeline"]
    result.ok = read["end_ns"] is not None
    result.stalled = not result.ok
    result.failure = read["failure"] or ""
    end_ns = read["end_ns"] if result.ok else (int(t[-1]) if len(t) else sent["first_ns"])
    result.done = orders if result.ok else (int(done[-1]) if len(done) else 0)
    result.elapsed_s = (end_ns - sent["first_ns"]) / 1e9
    result.orders_per_s = result.done / result.elapsed_s if result.elapsed_s > 0 else 0.0
    result.sustained_per_s = _sustained((t, done), orders)
    send_s = (sent["last_ns"] - sent["first_ns"]) / 1e9
    result.producer_per_s = orders / send_s if send_s > 0 else 0.0
    result.producer_behind_ms = sent["max_behind_ms"]
    result.events, result.gaps = read["events"], read["gaps"]
    result.latency_ms = read["latency_ms"]
    result.transactions = transactions
    result.cpu = (cpu_end if result.ok else cpu_last or cpu_end).usage(cpu_before)
    lat = result.latency_ms or {p: float("nan") for p in (50, 99, 99.9, "max")}
    stall = " UP TO THE STALL" if result.stalled else ""
    sustained = (
        f"{result.sustained_per_s / 1e3:.1f} k/s" if result.sustained_per_s else "- (run too short)"
    )
    log(
        f"   {result.done:,} orders committed in {result.elapsed_s:.2f} s = "
        f"{result.orders_per_s / 1e3:.1f} k orders/s{stall} (sustained {sustained}); "
        f"producer sent {orders:,} in {send_s:.2f} s ({result.producer_per_s / 1e3:.1f} k/s"
        + (f", at most {result.producer_behind_ms:.1f} ms behind schedule" if rate else "")
        + ")"
    )
    per_txn = result.elapsed_s / transactions * 1e3 if transactions else float("nan")
    log(
        f"   events {result.events:,} read, {result.expected_events:,} expected from a "
        f"direct engine run, {result.gaps} shard_seq gaps; {transactions:,} daemon "
        f"{'transactions' if setting.transactions else 'flush+commit rounds'} "
        f"({result.events / max(transactions, 1):,.0f} events, {per_txn:.0f} ms each)"
    )
    log(
        f"   latency ms p50 {lat[50]:.1f}  p99 {lat[99]:.1f}  p99.9 {lat[99.9]:.1f}  max "
        f"{lat['max']:.1f}"
        + ("" if rate else "  (saturated: queueing included)")
        + ("  (events read before the stall only)" if result.stalled else "")
    )
    log("   cpu % of one core: " + _cpu_text(result.cpu))
    return result


def _cpu_text(cpu: dict) -> str:
    threads = ", ".join(
        f"{k.split('.')[1]} {cpu[k]:.0f}"
        for k in sorted(cpu)
        if k.startswith("daemon.") and cpu[k] >= 0.5
    )
    broker = f"{cpu['broker']:.0f}" if "broker" in cpu else "?"
    return (
        f"daemon {cpu.get('daemon', 0):.0f} ({threads}); broker {broker}; "
        f"producer {cpu.get('producer', 0):.0f}; "
        f"reader {cpu.get('reader', 0):.0f}; machine busy {cpu.get('machine', 0):.0f}% "
        f"of {os.cpu_count()} CPUs"
    )


# ----------------------------------------------------------------------- main


def _broker_pid() -> int | None:
    state = os.environ.get("BROKERCORE_KAFKA_STATE", os.path.join(REPO, ".kafka"))
    try:
        with open(os.path.join(state, "kafka.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _cell(runs: list[RunResult], attr: str, width: int, scale: float = 1e3) -> str:
    """Median over the runs measured, in k; '*' when one of them stalled (then its
    numbers are up to the stall), '-' when there is no number."""
    measured = [r for r in runs if r.measured]
    if not runs:
        return "-".rjust(width)
    if not measured:
        return "failed".rjust(width)
    value = statistics.median(getattr(r, attr) for r in measured)
    if not value:
        return "-".rjust(width)
    star = "*" if any(r.stalled for r in measured) else " "
    return f"{value / scale:{width - 1}.1f}{star}"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=KafkaSettings.from_env().bootstrap)
    parser.add_argument(
        "--linger-ms",
        default="0,5,20",
        help="publisher lingers of the exactly-once runs, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--no-transactions",
        dest="no_txn_linger_ms",
        default="0",
        metavar="LINGER_MS",
        help="publisher lingers of runs WITHOUT transactions (not "
        "exactly-once: their price), comma-separated; '' for none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=600_000,
        help="commands of a throughput run (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=50_000,
        help="commands/s offered in the latency runs (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-orders",
        type=int,
        default=400_000,
        help="commands of a latency run (default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="throughput runs per setting; the table shows medians (default: %(default)s)",
    )
    parser.add_argument(
        "--producer-linger-ms",
        type=float,
        default=2.0,
        help="linger.ms of the benchmark's producer (default: %(default)s)",
    )
    parser.add_argument(
        "--matcher-core",
        type=int,
        help="pin the daemon's matcher thread to this core (default: none)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="seconds without an event before a run counts as failed",
    )
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="leave each run's topics and groups on the broker",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (~10 s): exactly-once linger 5 only, small runs; "
        "flags given explicitly still apply",
    )
    if parser.parse_known_args()[0].quick:  # new defaults; explicit flags win
        parser.set_defaults(
            linger_ms="5", no_txn_linger_ms="", orders=300_000, latency_orders=250_000, runs=1
        )
    args = parser.parse_args()
    args.broker_pid = _broker_pid()
    settings = [Setting(True, v) for v in _floats(args.linger_ms)] + [
        Setting(False, v) for v in _floats(args.no_txn_linger_ms)
    ]

    cores = os.cpu_count()
    log("== brokercore engine through Kafka (exactly-once) ==")
    log(
        f"machine : {cpu_model()}, {cores} logical CPUs, load avg "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    log(
        f"kafka   : {args.bootstrap}, single node (broker pid {args.broker_pid or '?'}); "
        f"topics orders/events with 1 partition, fresh prefix per run"
    )
    pinned = "" if args.matcher_core is None else f" but the matcher (core {args.matcher_core})"
    log(
        f"where   : nothing pinned{pinned}: "
        f"broker JVM, daemon (consumer, matcher, publisher threads + librdkafka), "
        f"producer process, reader process and this coordinator share the {cores} CPUs"
    )
    log(
        f"flow    : brokercore.runtime.loadgen, 4 symbols, seed {args.seed}; producer "
        f"enable.idempotence, linger.ms {args.producer_linger_ms:g}; reader read_committed\n"
    )

    rows = []
    for setting in settings:
        thr = [one_run(args, setting, args.orders, None) for _ in range(args.runs)]
        lat = one_run(args, setting, args.latency_orders, args.rate)
        rows.append((setting, thr, lat))
        log("")

    log(
        f"== summary: orders/s = commands whose events were committed and read / (first "
        f"produce -> last event read); median of {args.runs} run{'s' if args.runs > 1 else ''} =="
    )
    log(
        f"{'daemon setting':28} {'throughput':>11} {'sustained':>10} | {'offered':>8} "
        f"{'achieved':>9} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7}"
    )
    log(
        f"{'':28} {'k orders/s':>11} {'k/s':>10} | {'k/s':>8} {'k/s':>9} {'ms':>7} "
        f"{'ms':>7} {'ms':>7} {'ms':>7}"
    )
    for setting, thr, lat in rows:
        log(
            f"{setting.label:28} {_cell(thr, 'orders_per_s', 11)} "
            f"{_cell(thr, 'sustained_per_s', 10)} | {args.rate / 1e3:8.1f} "
            f"{_cell([lat], 'producer_per_s', 9)} "
            + " ".join(
                f"{lat.latency_ms[p]:6.1f}{'*' if lat.stalled else ' '}"
                if lat.latency_ms
                else "failed".rjust(7)
                for p in (50, 99, 99.9, "max")
            )
        )
    log(
        "(throughput: produced as fast as possible; 'sustained' = from 10% to 90% of the "
        f"commands committed; latency: offered at {args.rate:,.0f} orders/s, "
        "produce -> event read, per event)"
    )
    if any(r.stalled for _, thr, lat in rows for r in thr + [lat]):
        log(
            "* the run STALLED (see its lines above): the number covers the events read "
            "before the stall only"
        )

    log("\ncpu % of one core during the throughput runs (up to the last progress):")
    for setting, thr, _ in rows:
        measured = [r for r in thr if r.measured]
        if measured:
            log(f"  {setting.label + ':':27} {_cpu_text(measured[len(measured) // 2].cpu)}")

    best = max(
        (
            statistics.median(r.orders_per_s for r in ok)
            for setting, thr, _ in rows
            if setting.transactions
            for ok in [[r for r in thr if r.ok]]
            if ok
        ),
        default=float("nan"),
    )
    p99s = [
        (lat.latency_ms[99], setting.label)
        for setting, _, lat in rows
        if setting.transactions and lat.ok
    ]
    best_p99 = min(p99s) if p99s else (float("nan"), "-")
    checked = [r for _, thr, lat in rows for r in thr + [lat] if r.ok]
    differ = sum(r.events != r.expected_events or r.gaps > 0 for r in checked)
    log(
        f"\ntarget  : >= {TARGET_ORDERS_PER_S / 1e3:.0f} k orders/s with exactly-once: "
        f"best {best / 1e3:.1f} k ({'met' if best >= TARGET_ORDERS_PER_S else 'missed'})"
    )
    log(
        f"target  : p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:,.0f} orders/s with "
        f"exactly-once: best {best_p99[0]:.1f} ms ({best_p99[1]}) "
        f"{'met' if best_p99[0] <= TARGET_P99_MS else 'missed'}"
    )
    log(
        f"check   : completed runs whose events differ from a direct engine run or have "
        f"shard_seq gaps: {differ} of {len(checked)}"
    )


if __name__ == "__main__":
    main()
