"""The session scheduler on the real Kafka (brokercore.kafka.session_log,
``brokercore service scheduler``): each step of the trading day reaches its symbol's
partition of ``orders`` exactly once, with two schedulers at once, a publisher fenced in
the middle, a transaction left open by a killed one, and one killed (kill -9) and
restarted during compressed days; and the engine daemon applies them (docs/engine.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
from confluent_kafka import Producer

from brokercore.broker.session_plan import CompressedDay, Transition
from brokercore.config import KafkaSettings
from brokercore.engine.records import EventType, Op
from brokercore.kafka.messages import (
    CloseSession,
    Event,
    Halt,
    NewOrder,
    PreOpen,
    Uncross,
    encode,
)
from brokercore.kafka.placement import ShardPlan, compute_plan
from brokercore.kafka.session_log import (
    LogEntry,
    SessionPublisher,
    command_of,
    ensure_session_log,
    nanoseconds,
    read_session_log,
    scheduler_transactional_id,
    session_log_topic,
)
from kafka_support import Daemon, OrderProducer, _read_all, new_settings, read_events
from processes import LoggedProcess
from waiting import wait_until

SECRET = b"test-scheduler-secret"
SYMBOLS = ("AAA", "BBB", "CCC")
KIND = {
    PreOpen: Transition.PRE_OPEN,
    Uncross: Transition.UNCROSS,
    CloseSession: Transition.CLOSE,
    Halt: Transition.HALT,
}
_command = msgspec.msgpack.Decoder(PreOpen | Uncross | CloseSession | Halt | NewOrder)


def write_market(path: Path) -> Path:
    """Instruments for both the engine and the broker (a session, tick size, limits)."""
    path.write_text(
        '[session]\ntimezone = "Asia/Kolkata"\nopen = "09:15"\nclose = "15:30"\n\n'
        + "".join(
            f'[[instrument]]\nsymbol = "{s}"\nid = {n}\nlow = 1\nhigh = 10000\n'
            f'session_orders = 1000\ntick_size = "0.05"\nmax_order_qty = 1000\n\n'
            for n, s in enumerate(SYMBOLS, 1)
        )
    )
    return path


def routes(settings: KafkaSettings) -> ShardPlan:
    return compute_plan({s: 1.0 for s in SYMBOLS}, settings.shards)


def orders(settings: KafkaSettings) -> list[tuple[int, object]]:
    """(partition, command) of every committed message of ``orders``, per partition in order."""
    return _read_all(
        settings.orders_topic, settings.shards, _command.decode, settings, lambda _: True, 30
    )


def sessions(
    settings: KafkaSettings, sent: list[tuple[int, object]] | None = None
) -> Counter[tuple[str, Transition, int]]:
    """The session commands of ``orders`` (or of ``sent``, as read from it) as (symbol,
    transition, ts), counted."""
    sent = orders(settings) if sent is None else sent
    return Counter((c.symbol, KIND[type(c)], c.ts) for _, c in sent if type(c) in KIND)


def logged(
    settings: KafkaSettings, entries: list[LogEntry] | None = None
) -> Counter[tuple[str, Transition, int]]:
    """The session log's entries (or ``entries``, as read from it) the same way."""
    entries = read_session_log(settings) if entries is None else entries
    return Counter((e.symbol, Transition(e.transition), e.ts) for e in entries)


def test_a_fenced_publisher_starts_over_and_publishes_only_what_is_missing(kafka):
    ensure_session_log(kafka)
    day = CompressedDay(SYMBOLS, SECRET)
    steps = sorted(s for symbol in SYMBOLS for s in day.steps(symbol, 1000))
    first, second = SessionPublisher(kafka, routes(kafka)), SessionPublisher(kafka, routes(kafka))
    try:
        assert first.published == {}  # started: its log read
        assert second.publish(steps[:4]) == steps[:4]  # its start fenced the first
        assert first.publish(steps) == []  # fenced: publishes nothing, drops its producer
        assert sum(map(len, first.published.values())) == 4  # the log read again
        assert first.publish(steps) == steps[4:]  # only the rest; its start fenced the second
        assert second.publish(steps) == []  # fenced in turn
        assert sum(map(len, second.published.values())) == len(steps)  # finds them all
    finally:
        first.close()
        second.close()
    expected = Counter((s.symbol, s.transition, nanoseconds(s.at)) for s in steps)
    assert sessions(kafka) == expected == logged(kafka)
    for partition, command in orders(kafka):
        assert partition == routes(kafka).shard_of(command.symbol)


