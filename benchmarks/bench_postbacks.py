"""CPU per postback (brokercore.notify.postbacks): the notifier's side of one order
notification POSTed, signed, over HTTPS to a user's endpoint, certificate verified.

    PYTHONPATH=tests .venv/bin/python benchmarks/bench_postbacks.py [--postbacks 2000]

The endpoint (tests/postback_endpoint.py, keep-alive, a certificate from a CA made here)
runs in a child process, so its CPU is not counted. Each repeat sends --postbacks
postbacks to one registration, all started at once as the notifier starts them (at most
``per_url`` in flight, the default 4), and divides this process's CPU time by them.
Needs no server (the dead-letter producer, never used, names the default Kafka). It
prints numbers (the median and every repeat); it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brokercore.config import KafkaSettings
from brokercore.notify.dead_letters import DeadLetters
from brokercore.notify.postbacks import Postback, Postbacks, Target
from brokercore.realtime.channels import Notification
from postback_endpoint import Authority  # tests/ (PYTHONPATH)

REPO = Path(__file__).resolve().parents[1]

_SERVE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from postback_endpoint import Endpoint
endpoint = Endpoint(sys.argv[2], sys.argv[3])
print(endpoint.port, flush=True)
time.sleep(3600)
"""


async def measure(port: int, ca_file: Path, postbacks: int, repeats: int) -> list[float]:
    """CPU-µs per postback of each repeat (after a warm-up)."""
    dead_letters = DeadLetters(KafkaSettings().bootstrap, "bench-postbacks.dead-letters")
    sender = Postbacks(dead_letters, ca_file=str(ca_file))
    slots = asyncio.Semaphore(64)  # the notifier's --concurrency
    target = Target(1, f"https://127.0.0.1:{port}/hooks", "s" * 64)

    async def send_all(tag: str, n: int) -> None:
        await asyncio.gather(
            *(
                sender.send(
                    Postback(
                        "alice",
                        target,
                        Notification(f"{tag}:{i}", "FILL", "Order filled", "b", "RELIANCE", "t", i),
                    ),
                    slots,
                )
                for i in range(n)
            )
        )

    try:
        await send_all("warm", 100)
        costs = []
        for repeat in range(repeats):
            start = time.process_time()
            await send_all(str(repeat), postbacks)
            costs.append((time.process_time() - start) / postbacks * 1e6)
        return costs
    finally:
        await sender.aclose()
        dead_letters.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postbacks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-postbacks-"))
    authority = Authority(folder, "bench")
    cert, key = authority.issue("loopback", ["127.0.0.1"])
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(REPO / "tests"), str(cert), str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        costs = asyncio.run(measure(port, authority.ca_file, args.postbacks, args.repeats))
    finally:
        server.kill()
        server.wait()
    print(
        f"CPU per postback: median {statistics.median(costs):.0f} us "
        f"({', '.join(f'{c:.0f}' for c in costs)}), {args.postbacks} postbacks x {args.repeats}"
    )


if __name__ == "__main__":
    main()
