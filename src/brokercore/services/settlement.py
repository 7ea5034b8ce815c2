"""brokercore service settlement: settle the engine's events into Postgres until SIGTERM.

Settings are the BROKERCORE_* variables (brokercore.config): BROKERCORE_DATABASE_URL,
BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, BROKERCORE_INSTRUMENTS,
BROKERCORE_FEE_BPS, BROKERCORE_FEE_FIXED_PAISE, and BROKERCORE_REDIS_URL /
BROKERCORE_REDIS_PREFIX for the read caches it invalidates after each commit. SIGTERM or
Ctrl-C finishes the batch in hand and exits 0. A restart of Postgres or Kafka is waited
out (brokercore.consumers.pg_consumer: back-off, the batch applied again); any other failure exits 1
with nothing of the failed batch stored, so a restart resumes from the offsets in
Postgres. Several processes split the partitions of ``events`` between them (one Kafka
consumer group); when one dies, the others take its partitions over within about 6 s.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from decimal import Decimal

from brokercore.broker.risk import FeeSchedule
from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.consumers.settlement import run_settlement
from brokercore.services.consumer import Run, run_consumer


def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
    fees = FeeSchedule(Decimal(settings.fee_bps), settings.fee_fixed_paise)

    def run(kafka: KafkaSettings, settings: ServiceSettings, stop: threading.Event) -> None:
        run_settlement(
            kafka.bootstrap,
            kafka.events_topic,
            settings.database_url,
            settings.instruments,
            fees,
            stop_event=stop,
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="brokercore service settlement", description=__doc__).parse_args(
        argv
    )
    return run_consumer("settlement", prepare)
