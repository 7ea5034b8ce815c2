"""The second factor: TOTP codes (RFC 6238, pyotp: 6 digits, 30-second steps, SHA-1, the
authenticator apps' defaults) and one-time recovery codes.

A code is accepted for the current step or one step either side (clock drift), and only
once: the step of the last accepted code is stored (users.totp_last_step) and moved
forward by the same UPDATE that accepts a code, so a code of that step or an earlier one
is refused, also when two logins race with the same code. Enrolment stores a pending
secret that becomes the user's only when a code from it is confirmed, and the
confirmation hands out ``RECOVERY_CODES`` recovery codes, stored as sha256 hashes (they
are random, so a fast hash is enough) and used once each."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

import pyotp
from psycopg import AsyncConnection

__all__ = [
    "ISSUER",
    "RECOVERY_CODES",
    "Enrolment",
    "enrol",
    "confirm",
    "check_second_factor",
    "matching_step",
]

ISSUER = "brokercore"
"""The issuer an authenticator app shows next to the account."""

RECOVERY_CODES = 10
STEP = 30  # seconds
DRIFT = 1  # steps accepted either side of the current one


class Enrolment:
    """A pending TOTP secret and the otpauth:// URI an authenticator app scans."""

    def __init__(self, secret: str, email: str):
        self.secret = secret
        self.otpauth_uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step (unix time // 30) within the drift whose code ``code`` is, or None."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return None
    totp, current = pyotp.TOTP(secret), int((time.time() if now is None else now) // STEP)
    for step in range(current - DRIFT, current + DRIFT + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _code_hash(code: str) -> bytes:
    """The stored form of a recovery code, as typed with or without dashes and spaces."""
    return hashlib.sha256(code.replace("-", "").replace(" ", "").lower().encode()).digest()


def _new_recovery_code() -> str:
    """Ten base32 characters (50 bits), shown as xxxxx-xxxxx."""
    text = base64.b32encode(secrets.token_bytes(7)).decode()[:10].lower()
    return f"{text[:5]}-{text[5:]}"


async def enrol(conn: AsyncConnection[Any], user_id: str) -> Enrolment | None:
    """A new pending secret for the user; None if they have a confirmed one already (a
    second factor is not replaced by a login that used it)."""
    secret = pyotp.random_base32()
    row = await (
        await conn.execute(
            "UPDATE users SET totp_pending = %s WHERE user_id = %s AND totp_secret IS NULL "
            "RETURNING email",
            (secret, user_id),
        )
    ).fetchone()
    return None if row is None else Enrolment(secret, row[0])


async def confirm(
    conn: AsyncConnection[Any], user_id: str, code: str, now: float | None = None
) -> list[str] | None:
    """Make the pending secret the user's if ``code`` is one of its codes (that code's
    step counting as used) and replace their recovery codes; the new codes, or None
    (nothing changed) if there is no pending secret or the code does not match it."""
    async with conn.transaction():
        row = await (
            await conn.execute(
                "SELECT totp_pending FROM users WHERE user_id = %s FOR UPDATE", (user_id,)
            )
        ).fetchone()
        if row is None or row[0] is None:
            return None
        step = matching_step(row[0], code, now)
        if step is None:
            return None
        await conn.execute(
            "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, "
            "totp_last_step = %s WHERE user_id = %s",
            (step, user_id),
        )
        codes = [_new_recovery_code() for _ in range(RECOVERY_CODES)]
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = %s", (user_id,))
        async with conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (%s, %s)",
                [(user_id, _code_hash(c)) for c in codes],
            )
    return codes


async def check_second_factor(
    conn: AsyncConnection[Any], user_id: str, secret: str, code: str, now: float | None = None
) -> bool:
    """Whether ``code`` passes as the user's second factor, using it up: a TOTP code of a
    step later than the last accepted one, or an unused recovery code."""
    step = matching_step(secret, code, now)
    if step is not None:
        cursor = await conn.execute(
            "UPDATE users SET totp_last_step = %s WHERE user_id = %s "
            "AND (totp_last_step IS NULL OR totp_last_step < %s)",
            (step, user_id, step),
        )
    else:
        cursor = await conn.execute(
            "UPDATE recovery_codes SET used_at = now() "
            "WHERE user_id = %s AND code_hash = %s AND used_at IS NULL",
            (user_id, _code_hash(code)),
        )
    return cursor.rowcount == 1
