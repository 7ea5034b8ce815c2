"""The accounts service: sign-up, login with a second factor, tokens, the JWKS, KYC.

    brokercore service accounts --port 8005      (settings: BROKERCORE_* variables)

    POST /api/v1/auth/signup        {email, password}         202, whether the email is new or not
    POST /api/v1/auth/login         {email, password}         tokens, or {mfaRequired, mfaToken}
    POST /api/v1/auth/login/totp    {mfaToken, code}          tokens (code: TOTP or recovery code)
    POST /api/v1/auth/refresh       {refreshToken}            the next tokens of the session
    POST /api/v1/auth/logout                                  the session's tokens revoked
    POST /api/v1/auth/totp/enrol                              {secret, otpauthUri}
    POST /api/v1/auth/totp/confirm  {code}                    {recoveryCodes}
    GET  /api/v1/auth/jwks, /.well-known/jwks.json            the token signing keys
    GET  /api/v1/me                                           {userId, email, kycStatus, ...}
    GET  /api/v1/operator/accounts?kycStatus=&limit=&cursor=  (operator) accounts to decide
    POST /api/v1/operator/accounts/{userId}/kyc {status, reason?}  (operator) the decision

Tokens are {accessToken, refreshToken, expiresIn, tokenType}. The logic is in
brokercore.identity (docs/identity.md); this module maps it onto HTTP with the other
services' pieces (brokercore.services.http). Answers never tell whether an email is
registered: sign-up answers 202 either way, a failed login 401 INVALID_CREDENTIALS
after the same argon2 work, a locked one 429 LOGIN_LOCKED, whoever the email belongs
to. Password hashing runs in threads, off the event loop. The service verifies its own
access tokens like every service (BROKERCORE_JWKS_URL, which points at it).
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal

import msgspec
from psycopg import AsyncConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.config import ServiceSettings
from brokercore.entry.requests import FieldError
from brokercore.identity import sessions, totp, users
from brokercore.identity.answers import (
    AccountPage,
    AccountSummary,
    Jwks,
    KycDecision,
    Me,
    MfaChallenge,
    RecoveryCodes,
    SignupAccepted,
    Tokens,
    TotpEnrolment,
)
from brokercore.identity.keys import ACCESS_TTL, Signer
from brokercore.identity.passwords import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    check_password,
    hash_password,
)
from brokercore.identity.throttle import LoginThrottle
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    decode_body,
    decode_query,
    guarded,
    require_operator,
    service_app,
)
from brokercore.services.http import json_response as json
from brokercore.services.openapi import documented

MAX_EMAIL = 254
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_PAGE = 500

Email = Annotated[str, msgspec.Meta(max_length=MAX_EMAIL)]
Code = Annotated[str, msgspec.Meta(max_length=32)]


class SignupRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    email: Email
    password: Annotated[str, msgspec.Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    email: Email
    password: Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD)]


class SecondFactorRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    mfa_token: Annotated[str, msgspec.Meta(max_length=4096)]
    code: Code


class RefreshRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    refresh_token: Annotated[str, msgspec.Meta(max_length=256)]


class CodeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    code: Code


class KycRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    status: Literal["VERIFIED", "REJECTED"]
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class AccountsQuery(msgspec.Struct, rename="camel", frozen=True):
    """GET /api/v1/operator/accounts' query (read by ``operator_accounts``)."""

    kyc_status: users.KycStatus | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 100
    cursor: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


class Accounts(LimitedApi):
    """The pieces one accounts process holds: the API's (LimitedApi, with the reads'
    rate limit, per user or, before login, per client address), the token signer and
    the failed-login throttle."""

    def __init__(self, settings: ServiceSettings):
        super().__init__(
            settings,
            "accounts-ratelimit:",
            settings.read_rate_limit_burst,
            settings.read_rate_limit_per_second,
            max_connections=10,
            max_redis=16,
        )
        self.signer = Signer(settings.jwt_issuer, settings.jwt_audience)
        self.throttle = LoginThrottle(self.redis, settings.redis_prefix)

    async def open(self) -> None:
        await super().open()
        async with self.pool.connection() as conn:
            await self.signer.ensure_key(conn)

    async def limit_address(self, request: Request) -> str:
        """The client's address, within its rate limit (429 RATE_LIMITED): the budget of
        the calls made before a login."""
        address = request.client.host if request.client else "unknown"
        await self.take("address:" + address)
        return address

    async def tokens(self, conn: AsyncConnection[Any], user: users.LoginUser) -> Response:
        """A new session's first tokens for ``user``."""
        family, refresh_token = await sessions.start_family(conn, user.user_id)
        return _tokens(
            await self.signer.access_token(conn, user.user_id, family, user.roles), refresh_token
        )


def _tokens(access_token: str, refresh_token: str) -> Response:
    return json(Tokens(access_token, refresh_token, ACCESS_TTL, "Bearer"))


