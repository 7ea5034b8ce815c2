"""A shard: the order books of a set of symbols and the one thread that matches them.

Commands go in through an input ring (any thread may ``submit``), the matcher thread
(optionally pinned to a CPU core) applies them without the GIL, and events come out of
an output ring (any one thread may ``poll_events``). ``stop()`` is graceful: the input
closes, the matcher applies what was submitted, the output closes once it holds every
event, and ``poll_events`` drains it (returning empty at the end). ``snapshot()``
captures every book together with the number of commands they reflect;
``Shard.restore`` plus a replay of the commands after that number reproduces the
uninterrupted run exactly.

With ``marks=True`` the matcher also publishes a progress mark after every batch (see
``poll_marks``), and ``request_snapshot()`` asks for a snapshot without waiting: it
arrives as a SNAPSHOT mark at the exact point of the event stream it reflects, and
``take_snapshot()`` hands over its bytes. That is what a publisher that commits input
offsets with output events (the Kafka engine daemon) builds on.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import numpy as np

from brokercore.engine._engine import OrderBook
from brokercore.engine.instruments import Instrument
from brokercore.engine.records import COMMAND_DTYPE, EVENT_DTYPE, MARK_DTYPE, MarkKind
from brokercore.runtime._matcher import PAUSED, Matcher
from brokercore.runtime._ringbuffer import RingBuffer, WaitStrategy

__all__ = ["Shard", "ShardHealth", "read_snapshot"]

_SNAPSHOT = struct.Struct("<4sHqI")
_SNAPSHOT_MAGIC = b"BCSH"
_SNAPSHOT_VERSION = 1
_BOOK_ENTRY = struct.Struct("<IQ")


class ShardHealth(TypedDict):
    """``Shard.health()``: the matcher thread, its sequences and the rings' fill levels."""

    running: bool
    core: int | None
    wait: str
    commands_submitted: int
    commands_applied: int
    events_published: int
    events_read: int
    batches: int
    input_fill: int
    output_fill: int
    ring_capacity: int
    last_error: str | None


