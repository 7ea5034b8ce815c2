"""WebSocket gateways as real uvicorn processes, and real clients of them, for the tests."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from brokercore.config import DEV_JWT_SECRET
from brokercore.edge.auth import JwtConfig, mint_token

REPO = Path(__file__).resolve().parents[1]
JWT = JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET)
WAIT = 30.0                 # seconds any expected frame or state may take at most


class Server:
    """`brokercore service ws` on a free port, logging to a file."""

    def __init__(self, log: Path, env: dict):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = log
        self._log_file = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "brokercore.cli", "service", "ws", "--port", str(self.port),
             "--log-level", "info"],
            cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while "Uvicorn running on" not in self.log.read_text(errors="replace"):  # listening
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def url(self, **params) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"ws://127.0.0.1:{self.port}/ws/v1/orders" + (f"?{query}" if query else "")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def token(user: str, **kwargs) -> str:
    return mint_token(user, JWT, **kwargs)


async def open_socket(server: Server, user: str, *, in_query: bool = False,
                      **params) -> tuple[ClientConnection, dict]:
    """A socket of ``user``, with its WELCOME frame."""
    if in_query:
        params["token"] = token(user)
    headers = {} if in_query else {"Authorization": f"Bearer {token(user)}"}
    ws = await connect(server.url(**params), additional_headers=headers, ping_interval=None)
    welcome = await receive(ws)
    assert welcome["type"] == "WELCOME" and welcome["userId"] == user, welcome
    return ws, welcome


async def receive(ws: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


