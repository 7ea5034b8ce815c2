"""The WebSocket gateway's web-framework-free half: its frames, the client's operations,
and the Redis side every socket of one instance shares.

``Hub`` holds one Redis pub/sub connection per gateway instance. Sockets attach *sinks*
(plain callables, run in the reader task, which must never block) to channels; a
channel is subscribed in Redis while it has a sink and unsubscribed with the last one.
SUBSCRIBE and UNSUBSCRIBE go out in the order they were asked for, and a sink only
starts receiving once Redis has confirmed the SUBSCRIBE that serves it, so whoever
acknowledges a subscription to a client can do so before its first message.

The Hub also keeps this instance in the online registry (channels.online_key) of every
user with a socket here, scored by when the registration lapses, refreshed every
heartbeat. If the pub/sub connection breaks, messages published meanwhile are lost; the
Hub then calls ``on_interrupt`` (the gateway closes every socket, so that clients
reconnect and resume instead of silently missing updates) and starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, cast

import msgspec
import redis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from brokercore.realtime.channels import OrderUpdate, encode_message, online_key, user_channel

__all__ = [
    "Welcome",
    "Subscribed",
    "Unsubscribed",
    "Error",
    "Ping",
    "Pong",
    "Resumed",
    "Subscribe",
    "Unsubscribe",
    "Resume",
    "ClientOp",
    "BadFrame",
    "decode_op",
    "encode_frame",
    "order_update_seq",
    "replayed_update",
    "Hub",
    "Sink",
]

log = logging.getLogger("brokercore.realtime.hub")

Sink = Callable[[str], None]
"""Receives a channel's messages (JSON text), synchronously, in the Hub's reader."""

CONFIRM_TIMEOUT = 10.0
"""Seconds a SUBSCRIBE may take to be confirmed before the subscriber gives up."""


# --- frames the gateway sends besides the channels' messages it forwards --------------------


class Welcome(msgspec.Struct, tag_field="type", tag="WELCOME", rename="camel"):
    """The first frame: the socket is registered and subscribed to the user's channel."""

    user_id: str
    instance: str
    heartbeat: float  # seconds between PINGs; answer each with {"op":"pong"}


class Subscribed(msgspec.Struct, tag_field="type", tag="SUBSCRIBED"):
    channel: str
    symbol: str


class Unsubscribed(msgspec.Struct, tag_field="type", tag="UNSUBSCRIBED"):
    channel: str
    symbol: str


class Error(msgspec.Struct, tag_field="type", tag="ERROR"):
    code: str
    message: str


class Ping(msgspec.Struct, tag_field="type", tag="PING"):
    ts: int  # epoch milliseconds


class Pong(msgspec.Struct, tag_field="type", tag="PONG"):
    pass


class Resumed(msgspec.Struct, tag_field="type", tag="RESUMED", rename="camel"):
    """Ends a replay: ``count`` ORDER_UPDATEs after ``since`` were sent, the last being
    ``last_seq``; live ones follow. ``truncated``: more than ``limit`` were waiting, so
    the ones after ``last_seq`` were not sent (reconnect with ?since=lastSeq for more)."""

    since: int
    last_seq: int
    count: int
    truncated: bool
    limit: int


encode_frame = msgspec.json.Encoder().encode


# --- what a client sends ----------------------------------------------------------------------

MarketChannel = Literal["trades", "book"]


class Subscribe(msgspec.Struct, tag_field="op", tag="subscribe", forbid_unknown_fields=True):
    channel: MarketChannel
    symbol: str


class Unsubscribe(msgspec.Struct, tag_field="op", tag="unsubscribe", forbid_unknown_fields=True):
    channel: MarketChannel
    symbol: str


class ClientPing(msgspec.Struct, tag_field="op", tag="ping", forbid_unknown_fields=True):
    pass


class ClientPong(msgspec.Struct, tag_field="op", tag="pong", forbid_unknown_fields=True):
    pass


class Resume(msgspec.Struct, tag_field="op", tag="resume", forbid_unknown_fields=True):
    since: Annotated[int, msgspec.Meta(ge=0)]


ClientOp = Subscribe | Unsubscribe | ClientPing | ClientPong | Resume

_op_decoder = msgspec.json.Decoder(ClientOp)


class BadFrame(ValueError):
    """A client frame that is no operation; ``error`` is the ERROR frame answering it."""

    def __init__(self, error: Error):
        super().__init__(error.message)
        self.error = error


