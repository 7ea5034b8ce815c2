"""Refresh tokens: random, stored as sha256 hashes in ``refresh_tokens``, rotated at each
use, grouped in families.

A login starts a family (its id is the access tokens' ``sid``); each refresh spends the
token presented and issues the next one of the family. A spent token presented again
means two parties hold the chain (a copy was stolen): the whole family is revoked, the
legitimate user's tokens with the thief's, and so is its sid in every service
(brokercore.edge.revocation), so its access tokens stop working before they expire.
Logout revokes the family the same way.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from redis.asyncio import Redis

from brokercore.edge.revocation import revoke_sessions
from brokercore.identity.keys import ACCESS_TTL

__all__ = ["REFRESH_TTL", "Refreshed", "start_family", "refresh", "revoke_family"]

REFRESH_TTL = 30 * 24 * 3600
"""Seconds a refresh token is valid."""


@dataclass(frozen=True)
class Refreshed:
    """A refresh that worked: the user, the family (the sid) and the family's next token."""

    user_id: str
    family_id: str
    token: str


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _issue(conn: AsyncConnection[Any], user_id: str, family_id: str) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) "
        "VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
        (_hash(token), family_id, user_id, REFRESH_TTL),
    )
    return token


async def start_family(conn: AsyncConnection[Any], user_id: str) -> tuple[str, str]:
    """A new family for a login: (its id, its first refresh token)."""
    family_id = "s" + secrets.token_urlsafe(12)
    return family_id, await _issue(conn, user_id, family_id)


async def refresh(
    conn: AsyncConnection[Any], redis: Redis, prefix: str, token: str
) -> Refreshed | None:
    """Spend ``token`` and issue the next one of its family; None if it is unknown,
    expired or revoked, or if it was spent already (then its family is revoked: see the
    module's docstring)."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT user_id, family_id, spent_at IS NOT NULL, "
                "revoked_at IS NULL AND expires_at > now() "
                "FROM refresh_tokens WHERE token_hash = %s FOR UPDATE",
                (_hash(token),),
            )
        ).fetchone()
        if row is None:
            return None
        user_id, family_id, spent, valid = row
        if spent or not valid:
            reused = spent
        else:
            await conn.execute(
                "UPDATE refresh_tokens SET spent_at = now() WHERE token_hash = %s",
                (_hash(token),),
            )
            return Refreshed(user_id, family_id, await _issue(conn, user_id, family_id))
    if reused:
        await revoke_family(conn, redis, prefix, family_id)
    return None


async def revoke_family(
    conn: AsyncConnection[Any], redis: Redis, prefix: str, family_id: str
) -> None:
    """Revoke every refresh token of the family (committed first, unless the caller holds
    a transaction), then its sid in every service for as long as one of its access
    tokens can live."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() "
            "WHERE family_id = %s AND revoked_at IS NULL",
            (family_id,),
        )
    await revoke_sessions(redis, prefix, [family_id], time.time() + ACCESS_TTL + 60)
