"""``brokercore`` commands (``engine``, ``service NAME``) as real subprocesses for the
tests, each writing its output to a log file that the test reads and waits on: kill -9
means what it says."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class LoggedProcess:
    """``python -m brokercore.cli ARGS`` in the repository, its output appended to ``log``;
    ``env`` is the whole environment (None: this process's)."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str] | None = None):
        self.log = log
        self._log_file = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "brokercore.cli", *args],
            cwd=REPO,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60.0, count: int = 1) -> None:
        """Until the log holds ``needle`` ``count`` times; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.log.name}: exited ({self.process.returncode}) "
                    f"before {needle!r}:\n{self.text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.log.name}: no {needle!r} within {timeout} s:\n{self.text()[-3000:]}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM; the exit code."""
        self.process.terminate()
        return self.process.wait(timeout)

    def close(self) -> None:
        """Killed if still running; the log closed."""
        if self.process.poll() is None:
            self.kill()
        self._log_file.close()
