"""Bearer tokens: verifying JWTs for the services and minting development tokens.

Only HS256 (a shared secret) and RS256 (an RSA public key) are accepted, each with its
own key: the algorithm named in a token's header picks the key, and the verification
allows that one algorithm only, so ``alg: none`` and algorithm confusion (an RS256
public key used as an HS256 secret) are refused. Expiry, issuer, audience and subject
are required. The subject is the user id every service stores and logs, so it is
refused if it is longer than ``MAX_USER_ID`` or holds a character no database or log
should see (brokercore.edge.text).

A verified token is remembered, per process, until its expiry and never beyond
(``TokenVerifier.cache_size`` of them, least recently used first out): a client sends
the same token with every request, and checking its signature and claims again costs
more than the rest of the request's Python. A refused token is never remembered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from brokercore.config import ServiceSettings
from brokercore.edge.text import bad_character

__all__ = [
    "AuthError",
    "JwtConfig",
    "Principal",
    "TokenVerifier",
    "bearer_token",
    "mint_token",
    "MAX_USER_ID",
    "OPERATOR",
]

MAX_USER_ID = 128
"""Characters a token's subject (a user id) may have."""


class AuthError(Exception):
    """A refused token; ``code`` is stable for clients, the message is for humans."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JwtConfig:
    issuer: str
    audience: str
    hs256_secret: str | None = None
    rs256_public_key: str | None = None  # PEM
    leeway: float = 0.0  # seconds of clock skew tolerated

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> JwtConfig:
        """The services' configuration."""
        return cls(
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.jwt_hs256_secret,
            settings.jwt_rs256_public_key,
        )

    def __post_init__(self) -> None:
        if not self.hs256_secret and not self.rs256_public_key:
            raise ValueError("JWT verification needs an HS256 secret or an RS256 public key")
        if self.hs256_secret is not None and len(self.hs256_secret.encode()) < 32:
            raise ValueError("the HS256 secret must be at least 32 bytes")


OPERATOR = "operator"
"""The role of the broker's staff (KYC decisions, the operator endpoints)."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    claims: dict[str, Any]
    roles: frozenset[str] = frozenset()  # the token's ``roles`` claim

    @property
    def is_operator(self) -> bool:
        return OPERATOR in self.roles


class TokenVerifier:
    def __init__(self, config: JwtConfig, cache_size: int = 10_000):
        self.config = config
        self.cache_size = cache_size
        self._keys: dict[str, str] = {}
        if config.hs256_secret:
            self._keys["HS256"] = config.hs256_secret
        if config.rs256_public_key:
            self._keys["RS256"] = config.rs256_public_key
        self.remembered: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        """Verified tokens: (principal, expiry), least recently used first."""

    def verify(self, token: str) -> Principal:
        """The token's principal: remembered while the token has not expired (its
        ``exp``, without the leeway), else verified (and then remembered)."""
        remembered = self.remembered.get(token)
        if remembered is not None:
            principal, expiry = remembered
            if time.time() < expiry:
                self.remembered.move_to_end(token)
                return principal
            del self.remembered[token]
        principal = self._verify(token)
        if self.cache_size > 0:
            self.remembered[token] = (principal, float(principal.claims["exp"]))
            if len(self.remembered) > self.cache_size:
                self.remembered.popitem(last=False)
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise AuthError("INVALID_TOKEN", "the token is malformed") from None
        if algorithm not in self._keys:
            raise AuthError("INVALID_TOKEN", f"tokens signed with {algorithm!r} are not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._keys[algorithm],
                algorithms=[algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("TOKEN_EXPIRED", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("INVALID_TOKEN", "the token is not meant for this service") from None
        except jwt.InvalidIssuerError:
            raise AuthError("INVALID_TOKEN", "the token was issued by someone else") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError("INVALID_TOKEN", f"the token lacks the {e.claim!r} claim") from None
        except jwt.PyJWTError:
            raise AuthError(
                "INVALID_TOKEN", "the token's signature or claims are invalid"
            ) from None
        subject = claims["sub"]
        if (
            not isinstance(subject, str)
            or not 0 < len(subject) <= MAX_USER_ID
            or bad_character(subject) is not None
        ):
            raise AuthError("INVALID_TOKEN", "the token's subject is not a user id")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise AuthError("INVALID_TOKEN", "the token's roles are not a list of names")
        return Principal(subject, claims, frozenset(roles))


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for another scheme
    or none."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def mint_token(
    user_id: str,
    config: JwtConfig,
    *,
    ttl: float = 3600.0,
    private_key: str | None = None,
    now: float | None = None,
    roles: Iterable[str] = (),
    session_id: str | None = None,
    kid: str | None = None,
) -> str:
    """A token for ``user_id`` with ``roles`` (and the session ``sid`` if given): RS256
    with ``private_key`` (its header naming ``kid`` if given) if given, else HS256 with
    the configured secret. For development and tests; production tokens come from the
    identity provider."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "iss": config.issuer,
        "aud": config.audience,
        "iat": issued,
        "exp": issued + int(ttl),
        "roles": list(roles),
    }
    if session_id is not None:
        claims["sid"] = session_id
    headers = {"kid": kid} if kid is not None else None
    if private_key is not None:
        return jwt.encode(claims, private_key, algorithm="RS256", headers=headers)
    if not config.hs256_secret:
        raise ValueError("minting an HS256 token needs the HS256 secret")
    return jwt.encode(claims, config.hs256_secret, algorithm="HS256", headers=headers)
