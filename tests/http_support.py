"""The three HTTP services (OMS, query, notifications) in this process on the real
Postgres, Redis and Kafka, with what they log kept, for the edge and fuzz tests."""

from __future__ import annotations

import logging

import httpx
import psycopg
import redis

from brokercore.services.notifier_api import create_app as notifications_app
from brokercore.services.oms import create_app as oms_app
from brokercore.services.query import create_app as query_app
from brokercore.services.ws import create_app as gateway_app
from kafka_support import new_settings
from oms_support import OPEN_MARKET
from shared_servers import REDIS_URL, service_settings

STORED = (
    "orders",
    "idempotency_keys",
    "outbox",
    "push_devices",
    "price_alerts",
    "postbacks",
    "notification_preferences",
    "watchlists",
    "watchlist_symbols",
    "gtts",
    "brackets",
)
"""The tables a request of a client can add rows to."""


class LogRecords(logging.Handler):
    """Every record at WARNING or above, and every record with a traceback, of any logger."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [self.format(r) for r in self.records if r.exc_info or r.levelno >= logging.ERROR]

    def __enter__(self):
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


class Services:
    """The OMS, query, notification and gateway apps (lifespans run), an HTTP client on
    each (``self.oms``, ``self.query``, ``self.notifications``, ``self.gateway``); the
    OMS's clock is in market hours."""

    def __init__(self, database: str, **overrides):
        self.database = database
        self.kafka = new_settings(4)
        self.settings = service_settings(database, self.kafka.topic_prefix, **overrides)
        self.apps = {
            "oms": oms_app(self.settings, self.kafka),
            "query": query_app(self.settings),
            "notifications": notifications_app(self.settings),
            "gateway": gateway_app(self.settings),
        }
        self._lifespans = []
        self._counter: psycopg.Connection | None = None

    async def __aenter__(self):
        for name, app in self.apps.items():
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            self._lifespans.append(lifespan)
            setattr(
                self,
                name,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                    base_url=f"http://{name}",
                ),
            )
        self.apps["oms"].state.oms.entry.clock = lambda: OPEN_MARKET
        return self

    async def __aexit__(self, *exc):
        if self._counter is not None:
            self._counter.close()
        for name in self.apps:
            await getattr(self, name).aclose()
        while self._lifespans:
            await self._lifespans.pop().__aexit__(*exc)
        if self.settings.redis_url == REDIS_URL:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=self.kafka.topic_prefix + "*", count=1000):
                client.delete(key)
            client.close()

    def stored(self) -> dict[str, int]:
        """Rows in each table a client's request can write to."""
        if self._counter is None or self._counter.closed:
            self._counter = psycopg.connect(self.database, autocommit=True)
        counts = self._counter.execute(
            "SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in STORED)
        ).fetchone()
        return dict(zip(STORED, counts, strict=True))


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is ``status`` with the JSON error shape (and ``code``); its error."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert set(error) <= {"code", "message", "fields"}, error
    if code is not None:
        assert error["code"] == code, error
    return error
