"""The platform in miniature for the end-to-end tests: the OMS in this process, the
engine daemon of RELIANCE's shard (a subprocess) and the settlement consumer (a thread),
on fresh topics of the shared Kafka."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from brokercore.consumers.settlement import run_settlement
from brokercore.kafka.topics import partition_of
from kafka_support import Daemon
from oms_support import Api

INSTRUMENTS = "config/instruments.toml"


@contextmanager
def platform(database, tmp_path, **settings):
    """An API (not started: use ``async with``; ``settings`` override its
    ServiceSettings), the engine daemon of RELIANCE's shard, and the settlement
    consumer, on fresh topics."""
    api = Api(database, **settings)
    shard = partition_of("RELIANCE", api.kafka.shards)
    daemon = Daemon(api.kafka, shard, INSTRUMENTS, tmp_path / "engine.log")
    stop = threading.Event()
    settlement = threading.Thread(
        target=run_settlement,
        args=(api.kafka.bootstrap, api.kafka.events_topic, database, INSTRUMENTS),
        kwargs={"stop_event": stop, "say": lambda line: None},
        daemon=True,
    )
    try:
        daemon.wait_for("active from")
        settlement.start()
        yield api
    finally:
        stop.set()
        settlement.join(30)
        daemon.close()


def money(api: Api) -> tuple:
    """Cash, blocked cash, fee income, shares and blocked shares: all there is."""
    return (
        api.rows("SELECT sum(cash), sum(blocked_cash) FROM accounts")[0]
        + api.rows("SELECT coalesce(sum(amount), 0) FROM fee_income")[0]
        + api.rows("SELECT sum(quantity), sum(blocked_quantity) FROM positions")[0]
    )
