"""Crash, failover and fencing of engine daemons under load, on the real Kafka.

Across a whole run the committed events (read_committed) must have no duplicate and no
gap (shard_seq 1..n), equal per symbol what the engine produces directly from the same
commands, and the final books must equal those of an uninterrupted run.

Profiles: ``BROKERCORE_CRASH_KILLS`` kill -9s (10 in CI; ``make crash`` runs 50) at
random points: during start-up and replay as well as while live.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from contextlib import contextmanager

import pytest

from kafka_support import (
    Daemon, OrderProducer, assert_no_gap_no_duplicate, books_of, by_symbol, direct_run,
    flow, instruments, new_settings, newest_snapshots, read_events, same_book,
    write_instruments,
)

KILLS = int(os.environ.get("BROKERCORE_CRASH_KILLS", "10"))
RATE = 2_000                 # commands per second offered while daemons die


@pytest.fixture
def instruments_file(tmp_path):
    return write_instruments(tmp_path / "instruments.toml", instruments())


class Load:
    """Publishes commands at a steady rate from a background thread, until the block
    ends (or the commands run out); ``sent`` is what it published."""

    def __init__(self, settings, commands, rate: float = RATE, chunk: int = 100):
        self._producer = OrderProducer(settings)
        self._commands, self._rate, self._chunk = commands, rate, chunk
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.sent: list = []

    def _run(self):
        try:
            start = time.monotonic()
            for i in range(0, len(self._commands), self._chunk):
                delay = start + i / self._rate - time.monotonic()
                if self._stop.wait(max(delay, 0)):
                    return
                self._producer.send(self._commands[i:i + self._chunk])
                self.sent = self._commands[:i + self._chunk]
        except BaseException as e:
            self.error = e

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        assert self.error is None, self.error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


def check_run(settings, commands, final_daemon):
    """The whole run's events and, after a graceful stop of the daemon that ends it
    (once it is active), its final books."""
    final_daemon.wait_for("active from")
    expected, books = direct_run(settings, instruments(), commands)
    events = read_events(settings, expected=sum(map(len, expected.values())), timeout=180)
    assert_no_gap_no_duplicate(events)
    assert by_symbol(events) == expected
    assert final_daemon.terminate() == 0, final_daemon.text()[-3000:]
    final = books_of(newest_snapshots(settings)[0])     # written by the graceful stop
    assert final.keys() == books.keys()                 # one shard: every symbol
    assert all(same_book(book, books[symbol]) for symbol, book in final.items())


def test_kill_9_at_random_points_under_load(tmp_path, instruments_file):
    settings = new_settings(shards=1)
    rng = random.Random(int(os.environ.get("BROKERCORE_CRASH_SEED", "2026")))
    commands = flow(KILLS * 8 * RATE, seed=5)
    logs = []
    with Load(settings, commands) as load:
        for kill in range(KILLS):
            daemon = Daemon(settings, 0, instruments_file, tmp_path / f"run{kill}.log",
                            "--snapshot-every", "1500")
            logs.append(daemon)
            if kill % 2:                     # somewhere in start-up, replay or live
                time.sleep(rng.uniform(0.3, 3.0))
            else:                            # while live, mid-transaction or between
                daemon.wait_for("active from")
                time.sleep(rng.uniform(0.1, 1.5))
            daemon.kill()
            daemon.close()
        assert not load.done, "the load should outlast the kills (raise the command count)"
    final = Daemon(settings, 0, instruments_file, tmp_path / "final.log",
                   "--snapshot-every", "1500")
    try:
        check_run(settings, load.sent, final)
    finally:
        final.close()
    texts = [d.text() for d in logs] + [final.text()]
    lived = sum("active from" in t for t in texts)
    assert lived >= KILLS // 2 + 1, "most runs went live before they were killed"
    assert any("from the snapshot" in t for t in texts), "some run recovered from a snapshot"
    assert any(re.search(r"[1-9][\d,]* replayed", t) for t in texts), \
        "some run replayed input silently"


@contextmanager
def active_and_standby(tmp_path, instruments_file):
    """A fresh one-shard deployment with an active daemon and a hot standby."""
    settings = new_settings(shards=1)
    active = Daemon(settings, 0, instruments_file, tmp_path / "active.log")
    standby = None
    try:
        active.wait_for("active from")
        standby = Daemon(settings, 0, instruments_file, tmp_path / "standby.log")
        standby.wait_for("standby:")
        yield settings, active, standby
    finally:
        for daemon in (active, standby):
            if daemon is not None:
                daemon.close()


def test_standby_takes_over_when_the_active_daemon_is_killed(tmp_path, instruments_file):
    with active_and_standby(tmp_path, instruments_file) as (settings, active, standby):
        with Load(settings, flow(16_000, seed=9), rate=4_000) as load:
            time.sleep(2.0)
            active.kill()
            killed_at = time.monotonic()
            standby.wait_for("active from", timeout=30)
            print(f"standby took over {time.monotonic() - killed_at:.2f} s after kill -9")
            time.sleep(2.0)
        check_run(settings, load.sent, standby)


def test_a_paused_zombie_is_fenced_and_publishes_nothing_more(tmp_path, instruments_file):
    with active_and_standby(tmp_path, instruments_file) as (settings, zombie, successor):
        with Load(settings, flow(12_000, seed=13), rate=4_000) as load:
            time.sleep(1.0)
            zombie.process.send_signal(signal.SIGSTOP)      # alive, but silent
            successor.wait_for("active from", timeout=30)
            zombie.process.send_signal(signal.SIGCONT)
            assert zombie.process.wait(60) == 1, zombie.text()[-3000:]
            time.sleep(1.0)
        check_run(settings, load.sent, successor)
