"""The edge (nginx, scripts/edge/nginx.sh) in front of real API processes: each kind of
request reaches its kind of process, writes spread over both OMS processes, the client's
address goes along, the edge's own errors are JSON, and an OMS process killed with -9
under load loses no order the edge accepted and doubles none."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter

import httpx
import psycopg
import pytest

from brokercore.broker.funding import open_account
from edge_support import ApiProcess, Edge, Recorder, api_env
from http_support import assert_error
from oms_support import auth

CLIENTS = 8
PHASE = 2.5  # seconds of load before the kill, and after it
PHASE_ORDERS = 40  # orders accepted at least in each phase


@pytest.fixture
def apis(database, kafka, tmp_path):
    """start(name, n): n processes of the HTTP service NAME on the test's database and
    topics (order rate limits out of the way), ready; all killed at the end."""
    env = api_env(
        database,
        kafka.topic_prefix,
        kafka.shards,
        rate_limit_burst="100000",
        rate_limit_per_second="100000",
    )
    started: list[ApiProcess] = []

    def start(name: str, n: int) -> list[ApiProcess]:
        new = [ApiProcess(name, tmp_path / f"{name}-{i}.log", env) for i in range(n)]
        started.extend(new)
        for process in new:
            process.wait_ready()
        return new

    try:
        yield start
    finally:
        for process in started:
            process.close()


def order(key: str | None = None, **fields) -> dict:
    return {
        "symbol": "RELIANCE",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 1,
        "price": "15000.00",
        "idempotencyKey": key or uuid.uuid4().hex,
    } | fields


def upstreams(edge: Edge, count: int) -> list[str]:
    """The upstream (or upstreams, "A, B" when A failed) of each request in the access
    log, once it holds ``count``; "-" for a request the edge answered itself."""
    return [
        line.split(" upstream=", 1)[1].split(" upstream_status=")[0]
        for line in edge.access_log(count)
    ]


def test_the_edge_routes_each_kind_balances_passes_the_address_and_answers_json(apis):
    oms, (query,) = apis("oms", 2), apis("query", 1)
    with (
        Recorder() as ws,
        Recorder() as notify,
        Edge(
            oms=" ".join(p.address for p in oms),
            query=query.address,
            ws=ws.address,
            notify=notify.address,
        ) as edge,
        httpx.Client(base_url=edge.url, timeout=30) as client,
    ):
        # Writes to the OMS processes, both of them.
        placed = [
            client.post("/api/v1/orders", json=order(), headers=auth("alice")) for _ in range(6)
        ]
        assert [r.status_code for r in placed] == [202] * 6, [r.text for r in placed]
        assert set(upstreams(edge, 6)) == {p.address for p in oms}, edge.access_log(6)
        first = placed[0].json()["orderId"]

        # Reads of orders to the query process, the cancel to the OMS.
        read = client.get(f"/api/v1/orders/{first}", headers=auth("alice"))
        assert read.status_code == 200 and read.json()["orderId"] == first, read.text
        cancelled = client.delete(f"/api/v1/orders/{first}", headers=auth("alice"))
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["status"] == "CANCEL_REQUESTED", cancelled.text
        portfolio = client.get("/api/v1/portfolio", headers=auth("alice"))
        assert portfolio.status_code == 200, portfolio.text
        served = upstreams(edge, 9)
        assert served[6] == served[8] == query.address and served[7] in served[:6], served

        # The notification API and the gateways: what they receive, the client's address
        # (forged X-Forwarded-For replaced) and the WebSocket upgrade included.
        for path in ("/api/v1/alerts", "/api/v1/alerts/7", "/api/v1/notifications/preferences"):
            seen = client.get(path, headers={"X-Forwarded-For": "6.6.6.6"})
            assert seen.status_code == 200 and seen.json()["path"] == path, seen.text
            headers = seen.json()["headers"]
            assert headers["X-Forwarded-For"] == "127.0.0.1", headers
            assert headers["X-Real-IP"] == "127.0.0.1", headers
        upgrade = client.get(
            "/ws/v1/orders?token=t",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert upgrade.status_code == 200, upgrade.text
        headers = upgrade.json()["headers"]
        assert upgrade.json()["path"] == "/ws/v1/orders?token=t", headers
        assert (headers["Upgrade"], headers["Connection"]) == ("websocket", "upgrade"), headers
        assert [r["path"] for r in notify.requests] == [
            "/api/v1/alerts",
            "/api/v1/alerts/7",
            "/api/v1/notifications/preferences",
        ]
        assert len(ws.requests) == 1

        # The edge's own errors, in the JSON error shape; none reached a service.
        assert_error(client.get("/api/v2/orders"), 404, "NOT_FOUND")
        assert_error(client.post("/nowhere", json={}), 404, "NOT_FOUND")
        too_large = client.post(
            "/api/v1/orders", json=order(note="x" * 20_000), headers=auth("alice")
        )
        assert_error(too_large, 413, "BODY_TOO_LARGE")
        assert_error(client.get("/api/v1/orders?q=" + "x" * 10_000), 414, "URI_TOO_LONG")
        assert_error(client.get("/api/v1/portfolio", headers={"X-Big": "x" * 10_000}), 400)
        assert upstreams(edge, 18)[13:] == ["-"] * 5
        # A service's own errors pass through untouched.
        assert_error(client.post("/api/v1/orders", json=order()), 401, "UNAUTHENTICATED")
        # Cancel many (DELETE /api/v1/orders) to the OMS: the other five orders.
        every = client.delete("/api/v1/orders?symbol=RELIANCE", headers=auth("alice"))
        assert every.status_code == 202 and len(every.json()["orders"]) == 5, every.text
        assert upstreams(edge, 20)[19] in served[:6], edge.access_log(20)
        # The margin preview (POST /api/v1/margins/orders) to the OMS.
        margin = client.post("/api/v1/margins/orders", json=[order()], headers=auth("alice"))
        assert margin.status_code == 200 and margin.json()["orders"][0]["accepted"], margin.text
        assert upstreams(edge, 21)[20] in served[:6], edge.access_log(21)
        # GTTs (/api/v1/gtt, its reads too) to the OMS.
        leg = {"condition": "<=", "triggerPrice": "14000.00", "order": order()}
        del leg["order"]["idempotencyKey"], leg["order"]["symbol"]
        gtt = {"symbol": "RELIANCE", "kind": "SINGLE", "legs": [leg]}
        made = client.post("/api/v1/gtt", json=gtt, headers=auth("alice"))
        assert made.status_code == 201, made.text
        listed = client.get("/api/v1/gtt", headers=auth("alice"))
        assert [g["gttId"] for g in listed.json()["gtts"]] == [made.json()["gttId"]], listed.text
        # Brackets (/api/v1/brackets[/...]) to the OMS: its own 404, not the edge's.
        bracket = client.get("/api/v1/brackets/1", headers=auth("alice"))
        assert_error(bracket, 404, "BRACKET_NOT_FOUND")


async def place_until_answered(
    client: httpx.AsyncClient, user: str, key: str, outcomes: Counter
) -> int:
    """POST the order with ``key`` until the edge answers 202 (a 502/503/504 or a broken
    connection is retried with the same key, as a client is told to); its order id."""
    for _ in range(50):
        try:
            answer = await client.post("/api/v1/orders", json=order(key), headers=auth(user))
        except httpx.TransportError as e:
            outcomes[type(e).__name__] += 1
        else:
            if answer.status_code == 202:
                outcomes[202] += 1
                return int(answer.json()["orderId"])
            assert answer.status_code in (502, 503, 504), answer.text
            outcomes[answer.status_code] += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user}'s order {key} never accepted: {outcomes}")


def test_an_oms_process_killed_under_load_loses_and_doubles_no_order(apis, database):
    users = [f"edge{i}" for i in range(CLIENTS)]
    with psycopg.connect(database, autocommit=True) as conn:
        for user in users:
            open_account(conn, user, cash=10**9 * 100)
    oms = apis("oms", 2)
    with Edge(oms=" ".join(p.address for p in oms)) as edge:
        answered: dict[tuple[str, str], int] = {}
        outcomes: Counter = Counter()

        stop = asyncio.Event()

        async def user_loop(i: int) -> None:
            user = users[i]
            async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
                while not stop.is_set():
                    key = f"edge-{i}-{uuid.uuid4().hex}"
                    answered[user, key] = await place_until_answered(client, user, key, outcomes)

        async def phase(at_least: int) -> None:
            """PHASE seconds, and until ``at_least`` orders are accepted (30 s at most)."""
            started = time.monotonic()
            while time.monotonic() - started < PHASE or len(answered) < at_least:
                assert time.monotonic() - started < 30, (len(answered), at_least, outcomes)
                await asyncio.sleep(0.05)

        async def load() -> int:
            loops = [asyncio.create_task(user_loop(i)) for i in range(CLIENTS)]
            try:
                await phase(PHASE_ORDERS)
                oms[0].kill()
                killed_at = len(answered)
                await phase(killed_at + PHASE_ORDERS)
            finally:
                stop.set()
                await asyncio.gather(*loops)
            return killed_at

        killed_at = asyncio.run(load())

        with psycopg.connect(database) as conn:
            keys = conn.execute("SELECT user_id, key, order_id FROM idempotency_keys").fetchall()
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT order_id) FROM orders"
            ).fetchone()
        # Every order the edge accepted is stored once, under its key; none unanswered.
        assert {(user, key): order_id for user, key, order_id in keys} == answered
        assert rows == distinct == len(answered) == len(set(answered.values())), (rows, distinct)

        # Both processes took orders before the kill; the retries went to the survivor.
        tried = upstreams(edge, len(answered))
        served = Counter(address for line in tried for address in line.split(", "))
        assert {p.address for p in oms} <= set(served), served
        retried = [line for line in tried if line.startswith(f"{oms[0].address}, ")]
        assert retried, tried
        print(
            f"\n{len(answered)} orders, {killed_at} before the kill, {len(retried)} retried "
            f"by the edge on the survivor; the clients saw {dict(outcomes)}"
        )

        # With every OMS process gone, the edge says so, in JSON.
        oms[1].kill()
        with contextlib.closing(httpx.Client(base_url=edge.url, timeout=30)) as client:
            gone = client.post("/api/v1/orders", json=order(), headers=auth("alice"))
        assert_error(gone, 502, "BAD_GATEWAY")
