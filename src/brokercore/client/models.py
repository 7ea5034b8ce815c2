"""Answers of the accounts and funds services, which define theirs inside
brokercore.services (which the client may not import). Every other answer the client
decodes is the library's own Struct (brokercore.entry, brokercore.read,
brokercore.realtime)."""

from __future__ import annotations

import msgspec

__all__ = ["Tokens", "MfaChallenge", "Me", "TotpEnrolment", "RecoveryCodes", "Funds", "Deposit"]


class Tokens(msgspec.Struct, rename="camel", frozen=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str


class MfaChallenge(msgspec.Struct, rename="camel", frozen=True):
    """A right password of a user with a second factor: ``mfa_token`` goes to login/totp
    (None: the login answered tokens instead)."""

    mfa_required: bool = False
    mfa_token: str | None = None


class Me(msgspec.Struct, rename="camel", frozen=True):
    user_id: str
    email: str
    kyc_status: str
    roles: list[str]
    totp_enrolled: bool


class TotpEnrolment(msgspec.Struct, rename="camel", frozen=True):
    secret: str
    otpauth_uri: str


class RecoveryCodes(msgspec.Struct, rename="camel", frozen=True):
    recovery_codes: list[str]


class Funds(msgspec.Struct, frozen=True):
    """Rupee strings: the cash, what open orders block, what awaits settlement, and
    what may be withdrawn."""

    cash: str
    blocked: str
    unsettled: str
    withdrawable: str


class Deposit(msgspec.Struct, rename="camel", frozen=True):
    deposit_id: int
    amount: str
    status: str
    created_at: str
