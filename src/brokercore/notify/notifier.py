"""Notifications: the engine's events and price alerts told to people, in the app (Redis
pub/sub, which the WebSocket gateways relay) or by push (an HTTP push provider).

What is told: for an order of ours (in ``orders``), each FILL of each of its sides of a
TRADE, and its CANCELLED, EXPIRED and REJECTED (a refused cancel or amend, or a re-sent
order's DUPLICATE_ORDER_ID, is not news: the order is unchanged); and PRICE_ALERT when a
trade crosses a user's alert (``brokercore.notify.alerts``).

How, per user and kind (``notification_preferences``; no row = IN_APP):

- IN_APP: published on the user's channel; when no WebSocket of theirs is live (no
  member of ``ws:online:{user}`` scored after now), also pushed to their devices.
- PUSH: pushed to their devices; published too while they are online.
- NONE: nothing.

An order's notification follows its ORDER_UPDATE: the projector and the notifier read
``events`` apart, so the notifier publishes a batch's in-app notifications once the
projector has published the batch's updates (its offsets under
``streams.projected_key``, which it sets after them), waiting at most
``projector_wait`` seconds; a projector that is down or that far behind does not hold
notifications up for longer, and while it stays where it was, batches do not wait again.

Delivery is at-least-once: a notification's id is derived from what caused it
(``{shard}:{shard_seq}:{order_id}``, ``alert:{alert_id}:{trade_id}``), so a client
drops a second copy. A push is retried after base, 2·base, 4·base ... seconds (capped)
up to the configured number of attempts; then it goes to the dead-letter topic as a
``PushDeadLetter``, which the reconciler retries every few minutes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal, Protocol

import httpx
import msgspec
from confluent_kafka import (
    Consumer, KafkaError, KafkaException, Producer, TopicPartition,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from brokercore.notify.alerts import Fire, TradePrice, apply_trades
from brokercore.faults.backoff import retry_delay    # re-exported: the push back-off
from brokercore.faults.kafka_errors import QUIET_KAFKA
from brokercore.broker.market import MarketInstrument, format_paise
from brokercore.kafka.messages import Event, encode
from brokercore.consumers.pg_consumer import Message
from brokercore.engine.records import EventType, Op, Reason
from brokercore.consumers.settlement import event_time, trade_id
from brokercore.realtime.channels import (
    Notification, encode_message, online_key, projected_key, user_channel,
)

__all__ = ["Preferences", "KINDS", "DeviceRequest", "OrderOwner", "order_notifications",
           "alert_notification", "PushFailed", "PushProvider", "HttpPushProvider",
           "push_payload", "retry_delay", "PushDeadLetter", "DeadLetters", "Push",
           "Notifier", "Redelivery", "redeliver_dead_letters", "notifier_group",
           "retry_group", "load_preferences", "store_preferences", "add_device",
           "remove_device"]

log = logging.getLogger("brokercore.notify.notifier")

Channel = Literal["IN_APP", "PUSH", "NONE"]


class Preferences(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a user hears of each kind; the body of PUT/GET .../preferences. A PUT
    replaces them all: a kind it leaves out is IN_APP again."""

    FILL: Channel = "IN_APP"
    CANCELLED: Channel = "IN_APP"
    EXPIRED: Channel = "IN_APP"
    REJECTED: Channel = "IN_APP"
    PRICE_ALERT: Channel = "IN_APP"


KINDS = Preferences.__struct_fields__


class DeviceRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    """A push device to register: the provider's token (FCM's are base64url with ':',
    APNs' hex), so it can also stand in a URL path."""

    device_token: Annotated[str, msgspec.Meta(min_length=1, max_length=512,
                                              pattern=r"^[A-Za-z0-9_:.\-]+$")]


def notifier_group(prefix: str) -> str:
    """The notifier's consumer group on ``events`` (its committed offsets)."""
    return f"{prefix}brokercore-notifier"


def retry_group(prefix: str) -> str:
    """The reconciler's consumer group on the notifications' dead-letter topic."""
    return f"{prefix}brokercore-notification-retry"


