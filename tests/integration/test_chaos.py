"""Chaos: under a steady load of HTTP clients, restart Postgres, Redis and the Kafka
broker, and kill -9 each service process, each in turn; after each fault every component
must be up without a manual step, every accepted order settled within a bound, and the
money invariants must hold.

The platform is private (tests/chaos_support.py): its own Postgres, Redis and Kafka on
their own ports and state, and, as subprocesses started as `make up` starts them, one
engine daemon per shard, the OMS, the query service, settlement, the projector, the
notifier and the reconciler (its rounds every 5 s; the WebSocket gateway and the
notification API are left out: nothing here reads them). A server restart must be
ridden out by every process (the same pid alive afterwards); after a kill -9 the test
plays the supervisor and starts the process again. The bound: every order accepted
before a moment is settled (no longer PENDING) and every events consumer is past that
moment's end of the topic within BROKERCORE_CHAOS_BOUND seconds (default 60).

Profiles: by default (CI) each fault once with 3 s of load after it; `make chaos` runs
BROKERCORE_CHAOS_ROUNDS=3 rounds with 20 s of load after each fault (seconds set by
BROKERCORE_CHAOS_HOLD). Other settings: BROKERCORE_CHAOS_RATE (orders/s, default 25),
BROKERCORE_CHAOS_CLIENTS (default 24), BROKERCORE_CHAOS_KAFKA_DOWN (seconds the broker
stays dead, default 3) and BROKERCORE_CHAOS_ONLY (comma-separated words of the fault
names, e.g. "postgres,kill -9 oms").

A failure names the fault, what did not recover (dead or replaced processes, orders
still PENDING per shard, consumers behind, 500s, broken invariants) and the error lines
of the logs, which are kept (their folder is printed) when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from brokercore.broker.orders import OPEN_STATUSES
from brokercore.edge.auth import mint_token
from chaos_support import (
    JWT,
    Load,
    Platform,
    Servers,
    broken_invariants,
    end_offsets,
    http_problems,
    is_5xx,
    lagging,
    log_errors,
    missing,
    pending,
    read_model_differences,
    reconciler_report,
)

ROUNDS = int(os.environ.get("BROKERCORE_CHAOS_ROUNDS", "1"))
HOLD = float(os.environ.get("BROKERCORE_CHAOS_HOLD", "20" if ROUNDS > 1 else "3"))
RATE = float(os.environ.get("BROKERCORE_CHAOS_RATE", "25"))
CLIENTS = int(os.environ.get("BROKERCORE_CHAOS_CLIENTS", "24"))
BOUND = float(os.environ.get("BROKERCORE_CHAOS_BOUND", "60"))
KAFKA_DOWN = float(os.environ.get("BROKERCORE_CHAOS_KAFKA_DOWN", "3"))
ONLY = [
    name.strip() for name in os.environ.get("BROKERCORE_CHAOS_ONLY", "").split(",") if name.strip()
]


@dataclass
class Outcome:
    """What one fault did, for the summary and the verdict."""

    fault: str
    lasted: float = 0.0  # s from injecting the fault to its end
    accepted_during: int = 0
    recovered_after: float | None = None  # s from the fault's end to all settled
    answers_5xx: int = 0
    answers_503: int = 0
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def platform(request):
    root = Path(tempfile.mkdtemp(prefix="brokercore-chaos-"))
    servers = Servers(root)
    running = None
    failed, failures_before = True, request.session.testsfailed
    try:
        servers.start()
        running = Platform(servers, root, CLIENTS)
        running.prepare()
        running.start_problems = running.start()
        yield running
        failed = request.session.testsfailed > failures_before
    finally:
        if running is not None:
            running.stop()
        servers.stop()
        if failed:
            servers.keep_logs(root / "logs" / "servers")
        for state in ("pg", "redis", "kafka"):
            shutil.rmtree(root / state, ignore_errors=True)
        if failed or os.environ.get("BROKERCORE_CHAOS_KEEP_LOGS"):
            print(f"chaos: logs kept in {root / 'logs'}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def faults(platform: Platform) -> list[tuple[str, Callable[[], None], str | None]]:
    """(name, inject, the service it kills or None for a server restart), in order."""
    servers = platform.servers
    chosen = [
        ("postgres restart -m immediate", servers.postgres.crash_restart, None),
        ("redis kill -9 and start", servers.restart_redis, None),
        ("kafka kill -9 and start", lambda: servers.restart_kafka(KAFKA_DOWN), None),
    ]
    for name, service in platform.services.items():
        chosen.append((f"kill -9 {name}", _supervised_kill(service), name))
    return [f for f in chosen if not ONLY or any(word in f[0] for word in ONLY)]


def _supervised_kill(service):
    def inject():
        service.kill9()
        time.sleep(0.5)  # a supervisor's restart delay
        service.start()
        service.wait_ready()

    return inject


def test_every_fault_under_load_is_ridden_out(platform: Platform):
    load = Load(platform, RATE)
    load.start()
    outcomes = [Outcome("the first start", problems=platform.start_problems)]
    try:
        time.sleep(3)  # the load is flowing before the first fault
        for round_ in range(ROUNDS):
            for name, inject, killed in faults(platform):
                label = name if ROUNDS == 1 else f"{name} (round {round_ + 1})"
                outcomes.append(run_fault(platform, load, label, inject, killed))
                print(summary_line(outcomes[-1]), flush=True)
    finally:
        load.stop(timeout=BOUND)
    final = Outcome("at rest, after the load")
    final.problems += settle_at_rest(platform, load)
    outcomes.append(final)
    print("\n".join(["chaos summary:", *map(summary_line, outcomes)]))
    failures = [o for o in outcomes if o.problems]
    assert not failures, "what did not recover:\n" + "\n\n".join(
        f"== {o.fault}:\n" + "\n".join(f"- {p}" for p in o.problems) for o in failures
    )


def run_fault(platform: Platform, load: Load, name: str, inject, killed: str | None) -> Outcome:
    outcome = Outcome(name)
    pids = platform.pids()
    marks = {n: s.log.stat().st_size for n, s in platform.services.items()}
    start = time.monotonic()
    try:
        inject()
    except Exception as e:  # noqa: BLE001 - a fault that did not go as planned
        outcome.problems.append(f"injecting the fault failed: {e!r}")
    over = time.monotonic()
    outcome.lasted = over - start
    # Recovery: everything accepted until the fault was over is settled.
    before = list(load.accepted(before=over))
    waited = wait_settled(platform, before, None, over + BOUND)
    if waited is not None:
        outcome.recovered_after = waited - over
    time.sleep(max(0.0, over + HOLD - time.monotonic()))
    # Still flowing: what was accepted since is settled too, and the consumers caught up.
    cutoff = time.monotonic()
    ids = list(load.accepted(before=cutoff))
    ends = _retrying(lambda: end_offsets(platform), cutoff + BOUND)
    settled = wait_settled(platform, ids, ends, cutoff + BOUND)
    outcome.problems += recovery_problems(platform, pids, killed, ids, ends, settled)
    outcome.accepted_during = sum(
        1 for p in load.placed if p.accepted_at is not None and start <= p.accepted_at <= over
    )
    outcome.answers_5xx = load.count(start, time.monotonic(), is_5xx)
    outcome.answers_503 = load.count(start, time.monotonic(), lambda k: k == "503")
    if outcome.answers_5xx > outcome.answers_503:
        kinds = Counter(k for t, k in list(load.answers) if start <= t and is_5xx(k) and k != "503")
        outcome.problems.append(
            f"answers other than 503 while a dependency was down: {dict(kinds)}"
        )
    if outcome.problems:
        for service_name, service in platform.services.items():
            errors = log_errors(service.log, marks[service_name])
            if errors:
                outcome.problems.append(f"{service_name} log:\n    " + "\n    ".join(errors))
        repair(platform, outcome)
        wait_settled(platform, list(load.accepted()), None, time.monotonic() + BOUND)
    return outcome


def wait_settled(
    platform: Platform, ids: list[int], ends: dict[int, int] | None, deadline: float
) -> float | None:
    """When no order of ``ids`` was PENDING any more (and every consumer was past
    ``ends``), or None if that did not happen by ``deadline``. Gives up early when a
    process is dead (no point waiting for it: it is reported)."""
    dead_since = None
    while time.monotonic() < deadline:
        try:
            if not pending(platform, ids) and (ends is None or not lagging(platform, ends)):
                return time.monotonic()
        except Exception:  # noqa: BLE001 - a server still coming back
            pass
        if all(s.running() for s in platform.services.values()):
            dead_since = None
        elif dead_since is None:
            dead_since = time.monotonic()
        elif time.monotonic() - dead_since > 3:
            return None
        time.sleep(0.25)
    return None


def recovery_problems(
    platform: Platform,
    pids: dict,
    killed: str | None,
    ids: list[int],
    ends: dict[int, int] | None,
    settled: float | None,
) -> list[str]:
    problems = []
    for name, service in platform.services.items():
        if not service.running():
            problems.append(f"{name} is not running: {service.describe()}")
        elif name != killed and service.pid != pids[name]:
            problems.append(f"{name} was replaced (pid {pids[name]} -> {service.pid})")
    if settled is None:
        stuck = _retrying(lambda: pending(platform, ids), time.monotonic() + 30) or []
        per_symbol = Counter(symbol for _, symbol in stuck)
        shards = {s.name: s.shard for s in platform.symbols}
        if stuck:
            problems.append(
                f"{len(stuck)} accepted order(s) still PENDING {BOUND:.0f} s later: "
                + ", ".join(
                    f"{symbol} (engine-{shards[symbol]}) {n}"
                    for symbol, n in sorted(per_symbol.items())
                )
                + f"; e.g. order ids {[o for o, _ in stuck[:10]]}"
            )
        if ends is None:
            problems.append("the events topic's end could not be read")
        else:
            behind = _retrying(lambda: lagging(platform, ends), time.monotonic() + 30)
            if behind:
                problems.append("consumers behind the end of events: " + "; ".join(behind))
    lost = _retrying(lambda: missing(platform, ids), time.monotonic() + 30)
    if lost:
        problems.append(f"orders answered 202 but not in Postgres: {lost[:20]}")
    problems += _retrying(lambda: http_problems(platform), time.monotonic() + 30) or []
    problems += _retrying(lambda: broken_invariants(platform), time.monotonic() + 30) or []
    return problems


def repair(platform: Platform, outcome: Outcome) -> None:
    """Start again what died, as a supervisor would, so the next fault is measured on a
    whole platform (the failure stays reported)."""
    for name, service in platform.services.items():
        if not service.running():
            service.start()
            try:
                service.wait_ready()
                outcome.problems.append(f"(the test restarted {name} to go on)")
            except AssertionError as e:
                outcome.problems.append(f"{name} does not start again: {e}")


def settle_at_rest(platform: Platform, load: Load) -> list[str]:
    """With the load stopped: every request answered, every order in Postgres once and
    settled; then every resting order cancelled through the OMS (so each is proven to be
    in its engine's book) and nothing left open or blocked; read model and reconciler."""
    problems = [f"the load generator failed: {e}" for e in load.errors]
    unanswered = [p.key for p in load.placed if p.order_id is None and p.refused is None]
    if unanswered:
        problems.append(
            f"{len(unanswered)} order request(s) never answered (retried "
            f"{BOUND:.0f} s after the load stopped)"
        )
    doubled = [(p.key, sorted(p.ids_seen)) for p in load.placed if len(p.ids_seen) > 1]
    if doubled:
        problems.append(f"one idempotency key, several order ids: {doubled[:10]}")
    accepted = load.accepted()
    ends = {p: max(0, end - 1) for p, end in end_offsets(platform).items()}  # - commit marker
    if wait_settled(platform, list(accepted), ends, time.monotonic() + BOUND) is None:
        problems += recovery_problems(platform, platform.pids(), None, list(accepted), ends, None)
        return problems
    with platform.connect() as conn:
        stored = {row[0] for row in conn.execute("SELECT order_id FROM orders")}
        keys = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
    if stored != set(accepted):
        problems.append(
            f"orders in Postgres that no client was given: "
            f"{sorted(stored - set(accepted))[:20]}; given but not stored: "
            f"{sorted(set(accepted) - stored)[:20]}"
        )
    if keys != len(stored):
        problems.append(f"{keys} idempotency keys for {len(stored)} orders")
    problems += cancel_everything(platform)
    problems += broken_invariants(platform)
    problems += read_model_differences(platform)
    code, report = reconciler_report(platform)
    if code != 0:
        problems.append(f"the reconciler's report is not clean:\n{report[-3000:]}")
    problems += [
        f"{name} is not running: {s.describe()}"
        for name, s in platform.services.items()
        if not s.running()
    ]
    return problems


def cancel_everything(platform: Platform) -> list[str]:
    with platform.connect() as conn:
        resting = conn.execute(
            "SELECT a.user_id, o.order_id FROM orders o JOIN accounts a USING (account_id) "
            "WHERE o.status = ANY(%s)",
            (list(OPEN_STATUSES),),
        ).fetchall()

    async def cancel_all():
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{platform.oms_port}", timeout=10
        ) as http:
            per_user: dict[str, list[int]] = {}
            for user, order in resting:
                per_user.setdefault(user, []).append(order)

            async def cancel(user, orders):
                headers = {"Authorization": f"Bearer {mint_token(user, JWT)}"}
                refused = []
                for order in orders:
                    for _ in range(50):
                        response = await http.delete(f"/api/v1/orders/{order}", headers=headers)
                        if response.status_code != 429:
                            break
                        await asyncio.sleep(0.2)
                    if response.status_code != 202:
                        refused.append((order, response.status_code, response.text[:200]))
                return refused

            return sum(await asyncio.gather(*(cancel(u, o) for u, o in per_user.items())), [])

    refused = asyncio.run(cancel_all())
    deadline = time.monotonic() + BOUND
    with platform.connect() as conn:
        while True:
            left = conn.execute(
                "SELECT order_id, status FROM orders WHERE status = ANY(%s) ORDER BY order_id",
                (list(OPEN_STATUSES),),
            ).fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    problems = []
    if refused:
        problems.append(f"cancels of resting orders refused: {refused[:10]}")
    if left:
        problems.append(
            f"{len(left)} order(s) still open {BOUND:.0f} s after their cancel "
            f"(the engine did not have them?): {left[:10]}"
        )
    print(f"chaos: cancelled {len(resting)} resting orders at the end")
    return problems


def _retrying(read, deadline: float):
    """``read()``, retried while a server is still coming back; None if it never worked."""
    while True:
        try:
            return read()
        except Exception:  # noqa: BLE001 - reported by the caller
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)


def summary_line(o: Outcome) -> str:
    verdict = "ok" if not o.problems else f"FAILED ({len(o.problems)} problem(s))"
    if not o.lasted:
        return f"chaos: {o.fault:<34} {verdict}"
    settled = (
        f"NOT settled in {BOUND:.0f} s"
        if o.recovered_after is None
        else f"settled {o.recovered_after:5.1f} s after"
    )
    return (
        f"chaos: {o.fault:<34} lasted {o.lasted:5.1f} s, accepted during "
        f"{o.accepted_during:4d}, {settled}, 5xx {o.answers_5xx:4d} "
        f"(503 {o.answers_503:4d}): {verdict}"
    )
