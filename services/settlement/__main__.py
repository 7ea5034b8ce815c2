"""python -m services.settlement: settle the engine's events into Postgres until SIGTERM.

Settings are the BROKERCORE_* variables (brokercore.config): BROKERCORE_DATABASE_URL,
BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, BROKERCORE_INSTRUMENTS,
BROKERCORE_FEE_BPS, BROKERCORE_FEE_FIXED_PAISE, and BROKERCORE_REDIS_URL /
BROKERCORE_REDIS_PREFIX for the read caches it invalidates after each commit. SIGTERM or
Ctrl-C finishes the batch in hand and exits 0; any failure exits 1 with nothing of the
failed batch stored, so a restart resumes from the offsets in Postgres.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from decimal import Decimal

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.risk import FeeSchedule
from brokercore.settlement import run_settlement


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kafka, settings = KafkaSettings.from_env(), ServiceSettings.from_env()
        fees = FeeSchedule(Decimal(settings.fee_bps), settings.fee_fixed_paise)
    except (ValueError, ArithmeticError) as e:
        logging.getLogger("brokercore.settlement").error("bad settings: %s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_settlement(kafka.bootstrap, kafka.events_topic, settings.database_url,
                       settings.instruments, fees, stop_event=stop,
                       redis_url=settings.redis_url, redis_prefix=settings.redis_prefix)
    except Exception:
        logging.getLogger("brokercore.settlement").exception("settlement failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
