"""The operator's CLI on the real Kafka and an engine daemon: without BROKERCORE_SHARDS it
finds the deployment's shard count from the ``orders`` topic (``make up`` runs 2, the
setting's default is 4), and ``brokercore reband`` moves a book's band exactly once per
id, the engine cancelling what falls outside it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from brokercore.cli import main
from brokercore.config import KafkaSettings
from brokercore.engine.records import EventType, Reason
from brokercore.kafka.messages import Event, NewOrder
from brokercore.kafka.placement import compute_plan
from kafka_support import Daemon, OrderProducer, new_settings, read_events
from waiting import wait_until

SYMBOLS = ("AAA", "BBB")


def write_market(path: Path) -> Path:
    """Two symbols, tick 0.05, band 0.05..500.00 (1..10,000 ticks)."""
    path.write_text(
        '[session]\ntimezone = "Asia/Kolkata"\nopen = "09:15"\nclose = "15:30"\n\n'
        + "".join(
            f'[[instrument]]\nsymbol = "{s}"\nid = {n}\nlow = 1\nhigh = 10000\n'
            f'session_orders = 1000\ntick_size = "0.05"\nmax_order_qty = 1000\n\n'
            for n, s in enumerate(SYMBOLS, 1)
        )
    )
    return path


def environment(settings: KafkaSettings, instruments: Path) -> dict[str, str]:
    """The deployment's variables, without BROKERCORE_SHARDS."""
    env = {k: v for k, v in os.environ.items() if k != "BROKERCORE_SHARDS"}
    return env | {
        "BROKERCORE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": settings.topic_prefix,
        "BROKERCORE_INSTRUMENTS": str(instruments),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brokercore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    *args: str,
) -> tuple[int, str, str]:
    """``brokercore ARGS`` in this process (no interpreter to start), for the commands
    that publish nothing: its exit code, output and errors."""
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        if "BROKERCORE_SHARDS" not in env:
            patch.delenv("BROKERCORE_SHARDS", raising=False)
        code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_reband_and_halt_on_a_two_shard_deployment_without_the_shards_setting(
    tmp_path, monkeypatch, capsys
):
    kafka = new_settings(2)
    market = write_market(tmp_path / "instruments.toml")
    env = environment(kafka, market)
    mine = {k: env[k] for k in env if k.startswith("BROKERCORE_")}
    shard = compute_plan({s: 1.0 for s in SYMBOLS}, 2).shard_of("AAA")
    daemon = Daemon(kafka, shard, market, tmp_path / "engine.log")
    try:
        daemon.wait_for("active from input offset")
        OrderProducer(kafka).send(
            [
                NewOrder(1, 7, "AAA", 1, 10, price=4000),  # a bid at 200.00: stays
                NewOrder(2, 8, "AAA", 2, 10, price=9000),  # an ask at 450.00: outside
            ]
        )
        code, _, err = in_process(
            monkeypatch, capsys, mine, "reband", "AAA", "--low", "150.00", "--high", "300.01"
        )
        assert code == 2 and "tick size" in err, err
        first = cli(env, "reband", "AAA", "--low", "150.00", "--high", "300.00", "--id", "b1")
        assert first.returncode == 0 and "AAA: REBAND published" in first.stdout, first
        again = cli(env, "reband", "AAA", "--low", "150.00", "--high", "300.00", "--id", "b1")
        assert again.returncode == 0 and "already published" in again.stdout, again
        halt = cli(env, "halt", "BBB", "--id", "h1")
        assert halt.returncode == 0 and "BBB: HALT published" in halt.stdout, halt
        _, out, _ = in_process(monkeypatch, capsys, mine, "status", "--sample", "0.1")
        assert "shards (2," in out, out
        pinned = mine | {"BROKERCORE_SHARDS": "3"}
        code, _, err = in_process(monkeypatch, capsys, pinned, "halt", "BBB")
        assert code == 2 and "the configuration says 3" in err, err

        def aaa() -> list[Event]:
            events = read_events(kafka, timeout=10).get(shard, [])
            mine = [e for e in events if e.symbol == "AAA"]
            return mine if any(e.type == EventType.REBANDED for e in mine) else []

        events = wait_until(aaa, "AAA's REBANDED event", timeout=60, every=0.5)
    finally:
        daemon.close()
    kinds = [(EventType(e.type).name, e.order_id, Reason(e.reason).name) for e in events]
    assert kinds == [
        ("ACCEPTED", 1, "NONE"),
        ("ACCEPTED", 2, "NONE"),
        ("CANCELLED", 2, "PRICE_OUT_OF_BAND"),
        ("REBANDED", 0, "NONE"),
    ], kinds
    rebanded = events[-1]
    assert (rebanded.price, rebanded.qty) == (3000, 6000)  # 150.00 and 300.00 in ticks
