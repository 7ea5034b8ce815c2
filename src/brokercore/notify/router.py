"""Routing: each notification to its user by their preferences and presence, in the app
(Redis pub/sub, which the WebSocket gateways relay) or by push, each push to its end.

How, per user and kind (``brokercore.notify.preferences``; no row = IN_APP):

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

Every notification is stored in the user's inbox (``brokercore.notify.inbox``), whatever
the channel, before it is published. Delivery is at-least-once (clients drop a second
copy by the notification's id). A push is retried after base, 2·base, 4·base ... seconds
(capped) up to the configured number of attempts; then it goes to the dead-letter topic
(``brokercore.notify.dead_letters``), which the reconciler retries every few minutes
(``brokercore.notify.redelivery``). An order's notifications are also POSTed to each
postback URL of its user, whatever their preferences, retried on the same schedule and
then dead-lettered on the postbacks' topic (``brokercore.notify.postbacks``), with the
order's other updates (``render.order_updates``: accepted, modified), which go to
postbacks only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from confluent_kafka import KafkaException
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.typing import EncodableT, KeyT

from brokercore.broker.market import MarketInstrument
from brokercore.broker.orders import event_time, trade_id
from brokercore.engine.records import EventType
from brokercore.faults.backoff import retry_delay
from brokercore.kafka.messages import EventBatch
from brokercore.notify import inbox
from brokercore.notify.alerts import TradePrice, apply_trades
from brokercore.notify.dead_letters import DeadLetters, PostbackDeadLetter, PushDeadLetter
from brokercore.notify.postbacks import Paused, Postback, Postbacks, targets_of
from brokercore.notify.preferences import channels_of, devices_of
from brokercore.notify.push import PushFailed, PushProvider
from brokercore.notify.render import (
    UPDATE_KINDS,
    alert_notification,
    order_notifications,
    order_owners,
    order_updates,
    told,
    updated,
)
from brokercore.realtime.channels import (
    Notification,
    encode_message,
    online_key,
    projected_key,
    user_channel,
)

__all__ = ["Received", "Push", "Delivery", "Notifier", "PROJECTOR_POLL"]

log = logging.getLogger("brokercore.notify.router")

_RECORD_FIRE = """
INSERT INTO alert_fires (notification_id, user_id, notification, partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"""

_notification = msgspec.json.Decoder(Notification)

Received = tuple[int, int, EventBatch]
"""A message of ``events`` as the notifier hands it on: (partition, offset, batch)."""


@dataclass(frozen=True)
class Push:
    """One notification owed to one device of its user."""

    user_id: str
    device_token: str
    notification: Notification


Delivery = Push | Postback
"""What a notification owes besides its in-app publish: a push to a device, a postback."""


# A batch's publishes and presence checks, each one command (a pipeline of thousands of
# commands costs redis-py's asyncio client ~15 us of Python each).
_PUBLISH = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end"
_COUNT_ONLINE = """
local counts = {}
for i, key in ipairs(KEYS) do counts[i] = redis.call('ZCOUNT', key, '(' .. ARGV[1], '+inf') end
return counts"""

PROJECTOR_POLL = 0.002
"""Seconds between two looks at the projector's offsets while waiting for them."""


class Notifier:
    """Turns batches of ``events`` into notifications: publishes the in-app ones and
    returns the pushes and postbacks each message owes; ``deliver`` runs one to its end
    (postbacks only with ``postbacks``). With
    ``events_topic`` (the topic the messages come from), an order's notifications wait
    for the projector's update of it (see the module's docstring); without, they don't."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        redis: Redis,
        prefix: str,
        market: Mapping[str, MarketInstrument],
        provider: PushProvider | None,
        dead_letters: DeadLetters,
        *,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        attempts: int = 6,
        concurrency: int = 64,
        events_topic: str | None = None,
        projector_wait: float = 2.0,
        postbacks: Postbacks | None = None,
    ):
        if attempts < 1:
            raise ValueError("a push needs at least one attempt")
        self.pool, self.redis, self.prefix, self.market = pool, redis, prefix, market
        self.provider, self.dead_letters, self.postbacks = provider, dead_letters, postbacks
        self.retry_base, self.retry_cap, self.attempts = retry_base, retry_cap, attempts
        self._slots = asyncio.Semaphore(concurrency)  # pushes in flight at once
        self.events_topic, self.projector_wait = events_topic, projector_wait
        self._stalled: dict[int, int] | None = None  # its offsets when a wait ran out
        self.published = self.pushed = self.posted = self.dead_lettered = self.overtaken = 0
        self._publish = redis.register_script(_PUBLISH)
        self._count_online = redis.register_script(_COUNT_ONLINE)

    async def handle(self, messages: Sequence[Received]) -> list[list[Delivery]]:
        """Publish the batch's in-app notifications and move its alerts; returns, per
        message, the pushes and postbacks it owes."""
        tells = (told, updated) if self.postbacks is not None else (told,)
        ids = sorted({i for _, _, b in messages for e in b.events for t in tells for i in t(e)})
        items: list[tuple[int, str, Notification]] = []
        trades: list[TradePrice] = []
        trade_message: dict[str, int] = {}
        async with self.pool.connection() as conn:
            owners = await order_owners(conn, ids)
            for index, (_, _, batch) in enumerate(messages):
                for e in batch.events:
                    instrument = self.market.get(e.symbol)
                    if instrument is None:
                        continue  # not a symbol of ours: no order, no alert
                    items += [
                        (index, *notification)
                        for notification in order_notifications(batch.shard, e, owners, instrument)
                    ]
                    if self.postbacks is not None:
                        items += [
                            (index, *update)
                            for update in order_updates(batch.shard, e, owners, instrument)
                        ]
                    if e.type == EventType.TRADE:
                        trade = TradePrice(
                            trade_id(e),
                            e.symbol,
                            instrument.ticks_to_paise(e.price),
                            event_time(e.ts),
                        )
                        trades.append(trade)
                        trade_message[trade.trade_id] = index
            async with conn.transaction():  # the alerts' moves, their fires, the inbox
                fires = [
                    (trade_message[f.trade.trade_id], *alert_notification(f))
                    for f in await apply_trades(conn, trades)
                ]
                await conn.cursor().executemany(
                    _RECORD_FIRE,
                    [
                        (n.id, user, encode_message(n).decode(), *messages[index][:2])
                        for index, user, n in fires
                    ],
                )
                await inbox.store(
                    conn,
                    [(user, n) for _, user, n in (*items, *fires) if n.kind not in UPDATE_KINDS],
                )
        items += fires
        if items:
            await self._after_projector(messages)
        owed: list[list[Delivery]] = [[] for _ in messages]
        for (index, _, _), pushes in zip(
            items, await self.route([(user, n) for _, user, n in items]), strict=True
        ):
            owed[index] += pushes
        return owed

    async def _after_projector(self, messages: Sequence[Received]) -> None:
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
                log.warning(
                    "the projector has not published events %s (it is at %s) after "
                    "%.1f s: telling before it, and not waiting while it stays there",
                    needed,
                    projected,
                    self.projector_wait,
                )
                self._stalled = projected
                self.overtaken += 1
                return
            await asyncio.sleep(PROJECTOR_POLL)

    async def unsent_fires(self) -> list[Delivery]:
        """Publish again the alert fires a notifier that died left unconfirmed (in
        ``alert_fires``); returns their pushes."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT user_id, notification::text FROM alert_fires "
                    "ORDER BY partition, kafka_offset, notification_id"
                )
            ).fetchall()
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
                    "AND f.kafka_offset < c.next_offset",
                    (list(committed), list(committed.values())),
                )

    async def route(self, items: Sequence[tuple[str, Notification]]) -> list[list[Delivery]]:
        """Publish the in-app ones of (user, notification) by the users' preferences and
        presence; returns the pushes and postbacks each one owes."""
        users = sorted({user for user, _ in items})
        if not users:
            return []
        async with self.pool.connection() as conn:
            channels = await channels_of(conn, users)
            devices = await devices_of(conn, users) if self.provider is not None else {}
            targets = await targets_of(conn, users) if self.postbacks is not None else {}
        online = await self._online(users)
        owed: list[list[Delivery]] = []
        published: list[EncodableT] = []  # channel, message, channel, message ...
        for user, n in items:
            channel = channels.get((user, n.kind), "IN_APP")
            deliveries: list[Delivery] = []
            if channel != "NONE" and n.kind not in UPDATE_KINDS:  # updates: postbacks only
                if channel == "IN_APP" or online[user]:
                    published += (user_channel(self.prefix, user), encode_message(n))
                if channel == "PUSH" or not online[user]:
                    deliveries += [Push(user, token, n) for token in devices.get(user, ())]
            if n.order_id is not None:
                deliveries += [Postback(user, target, n) for target in targets.get(user, ())]
            owed.append(deliveries)
        if published:
            await self._publish(args=published)
            self.published += len(published) // 2
        return owed

    async def _online(self, users: Sequence[str]) -> dict[str, bool]:
        """Whether a WebSocket gateway holds each user now (a registration not lapsed)."""
        keys: list[KeyT] = [online_key(self.prefix, user) for user in users]
        counts = await self._count_online(keys=keys, args=[time.time()])
        return {user: count > 0 for user, count in zip(users, counts, strict=True)}

    async def deliver(self, delivery: Delivery) -> bool:
        """Push or post, retrying with backoff; after the last attempt it is dead-lettered
        (retried until Kafka takes it). True if the provider or the endpoint took it. A
        postback holds its order's turn to its registration until then; one its URL's
        breaker pauses is dead-lettered without more attempts, and only the others'
        outcomes move the breaker."""
        if isinstance(delivery, Postback):
            postbacks = self.postbacks
            if postbacks is None:
                raise ValueError("no postbacks: a Notifier without them owes none")
            url = delivery.target.url
            async with postbacks.in_order(delivery):
                error, attempts = await self._attempts(
                    lambda: postbacks.send(delivery, self._slots), "postback", delivery
                )
                if error is None:
                    postbacks.breaker.delivered(url)
                    self.posted += 1
                    return True
                if attempts == self.attempts:
                    postbacks.breaker.dead_lettered(url)
                await self._dead_letter(
                    postbacks.dead_letters,
                    postbacks.letter(delivery, attempts, error),
                    "postback",
                )
            return False
        provider = self.provider
        if provider is None:
            raise ValueError("no push provider: a Notifier without one owes no pushes")

        async def push() -> None:
            async with self._slots:
                await provider.send(delivery.device_token, delivery.notification)

        error, _ = await self._attempts(push, "push", delivery)
        if error is None:
            self.pushed += 1
            return True
        letter = PushDeadLetter(
            delivery.notification,
            delivery.user_id,
            delivery.device_token,
            self.attempts,
            error,
            datetime.now(UTC).isoformat(),
        )
        await self._dead_letter(self.dead_letters, letter, "push")
        return False

    async def _attempts(
        self, send: Callable[[], Awaitable[None]], what: str, delivery: Delivery
    ) -> tuple[str | None, int]:
        """``send`` tried up to ``attempts`` times, waiting the back-off between, or until
        it raises Paused (that one not counted): (None once it succeeds, else the last
        failure; the attempts made)."""
        error = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(retry_delay(attempt - 1, self.retry_base, self.retry_cap))
            try:
                await send()
                return None, attempt
            except Paused as e:
                return str(e), attempt - 1
            except PushFailed as e:
                error = str(e)
                log.info(
                    "%s %s to %s failed (attempt %d of %d): %s",
                    what,
                    delivery.notification.id,
                    delivery.user_id,
                    attempt,
                    self.attempts,
                    error,
                )
        return error, self.attempts

    async def _dead_letter(
        self, dead_letters: DeadLetters, letter: PushDeadLetter | PostbackDeadLetter, what: str
    ) -> None:
        """Put the letter on its topic, retrying until Kafka takes it (logged as a
        warning, but at debug level one its breaker paused: the pause was logged)."""
        retry = 0
        while True:
            try:
                await dead_letters.put(letter)
                break
            except KafkaException as e:
                retry += 1
                log.warning(
                    "dead-lettering %s %s failed (%s); retrying", what, letter.notification.id, e
                )
                await asyncio.sleep(retry_delay(retry, self.retry_base, self.retry_cap))
        self.dead_lettered += 1
        log.log(
            logging.WARNING if letter.attempts == self.attempts else logging.DEBUG,
            "%s %s to %s dead-lettered after %d attempts: %s",
            what,
            letter.notification.id,
            letter.user_id,
            letter.attempts,
            letter.last_error,
        )