def decode_op(text: str) -> ClientOp:
    try:
        return _op_decoder.decode(text)
    except msgspec.ValidationError as e:
        raise BadFrame(Error("INVALID_REQUEST", str(e))) from None
    except msgspec.DecodeError:
        raise BadFrame(Error("MALFORMED_JSON", "a frame must be a JSON object")) from None


class _Peek(msgspec.Struct):
    type: str = ""
    seq: int | None = None


_peek = msgspec.json.Decoder(_Peek)


def order_update_seq(text: str) -> int | None:
    """The seq of an ORDER_UPDATE message; None for any other message."""
    try:
        peek = _peek.decode(text)
    except msgspec.DecodeError:
        return None
    return peek.seq if peek.type == "ORDER_UPDATE" else None


_stored_update = msgspec.json.Decoder(OrderUpdate)


def replayed_update(payload: str) -> str:
    """An ORDER_UPDATE as the read model keeps it (jsonb text: its own key order and
    spacing) encoded as the projector published it live: a replayed frame is the live
    frame, byte for byte."""
    return encode_message(_stored_update.decode(payload)).decode()


# --- the shared Redis side ---------------------------------------------------------------------


class _Channel:
    """One subscribed channel: its live sinks, and those waiting for ``ready`` (the
    confirmation of the SUBSCRIBE sent for it) with the callback to run just before."""

    __slots__ = ("ready", "sinks", "waiting")

    def __init__(self, ready: asyncio.Future[None]):
        self.ready = ready
        self.sinks: set[Sink] = set()
        self.waiting: dict[Sink, Callable[[], None] | None] = {}

    def activate(self) -> None:
        for sink, before in self.waiting.items():
            if before is not None:
                before()
            self.sinks.add(sink)
        self.waiting.clear()


