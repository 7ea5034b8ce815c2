"""Money in and out at a customer's request: deposits and withdrawals (docs/funds.md).

A deposit is credited through ``brokercore.broker.funding.fund`` (its reference
``deposit:<account>:<key>``, so one idempotency key credits once). A withdrawal takes
only withdrawable cash, ``cash - blocked_cash - unsettled``, where unsettled cash is the
net proceeds (value - fees) of the account's sales of today's trade date in the
market's time zone: sale proceeds settle T+1, so they are withdrawable the next day
(they may buy shares at once). A PENDING withdrawal adds its amount to the account's
blocked_cash, so orders cannot spend it, and the database's blocked_cash <= cash keeps
cash from going negative; COMPLETED releases the block and writes the WITHDRAWAL row of
``funding`` (reference ``withdrawal:<id>``), FAILED only releases it (migration 0011
allows no other change).

Every write takes the account's row lock first (FOR UPDATE, as funding.fund, the OMS
and settlement do) and reads what it decides on in later statements, whose snapshots
see what the transactions it waited for committed. Plain SQL on a psycopg connection,
one transaction per call (a savepoint inside the caller's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

from brokercore.broker.funding import FundingKind, fund
from brokercore.broker.money import rupees

__all__ = [
    "MARKET_TIMEZONE",
    "MAX_AMOUNT",
    "Refusal",
    "FundsRefused",
    "Funds",
    "Deposit",
    "Withdrawal",
    "FUNDS_SQL",
    "LIST_SQL",
    "OPERATOR_LIST_SQL",
    "funds_of",
    "deposit",
    "request",
    "complete",
    "fail",
    "due_payouts",
    "payout_taken",
]

MARKET_TIMEZONE = "Asia/Kolkata"
"""Where a trade date is a day: a sale's proceeds are unsettled until its next midnight."""

MAX_AMOUNT = 10**11
"""The most paise one deposit or withdrawal may move (100 crore rupees)."""


class Refusal(StrEnum):
    NO_ACCOUNT = "NO_ACCOUNT"
    ACCOUNT_NOT_VERIFIED = "ACCOUNT_NOT_VERIFIED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    WITHDRAWAL_NOT_FOUND = "WITHDRAWAL_NOT_FOUND"
    WITHDRAWAL_NOT_PENDING = "WITHDRAWAL_NOT_PENDING"


