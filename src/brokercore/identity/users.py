"""Users and their accounts: sign-up, what a login needs to know, the KYC decision and
the operator role.

Sign-up makes the user and their account (empty, KYC PENDING) in one transaction, or
nothing if the email is taken; the caller answers the same either way, so sign-up never
tells whether an email is registered. A user id is ``"u"`` and 12 random lower-case
base32 characters (60 bits): it is the account's user_id and the tokens' subject, and
says nothing about the user. KYC decisions and role grants are audited
(brokercore.identity.audit) in their own transaction.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection

from brokercore.identity.audit import record

__all__ = [
    "KycStatus",
    "LoginUser",
    "Profile",
    "AccountRow",
    "new_user_id",
    "sign_up",
    "login_user",
    "profile",
    "set_kyc",
    "list_accounts",
    "grant_role",
]

KycStatus = Literal["PENDING", "VERIFIED", "REJECTED"]


@dataclass(frozen=True)
class LoginUser:
    """What a login checks: the password's hash, the second factor, the roles."""

    user_id: str
    email: str
    password_hash: str
    totp_secret: str | None
    roles: list[str]


@dataclass(frozen=True)
class Profile:
    user_id: str
    email: str
    kyc_status: str
    roles: list[str]
    totp_enrolled: bool


@dataclass(frozen=True)
class AccountRow:
    account_id: int
    user_id: str
    email: str | None  # None: an account opened without a user (a tool's, a test's)
    kyc_status: str
    created_at: datetime


def new_user_id() -> str:
    return "u" + base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]


async def sign_up(conn: AsyncConnection[Any], email: str, password_hash: str) -> str | None:
    """The new user's id, their account opened (no cash, KYC PENDING); None, changing
    nothing, if ``email`` (lower-cased already) is taken. One statement either way, so
    that a taken email does not answer sooner."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "WITH new AS (INSERT INTO users (user_id, email, password_hash) "
                "VALUES (%s, %s, %s) ON CONFLICT (email) DO NOTHING RETURNING user_id) "
                "INSERT INTO accounts (user_id, cash, kyc_status) "
                "SELECT user_id, 0, 'PENDING' FROM new RETURNING user_id",
                (new_user_id(), email, password_hash),
            )
        ).fetchone()
    return None if row is None else str(row[0])


_LOGIN_COLUMNS = "user_id, email, password_hash, totp_secret, roles"


async def login_user(
    conn: AsyncConnection[Any], *, email: str | None = None, user_id: str | None = None
) -> LoginUser | None:
    """The user with this email (lower-cased already) or id, if any."""
    column, value = ("email", email) if email is not None else ("user_id", user_id)
    row = await (
        await conn.execute(f"SELECT {_LOGIN_COLUMNS} FROM users WHERE {column} = %s", (value,))
    ).fetchone()
    return None if row is None else LoginUser(*row)


async def profile(conn: AsyncConnection[Any], user_id: str) -> Profile | None:
    row = await (
        await conn.execute(
            "SELECT u.user_id, u.email, a.kyc_status, u.roles, u.totp_secret IS NOT NULL "
            "FROM users u JOIN accounts a USING (user_id) WHERE u.user_id = %s",
            (user_id,),
        )
    ).fetchone()
    return None if row is None else Profile(*row)


async def set_kyc(
    conn: AsyncConnection[Any],
    actor: str,
    user_id: str,
    status: KycStatus,
    reason: str | None = None,
) -> str | None:
    """Set the account's KYC status, audited in the same transaction; the status it had,
    or None (nothing changed) if the user has no account."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT kyc_status FROM accounts WHERE user_id = %s FOR UPDATE", (user_id,)
            )
        ).fetchone()
        if row is None:
            return None
        await conn.execute(
            "UPDATE accounts SET kyc_status = %s, updated_at = now() WHERE user_id = %s",
            (status, user_id),
        )
        await record(
            conn,
            actor,
            "KYC_DECISION",
            f"account:{user_id}",
            {"kycStatus": row[0]},
            {"kycStatus": status, "reason": reason},
        )
    before: str = row[0]
    return before


async def list_accounts(
    conn: AsyncConnection[Any], kyc_status: KycStatus | None, limit: int, after: int = 0
) -> list[AccountRow]:
    """Accounts (with their user's email) of that status (any if None), oldest first,
    from account id ``after`` on (exclusive): a page of at most ``limit``."""
    rows = await (
        await conn.execute(
            "SELECT a.account_id, a.user_id, u.email, a.kyc_status, a.created_at "
            "FROM accounts a LEFT JOIN users u USING (user_id) "
            "WHERE a.account_id > %s AND (%s::text IS NULL OR a.kyc_status = %s) "
            "ORDER BY a.account_id LIMIT %s",
            (after, kyc_status, kyc_status, limit),
        )
    ).fetchall()
    return [AccountRow(*row) for row in rows]


async def grant_role(conn: AsyncConnection[Any], actor: str, email: str, role: str) -> str | None:
    """Give the user with this email ``role`` (audited); their id, or None if there is
    no such user. Granting a role held already changes nothing and records nothing."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT user_id, roles FROM users WHERE email = %s FOR UPDATE", (email,)
            )
        ).fetchone()
        if row is None:
            return None
        user_id, roles = row
        if role not in roles:
            await conn.execute(
                "UPDATE users SET roles = array_append(roles, %s) WHERE user_id = %s",
                (role, user_id),
            )
            await record(
                conn,
                actor,
                "ROLE_GRANTED",
                f"user:{user_id}",
                {"roles": roles},
                {"roles": [*roles, role]},
            )
    found: str = user_id
    return found
