"""What `brokercore simulate` measures: counts of requests by outcome, fills seen over
the WebSocket, and latencies in bounded log-scale histograms (a run without an end keeps
constant memory), printed as a progress line each second and a summary at the end."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Histogram", "Tally"]


class Histogram:
    """Seconds in buckets 5% apart from 10 µs up: a quantile is off by at most 5%."""

    FIRST, RATIO, BUCKETS = 1e-5, 1.05, 400  # up to ~3 days

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.total = 0

    def add(self, seconds: float) -> None:
        ratio = max(seconds, self.FIRST) / self.FIRST
        index = min(int(math.log(ratio, self.RATIO)), self.BUCKETS - 1)
        self.counts[index] += 1
        self.total += 1

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``q`` quantile (None: no samples)."""
        if not self.total:
            return None
        rank, seen = math.ceil(q * self.total), 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return float(self.FIRST * self.RATIO ** (index + 1))
        raise AssertionError("unreachable")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


@dataclass
class Tally:
    """The run's counts; ``window_*`` restart with each progress line."""

    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the last request was answered
    accepted: Counter[str] = field(default_factory=Counter)  # place, modify, cancel
    refused: Counter[str] = field(default_factory=Counter)  # 4xx code -> count
    errors: Counter[str] = field(default_factory=Counter)  # 5xx, transport: must stay empty
    fills: int = 0  # ORDER_UPDATEs whose filled quantity grew
    filled_shares: int = 0
    updates: int = 0
    latency: Histogram = field(default_factory=Histogram)  # scheduled send -> answer
    stream_lag: Histogram = field(default_factory=Histogram)  # engine event -> update read
    behind: float = 0.0  # how late the latest request left against its schedule
    window_latency: Histogram = field(default_factory=Histogram)
    window_lag: Histogram = field(default_factory=Histogram)
    _last: tuple[float, int, int] = (0.0, 0, 0)

    def answered(self, kind: str, scheduled: float, error: tuple[int, str] | None) -> None:
        """A request's outcome: ``error`` (status, code) when it was refused."""
        took = time.monotonic() - scheduled
        self.latency.add(took)
        self.window_latency.add(took)
        if error is None:
            self.accepted[kind] += 1
        elif 400 <= error[0] < 500:
            self.refused[error[1]] += 1
        else:
            self.errors[f"{error[0]} {error[1]}"] += 1

    def trading_done(self) -> None:
        """No request will leave any more: the rates' span ends, nothing is behind."""
        self.ended, self.behind = time.monotonic(), 0.0

    def update_seen(self, grew_by: int, event_time_ms: int) -> None:
        self.updates += 1
        lag = max(0.0, time.time() - event_time_ms / 1000)
        self.stream_lag.add(lag)
        self.window_lag.add(lag)
        if grew_by > 0:
            self.fills += 1
            self.filled_shares += grew_by

    def progress(self) -> str:
        """One line on the last window; the window then starts again."""
        now = time.monotonic()
        since, orders, fills = self._last
        span = max(now - since, 1e-9) if since else max(now - self.started, 1e-9)
        line = (
            f"{now - self.started:6.0f} s  orders {self.accepted['place']:7d}"
            f" ({(self.accepted['place'] - orders) / span:6.1f}/s)"
            f"  fills {self.fills:7d} ({(self.fills - fills) / span:6.1f}/s)"
            f"  p99 {_ms(self.window_latency.quantile(0.99))}"
            f"  ws lag p99 {_ms(self.window_lag.quantile(0.99))}"
            f"  behind {_ms(self.behind)}"
            f"  refused {sum(self.refused.values())}  errors {sum(self.errors.values())}"
        )
        self._last = (now, self.accepted["place"], self.fills)
        self.window_latency, self.window_lag = Histogram(), Histogram()
        return line

    def summary(self) -> dict[str, Any]:
        seconds = (self.ended or time.monotonic()) - self.started
        return {
            "seconds": round(seconds, 1),  # of trading (the streams' last updates not included)
            "orders": self.accepted["place"],
            "modifies": self.accepted["modify"],
            "cancels": self.accepted["cancel"],
            "ordersPerSecond": round(self.accepted["place"] / seconds, 1),
            "fills": self.fills,
            "filledShares": self.filled_shares,
            "fillsPerSecond": round(self.fills / seconds, 1),
            "updates": self.updates,
            "latencyMs": {
                q: _round_ms(self.latency.quantile(v))
                for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
            "wsLagMsP99": _round_ms(self.stream_lag.quantile(0.99)),
            "refused": dict(self.refused),
            "errors": dict(self.errors),
        }


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
