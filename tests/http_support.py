"""The three HTTP services (OMS, query, notifications) in this process on the real
Postgres, Redis and Kafka, with what they log kept, for the edge and fuzz tests, and
a brokercore.client on them that the edge's routes lead to the right app."""

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
from oms_support import OPEN_MARKET, Trader
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


SERVICE_OF = {
    "orders": "oms",  # a GET goes to the query service (EdgeRoutes)
    "gtt": "oms",
    "brackets": "oms",
    "margins": "oms",
    "portfolio": "query",
    "marketdata": "query",
    "instruments": "query",
    "statement": "query",
    "trades": "query",
    "watchlists": "query",
    "operator": "query",  # the overview; accounts' KYC decisions are not served here
    "notifications": "notifications",
    "alerts": "notifications",
    "postbacks": "notifications",
}
"""The app that /api/v1/<first segment> goes to, as scripts/edge/nginx.conf.template
routes it."""


class EdgeRoutes(httpx.AsyncBaseTransport):
    """The edge's routing in this process: each request to the app that nginx would
    send it to, by its path's first segment under /api/v1/ (SERVICE_OF)."""

    def __init__(self, apps: dict):
        self.transports = {
            name: httpx.ASGITransport(app=app, raise_app_exceptions=False)
            for name, app in apps.items()
        }

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        segment = request.url.path.removeprefix("/api/v1/").split("/")[0]
        if segment == "orders" and request.method in ("GET", "HEAD"):
            return await self.transports["query"].handle_async_request(request)
        return await self.transports[SERVICE_OF[segment]].handle_async_request(request)


class Services:
    """The OMS, query, notification and gateway apps (lifespans run), an HTTP client on
    each (``self.oms``, ``self.query``, ``self.notifications``, ``self.gateway``) and a
    brokercore.client through the edge's routes for each trader (``trader``); the OMS's
    clock is in market hours."""

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
        self.routes = EdgeRoutes(self.apps)
        self._traders: dict[str, Trader] = {}

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
        while self._traders:
            await self._traders.popitem()[1].aclose()
        for name in self.apps:
            await getattr(self, name).aclose()
        while self._lifespans:
            await self._lifespans.pop().__aexit__(*exc)
        if self.settings.redis_url == REDIS_URL:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=self.kafka.topic_prefix + "*", count=1000):
                client.delete(key)
            client.close()

    def trader(self, user: str) -> Trader:
        """``user``'s client of these apps, until the ``async with`` ends."""
        if user not in self._traders:
            self._traders[user] = Trader(user, self.routes)
        return self._traders[user]

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