def test_a_transaction_left_open_by_a_killed_scheduler_is_aborted_not_doubled(kafka):
    ensure_session_log(kafka)
    step = CompressedDay(SYMBOLS, SECRET).steps("AAA", 1000)[0]
    killed = Producer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "transactional.id": scheduler_transactional_id(kafka),
        }
    )
    killed.init_transactions(30)
    killed.begin_transaction()
    entry = LogEntry(step.symbol, step.day, step.transition, nanoseconds(step.at))
    killed.produce(
        kafka.orders_topic, encode(command_of(step)), partition=routes(kafka).shard_of("AAA")
    )
    killed.produce(session_log_topic(kafka), encode(entry), partition=0)
    assert killed.flush(30) == 0  # on the broker, never committed: then "kill -9"
    publisher = SessionPublisher(kafka, routes(kafka))
    try:
        assert publisher.publish([step]) == [step]  # its start aborted the open one
    finally:
        publisher.close()
    assert sessions(kafka) == Counter({("AAA", Transition.PRE_OPEN, entry.ts): 1})
    assert logged(kafka) == Counter({("AAA", Transition.PRE_OPEN, entry.ts): 1})


COMPRESSED = CompressedDay(SYMBOLS, SECRET, pre_open=1, uncross_window=0.5, trading=1, closed=0.5)


def environment(settings: KafkaSettings, instruments: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BROKERCORE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": settings.topic_prefix,
        "BROKERCORE_SHARDS": str(settings.shards),
        "BROKERCORE_INSTRUMENTS": str(instruments),
        "BROKERCORE_DAY": "compressed",
        "BROKERCORE_SCHEDULER_SECRET": SECRET.decode(),
    }


def scheduler(env: dict[str, str], log: Path, day: CompressedDay = COMPRESSED) -> LoggedProcess:
    seconds = {
        "--pre-open": day.pre_open,
        "--uncross-window": day.uncross_window,
        "--trading": day.trading,
        "--closed": day.closed,
    }
    flags = [str(part) for flag, value in seconds.items() for part in (flag, value)]
    return LoggedProcess(["service", "scheduler", *flags], log, env)


