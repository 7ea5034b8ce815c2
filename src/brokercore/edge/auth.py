"""Bearer tokens: verifying JWTs for the services and minting development tokens.

Only HS256 (a shared secret) and RS256 (RSA public keys) are accepted: the algorithm
named in a token's header picks the key, and the verification allows that one algorithm
only, so ``alg: none`` and algorithm confusion (an RS256 public key used as an HS256
secret) are refused. An RS256 token that names a key (``kid``) is verified with that
key of the identity provider's JWKS (brokercore.edge.jwks, BROKERCORE_JWKS_URL), fetched
again when the key is new to this process, so a key rotation needs no restart; one
without a ``kid`` only with the configured RS256 public key. Expiry, issuer, audience
and subject are required. The subject is the user id every service stores and logs, so
it is refused if it is longer than ``MAX_USER_ID`` or holds a character no database or
log should see (brokercore.edge.text). A token whose session (``sid``) was revoked
(brokercore.edge.revocation) is refused, TOKEN_REVOKED.

A verified token is remembered, per process, until its expiry and never beyond
(``TokenVerifier.cache_size`` of them, least recently used first out): a client sends
the same token with every request, and checking its signature and claims again costs
more than the rest of the request's Python. A remembered token is still checked against
the revoked sessions, and everything remembered is forgotten when a key leaves the JWKS.
A refused token is never remembered.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from brokercore.config import ServiceSettings
from brokercore.edge.jwks import KeySet
from brokercore.edge.revocation import RevokedSessions
from brokercore.edge.text import bad_character

__all__ = [
    "AuthError",
    "JwtConfig",
    "Principal",
    "TokenVerifier",
    "UnknownKey",
    "bearer_token",
    "mint_token",
    "session_revoked",
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
    jwks_url: str | None = None  # the identity provider's keys (RS256 tokens with a kid)
    jwks_refresh: float = 60.0  # seconds between fetches of the JWKS

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> JwtConfig:
        """The services' configuration."""
        return cls(
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.jwt_hs256_secret,
            settings.jwt_rs256_public_key,
            jwks_url=settings.jwks_url,
            jwks_refresh=settings.jwks_refresh,
        )

    def __post_init__(self) -> None:
        if not self.hs256_secret and not self.rs256_public_key and not self.jwks_url:
            raise ValueError(
                "JWT verification needs an HS256 secret, an RS256 public key or a JWKS URL"
            )
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

    @property
    def session_id(self) -> str | None:
        """The login session (refresh-token family) the token belongs to, if it says."""
        sid: str | None = self.claims.get("sid")
        return sid


def session_revoked() -> AuthError:
    """The refusal of a token whose login session was revoked (logout, a reused refresh
    token)."""
    return AuthError("TOKEN_REVOKED", "the token's session has ended (logged out)")


class UnknownKey(AuthError):
    """An RS256 token names a key id that is not in this process's copy of the JWKS."""

    def __init__(self, kid: str):
        super().__init__("INVALID_TOKEN", "the token's signing key is not one of the issuer's")
        self.kid = kid


class TokenVerifier:
    """Verifies tokens against the configured keys and, when given, the revoked
    sessions; ``open`` and ``close`` start and stop their background refreshes."""

    def __init__(
        self,
        config: JwtConfig,
        cache_size: int = 10_000,
        *,
        revoked: RevokedSessions | None = None,
    ):
        self.config = config
        self.cache_size = cache_size
        self.revoked = revoked
        self._keys: dict[str, str] = {}
        if config.hs256_secret:
            self._keys["HS256"] = config.hs256_secret
        if config.rs256_public_key:
            self._keys["RS256"] = config.rs256_public_key
        self.remembered: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        """Verified tokens: (principal, expiry), least recently used first."""
        self.jwks = (
            KeySet(
                config.jwks_url,
                refresh_interval=config.jwks_refresh,
                on_removed=self.remembered.clear,
            )
            if config.jwks_url
            else None
        )

    async def open(self) -> None:
        """The first copies of the JWKS and of the revoked sessions (a failure is logged
        and retried: the service starts anyway), then their background refreshes."""
        if self.jwks is not None:
            await self.jwks.open()
        if self.revoked is not None:
            await self.revoked.open()

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()
        if self.revoked is not None:
            await self.revoked.close()

    async def authenticate(self, token: str) -> Principal:
        """``verify``, and if the token names a key this process does not know yet,
        the JWKS fetched again first (at most once every few seconds)."""
        try:
            return self.verify(token)
        except UnknownKey as e:
            assert self.jwks is not None  # only a key set's tokens name unknown keys
            if await self.jwks.find(e.kid) is None:
                raise
            return self.verify(token)

    def verify(self, token: str) -> Principal:
        """The token's principal, with the keys known now: remembered while the token
        has not expired (its ``exp``, without the leeway), else verified (and then
        remembered); either way refused if its session has been revoked."""
        remembered = self.remembered.get(token)
        if remembered is not None:
            principal, expiry = remembered
            if time.time() < expiry:
                self._check_session(principal)
                self.remembered.move_to_end(token)
                return principal
            del self.remembered[token]
        principal = self._verify(token)
        self._check_session(principal)
        if self.cache_size > 0:
            self.remembered[token] = (principal, float(principal.claims["exp"]))
            if len(self.remembered) > self.cache_size:
                self.remembered.popitem(last=False)
        return principal

    def _check_session(self, principal: Principal) -> None:
        sid = principal.session_id
        if sid is not None and self.revoked is not None and sid in self.revoked.sids:
            raise session_revoked()

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("INVALID_TOKEN", "the token is malformed") from None
        key = self._key(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],  # the one _key checked
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
        if not isinstance(claims.get("sid", ""), str):
            raise AuthError("INVALID_TOKEN", "the token's session id is not a string")
        return Principal(subject, claims, frozenset(roles))

    def _key(self, header: dict[str, Any]) -> Any:
        """The key that verifies a token with this header: the key set's key it names
        (``kid``) if it is an RS256 token and a key set is configured, else the
        configured key of its algorithm."""
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm == "RS256" and self.jwks is not None and kid is not None:
            if not isinstance(kid, str):
                raise AuthError("INVALID_TOKEN", "the token's key id is not a string")
            key = self.jwks.keys.get(kid)
            if key is None:
                raise UnknownKey(kid)
            return key
        if algorithm == "RS256" and self.jwks is not None and "RS256" not in self._keys:
            raise AuthError("INVALID_TOKEN", "an RS256 token must name its signing key (kid)")
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            raise AuthError("INVALID_TOKEN", f"tokens signed with {algorithm!r} are not accepted")
        return self._keys[algorithm]


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
