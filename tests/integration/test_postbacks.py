"""Postbacks (brokercore.notify.postbacks): registered over the notifier API, then every
order notification of the user POSTed, signed, to each URL by the real notifier process
reading the real Kafka, to HTTPS endpoints on loopback (tests/postback_endpoint.py):
one that answers, one slow, one failing, one whose certificate names another host and
one whose certificate no trusted CA signed."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from brokercore.config import KafkaSettings, ServiceSettings
from brokercore.edge.signature import SIGNATURE_HEADER, TOLERANCE, verify
from brokercore.engine.records import EventType, Op, Reason, Side
from brokercore.kafka.messages import Event, EventBatch, encode
from brokercore.kafka.topics import partition_of
from brokercore.notify.consumer import notifier_group_id
from brokercore.notify.dead_letters import DeadLetters, PostbackDeadLetter
from brokercore.notify.postbacks import MAX_POSTBACKS
from brokercore.realtime.channels import Notification
from brokercore.services.notifier_api import create_app
from brokercore.services.reconciler import retry_postbacks
from http_support import assert_error
from oms_support import auth
from postback_endpoint import Authority, Endpoint
from shared_servers import KAFKA_BOOTSTRAP, service_settings
from waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TS = int(datetime(2026, 3, 2, 5, 0, tzinfo=UTC).timestamp()) * 10**9


async def rest(settings: ServiceSettings, calls):
    """``calls(request)`` against the notifier API in this process (its lifespan run);
    ``request(method, path, user="alice", **httpx kwargs)``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:

            async def request(method: str, path: str, user: str | None = "alice", **kwargs):
                headers = (auth(user) if user else {}) | kwargs.pop("headers", {})
                return await client.request(method, path, headers=headers, **kwargs)

            return await calls(request)


def register(settings: ServiceSettings, urls: list[str]) -> list[dict]:
    """Alice's registrations of ``urls`` through the API: their answers."""

    async def calls(request):
        answers = []
        for url in urls:
            response = await request("POST", "/api/v1/postbacks", json={"url": url})
            assert response.status_code == 201, response.text
            answers.append(response.json())
        return answers

    return asyncio.run(rest(settings, calls))


# --- registration -------------------------------------------------------------------------


