"""The RS256 public keys of a JWKS document (the identity provider's signing keys), by
key id, kept fresh without a restart.

The document is fetched at start, again in the background every ``refresh_interval``
seconds (so a key the provider stops publishing stops verifying), and again when a token
names a key id not in the copy (a rotation), at most once every ``min_interval``
seconds: a flood of tokens with made-up key ids costs the provider one request per
interval, and requests that arrive during a fetch wait for that one (one fetch at a
time). A fetch is async (httpx): it never blocks the event loop.

A failed fetch keeps the last copy and is retried in the background (0.1 s doubling up
to ``min_interval``), and the next token naming an unknown key tries again at once, so
the first request after the provider is back (a stack's start) fetches the keys itself.
While fetches fail, a token naming a key not in the copy is neither accepted nor refused
(KeysUnavailable: the services answer 503, so a client keeps its token and tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from brokercore.faults.backoff import Backoff

__all__ = ["KeySet", "KeysUnavailable", "rsa_keys"]

log = logging.getLogger("brokercore.edge.jwks")


class KeysUnavailable(Exception):
    """A token names a key this process does not know while the JWKS cannot be fetched:
    it can be neither accepted nor refused now (the services answer 503)."""


def rsa_keys(document: object) -> dict[str, Any]:
    """The RS256 signature keys of a JWKS document that have a key id, by key id (the
    cryptography public keys); keys of other types, uses or algorithms are left out.
    Raises ValueError for what is not a JWKS document."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document: no list of keys")
    keys: dict[str, Any] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not entry.get("kid"):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="RS256")
        except jwt.PyJWTError:
            log.warning("a JWKS key %r is not a valid RSA key; left out", entry.get("kid"))
            continue
        keys[str(entry["kid"])] = key.key
    return keys


class KeySet:
    """One provider's keys (``keys``: by key id), fetched from ``url`` as the module
    says; ``open`` and ``close`` start and stop the background refresh."""

    def __init__(
        self,
        url: str,
        *,
        refresh_interval: float = 60.0,
        min_interval: float = 5.0,
        timeout: float = 2.0,
        on_removed: Callable[[], None] = lambda: None,
    ):
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_interval = min_interval
        self.on_removed = on_removed
        """Called when a fetch drops a key id the copy had (a verifier forgets what it
        remembered)."""
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._fetched_at = -math.inf  # monotonic time of the last attempt
        self._fetching: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry = 0.0  # seconds before the next attempt while fetches fail
        self.outage = Backoff(f"the JWKS at {url} (keeping the last keys)", log, cap=min_interval)

    async def open(self) -> None:
        """The first copy (a failure is logged and retried), then the background refresh."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="jwks-refresh")

    async def close(self) -> None:
        for task in (self._task, self._fetching):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._fetching = None
        await self._client.aclose()

    async def refresh(self) -> bool:
        """Fetch the document now (or wait for the fetch under way); True if it worked."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return await asyncio.shield(self._fetching)

    async def find(self, kid: str) -> Any | None:
        """The key ``kid``, fetching the document again first if it is unknown and the
        last fetch is at least ``min_interval`` seconds old or failed (else waiting for
        the one under way, if any); None if it is still unknown. Raises KeysUnavailable
        if it is unknown while the document cannot be fetched: the key may be a new
        one."""
        key = self.keys.get(kid)
        if key is not None:
            return key
        fetching = self._fetching is not None and not self._fetching.done()
        due = self.outage.failing or time.monotonic() - self._fetched_at >= self.min_interval
        if fetching or due:
            await self.refresh()
        key = self.keys.get(kid)
        if key is None and self.outage.failing:
            raise KeysUnavailable(f"the JWKS at {self.url} cannot be fetched now")
        return key

    async def _fetch(self) -> bool:
        """One fetch (its failure counted once, however many wait for it)."""
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            response = await self._client.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = rsa_keys(response.json())
        except (httpx.HTTPError, ValueError) as e:
            self._retry = self.outage.failed(e)
            return False
        self.outage.recovered()
        self._retry = 0.0
        removed = not self.keys.keys() <= keys.keys()
        self.keys = keys
        if removed:
            self.on_removed()
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(min(self._retry or self.refresh_interval, self.refresh_interval))
            await self.refresh()