def assert_each_step_once_in_order(settings: KafkaSettings, days: int) -> None:
    """Per symbol: every step logged once and sent once; in its partition a first CLOSE
    (the new book's), then whole days in order (a first day may have been joined late);
    each uncross at its secret moment; at least ``days`` whole days."""
    sent, entries = orders(settings), read_session_log(settings)
    assert sessions(settings, sent) == logged(settings, entries)
    per_symbol: dict[str, list[tuple[Transition, int]]] = defaultdict(list)
    for _, command in sent:
        if type(command) in KIND:
            per_symbol[command.symbol].append((KIND[type(command)], command.ts))
    assert len({(e.symbol, e.day, e.transition) for e in entries}) == len(entries)
    after = {
        Transition.CLOSE: Transition.PRE_OPEN,
        Transition.PRE_OPEN: Transition.UNCROSS,
        Transition.UNCROSS: Transition.CLOSE,
    }
    for symbol in SYMBOLS:
        sent = per_symbol[symbol]
        assert sent[0][0] == Transition.CLOSE, sent
        for (previous, _), (transition, _ts) in zip(sent, sent[1:], strict=False):
            assert transition == after[previous], sent
        uncrosses = [ts for transition, ts in sent if transition == Transition.UNCROSS]
        assert len(uncrosses) >= days, sent
        for ts in uncrosses:
            start = COMPRESSED.start(int(ts / 1e9 // COMPRESSED.length))
            planned = COMPRESSED.steps(symbol, COMPRESSED.day_of(start))[1]
            assert nanoseconds(planned.at) == ts  # the secret moment, in its window
        assert [ts for _, ts in sent] == sorted(ts for _, ts in sent)


def test_two_schedulers_one_killed_and_restarted_send_each_step_once(kafka, tmp_path):
    env = environment(kafka, write_market(tmp_path / "instruments.toml"))
    a, b = scheduler(env, tmp_path / "a.log"), scheduler(env, tmp_path / "b.log")
    restarted = None
    try:
        wait_until(lambda: "PRE_OPEN" in a.text() + b.text(), "a PRE_OPEN", timeout=60)
        time.sleep(3.5)  # a day and a bit
        a.kill()  # kill -9, at some moment of a day
        time.sleep(2)
        restarted = scheduler(env, tmp_path / "a2.log")
        time.sleep(4)
        for process in (b, restarted):
            assert process.terminate(30) == 0
    finally:
        for process in (a, b, restarted):
            if process is not None:
                process.close()
    assert_each_step_once_in_order(kafka, days=2)


def test_the_engine_applies_a_compressed_day(tmp_path):
    """Orders collected in the pre-open, the uncross at one price, the close expiring a
    DAY order: the events of the engine daemon."""
    kafka = new_settings(1)
    market = write_market(tmp_path / "instruments.toml")
    daemon = Daemon(kafka, 0, market, tmp_path / "engine.log")
    run = None
    try:
        daemon.wait_for("active from input offset")
        day = CompressedDay(SYMBOLS, SECRET, pre_open=5, uncross_window=1, trading=1, closed=1)
        run = scheduler(environment(kafka, market), tmp_path / "scheduler.log", day)
        run.wait_for("AAA PRE_OPEN", timeout=60)
        OrderProducer(kafka).send(
            [
                NewOrder(1, 7, "AAA", 1, 10, price=101),  # crosses: rests in the pre-open
                NewOrder(2, 8, "AAA", 2, 10, price=99),
                NewOrder(3, 8, "AAA", 2, 5, price=120, tif=2),  # DAY, left over
            ]
        )
        run.wait_for("AAA CLOSE", timeout=30, count=2)
        assert run.terminate(30) == 0

        def aaa() -> list[Event]:
            events = read_events(kafka, timeout=10).get(0, [])
            mine = [e for e in events if e.symbol == "AAA" and e.type != EventType.REJECTED]
            return mine if mine and mine[-1].type == EventType.CLOSED else []

        events = wait_until(aaa, "AAA's CLOSED event", timeout=60, every=0.5)
    finally:
        if run is not None:
            run.close()
        daemon.close()
    kinds = [(EventType(e.type).name, e.op) for e in events]
    start = kinds.index(("PRE_OPENED", Op.PRE_OPEN))
    assert kinds[start:][:4] == [
        ("PRE_OPENED", Op.PRE_OPEN),
        ("ACCEPTED", Op.LIMIT),
        ("ACCEPTED", Op.LIMIT),
        ("ACCEPTED", Op.LIMIT),
    ], kinds
    trade = next(e for e in events if e.type == EventType.TRADE)
    assert (trade.op, trade.order_id, trade.other_id, trade.qty) == (Op.UNCROSS, 1, 2, 10)
    assert trade.price == 99  # V and I tie at 99 and 101, no reference: the lower
    after = [name for name, _ in kinds[kinds.index(("TRADE", Op.UNCROSS)) :]]
    assert after[:3] == ["TRADE", "UNCROSSED", "OPENED"]
    assert "EXPIRED" in after and after.index("EXPIRED") < after.index("CLOSED")


def operator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brokercore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_halt_close_and_resume_are_published_once_per_id(kafka, tmp_path):
    env = environment(kafka, write_market(tmp_path / "instruments.toml"))
    first = operator(env, "halt", "AAA", "--id", "h1")
    assert first.returncode == 0 and "AAA: HALT published" in first.stdout, first
    again = operator(env, "halt", "AAA", "--id", "h1")
    assert again.returncode == 0 and "already published" in again.stdout, again
    closed = operator(env, "close", "AAA", "--id", "c1")
    assert closed.returncode == 0 and "AAA: CLOSE published" in closed.stdout, closed
    assert "already published" in operator(env, "close", "AAA", "--id", "c1").stdout
    waiting = LoggedProcess(
        ["resume", "BBB", "--id", "r1", "--uncross-after", "600"], tmp_path / "resume.log", env
    )
    try:
        waiting.wait_for("the uncross at")
        waiting.kill()  # kill -9 while it waits for the uncross
    finally:
        waiting.close()
    finish = operator(env, "resume", "BBB", "--id", "r1", "--uncross-after", "1")
    assert finish.returncode == 0 and "BBB: UNCROSS published" in finish.stdout, finish
    assert "PRE_OPEN" not in finish.stdout, finish  # the pre-open of the first run stands
    sent = sessions(kafka)
    assert logged(kafka) == sent
    assert sorted((symbol, transition, n) for (symbol, transition, _), n in sent.items()) == [
        ("AAA", Transition.CLOSE, 1),
        ("AAA", Transition.HALT, 1),
        ("BBB", Transition.PRE_OPEN, 1),
        ("BBB", Transition.UNCROSS, 1),
    ]
    pre_open, uncross = (
        ts for (symbol, _, ts) in sorted(sent, key=lambda k: k[2]) if symbol == "BBB"
    )
    assert uncross == pre_open + 1_000_000_000  # the uncross time kept from the pre-open
