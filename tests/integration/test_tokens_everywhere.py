"""Every service verifies tokens the same way: the platform's services as real processes
on the real Postgres, Redis and Kafka, configured as in production (no development
secret; the keys from the accounts service's JWKS at BROKERCORE_JWKS_URL).

An expired token and a token of a revoked session (logged out) are refused by every
service, 401 with the JSON error (the WebSocket gateway: an ERROR frame and close code
4401, and a socket open at the logout is closed so). An external OpenID Connect
provider's tokens (its key set served by a real HTTP server here) are refused by the
services configured with the built-in JWKS and accepted by a service configured with
the provider's JWKS URL and issuer. The OMS refuses the
orders of an account whose KYC is PENDING or REJECTED (403 ACCOUNT_NOT_VERIFIED,
nothing stored) and still lets it cancel and read its data.

Each service is started once for the module (a start costs a second or two of CPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from brokercore.broker.funding import fund, open_account
from brokercore.db.migrations import apply_migrations, drop_database
from brokercore.edge.auth import JwtConfig, mint_token
from http_support import assert_error
from jwks_support import JwksServer, signing_key
from kafka_support import new_settings
from private_servers import free_port
from processes import LoggedProcess
from shared_servers import REDIS_URL
from waiting import wait_until

EXTERNAL_ISSUER = "https://idp.example.test"
EXTERNAL_KEY = signing_key("external-1")  # the external provider's signing key
EXTERNAL_USER = "ext-7f3a"  # the external provider's subject, with an account here
PASSWORD = "correct horse battery staple"
CASH = 1_000_000 * 100  # paise
WAIT = 30.0

PROBES = {
    "oms": ("DELETE", "/api/v1/orders/1"),
    "query": ("GET", "/api/v1/portfolio"),
    "notifier-api": ("GET", "/api/v1/notifications/preferences"),
    "funds": ("GET", "/api/v1/funds"),
    "accounts": ("GET", "/api/v1/me"),
}
"""An authenticated request to each HTTP service (the token is checked first)."""


class Service(LoggedProcess):
    """``brokercore service NAME`` on a free port."""

    def __init__(self, name: str, log: Path, env: dict[str, str], port: int | None = None):
        self.name, self.port = name, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["service", name, "--port", str(self.port), "--log-level", "info"]
        super().__init__(args, log, env)

    def wait_ready(self) -> None:
        self.wait_for("Uvicorn running on", 60.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate(WAIT)
        self.close()


class Platform:
    """The services, an HTTP client, the external provider's key set and its server."""

    def __init__(self, database: str, services: dict[str, Service], external: JwksServer):
        self.database = database
        self.services = services
        self.external = external
        self.client = httpx.Client(timeout=WAIT)

    def url(self, service: str) -> str:
        return self.services[service].url

    def call(self, service: str, method: str, path: str, token: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return self.client.request(method, self.url(service) + path, headers=headers, **kwargs)

    def probe(self, service: str, token: str) -> httpx.Response:
        return self.call(service, *PROBES[service.removesuffix("-external")], token)

    def new_user(self) -> tuple[str, str]:
        """A user signed up at the accounts service (KYC PENDING) and logged in: their
        user id and access token (RS256, signed with the built-in key)."""
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        accounts = self.url("accounts")
        body = {"email": email, "password": PASSWORD}
        address = {"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.0.1"}
        signed_up = self.client.post(accounts + "/api/v1/auth/signup", json=body, headers=address)
        assert signed_up.status_code == 202, signed_up.text
        login = self.client.post(accounts + "/api/v1/auth/login", json=body, headers=address)
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]
        me = wait_until(  # 503 until the service has fetched its own keys (it starts first)
            lambda: (
                (r := self.call("accounts", "GET", "/api/v1/me", token)).status_code != 503 and r
            ),
            "the accounts service having its keys",
            timeout=WAIT,
        )
        assert me.status_code == 200, me.text
        return me.json()["userId"], token

    def rows(self, query: str, *args) -> list[tuple]:
        with psycopg.connect(self.database, autocommit=True) as conn:
            return conn.execute(query, args).fetchall()

    def stored(self) -> tuple:
        """Rows of what an order writes."""
        [counts] = self.rows(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM idempotency_keys), "
            "(SELECT count(*) FROM outbox), (SELECT count(*) FROM order_events)"
        )
        return counts

    def set_kyc(self, user_id: str, status: str) -> None:
        """An operator's decision (the accounts service's own path is tested there)."""
        with psycopg.connect(self.database, autocommit=True) as conn:
            conn.execute(
                "UPDATE accounts SET kyc_status = %s WHERE user_id = %s", (status, user_id)
            )


