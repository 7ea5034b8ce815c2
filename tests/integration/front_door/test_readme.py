"""The README's walkthrough, run as written against a fresh stack (issue 11: its tokens
were empty, so every request was 401, and it assumed order id 1 and a past date): the
front door's shared stack, before any other module trades on it (conftest.py).

The blocks are the README's ```sh blocks marked `<!-- walkthrough -->`, run in order in
one bash (as pasted into one shell) at the repository's root, with `set -euo pipefail`
so that any command that fails (curl's --fail-with-body: any 4xx or 5xx) fails the test.
The one change made: the stack here runs on private ports, so the README's :8000-:8003
and the edge's :8080 become the private stack's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from decimal import Decimal

import psycopg

from brokercore.broker.orders import OPEN_STATUSES
from stack_support import REPO, PrivateStack
from waiting import wait_until

README = REPO / "README.md"
MARKER = "<!-- walkthrough -->"
SECTIONS = (
    "## The broker platform: orders over REST, settled in Postgres",
    "## Reading it back: query service, WebSocket, notifications",
    "## Customers: sign-up, KYC, a second factor, funds, statements",
    "## Order tools: modify, cancel all, margins, market protection, AMO, GTT, brackets, postbacks",
)
DONE = "@@ walkthrough block {} done @@"


def walkthrough() -> list[tuple[str, str]]:
    """(section, text) of each marked block, in README order."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(re.escape(MARKER) + r"\n```sh\n(.*?)\n```\n", text, re.S):
        section = text.rfind("\n## ", 0, match.start())
        blocks.append((text[section + 1 : text.index("\n", section + 1)], match.group(1)))
    return blocks


def test_the_walkthrough_blocks_cover_the_platform_sections():
    blocks = walkthrough()
    assert len(blocks) == 5 and {s for s, _ in blocks} == set(SECTIONS), blocks
    assert README.read_text().count(MARKER) == len(blocks), "a marker without a ```sh block"


