"""The web app's secondary screens and the API reference in a real browser (issue 17):
Debian's chromium driven by Playwright (playwright-core) through the stack's edge.

web/e2e/secondary.mjs does the browsing and checking: alice's deposit shows in her
statement, a fill of hers arrives in her inbox live, a GTT she creates is listed (then
deleted), a bracket she places is shown and exited; ops, an operator, sees every shard
alive on the operator's page, which alice cannot open; /api/docs renders the OpenAPI
document with nothing loaded from another origin. Screenshots go to
$BROKERCORE_SCREENSHOTS (default: a folder of the test's own).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from stack_support import REPO, PrivateStack, stack_up_fixture  # noqa: F401 (fixture)

E2E_TIMEOUT = 180  # seconds; the run takes about 30 s here
SCREENS = ("funds", "statement", "inbox", "gtt", "brackets", "operator", "api-docs")


def test_secondary_screens_and_the_api_reference(stack_up: PrivateStack, tmp_path):
    subprocess.run([REPO / "scripts/web/build.sh"], check=True, timeout=600)
    subprocess.run([REPO / "scripts/browser/chromium.sh", "install"], check=True, timeout=600)
    chromium = subprocess.run(
        [REPO / "scripts/browser/chromium.sh", "path"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    page = httpx.get(f"{stack_up.edge}/api/docs", timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]

    logins = json.loads((stack_up.root / ".stack/demo-users.json").read_text())
    screenshots = os.environ.get("BROKERCORE_SCREENSHOTS") or str(tmp_path / "screenshots")
    run = subprocess.run(
        ["node", REPO / "web/e2e/secondary.mjs"],
        env=os.environ
        | {
            "BROKERCORE_EDGE": stack_up.edge,
            "BROKERCORE_LOGINS": json.dumps(logins),
            "BROKERCORE_SCREENSHOTS": screenshots,
            "BROKERCORE_CHROMIUM": chromium,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=E2E_TIMEOUT,
    )
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout}\n{stack_up.logs()}"
    shots = {p.name for p in Path(screenshots).glob("*.png")}
    assert {f"{screen}.png" for screen in SCREENS} <= shots, sorted(shots)