class Shard:
    """The books of one shard and its matcher thread.

    ``books`` maps symbol id -> OrderBook. The shard owns them from here on: while the
    matcher runs they refuse per-order calls from other threads.
    """

    def __init__(
        self,
        books: Mapping[int, OrderBook],
        *,
        core: int | None = None,
        ring_capacity: int = 1 << 16,
        wait: WaitStrategy = WaitStrategy.BLOCKING,
        max_batch: int = 1024,
        commands_applied: int = 0,
        marks: bool = False,
    ):
        if core is not None and core not in os.sched_getaffinity(0):
            raise ValueError(f"core {core} is not available to this process")
        self.core = core
        self.wait = WaitStrategy(wait)
        self.base = commands_applied  # commands reflected by the books before this run
        self._commands = RingBuffer(
            ring_capacity, COMMAND_DTYPE, consumers=(self.wait,), multi_producer=True
        )
        self._events = RingBuffer(ring_capacity, EVENT_DTYPE, consumers=(self.wait,))
        self._marks = (
            RingBuffer(ring_capacity, MARK_DTYPE, consumers=(self.wait,)) if marks else None
        )
        self._matcher = Matcher(
            self._commands, self._events, dict(books), max_batch, mark_ring=self._marks
        )
        self._thread: threading.Thread | None = None
        self._snapshot_lock = threading.Lock()
        self._snapshot_ready = threading.Event()
        self._snapshot: bytes | None = None
        self._snapshot_wanted = False  # by request_snapshot()
        self._snapshots: deque[bytes] = deque()  # taken for SNAPSHOT marks
        self.last_error: BaseException | None = None

    @classmethod
    def from_instruments(cls, instruments: Iterable[Instrument], **options: Any) -> Shard:
        books: dict[int, OrderBook] = {}
        for instrument in instruments:
            if instrument.symbol_id in books:
                raise ValueError(f"symbol id {instrument.symbol_id} is configured twice")
            books[instrument.symbol_id] = instrument.new_book()
        return cls(books, **options)

    @property
    def books(self) -> Mapping[int, OrderBook]:
        return self._matcher.books

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("shard already started")
        self._thread = threading.Thread(
            target=self._run_matcher, name="brokercore-matcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Graceful stop: no new commands; every submitted one is still applied and its
        events stay readable with poll_events(), which returns empty once all are read.
        Returns at once: the matcher may need the events read to make room for the rest."""
        self._commands.close()
        if self._thread is None:
            self._close_outputs()

    def _close_outputs(self) -> None:
        self._events.close()
        if self._marks is not None:
            self._marks.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the matcher thread to finish (after stop() and enough reading)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the matcher did not finish in time")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_matcher(self) -> None:
        if self.core is not None:
            os.sched_setaffinity(0, {self.core})  # pins this thread only
        try:
            while self._matcher.run() == PAUSED:
                self._snapshot = self._snapshot_now()
                if self._snapshot_wanted and self._marks is not None:
                    self._snapshot_wanted = False
                    self._snapshots.append(self._snapshot)
                    self._marks.publish(
                        np.array(
                            [
                                (
                                    MarkKind.SNAPSHOT,
                                    self._matcher.commands_applied,
                                    self._matcher.events_published,
                                )
                            ],
                            MARK_DTYPE,
                        )
                    )
                self._matcher.request_pause(False)
                self._snapshot_ready.set()
        except BaseException as e:  # noqa: BLE001 - kept for health(), and the rings close
            self.last_error = e
            self._commands.close()
        finally:
            self._close_outputs()
            self._snapshot_ready.set()

    # --- feeder and publisher sides ------------------------------------------------

    def submit(self, commands: np.ndarray) -> int:
        """Publish commands (COMMAND_DTYPE), waiting for room; returns the last sequence."""
        return self._commands.publish(commands)

    def try_submit(self, commands: np.ndarray) -> bool:
        """Publish all commands if there is room now; False (nothing published) if not."""
        return self._commands.try_publish(commands)

    def poll_events(self, max_events: int = 65536, timeout: float | None = None) -> np.ndarray:
        """Events available now (waiting up to timeout for the first); empty when the
        shard is stopped and every event was read."""
        return self._events.poll(0, max_events, timeout)

    def poll_marks(self, max_marks: int = 4096, timeout: float | None = None) -> np.ndarray:
        """Progress marks (MARK_DTYPE) available now; the reader of the marks must also be
        the reader of the events. Each mark says: the events published so far (counted
        from this run's start) are exactly those of the commands applied so far."""
        if self._marks is None:
            raise RuntimeError("this shard was made without marks=True")
        return self._marks.poll(0, max_marks, timeout)

    # --- snapshots -----------------------------------------------------------------

    def request_snapshot(self) -> None:
        """Ask for a snapshot between two batches without waiting for it; it arrives as
        a SNAPSHOT mark, in order with the batch marks, and take_snapshot() returns it."""
        if self._marks is None:
            raise RuntimeError("this shard was made without marks=True")
        self._snapshot_wanted = True
        self._matcher.request_pause(True)

    def take_snapshot(self) -> bytes:
        """The bytes of the oldest SNAPSHOT mark not taken yet."""
        return self._snapshots.popleft()

    def snapshot(self) -> bytes:
        """Every book plus the count of commands they reflect (versioned, CRC-checked).

        A running matcher is paused between two batches for the time it takes."""
        with self._snapshot_lock:
            if not self.running:
                return self._snapshot_now()
            self._snapshot_ready.clear()
            self._matcher.request_pause(True)
            self._snapshot_ready.wait()
            if self._snapshot is None:
                raise RuntimeError("the matcher stopped before the snapshot") from self.last_error
            snapshot, self._snapshot = self._snapshot, None
            return snapshot

    def _snapshot_now(self) -> bytes:
        books = self._matcher.books
        parts = [
            _SNAPSHOT.pack(_SNAPSHOT_MAGIC, _SNAPSHOT_VERSION, self.commands_applied, len(books))
        ]
        for symbol, book in sorted(books.items()):
            data = book.snapshot()
            parts += [_BOOK_ENTRY.pack(symbol, len(data)), data]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def restore(cls, data: bytes, **options: Any) -> Shard:
        """A shard whose books equal the snapshot's; replay the commands after
        ``shard.base`` (= the snapshot's commands_applied) to catch up."""
        books, commands_applied = read_snapshot(data)
        return cls(books, commands_applied=commands_applied, **options)

    # --- health ----------------------------------------------------------------------

    @property
    def commands_applied(self) -> int:
        """Commands the books reflect, counting those before a restore."""
        return self.base + self._matcher.next_sequence

    def health(self) -> ShardHealth:
        """Sequences, ring fill levels and counters, readable at any time."""
        return {
            "running": self.running,
            "core": self.core,
            "wait": self.wait.name,
            "commands_submitted": self._commands.claimed + 1,
            "commands_applied": self._matcher.commands_applied,
            "events_published": self._matcher.events_published,
            "events_read": self._events.consumer_sequence(0) + 1,
            "batches": self._matcher.batches,
            "input_fill": self._commands.fill,
            "output_fill": self._events.fill,
            "ring_capacity": self._commands.capacity,
            "last_error": repr(self.last_error) if self.last_error else None,
        }


def read_snapshot(data: bytes) -> tuple[dict[int, OrderBook], int]:
    """The books (symbol id -> OrderBook) of a ``Shard.snapshot()`` and the number of
    commands they reflect; ValueError if the bytes are not an intact snapshot."""
    data = bytes(data)
    if len(data) < _SNAPSHOT.size + 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("shard snapshot is truncated or corrupt")
    magic, version, commands_applied, n_books = _SNAPSHOT.unpack_from(data)
    if magic != _SNAPSHOT_MAGIC or version != _SNAPSHOT_VERSION:
        raise ValueError("not a shard snapshot of a supported version")
    books, offset = {}, _SNAPSHOT.size
    for _ in range(n_books):
        symbol, size = _BOOK_ENTRY.unpack_from(data, offset)
        offset += _BOOK_ENTRY.size
        books[symbol] = OrderBook.restore(data[offset : offset + size])
        offset += size
    if offset != len(data) - 4:
        raise ValueError("shard snapshot length does not match its contents")
    return books, commands_applied
