"""brokercore service projector: project the engine's events into the read model and
push them through Redis, until SIGTERM.

Settings are the BROKERCORE_* variables (brokercore.config): BROKERCORE_DATABASE_URL,
BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, BROKERCORE_INSTRUMENTS,
BROKERCORE_REDIS_URL, BROKERCORE_REDIS_PREFIX. SIGTERM or Ctrl-C finishes the batch in
hand and exits 0. A restart of Postgres or Kafka is waited out (brokercore.consumers.pg_consumer);
any other failure exits 1 with nothing of the failed batch stored, so a restart resumes
from the offsets in Postgres. Redis being down stops nothing.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.projector import run_projector
from brokercore.services.consumer import Run, run_consumer


def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> None:
    run_projector(
        kafka.bootstrap,
        kafka.events_topic,
        settings.database_url,
        settings.instruments,
        settings.redis_url,
        settings.redis_prefix,
        stop_event=stop,
    )


def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
    return run


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="brokercore service projector", description=__doc__).parse_args(
        argv
    )
    return run_consumer("projector", prepare)
