"""A GTT's end told live (migration 0019, brokercore.notify.owed): the statement that ends
a GTT stores its notification in the inbox and owes it to the notifier, which publishes
it on the user's channel (real Redis) by their preferences and forgets it; one owed
before the notifier started (a notifier that died before forgetting it) is sent by the
next one."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
import redis

from brokercore.config import KafkaSettings
from brokercore.notify.consumer import run_notifier
from brokercore.realtime.channels import decode_message, user_channel
from shared_servers import service_settings

ORDER = '{"side": "SELL", "type": "LIMIT", "quantity": 5, "price": "15000.00"}'


def end_three_gtts(database: str) -> list[int]:
    """Three GTTs of alice's, ended as the trigger service ends them: an order placed,
    an order refused, an expiry; and one bob cancels (not told)."""
    with psycopg.connect(database, autocommit=True) as conn:
        ids = [
            conn.execute(
                "INSERT INTO gtts (account_id, symbol, kind, condition_1, trigger_1, order_1, "
                "expires_at) SELECT account_id, 'RELIANCE', 'SINGLE', '>=', 1500000, %s, "
                "now() + interval '1 day' FROM accounts WHERE user_id = %s RETURNING gtt_id",
                (ORDER, user),
            ).fetchone()[0]
            for user in ("alice", "alice", "alice", "bob")
        ]
        fired = "status = 'TRIGGERED', fired_leg = 1, fired_price = 1500050, triggered_at = now()"
        conn.execute(f"UPDATE gtts SET {fired} WHERE gtt_id = ANY(%s)", (ids[:2],))
        conn.execute("UPDATE gtts SET order_id = 42 WHERE gtt_id = %s", (ids[0],))
        conn.execute(
            "UPDATE gtts SET status = 'FAILED', failure_code = 'INSUFFICIENT_HOLDINGS', "
            "failure_message = 'not enough shares' WHERE gtt_id = %s",
            (ids[1],),
        )
        conn.execute("UPDATE gtts SET status = 'EXPIRED' WHERE gtt_id = %s", (ids[2],))
        conn.execute("UPDATE gtts SET status = 'CANCELLED' WHERE gtt_id = %s", (ids[3],))
    return ids


def test_a_gtts_end_is_stored_once_and_published_by_the_notifier(database, kafka: KafkaSettings):
    ids = end_three_gtts(database)
    with psycopg.connect(database) as conn:
        owed = conn.execute("SELECT notification_id FROM owed_notifications").fetchall()
        inbox = conn.execute("SELECT notification_id, user_id FROM notification_inbox").fetchall()
    assert sorted(owed) == sorted((f"gtt:{i}",) for i in ids[:3])
    assert sorted(inbox) == sorted((f"gtt:{i}", "alice") for i in ids[:3]), "bob's cancel: none"
    with psycopg.connect(database, autocommit=True) as conn:  # alice hears of no expiry
        conn.execute("INSERT INTO notification_preferences VALUES ('alice', 'GTT_EXPIRED', 'NONE')")

    settings = service_settings(database, f"t{uuid.uuid4().hex[:12]}:")
    pubsub = redis.Redis.from_url(settings.redis_url).pubsub()
    pubsub.subscribe(user_channel(settings.redis_prefix, "alice"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # the server has it
    stop = threading.Event()
    notifier = threading.Thread(target=lambda: asyncio.run(run_notifier(settings, kafka, stop)))
    notifier.start()
    try:
        got, deadline = [], time.monotonic() + 30
        with psycopg.connect(database, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM owed_notifications").fetchone() != (0,):
                assert time.monotonic() < deadline, "the owed notifications not forgotten"
                time.sleep(0.05)
        # published before they were forgotten: all here
        while message := pubsub.get_message(timeout=0.5):
            if message["type"] == "message":
                got.append(decode_message(message["data"]))
    finally:
        stop.set()
        notifier.join(30)
        pubsub.close()
    assert not notifier.is_alive()
    told = {n.id: (n.kind, n.title, n.body, n.order_id) for n in got}
    assert len(told) == len(got)
    assert told == {
        f"gtt:{ids[0]}": (
            "GTT_TRIGGERED",
            "GTT triggered",
            f"Your GTT {ids[0]} on RELIANCE triggered at 15,000.50: order to SELL 5 RELIANCE "
            "placed",
            42,
        ),
        f"gtt:{ids[1]}": (
            "GTT_FAILED",
            "GTT order refused",
            f"Your GTT {ids[1]} on RELIANCE triggered at 15,000.50, but its order to SELL 5 "
            "RELIANCE was refused: not enough shares",
            None,
        ),
    }, "the expiry was not published (alice's preference), the others once"
    with psycopg.connect(database) as conn:
        expired = conn.execute(
            "SELECT notification->>'body' FROM notification_inbox WHERE notification_id = %s",
            (f"gtt:{ids[2]}",),
        ).fetchall()
    assert expired == [(f"Your GTT {ids[2]} on RELIANCE expired without triggering",)]
