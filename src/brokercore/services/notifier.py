"""brokercore service notifier: tell users about their orders and price alerts, until SIGTERM.

    brokercore service notifier [--from-beginning] [--concurrency 64]

Consumes ``events`` (read_committed) in its own Kafka consumer group
(``brokercore.notify.consumer``): in-app notifications are published before the next
batch is read, and each push runs as its own task, at most ``--concurrency`` sends at
once. The group's offsets are committed only past messages whose pushes are all
delivered or dead-lettered, so a crash re-delivers and never skips one.

A new group starts at the end of ``events`` (no flood of old news on a first start)
unless ``--from-beginning``. Settings: the BROKERCORE_* variables (brokercore.config),
BROKERCORE_PUSH_URL and BROKERCORE_PUSH_RETRY_BASE / _CAP / _ATTEMPTS among them;
without a push URL only in-app notifications go out. Order notifications are also POSTed
to the users' postback URLs (docs/postbacks.md; BROKERCORE_POSTBACK_TIMEOUT, _PER_URL,
_CA_FILE), on the pushes' retry schedule. SIGTERM or Ctrl-C stops reading,
gives pushes in flight a few seconds, commits what is done and exits 0; a failure exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Sequence

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.notify.consumer import run_notifier
from brokercore.services.consumer import Run, run_consumer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="brokercore service notifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new consumer group starts at the oldest event, not the end",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="pushes and postbacks sent at once at most"
    )
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per push

    def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> None:
        asyncio.run(
            run_notifier(
                settings,
                kafka,
                stop,
                from_beginning=args.from_beginning,
                concurrency=args.concurrency,
            )
        )

    def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
        return run

    return run_consumer("notifier", prepare)
