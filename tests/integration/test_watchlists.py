"""Watchlists over REST (services/query in this process, the real Postgres and Redis):
each user's own lists, their limits (the database's too), and each symbol's last price
and day change from the read model's trades."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from http_support import Services, assert_error
from oms_support import auth, run

KOLKATA = ZoneInfo("Asia/Kolkata")


class Lists:
    """The watchlist endpoints as a user."""

    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def call(self, method: str, path: str = "", user: str = "alice", **kwargs):
        headers = auth(user) | kwargs.pop("headers", {})
        return await self.http.request(
            method, "/api/v1/watchlists" + path, headers=headers, **kwargs
        )

    async def create(self, name: str, symbols: list[str], user: str = "alice") -> dict:
        response = await self.call("POST", json={"name": name, "symbols": symbols}, user=user)
        assert response.status_code == 201, response.text
        return response.json()


def run_lists(database: str, scenario):
    async def main():
        async with Services(database) as services:
            return await scenario(Lists(services.query))

    return run(main)


def trade(conn, symbol: str, seq: int, paise: int, at: datetime) -> None:
    conn.execute(
        "INSERT INTO read_model.trades (trade_id, symbol, seq, price, quantity, executed_at) "
        "VALUES (%s, %s, %s, %s, 1, %s)",
        (f"{symbol}:{seq}", symbol, seq, paise, at),
    )


def counts(database: str) -> tuple[int, int]:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM watchlists), (SELECT count(*) FROM watchlist_symbols)"
        ).fetchone()
    return row


def test_a_users_lists_with_prices_and_day_change(database):
    midnight = datetime.now(KOLKATA).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(database, autocommit=True) as conn:
        trade(conn, "RELIANCE", 1, 280_000, midnight - timedelta(hours=3))  # yesterday's close
        trade(conn, "RELIANCE", 2, 285_600, midnight + timedelta(seconds=1))
        trade(conn, "INFY", 1, 150_000, midnight + timedelta(seconds=1))  # first trade today

    async def scenario(lists: Lists):
        made = await lists.create("Energy", ["RELIANCE", "TCS", "INFY"])
        other = await lists.create("Empty", [])
        listed = (await lists.call("GET")).json()
        one = (await lists.call("GET", f"/{made['id']}")).json()
        put = await lists.call(
            "PUT", f"/{made['id']}", json={"name": "Mine", "symbols": ["INFY", "RELIANCE"]}
        )
        deleted = await lists.call("DELETE", f"/{other['id']}")
        gone = await lists.call("GET", f"/{other['id']}")
        after = (await lists.call("GET")).json()
        return made, listed, one, put, deleted, gone, after

    made, listed, one, put, deleted, gone, after = run_lists(database, scenario)
    assert made["name"] == "Energy" and one == made
    assert made["symbols"] == [
        {
            "symbol": "RELIANCE",
            "lastPrice": "2856.00",
            "previousClose": "2800.00",
            "change": "56.00",
            "changePercent": "2.00",
        },
        {
            "symbol": "TCS",
            "lastPrice": None,
            "previousClose": None,
            "change": None,
            "changePercent": None,
        },
        {
            "symbol": "INFY",
            "lastPrice": "1500.00",
            "previousClose": None,
            "change": None,
            "changePercent": None,
        },
    ]
    assert [w["name"] for w in listed["watchlists"]] == ["Energy", "Empty"]
    assert put.status_code == 200, put.text
    assert put.json()["name"] == "Mine"
    assert [s["symbol"] for s in put.json()["symbols"]] == ["INFY", "RELIANCE"]
    assert deleted.status_code == 204
    assert_error(gone, 404, "WATCHLIST_NOT_FOUND")
    assert [w["name"] for w in after["watchlists"]] == ["Mine"]


def test_another_users_list_is_not_found_and_untouched(database):
    async def scenario(lists: Lists):
        mine = await lists.create("Mine", ["TCS"])
        path = f"/{mine['id']}"
        body = {"name": "Taken", "symbols": []}
        return (
            mine,
            [
                await lists.call("GET", path, user="bob"),
                await lists.call("PUT", path, user="bob", json=body),
                await lists.call("DELETE", path, user="bob"),
                await lists.call("GET", "/999999999", user="alice"),
                await lists.call("GET", "/not-a-number", user="alice"),
            ],
            (await lists.call("GET", path)).json(),
            (await lists.call("GET", user="bob")).json(),
        )

    mine, refused, still, bobs = run_lists(database, scenario)
    for response in refused:
        assert_error(response, 404, "WATCHLIST_NOT_FOUND")
    assert still == mine and bobs == {"watchlists": []}


def test_limits_and_bad_bodies_change_nothing(database):
    async def scenario(lists: Lists):
        first = await lists.create("First", ["TCS"])
        before = counts(database)
        bad = [
            await lists.call("POST", json=body)
            for body in (
                {"name": "X", "symbols": ["NOPE"]},
                {"name": "X", "symbols": ["TCS", "INFY", "TCS"]},
                {"name": "X", "symbols": ["TCS"] * 51},
                {"name": "", "symbols": []},
                {"name": "   ", "symbols": []},
                {"name": "x" * 65},
                {"symbols": ["TCS"]},
                {"name": "X", "extra": 1},
                {"name": "First", "symbols": []},
            )
        ]
        malformed = await lists.call(
            "POST", content=b"{", headers={"content-type": "application/json"}
        )
        renamed = await lists.call("PUT", f"/{first['id']}", json={"name": "X", "symbols": ["?"]})
        return before, bad, malformed, renamed, counts(database)

    before, bad, malformed, renamed, after = run_lists(database, scenario)
    codes = [(r.status_code, r.json()["error"]["code"]) for r in bad]
    assert codes == [
        (422, "UNKNOWN_SYMBOL"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (422, "INVALID_REQUEST"),
        (409, "WATCHLIST_NAME_TAKEN"),
    ]
    assert bad[1].json()["error"]["fields"][0]["field"] == "symbols[2]"
    assert_error(malformed, 400, "MALFORMED_JSON")
    assert_error(renamed, 422, "UNKNOWN_SYMBOL")
    assert before == after == (1, 1)


def test_twenty_lists_at_most_even_when_created_at_once(database):
    async def scenario(lists: Lists):
        return await asyncio.gather(
            *(lists.call("POST", json={"name": f"L{i}", "symbols": ["TCS"]}) for i in range(25))
        )

    responses = run_lists(database, scenario)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 20 + [409] * 5
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "TOO_MANY_WATCHLISTS")
    assert counts(database) == (20, 20)


def test_the_database_refuses_a_21st_list_and_a_51st_symbol(database):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO watchlists (user_id, slot, name) "
            "SELECT 'alice', s, 'L' || s FROM generate_series(1, 20) s"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO watchlists (user_id, slot, name) VALUES ('alice', 21, 'x')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO watchlists (user_id, slot, name) VALUES ('alice', 3, 'x')")
        [list_id] = conn.execute("SELECT min(watchlist_id) FROM watchlists").fetchone()
        conn.execute(
            "INSERT INTO watchlist_symbols SELECT %s, p, 'S' || p FROM generate_series(0, 49) p",
            (list_id,),
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO watchlist_symbols VALUES (%s, 50, 'S50')", (list_id,))
