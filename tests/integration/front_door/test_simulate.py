"""`brokercore simulate` for 10 s with 6 traders and an opening burst against a private
stack: trades happen, nothing meets a 5xx, and its summary's counts are the platform's
(orders in the OMS's table and the read model, shares filled as settlement booked them).

It trades symbols no other module of the shared stack trades (SYMBOLS), and counts only
their orders: the web app's simulated market reuses the same trader accounts."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from stack_support import REPO
from waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ("SBIN", "WIPRO", "AXISBANK")
TRADERS = "SELECT a.account_id FROM accounts a JOIN users u USING (user_id)"
TRADERS += " WHERE u.email LIKE 'trader-%@sim.example.com'"
MINE = f"symbol IN {SYMBOLS} AND account_id IN ({TRADERS})"


def test_a_short_simulation_trades_and_its_summary_matches_the_platform(stack_up, tmp_path):
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brokercore.cli",
            "simulate",
            "--api",
            stack_up.edge,
            "--url",
            stack_up.database_url,
            "--traders",
            "6",
            "--rate",
            "15",
            "--duration",
            "10",
            "--open-burst",
            "20",
            "--symbols",
            ",".join(SYMBOLS),
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=stack_up.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack_up.logs()}"
    summary = json.loads(out.read_text())
    assert summary["errors"] == {}, summary
    assert summary["orders"] > 100 and summary["fills"] > 0, summary
    assert summary["modifies"] + summary["cancels"] > 0, summary
    assert "orders" in done.stderr and "fills" in done.stderr  # the progress lines
    assert f"{summary['orders']} accepted" in done.stdout

    def counts() -> tuple[int, int, int]:
        with psycopg.connect(stack_up.database_url) as conn:
            row = conn.execute(
                f"""SELECT (SELECT count(*) FROM orders WHERE {MINE}),
                   (SELECT count(*) FROM read_model.orders WHERE {MINE}),
                   (SELECT coalesce(sum(filled_quantity), 0) FROM orders WHERE {MINE})"""
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    expected = (summary["orders"], summary["orders"], summary["filledShares"])
    wait_until(lambda: counts() == expected, f"the platform's counts {expected}")
