"""Postbacks: each order notification of a user POSTed, signed, to the HTTPS URLs the
user registered (table ``postbacks``, at most ``MAX_POSTBACKS`` each; docs/postbacks.md).

The body is the notification as the WebSocket carries it (JSON); the ``X-Signature``
header signs the body and the time it was sent with the registration's secret
(``brokercore.edge.signature``: a receiver refuses a time more than 300 s off its own).
The router (``brokercore.notify.router.Notifier.deliver``) retries a failed postback as
it retries a push, then dead-letters it on the postbacks' topic. Here: registering, the
sender, and what keeps deliveries apart: a registration's updates of one order go out
in order (the next waits until the one before is delivered or dead-lettered), and at
most ``per_url`` postbacks to one registration are in flight, so a slow endpoint takes
no more of the notifier's sends than that; and a breaker per URL (``Breaker``): a dead
endpoint's postbacks go to the dead-letter topic untried for a while instead of holding
the notifier's memory and task limit through their retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import msgspec
from psycopg import AsyncConnection

from brokercore.edge.signature import SIGNATURE_HEADER, sign
from brokercore.notify.dead_letters import DeadLetters, PostbackDeadLetter
from brokercore.notify.push import PushFailed
from brokercore.realtime.channels import Notification, encode_message

__all__ = [
    "MAX_POSTBACKS",
    "MAX_URL_LENGTH",
    "PostbackRequest",
    "url_problem",
    "TooManyPostbacks",
    "Registration",
    "register",
    "list_postbacks",
    "delete_postback",
    "Target",
    "Postback",
    "targets_of",
    "target_of",
    "Paused",
    "Breaker",
    "Postbacks",
]

log = logging.getLogger("brokercore.notify.postbacks")

MAX_POSTBACKS = 5
"""Registrations a user may have (the slots of postbacks_slot_valid)."""

MAX_URL_LENGTH = 2000

MAX_ANSWER = 64 * 1024
"""Bytes of an endpoint's answer read at most (its status is what counts)."""


class PostbackRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of POST /api/v1/postbacks."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]


def url_problem(url: str, private_hosts: bool = False) -> str | None:
    """Why ``url`` cannot be a postback URL, or None: it must be https with a host, no
    credentials or fragment, printable ASCII; an IP address must be a public one unless
    ``private_hosts`` (tests), so a user cannot aim the notifier at the broker's own
    network by address."""
    if not (url.isascii() and url.isprintable()) or " " in url:
        return "must be printable ASCII without spaces"
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port out of range: ValueError
    except ValueError:
        return "is not a URL"
    if parts.scheme != "https":
        return "must be an https:// URL"
    host = parts.hostname
    if not host:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.fragment:
        return "must not have a fragment"
    if not private_hosts:
        if host == "localhost" or host.endswith(".localhost"):
            return "must not name a private address"
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(host).is_global:
                return "must not name a private address"
    return None


class TooManyPostbacks(Exception):
    """The user already has ``MAX_POSTBACKS`` registrations."""


