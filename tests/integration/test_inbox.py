"""The notification inbox: the notifier (brokercore.notify.router, in this process) stores
what it renders, once however often an event comes; notifier-api pages it (unread
first, then newest) and marks it read, each user only their own. Real Postgres, Redis
and Kafka; the events are a real engine book's (tests/venue_support.py)."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from brokercore.engine.records import Side
from brokercore.notify.dead_letters import DeadLetters
from brokercore.notify.router import Notifier
from http_support import Services, assert_error
from oms_support import auth, run
from shared_servers import KAFKA_BOOTSTRAP, REDIS_URL
from venue_support import MARKET, MID, Venue


@pytest.fixture
def told(conn, migrated):
    """alice sold bob one share four times (a FILL each for both), then bob cancelled a
    buy; the notifier handled every message twice. alice hears nothing of fills
    (preference NONE), which the inbox keeps anyway."""
    v = Venue(conn)
    alice, bob = v.account("alice"), v.account("bob", shares=0)
    conn.execute("INSERT INTO notification_preferences VALUES ('alice', 'FILL', 'NONE')")
    for _ in range(4):
        v.place(alice, Side.SELL, 1, MID)
        v.place(bob, Side.BUY, 1, MID)
    v.cancel(v.place(bob, Side.BUY, 5, MID - 100), bob)

    async def notify():
        pool = AsyncConnectionPool(migrated, min_size=1, max_size=2, open=False)
        await pool.open(wait=True)
        redis = Redis.from_url(REDIS_URL)
        dead = DeadLetters(KAFKA_BOOTSTRAP, f"unused-{uuid.uuid4().hex}")
        try:
            notifier = Notifier(pool, redis, f"in{uuid.uuid4().hex[:12]}:", MARKET, None, dead)
            messages = [(m.partition, m.offset, m.batch) for m in v.messages()]
            for _ in range(2):  # re-delivered: the same notifications
                await notifier.handle(messages)
        finally:
            dead.close()
            await redis.aclose()
            await pool.close()

    run(notify)
    return migrated


def stored(database: str, user: str) -> list[tuple[str, str]]:
    """(id, kind) of the user's inbox rows, newest first."""
    with psycopg.connect(database) as conn:
        return conn.execute(
            "SELECT notification_id, notification->>'kind' FROM notification_inbox "
            "WHERE user_id = %s ORDER BY inbox_id DESC",
            (user,),
        ).fetchall()


class Inbox:
    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def get(self, user: str = "alice", **params) -> httpx.Response:
        return await self.http.get("/api/v1/notifications", params=params, headers=auth(user))

    async def page(self, user: str = "alice", **params) -> dict:
        response = await self.get(user, **params)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, user: str = "alice") -> httpx.Response:
        return await self.http.post("/api/v1/notifications" + path, headers=auth(user))


def run_inbox(database: str, scenario):
    async def main():
        async with Services(database) as services:
            return await scenario(Inbox(services.notifications))

    return run(main)


def test_each_notification_is_stored_once_for_its_user(told):
    alice, bob = stored(told, "alice"), stored(told, "bob")
    assert [kind for _, kind in alice] == ["FILL"] * 4
    assert [kind for _, kind in bob] == ["CANCELLED"] + ["FILL"] * 4
    assert len({i for i, _ in alice + bob}) == 9


def test_unread_first_then_newest_and_marking_read_is_idempotent(told):
    ids = [i for i, _ in stored(told, "alice")]  # newest first

    async def scenario(inbox: Inbox):
        fresh = await inbox.page()
        first = await inbox.post(f"/{ids[1]}/read")
        again = await inbox.post(f"/{ids[1]}/read")
        after = await inbox.page()
        unread = await inbox.page(unreadOnly="true")
        walk = [await inbox.page(limit="1")]
        while walk[-1]["nextCursor"]:
            walk.append(await inbox.page(limit="1", cursor=walk[-1]["nextCursor"]))
        return fresh, first, again, after, unread, walk

    fresh, first, again, after, unread, walk = run_inbox(told, scenario)
    assert [n["id"] for n in fresh["notifications"]] == ids
    assert fresh["unreadCount"] == 4 and fresh["nextCursor"] is None
    note = fresh["notifications"][0]
    assert (note["kind"], note["symbol"], note["read"], note["readAt"]) == (
        "FILL",
        "RELIANCE",
        False,
        None,
    )
    assert note["title"] and note["body"] and note["createdAt"] and note["orderId"]
    assert first.status_code == again.status_code == 200
    assert first.json()["read"] is True and first.json() == again.json()  # the first time stays
    assert [n["id"] for n in after["notifications"]] == [ids[0], ids[2], ids[3], ids[1]]
    assert [n["read"] for n in after["notifications"]] == [False, False, False, True]
    assert after["unreadCount"] == 3
    assert [n["id"] for n in unread["notifications"]] == [ids[0], ids[2], ids[3]]
    assert [n["id"] for page in walk for n in page["notifications"]] == [
        n["id"] for n in after["notifications"]
    ]


def test_another_users_notification_is_not_found(told):
    alices = stored(told, "alice")[0][0]

    async def scenario(inbox: Inbox):
        return (
            await inbox.post(f"/{alices}/read", user="bob"),
            await inbox.post("/0:999999:1/read"),
            await inbox.page(user="carol"),
            await inbox.page(),
        )

    bobs_try, unknown, carol, alice = run_inbox(told, scenario)
    assert_error(bobs_try, 404, "NOTIFICATION_NOT_FOUND")
    assert_error(unknown, 404, "NOTIFICATION_NOT_FOUND")
    assert carol == {"notifications": [], "unreadCount": 0, "nextCursor": None}
    assert alice["unreadCount"] == 4


def test_read_all_and_bad_queries(told):
    async def scenario(inbox: Inbox):
        bad = [
            await inbox.get(**params)
            for params in (
                {"limit": "0"},
                {"limit": "201"},
                {"cursor": "1.x"},
                {"unreadOnly": "maybe"},
                {"page": "2"},
            )
        ]
        return (
            bad,
            await inbox.post("/read-all", user="bob"),
            await inbox.post("/read-all", user="bob"),
            await inbox.page(user="bob"),
            await inbox.page(),
        )

    bad, marked, again, bob, alice = run_inbox(told, scenario)
    assert [(r.status_code, r.json()["error"]["fields"][0]["field"]) for r in bad] == [
        (422, "limit"),
        (422, "limit"),
        (422, "cursor"),
        (422, "unreadOnly"),
        (422, "page"),
    ]
    assert marked.json() == {"marked": 5} and again.json() == {"marked": 0}
    assert bob["unreadCount"] == 0 and all(n["read"] for n in bob["notifications"])
    assert alice["unreadCount"] == 4  # bob's read-all is bob's alone
