"""WebSocket gateways as real uvicorn processes, and real clients of them, for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from brokercore.config import DEV_JWT_SECRET
from brokercore.edge.auth import JwtConfig, mint_token
from processes import LoggedProcess

JWT = JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET)
WAIT = 30.0  # seconds any expected frame or state may take at most


class Server(LoggedProcess):
    """`brokercore service ws` on a free port, logging to a file."""

    def __init__(self, log: Path, env: dict):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        super().__init__(
            [
                "service",
                "ws",
                "--port",
                str(self.port),  # info: the line
                "--log-level",
                "info",
            ],
            log,
            env,
        )  # wait_ready awaits

    def wait_ready(self) -> None:
        self.wait_for("Uvicorn running on", WAIT)  # listening

    def url(self, **params) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"ws://127.0.0.1:{self.port}/ws/v1/orders" + (f"?{query}" if query else "")

    def stop(self) -> int:
        """SIGTERM, then kill -9 if it has not exited within WAIT s; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # close() kills it
                self.terminate(WAIT)
        self.close()
        return self.process.returncode


def token(user: str, **kwargs) -> str:
    return mint_token(user, JWT, **kwargs)


async def open_socket(
    server: Server, user: str, *, in_query: bool = False, **params
) -> tuple[ClientConnection, dict]:
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
