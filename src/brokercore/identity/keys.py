"""The keys that sign access tokens, kept in Postgres (``signing_keys``), and the JWKS
document every service verifies tokens with.

The newest key not retired signs; every key not retired is published, so after
``brokercore keys rotate`` (a new key) tokens signed with the previous key still verify
until it is retired (``brokercore keys retire KID``), which an operator does once the
longest-lived token it signed has expired (15 minutes). Verifiers fetch the JWKS again
when a token names a key id they do not know, so neither a rotation nor a retirement
needs a restart. Every accounts process reads the current key from Postgres when it
signs, so a rotation takes effect in all of them at once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg import AsyncConnection

__all__ = [
    "ACCESS_TTL",
    "MFA_TTL",
    "KeyInfo",
    "Signer",
    "add_key",
    "retire_key",
    "list_keys",
]

ACCESS_TTL = 900
"""Seconds an access token is valid."""
MFA_TTL = 300
"""Seconds the ticket between a login's password and its second factor is valid."""
MFA_AUDIENCE_SUFFIX = ":mfa"
"""Appended to the audience of an MFA ticket, so that no service takes it for an access
token and the second-factor step takes nothing else."""


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    created_at: datetime
    retired_at: datetime | None


def _new_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _load(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("a signing key is not an RSA key")
    return key


async def add_key(conn: AsyncConnection[Any]) -> str:
    """A new RSA-2048 key, which signs from now on; its key id."""
    kid = secrets.token_urlsafe(12)
    await conn.execute(
        "INSERT INTO signing_keys (kid, private_pem) VALUES (%s, %s)", (kid, _new_pem())
    )
    return kid


async def retire_key(conn: AsyncConnection[Any], kid: str) -> bool:
    """Stop publishing (and signing with) ``kid``; False, changing nothing, if it is not
    a published key or the only one (tokens could then be neither signed nor verified)."""
    cursor = await conn.execute(
        "UPDATE signing_keys SET retired_at = now() WHERE kid = %s AND retired_at IS NULL "
        "AND EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL AND kid <> %s)",
        (kid, kid),
    )
    return cursor.rowcount == 1


async def list_keys(conn: AsyncConnection[Any]) -> list[KeyInfo]:
    """Every key, newest first."""
    rows = await (
        await conn.execute(
            "SELECT kid, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid"
        )
    ).fetchall()
    return [KeyInfo(*row) for row in rows]


class Signer:
    """Signs access tokens and MFA tickets with the current key, as ``issuer`` for
    ``audience``, and publishes the JWKS. The keys are read from Postgres each time (a
    rotation or retirement counts at once); parsing a PEM costs ~40 ms of CPU, so the
    parsed keys and their public JWKs are kept by key id."""

    def __init__(self, issuer: str, audience: str):
        self.issuer, self.audience = issuer, audience
        self._parsed: dict[str, rsa.RSAPrivateKey] = {}
        self._public: dict[str, dict[str, Any]] = {}

    def _key(self, kid: str, pem: str) -> rsa.RSAPrivateKey:
        if kid not in self._parsed:
            self._parsed[kid] = _load(pem)
        return self._parsed[kid]

    async def jwks(self, conn: AsyncConnection[Any]) -> dict[str, list[dict[str, Any]]]:
        """The JWKS document: the public half of every key not retired, newest first."""
        rows = await (
            await conn.execute(
                "SELECT kid, CASE WHEN kid = ANY(%s) THEN NULL ELSE private_pem END "
                "FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid",
                (list(self._public),),
            )
        ).fetchall()
        for kid, pem in rows:
            if kid not in self._public:
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(
                    self._key(kid, pem).public_key(), as_dict=True
                )
                self._public[kid] = jwk | {"kid": kid, "use": "sig", "alg": "RS256"}
        return {"keys": [self._public[kid] for kid, _ in rows]}

    async def ensure_key(self, conn: AsyncConnection[Any]) -> None:
        """Make a key if there is none (a fresh deployment's first start)."""
        async with conn.transaction():
            await conn.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            found = await (
                await conn.execute("SELECT 1 FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
            ).fetchone()
            if found is None:
                await add_key(conn)

    async def _current(self, conn: AsyncConnection[Any]) -> tuple[str, rsa.RSAPrivateKey]:
        row = await (
            await conn.execute(
                "SELECT kid, private_pem FROM signing_keys WHERE retired_at IS NULL "
                "ORDER BY created_at DESC, kid LIMIT 1"
            )
        ).fetchone()
        if row is None:
            raise RuntimeError("no signing key: run `brokercore keys rotate`")
        kid, pem = row
        return kid, self._key(kid, pem)

    async def access_token(
        self,
        conn: AsyncConnection[Any],
        user_id: str,
        session_id: str,
        roles: list[str],
        now: float | None = None,
    ) -> str:
        """An access token (``ACCESS_TTL`` seconds) of the session ``session_id``."""
        issued = int(time.time() if now is None else now)
        return await self._sign(
            conn,
            {
                "sub": user_id,
                "iss": self.issuer,
                "aud": self.audience,
                "iat": issued,
                "exp": issued + ACCESS_TTL,
                "jti": secrets.token_urlsafe(12),
                "sid": session_id,
                "roles": roles,
            },
        )

    async def mfa_ticket(self, conn: AsyncConnection[Any], user_id: str) -> str:
        """A ticket saying that ``user_id``'s password was right (``MFA_TTL`` seconds),
        which only the second-factor step takes."""
        issued = int(time.time())
        return await self._sign(
            conn,
            {
                "sub": user_id,
                "iss": self.issuer,
                "aud": self.audience + MFA_AUDIENCE_SUFFIX,
                "iat": issued,
                "exp": issued + MFA_TTL,
            },
        )

    async def _sign(self, conn: AsyncConnection[Any], claims: dict[str, Any]) -> str:
        kid, key = await self._current(conn)
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    async def mfa_user(self, conn: AsyncConnection[Any], ticket: str) -> str | None:
        """The user whose MFA ticket this is, or None if it is not a valid, unexpired
        ticket signed by a published key."""
        try:
            kid = jwt.get_unverified_header(ticket).get("kid")
        except jwt.PyJWTError:
            return None
        if not isinstance(kid, str):
            return None
        row = await (
            await conn.execute(
                "SELECT private_pem FROM signing_keys WHERE kid = %s AND retired_at IS NULL",
                (kid,),
            )
        ).fetchone()
        if row is None:
            return None
        try:
            claims = jwt.decode(
                ticket,
                self._key(kid, row[0]).public_key(),
                algorithms=["RS256"],
                audience=self.audience + MFA_AUDIENCE_SUFFIX,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        user: str = claims["sub"]
        return user