def test_registration_over_rest(database):
    settings = service_settings(database, f"t{uuid.uuid4().hex[:12]}:")
    path = "/api/v1/postbacks"

    async def calls(request):
        made = await request("POST", path, json={"url": "https://hooks.example.com/orders?a=1"})
        assert made.status_code == 201, made.text
        first = made.json()
        assert set(first) == {"id", "url", "createdAt", "secret"}
        assert first["url"] == "https://hooks.example.com/orders?a=1" and len(first["secret"]) == 64
        listed = (await request("GET", path)).json()
        assert listed == {"postbacks": [{k: v for k, v in first.items() if k != "secret"}]}
        assert (await request("GET", path, user="bob")).json() == {"postbacks": []}

        bad_urls = {
            "http://hooks.example.com/orders": "https",
            "ftp://hooks.example.com/": "https",
            "https:///no-host": "host",
            "https://user:pw@hooks.example.com/": "credentials",
            "https://hooks.example.com/#x": "fragment",
            "https://hooks.example.com:99999/": "URL",
            "https://hooks.example.com/a b": "spaces",
            "https://hooks.example.com/\u00e9": "ASCII",
            "https://127.0.0.1/": "private",
            "https://10.1.2.3/": "private",
            "https://[::1]:8443/": "private",
            "https://localhost/": "private",
            "https://hooks.example.com/" + "a" * 2000: "length",
            "": "length",
        }
        for url, said in bad_urls.items():
            error = assert_error(
                await request("POST", path, json={"url": url}), 422, "INVALID_REQUEST"
            )
            assert error["fields"][0]["field"] == "url", (url, error)
            assert said in error["fields"][0]["message"], (url, error)
        for body in ({}, {"url": "https://a.example.com/", "secret": "mine"}, [], {"url": 5}):
            assert_error(await request("POST", path, json=body), 422, "INVALID_REQUEST")
        assert_error(
            await request(
                "POST",
                path,
                content=b'{"url": "https://a.example.com/\\u0000"}',
                headers={"Content-Type": "application/json"},
            ),
            400,
        )
        assert_error(
            await request(
                "POST", path, content=b"{not json", headers={"Content-Type": "application/json"}
            ),
            400,
            "MALFORMED_JSON",
        )

        for n in range(2, MAX_POSTBACKS + 1):
            more = await request("POST", path, json={"url": f"https://h{n}.example.com/"})
            assert more.status_code == 201, more.text
        assert_error(
            await request("POST", path, json={"url": "https://h6.example.com/"}),
            409,
            "TOO_MANY_POSTBACKS",
        )
        assert len((await request("GET", path)).json()["postbacks"]) == MAX_POSTBACKS

        one = f"{path}/{first['id']}"
        assert_error(await request("DELETE", one, user="bob"), 404, "POSTBACK_NOT_FOUND")
        for unknown in ("999999999", "abc", "1" * 30, "-1"):
            assert_error(await request("DELETE", f"{path}/{unknown}"), 404, "POSTBACK_NOT_FOUND")
        assert (await request("DELETE", one)).status_code == 204
        assert_error(await request("DELETE", one), 404, "POSTBACK_NOT_FOUND")
        again = await request("POST", path, json={"url": "https://again.example.com/"})
        assert again.status_code == 201  # the freed slot
        racing = await asyncio.gather(  # carol's, all at once: the slots hold
            *(
                request("POST", path, user="carol", json={"url": f"https://r{n}.example.com/"})
                for n in range(MAX_POSTBACKS + 3)
            )
        )
        assert sorted(r.status_code for r in racing) == [201] * MAX_POSTBACKS + [409] * 3
        for method, route in (("GET", path), ("POST", path), ("DELETE", one)):
            assert_error(await request(method, route, user=None, json={}), 401, "UNAUTHENTICATED")

    asyncio.run(rest(settings, calls))
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute(
            "SELECT user_id, count(*) FROM postbacks GROUP BY user_id ORDER BY user_id"
        ).fetchall() == [("alice", MAX_POSTBACKS), ("carol", MAX_POSTBACKS)]
        for url, slot in (("http://plain.example.com/", 1), ("https://x.example.com/", 6)):
            with pytest.raises(psycopg.errors.CheckViolation):  # the database refuses too
                conn.execute(
                    "INSERT INTO postbacks (user_id, slot, url, secret) VALUES "
                    "('dave', %s, %s, repeat('s', 64))",
                    (slot, url),
                )


# --- delivery, end to end -------------------------------------------------------------------


def event(kind: EventType, seq: int, order_id: int, account: int, **fields) -> Event:
    """An event of an order of ours on RELIANCE; its shard_seq is ``seq``."""
    values = {"qty": 0, "remaining": 0, "price": 300_000, "reason": Reason.NONE} | fields
    return Event(
        seq,
        "RELIANCE",
        kind,
        values["reason"],
        values.get("op", Op.LIMIT),
        Side.BUY,
        seq,
        TS + seq * 1000,
        order_id,
        account,
        values["price"],
        values["qty"],
        values["remaining"],
        10**9 + seq,  # the other side: another broker's order
        10**6,
        0,
    )


def place(database: str, quantity: int) -> tuple[int, int]:
    """An order of alice's as the OMS stores it: (order id, account id)."""
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO orders (trade_date, account_id, symbol, side, type, price, quantity) "
            "SELECT %s, account_id, 'RELIANCE', 'BUY', 'LIMIT', 1500000, %s FROM accounts "
            "WHERE user_id = 'alice' RETURNING order_id, account_id",
            (date(2026, 3, 2), quantity),
        ).fetchone()


