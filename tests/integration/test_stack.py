"""`make up` from nothing, again and again (issue 11: the first start on a fresh machine
left the engines dead and still said "brokercore is up"). Each cycle removes every state
folder, brings the stack up on private ports, checks that `stack.sh status` finds every
component up and that an order on each shard is FILLED end to end, then takes it down and
finds none of its processes, supervisord and the edge included, left. The orders and
reads go through the edge (nginx), in front of two processes of each API. The first cycle
also shows that supervisord starts again a consumer and an engine daemon killed with -9,
and that a WebSocket through the edge reaches a gateway.

BROKERCORE_STACK_CYCLES sets the number of cycles: 1 by default (CI, where the compressed
day's and the README's tests each bring a fresh stack up again), 5 with `make up-cycles`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import psycopg
from websockets.asyncio.client import connect

from stack_support import stack_fixture, trade_on_every_shard  # noqa: F401 (fixture)
from ws_support import receive, token

CYCLES = int(os.environ.get("BROKERCORE_STACK_CYCLES", "1"))
PROCESSES = (
    "engine-0",
    "engine-1",
    "oms-0",
    "oms-1",
    "query-0",
    "query-1",
    "ws-0",
    "ws-1",
    "notifier-api",
    "settlement",
    "projector",
    "notifier",
    "postback-retry",
    "triggers",
    "reconciler",
    "monitor",
    "scheduler",
    "accounts",
    "funds",
)


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
        assert f"edge: started on 127.0.0.1:{stack.base + 8}" in banner, banner
        assert f"orders     {stack.edge}/api/v1/orders" in banner, banner
        status = stack.stack("status")
        assert status.returncode == 0, f"cycle {cycle}:\n{status.stdout}\n{stack.logs()}"
        for name in PROCESSES:
            assert f"stack: {name} running" in status.stdout, status.stdout
        assert f"edge: running on 127.0.0.1:{stack.base + 8}" in status.stdout, status.stdout
        orders = trade_on_every_shard(stack)
        assert [o["filledQty"] for o in orders] == [10, 10, 10, 10], orders
        if cycle == 0:
            a_stopped_process_is_not_called_running(stack)
            up_names_a_component_that_cannot_start_and_its_log(stack)
            a_killed_process_is_started_again(stack)
            a_socket_through_the_edge_is_welcomed(stack)
            the_demo_users_came_through_sign_up_kyc_and_deposits_once(stack)
        pids = [stack.pid(name) for name in PROCESSES] + [stack.pid(), stack.edge_pid()]
        stack.down()
        assert all(gone(process) for process in pids), pids
        status = stack.stack("status")
        assert status.returncode == 1, status.stdout
        assert "running" not in status.stdout.replace("not running", ""), status.stdout


def a_stopped_process_is_not_called_running(stack):
    settlement = stack.pid("settlement")
    os.kill(settlement, signal.SIGSTOP)
    try:
        status = stack.stack("status")
    finally:
        os.kill(settlement, signal.SIGCONT)
    assert status.returncode == 1, status.stdout
    assert "stack: settlement not running: stopped" in status.stdout, status.stdout


def up_names_a_component_that_cannot_start_and_its_log(stack):
    """The first query process stopped (supervisorctl stop) and its port taken: `up`
    (which starts only what is not running) exits 1 naming it and its log; with the port
    free again, `up` brings it back."""
    query = stack.pid("query-0")
    stopped = stack.ctl("stop", "query-0")
    assert stopped.returncode == 0 and gone(query), stopped.stdout
    with socket.socket() as taken:
        # the edge's kept-alive connections to it leave the port in TIME_WAIT: bind past
        # those (SO_REUSEADDR, as uvicorn does), never past a listener
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", stack.base + 1))
        taken.listen()
        done = stack.stack("up")
    assert done.returncode == 1, done.stdout
    assert "brokercore is up" not in done.stdout, done.stdout
    assert f"query-0 exited; see {stack.root}/.stack/logs/query-0.log" in done.stdout, done.stdout
    assert "brokercore is NOT up" in done.stdout, done.stdout
    stack.up()


def a_killed_process_is_started_again(stack):
    """kill -9 of settlement and of engine-1: supervisord starts each again, and `stack.sh
    status` finds the new ones running and ready (settlement assigned its partitions, the
    daemon active or standby again)."""
    killed = {name: stack.pid(name) for name in ("settlement", "engine-1")}
    for process in killed.values():
        os.kill(process, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = {name: stack.pid(name) for name in killed}
        status = stack.stack("status")
        if status.returncode == 0 and all(
            now[name] not in (0, killed[name])
            and f"stack: {name} running (RUNNING pid {now[name]}," in status.stdout
            for name in killed
        ):
            break
        assert time.monotonic() < deadline, (
            f"killed {killed}, now {now}:\n{status.stdout}\n{stack.logs()}"
        )
        time.sleep(0.5)


def a_socket_through_the_edge_is_welcomed(stack):
    """alice's WebSocket through the edge: a gateway behind it upgrades it and welcomes her."""

    async def welcome() -> dict:
        url = f"ws://127.0.0.1:{stack.base + 8}/ws/v1/orders?token={token(alice)}"
        async with connect(url, ping_interval=None) as ws:
            return await receive(ws)

    alice = stack.user_id("alice")
    frame = asyncio.run(welcome())
    assert frame["type"] == "WELCOME" and frame["userId"] == alice, frame


def the_demo_users_came_through_sign_up_kyc_and_deposits_once(stack):
    """`make up` made alice and bob as any customer is made (issue 15: no back door): a
    users row (signed up), VERIFIED by ops in the audit log, ops an operator by the one
    server-side grant, the cash a deposit through the funds API -- once, although `up`
    ran twice in this cycle."""
    ids = {name: stack.user_id(name) for name in ("alice", "bob", "ops")}
    with psycopg.connect(stack.database_url) as conn:
        users = conn.execute(
            "SELECT u.email, a.kyc_status FROM users u JOIN accounts a USING (user_id) "
            "WHERE u.user_id = ANY(%s) ORDER BY 1",
            (list(ids.values()),),
        ).fetchall()
        decisions = conn.execute(
            "SELECT actor, target, after->>'kycStatus' FROM audit_log "
            "WHERE action = 'KYC_DECISION' ORDER BY target"
        ).fetchall()
        granted = conn.execute(
            "SELECT target FROM audit_log WHERE action = 'ROLE_GRANTED'"
        ).fetchall()
        deposits = conn.execute(
            "SELECT a.user_id, f.amount FROM funding f JOIN accounts a USING (account_id) "
            "WHERE f.kind = 'DEPOSIT' ORDER BY f.amount DESC"
        ).fetchall()
    assert users == [
        ("alice@example.com", "VERIFIED"),
        ("bob@example.com", "VERIFIED"),
        ("ops@example.com", "PENDING"),
    ], users
    assert sorted(decisions) == sorted(
        (ids["ops"], f"account:{ids[name]}", "VERIFIED") for name in ("alice", "bob")
    ), decisions
    assert granted == [(f"user:{ids['ops']}",)], granted
    assert deposits == [(ids["alice"], 1_000_000_000), (ids["bob"], 500_000_000)], deposits
