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

from stack_support import PrivateStack, stack, trade_on_every_shard  # noqa: F401 (fixture)

CYCLES = int(os.environ.get("BROKERCORE_STACK_CYCLES", "2"))
PROCESSES = ("engine-0", "engine-1", "oms", "query", "ws", "notifier-api", "settlement",
             "projector", "notifier", "reconciler")


def pid(stack: PrivateStack, name: str) -> int:
    return int((stack.root / ".stack" / f"{name}.pid").read_text())


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
        if cycle == 0:      # a process that cannot run is not called running
            settlement = pid(stack, "settlement")
            os.kill(settlement, signal.SIGSTOP)
            try:
                status = stack.stack("status")
            finally:
                os.kill(settlement, signal.SIGCONT)
            assert status.returncode == 1, status.stdout
            assert "stack: settlement not running: stopped" in status.stdout, status.stdout
        pids = [pid(stack, name) for name in PROCESSES]
        stack.down()
        for process in pids:
            assert not os.path.exists(f"/proc/{process}") or open(
                f"/proc/{process}/stat").read().split(") ")[1][0] == "Z", process
        status = stack.stack("status")
        assert status.returncode == 1, status.stdout
        assert "running" not in status.stdout.replace("not running", ""), status.stdout


def test_up_fails_naming_a_component_that_cannot_start_and_its_log(stack):
    with socket.socket() as taken:      # the query service's port is in use
        taken.bind(("127.0.0.1", stack.base + 1))
        taken.listen()
        done = stack.stack("up")
    assert done.returncode != 0, done.stdout
    assert "brokercore is up" not in done.stdout, done.stdout
    log = stack.root / ".stack/logs/query.log"
    assert f"query exited; see {log}" in done.stdout, done.stdout