@pytest.fixture(scope="module")
def platform(postgres: str, kafka_bootstrap: str, tmp_path_factory) -> Iterator[Platform]:
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = make_conninfo(postgres, dbname=name)
    logs = tmp_path_factory.mktemp("tokens")
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    services: dict[str, Service] = {}
    external = JwksServer(EXTERNAL_KEY)
    try:
        apply_migrations(database)
        with psycopg.connect(database, autocommit=True) as conn:
            open_account(conn, EXTERNAL_USER, cash=CASH)
        kafka = new_settings(4, kafka_bootstrap)
        accounts_port = free_port()
        env = os.environ | {
            "BROKERCORE_DATABASE_URL": database,
            "BROKERCORE_REDIS_URL": REDIS_URL,
            "BROKERCORE_REDIS_PREFIX": prefix,
            "BROKERCORE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "BROKERCORE_TOPIC_PREFIX": kafka.topic_prefix,
            "BROKERCORE_SHARDS": str(kafka.shards),
            "BROKERCORE_CALENDAR": "always-open",
            "BROKERCORE_DEV_MODE": "0",  # no development secret: RS256 from the JWKS only
            "BROKERCORE_JWT_HS256_SECRET": "",
            "BROKERCORE_JWKS_URL": f"http://127.0.0.1:{accounts_port}/api/v1/auth/jwks",
        }
        external.__enter__()
        external_env = env | {
            "BROKERCORE_JWKS_URL": external.url,
            "BROKERCORE_JWT_ISSUER": EXTERNAL_ISSUER,
        }
        services["accounts"] = Service("accounts", logs / "accounts.log", env, accounts_port)
        for service in ("oms", "query", "notifier-api", "funds"):
            services[service] = Service(service, logs / f"{service}.log", env)
        # a heartbeat a second: an open socket sees a logout within seconds
        services["ws"] = Service("ws", logs / "ws.log", env | {"BROKERCORE_WS_HEARTBEAT": "1"})
        services["query-external"] = Service("query", logs / "query-external.log", external_env)
        for service in services.values():
            service.wait_ready()
        platform = Platform(database, services, external)
        _, token = platform.new_user()
        for service in PROBES:  # started before the accounts service: 503 until they fetch
            wait_until(
                lambda service=service: platform.probe(service, token).status_code != 503,
                f"{service} having the accounts service's keys",
                timeout=WAIT,
            )
        wait_until(
            lambda: ws_answer(platform, token, closing=False)[0]["type"] == "WELCOME",
            "the gateway having the accounts service's keys",
            timeout=WAIT,
        )
        yield platform
        platform.client.close()
    finally:
        for service in services.values():
            service.stop()
        external.__exit__(None, None, None)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        client.close()
        drop_database(postgres, name)


def ws_answer(platform: Platform, token: str, *, closing: bool = True) -> tuple[dict, int]:
    """The gateway's first frame for a socket with ``token`` and, if ``closing``, the
    close code that follows it (else 0: the client closes)."""

    async def attempt() -> tuple[dict, int]:
        url = platform.url("ws").replace("http", "ws") + "/ws/v1/orders"
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(url, additional_headers=headers, ping_interval=None) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            if not closing:
                return frame, 0
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), WAIT)
            assert closed.value.rcvd is not None
            return frame, closed.value.rcvd.code

    return asyncio.run(attempt())


