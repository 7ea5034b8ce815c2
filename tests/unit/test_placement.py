"""The shard plan: hot symbols alone, the rest balanced, every symbol placed once, the same
plan in every process, and the plan file an operator pins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokercore.broker.market import load_market
from brokercore.config import KafkaSettings
from brokercore.engine.instruments import load_instruments
from brokercore.kafka.placement import ShardPlan, compute_plan, read_plan, shard_plan
from brokercore.kafka.topics import partition_of

CONFIG = Path(__file__).resolve().parents[2] / "config" / "instruments.toml"

weights_st = st.dictionaries(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ&-", min_size=1, max_size=10),
    st.integers(1, 1000).map(float) | st.floats(0.01, 1e6),
    min_size=1,
    max_size=40,
)


@given(weights_st, st.integers(1, 16))
def test_every_symbol_is_placed_once_on_a_shard_and_hot_ones_alone(weights, shards):
    plan = compute_plan(weights, shards)
    assert set(plan.symbols) == set(weights)
    assert all(0 <= plan.shard_of(s) < shards for s in weights)
    assert sorted(s for k in range(shards) for s in plan.on_shard(k)) == sorted(weights)
    total = sum(weights.values())
    for symbol in plan.hot:
        assert weights[symbol] > total / shards
        assert plan.on_shard(plan.shard_of(symbol)) == [symbol]
    assert all(weights[s] <= total / shards for s in weights if s not in plan.hot)


@given(weights_st, st.integers(1, 16))
def test_the_rest_is_balanced_within_one_symbol(weights, shards):
    plan = compute_plan(weights, shards)
    rest_shards = [k for k in range(shards) if not set(plan.on_shard(k)) & set(plan.hot)]
    loads = [sum(weights[s] for s in plan.on_shard(k)) for k in rest_shards]
    rest = [w for s, w in weights.items() if s not in plan.hot]
    if rest:
        assert max(loads) - min(loads) <= max(rest) * (1 + 1e-9)


@given(weights_st, st.integers(1, 16))
def test_the_same_weights_give_the_same_plan_in_any_order(weights, shards):
    backwards = dict(reversed(list(weights.items())))
    assert compute_plan(weights, shards) == compute_plan(backwards, shards)


def test_equal_weights_keep_a_balanced_crc_placement():
    """Deployments without weights keep their shards (CRC-32 balances these four)."""
    names = ["RELIANCE", "TCS", "HDFCBANK", "ITC"]
    for shards in (1, 2, 4):
        plan = compute_plan(dict.fromkeys(names, 1.0), shards)
        assert plan.symbols == {s: partition_of(s, shards) for s in names}
        assert plan.hot == () or shards == 4


def test_the_seed_instruments_put_reliance_alone():
    plan = shard_plan(KafkaSettings(shards=4), load_instruments(CONFIG))
    assert plan.hot == ("RELIANCE",)
    assert plan.on_shard(plan.shard_of("RELIANCE")) == ["RELIANCE"]
    loads = sorted(len(plan.on_shard(k)) for k in range(4))
    assert loads == [1, 2, 2, 3]  # seven symbols of weight 1 on the three other shards


def test_the_oms_and_the_daemons_compute_the_same_plan():
    """The OMS plans from the broker's market, the daemons from the engine's instruments."""
    for shards in (1, 2, 3, 4, 8):
        settings = KafkaSettings(shards=shards)
        assert shard_plan(settings, load_market(CONFIG).values()) == shard_plan(
            settings, load_instruments(CONFIG)
        )


def test_a_hot_ratio_makes_more_symbols_hot():
    weights = {"A": 5.0, "B": 3.0, "C": 1.0, "D": 1.0, "E": 1.0, "F": 1.0}
    assert compute_plan(weights, 4).hot == ("A",)  # 5 > 12 / 4
    assert compute_plan(weights, 4, hot_ratio=0.5).hot == ("A", "B")  # 3 > 0.5 * 3


def test_bad_weights_are_refused():
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="X: weight must be a positive number"):
            compute_plan({"X": weight}, 2)


def test_a_pinned_plan_file_is_what_every_process_reads(tmp_path):
    instruments = load_instruments(CONFIG)
    pinned = compute_plan({i.symbol: i.weight for i in instruments}, 4).moved("TCS", 0)
    path = tmp_path / "plan.json"
    path.write_bytes(pinned.to_file())
    settings = KafkaSettings.from_env(
        {"BROKERCORE_SHARDS": "4", "BROKERCORE_SHARD_PLAN": str(path)}
    )
    plan = shard_plan(settings, instruments)
    assert plan == pinned and plan.version == 2 and plan.shard_of("TCS") == 0
    assert shard_plan(settings, load_market(CONFIG).values()) == plan


def test_a_plan_file_that_does_not_fit_is_refused(tmp_path):
    instruments = load_instruments(CONFIG)
    path = tmp_path / "plan.json"
    path.write_bytes(ShardPlan(2, {"RELIANCE": 0}).to_file())
    with pytest.raises(ValueError, match="is for 2 shards, the configuration says 4"):
        shard_plan(KafkaSettings(shards=4, shard_plan=str(path)), instruments)
    with pytest.raises(ValueError, match="does not place AXISBANK, HDFCBANK, INFY"):
        shard_plan(KafkaSettings(shards=2, shard_plan=str(path)), instruments)
    path.write_text('{"shards": 2, "symbols": {"RELIANCE": 2}}')
    with pytest.raises(ValueError, match="RELIANCE is on shard 2, not one of 2 shards"):
        read_plan(path)
    path.write_text('{"shards": 2, "symbols": {}, "extra": 1}')
    with pytest.raises(ValueError, match=r"plan.json: Object contains unknown field `extra`"):
        read_plan(path)


def test_brokercore_plan_writes_the_file_the_processes_read(tmp_path):
    path = tmp_path / "plan.json"
    done = subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "plan", "--instruments", str(CONFIG)]
        + ["--shards", "4", "--write", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "shard 0: weight 10: RELIANCE (hot)" in done.stdout
    plan = read_plan(path)
    assert plan == shard_plan(KafkaSettings(shards=4), load_instruments(CONFIG))
