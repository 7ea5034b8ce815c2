"""The OMS app run in-process on the real Postgres, Redis and Kafka, for the tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import httpx
import msgspec
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from brokercore.client import ApiError, Client, new_key
from brokercore.config import DEV_JWT_SECRET
from brokercore.edge.auth import JwtConfig, mint_token
from brokercore.entry.requests import ModifyOrderRequest, OrderAccepted, PlaceOrderRequest
from brokercore.kafka.messages import Command
from brokercore.kafka.topics import partition_of
from brokercore.services.oms import create_app
from kafka_support import new_settings
from shared_servers import KAFKA_BOOTSTRAP, service_settings

OPEN_MARKET = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)  # Wednesday 11:30 in Mumbai
SUNDAY = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
JWT = JwtConfig("brokercore-dev", "brokercore", DEV_JWT_SECRET)
RUPEES = 100  # paise
T = TypeVar("T")


class Api:
    """The OMS app in this process (its lifespan run), an HTTP client on it, a
    brokercore.client for each trader (``trader``), and the clock its order entry uses."""

    def __init__(self, database: str, bootstrap: str = KAFKA_BOOTSTRAP, **overrides):
        self.database = database
        self.kafka = new_settings(4, bootstrap)
        self.settings = service_settings(database, self.kafka.topic_prefix, **overrides)
        self.app = create_app(self.settings, self.kafka)
        self.now = OPEN_MARKET

    async def __aenter__(self):
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.app.state.oms.entry.clock = lambda: self.now
        self.transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=self.transport, base_url="http://oms")
        self._traders: dict[str, Trader] = {}
        return self

    async def __aexit__(self, *exc):
        for trader in self._traders.values():
            await trader.aclose()
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)

    async def placed(self, user: str = "alice", **fields) -> OrderAccepted:
        """``user``'s ``order(**fields)``, accepted (a 202)."""
        trader = self.trader(user)
        accepted = await trader.place(order(**fields))
        assert trader.statuses[-1] == 202, trader.statuses
        return accepted

    def trader(self, user: str) -> Trader:
        """``user``'s client of this OMS, until the ``async with`` ends."""
        if user not in self._traders:
            self._traders[user] = Trader(user, self.transport)
        return self._traders[user]

    async def place(self, user="alice", token=None, **body):
        order = {
            "symbol": "RELIANCE",
            "side": "BUY",
            "type": "LIMIT",
            "quantity": 10,
            "price": "15000.00",
            "idempotencyKey": uuid.uuid4().hex,
        } | body
        return await self.client.post(
            "/api/v1/orders", json=order, headers=auth(user) if token is None else token
        )

    async def cancel(self, order_id, user="alice"):
        return await self.client.delete(f"/api/v1/orders/{order_id}", headers=auth(user))

    def rows(self, query: str, *args):
        with psycopg.connect(self.database) as conn:
            return conn.execute(query, args).fetchall()

    def wait_rows(self, query: str, expected, *args, timeout: float = 30.0) -> float:
        """Seconds it took until ``query`` gave ``expected``; fails after ``timeout``."""
        started = time.monotonic()
        while (rows := self.rows(query, *args)) != expected:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{query!r} gave {rows}, not {expected}, within {timeout} s")
            time.sleep(0.1)
        return time.monotonic() - started

    def commands(self, symbol: str = "RELIANCE") -> list:
        """Every command on the symbol's partition of `orders`."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap,
                "group.id": uuid.uuid4().hex,
                "enable.partition.eof": True,
            }
        )
        consumer.assign(
            [
                TopicPartition(
                    self.kafka.orders_topic,
                    partition_of(symbol, self.kafka.shards),
                    OFFSET_BEGINNING,
                )
            ]
        )
        decoder, found = msgspec.msgpack.Decoder(Command), []
        try:
            while (message := consumer.poll(10)) is not None and not message.error():
                found.append(decoder.decode(message.value()))
        finally:
            consumer.close()
        return found


class Trader(Client):
    """A client of the apps behind ``transport`` (or of ``base_url``) logged in as
    ``user`` with ``roles`` (a development token), which keeps the HTTP status of each
    answer (``statuses``, oldest first): the client's typed answers hide it."""

    def __init__(
        self,
        user: str,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        base_url: str = "http://edge",
        roles: tuple[str, ...] = (),
    ):
        token = mint_token(user, JWT, roles=roles)
        super().__init__(base_url, token, transport=transport, timeout=30)
        self.statuses: list[int] = []
        self.http.event_hooks["response"].append(self._keep_status)

    async def _keep_status(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)


async def outcome(call: Awaitable[T]) -> T | ApiError:
    """What awaiting ``call`` gives: its answer, or the refusal it raises."""
    try:
        return await call
    except ApiError as refused:
        return refused


async def refusal(call) -> tuple[int, str]:
    """The (HTTP status, error code) of the ApiError that awaiting ``call`` raises."""
    try:
        answer = await call
    except ApiError as error:
        return error.status, error.code
    raise AssertionError(f"not refused: {answer}")


def _decimals(fields: dict) -> dict:
    """``fields`` with the prices given as strings made Decimals."""
    prices = ("price", "trigger_price", "market_protection")
    return {k: Decimal(v) if k in prices and isinstance(v, str) else v for k, v in fields.items()}


def order(**fields) -> PlaceOrderRequest:
    """A limit buy of 10 RELIANCE at 15,000.00 with a fresh idempotency key, ``fields``
    (the Struct's names; prices as strings) changed."""
    defaults = {"symbol": "RELIANCE", "side": "BUY", "type": "LIMIT", "quantity": 10}
    defaults |= {"price": Decimal("15000.00"), "idempotency_key": new_key()}
    return PlaceOrderRequest(**(defaults | _decimals(fields)))


def change(**fields) -> ModifyOrderRequest:
    """A modify to ``fields`` (prices as strings) with a fresh idempotency key, unless
    ``fields`` gives one."""
    return ModifyOrderRequest(**({"idempotency_key": new_key()} | _decimals(fields)))


def auth(user: str, **claims) -> dict:
    return {"Authorization": f"Bearer {mint_token(user, JWT)}"}


def run(scenario):
    return asyncio.run(scenario())