def _state(request: Request) -> Accounts:
    api: Accounts = request.app.state.accounts
    return api


def _email(text: str) -> str:
    """The email as stored: trimmed and lower-cased."""
    return text.strip().lower()


_INVALID_CREDENTIALS = ApiError(401, "INVALID_CREDENTIALS", "the email or password is wrong")
_INVALID_CODE = ApiError(401, "INVALID_CODE", "the code is wrong, used or expired")


def _locked(wait: int) -> ApiError:
    return ApiError(
        429,
        "LOGIN_LOCKED",
        "too many failed logins; try again later",
        headers={"Retry-After": str(wait)},
    )


# --- sign-up and login ----------------------------------------------------------------


@guarded
async def signup(request: Request) -> Response:
    api = _state(request)
    body = decode_body(SignupRequest, await api.body(request), "sign-up")
    email = _email(body.email)
    if not _EMAIL.fullmatch(email):
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "the sign-up is invalid",
            [FieldError("email", "must be an email address")],
        )
    await api.limit_address(request)
    password_hash = await asyncio.to_thread(hash_password, body.password)
    async with api.pool.connection() as conn:
        await users.sign_up(conn, email, password_hash)
    return json(SignupAccepted("ACCEPTED"), 202)


@guarded
async def login(request: Request) -> Response:
    api = _state(request)
    body = decode_body(LoginRequest, await api.body(request), "login")
    email, address = _email(body.email), await api.limit_address(request)
    wait = await api.throttle.wait(email, address)
    if wait:
        raise _locked(wait)
    async with api.pool.connection() as conn:
        user = await users.login_user(conn, email=email)
    stored = user.password_hash if user is not None else None
    matches = await asyncio.to_thread(check_password, stored, body.password)  # unknown too
    if user is None or not matches:
        await api.throttle.failed(email, address)
        raise _INVALID_CREDENTIALS
    async with api.pool.connection() as conn:
        if user.totp_secret is not None:  # the email's failures stand until the code passes
            ticket = await api.signer.mfa_ticket(conn, user.user_id)
            return json(MfaChallenge(True, ticket))
        await api.throttle.succeeded(email)
        return await api.tokens(conn, user)


@guarded
async def login_totp(request: Request) -> Response:
    api = _state(request)
    body = decode_body(SecondFactorRequest, await api.body(request), "second factor")
    address = await api.limit_address(request)
    async with api.pool.connection() as conn:
        user_id = await api.signer.mfa_user(conn, body.mfa_token)
        user = None if user_id is None else await users.login_user(conn, user_id=user_id)
        if user is None or user.totp_secret is None:
            raise ApiError(401, "INVALID_MFA_TOKEN", "the MFA token is invalid or expired")
        wait = await api.throttle.wait(user.email, address)
        if wait:
            raise _locked(wait)
        if not await totp.check_second_factor(conn, user.user_id, user.totp_secret, body.code):
            await api.throttle.failed(user.email, address)
            raise _INVALID_CODE
        await api.throttle.succeeded(user.email)
        return await api.tokens(conn, user)


@guarded
async def refresh(request: Request) -> Response:
    api = _state(request)
    body = decode_body(RefreshRequest, await api.body(request), "refresh")
    await api.limit_address(request)
    async with api.pool.connection() as conn:
        refreshed = await sessions.refresh(
            conn, api.redis, api.settings.redis_prefix, body.refresh_token
        )
        user = (
            None if refreshed is None else await users.login_user(conn, user_id=refreshed.user_id)
        )
        if refreshed is None or user is None:
            raise ApiError(
                401,
                "INVALID_REFRESH_TOKEN",
                "the refresh token is invalid, expired, used or revoked",
            )
        access = await api.signer.access_token(conn, user.user_id, refreshed.family_id, user.roles)
    return _tokens(access, refreshed.token)


