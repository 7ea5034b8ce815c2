"""A service's Postgres connections carry its name (libpq's application_name, from
``brokercore service NAME``), so pg_stat_activity tells whose each backend is and
benchmarks/bench_open.py can split the Postgres CPU by service."""

from __future__ import annotations

import os

import psycopg

from harness import write_instruments
from processes import LoggedProcess
from waiting import wait_until


def test_a_services_backends_are_named_after_it(migrated, kafka, tmp_path):
    instruments = str(tmp_path / "instruments.toml")
    write_instruments(instruments)
    env = dict(
        os.environ,
        BROKERCORE_DATABASE_URL=migrated,
        BROKERCORE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        BROKERCORE_TOPIC_PREFIX=kafka.topic_prefix,
        BROKERCORE_INSTRUMENTS=instruments,
    )
    env.pop("PGAPPNAME", None)
    settlement = LoggedProcess(["service", "settlement"], tmp_path / "settlement.log", env)
    try:
        with psycopg.connect(migrated, autocommit=True) as conn:

            def names() -> list[str]:  # a backend still starting up has none yet
                return [
                    name
                    for (name,) in conn.execute(
                        "SELECT application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ]

            wait_until(
                lambda: names() == ["brokercore-settlement"],
                "settlement's one backend named brokercore-settlement",
            )
        assert settlement.terminate() == 0
    finally:
        settlement.close()
