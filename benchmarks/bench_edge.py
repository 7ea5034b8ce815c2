"""The edge's own cost: CPU per request that nginx (scripts/edge/nginx.sh) spends proxying
an order, apart from the services behind it.

Two edges on private ports and state folders: the one measured, whose OMS upstream is the
second edge, and the second, which answers every order itself (502 in JSON: it has no OMS
behind it), so the upstream costs microseconds and the measured edge is the only proxy in
the path. Clients send orders (a token, a JSON body of an order's size) over kept-alive
connections; the CPU time of each edge (master and workers, from /proc) is divided by the
requests. Run with the repository's venv:

    .venv/bin/python benchmarks/bench_edge.py [--requests 20000] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from harness import REPO, Connection, cpu_ticks, free_port, postgres_pids

SCRIPT = os.path.join(REPO, "scripts/edge/nginx.sh")
ORDER = json.dumps(
    {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 10,
        "price": "15000.00",
        "idempotencyKey": "0123456789abcdef0123456789abcdef",
    }
).encode()
TOKEN = "x" * 180  # a development token's length; the edge does not read it


class Edge:
    """nginx.sh start|stop on a port and folder of its own, the OMS upstream given."""

    def __init__(self, oms: str):
        self.port = free_port()
        self.state = tempfile.mkdtemp(prefix="brokercore-bench-edge-")
        os.chmod(self.state, 0o755)  # as root, the workers (www-data) must reach it
        self.env = dict(
            os.environ,
            BROKERCORE_EDGE_PORT=str(self.port),
            BROKERCORE_EDGE_STATE=self.state,
            BROKERCORE_EDGE_OMS=oms,
        )

    def script(self, command: str) -> None:
        subprocess.run([SCRIPT, command], env=self.env, check=True, capture_output=True)

    def pids(self) -> list[int]:
        with open(f"{self.state}/nginx.pid") as f:
            return postgres_pids(f.read().strip())  # the process and its children

    def close(self) -> None:
        self.script("stop")
        shutil.rmtree(self.state, ignore_errors=True)


def request(port: int) -> bytes:
    return (
        f"POST /api/v1/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(ORDER)}\r\n\r\n"
    ).encode() + ORDER


async def load(port: int, requests: int, connections: int) -> None:
    """``requests`` orders over ``connections`` kept-alive connections, one at a time each."""
    raw = request(port)

    async def client(n: int) -> None:
        connection = await Connection(port).open()
        try:
            for _ in range(n):
                status, _ = await connection.send(raw)
                assert status == 502, status  # the second edge's own answer
        finally:
            connection.close()

    share = requests // connections
    await asyncio.gather(*(client(share) for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    upstream = Edge("")
    upstream.script("start")
    edge = Edge(f"127.0.0.1:{upstream.port}")
    try:
        edge.script("start")
        asyncio.run(load(edge.port, 2_000, args.connections))  # warm: connections, pools
        measured, answering, client = [], [], []
        for _ in range(args.rounds):
            before = cpu_ticks({"edge": edge.pids(), "upstream": upstream.pids()})
            started = time.process_time()
            asyncio.run(load(edge.port, args.requests, args.connections))
            spent = time.process_time() - started
            after = cpu_ticks({"edge": edge.pids(), "upstream": upstream.pids()})
            n = args.requests // args.connections * args.connections
            measured.append((after["edge"] - before["edge"]) / hz / n * 1e6)
            answering.append((after["upstream"] - before["upstream"]) / hz / n * 1e6)
            client.append(spent / n * 1e6)
        print(
            f"edge (proxying): {statistics.median(measured):.1f} CPU-us/request "
            f"(rounds {', '.join(f'{m:.1f}' for m in measured)}); the answering edge "
            f"{statistics.median(answering):.1f}, the client {statistics.median(client):.1f}; "
            f"{args.requests} requests a round over {args.connections} connections"
        )
    finally:
        edge.close()
        upstream.close()


if __name__ == "__main__":
    sys.exit(main())