def run_walkthrough(stack: PrivateStack) -> list[str]:
    """Every block, in order, in one bash; the output (stdout and stderr) of each."""
    script = ["set -euo pipefail"]
    for n, (_, block) in enumerate(walkthrough()):
        block = re.sub(  # the APIs' ports, and the edge's (8080: base+8 here)
            r"(localhost|127\.0\.0\.1):(800[0-3]|8080)\b",
            lambda m: f"{m[1]}:{stack.base + (8 if m[2] == '8080' else int(m[2]) - 8000)}",
            block,
        )
        script += [block, f"echo '{DONE.format(n)}'"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKERCORE_")}  # a new shell
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = done.stdout
    assert done.returncode == 0, f"the walkthrough failed (exit {done.returncode}):\n{output}"
    parts = re.split("|".join(re.escape(DONE.format(n)) for n in range(len(walkthrough()))), output)
    return parts[:-1]


def answers(output: str) -> list[dict]:
    """The JSON answers printed, one a line (curl's and the socket's frames)."""
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_the_walkthrough_runs_as_written_against_a_fresh_stack(stack_up):
    with psycopg.connect(stack_up.database_url) as conn:
        (orders,) = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert orders == 0, "a stack traded on before: test_readme.py runs first (conftest.py)"
    setup, trade, reads, customer, tools = run_walkthrough(stack_up)
    assert answers(setup) == []  # logins and helpers: silent

    buy, sell, *polls, cancel = answers(trade)
    assert buy["status"] == sell["status"] == "PENDING", trade
    assert all(p["orderId"] == sell["orderId"] for p in polls), trade
    assert cancel == cancel | {"orderId": buy["orderId"], "status": "CANCEL_REQUESTED"}, trade

    portfolio, orders, order, history, book, candles, *socket, alert = answers(reads)
    reliance = next(p for p in portfolio["positions"] if p["symbol"] == "RELIANCE")
    assert reliance["quantity"] == 504 and portfolio["cash"] == "9940000.00", portfolio
    assert buy["orderId"] in [o["orderId"] for o in orders["orders"]], orders
    assert order["orderId"] == buy["orderId"] and order["filledQty"] == 4, order
    assert [(f["quantity"], f["price"]) for f in order["fills"]] == [(4, "15000.00")], order
    assert history["orderId"] == buy["orderId"], history
    # Not yet cancelled.
    assert history["status"] in ("PENDING", "OPEN", "PARTIALLY_FILLED"), history
    assert book["lastPrice"] == "15000.00", book
    assert sum(c["volume"] for c in candles["candles"]) == 4, candles
    updates = [f for f in socket if f["type"] == "ORDER_UPDATE"]
    assert {(f["orderId"], f["filledQty"]) for f in updates} >= {(buy["orderId"], 4)}, reads
    assert socket[-1]["type"] == "RESUMED", reads
    assert (
        alert["symbol"] == "RELIANCE" and Decimal(alert["price"]) == 15100 and alert["alertId"]
    ), alert

    # The customer's journey: sign-up, KYC by ops, TOTP, a deposit, a buy, a sale.
    signup, me, kyc, deposit, funds, statement = answers(customer)
    assert signup == {"status": "ACCEPTED"} and me["kycStatus"] == "PENDING", customer
    assert kyc == kyc | {"userId": me["userId"], "kycStatus": "VERIFIED"}, customer
    assert deposit["status"] == "COMPLETED", customer
    kinds = [(r["type"], r["quantity"], r["price"]) for r in statement["rows"]]
    assert kinds == [
        ("DEPOSIT", None, None),
        ("BUY", 2, "15010.00"),
        ("SELL", 2, "15020.00"),
    ], statement  # and no FEE rows: the stack charges none (BROKERCORE_FEE_BPS=0)
    assert statement["openingBalance"] == "0.00", statement
    assert statement["rows"][-1]["balance"] == statement["closingBalance"], statement
    assert Decimal(statement["closingBalance"]) == Decimal(funds["cash"]), (statement, funds)
    csv_lines = [line for line in customer.splitlines() if line.count(",") >= 5 and line[0] != "{"]
    assert len(csv_lines) == 3 + len(kinds), customer  # header, opening, a line a row, closing

    # The order tools: reference data, a preview, a modify, cancel-all, a protected
    # market order, an AMO refused in an open market, a GTT, a bracket, a postback URL.
    (
        instrument,
        margin,
        modify,
        cancelled,
        market,
        amo,
        gtt,
        gtt_deleted,
        bracket,
        exited,
        hook,
    ) = answers(tools)
    assert instrument["symbol"] == "RELIANCE" and instrument["phase"] == "OPEN", instrument
    (preview,) = margin["orders"]
    assert preview["accepted"] and Decimal(preview["blocks"]["cash"]) == 149_000, margin
    assert Decimal(margin["total"]["cash"]) == 149_000, margin
    assert modify["status"] == "MODIFY_REQUESTED", tools
    assert modify["orderId"] in [o["orderId"] for o in cancelled["orders"]], cancelled
    assert cancelled["more"] is False, cancelled
    assert market["status"] == "FILLED" and market["filledQty"] == 2, market
    assert all(Decimal(f["price"]) <= Decimal("15050.00") for f in market["fills"]), market
    assert amo["error"]["code"] == "AMO_MARKET_OPEN", amo
    assert gtt["status"] == "ACTIVE" and gtt_deleted["status"] == "CANCELLED", (gtt, gtt_deleted)
    assert gtt_deleted["gttId"] == gtt["gttId"], gtt_deleted
    assert bracket["status"] == "ACTIVE" and exited["status"] == "EXITING", (bracket, exited)
    assert exited["bracketId"] == bracket["bracketId"], exited
    assert hook["url"] == "https://hooks.example.com/alice" and len(hook["secret"]) == 64, hook

    # Nothing left resting for the modules after this one: the cancels and the bracket's
    # exit (the trigger service cancels its entry on a later pass) are through.
    wait_until(lambda: not still_open(stack_up), "every order of the walkthrough ended")


def still_open(stack: PrivateStack) -> list[tuple[int, str]]:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute(
            "SELECT order_id, status FROM orders WHERE status = ANY(%s)", (list(OPEN_STATUSES),)
        ).fetchall()