# --- preferences and devices (the REST app and the router) ----------------------------

async def load_preferences(conn: AsyncConnection, user: str) -> Preferences:
    rows = await (await conn.execute(
        "SELECT event_type, channel FROM notification_preferences WHERE user_id = %s",
        (user,))).fetchall()
    return Preferences(**dict(rows))


async def store_preferences(conn: AsyncConnection, user: str, preferences: Preferences
                            ) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM notification_preferences WHERE user_id = %s", (user,))
        await conn.cursor().executemany(
            "INSERT INTO notification_preferences (user_id, event_type, channel) "
            "VALUES (%s, %s, %s)",
            [(user, kind, getattr(preferences, kind)) for kind in KINDS])


async def add_device(conn: AsyncConnection, user: str, token: str) -> bool:
    """Register a device for ``user``; True if it is new to them. A device belongs to
    the user who registered it last: a phone that changed accounts stops getting the
    previous account's pushes."""
    async with conn.transaction():
        await conn.execute("DELETE FROM push_devices WHERE device_token = %s AND user_id <> %s",
                           (token, user))
        cursor = await conn.execute(
            "INSERT INTO push_devices (user_id, device_token) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING", (user, token))
        return cursor.rowcount == 1


async def remove_device(conn: AsyncConnection, user: str, token: str) -> bool:
    cursor = await conn.execute(
        "DELETE FROM push_devices WHERE user_id = %s AND device_token = %s", (user, token))
    return cursor.rowcount == 1


# --- rendering ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderOwner:
    """What a notification says of an order, from the OMS's ``orders``."""

    user_id: str
    account_id: int
    side: str
    quantity: int


_OWNERS_SQL = """
SELECT o.order_id, a.user_id, a.account_id, o.side, o.quantity
  FROM orders o JOIN accounts a ON a.account_id = o.account_id
 WHERE o.order_id = ANY(%s)"""

_ENDS = {EventType.CANCELLED: "CANCELLED", EventType.EXPIRED: "EXPIRED",
         EventType.REJECTED: "REJECTED"}


def _told(e: Event) -> list[int]:
    """The order ids an event may tell someone about."""
    if e.type == EventType.TRADE:
        return [e.order_id, e.other_id]
    if e.type == EventType.REJECTED and (e.op not in (Op.LIMIT, Op.MARKET)
                                         or e.reason == Reason.DUPLICATE_ORDER_ID):
        return []
    return [e.order_id] if e.type in _ENDS else []


def _words(reason: int) -> str:
    return Reason(reason).name.lower().replace("_", " ")


def order_notifications(shard: int, e: Event, owners: Mapping[int, OrderOwner],
                        instrument: MarketInstrument) -> list[tuple[str, Notification]]:
    """(user, notification) for each order of ours the event tells about. A partial
    fill counts what is filled as the order's quantity less what is open after it."""
    told = []
    for order_id in _told(e):
        owner = owners.get(order_id)
        if owner is None:
            continue                    # another broker's order
        maker = e.type == EventType.TRADE and order_id == e.other_id
        if owner.account_id != (e.other_account if maker else e.account):
            log.warning("event %s:%s names account %s for order %s of account %s; ignored",
                        shard, e.shard_seq, e.account, order_id, owner.account_id)
            continue
        order = f"Your order to {owner.side} {owner.quantity:,} {e.symbol}"
        if e.type == EventType.TRADE:
            open_after = e.other_remaining if maker else e.remaining
            price = format_paise(instrument.ticks_to_paise(e.price))
            kind = "FILL"
            if open_after == 0:
                title, body = "Order filled", f"{order} filled at {price}"
            else:
                filled = owner.quantity - open_after
                title, body = ("Order partially filled", f"{order} partially filled: "
                               f"{filled:,} of {owner.quantity:,} at {price}")
        else:
            kind = _ENDS[e.type]
            if kind == "REJECTED":
                title, body = "Order rejected", f"{order} was rejected: {_words(e.reason)}"
            else:
                why = ("" if e.reason in (Reason.NONE, Reason.USER_CANCEL)
                       else f" ({_words(e.reason)})")
                unfilled = (f"; {e.qty:,} of {owner.quantity:,} unfilled"
                            if e.qty < owner.quantity else "")
                title, body = (("Order cancelled", f"{order} was cancelled{why}{unfilled}")
                               if kind == "CANCELLED" else
                               ("Order expired", f"{order} expired{unfilled}"))
        told.append((owner.user_id, Notification(
            f"{shard}:{e.shard_seq}:{order_id}", kind, title, body, e.symbol,
            event_time(e.ts).isoformat(), order_id)))
    return told


