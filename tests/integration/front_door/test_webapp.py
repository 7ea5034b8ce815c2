"""The web app in a real browser, end to end (issue 17): Debian's chromium driven by
Playwright (playwright-core) through the stack's edge, which serves the app at `/`.

Scripts in web/e2e/ do the browsing and checking (trading.mjs the core screens,
secondary.mjs the others, market.mjs a simulated market: the README's screenshot), each
exiting non-zero at its first failed check, its output shown here. All run against the
front door's shared stack, after its other modules (conftest.py). Screenshots of each
screen go to $BROKERCORE_SCREENSHOTS (default: a folder of the test's own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from stack_support import REPO, PrivateStack

E2E_TIMEOUT = 240  # seconds; the run takes under a minute here
MARKET = "TCS"  # simulated by the last test; the other browser tests do not trade it


def prepared() -> str:
    """The web app built (skipped when up to date) and chromium installed (when missing);
    the browser's path."""
    subprocess.run([REPO / "scripts/web/build.sh"], check=True, timeout=600)
    subprocess.run([REPO / "scripts/browser/chromium.sh", "install"], check=True, timeout=600)
    return subprocess.run(
        [REPO / "scripts/browser/chromium.sh", "path"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()


def test_the_edge_serves_the_app_and_keeps_unknown_api_paths_json(stack_up: PrivateStack):
    prepared()
    with httpx.Client(base_url=stack_up.edge, timeout=10) as client:
        for path in ("/", "/symbol/RELIANCE", "/orders"):  # the app's router owns its paths
            page = client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-type"].startswith("text/html")
            assert '<main id="main"' in page.text
        script = page.text.split('src="', 1)[1].split('"', 1)[0]
        asset = client.get(script)
        assert asset.status_code == 200
        assert asset.headers["content-type"] == "application/javascript"
        assert "immutable" in asset.headers["cache-control"]
        for method, path in (("GET", "/api/v1/nothing"), ("GET", "/ws/v1/nothing"), ("POST", "/")):
            answer = client.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "NOT_FOUND"


def test_two_users_trade_in_two_browsers(stack_up: PrivateStack, tmp_path):
    """web/e2e/trading.mjs: a new user signs up, sets up the second factor and logs in
    with it by keyboard alone, and watches prices move on the watchlist; alice (a
    desktop) and bob (a phone-sized screen), in two browser contexts, place a limit order
    and cross it and both see the fill live; the portfolio and the statement change; a
    stop-loss triggers and shows; a modify and a cancel work; a refused access token is
    refreshed; an order update missed while the socket was down arrives on the resume;
    the phase banner shows a halt, then the pre-open with its indicative price."""
    shots = browse(stack_up, "trading.mjs", tmp_path)
    for screen in (
        "signup",
        "watchlist",
        "symbol",
        "symbol-phone",
        "orders",
        "positions",
        "phase-pre-open",
        "phase-closed",
    ):
        assert f"{screen}.png" in shots, sorted(shots)


def test_secondary_screens_and_the_api_reference(stack_up: PrivateStack, tmp_path):
    """web/e2e/secondary.mjs: alice's deposit shows in her statement, her fill arrives in
    her inbox live, a GTT she creates is listed, a bracket she places is shown and exited;
    ops sees every shard alive on the operator's page, which alice cannot open; /api/docs
    renders the OpenAPI document under a policy that loads nothing from another origin."""
    docs = httpx.get(f"{stack_up.edge}/api/docs", timeout=10)
    assert docs.status_code == 200, docs.text
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    shots = browse(stack_up, "secondary.mjs", tmp_path)
    for screen in ("funds", "statement", "inbox", "gtt", "brackets", "operator", "api-docs"):
        assert f"{screen}.png" in shots, sorted(shots)


def test_a_living_market_for_the_readme(stack_up: PrivateStack, tmp_path):
    """web/e2e/market.mjs, while `brokercore simulate` trades MARKET (8 traders, 20
    requests/s): candles forming, both sides of the book, trades arriving, the last price
    moving. Last in the module, as the simulator stays until the end of it. With
    BROKERCORE_UPDATE_SCREENSHOTS=1 its market.png becomes docs/screenshots/market.png."""
    simulate = [sys.executable, "-m", "brokercore.cli", "simulate", "--api", stack_up.edge]
    simulate += ["--url", stack_up.database_url, "--symbols", MARKET, "--traders", "8"]
    simulate += ["--rate", "20", "--open-burst", "40"]
    log = (tmp_path / "simulate.log").open("w")
    simulator = subprocess.Popen(
        simulate, cwd=REPO, env=stack_up.env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        shots = browse(stack_up, "market.mjs", tmp_path, BROKERCORE_MARKET_SYMBOL=MARKET)
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator.wait(timeout=60)
        log.close()
    summary = (tmp_path / "simulate.log").read_text()
    print(summary)
    assert simulator.returncode == 0, summary  # no 5xx met
    assert {"market.png", "market-phone.png"} <= shots.keys(), sorted(shots)
    if os.environ.get("BROKERCORE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shots["market.png"], REPO / "docs/screenshots/market.png")


def browse(stack_up: PrivateStack, script: str, tmp_path: Path, **settings: str) -> dict[str, Path]:
    """Run web/e2e/SCRIPT against the stack as the demo users, with its own SETTINGS
    (environment); the screenshots it saved, by name."""
    chromium = prepared()
    logins = json.loads((stack_up.root / ".stack/demo-users.json").read_text())
    screenshots = os.environ.get("BROKERCORE_SCREENSHOTS") or str(tmp_path / "screenshots")
    run = subprocess.run(
        ["node", REPO / "web/e2e" / script],
        env=stack_up.env  # the stack's settings, for `brokercore halt` and `resume`
        | {
            "BROKERCORE_CLI": json.dumps([sys.executable, "-m", "brokercore.cli"]),
            "BROKERCORE_EDGE": stack_up.edge,
            "BROKERCORE_LOGINS": json.dumps(logins),
            "BROKERCORE_SCREENSHOTS": screenshots,
            "BROKERCORE_CHROMIUM": chromium,
        }
        | settings,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=E2E_TIMEOUT,
    )
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout}\n{stack_up.logs()}"
    return {p.name: p for p in Path(screenshots).glob("*.png")}
