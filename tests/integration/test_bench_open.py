"""benchmarks/bench_open.py --quick: the whole stack of `make up` under a short, slow market
open, and the benchmark's own checks (every order at the engine once, settled once,
projected, money conserved, the reconciler's report empty, no 5xx, no process
restarted). Its speed is not asserted: the figures are for a quiet machine (`make
bench-open`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = (
    "every order reached the engine exactly once",
    "every order settled exactly once",
    "every order projected",
    "money conserved to the paisa",
    "the reconciler's report is empty",
    "no 5xx answer",
    "no process restarted",
)


def test_quick_market_open_passes_its_checks(postgres, kafka_bootstrap, tmp_path):
    numbers = tmp_path / "open.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_open.py", "--quick", "--json", str(numbers)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for name in CHECKS:
        assert f"PASS  {name}:" in output, output
    assert "FAIL" not in output, output
    assert '"accepted_per_s"' in numbers.read_text()