def alert_notification(fire: Fire) -> tuple[str, Notification]:
    alert, trade = fire.alert, fire.trade
    return alert.user_id, Notification(
        f"alert:{alert.alert_id}:{trade.trade_id}", "PRICE_ALERT",
        f"{alert.symbol} price alert",
        f"{alert.symbol} crossed {format_paise(alert.price)}: last {format_paise(trade.price)}",
        alert.symbol, trade.time.isoformat())


# --- push ---------------------------------------------------------------------------------

class PushFailed(Exception):
    """The provider did not take the push (refused, unreachable, timed out)."""


class PushProvider(Protocol):
    async def send(self, device_token: str, notification: Notification) -> None:
        """Hand one notification to the provider for one device; PushFailed if not."""


def push_payload(device_token: str, n: Notification) -> dict:
    """The FCM-style body of a push (data values are strings, as FCM requires)."""
    data = {"id": n.id, "kind": n.kind}
    if n.order_id is not None:
        data["orderId"] = str(n.order_id)
    return {"message": {"token": device_token,
                        "notification": {"title": n.title, "body": n.body}, "data": data}}


class HttpPushProvider:
    """Posts pushes to an HTTP endpoint; any answer but 2xx, or no answer within
    ``timeout`` seconds, is a failure."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.client = httpx.AsyncClient(timeout=timeout)

    async def send(self, device_token: str, notification: Notification) -> None:
        try:
            response = await self.client.post(self.url,
                                              json=push_payload(device_token, notification))
        except httpx.HTTPError as e:
            raise PushFailed(f"{type(e).__name__}: {e}") from None
        if not response.is_success:
            raise PushFailed(f"HTTP {response.status_code}: {response.text[:200]}")

    async def aclose(self) -> None:
        await self.client.aclose()


class PushDeadLetter(msgspec.Struct, rename="camel", frozen=True):
    """A push that failed every attempt (msgpack, on the notifications' dead-letter
    topic, keyed by the notification's id)."""

    notification: Notification
    user_id: str
    device_token: str
    attempts: int
    last_error: str
    failed_at: str              # ISO 8601 UTC


class DeadLetters:
    """Produces dead letters, each acknowledged by Kafka before ``put`` returns."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 10.0):
        self.topic, self.timeout = topic, timeout
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                   "linger.ms": 5, "message.timeout.ms": int(timeout * 1000),
                                   **QUIET_KAFKA})
        self._lock = threading.Lock()       # one flush at a time sees its own report

    async def put(self, letter: PushDeadLetter) -> None:
        """KafkaException if the broker did not acknowledge it."""
        await asyncio.to_thread(self._put, letter.notification.id.encode(), encode(letter))

    def _put(self, key: bytes, value: bytes) -> None:
        reports = []
        with self._lock:
            self._producer.produce(self.topic, value, key,
                                   on_delivery=lambda error, _: reports.append(error))
            self._producer.flush(self.timeout + 1)
        if not reports:
            raise KafkaException(f"no acknowledgement from {self.topic}")
        if reports[0] is not None:
            raise KafkaException(reports[0])

    def close(self) -> None:
        self._producer.flush(self.timeout)


# --- routing and delivery -------------------------------------------------------------------

_RECORD_FIRE = """
INSERT INTO alert_fires (notification_id, user_id, notification, partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"""

_notification = msgspec.json.Decoder(Notification)

@dataclass(frozen=True)
class Push:
    user_id: str
    device_token: str
    notification: Notification


PROJECTOR_POLL = 0.002
"""Seconds between two looks at the projector's offsets while waiting for them."""


class Notifier:
    """Turns batches of ``events`` into notifications: publishes the in-app ones and
    returns the pushes each message owes; ``deliver`` runs one push to its end. With
    ``events_topic`` (the topic the messages come from), an order's notifications wait
    for the projector's update of it (see the module's docstring); without, they don't."""

    def __init__(self, pool: AsyncConnectionPool, redis: Redis, prefix: str,
                 market: Mapping[str, MarketInstrument], provider: PushProvider | None,
                 dead_letters: DeadLetters, *, retry_base: float = 1.0,
                 retry_cap: float = 60.0, attempts: int = 6, concurrency: int = 64,
                 events_topic: str | None = None, projector_wait: float = 2.0):
        if attempts < 1:
            raise ValueError("a push needs at least one attempt")
        self.pool, self.redis, self.prefix, self.market = pool, redis, prefix, market
        self.provider, self.dead_letters = provider, dead_letters
        self.retry_base, self.retry_cap, self.attempts = retry_base, retry_cap, attempts
        self._slots = asyncio.Semaphore(concurrency)     # pushes in flight at once
        self.events_topic, self.projector_wait = events_topic, projector_wait
        self._stalled: dict[int, int] | None = None     # its offsets when a wait ran out
        self.published = self.pushed = self.dead_lettered = self.overtaken = 0

    async def handle(self, messages: Sequence[Message]) -> list[list[Push]]:
        """Publish the batch's in-app notifications and move its alerts; returns, per
        message, the pushes it owes."""
        ids = sorted({i for _, _, batch in messages for e in batch.events for i in _told(e)})
        items: list[tuple[int, str, Notification]] = []
        trades: list[TradePrice] = []
        trade_message: dict[str, int] = {}
        async with self.pool.connection() as conn:
            owners = {order_id: OrderOwner(*rest) for order_id, *rest in await (
                await conn.execute(_OWNERS_SQL, (ids,))).fetchall()} if ids else {}
            for index, (_, _, batch) in enumerate(messages):
                for e in batch.events:
                    instrument = self.market.get(e.symbol)
                    if instrument is None:
                        continue            # not a symbol of ours: no order, no alert
                    items += [(index, *told) for told in
                              order_notifications(batch.shard, e, owners, instrument)]
                    if e.type == EventType.TRADE:
                        trade = TradePrice(trade_id(e), e.symbol,
                                           instrument.ticks_to_paise(e.price), event_time(e.ts))
                        trades.append(trade)
                        trade_message[trade.trade_id] = index
            async with conn.transaction():      # the alerts' moves and their fires
                fires = [(trade_message[f.trade.trade_id], *alert_notification(f))
                         for f in await apply_trades(conn, trades)]
                await conn.cursor().executemany(_RECORD_FIRE, [
                    (n.id, user, encode_message(n).decode(), *messages[index][:2])
                    for index, user, n in fires])
        items += fires
        if items:
            await self._after_projector(messages)
        owed: list[list[Push]] = [[] for _ in messages]
        for (index, _, _), pushes in zip(items, await self.route(
                [(user, n) for _, user, n in items])):
            owed[index] += pushes
        return owed

    async def _after_projector(self, messages: Sequence[tuple[int, int, object]]) -> None:
        """Wait until the projector has published what it made of these messages (at
        most ``projector_wait`` s; not at all if it is still where it was when a wait
        last ran out)."""
        if self.events_topic is None:
            return
        needed: dict[int, int] = {}
        for partition, offset, _ in messages:
            needed[partition] = max(needed.get(partition, 0), offset + 1)
        key = projected_key(self.prefix, self.events_topic)
        deadline = time.monotonic() + self.projector_wait
        while True:
            projected = {int(p): int(o) for p, o in (await self.redis.hgetall(key)).items()}
            if all(projected.get(p, 0) >= o for p, o in needed.items()):
                self._stalled = None
                return
            if projected == self._stalled:
                self.overtaken += 1
                return
            if time.monotonic() >= deadline:
                log.warning("the projector has not published events %s (it is at %s) after "
                            "%.1f s: telling before it, and not waiting while it stays there",
                            needed, projected, self.projector_wait)
                self._stalled = projected
                self.overtaken += 1
                return
            await asyncio.sleep(PROJECTOR_POLL)

    async def unsent_fires(self) -> list[Push]:
        """Publish again the alert fires a notifier that died left unconfirmed (in
        ``alert_fires``); returns their pushes."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT user_id, notification::text FROM alert_fires "
                "ORDER BY partition, kafka_offset, notification_id")).fetchall()
        items = [(user, _notification.decode(n)) for user, n in rows]
        if items:
            log.info("sending %d price alert notifications again", len(items))
        return [push for pushes in await self.route(items) for push in pushes]

    async def forget_fires(self, committed: Mapping[int, int]) -> None:
        """The fires of messages before these committed offsets are out: forget them."""
        if committed:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM alert_fires f USING unnest(%s::int[], %s::bigint[]) AS c "
                    "(partition, next_offset) WHERE f.partition = c.partition "
                    "AND f.kafka_offset < c.next_offset", (list(committed),
                                                           list(committed.values())))

    async def route(self, items: Sequence[tuple[str, Notification]]) -> list[list[Push]]:
        """Publish the in-app ones of (user, notification) by the users' preferences and
        presence; returns the pushes each one owes."""
        users = sorted({user for user, _ in items})
        if not users:
            return []
        async with self.pool.connection() as conn:
            channels = {(u, kind): channel for u, kind, channel in await (await conn.execute(
                "SELECT user_id, event_type, channel FROM notification_preferences "
                "WHERE user_id = ANY(%s)", (users,))).fetchall()}
            devices: dict[str, list[str]] = defaultdict(list)
            if self.provider is not None:
                for user, token in await (await conn.execute(
                        "SELECT user_id, device_token FROM push_devices WHERE user_id = "
                        "ANY(%s) ORDER BY user_id, created_at", (users,))).fetchall():
                    devices[user].append(token)
        online = await self._online(users)
        owed: list[list[Push]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for user, n in items:
                channel = channels.get((user, n.kind), "IN_APP")
                pushes = []
                if channel != "NONE":
                    if channel == "IN_APP" or online[user]:
                        pipe.publish(user_channel(self.prefix, user), encode_message(n))
                        self.published += 1
                    if channel == "PUSH" or not online[user]:
                        pushes = [Push(user, token, n) for token in devices[user]]
                owed.append(pushes)
            await pipe.execute()
        return owed

    async def _online(self, users: Sequence[str]) -> dict[str, bool]:
        """Whether a WebSocket gateway holds each user now (a registration not lapsed)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcount(online_key(self.prefix, user), f"({now}", "+inf")
            counts = await pipe.execute()
        return {user: count > 0 for user, count in zip(users, counts)}

    async def deliver(self, push: Push) -> bool:
        """Push, retrying with backoff; after the last attempt the push is dead-lettered
        (retried until Kafka takes it). True if the provider took it."""
        error = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(retry_delay(attempt - 1, self.retry_base, self.retry_cap))
            try:
                async with self._slots:
                    await self.provider.send(push.device_token, push.notification)
                self.pushed += 1
                return True
            except PushFailed as e:
                error = str(e)
                log.info("push %s to %s failed (attempt %d of %d): %s", push.notification.id,
                         push.user_id, attempt, self.attempts, error)
        letter = PushDeadLetter(push.notification, push.user_id, push.device_token,
                                self.attempts, error, datetime.now(UTC).isoformat())
        retry = 0
        while True:
            try:
                await self.dead_letters.put(letter)
                break
            except KafkaException as e:
                retry += 1
                log.warning("dead-lettering push %s failed (%s); retrying",
                            push.notification.id, e)
                await asyncio.sleep(retry_delay(retry, self.retry_base, self.retry_cap))
        self.dead_lettered += 1
        log.warning("push %s to %s dead-lettered after %d attempts: %s",
                    push.notification.id, push.user_id, self.attempts, error)
        return False


# --- the dead letters, once more (the reconciler) ----------------------------------------------

@dataclass
class Redelivery:
    """What one pass over the dead letters did."""

    delivered: int = 0
    failed: int = 0             # failed again: back on the topic, attempts + 1
    unreadable: int = 0         # not a PushDeadLetter: logged and passed over

    def __add__(self, other: Redelivery) -> Redelivery:
        return Redelivery(self.delivered + other.delivered, self.failed + other.failed,
                          self.unreadable + other.unreadable)


async def redeliver_dead_letters(bootstrap: str, topic: str, group: str,
                                 provider: PushProvider, dead_letters: DeadLetters,
                                 concurrency: int = 16) -> Redelivery:
    """One pass over the dead letters that are on ``topic`` when it starts, from
    ``group``'s committed offsets: each is pushed once more, one that fails again goes
    back on the topic with its attempts counted, and the group's offsets are committed
    past every letter done (up to the first whose re-dead-lettering failed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        letters = await asyncio.to_thread(_read_letters, consumer, topic)
        slots, stats = asyncio.Semaphore(concurrency), Redelivery()
        decoder = msgspec.msgpack.Decoder(PushDeadLetter)

        async def retry(value: bytes) -> None:
            try:
                letter = decoder.decode(value)
            except msgspec.DecodeError as e:
                log.error("unreadable dead letter on %s passed over: %s", topic, e)
                stats.unreadable += 1
                return
            async with slots:
                try:
                    await provider.send(letter.device_token, letter.notification)
                    stats.delivered += 1
                    return
                except PushFailed as e:
                    error = str(e)
            await dead_letters.put(msgspec.structs.replace(
                letter, attempts=letter.attempts + 1, last_error=error,
                failed_at=datetime.now(UTC).isoformat()))
            stats.failed += 1

        results = await asyncio.gather(*(retry(value) for _, _, value in letters),
                                       return_exceptions=True)
        done: dict[int, int] = {}
        stuck: set[int] = set()
        for (partition, offset, _), result in zip(letters, results):
            if isinstance(result, BaseException):
                log.error("dead letter %s/%s kept for the next pass: %s", partition, offset,
                          result)
                stuck.add(partition)
            elif partition not in stuck:
                done[partition] = offset + 1
        if done:
            await asyncio.to_thread(consumer.commit, offsets=[
                TopicPartition(topic, p, o) for p, o in sorted(done.items())],
                asynchronous=False)
        return stats
    finally:
        await asyncio.to_thread(consumer.close)


def _read_letters(consumer, topic: str, timeout: float = 30.0
                  ) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of the messages between the group's committed offsets
    and the ends of the partitions as they are now (so letters put back during the pass
    wait for the next one)."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    committed = consumer.committed([TopicPartition(topic, p) for p in metadata.partitions],
                                   timeout=timeout)
    start, end = {}, {}
    for tp in committed:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                   timeout=timeout)
        begin = max(tp.offset, low)         # none committed yet: OFFSET_INVALID (< 0)
        if begin < high:
            start[tp.partition], end[tp.partition] = begin, high
    if not start:
        return []
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    letters, deadline = [], time.monotonic() + timeout
    while end:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic} took over {timeout} s")
        message = consumer.poll(0.5)
        if message is None:
            continue
        partition = message.partition()
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                end.pop(partition, None)
                continue
            raise KafkaException(message.error())
        if partition in end and message.offset() < end[partition]:
            letters.append((partition, message.offset(), message.value()))
            if message.offset() + 1 >= end[partition]:
                end.pop(partition)
    return letters
