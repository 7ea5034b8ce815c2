"""The operator's view with real Kafka and engine daemons: ``brokercore status`` names each
shard's active and standby daemons, its orders/s and lag, each consumer's lag, warns past
the bound and exits 1 while a shard has no active daemon; ``brokercore service monitor``
logs the same lag and its WARNING."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psycopg

from brokercore.kafka.placement import compute_plan
from kafka_support import (
    Daemon,
    Load,
    OrderProducer,
    flow,
    instruments,
    new_settings,
    write_instruments,
)
from processes import LoggedProcess
from waiting import wait_until


def environment(settings, database, instruments_file) -> dict[str, str]:
    return {
        **os.environ,
        "BROKERCORE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": settings.topic_prefix,
        "BROKERCORE_SHARDS": str(settings.shards),
        "BROKERCORE_DATABASE_URL": database,
        "BROKERCORE_INSTRUMENTS": str(instruments_file),
    }


def status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "status", "--sample", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def shard_line(output: str, shard: int) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(f"shard {shard}:"))


def test_status_and_monitor_show_daemons_rates_lag_and_warnings(tmp_path, migrated):
    settings = new_settings(2)
    path = write_instruments(tmp_path / "instruments.toml", instruments())
    plan = compute_plan({i.symbol: i.weight for i in instruments()}, 2)
    env = environment(settings, migrated, path)
    commands = flow(3_000)
    behind = sum(plan.shard_of(c.symbol) == 1 for c in commands)
    assert behind > 1_000  # shard 1's orders, with no daemon to take them: its lag
    daemons = [Daemon(settings, 0, path, tmp_path / "active.log")]
    monitor = None
    try:
        daemons[0].wait_for("active from")
        daemons.append(Daemon(settings, 0, path, tmp_path / "standby.log"))
        daemons[1].wait_for("standby: waiting for the lease")
        OrderProducer(settings).send(commands)
        with psycopg.connect(migrated, autocommit=True) as conn:  # settlement, never run
            conn.execute(
                "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)"
                " VALUES ('settlement', %s, 0, 0)",
                (settings.events_topic,),
            )
        monitor = LoggedProcess(["service", "monitor", "--every", "1"], tmp_path / "m.log", env)

        def with_standby() -> subprocess.CompletedProcess[str] | None:
            done = status(env)  # the standby shows once it has joined the lease group
            return done if "; standby engine-0-" in done.stdout else None

        done = wait_until(with_standby, "the standby in the status", timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr  # shard 1 has no daemon
        out = done.stdout
        zero = shard_line(out, 0)
        assert re.search(r"active engine-0-\S+-pid\d+; standby engine-0-\S+-pid\d+;", zero), out
        assert zero.endswith("; " + ", ".join(plan.on_shard(0))), out
        assert "active NONE; standby none;" in shard_line(out, 1), out
        assert f"lag {behind:,};" in shard_line(out, 1), out
        assert "WARNING: shard 1: no active daemon" in out, out
        assert (
            f"WARNING: engine-1 on {settings.orders_topic} partition 1: lag {behind:,}, "
            "past the bound of 1,000"
        ) in out, out
        assert re.search(rf"settlement: lag [1-9][\d,]* on {settings.events_topic}", out), out
        monitor.wait_for(f"engine-1 on {settings.orders_topic} partition 1: lag {behind:,}")
        assert "WARNING brokercore.monitor: engine-1" in monitor.text(), monitor.text()

        daemons.append(Daemon(settings, 1, path, tmp_path / "one.log"))
        daemons[2].wait_for("active from")

        def caught_up() -> subprocess.CompletedProcess[str] | None:
            done = status(env)
            return done if done.returncode == 0 and "WARNING: engine" not in done.stdout else None

        with Load(settings, flow(40_000, seed=9), rate=1_000):  # orders/s while sampled
            out = wait_until(caught_up, "shard 1 caught up", timeout=120, every=0.5).stdout
        for shard in (0, 1):
            rate = re.search(r"; ([\d,.]+) orders/s;", shard_line(out, shard))
            assert rate and float(rate.group(1).replace(",", "")) > 0, out
        assert "no active daemon" not in out, out
    finally:
        for process in [*daemons, *([monitor] if monitor else [])]:
            process.close()
