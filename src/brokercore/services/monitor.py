"""brokercore service monitor: every consumer's lag on every partition, logged every few
seconds, and a WARNING for each partition past the bound.

The consumers: the engine daemons (group brokercore-engine-K, committed offsets on
partition K of ``orders``), the Postgres consumers (settlement, the projector: their
offsets in ``consumer_offsets``, on ``events``) and the notifier (its Kafka group on
``events``). ``brokercore status`` reads the same figures once. Settings are the
BROKERCORE_* variables (Kafka, BROKERCORE_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence

import psycopg
from confluent_kafka import KafkaException

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.kafka.lag import LAG_BOUND, KafkaLagProbe, PartitionLag, over_bound, summary
from brokercore.notify.consumer import notifier_group_id
from brokercore.services.consumer import Run, run_consumer

__all__ = ["platform_lags", "main"]

log = logging.getLogger("brokercore.monitor")


def platform_lags(
    kafka: KafkaSettings, database_url: str, probe: KafkaLagProbe
) -> tuple[dict[str, list[PartitionLag]], list[str]]:
    """consumer -> its lag on each partition ("engine": every shard's daemon, on its
    partition of orders); and what could not be measured, in words (Postgres away: the
    Postgres consumers are left out)."""
    shards = range(kafka.shards)
    engine = {
        k: probe.group_positions(kafka.engine_group(k), kafka.orders_topic, [k])[k] for k in shards
    }
    notifier = probe.group_positions(
        notifier_group_id(kafka.topic_prefix), kafka.events_topic, shards
    )
    problems = []
    stored: dict[str, dict[int, int | None]] = defaultdict(dict)
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT consumer, partition, next_offset FROM consumer_offsets WHERE topic = %s",
                (kafka.events_topic,),
            ).fetchall()
        for consumer, partition, offset in rows:
            stored[consumer][partition] = offset
    except psycopg.Error as e:
        problems.append(f"the Postgres consumers' offsets: {_first_line(e)}")
    orders = probe.watermarks(kafka.orders_topic, kafka.shards)
    events = probe.watermarks(kafka.events_topic, kafka.shards)
    lags = {
        "engine": [
            lag
            for k in shards
            for lag in probe.lags(f"engine-{k}", kafka.orders_topic, engine, {k: orders[k]})
        ]
    }
    for consumer in sorted(stored):
        lags[consumer] = probe.lags(consumer, kafka.events_topic, stored[consumer], events)
    lags["notifier"] = probe.lags("notifier", kafka.events_topic, notifier, events)
    return lags, problems


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def monitor(
    kafka: KafkaSettings, database_url: str, every: float, bound: int, stop: threading.Event
) -> None:
    """A round every ``every`` seconds until ``stop``: a line per consumer, a WARNING per
    partition past ``bound``. A failed round (Kafka away) is logged and the next tried."""
    probe = KafkaLagProbe(kafka.bootstrap)
    while True:
        try:
            lags, problems = platform_lags(kafka, database_url, probe)
        except (KafkaException, TimeoutError) as e:  # Kafka away or slow: try next round
            log.warning("lag not measured: %s", e)
        else:
            for problem in problems:
                log.warning("lag not measured: %s", problem)
            for name, readings in lags.items():
                log.info("%s", summary(name, readings))
            for lag in over_bound((r for rs in lags.values() for r in rs), bound):
                log.warning("%s, past the bound of %s", lag.describe(), f"{bound:,}")
        if stop.wait(every):
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brokercore service monitor", description=__doc__)
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds between rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--bound",
        type=int,
        default=LAG_BOUND,
        help="messages behind on a partition past which a WARNING is logged (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    def prepare(kafka: KafkaSettings, settings: ServiceSettings) -> Run:
        return lambda kafka, settings, stop: monitor(
            kafka, settings.database_url, args.every, args.bound, stop
        )

    return run_consumer("monitor", prepare)
