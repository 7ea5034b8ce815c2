"""The WebSocket gateway: a user's order updates and notifications, and market data,
pushed live (a thin Starlette app).

    brokercore service ws --port 8002           (settings: BROKERCORE_* variables)

``/ws/v1/orders`` takes the JWT from ``Authorization: Bearer`` or, for browsers (which
cannot set headers on a WebSocket), from ``?token=``; prefer the header, as URLs end up
in logs. The socket is always accepted and a refusal is a close frame whose code and
reason a browser can read, after an ERROR frame: 4401 for a missing or bad token
("TOKEN_EXPIRED: the token has expired"), 4400 for a bad ``since``. An open socket whose
login session is revoked (a logout) gets the same at its next heartbeat ("TOKEN_REVOKED:
..."); one whose token expires stays open (the token was checked at connect).

Server frames: WELCOME first (registered and subscribed), then the streams.py messages
(ORDER_UPDATE and NOTIFICATION of the user, TRADE and BOOK of subscribed symbols),
SUBSCRIBED / UNSUBSCRIBED, PING every BROKERCORE_WS_HEARTBEAT seconds, PONG, ERROR
(the socket stays open) and RESUMED. Client frames: ``{"op": "subscribe"|"unsubscribe",
"channel": "trades"|"book", "symbol": ...}``, ``{"op": "pong"}``, ``{"op": "ping"}``,
``{"op": "resume", "since": SEQ}`` (as the first frame only; or connect with
``?since=SEQ``): every ORDER_UPDATE after SEQ, from the read model, then live ones,
none twice (from the read replica when BROKERCORE_REPLICA_URL names one and it has
caught up: brokercore.read.replica). NOTIFICATIONs are live only.

Close codes: 1013 the token's signing keys cannot be fetched now (try again);
4408 no frame for two heartbeats; 4429 "slow consumer: N messages behind"
(more than BROKERCORE_WS_QUEUE_SIZE frames waiting; nothing is dropped silently);
1012 the Redis stream was interrupted, or the server restarts (reconnect and resume);
1001 the app shuts down; 1011 an internal failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import psycopg
import redis
from psycopg_pool import PoolTimeout
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.websockets import WebSocket, WebSocketDisconnect

from brokercore.broker.market import load_market
from brokercore.config import ServiceSettings
from brokercore.edge.auth import AuthError, Principal, bearer_token, session_revoked
from brokercore.edge.jwks import KeysUnavailable
from brokercore.realtime.channels import (
    BookUpdate,
    Notification,
    OrderUpdate,
    TradeTick,
    book_channel,
    trades_channel,
)
from brokercore.realtime.hub import (
    BadFrame,
    ClientOp,
    ClientPing,
    ClientPong,
    Error,
    Hub,
    Ping,
    Pong,
    Resume,
    Resumed,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    decode_op,
    encode_frame,
    order_update_seq,
    replayed_update,
)
from brokercore.services.asyncapi import Channel, DocumentedSocket
from brokercore.services.http import database_pool, read_router, service_app, token_verifier

log = logging.getLogger("brokercore.ws")

REPLAY_LIMIT = 10_000  # ORDER_UPDATEs one resume sends at most
CLOSE_TIMEOUT = 10.0  # seconds a close frame may wait behind unread data

REPLAY_SQL = """
SELECT update_id, payload::text FROM read_model.order_updates
 WHERE user_id = %s AND update_id > %s ORDER BY update_id LIMIT %s"""


def frame(message: object) -> str:
    return encode_frame(message).decode()


class Refused(Exception):
    def __init__(self, close_code: int, code: str, message: str):
        super().__init__(message)
        self.close_code, self.code, self.message = close_code, code, message


class Gateway:
    """The pieces one gateway process holds, made at start-up and closed at shutdown."""

    def __init__(self, settings: ServiceSettings):
        if settings.ws_queue_size < 1 or not settings.ws_heartbeat > 0:
            raise ValueError(
                "BROKERCORE_WS_QUEUE_SIZE must be at least 1 and BROKERCORE_WS_HEARTBEAT positive"
            )
        self.settings = settings
        self.instance = uuid.uuid4().hex
        self.redis = Redis.from_url(settings.redis_url, client_name=f"ws-{self.instance}")
        self.pool = database_pool(settings, 8)
        self.router = read_router(settings, self.pool, 8)
        self.verifier = token_verifier(settings, self.redis)
        self.market = load_market(settings.instruments)
        self.hub = Hub(
            self.redis,
            settings.redis_prefix,
            self.instance,
            settings.ws_heartbeat,
            self.interrupted,
        )
        self.sessions: set[Session] = set()

    async def open(self) -> None:
        await self.pool.open(wait=True)
        await self.router.open()
        await self.verifier.open()
        await self.hub.open()

    async def close(self) -> None:
        for session in list(self.sessions):
            session.shutdown(1001, "server shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.finished.wait() for s in list(self.sessions))), CLOSE_TIMEOUT + 5
            )
        await self.hub.close()
        await self.verifier.close()
        await self.router.close()
        await self.pool.close()
        await self.redis.aclose()

    def interrupted(self) -> None:
        for session in list(self.sessions):
            session.shutdown(1012, "message stream interrupted: reconnect and resume")

    async def authenticate(self, websocket: WebSocket) -> Principal:
        token = bearer_token(
            websocket.headers.get("authorization", "")
        ) or websocket.query_params.get("token", "")
        if not token:
            raise Refused(
                4401,
                "UNAUTHENTICATED",
                "a bearer token is required (Authorization header or ?token=)",
            )
        try:
            return await self.verifier.authenticate(token)
        except AuthError as e:
            raise Refused(4401, e.code, e.message) from None
        except KeysUnavailable:
            raise Refused(
                1013, "SERVICE_UNAVAILABLE", "the token's signing keys cannot be fetched now"
            ) from None


def parse_since(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(
            4400, "INVALID_REQUEST", "since must be a non-negative integer: the last seq received"
        )
    return int(raw)


class Session:
    """One socket: a bounded queue drained by a writer task, the reader of the
    client's operations, the heartbeat, and the ORDER_UPDATE replay.

    Sinks run in the Hub's reader and never wait: a frame that does not fit in the
    queue closes the socket instead. During a replay, live ORDER_UPDATEs are held and
    then sent unless the replay had them; ``skip`` holds the seqs already sent that a
    replay or a late live copy must not repeat."""

    def __init__(
        self, gateway: Gateway, websocket: WebSocket, user: str, session_id: str | None = None
    ):
        self.gateway, self.websocket, self.user = gateway, websocket, user
        self.session_id = session_id  # the token's login session: a logout closes the socket
        self.queue: asyncio.Queue[str | list[str]] = asyncio.Queue(gateway.settings.ws_queue_size)
        self.closing = asyncio.Event()
        self.finished = asyncio.Event()
        self.close_code: int | None = None  # None: the client went away itself
        self.close_reason = ""
        self.last_heard = asyncio.get_running_loop().time()
        self.markets: set[tuple[str, str]] = set()
        self.joined = False
        self.resumable = True  # no client frame yet: {"op":"resume"} is allowed
        self.replaying = False
        self.held: list[tuple[int, str]] = []
        self.skip: set[int] = set()

    # -- outgoing

    def push(self, item: str | list[str]) -> None:
        if self.closing.is_set():
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.shutdown(4429, f"slow consumer: {self.queue.qsize()} messages behind")

    def on_order(self, text: str) -> None:
        """The sink of the user's channel."""
        seq = order_update_seq(text)
        if seq is not None:
            if self.replaying:
                if len(self.held) >= self.queue.maxsize:
                    self.shutdown(4429, f"slow consumer: {len(self.held)} messages behind")
                else:
                    self.held.append((seq, text))
                return
            if seq in self.skip:
                return
            if self.resumable:
                self.skip.add(seq)
        self.push(text)

    def shutdown(self, code: int | None, reason: str = "") -> None:
        if not self.closing.is_set():
            self.close_code, self.close_reason = code, reason
            self.closing.set()

    # -- the socket's life

    async def run(self, since: int | None) -> None:
        self.push(
            frame(Welcome(self.user, self.gateway.instance, self.gateway.settings.ws_heartbeat))
        )
        self.gateway.sessions.add(self)
        tasks = []
        try:
            if since is not None:
                self.resumable, self.replaying = False, True
            try:
                await self.gateway.hub.join(self.user, self.on_order)
            except (TimeoutError, redis.RedisError, OSError) as e:
                log.warning("registering %s failed: %s", self.user, e)
                self.shutdown(1011, "service unavailable; try again")
            else:
                self.joined = True
                # The writer starts now, so WELCOME goes first and after registration.
                tasks = [
                    self._spawn(self._write()),
                    self._spawn(self._read()),
                    self._spawn(self._heartbeat()),
                ]
                if since is not None:
                    tasks.append(self._spawn(self._replay(since)))
            await self.closing.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._cleanup()

    async def _cleanup(self) -> None:
        """Routes and registration first, so nothing waits on the close handshake."""
        try:
            for channel, symbol in self.markets:
                await self.gateway.hub.unsubscribe(self._md_channel(channel, symbol), self.push)
            if self.joined:
                await self.gateway.hub.leave(self.user, self.on_order)
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.websocket.close(self.close_code, self.close_reason), CLOSE_TIMEOUT
                    )
        finally:
            self.gateway.sessions.discard(self)
            self.finished.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a task of %s's socket failed", self.user, exc_info=task.exception())
            self.shutdown(1011, "internal error")

    async def _write(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                for text in item if isinstance(item, list) else (item,):
                    await self.websocket.send_text(text)
            except Exception:  # noqa: BLE001 - the peer is gone
                self.shutdown(None)
                return

    async def _heartbeat(self) -> None:
        every = self.gateway.settings.ws_heartbeat
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            if loop.time() - self.last_heard >= 2 * every:
                self.shutdown(4408, "heartbeat timeout")
                return
            if self._revoked():
                return
            self.push(frame(Ping(int(time.time() * 1000))))

    def _revoked(self) -> bool:
        """Whether the token's session has been revoked (logged out) since the socket
        opened: then an ERROR frame and close 4401, as for a revoked token at connect."""
        revoked = self.gateway.verifier.revoked
        if self.session_id is None or revoked is None or self.session_id not in revoked.sids:
            return False
        refusal = session_revoked()
        self.push(frame(Error(refusal.code, refusal.message)))
        self.shutdown(4401, f"{refusal.code}: {refusal.message}")
        return True

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.shutdown(None)
                return
            self.last_heard = asyncio.get_running_loop().time()
            if message.get("text") is None:
                self.push(frame(Error("INVALID_REQUEST", "frames must be JSON text")))
                continue
            try:
                op = decode_op(message["text"])
            except BadFrame as e:
                self.push(frame(e.error))
                continue
            await self._handle(op)

    async def _handle(self, op: ClientOp) -> None:
        if isinstance(op, Resume):
            if self.resumable:
                await self._replay(op.since)
            else:
                self.push(
                    frame(
                        Error(
                            "RESUME_NOT_ALLOWED",
                            "resume must be the first frame (once), or connect with ?since=",
                        )
                    )
                )
            return
        if self.resumable:
            self.resumable = False
            self.skip.clear()
        if isinstance(op, ClientPing):
            self.push(frame(Pong()))
        elif isinstance(op, ClientPong):
            pass  # last_heard is all a pong is for
        elif op.symbol not in self.gateway.market:
            self.push(frame(Error("UNKNOWN_SYMBOL", f"no instrument {op.symbol[:40]!r}")))
        elif isinstance(op, Subscribe):
            await self._subscribe(op.channel, op.symbol)
        else:
            key = (op.channel, op.symbol)
            if key in self.markets:
                self.markets.discard(key)
                await self.gateway.hub.unsubscribe(self._md_channel(*key), self.push)
            self.push(frame(Unsubscribed(op.channel, op.symbol)))

    async def _subscribe(self, channel: str, symbol: str) -> None:
        acknowledge = frame(Subscribed(channel, symbol))
        if (channel, symbol) in self.markets:
            self.push(acknowledge)
            return
        self.markets.add((channel, symbol))
        try:
            await self.gateway.hub.subscribe(
                self._md_channel(channel, symbol), self.push, before=lambda: self.push(acknowledge)
            )
        except (TimeoutError, redis.RedisError, OSError) as e:
            log.warning("subscribing to %s %s failed: %s", channel, symbol, e)
            self.markets.discard((channel, symbol))
            await self.gateway.hub.unsubscribe(self._md_channel(channel, symbol), self.push)
            self.push(frame(Error("UNAVAILABLE", "market data is unavailable; try again")))

    def _md_channel(self, channel: str, symbol: str) -> str:
        named = trades_channel if channel == "trades" else book_channel
        return named(self.gateway.settings.redis_prefix, symbol)

    async def _replay(self, since: int) -> None:
        """Every ORDER_UPDATE after ``since`` (at most REPLAY_LIMIT), then the live ones
        held meanwhile that the replay did not have. The user's channel is already
        subscribed, so nothing falls between the two."""
        self.resumable, self.replaying = False, True
        try:
            rows = await self.gateway.router.read(_missed_updates, self.user, since)
        except (psycopg.Error, PoolTimeout) as e:
            log.warning("reading %s's order updates failed: %s", self.user, e)
            self.shutdown(1011, "could not read the order history; try again")
            return
        truncated = len(rows) > REPLAY_LIMIT
        rows = rows[:REPLAY_LIMIT]
        frames = [replayed_update(payload) for seq, payload in rows if seq not in self.skip]
        self.skip = {seq for seq, _ in rows}
        frames.append(
            frame(
                Resumed(since, rows[-1][0] if rows else since, len(frames), truncated, REPLAY_LIMIT)
            )
        )
        frames.extend(text for seq, text in self.held if seq not in self.skip)
        self.held, self.replaying = [], False
        self.push(frames)


async def _missed_updates(
    conn: psycopg.AsyncConnection, user: str, since: int
) -> list[tuple[int, str]]:
    """The user's ORDER_UPDATEs (seq, payload) after ``since``, REPLAY_LIMIT + 1 at most."""
    cursor = await conn.execute(REPLAY_SQL, (user, since, REPLAY_LIMIT + 1))
    return await cursor.fetchall()


async def orders_socket(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    await websocket.accept()
    try:
        principal = await gateway.authenticate(websocket)
        since = parse_since(websocket.query_params.get("since"))
    except Refused as e:
        reason = f"{e.code}: {e.message}".encode()[:123].decode(errors="ignore")
        with contextlib.suppress(WebSocketDisconnect):  # it went away first
            await websocket.send_text(frame(Error(e.code, e.message)))
            await websocket.close(e.close_code, reason)
        return
    await Session(gateway, websocket, principal.user_id, principal.session_id).run(since)


ORDERS_CHANNEL = Channel(
    "orders",
    "The user's order updates and notifications, and market data of subscribed symbols",
    "WELCOME first, then the user's ORDER_UPDATEs and NOTIFICATIONs; TRADE and BOOK of each "
    "symbol subscribed to; PING every heartbeat (answer PONG). Resume with ?since=SEQ or a "
    "first resume frame: every ORDER_UPDATE after SEQ, then RESUMED, then live ones. A bad "
    "frame gets an ERROR and the socket stays open; a refused handshake is an ERROR then a "
    "close (4401 bad token, 4400 bad since, 1013 keys unavailable).",
    receives=[Subscribe, Unsubscribe, ClientPing, ClientPong, Resume],
    sends=[
        Welcome,
        OrderUpdate,
        Notification,
        TradeTick,
        BookUpdate,
        Subscribed,
        Unsubscribed,
        Resumed,
        Ping,
        Pong,
        Error,
    ],
    query={
        "token": {"type": "string", "description": "the access token (browsers)"},
        "since": {"type": "integer", "minimum": 0, "description": "resume after this seq"},
    },
)


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    return service_app(
        "gateway",
        lambda: Gateway(settings),
        [DocumentedSocket("/ws/v1/orders", orders_socket, ORDERS_CHANNEL)],
    )