@guarded
async def logout(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    if principal.session_id is not None:  # a development token has no session
        async with api.pool.connection() as conn:
            await sessions.revoke_family(
                conn, api.redis, api.settings.redis_prefix, principal.session_id
            )
    return Response(status_code=204)


# --- the second factor ------------------------------------------------------------------


@guarded
async def totp_enrol(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        if await users.profile(conn, principal.user_id) is None:
            raise ApiError(404, "USER_NOT_FOUND", "no user behind this token")
        enrolment = await totp.enrol(conn, principal.user_id)
    if enrolment is None:
        raise ApiError(409, "TOTP_ALREADY_ENROLLED", "a second factor is set up already")
    return json(TotpEnrolment(enrolment.secret, enrolment.otpauth_uri))


@guarded
async def totp_confirm(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    body = decode_body(CodeRequest, await api.body(request), "confirmation")
    async with api.pool.connection() as conn:
        codes = await totp.confirm(conn, principal.user_id, body.code)
    if codes is None:
        raise ApiError(
            422, "INVALID_CODE", "no enrolment is pending, or the code is not one of its codes"
        )
    return json(RecoveryCodes(codes))


# --- keys and profile ---------------------------------------------------------------------


@guarded
async def jwks(request: Request) -> Response:
    api = _state(request)
    async with api.pool.connection() as conn:
        return json(Jwks((await api.signer.jwks(conn))["keys"]))


@guarded
async def me(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        found = await users.profile(conn, principal.user_id)
    if found is None:
        raise ApiError(404, "USER_NOT_FOUND", "no user behind this token")
    return json(Me(found.user_id, found.email, found.kyc_status, found.roles, found.totp_enrolled))


# --- operators ------------------------------------------------------------------------------


@guarded
async def operator_accounts(request: Request) -> Response:
    api = _state(request)
    require_operator(await api.authorize(request))
    query = decode_query(request, AccountsQuery)
    async with api.pool.connection() as conn:
        rows = await users.list_accounts(conn, query.kyc_status, query.limit, query.cursor)
    return json(
        AccountPage(
            [
                AccountSummary(row.user_id, row.email, row.kyc_status, row.created_at.isoformat())
                for row in rows
            ],
            str(rows[-1].account_id) if len(rows) == query.limit else None,
        )
    )


@guarded
async def operator_kyc(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    require_operator(principal)
    body = decode_body(KycRequest, await api.body(request), "KYC decision")
    user_id = request.path_params["user_id"]
    async with api.pool.connection() as conn:
        before = await users.set_kyc(conn, principal.user_id, user_id, body.status, body.reason)
    if before is None:
        raise ApiError(404, "ACCOUNT_NOT_FOUND", f"no account of user {user_id[:40]}")
    return json(KycDecision(user_id, body.status, before))


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    return service_app(
        "accounts",
        lambda: Accounts(settings),
        [
            documented(
                "POST",
                "/api/v1/auth/signup",
                signup,
                "Sign up (202 whether the email is new or not)",
                tag="auth",
                body=SignupRequest,
                response=SignupAccepted,
                status=202,
                public=True,
            ),
            documented(
                "POST",
                "/api/v1/auth/login",
                login,
                "Log in: the tokens, or an MFA challenge when a second factor is set up",
                tag="auth",
                body=LoginRequest,
                response=(Tokens, MfaChallenge),
                public=True,
                errors={401: "INVALID_CREDENTIALS", 429: "LOGIN_LOCKED"},
            ),
            documented(
                "POST",
                "/api/v1/auth/login/totp",
                login_totp,
                "The login's second step: a TOTP or recovery code",
                tag="auth",
                body=SecondFactorRequest,
                response=Tokens,
                public=True,
                errors={401: "INVALID_MFA_TOKEN, INVALID_CODE", 429: "LOGIN_LOCKED"},
            ),
            documented(
                "POST",
                "/api/v1/auth/refresh",
                refresh,
                "The session's next tokens (the refresh token is spent)",
                tag="auth",
                body=RefreshRequest,
                response=Tokens,
                public=True,
                errors={401: "INVALID_REFRESH_TOKEN"},
            ),
            documented(
                "POST",
                "/api/v1/auth/logout",
                logout,
                "End the session: its tokens are revoked",
                tag="auth",
                status=204,
            ),
            documented(
                "POST",
                "/api/v1/auth/totp/enrol",
                totp_enrol,
                "Start setting up a TOTP second factor",
                tag="auth",
                response=TotpEnrolment,
                errors={404: "USER_NOT_FOUND", 409: "TOTP_ALREADY_ENROLLED"},
            ),
            documented(
                "POST",
                "/api/v1/auth/totp/confirm",
                totp_confirm,
                "Confirm the second factor with a code: the recovery codes",
                tag="auth",
                body=CodeRequest,
                response=RecoveryCodes,
                errors={422: "INVALID_CODE"},
            ),
            *(
                documented(
                    "GET",
                    path,
                    jwks,
                    "The token signing keys (JWKS)",
                    tag="auth",
                    response=Jwks,
                    public=True,
                )
                for path in ("/api/v1/auth/jwks", "/.well-known/jwks.json")
            ),
            documented(
                "GET",
                "/api/v1/me",
                me,
                "The caller's profile",
                tag="auth",
                response=Me,
                errors={404: "USER_NOT_FOUND"},
            ),
            documented(
                "GET",
                "/api/v1/operator/accounts",
                operator_accounts,
                "(operator) accounts, by KYC status, a page at a time",
                tag="operator",
                query=AccountsQuery,
                response=AccountPage,
                errors={403: "FORBIDDEN"},
            ),
            documented(
                "POST",
                "/api/v1/operator/accounts/{user_id}/kyc",
                operator_kyc,
                "(operator) the KYC decision on an account",
                tag="operator",
                body=KycRequest,
                response=KycDecision,
                errors={403: "FORBIDDEN", 404: "ACCOUNT_NOT_FOUND"},
            ),
        ],
    )