async def ws_open_until_logout(platform: Platform, token: str) -> tuple[str, dict, int]:
    """A socket of ``token``'s user, open (answering the PINGs) while the user logs out:
    its first frame's type, then the ERROR frame and close code it gets."""
    url = platform.url("ws").replace("http", "ws") + "/ws/v1/orders"
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers, ping_interval=None) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        logout = await asyncio.to_thread(
            platform.call, "accounts", "POST", "/api/v1/auth/logout", token
        )
        assert logout.status_code == 204, logout.text
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), WAIT)))["type"] == "PING":
            await ws.send(json.dumps({"op": "pong"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), WAIT)
        assert closed.value.rcvd is not None
        return welcome["type"], frame, closed.value.rcvd.code


def assert_refused_everywhere(platform: Platform, token: str, code: str) -> None:
    for service in PROBES:
        error = assert_error(platform.probe(service, token), 401, code)
        assert error["message"], (service, error)
    frame, close_code = ws_answer(platform, token)
    assert (frame["type"], frame["code"], close_code) == ("ERROR", code, 4401), frame


def test_an_expired_token_is_refused_by_every_service(platform):
    user, fresh = platform.new_user()
    for service in PROBES:  # the same user's fresh token passes every verifier
        assert platform.probe(service, fresh).status_code != 401, service
    [(kid, private_pem)] = platform.rows(
        "SELECT kid, private_pem FROM signing_keys WHERE retired_at IS NULL"
    )
    config = JwtConfig("brokercore-dev", "brokercore", jwks_url="unused")
    expired = mint_token(
        user, config, private_key=private_pem, kid=kid, now=time.time() - 1000, ttl=900
    )
    assert_refused_everywhere(platform, expired, "TOKEN_EXPIRED")


def test_a_revoked_session_is_refused_by_every_service(platform):
    _, token = platform.new_user()
    for service in PROBES:  # accepted, and remembered by each verifier
        assert platform.probe(service, token).status_code != 401, service
    welcome, error, close_code = asyncio.run(ws_open_until_logout(platform, token))
    assert (welcome, error["type"], error["code"], close_code) == (
        "WELCOME",
        "ERROR",
        "TOKEN_REVOKED",
        4401,
    ), error
    for service in PROBES:  # each process reads the revoked sessions every second
        wait_until(
            lambda service=service: platform.probe(service, token).status_code == 401,
            f"{service} refusing the logged-out token",
            timeout=WAIT,
        )
    assert_refused_everywhere(platform, token, "TOKEN_REVOKED")


def test_an_external_providers_tokens_are_accepted_only_where_configured(platform):
    config = JwtConfig(EXTERNAL_ISSUER, "brokercore", jwks_url=platform.external.url)
    external = EXTERNAL_KEY.token(EXTERNAL_USER, config)
    for service in PROBES:
        assert_error(platform.probe(service, external), 401, "INVALID_TOKEN")
    assert ws_answer(platform, external)[0]["code"] == "INVALID_TOKEN"
    accepted = platform.probe("query-external", external)
    assert accepted.status_code == 200, accepted.text
    _, built_in = platform.new_user()
    assert platform.probe("query", built_in).status_code == 200
    assert_error(platform.probe("query-external", built_in), 401, "INVALID_TOKEN")


def order(**changes) -> dict:
    return {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 10,
        "price": "15000.00",
        "idempotencyKey": uuid.uuid4().hex,
    } | changes


def test_the_oms_takes_orders_only_from_verified_accounts(platform):
    user, token = platform.new_user()
    [(account,)] = platform.rows("SELECT account_id FROM accounts WHERE user_id = %s", user)
    with psycopg.connect(platform.database, autocommit=True) as conn:
        fund(conn, account, "DEPOSIT", amount=CASH, reference=f"test-{user}")

    def place(body: dict) -> httpx.Response:
        return platform.call("oms", "POST", "/api/v1/orders", token, json=body)

    before = platform.stored()
    assert_error(place(order()), 403, "ACCOUNT_NOT_VERIFIED")  # PENDING since sign-up
    assert platform.stored() == before
    platform.set_kyc(user, "VERIFIED")
    first = order()
    accepted = place(first)
    assert accepted.status_code == 202, accepted.text
    order_id = accepted.json()["orderId"]
    platform.set_kyc(user, "REJECTED")
    before = platform.stored()
    for body in (order(), order(side="SELL", quantity=1)):
        assert_error(place(body), 403, "ACCOUNT_NOT_VERIFIED")
    assert platform.stored() == before
    retried = place(first)  # a retry of the accepted order still gets it back
    assert (retried.status_code, retried.json()["orderId"]) == (202, order_id), retried.text
    cancelled = platform.call("oms", "DELETE", f"/api/v1/orders/{order_id}", token)
    assert cancelled.status_code == 202, cancelled.text
    for path in ("/api/v1/orders", "/api/v1/portfolio", f"/api/v1/orders/{order_id}"):
        read = platform.call("query", "GET", path, token)
        assert read.status_code == 200, (path, read.text)
    assert platform.call("funds", "GET", "/api/v1/funds", token).status_code == 200
