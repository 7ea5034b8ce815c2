"""The edge (scripts/edge/nginx.sh: nginx in front of the API processes) on a port and
state folder of a test's own, the API processes behind it as real uvicorn processes, and
a recording upstream that shows what the edge passes on."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from private_servers import free_port
from processes import REPO, LoggedProcess

SCRIPT = REPO / "scripts/edge/nginx.sh"


class Edge:
    """nginx.sh with BROKERCORE_EDGE_{PORT,STATE} of its own and the upstreams given as
    "HOST:PORT ..." per kind (oms, query, ws, notify, accounts, funds; a kind not given
    has none, and its requests get the edge's 502). ``url`` is its base URL."""

    def __init__(self, **upstreams: str):
        self.port = free_port()
        # As root the workers run as www-data, which must reach the folder.
        self.state = Path(tempfile.mkdtemp(prefix="brokercore-edge-"))
        self.state.chmod(0o755)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "BROKERCORE_EDGE_PORT": str(self.port),
            "BROKERCORE_EDGE_STATE": str(self.state),
        } | {
            f"BROKERCORE_EDGE_{kind.upper()}": upstreams.get(kind, "")
            for kind in ("oms", "query", "ws", "notify", "accounts", "funds")
        }

    def script(self, command: str) -> str:
        """``nginx.sh COMMAND``; what it said. Fails the test if it fails."""
        done = subprocess.run(
            [str(SCRIPT), command],
            env=os.environ | self.env,
            capture_output=True,
            text=True,
            timeout=600,  # the first start installs nginx
        )
        assert done.returncode == 0, f"nginx.sh {command} failed:\n{done.stderr[-3000:]}"
        return done.stderr

    def access_log(self, count: int, timeout: float = 10.0) -> list[str]:
        """The access log's lines, once it holds ``count`` (nginx writes it each second)."""
        deadline = time.monotonic() + timeout
        path = self.state / "access.log"
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count:
                return lines
            assert time.monotonic() < deadline, f"{len(lines)} access log lines, not {count}"
            time.sleep(0.2)

    def __enter__(self) -> Edge:
        self.script("start")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.script("stop")
        finally:
            shutil.rmtree(self.state, ignore_errors=True)


class ApiProcess(LoggedProcess):
    """``brokercore service NAME`` (an HTTP service) on a free port, logging to ``log``."""

    def __init__(self, name: str, log: Path, env: Mapping[str, str]):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        # info: uvicorn's 'Uvicorn running on' line says it listens.
        super().__init__(
            ["service", name, "--port", str(self.port), "--log-level", "info"], log, env
        )

    def wait_ready(self) -> None:
        self.wait_for("Uvicorn running on", 60)


def api_env(database: str, topic_prefix: str, shards: int, **settings: str) -> dict[str, str]:
    """The environment of the test's API processes: its database, its topics and Redis
    keys under ``topic_prefix``, dev-mode tokens, an always-open market; ``settings``
    (BROKERCORE_<NAME>) win."""
    return (
        dict(os.environ)
        | {
            "BROKERCORE_DATABASE_URL": database,
            "BROKERCORE_DEV_MODE": "1",
            "BROKERCORE_TOPIC_PREFIX": topic_prefix,
            "BROKERCORE_SHARDS": str(shards),
            "BROKERCORE_REDIS_PREFIX": topic_prefix,
            "BROKERCORE_CALENDAR": "always-open",
        }
        | {f"BROKERCORE_{name.upper()}": value for name, value in settings.items()}
    )


class Recorder(ThreadingHTTPServer):
    """An upstream on a free port that answers every request 200 with what it received:
    ``{"method", "path", "headers"}``, also kept in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _Record)
        self.address = f"127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> Recorder:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Record(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the edge's upstream connections are

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
        assert isinstance(self.server, Recorder)
        self.server.requests.append(seen)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the test reads ``requests``."""
