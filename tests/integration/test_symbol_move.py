"""Moving a symbol to another shard at a session boundary, with real Kafka and daemons:
its resting orders go with it and trade there, orders after the move reach the new
shard, an order routed by the old plan is refused by the old shard, and every order is
applied exactly once, through a kill -9 before the move, a move cut short between its
two steps, and a kill -9 after it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections import Counter

from brokercore.engine.records import EventType, Reason, Side
from brokercore.kafka import move
from brokercore.kafka.messages import CloseSession, NewOrder, OpenSession, ShardSnapshot, encode
from brokercore.kafka.placement import ShardPlan, compute_plan, read_plan
from brokercore.runtime.loadgen import MID
from brokercore.runtime.shard import Shard, read_snapshot
from kafka_support import (
    SYMBOLS,
    Daemon,
    OrderProducer,
    assert_no_gap_no_duplicate,
    instruments,
    new_settings,
    read_events,
    write_instruments,
)
from waiting import wait_until

SYMBOL = "RELIANCE"
SYMBOL_ID = SYMBOLS[SYMBOL]


def cut_short_after_the_snapshot(settings, source: int, target: int) -> None:
    """What a move killed between its two steps leaves: the target shard's snapshot with
    the symbol's book, the plan file unchanged."""
    books, _ = read_snapshot(move._newest_snapshot(settings, source).books)
    snapshot = move._newest_snapshot(settings, target)
    target_books, applied = read_snapshot(snapshot.books)
    target_books[SYMBOL_ID] = books[SYMBOL_ID]
    data = Shard(target_books, commands_applied=applied).snapshot()
    move._publish_snapshot(
        settings, ShardSnapshot(target, snapshot.next_offset, snapshot.events, data)
    )


def test_a_moved_symbol_keeps_its_book_and_every_order_is_applied_once(tmp_path):
    items = instruments()
    path = write_instruments(tmp_path / "instruments.toml", items)
    plan_file = tmp_path / "plan.json"
    plan = compute_plan({i.symbol: i.weight for i in items}, 2)
    plan_file.write_bytes(plan.to_file())
    settings = dataclasses.replace(new_settings(2), shard_plan=str(plan_file))
    source = plan.shard_of(SYMBOL)
    target = 1 - source
    producer = OrderProducer(settings)
    env = {
        **os.environ,
        "BROKERCORE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": settings.topic_prefix,
        "BROKERCORE_SHARDS": "2",
        "BROKERCORE_SHARD_PLAN": str(plan_file),
    }
    daemons: list[Daemon] = []

    def daemon(shard: int) -> Daemon:
        log = tmp_path / f"{len(daemons)}.log"
        started = Daemon(settings, shard, path, log, "--plan", str(plan_file))
        daemons.append(started)
        started.wait_for("active from")
        return started

    def send(commands, by: ShardPlan) -> None:
        for command in commands:
            producer.send_raw(encode(command), by.shard_of(command.symbol), flush=False)
        producer.flush()

    def move() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "brokercore.cli", "move", SYMBOL, "--to", str(target)]
            + ["--instruments", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    resting = [NewOrder(n, 100 + n, SYMBOL, Side.BUY, 10, MID) for n in range(1, 11)]
    crossing = [NewOrder(n, 200 + n, SYMBOL, Side.SELL, 10, MID) for n in range(11, 21)]
    stale = NewOrder(99, 300, SYMBOL, Side.BUY, 10, MID)  # routed by the old plan
    try:
        old_source, old_target = daemon(source), daemon(target)
        send([*resting, CloseSession(SYMBOL)], plan)
        refused = move()
        assert refused.returncode == 2 and "has daemons running" in refused.stderr, refused
        old_source.kill()  # kill -9 before the move: its snapshot is behind its input
        assert old_target.terminate() == 0
        # (the killed daemon stays in its lease group until its session lapses)
        refused = wait_until(
            lambda: (
                (done := move()).returncode == 2
                and "has daemons running" not in done.stderr
                and done
            ),
            "a refusal once the killed daemon's lease lapsed",
        )
        assert f"shard {source}'s newest snapshot is not at its committed input" in refused.stderr
        assert daemon(source).terminate() == 0  # recovered, then a graceful stop
        cut_short_after_the_snapshot(settings, source, target)
        assert "2 books; from the snapshot" in daemon(target).text()  # old plan: not its book
        assert daemons[-1].terminate() == 0
        done = move()
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"moved {SYMBOL}'s book (10 resting orders)" in done.stdout, done.stdout
        moved = read_plan(plan_file)
        assert moved.version == 2 and moved.shard_of(SYMBOL) == target
        assert {s: moved.shard_of(s) for s in plan.symbols if s != SYMBOL} == {
            s: plan.shard_of(s) for s in plan.symbols if s != SYMBOL
        }

        daemon(source)
        new_owner = daemon(target)
        send([OpenSession(SYMBOL), *crossing[:5]], moved)
        new_owner.kill()  # kill -9 of the new owner while it takes its first input
        send(crossing[5:], moved)
        send([stale], plan)
        daemon(target)

        def trades_done():
            events = read_events(settings, timeout=10)
            trades = [e for es in events.values() for e in es if e.type == EventType.TRADE]
            rejected = [e for e in events.get(source, []) if e.order_id == stale.order_id]
            return events if len(trades) >= len(crossing) and rejected else None

        events = wait_until(trades_done, "the trades and the refusal", timeout=120, every=1)
    finally:
        for process in daemons:
            process.close()

    assert_no_gap_no_duplicate(events)
    accepted = Counter(
        e.order_id for es in events.values() for e in es if e.type == EventType.ACCEPTED
    )
    assert accepted == Counter(o.order_id for o in resting + crossing), accepted
    trades = [(shard, e) for shard, es in events.items() for e in es if e.type == EventType.TRADE]
    assert all(shard == target for shard, _ in trades)
    assert sorted((e.order_id, e.other_id, e.qty) for _, e in trades) == [
        (sell.order_id, buy.order_id, 10) for sell, buy in zip(crossing, resting, strict=True)
    ]
    [refusal] = [e for e in events[source] if e.order_id == stale.order_id]
    assert refusal.type == EventType.REJECTED and refusal.reason == Reason.UNKNOWN_SYMBOL

    # The next plan from what happened: 20 orders of RELIANCE, none of the others (1 each).
    replanned = tmp_path / "replanned.json"
    done = subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "plan", "--from-events", "--shards", "2"]
        + ["--instruments", str(path), "--write", str(replanned)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"shard \d: weight 20: {SYMBOL} \(hot\)", done.stdout), done.stdout
    assert read_plan(replanned).hot == (SYMBOL,)