class FundsRefused(Exception):
    """A request refused; nothing was changed."""

    def __init__(self, reason: Refusal, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Funds:
    """An account's cash in paise: all of it, blocked (open orders' holds and pending
    withdrawals), today's unsettled sale proceeds, and what may be withdrawn."""

    cash: int
    blocked: int
    unsettled: int

    @property
    def withdrawable(self) -> int:
        return max(0, self.cash - self.blocked - self.unsettled)


@dataclass(frozen=True)
class Deposit:
    deposit_id: int  # its funding row's id
    amount: int
    at: datetime


@dataclass(frozen=True)
class Withdrawal:
    withdrawal_id: int
    account_id: int
    amount: int
    status: str
    requested_at: datetime
    finished_at: datetime | None
    failure_reason: str | None
    provider_reference: str | None

    def facts(self) -> dict[str, Any]:
        """What an audit row keeps of it (JSON values)."""
        return {
            "status": self.status,
            "amount": self.amount,
            "accountId": self.account_id,
            "providerReference": self.provider_reference,
            "failureReason": self.failure_reason,
        }


_WITHDRAWAL_COLUMNS = (
    "withdrawal_id, account_id, amount, status, requested_at, finished_at, failure_reason, "
    "provider_reference"
)

FUNDS_SQL = f"""
SELECT a.account_id, a.kyc_status, a.cash, a.blocked_cash,
       coalesce((SELECT sum(f.price * f.quantity - coalesce(fi.amount, 0))
                   FROM fills f LEFT JOIN fee_income fi USING (trade_id, side)
                  WHERE f.account_id = a.account_id AND f.side = 'SELL'
                    AND f.executed_at >= date_trunc('day', now() AT TIME ZONE '{MARKET_TIMEZONE}')
                                         AT TIME ZONE '{MARKET_TIMEZONE}'), 0)::bigint
  FROM accounts a WHERE a.user_id = %s"""
"""(account_id, kyc_status, cash, blocked_cash, unsettled) of one user's account."""

LIST_SQL = f"""
SELECT {_WITHDRAWAL_COLUMNS} FROM withdrawals
 WHERE account_id = (SELECT account_id FROM accounts WHERE user_id = %s)
 ORDER BY withdrawal_id DESC LIMIT %s"""
"""One user's withdrawals (``Withdrawal`` columns), the newest first, at most a limit."""

OPERATOR_LIST_SQL = f"""
SELECT {_WITHDRAWAL_COLUMNS}, user_id FROM withdrawals JOIN accounts USING (account_id)
 WHERE status = %s ORDER BY withdrawal_id DESC LIMIT %s"""
"""Every user's withdrawals of one status (``Withdrawal`` columns, then the user id), the
newest first, at most a limit."""


def funds_of(row: tuple[Any, ...]) -> Funds:
    """The ``Funds`` of a ``FUNDS_SQL`` row."""
    return Funds(row[2], row[3], row[4])


def _account(conn: psycopg.Connection, user_id: str) -> int:
    """Locks the user's account (FOR UPDATE) if it may move money; its id."""
    row = conn.execute(
        "SELECT account_id, kyc_status FROM accounts WHERE user_id = %s FOR UPDATE", (user_id,)
    ).fetchone()
    if row is None:
        raise FundsRefused(Refusal.NO_ACCOUNT, "there is no account for this user")
    if row[1] != "VERIFIED":
        raise FundsRefused(
            Refusal.ACCOUNT_NOT_VERIFIED, f"the account's KYC status is {row[1]}, not VERIFIED"
        )
    account_id: int = row[0]
    return account_id


def _key_reused() -> FundsRefused:
    return FundsRefused(
        Refusal.IDEMPOTENCY_KEY_REUSED, "this idempotency key was used for a different amount"
    )


def deposit(conn: psycopg.Connection, user_id: str, key: str, amount: int) -> Deposit:
    """Credit ``amount`` paise to the user's account once per ``key``: a repeat of the
    request (racing or not) gets the first deposit back, a different amount is refused."""
    with conn.transaction():
        account_id = _account(conn, user_id)
        reference = f"deposit:{account_id}:{key}"
        fund(conn, account_id, FundingKind.DEPOSIT, amount=amount, reference=reference)
        row = conn.execute(
            "SELECT funding_id, amount, at FROM funding WHERE reference = %s", (reference,)
        ).fetchone()
    assert row is not None  # written now or before, under the account's lock
    if row[1] != amount:
        raise _key_reused()
    return Deposit(*row)


def request(conn: psycopg.Connection, user_id: str, key: str, amount: int) -> Withdrawal:
    """A PENDING withdrawal of ``amount`` paise, its amount blocked, once per ``key`` (a
    repeat gets the withdrawal as it is now); refused beyond the withdrawable cash. Its
    payout is due at once (``due_payouts``)."""
    with conn.transaction():
        account_id = _account(conn, user_id)
        found = conn.execute(
            f"SELECT {_WITHDRAWAL_COLUMNS} FROM withdrawals "
            "WHERE account_id = %s AND idempotency_key = %s",
            (account_id, key),
        ).fetchone()
        if found is not None:
            if found[2] != amount:
                raise _key_reused()
            return Withdrawal(*found)
        funds_row = conn.execute(FUNDS_SQL, (user_id,)).fetchone()
        assert funds_row is not None  # the account is locked
        free = funds_of(funds_row)
        if amount > free.withdrawable:
            raise FundsRefused(
                Refusal.INSUFFICIENT_FUNDS,
                f"{rupees(amount)} asked, {rupees(free.withdrawable)} withdrawable (cash "
                f"{rupees(free.cash)}, blocked {rupees(free.blocked)}, "
                f"unsettled {rupees(free.unsettled)})",
            )
        conn.execute(
            "UPDATE accounts SET blocked_cash = blocked_cash + %s, updated_at = now() "
            "WHERE account_id = %s",
            (amount, account_id),
        )
        row = conn.execute(
            "INSERT INTO withdrawals (account_id, amount, idempotency_key, payout_due_at) "
            f"VALUES (%s, %s, %s, now()) RETURNING {_WITHDRAWAL_COLUMNS}",
            (account_id, amount, key),
        ).fetchone()
    assert row is not None  # INSERT ... RETURNING
    return Withdrawal(*row)


def _finish(
    conn: psycopg.Connection,
    withdrawal_id: int,
    status: str,
    provider_reference: str | None,
    reason: str | None,
) -> tuple[Withdrawal, Withdrawal]:
    """End a PENDING withdrawal as ``status``: its block released, and for COMPLETED its
    funding row written; (before, after). Ending it again as it ended changes nothing
    (a provider's callback may come twice); ending it otherwise is refused."""
    with conn.transaction():
        owner = conn.execute(
            "SELECT account_id FROM withdrawals WHERE withdrawal_id = %s", (withdrawal_id,)
        ).fetchone()
        if owner is None:
            raise FundsRefused(Refusal.WITHDRAWAL_NOT_FOUND, f"no withdrawal {withdrawal_id}")
        # the account before the withdrawal, as every writer of its cash locks them
        conn.execute("SELECT 1 FROM accounts WHERE account_id = %s FOR UPDATE", (owner[0],))
        found = conn.execute(
            f"SELECT {_WITHDRAWAL_COLUMNS} FROM withdrawals WHERE withdrawal_id = %s FOR UPDATE",
            (withdrawal_id,),
        ).fetchone()
        assert found is not None  # withdrawals are never deleted
        before = Withdrawal(*found)
        if before.status == status:
            return before, before
        if before.status != "PENDING":
            raise FundsRefused(
                Refusal.WITHDRAWAL_NOT_PENDING,
                f"withdrawal {withdrawal_id} is {before.status}, not PENDING",
            )
        # released first: the funding row's debit must not meet cash still blocked for it
        conn.execute(
            "UPDATE accounts SET blocked_cash = blocked_cash - %s, updated_at = now() "
            "WHERE account_id = %s",
            (before.amount, before.account_id),
        )
        if status == "COMPLETED":
            fund(
                conn,
                before.account_id,
                FundingKind.WITHDRAWAL,
                amount=before.amount,
                reference=f"withdrawal:{withdrawal_id}",
            )
        row = conn.execute(
            "UPDATE withdrawals SET status = %s, finished_at = now(), failure_reason = %s, "
            "provider_reference = coalesce(%s, provider_reference), payout_due_at = NULL "
            f"WHERE withdrawal_id = %s RETURNING {_WITHDRAWAL_COLUMNS}",
            (status, reason, provider_reference, withdrawal_id),
        ).fetchone()
    assert row is not None  # locked above
    return before, Withdrawal(*row)


def complete(
    conn: psycopg.Connection, withdrawal_id: int, provider_reference: str | None = None
) -> tuple[Withdrawal, Withdrawal]:
    """The withdrawal paid out: COMPLETED, the cash gone; (before, after)."""
    return _finish(conn, withdrawal_id, "COMPLETED", provider_reference, None)


def fail(
    conn: psycopg.Connection,
    withdrawal_id: int,
    reason: str,
    provider_reference: str | None = None,
) -> tuple[Withdrawal, Withdrawal]:
    """The withdrawal not paid out: FAILED for ``reason``, its cash free again;
    (before, after)."""
    return _finish(conn, withdrawal_id, "FAILED", provider_reference, reason)


def due_payouts(
    conn: psycopg.Connection,
    retry_base: float,
    retry_cap: float,
    only: int | None = None,
    limit: int = 100,
) -> list[Withdrawal]:
    """Claim the PENDING withdrawals whose payout is due (``only`` that one, if given):
    each one's next attempt is put off (retry_base seconds, doubling per attempt up to
    retry_cap) before it is sent, so that a payout the provider never confirms is sent
    again, and concurrent sweeps (SKIP LOCKED) do not claim the same one."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE withdrawals SET payout_attempts = payout_attempts + 1, payout_due_at = "
            "now() + make_interval(secs => least(%s, %s * 2 ^ least(payout_attempts, 30))) "
            "WHERE withdrawal_id IN (SELECT withdrawal_id FROM withdrawals "
            "  WHERE status = 'PENDING' AND payout_due_at <= now() "
            "  AND (%s::bigint IS NULL OR withdrawal_id = %s) "
            "  ORDER BY payout_due_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_WITHDRAWAL_COLUMNS}",
            (retry_cap, retry_base, only, only, limit),
        ).fetchall()
    return [Withdrawal(*row) for row in rows]


def payout_taken(conn: psycopg.Connection, withdrawal_id: int, provider_reference: str) -> None:
    """The provider took the payout (its callback will end the withdrawal): not due again."""
    with conn.transaction():
        conn.execute(
            "UPDATE withdrawals SET provider_reference = %s, payout_due_at = NULL "
            "WHERE withdrawal_id = %s AND status = 'PENDING'",
            (provider_reference, withdrawal_id),
        )