class Hub:
    """One instance's pub/sub connection, channel router and online registrations."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        instance: str,
        heartbeat: float,
        on_interrupt: Callable[[], None],
    ):
        self.redis, self.prefix, self.instance = client, prefix, instance
        self.heartbeat = heartbeat
        self.lease = 3 * heartbeat  # a registration outlives two missed refreshes
        self.on_interrupt = on_interrupt
        self.users: Counter[str] = Counter()  # sockets here per user
        self._channels: dict[str, _Channel] = {}
        self._sent: dict[str, deque[asyncio.Future[None]]] = {}  # unconfirmed SUBSCRIBEs
        self._order = asyncio.Lock()  # (UN)SUBSCRIBE in the order asked
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self.pubsub = self.redis.pubsub()
        await self.pubsub.connect()
        # made by connect(); redis-py declares the attribute as None only
        connection = cast(AbstractConnection, self.pubsub.connection)
        # Called again on every reconnect that redis-py makes on its own.
        connection.register_connect_callback(self._reconnected)
        self._tasks = [
            asyncio.create_task(self._read(), name="hub-reader"),
            asyncio.create_task(self._refresh(), name="hub-registry"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            if self.users:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user in self.users:
                        pipe.zrem(online_key(self.prefix, user), self.instance)
                    await pipe.execute()
        except redis.RedisError as e:
            log.warning("could not remove the online registrations (%s); they lapse", e)
        self.users.clear()
        await self.pubsub.aclose()

    # -- channels

    async def subscribe(
        self, channel: str, sink: Sink, before: Callable[[], None] | None = None
    ) -> None:
        """Route ``channel`` to ``sink`` once Redis has confirmed it; ``before`` runs
        right before the first message can reach the sink. Raises if Redis fails."""
        entry = self._channels.get(channel)
        if entry is not None and entry.ready.done() and not entry.ready.exception():
            if before is not None:
                before()
            entry.sinks.add(sink)
            return
        if entry is None:
            entry = self._channels[channel] = _Channel(asyncio.get_running_loop().create_future())
            entry.waiting[sink] = before
            # Shielded: once asked for, a SUBSCRIBE is sent even if the asker goes away.
            await asyncio.shield(self._send(channel, entry.ready))
        else:
            entry.waiting[sink] = before
        await asyncio.wait_for(asyncio.shield(entry.ready), CONFIRM_TIMEOUT)

    async def unsubscribe(self, channel: str, sink: Sink) -> None:
        """The sink gets nothing more from ``channel`` once this is called; a failed
        UNSUBSCRIBE is only logged (a broken connection resets everything anyway)."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.sinks.discard(sink)
        entry.waiting.pop(sink, None)
        if not entry.sinks and not entry.waiting:
            del self._channels[channel]
            try:
                await asyncio.shield(self._send(channel, None))
            except (redis.RedisError, OSError) as e:
                log.warning("unsubscribing from %s failed (%s)", channel, e)

    async def _send(self, channel: str, ready: asyncio.Future[None] | None) -> None:
        """SUBSCRIBE (with the future its confirmation resolves) or UNSUBSCRIBE."""
        async with self._order:
            try:
                if ready is None:
                    await self.pubsub.unsubscribe(channel)
                else:
                    self._sent.setdefault(channel, deque()).append(ready)
                    await self.pubsub.subscribe(channel)
            except Exception as e:
                if ready is not None and not ready.done():
                    ready.set_exception(e)
                    ready.exception()  # seen: the caller gets ``e`` itself
                raise

    # -- users

    async def join(self, user: str, sink: Sink) -> None:
        """A socket of ``user`` is here: route the user's channel to it, register."""
        self.users[user] += 1
        try:
            await self.subscribe(user_channel(self.prefix, user), sink)
            await self._register([user])
        except BaseException:
            await self.leave(user, sink)
            raise

    async def leave(self, user: str, sink: Sink) -> None:
        self.users[user] -= 1
        last = self.users[user] <= 0
        if last:
            del self.users[user]
        await self.unsubscribe(user_channel(self.prefix, user), sink)
        if last:
            try:
                await self.redis.zrem(online_key(self.prefix, user), self.instance)
            except redis.RedisError as e:
                log.warning("unregistering %s failed (%s); the lease lapses", user, e)

    async def _register(self, users: Iterable[str]) -> None:
        now = time.time()
        ttl = math.ceil(self.lease) + 1
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                key = online_key(self.prefix, user)
                pipe.zadd(key, {self.instance: now + self.lease})
                pipe.zremrangebyscore(key, "-inf", now)  # crashed instances' leases
                pipe.expire(key, ttl, nx=True)  # the key goes with the last
                pipe.expire(key, ttl, gt=True)  # lease, whoever set it
            await pipe.execute()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                if self.users:
                    await self._register(list(self.users))
            except redis.RedisError as e:
                log.warning("refreshing the online registrations failed (%s)", e)

    # -- the reader

    async def _read(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
                continue
            except (redis.RedisError, OSError) as e:
                log.warning("redis pub/sub failed (%s); closing this instance's sockets", e)
            except Exception:  # the reader must not die
                log.exception("the pub/sub reader failed; closing this instance's sockets")
            self._interrupted()
            await asyncio.sleep(1.0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], (message["channel"] or b"").decode()
        if kind == "message":
            entry = self._channels.get(channel)
            if entry is not None and entry.sinks:
                text = message["data"].decode()
                for sink in list(entry.sinks):
                    try:
                        sink(text)
                    except Exception:  # one socket must not stop all
                        log.exception("delivering on %s failed", channel)
        elif kind == "subscribe":
            sent = self._sent.get(channel)
            if not sent:
                return  # redis-py re-subscribing after a reconnect
            ready = sent.popleft()
            if not sent:
                del self._sent[channel]
            entry = self._channels.get(channel)
            if entry is not None and entry.ready is ready:
                entry.activate()
            if not ready.done():
                ready.set_result(None)

    def _reconnected(self, _connection: object) -> None:
        self._interrupted()

    def _interrupted(self) -> None:
        """Messages were lost: fail what waits, forget every route, and have the
        gateway close its sockets. Their clean-up then finds nothing to unsubscribe,
        so the Redis side is reset with one UNSUBSCRIBE of everything."""
        error = redis.ConnectionError("the pub/sub connection was interrupted")
        for entry in self._channels.values():
            if not entry.ready.done():
                entry.ready.set_exception(error)
                entry.ready.exception()  # retrieved: nobody may be awaiting it
        self._channels.clear()
        self._sent.clear()
        self.on_interrupt()
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._unsubscribe_all()))

    async def _unsubscribe_all(self) -> None:
        async with self._order:
            try:
                await self.pubsub.unsubscribe()
            except (redis.RedisError, OSError) as e:
                log.warning("resetting the pub/sub subscriptions failed (%s)", e)
