"""`make up` from nothing, again and again (issue 11: the first start on a fresh machine
left the engines dead and still said "brokercore is up"). Each cycle removes every state
folder, brings the stack up on private ports, checks that `stack.sh status` finds every
component up and that an order on each shard is FILLED end to end, then takes it down.

BROKERCORE_STACK_CYCLES sets the number of cycles: 2 by default (CI), 5 with
`make up-cycles`.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from stack_support import PrivateStack, stack, trade_on_every_shard  # noqa: F401 (fixture)

CYCLES = int(os.environ.get("BROKERCORE_STACK_CYCLES", "2"))
PROCESSES = ("engine-0", "engine-1", "oms", "query", "ws", "notifier-api", "settlement",
             "projector", "notifier", "reconciler")


def pid(stack: PrivateStack, name: str) -> int:
    return int((stack.root / ".stack" / f"{name}.pid").read_text())


def gone(process: int) -> bool:
    """No such process, or a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{process}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def test_fresh_state_up_down_cycles_bring_every_component_up(stack):
    for cycle in range(CYCLES):
        stack.fresh()
        banner = stack.up()
        assert "calendar: always-open" in banner, banner
        for name in PROCESSES:
            assert f"stack: {name} ready" in banner, banner
        status = stack.stack("status")
        assert status.returncode == 0, f"cycle {cycle}:\n{status.stdout}\n{stack.logs()}"
        for name in PROCESSES:
            assert f"stack: {name} running" in status.stdout, status.stdout
        orders = trade_on_every_shard(stack)
        assert [o["filledQty"] for o in orders] == [10, 10, 10, 10], orders
        if cycle == 0:
            a_stopped_process_is_not_called_running(stack)
            up_names_a_component_that_cannot_start_and_its_log(stack)
        pids = [pid(stack, name) for name in PROCESSES]
        stack.down()
        assert all(gone(process) for process in pids), pids
        status = stack.stack("status")
        assert status.returncode == 1, status.stdout
        assert "running" not in status.stdout.replace("not running", ""), status.stdout


def a_stopped_process_is_not_called_running(stack):
    settlement = pid(stack, "settlement")
    os.kill(settlement, signal.SIGSTOP)
    try:
        status = stack.stack("status")
    finally:
        os.kill(settlement, signal.SIGCONT)
    assert status.returncode == 1, status.stdout
    assert "stack: settlement not running: stopped" in status.stdout, status.stdout


def up_names_a_component_that_cannot_start_and_its_log(stack):
    """The query service stopped and its port taken: `up` (which restarts only what is not
    running) exits 1 naming it and its log; with the port free again, `up` brings it back."""
    query = pid(stack, "query")
    os.kill(query, signal.SIGTERM)
    while not gone(query):
        time.sleep(0.1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack.base + 1))
        taken.listen()
        done = stack.stack("up")
    assert done.returncode == 1, done.stdout
    assert "brokercore is up" not in done.stdout, done.stdout
    assert f"query exited; see {stack.root}/.stack/logs/query.log" in done.stdout, done.stdout
    assert "brokercore is NOT up" in done.stdout, done.stdout
    stack.up()
