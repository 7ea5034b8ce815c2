"""The accounts service's answers (brokercore.services.accounts), as Structs of their own
here, below the services and free of database drivers: the API's document is generated
from them, and a client (brokercore.client) decodes with the same definitions."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "SignupAccepted",
    "Tokens",
    "MfaChallenge",
    "TotpEnrolment",
    "RecoveryCodes",
    "Jwks",
    "Me",
    "AccountSummary",
    "AccountPage",
    "KycDecision",
]


class SignupAccepted(msgspec.Struct, frozen=True):
    status: Literal["ACCEPTED"]  # whether the email was new or not


class Tokens(msgspec.Struct, rename="camel", frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    token_type: Literal["Bearer"]


class MfaChallenge(msgspec.Struct, rename="camel", frozen=True):
    """A login's first step passed: send a code with ``mfa_token`` to .../login/totp."""

    mfa_required: Literal[True]
    mfa_token: str


class TotpEnrolment(msgspec.Struct, rename="camel", frozen=True):
    secret: str
    otpauth_uri: str


class RecoveryCodes(msgspec.Struct, rename="camel", frozen=True):
    recovery_codes: list[str]  # each good for one login instead of a TOTP code


class Jwks(msgspec.Struct, frozen=True):
    """The token signing keys' public halves (RFC 7517), newest first."""

    keys: list[dict[str, Any]]


class Me(msgspec.Struct, rename="camel", frozen=True):
    user_id: str
    email: str
    kyc_status: str
    roles: list[str]
    totp_enrolled: bool


class AccountSummary(msgspec.Struct, rename="camel", frozen=True):
    user_id: str
    email: str | None  # None: an account opened without a user
    kyc_status: str
    created_at: str


class AccountPage(msgspec.Struct, rename="camel", frozen=True):
    accounts: list[AccountSummary]
    next_cursor: str | None  # None: this was the last page


class KycDecision(msgspec.Struct, rename="camel", frozen=True):
    user_id: str
    kyc_status: str
    previous_kyc_status: str