class Registration(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    """A registration as the API shows it (the secret only in the answer that made it)."""

    id: str
    url: str
    created_at: str
    secret: str | None = None


# The lowest free slot; nothing when none is free, or when a concurrent registration took
# it meanwhile (ON CONFLICT: the caller looks again).
_CREATE = """
INSERT INTO postbacks (user_id, slot, url, secret)
SELECT %(user)s, s, %(url)s, %(secret)s FROM generate_series(1, %(slots)s) s
 WHERE s NOT IN (SELECT slot FROM postbacks WHERE user_id = %(user)s)
 ORDER BY s LIMIT 1
ON CONFLICT DO NOTHING
RETURNING postback_id, created_at"""


def _shown(
    postback_id: int, url: str, created_at: datetime, secret: str | None = None
) -> Registration:
    return Registration(str(postback_id), url, created_at.isoformat(), secret)


async def register(conn: AsyncConnection, user: str, url: str) -> Registration:
    """A new registration of the user's, with its new secret. Raises TooManyPostbacks."""
    params = {"user": user, "url": url, "secret": secrets.token_hex(32), "slots": MAX_POSTBACKS}
    while True:
        row = await (await conn.execute(_CREATE, params)).fetchone()
        if row is not None:
            return _shown(row[0], url, row[1], str(params["secret"]))
        count = await (
            await conn.execute("SELECT count(*) FROM postbacks WHERE user_id = %s", (user,))
        ).fetchone()
        if count is not None and count[0] >= MAX_POSTBACKS:
            raise TooManyPostbacks()
        # a concurrent registration took the free slot: the next statement sees it


async def list_postbacks(conn: AsyncConnection, user: str) -> list[Registration]:
    rows = await (
        await conn.execute(
            "SELECT postback_id, url, created_at FROM postbacks WHERE user_id = %s "
            "ORDER BY postback_id",
            (user,),
        )
    ).fetchall()
    return [_shown(*row) for row in rows]


async def delete_postback(conn: AsyncConnection, user: str, postback_id: int) -> bool:
    """False if the user has no such registration."""
    cursor = await conn.execute(
        "DELETE FROM postbacks WHERE postback_id = %s AND user_id = %s", (postback_id, user)
    )
    return cursor.rowcount == 1


# --- delivery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one registration's postbacks go, and the key that signs them."""

    postback_id: int
    url: str
    secret: str


@dataclass(frozen=True)
class Postback:
    """One order notification owed to one registration of its user."""

    user_id: str
    target: Target
    notification: Notification


async def targets_of(conn: AsyncConnection, users: Sequence[str]) -> dict[str, list[Target]]:
    """The registrations of each of these users that has any (the ids sent as a binary
    array: psycopg quotes a text one element by element, 0.4 ms of 1,000 ids)."""
    rows = await (
        await conn.execute(
            "SELECT user_id, postback_id, url, secret FROM postbacks WHERE user_id = ANY(%b) "
            "ORDER BY postback_id",
            (list(users),),
        )
    ).fetchall()
    targets: dict[str, list[Target]] = defaultdict(list)
    for user, *target in rows:
        targets[user].append(Target(*target))
    return targets


async def target_of(conn: AsyncConnection, user: str, postback_id: int) -> Target | None:
    """The user's registration ``postback_id`` as it is now; None once deleted."""
    row = await (
        await conn.execute(
            "SELECT postback_id, url, secret FROM postbacks WHERE postback_id = %s "
            "AND user_id = %s",
            (postback_id, user),
        )
    ).fetchone()
    return None if row is None else Target(*row)


class _Shared:
    """Per key, a value made when the first holder comes and dropped when the last
    leaves (so keys of registrations long gone hold no memory)."""

    def __init__(self, make: type[asyncio.Semaphore] | type[asyncio.Lock], *args: int):
        self._make, self._args = make, args
        self._held: dict[Hashable, tuple[asyncio.Semaphore | asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        entry = self._held.get(key)
        if entry is None:
            entry = self._held[key] = (self._make(*self._args), [0])
        value, holders = entry
        holders[0] += 1
        try:
            async with value:
                yield
        finally:
            holders[0] -= 1
            if holders[0] == 0:
                del self._held[key]


class Paused(PushFailed):
    """A postback not sent: its URL's breaker is open (not tried again until it closes)."""


class Breaker:
    """Per URL, the postbacks dead-lettered in a row (a delivery resets it). The
    ``failures``-th pauses the URL for ``pause`` seconds: ``check`` then raises Paused, so
    its postbacks are dead-lettered at once (the reconciler's --postbacks sends them
    again later) and the notifier keeps reading ``events`` at its pace. After the pause
    they are tried again: one delivered closes the breaker, one more dead letter pauses
    the URL again at once. Keyed by URL, not registration: a user's two registrations
    of one endpoint share its fate."""

    def __init__(self, failures: int = 10, pause: float = 300.0):
        if failures < 1:
            raise ValueError("a breaker needs at least one failure to open")
        self.failures, self.pause = failures, pause
        self._failed: dict[str, int] = {}  # URL -> dead letters in a row (failing URLs only)
        self._until: dict[str, float] = {}  # URL -> monotonic time its pause ends

    def check(self, url: str) -> None:
        """Raises Paused while ``url`` is paused."""
        until = self._until.get(url)
        if until is not None and time.monotonic() < until:
            raise Paused(f"paused after {self._failed[url]} postbacks dead-lettered in a row")

    def delivered(self, url: str) -> None:
        self._failed.pop(url, None)
        if self._until.pop(url, None) is not None:
            log.info("postbacks to %s delivered again: no longer paused", url)

    def dead_lettered(self, url: str) -> None:
        """A postback to ``url`` failed every attempt (not one Paused cut short)."""
        failed = self._failed[url] = self._failed.get(url, 0) + 1
        if failed >= self.failures:
            self._until[url] = time.monotonic() + self.pause
            log.warning(
                "postbacks to %s paused for %g s: %d dead-lettered in a row; dead-lettered "
                "untried meanwhile",
                url,
                self.pause,
                failed,
            )


class Postbacks:
    """Sends postbacks over HTTPS (certificates verified: the system's trust store plus
    ``ca_file``'s CAs); any answer but 2xx, a redirect included, or none within
    ``timeout`` seconds is a failure (PushFailed), and one to a URL its ``breaker``
    pauses is not sent (Paused). ``dead_letters``: the postbacks' dead-letter topic."""

    def __init__(
        self,
        dead_letters: DeadLetters,
        *,
        timeout: float = 5.0,
        per_url: int = 4,
        ca_file: str | None = None,
        breaker: Breaker | None = None,
    ):
        context = ssl.create_default_context()
        if ca_file:
            context.load_verify_locations(ca_file)
        self.dead_letters, self.timeout = dead_letters, timeout
        self.breaker = breaker or Breaker()
        self.client = httpx.AsyncClient(
            verify=context,
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=64),
            headers={"User-Agent": "brokercore-postbacks/1"},
        )
        self._orders = _Shared(asyncio.Lock)  # (registration, order): one at a time
        self._urls = _Shared(asyncio.Semaphore, per_url)  # registration: per_url at once

    def in_order(self, postback: Postback) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while a postback is delivered, retries and dead letter included: the
        next update of the same order to the same registration waits for it."""
        return self._orders.hold((postback.target.postback_id, postback.notification.order_id))

    async def send(self, postback: Postback, slots: asyncio.Semaphore) -> None:
        """POST it once in one of ``slots`` (the notifier's sends at once), taken once its
        registration's turn comes, signed then (a long wait for the turn does not age
        the signature); PushFailed if the endpoint did not take it. The whole exchange,
        the answer's body included (read up to ``MAX_ANSWER`` bytes), must end within
        the timeout: an endpoint that trickles its answer holds a slot no longer. Paused
        (before the turn, and once it came) while the URL's breaker is open."""
        target = postback.target
        body = encode_message(postback.notification)
        self.breaker.check(target.url)
        async with self._urls.hold(target.postback_id), slots:
            self.breaker.check(target.url)  # opened while this one waited its turn
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(target.secret, body, int(time.time())),
            }
            try:
                async with asyncio.timeout(self.timeout):
                    request = self.client.stream("POST", target.url, content=body, headers=headers)
                    async with request as response:
                        answer = b""
                        async for chunk in response.aiter_raw():
                            answer += chunk
                            if len(answer) > MAX_ANSWER:
                                break  # not read further: the connection is closed
            except httpx.HTTPError as e:
                raise PushFailed(f"{type(e).__name__}: {e}") from None
            except TimeoutError:
                raise PushFailed(f"no whole answer within {self.timeout:g} s") from None
        if not response.is_success:
            text = answer[:200].decode(errors="replace")
            raise PushFailed(f"HTTP {response.status_code}: {text}")

    @staticmethod
    def letter(postback: Postback, attempts: int, error: str) -> PostbackDeadLetter:
        return PostbackDeadLetter(
            postback.notification,
            postback.user_id,
            postback.target.postback_id,
            postback.target.url,
            attempts,
            error,
            datetime.now(UTC).isoformat(),
        )

    async def aclose(self) -> None:
        await self.client.aclose()
