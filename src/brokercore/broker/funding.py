"""Funding: cash and shares that enter or leave an account other than by trading.

Each movement is a row of the append-only ``funding`` journal (migration 0005), written
in the same transaction as the balance it changes, so that the reconciler can check
that nothing appears or vanishes (``brokercore.consumers.reconcile.check_invariants``):
cash = deposits - withdrawals - bought + sold - fees, and a position = shares in -
shares out + bought - sold. A ``reference`` (a payment's or a transfer's id) is
unique: the same funding sent twice is applied once.

The rules about balances are the database's: a withdrawal of blocked cash, or shares
taken out of an account that may not short and does not hold them, is refused by its
constraints and triggers (``psycopg.errors.CheckViolation``). Shares moved in or out
change the read model's position too (the projector only sees trades).

Locks: the account row, then the position, then its read model row (settlement and
the OMS also lock an account before its positions).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum

import psycopg

from brokercore.broker.money import average_price

__all__ = ["FundingKind", "fund", "open_account"]


class FundingKind(StrEnum):
    DEPOSIT = "DEPOSIT"  # cash in
    WITHDRAWAL = "WITHDRAWAL"  # cash out
    SHARES_IN = "SHARES_IN"  # shares moved in (a transfer, a demo holding)
    SHARES_OUT = "SHARES_OUT"  # shares moved out


_CASH = {FundingKind.DEPOSIT: 1, FundingKind.WITHDRAWAL: -1}
_SHARES = {FundingKind.SHARES_IN: 1, FundingKind.SHARES_OUT: -1}


def fund(
    conn: psycopg.Connection,
    account_id: int,
    kind: FundingKind | str,
    *,
    amount: int = 0,
    symbol: str | None = None,
    quantity: int = 0,
    price: int | None = None,
    reference: str | None = None,
) -> bool:
    """Move ``amount`` paise (DEPOSIT, WITHDRAWAL) or ``quantity`` shares of ``symbol``
    (SHARES_IN at ``price`` paise a share if known, SHARES_OUT) into or out of the
    account, with its journal row, in one transaction (a savepoint inside the caller's).
    Returns False, changing nothing, if ``reference`` was applied before."""
    kind = FundingKind(kind)
    if kind in _CASH:
        if type(amount) is not int or amount <= 0 or symbol is not None or quantity or price:
            raise ValueError(f"{kind.value} moves a positive int amount of paise, nothing else")
    elif (
        type(quantity) is not int
        or quantity <= 0
        or not symbol
        or amount
        or (price is not None and (kind is FundingKind.SHARES_OUT or price < 0))
    ):
        raise ValueError(
            f"{kind.value} moves a positive int quantity of one symbol"
            f"{' at a price >= 0' if kind is FundingKind.SHARES_IN else ''}"
        )
    with conn.transaction():
        row = conn.execute(
            "SELECT user_id FROM accounts WHERE account_id = %s FOR UPDATE", (account_id,)
        ).fetchone()
        if row is None:
            raise ValueError(f"there is no account {account_id}")
        if (
            conn.execute(
                "INSERT INTO funding (account_id, kind, symbol, amount, quantity, "
                "price, reference) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (reference) DO NOTHING RETURNING funding_id",
                (account_id, kind.value, symbol, amount, quantity, price, reference),
            ).fetchone()
            is None
        ):
            return False
        if kind in _CASH:
            conn.execute(
                "UPDATE accounts SET cash = cash + %s, updated_at = now() WHERE account_id = %s",
                (_CASH[kind] * amount, account_id),
            )
        else:
            assert symbol is not None  # checked above: shares are of a symbol
            delta = _SHARES[kind] * quantity
            _move_shares(conn, "positions", "account_id", account_id, symbol, delta, price)
            _move_shares(conn, "read_model.positions", "user_id", row[0], symbol, delta, price)
    return True


def _move_shares(
    conn: psycopg.Connection,
    table: str,
    owner_column: str,
    owner: int | str,
    symbol: str,
    delta: int,
    price: int | None,
) -> None:
    """Add ``delta`` shares to a position row (made if missing). A known price moves the
    average cost as a trade at that price would; an unknown one leaves it."""
    found = conn.execute(
        f"SELECT quantity, avg_price FROM {table} "
        f"WHERE {owner_column} = %s AND symbol = %s FOR UPDATE",
        (owner, symbol),
    ).fetchone()
    held, avg = found if found is not None else (0, Decimal(0))
    if held + delta == 0:
        avg = Decimal(0)
    elif price is not None:
        avg = average_price(held, avg, delta, price)
    conn.execute(
        f"INSERT INTO {table} ({owner_column}, symbol, quantity, avg_price) "
        f"VALUES (%s, %s, %s, %s) ON CONFLICT ({owner_column}, symbol) DO UPDATE "
        f"SET quantity = EXCLUDED.quantity, avg_price = EXCLUDED.avg_price, "
        f"updated_at = now()",
        (owner, symbol, held + delta, avg),
    )


def open_account(
    conn: psycopg.Connection,
    user_id: str,
    *,
    cash: int = 0,
    shares: Mapping[str, int | tuple[int, int]] | None = None,
    allow_short: bool = False,
    kyc_status: str = "VERIFIED",
) -> int | None:
    """Open ``user_id``'s account funded with ``cash`` paise and ``shares`` ({symbol:
    quantity, or (quantity, cost per share in paise)}), all in one transaction; returns
    its id, or None (changing nothing) if the user has an account already. Its KYC status
    is VERIFIED unless said otherwise: tools and tests vouch for the users they open
    accounts for (a sign-up's account is PENDING until an operator decides)."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO accounts (user_id, cash, allow_short, kyc_status) "
            "VALUES (%s, 0, %s, %s) ON CONFLICT (user_id) DO NOTHING "
            "RETURNING account_id",
            (user_id, allow_short, kyc_status),
        ).fetchone()
        if row is None:
            return None
        account_id: int = row[0]
        if cash:
            fund(conn, account_id, FundingKind.DEPOSIT, amount=cash)
        for symbol, held in (shares or {}).items():
            quantity, price = held if isinstance(held, tuple) else (held, None)
            fund(
                conn,
                account_id,
                FundingKind.SHARES_IN,
                symbol=symbol,
                quantity=quantity,
                price=price,
            )
    return account_id
