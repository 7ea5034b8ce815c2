"""Private Postgres, Redis and Kafka servers for the tests that stop, kill or restart
them: the project's own scripts (scripts/<server>/<server>.sh) on a port and a state
folder of the test's own, so the shared servers other tests use are never touched."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port(span: int = 1) -> int:
    """A free loopback port, with the ``span - 1`` ports after it free too (Kafka's
    controller listens on port + 1), below the ephemeral range, so that no client's
    outgoing connection takes it before the server binds it (or while it is down)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(20_000, low - span)
        if all(_free(port + i) for i in range(span)):
            return port
    raise RuntimeError("no free port")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PrivateServer:
    """scripts/<server>/<server>.sh with BROKERCORE_<VARIABLE>_{PORT,STATE} of its own.
    ``state`` defaults to a fresh folder in /tmp, not pytest's tmp_path: as root,
    Postgres runs as the postgres OS user, which must reach it. ``env`` holds just
    those settings (the scripts run with os.environ and them)."""

    server: str  # scripts/<server>/<server>.sh
    variable: str  # BROKERCORE_<variable>_PORT / _STATE
    span = 1  # ports taken from .port on

    def __init__(self, state: Path | None = None, **settings: str):
        self.port = free_port(self.span)
        self.state = (
            state
            or Path(tempfile.gettempdir()) / f"brokercore-{self.server}-{uuid.uuid4().hex[:12]}"
        )
        self.env = {
            f"BROKERCORE_{self.variable}_PORT": str(self.port),
            f"BROKERCORE_{self.variable}_STATE": str(self.state),
        } | settings

    def script(self, command: str, timeout: float = 300) -> str:
        """Run ``<server>.sh COMMAND``; its standard output. Fails the test if it fails."""
        script = f"scripts/{self.server}/{self.server}.sh"
        done = subprocess.run(
            [str(REPO / script), command],
            env=os.environ | self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"{script} {command} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def start(self) -> None:
        """Start it (installing, initialising the first time); returns once it answers."""
        self.script("start")

    def stop(self) -> None:
        self.script("stop")

    def remove(self) -> None:
        """Stop it and remove its state."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self):
        """Started; removed at the end of the block."""
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class PrivatePostgres(PrivateServer):
    """``url``: the application's connection URL (role and database brokercore)."""

    server, variable = "postgres", "PG"

    def __init__(self, state: Path | None = None, **settings: str):
        super().__init__(state, **settings)
        self.url = self.script("url")

    def crash_restart(self) -> None:
        """Every backend killed at once, no shutdown checkpoint, then started again
        (crash recovery); returns once it answers."""
        self.script("crash-restart")

    def superuser_url(self) -> str:
        """The superuser's URL (database postgres, through the Unix socket)."""
        return self.script("superuser-url")

    def replica(self) -> PrivateReplica:
        """A streaming replica of this server (not started yet)."""
        return PrivateReplica(self)


class PrivateReplica(PrivateServer):
    """A streaming hot standby of ``primary`` (postgres.sh replica-*), on a port and
    state folder of its own; ``url``: the application's URL on it. Starting it makes
    the primary allow replication (started first if need be)."""

    server, variable = "postgres", "PG_REPLICA"

    def __init__(self, primary: PrivatePostgres, state: Path | None = None):
        super().__init__(state, **primary.env)
        self.primary = primary
        self.url = self.script("replica-url")

    def start(self) -> None:
        self.script("replica-start")

    def stop(self) -> None:
        self.script("replica-stop")

    def superuser_url(self) -> str:
        return self.script("replica-superuser-url")


class PrivateRedis(PrivateServer):
    """``url``: its connection URL."""

    server, variable = "redis", "REDIS"

    def __init__(self, state: Path | None = None, **settings: str):
        super().__init__(state, **settings)
        self.url = self.script("url")

    def kill(self) -> None:
        """kill -9 the server: every key is gone (nothing is persisted)."""
        self.script("kill")


class PrivateKafka(PrivateServer):
    """A single-node broker; ``bootstrap``: its address. ``start`` waits up to 240 s:
    on two busy cores a broker recovering its logs after a kill -9 may wait out its own
    old registration first."""

    server, variable, span = "kafka", "KAFKA", 2

    def __init__(self, state: Path | None = None, **settings: str):
        super().__init__(state, **({"BROKERCORE_KAFKA_START_WAIT": "240"} | settings))
        self.bootstrap = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9 the broker: no clean shutdown of any kind."""
        self.script("kill")
