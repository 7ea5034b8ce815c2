"""Reference data (GET /api/v1/instruments, services/query in this process on the real
Postgres and Redis): each instrument's terms and calendar from config/instruments.toml,
its phase as the projector keeps it from the engine's session events, and the next
step of its day's plan (an uncross given as its window, never its secret moment); and
both routes through the edge (nginx) to a real query process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import redis

from brokercore.consumers.projector import ProjectorConsumer
from brokercore.services.query import create_app
from edge_support import ApiProcess, Edge, api_env
from http_support import assert_error
from oms_support import auth, run
from read_model_support import stamped
from shared_servers import REDIS_URL, service_settings
from trading_day_support import TradingVenue
from venue_support import MARKET

FRIDAY_BEFORE_PRE_OPEN = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 08:30 in Mumbai
IN_UNCROSS_WINDOW = datetime(2026, 11, 20, 3, 37, 30, tzinfo=UTC)  # 09:07:30
AFTER_CLOSE_BEFORE_HOLIDAY = datetime(2026, 1, 23, 11, 0, tzinfo=UTC)  # Fri; Mon 26th: holiday

RELIANCE = {
    "symbol": "RELIANCE",
    "tickSize": "0.05",
    "lotSize": 1,
    "band": {"low": "10000.00", "high": "20000.00"},
    "maxOrderQuantity": 100_000,
    "enabled": True,
    "session": {
        "timezone": "Asia/Kolkata",
        "alwaysOpen": False,
        "preOpen": "09:00:00",
        "preOpenEnd": "09:08:00",
        "uncrossWindow": 60,
        "open": "09:15:00",
        "close": "15:30:00",
        "weekdays": [1, 2, 3, 4, 5],
        "holidays": ["2026-01-26", "2026-05-01", "2026-10-02", "2026-12-25"],
    },
    "phase": "OPEN",
    "nextTransition": {
        "transition": "PRE_OPEN",
        "at": "2026-11-20T03:30:00+00:00",
        "latest": "2026-11-20T03:30:00+00:00",
    },
}


def transition(name: str, at: str, latest: str | None = None) -> dict:
    return {"transition": name, "at": at, "latest": latest or at}


def reference(database: str, scenario, **overrides):
    """``scenario(get, catalogue)`` against a fresh query app (``get(path)``: a GET of
    /api/v1/instruments + path as alice); its result."""
    prefix = f"i{uuid.uuid4().hex[:12]}:"
    app = create_app(service_settings(database, prefix, **overrides))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://query") as http:

                async def get(path: str = "", **kwargs) -> httpx.Response:
                    kwargs.setdefault("headers", auth("alice"))
                    return await http.get("/api/v1/instruments" + path, **kwargs)

                return await scenario(get, app.state.query.instruments)

    try:
        return run(main)
    finally:
        with redis.Redis.from_url(REDIS_URL) as client:
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)


def test_every_instrument_with_its_terms_calendar_phase_and_next_step(database):
    async def scenario(get, catalogue):
        catalogue.clock = lambda: FRIDAY_BEFORE_PRE_OPEN
        return (await get()).json(), (await get("/RELIANCE")).json()

    listed, one = reference(database, scenario)
    symbols = [i["symbol"] for i in listed["instruments"]]
    assert symbols == ["RELIANCE", "TCS", "INFY", "HDFCBANK", "ITC", "SBIN", "WIPRO", "AXISBANK"]
    assert listed["instruments"][0] == one == RELIANCE
    wipro = listed["instruments"][6]
    assert wipro["band"] == {"low": "1000.00", "high": "2000.00"}
    assert wipro["nextTransition"] == RELIANCE["nextTransition"]


def test_the_phase_follows_the_engines_session_events(database, conn):
    """CLOSE, PRE_OPEN and the uncross of a real book, projected into the read model,
    show in the answer; during the pre-open the next step is the uncross's window, and
    once the book has uncrossed (OPEN) the next step is the close."""
    venue = TradingVenue(conn)
    with redis.Redis.from_url(REDIS_URL) as client:
        prefix = f"i{uuid.uuid4().hex[:12]}:"
        projector = ProjectorConsumer(MARKET, client, prefix)
        done = 0

        def project() -> None:
            nonlocal done
            projector.committed(projector.apply(conn, stamped(venue, done)))
            done = len(venue.batches)

        async def scenario(get, catalogue):
            catalogue.clock = lambda: IN_UNCROSS_WINDOW
            seen = [(await get("/RELIANCE")).json()]
            venue.close()
            project()
            seen.append((await get("/RELIANCE")).json())
            venue.pre_open()
            project()
            seen.append((await get("/RELIANCE")).json())
            venue.uncross()
            project()
            seen.append((await get("/RELIANCE")).json())
            return seen

        try:
            new, closed, pre_open, opened = reference(database, scenario)
        finally:
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)
    close = transition("CLOSE", "2026-11-20T10:00:00+00:00")
    window = transition("UNCROSS", "2026-11-20T03:37:00+00:00", "2026-11-20T03:38:00+00:00")
    assert [s["phase"] for s in (new, closed, pre_open, opened)] == [
        "OPEN",
        "CLOSED",
        "PRE_OPEN",
        "OPEN",
    ]
    assert pre_open["nextTransition"] == window
    assert new["nextTransition"] == closed["nextTransition"] == opened["nextTransition"] == close


def test_the_next_step_skips_weekends_and_holidays(database):
    async def scenario(get, catalogue):
        catalogue.clock = lambda: AFTER_CLOSE_BEFORE_HOLIDAY
        return (await get("/TCS")).json()

    tcs = reference(database, scenario)
    assert tcs["nextTransition"] == transition("PRE_OPEN", "2026-01-27T03:30:00+00:00")


def test_the_always_open_calendar_has_no_steps(database):
    async def scenario(get, catalogue):
        return (await get("/INFY")).json()

    infy = reference(database, scenario, calendar="always-open")
    assert infy["session"]["alwaysOpen"] is True
    assert infy["session"]["holidays"] == []
    assert infy["nextTransition"] is None
    assert infy["phase"] == "OPEN"


def test_bad_requests_get_the_json_error(database):
    """An unknown symbol (names are case-sensitive), a missing or bad token, a query
    parameter: each its JSON error."""
    requests = [
        ("/NOPE", {}, 404, "UNKNOWN_SYMBOL"),
        ("/reliance", {}, 404, "UNKNOWN_SYMBOL"),
        ("", {"headers": {}}, 401, None),
        ("/RELIANCE", {"headers": {"Authorization": "Bearer x.y.z"}}, 401, None),
        ("", {"params": {"symbol": "RELIANCE"}}, 422, "INVALID_REQUEST"),
    ]

    async def scenario(get, catalogue):
        return [await get(path, **kwargs) for path, kwargs, _, _ in requests]

    responses = reference(database, scenario)
    for response, (_, _, status, code) in zip(responses, requests, strict=True):
        assert_error(response, status, code)


def test_the_edge_routes_both_to_a_query_process(database, tmp_path):
    prefix = f"i{uuid.uuid4().hex[:12]}:"
    query = ApiProcess("query", tmp_path / "query.log", api_env(database, prefix, 1))
    try:
        query.wait_ready()
        with Edge(query=query.address) as edge, httpx.Client(base_url=edge.url) as client:
            listed = client.get("/api/v1/instruments", headers=auth("alice"))
            one = client.get("/api/v1/instruments/TCS", headers=auth("alice"))
            unknown = client.get("/api/v1/instruments/NOPE", headers=auth("alice"))
    finally:
        query.close()
    assert listed.status_code == one.status_code == 200, (listed.text, one.text)
    assert len(listed.json()["instruments"]) == 8
    assert one.json()["session"]["alwaysOpen"] is True  # the test processes' calendar
    assert one.json() == listed.json()["instruments"][1]
    assert_error(unknown, 404, "UNKNOWN_SYMBOL")
