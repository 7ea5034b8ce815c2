"""Engine daemons ride out Kafka faults, on a PRIVATE broker that the test formats, kills
with -9 and starts again (never the shared one on 19092).

- A daemon started on a brand-new broker, before any topic or internal topic exists,
  waits out the coordinator's start and becomes active.
- Under load, the broker is killed and restarted (``make crash`` only, three times:
  BROKERCORE_BROKER_RESTARTS; make test restarts the broker under load in
  test_chaos.py): the same daemon process
  goes on, and every order sent (before, during — buffered by the producer — and after
  each outage) yields its events exactly once.
- SIGTERM while the broker is down: the daemon exits within STOP_BOUND seconds.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from brokercore.config import KafkaSettings
from kafka_support import (
    Daemon,
    Load,
    OrderProducer,
    assert_no_gap_no_duplicate,
    by_symbol,
    check_run,
    direct_run,
    flow,
    instruments,
    read_events,
)
from private_servers import PrivateKafka
from waiting import wait_until

RESTARTS = int(os.environ.get("BROKERCORE_BROKER_RESTARTS", "3"))
STOP_BOUND = 15.0  # seconds from SIGTERM to exit with the broker down (docs/kafka.md)


@pytest.fixture
def broker(tmp_path):
    kafka = PrivateKafka(tmp_path / "kafka")
    kafka.start()
    yield kafka
    kafka.stop()


@pytest.fixture
def daemon(tmp_path, broker, instruments_file):
    """start(): the engine daemon of shard 0 of a one-shard deployment on the private
    broker (its topics not created yet: the daemon creates them)."""
    settings = KafkaSettings(broker.bootstrap, f"t{uuid.uuid4().hex[:12]}-", shards=1)
    started = []

    def start(name: str = "daemon") -> Daemon:
        started.append(Daemon(settings, 0, instruments_file, tmp_path / f"{name}.log"))
        return started[-1]

    start.settings = settings
    yield start
    for process in started:
        process.close()


def events_of(settings, commands) -> dict:
    """The committed events, once they include those of every command in ``commands``."""
    expected, _ = direct_run(settings, instruments(), commands)
    total = sum(map(len, expected.values()))
    events = read_events(settings, expected=total, timeout=180)
    assert sum(map(len, events.values())) >= total, "the events did not arrive in 180 s"
    return events


def test_a_daemon_on_a_brand_new_broker_becomes_active(daemon):
    first = daemon()
    first.wait_for("active from", timeout=180)
    commands = flow(2000, seed=17)
    OrderProducer(daemon.settings).send(commands)

    events = events_of(daemon.settings, commands)

    assert by_symbol(events) == direct_run(daemon.settings, instruments(), commands)[0]
    assert_no_gap_no_duplicate(events)
    assert first.terminate() == 0, first.text()[-3000:]


@pytest.mark.full_profile  # minutes; make test rides out a broker restart in test_chaos
def test_the_daemon_survives_broker_restarts_under_load(daemon, broker):
    engine = daemon()
    engine.wait_for("active from", timeout=180)
    pid = engine.process.pid
    # Ten minutes of orders: a restart of the broker can take two here (busy machine).
    with Load(daemon.settings, flow(300_000, seed=23), rate=500, patience=280) as load:
        for restart in range(RESTARTS):
            time.sleep(2.0)  # orders flowing
            broker.kill()
            killed_at = len(load.sent)
            time.sleep(3.0)  # orders wait in the producer meanwhile
            broker.start()
            wait_until(
                lambda at=killed_at: len(load.sent) >= at + 1000, "the load to go on", timeout=300
            )
            # The events of everything sent so far arrive: the daemon is live again.
            events_of(daemon.settings, list(load.sent))
            assert engine.process.poll() is None, (
                f"the daemon died after restart {restart + 1}:\n{engine.text()[-3000:]}"
            )
    assert engine.process.pid == pid
    check_run(daemon.settings, load.sent, engine)


def test_sigterm_while_the_broker_is_down_is_answered_promptly(daemon, broker):
    first = daemon("first")
    first.wait_for("active from", timeout=180)
    with Load(daemon.settings, flow(20_000, seed=29), rate=1000, patience=280) as load:
        time.sleep(2.0)
        broker.kill()
        time.sleep(1.0)
        first.process.terminate()
        stopped = time.monotonic()
        first.process.wait(STOP_BOUND)  # TimeoutExpired: SIGTERM was not answered
        print(
            f"exit {first.process.returncode} {time.monotonic() - stopped:.1f} s after "
            f"SIGTERM, broker down"
        )
        broker.start()
        time.sleep(1.0)
    last = [line for line in first.text().splitlines() if line.startswith("engine shard")][-1]
    assert (first.process.returncode, last.split(": ", 1)[1][:40]) in {
        (1, "failed: DaemonFailed('stopping: the fina"),  # live: the final commit failed
        (1, "failed: _SessionLost('the lease lapsed')"),  # live: the lease went first
        (0, "stopped while not live (nothing to commi"),  # recovering: nothing to commit
    }, first.text()[-3000:]
    # Nothing was lost or doubled: a successor publishes every order's events once.
    check_run(daemon.settings, load.sent, daemon("second"))
