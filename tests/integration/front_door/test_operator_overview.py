"""The operator's overview (GET /api/v1/operator/overview, brokercore.read.operations):
the reconciler's runs stored as it makes them, and, through the edge of a running stack,
a customer refused in the JSON error shape and the operator shown the shards with their
daemons and offsets, every consumer's lag and a finding the reconciler stored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from brokercore.config import ServiceSettings
from brokercore.consumers.reconcile import Finding, record_run
from brokercore.demo import OPERATOR, login_of
from brokercore.read.operations import latest_runs
from brokercore.services.reconciler import market_sessions, warn_broken_invariants
from stack_support import trade_on_every_shard
from waiting import wait_until

INSTRUMENTS = "config/instruments.toml"


def runs(url: str, most: int = 100) -> list:
    async def read():
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await latest_runs(conn, most)

    return asyncio.run(read())


def test_the_latest_run_of_each_scope_is_read_with_its_first_findings(conn, migrated):
    start = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
    broken = [Finding("NEGATIVE_CASH", None, f"cash -{n} paise", 7) for n in range(3)]
    record_run(conn, start, "FULL", [Finding("FILL_MISSING", None, "42-1 BUY")])
    record_run(conn, start + timedelta(seconds=30), "INVARIANTS", broken, most=2)
    record_run(conn, start + timedelta(seconds=60), "INVARIANTS", [])
    latest, full = runs(migrated)
    assert (latest.scope, latest.ran_at, latest.findings, latest.items) == (
        "INVARIANTS",
        start + timedelta(seconds=60),
        0,
        [],
    )
    assert (full.scope, full.findings, [(f.kind, f.detail) for f in full.items]) == (
        "FULL",
        1,
        [("FILL_MISSING", "42-1 BUY")],
    )
    record_run(conn, start + timedelta(seconds=90), "INVARIANTS", broken, most=2)
    latest = runs(migrated, most=1)[0]
    assert latest.findings == 3  # the count is whole, the rows are capped
    assert [(f.kind, f.account_id, f.order_id, f.detail) for f in latest.items] == [
        ("NEGATIVE_CASH", 7, None, "cash -0 paise")
    ]
    for statement in ("DELETE FROM reconciler_findings", "UPDATE reconciler_runs SET findings = 0"):
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute(statement)


def login(client: httpx.Client, name: str) -> dict[str, str]:
    answer = client.post("/api/v1/auth/login", json=login_of(name))
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['accessToken']}"}


def test_only_an_operator_sees_the_shards_lag_and_findings(stack_up):
    stack = stack_up
    trade_on_every_shard(stack)  # each shard's daemon and each consumer has moved on
    with httpx.Client(base_url=stack.edge, timeout=30) as client:
        refused = client.get("/api/v1/operator/overview", headers=login(client, "alice"))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "FORBIDDEN", refused.text
        assert refused.json()["error"]["message"], refused.text

        # A hold the open orders do not explain (no guard refuses it): a round of the
        # reconciler finds and stores it.
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            (account,) = conn.execute(
                "UPDATE accounts SET blocked_cash = blocked_cash + 100 WHERE user_id = %s "
                "RETURNING account_id",
                (stack.user_id("alice"),),
            ).fetchone()
        try:
            settings = ServiceSettings(database_url=stack.database_url, instruments=INSTRUMENTS)
            warn_broken_invariants(settings, market_sessions(settings))

            operator = login(client, OPERATOR)

            def found() -> dict | None:
                answer = client.get("/api/v1/operator/overview", headers=operator)
                assert answer.status_code == 200, answer.text
                body = answer.json()
                latest = [run for run in body["reconciler"] if run["scope"] == "INVARIANTS"]
                kinds = {(f["kind"], f["accountId"]) for run in latest for f in run["items"]}
                return body if ("BLOCKED_CASH_MISMATCH", account) in kinds else None

            body = wait_until(found, "the stored finding in the overview")
        finally:  # the hold undone: the modules after this one share the stack
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE accounts SET blocked_cash = blocked_cash - 100 WHERE account_id = %s",
                    (account,),
                )
    assert body["problems"] == [], body["problems"]
    assert [(s["shard"], s["partition"], s["alive"]) for s in body["shards"]] == [
        (0, 0, True),
        (1, 1, True),
    ], body["shards"]
    for shard in body["shards"]:
        assert shard["active"] and shard["symbols"], shard
        assert shard["ordersEnd"] > 0 and shard["eventsEnd"] > 0, shard
        assert shard["engineOffset"] is not None and shard["lag"] >= 0, shard
    assert {"RELIANCE", "ITC"} <= {s for shard in body["shards"] for s in shard["symbols"]}
    consumers = {c["consumer"]: c for c in body["consumers"]}
    assert {"settlement", "projector", "notifier"} <= set(consumers), consumers
    assert [p["partition"] for p in consumers["settlement"]["partitions"]] == [0, 1]
    assert consumers["settlement"]["lag"] == sum(
        p["lag"] for p in consumers["settlement"]["partitions"]
    )
