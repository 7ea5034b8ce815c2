"""python -m services.projector: project the engine's events into the read model and
push them through Redis, until SIGTERM.

Settings are the BROKERCORE_* variables (brokercore.config): BROKERCORE_DATABASE_URL,
BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, BROKERCORE_INSTRUMENTS,
BROKERCORE_REDIS_URL, BROKERCORE_REDIS_PREFIX. SIGTERM or Ctrl-C finishes the batch in
hand and exits 0; any failure exits 1 with nothing of the failed batch stored, so a
restart resumes from the offsets in Postgres. Redis being down stops nothing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.projector import run_projector


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("brokercore.projector")
    try:
        kafka, settings = KafkaSettings.from_env(), ServiceSettings.from_env()
    except ValueError as e:
        log.error("bad settings: %s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_projector(kafka.bootstrap, kafka.events_topic, settings.database_url,
                      settings.instruments, settings.redis_url, settings.redis_prefix,
                      stop_event=stop)
    except Exception:
        log.exception("projector failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