def produce(kafka: KafkaSettings, partition: int, batches: list[EventBatch]) -> int:
    """The batches on ``events`` in one Kafka transaction, as the engine publishes; the
    last one's offset."""
    producer = Producer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    offsets = []

    def delivered(error, message):
        assert error is None, error
        offsets.append(message.offset())

    producer.init_transactions(30)
    producer.begin_transaction()
    for batch in batches:
        producer.produce(
            kafka.events_topic, encode(batch), partition=partition, on_delivery=delivered
        )
    producer.flush(30)
    producer.commit_transaction(30)
    return max(offsets)


def committed(kafka: KafkaSettings, partition: int) -> int:
    consumer = Consumer(
        {"bootstrap.servers": KAFKA_BOOTSTRAP, "group.id": notifier_group_id(kafka.topic_prefix)}
    )
    try:
        [tp] = consumer.committed([TopicPartition(kafka.events_topic, partition)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def dead_letters(kafka: KafkaSettings) -> list[PostbackDeadLetter]:
    consumer = Consumer(
        {
            "bootstrap.servers": KAFKA_BOOTSTRAP,
            "group.id": uuid.uuid4().hex,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(kafka.postback_dead_letter_topic, 0, 0)])
    letters, decoder = [], msgspec.msgpack.Decoder(PostbackDeadLetter)
    try:
        while True:
            message = consumer.poll(10)
            assert message is not None, "the dead-letter topic did not answer"
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF
                return letters
            letters.append(decoder.decode(message.value()))
    finally:
        consumer.close()


def notifier_process(
    settings: ServiceSettings, kafka: KafkaSettings, ca_file: Path, log, **more: str
) -> subprocess.Popen:
    """``brokercore service notifier --from-beginning``, no push provider, postbacks
    trusting ``ca_file``, answered within 2 s, tried 3 times 0.05 s apart; ``more``:
    other BROKERCORE_ variables."""
    env = os.environ | {
        "BROKERCORE_DATABASE_URL": settings.database_url,
        "BROKERCORE_REDIS_URL": settings.redis_url,
        "BROKERCORE_REDIS_PREFIX": settings.redis_prefix,
        "BROKERCORE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "BROKERCORE_TOPIC_PREFIX": kafka.topic_prefix,
        "BROKERCORE_SHARDS": str(kafka.shards),
        "BROKERCORE_PUSH_URL": "",
        "BROKERCORE_PUSH_RETRY_BASE": "0.05",
        "BROKERCORE_PUSH_RETRY_CAP": "0.05",
        "BROKERCORE_PUSH_ATTEMPTS": "3",
        "BROKERCORE_POSTBACK_TIMEOUT": "2",
        "BROKERCORE_POSTBACK_CA_FILE": str(ca_file),
    }
    env |= {f"BROKERCORE_{name.upper()}": value for name, value in more.items()}
    return subprocess.Popen(
        [sys.executable, "-m", "brokercore.cli", "service", "notifier", "--from-beginning"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_order_updates_are_posted_signed_in_order_retried_and_dead_lettered(
    database, kafka, tmp_path
):
    trusted, rogue = Authority(tmp_path, "trusted"), Authority(tmp_path, "rogue")
    loopback = trusted.issue("loopback", ["127.0.0.1"])
    endpoints = {
        "good": Endpoint(*loopback),
        "slow": Endpoint(*loopback, slow=1, delay=60),  # its first answer trickles, never whole
        "failing": Endpoint(*loopback, failing=1000, status=500),
        "other-host": Endpoint(*trusted.issue("other", ["hooks.other.example"])),
        "untrusted": Endpoint(*rogue.issue("loopback", ["127.0.0.1"])),
    }
    settings = service_settings(database, f"t{uuid.uuid4().hex[:12]}:", postback_private_hosts=True)
    names = list(endpoints)
    secrets = {
        name: answer["secret"]
        for name, answer in zip(
            names, register(settings, [endpoints[n].url() for n in names]), strict=True
        )
    }
    bought, account = place(database, 10)
    cancelled, _ = place(database, 5)
    shard = partition_of("RELIANCE", kafka.shards)
    last = produce(
        kafka,
        shard,
        [
            EventBatch(
                shard,
                [event(EventType.TRADE, 3, bought, account, qty=4, remaining=6)],
            ),
            EventBatch(
                shard,
                [
                    event(EventType.TRADE, 4, bought, account, qty=6, remaining=0),
                    event(
                        EventType.CANCELLED,
                        5,
                        cancelled,
                        account,
                        qty=5,
                        reason=Reason.USER_CANCEL,
                    ),
                ],
            ),
        ],
    )
    fills = [f"{shard}:3:{bought}", f"{shard}:4:{bought}"]
    every = {*fills, f"{shard}:5:{cancelled}"}
    log = open(tmp_path / "notifier.log", "w")
    process = notifier_process(settings, kafka, trusted.ca_file, log)
    try:
        good, slow = endpoints["good"], endpoints["slow"]

        def ids(endpoint: Endpoint, status: int | None = None) -> list[str]:
            return [
                json.loads(r.body)["id"]
                for r in endpoint.seen()
                if status is None or r.status == status
            ]

        # the good endpoint has them all while the slow one still holds its first request
        wait_until(lambda: set(ids(good)) == every and slow.seen(), "the good endpoint's postbacks")
        assert not slow.released.is_set()
        # committed once every postback is delivered or dead-lettered
        wait_until(lambda: committed(kafka, shard) == last + 1, "the offsets committed", timeout=60)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
        for endpoint in endpoints.values():
            endpoint.close()
    assert code == 0, (tmp_path / "notifier.log").read_text()

    # the good endpoint: each update (again only if an answer came too late on a loaded
    # machine), signed with its registration's secret, the order's fills in order, the
    # notification as the WebSocket carries it
    requests = good.seen()
    assert set(ids(good)) == every
    assert list(dict.fromkeys(i for i in ids(good) if i in fills)) == fills
    for r in requests:
        header = r.headers[SIGNATURE_HEADER]
        assert verify(secrets["good"], header, r.body, now=r.received)
        assert not verify(secrets["slow"], header, r.body, now=r.received)
        assert not verify(secrets["good"], header, r.body, now=r.received + TOLERANCE + 2)
        assert r.headers["Content-Type"] == "application/json" and r.path == "/hooks/orders"
    first = json.loads(requests[ids(good).index(fills[0])].body)
    assert first | {"createdAt": "-"} == {
        "type": "NOTIFICATION",
        "id": fills[0],
        "kind": "FILL",
        "title": "Order partially filled",
        "body": "Your order to BUY 10 RELIANCE partially filled: 4 of 10 at 15,000.00",
        "symbol": "RELIANCE",
        "createdAt": "-",
        "orderId": bought,
    }

    # the slow one: its first answer, a byte at a time, timed out whole; sent again
    assert ids(slow).count(ids(slow)[0]) >= 2 and set(ids(slow)[1:]) == every
    assert "no whole answer within 2 s" in (tmp_path / "notifier.log").read_text()

    # the failing one: 3 tries each, a fill only after the one before it was given up
    failing = ids(endpoints["failing"], 500)
    assert Counter(failing) == Counter({i: 3 for i in every})
    assert [i for i in failing if i in fills] == [fills[0]] * 3 + [fills[1]] * 3

    # the wrong certificates: no request ever read, every attempt refused at the handshake
    for name in ("other-host", "untrusted"):
        assert endpoints[name].seen() == [] and endpoints[name].refused >= 9, name

    letters = dead_letters(kafka)
    by_url = {endpoints[n].url(): n for n in names}
    assert Counter((by_url[x.url], x.notification.id) for x in letters) == Counter(
        (name, i) for name in ("failing", "other-host", "untrusted") for i in every
    )
    for x in letters:
        assert (x.user_id, x.attempts) == ("alice", 3)
        expected = "HTTP 500" if by_url[x.url] == "failing" else "CERTIFICATE_VERIFY_FAILED"
        assert expected in x.last_error, x


def test_the_reconciler_retries_dead_lettered_postbacks(database, kafka, tmp_path):
    trusted = Authority(tmp_path, "trusted")
    endpoint = Endpoint(*trusted.issue("loopback", ["127.0.0.1"]), failing=1, status=503)
    settings = service_settings(
        database,
        f"t{uuid.uuid4().hex[:12]}:",
        postback_private_hosts=True,
        postback_ca_file=str(trusted.ca_file),
    )
    [registration] = register(settings, [endpoint.url()])
    n = Notification("1:9:4", "CANCELLED", "Order cancelled", "b", "RELIANCE", "2026-03-02", 4)
    letters = [
        PostbackDeadLetter(n, "alice", int(registration["id"]), endpoint.url(), 6, "HTTP 500", "t"),
        PostbackDeadLetter(n, "alice", 10**9, "https://gone.example.com/", 6, "HTTP 500", "t"),
    ]

    async def dead_letter() -> None:
        producer = DeadLetters(KAFKA_BOOTSTRAP, kafka.postback_dead_letter_topic)
        try:
            for letter in letters:
                await producer.put(letter)
        finally:
            producer.close()

    def reconcile():
        return asyncio.run(retry_postbacks(settings, kafka, True, asyncio.Event()))

    try:
        asyncio.run(dead_letter())
        first = reconcile()  # the endpoint answers 503 once; the deleted one is dropped
        assert (first.delivered, first.failed, first.unreadable) == (1, 1, 0)
        assert [(x.postback_id, x.attempts) for x in dead_letters(kafka)[2:]] == [
            (int(registration["id"]), 7)
        ]
        second = reconcile()
        assert (second.delivered, second.failed) == (1, 0)
        third = reconcile()  # its offsets committed: nothing left
        assert (third.delivered, third.failed) == (0, 0)
    finally:
        endpoint.close()
    [refused, taken] = endpoint.seen()
    assert (refused.status, taken.status) == (503, 200) and taken.body == refused.body
    assert json.loads(taken.body)["id"] == "1:9:4"
    assert verify(registration["secret"], taken.headers[SIGNATURE_HEADER], taken.body, time.time())


def test_every_order_update_is_posted_and_a_dead_url_is_paused(database, kafka, tmp_path):
    """Each order's ACCEPTED, AMENDED (a modify) and fill reach a live endpoint in that
    order (postbacks only: the inbox keeps the fill alone); a dead endpoint (every answer
    500) is paused after 2 postbacks dead-lettered in a row: later ones are dead-lettered
    untried, so they cost the notifier no attempts and the live one still gets all."""
    trusted = Authority(tmp_path, "trusted")
    loopback = trusted.issue("loopback", ["127.0.0.1"])
    live, dead = Endpoint(*loopback), Endpoint(*loopback, failing=10**6, status=500)
    settings = service_settings(database, f"t{uuid.uuid4().hex[:12]}:", postback_private_hosts=True)
    register(settings, [live.url(), dead.url()])
    shard = partition_of("RELIANCE", kafka.shards)
    seqs = itertools.count(1)

    def updates(orders: int) -> tuple[list[list[str]], int]:
        """Each new order's accepted, modified (10 -> 12 at 14,995.00) and filled, spread
        over three messages of one transaction: their ids per order; the last offset."""
        placed = [place(database, 10) for _ in range(orders)]
        kinds = (
            (EventType.ACCEPTED, {"qty": 10, "remaining": 10}),
            (EventType.AMENDED, {"qty": 12, "remaining": 12, "op": Op.AMEND, "price": 299_900}),
            (EventType.TRADE, {"qty": 12, "remaining": 0, "price": 299_900}),
        )
        batches, ids = [], [[] for _ in placed]
        for kind, fields in kinds:
            events = []
            for n, (order_id, account) in enumerate(placed):
                seq = next(seqs)
                events.append(event(kind, seq, order_id, account, **fields))
                ids[n].append(f"{shard}:{seq}:{order_id}")
            batches.append(EventBatch(shard, events))
        return ids, produce(kafka, shard, batches)

    def posted(endpoint: Endpoint) -> list[dict]:
        return [json.loads(r.body) for r in endpoint.seen()]

    first, last = updates(4)
    log = open(tmp_path / "notifier.log", "w")
    process = notifier_process(settings, kafka, trusted.ca_file, log, postback_breaker_failures="2")
    try:
        wait_until(lambda: committed(kafka, shard) == last + 1, "the first offsets", timeout=60)
        tried = len(dead.seen())
        second, last = updates(10)
        wait_until(lambda: committed(kafka, shard) == last + 1, "the second offsets", timeout=60)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
        live.close()
        dead.close()
    text = (tmp_path / "notifier.log").read_text()
    assert code == 0, text

    # the live endpoint: per order, accepted, modified, filled, in order
    got = posted(live)
    for order in (*first, *second):
        assert [p["id"] for p in got if p["id"] in order] == order
    [accepted, modified, filled] = [p for p in got if p["id"] in first[0]]
    assert [accepted["kind"], modified["kind"], filled["kind"]] == ["OPEN", "MODIFIED", "FILL"]
    assert accepted["body"] == "Your order to BUY 10 RELIANCE at 15,000.00 is open"
    assert modified["body"] == "Your order to BUY RELIANCE was modified: 12 open at 14,995.00"
    assert modified["title"] == "Order modified" and modified["orderId"] == accepted["orderId"]
    with psycopg.connect(database, autocommit=True) as conn:  # the updates: postbacks only
        stored = conn.execute(
            "SELECT notification->>'kind', count(*) FROM notification_inbox GROUP BY 1"
        ).fetchall()
    assert stored == [("FILL", 14)]

    # the dead endpoint: 3 tries of at most each first order's postback in flight when
    # the breaker opened, then none at all; everything dead-lettered, once
    assert "paused for 300 s: 2 dead-lettered in a row" in text
    assert tried <= 3 * (len(first) + 2) and len(dead.seen()) == tried
    letters = dead_letters(kafka)
    assert Counter(x.notification.id for x in letters) == Counter(
        i for order in (*first, *second) for i in order
    )
    later = [x for x in letters if any(x.notification.id in order for order in second)]
    assert {(x.attempts, x.url) for x in later} == {(0, dead.url())}
    assert all("paused after" in x.last_error for x in later)


def test_the_reconciler_pauses_a_dead_url_too(database, kafka, tmp_path):
    """A pass over 12 dead letters of an endpoint that answers 500: 2 failures in a row
    pause its URL, so at most those and the sends already under way (4 at once to one
    registration) reach it; every letter goes back on the topic, the untried ones saying
    why."""
    trusted = Authority(tmp_path, "trusted")
    dead = Endpoint(*trusted.issue("loopback", ["127.0.0.1"]), failing=10**6, status=500)
    settings = service_settings(
        database,
        f"t{uuid.uuid4().hex[:12]}:",
        postback_private_hosts=True,
        postback_ca_file=str(trusted.ca_file),
        postback_breaker_failures=2,
    )
    [registration] = register(settings, [dead.url()])
    ids = [f"1:{seq}:4" for seq in range(12)]

    async def dead_letter() -> None:
        producer = DeadLetters(KAFKA_BOOTSTRAP, kafka.postback_dead_letter_topic)
        try:
            for i in ids:
                n = Notification(i, "FILL", "Order filled", "b", "RELIANCE", "2026-03-02", 4)
                letter = PostbackDeadLetter(
                    n, "alice", int(registration["id"]), dead.url(), 3, "HTTP 500", "t"
                )
                await producer.put(letter)
        finally:
            producer.close()

    try:
        asyncio.run(dead_letter())
        done = asyncio.run(retry_postbacks(settings, kafka, True, asyncio.Event()))
    finally:
        dead.close()
    assert (done.delivered, done.failed) == (0, len(ids))
    assert 2 <= len(dead.seen()) <= 2 + settings.postback_per_url
    again = dead_letters(kafka)[len(ids) :]
    assert sorted(x.notification.id for x in again) == sorted(ids)
    paused = [x for x in again if x.last_error.startswith("paused after ")]
    assert len(paused) == len(ids) - len(dead.seen())
