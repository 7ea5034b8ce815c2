"""Drive a running shard with an order flow and measure it, from one Python thread.

One thread plays both the feeder and the publisher: it submits a batch whenever one
is due (stamping each command's ts with the monotonic clock at publish time) and in
between drains events, so the only threads are this one and the matcher. Latency is
measured per event, from its command's publish to the moment the event is read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from brokercore.engine.records import EventType
from brokercore.runtime.shard import Shard

__all__ = ["RunReport", "drive"]


@dataclass
class RunReport:
    """What a drive measured; times in seconds, latencies in nanoseconds."""

    commands: int = 0
    events: int = 0
    elapsed: float = 0.0
    latencies_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    input_fill_max: int = 0
    output_fill_max: int = 0
    fill_total: int = 0  # sum over samples of input + output fill
    fill_samples: int = 0
    event_counts: dict[str, int] = field(default_factory=dict)

    @property
    def commands_per_second(self) -> float:
        return self.commands / self.elapsed if self.elapsed else 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.elapsed if self.elapsed else 0.0

    def latency_percentiles_us(
        self, points: Sequence[float] = (50, 99, 99.9)
    ) -> dict[float, float]:
        if not len(self.latencies_ns):
            return {p: float("nan") for p in points}
        return {p: float(np.percentile(self.latencies_ns, p)) / 1e3 for p in points}

    def summary_lines(self) -> list[str]:
        pct = self.latency_percentiles_us()
        fill = self.fill_total / self.fill_samples if self.fill_samples else 0.0
        return [
            f"commands        {self.commands:,} in {self.elapsed:.2f} s "
            f"= {self.commands_per_second / 1e6:.2f} M orders/s",
            f"events          {self.events:,} = {self.events_per_second / 1e6:.2f} M events/s",
            "latency         "
            + "  ".join(f"p{p:g} {v:,.1f} us" for p, v in pct.items())
            + f"  max {self.latencies_ns.max() / 1e3 if len(self.latencies_ns) else 0:,.1f} us"
            + "  (command published -> event read)",
            f"ring fill       input max {self.input_fill_max:,}, output max "
            f"{self.output_fill_max:,}, mean total {fill:,.0f} records",
            "event types     " + ", ".join(f"{k} {v:,}" for k, v in self.event_counts.items()),
        ]


def drive(
    shard: Shard,
    flow: Iterable[np.ndarray],
    *,
    batch: int = 256,
    rate: float | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 1.0,
) -> RunReport:
    """Submit the flow to the started shard (at ``rate`` commands/s, or as fast as it
    takes them), read every event, stop the shard and report. A flow generated on the
    fly stalls the driver while it makes each chunk: pass a list to measure latency."""
    report = RunReport()
    latencies, type_counts = [], np.zeros(256, np.int64)
    clock = time.perf_counter_ns
    start = clock()
    next_due: float = start
    next_progress = start + progress_every * 1e9
    gap_ns = batch / rate * 1e9 if rate else 0.0

    def read(events: np.ndarray, now: int) -> None:
        latencies.append(now - events["ts"])
        np.add.at(type_counts, events["type"], 1)
        report.events += len(events)
        _sample_fill(shard, report)

    for chunk in flow:
        for lo in range(0, len(chunk), batch):
            commands = chunk[lo : lo + batch]
            while True:
                now = clock()
                if now >= next_due:
                    commands["ts"] = now
                    if shard.try_submit(commands):
                        report.commands += len(commands)
                        next_due += gap_ns
                        break
                events = shard.poll_events(timeout=0)
                if len(events):
                    read(events, clock())
                if progress and now >= next_progress:
                    next_progress += progress_every * 1e9
                    progress(_progress_line(report, now - start))
    shard.stop()
    while len(events := shard.poll_events()):
        read(events, clock())
    shard.join()
    report.elapsed = (clock() - start) / 1e9
    report.latencies_ns = np.concatenate(latencies) if latencies else report.latencies_ns
    report.event_counts = {t.name: int(type_counts[t]) for t in EventType if type_counts[t]}
    return report


def _sample_fill(shard: Shard, report: RunReport) -> None:
    health = shard.health()
    report.input_fill_max = max(report.input_fill_max, health["input_fill"])
    report.output_fill_max = max(report.output_fill_max, health["output_fill"])
    report.fill_total += health["input_fill"] + health["output_fill"]
    report.fill_samples += 1


def _progress_line(report: RunReport, elapsed_ns: int) -> str:
    seconds = elapsed_ns / 1e9
    return (
        f"  {seconds:6.1f} s  {report.commands:>12,} commands  {report.events:>12,} events"
        f"  {report.commands / seconds / 1e6:6.2f} M orders/s"
    )


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
