"""The account statement: every movement of a user's cash between two dates, with a
running balance, as JSON or CSV (GET /api/v1/statement).

A movement is a DEPOSIT or WITHDRAWAL (``funding``), a BUY or SELL (``fills``: minus or
plus price x quantity) or a FEE (``fee_income``, at its fill's time). Shares moved in or
out (SHARES_IN/SHARES_OUT) move no cash and are not rows; neither are holds (blocked
cash is still the account's cash). The rows are in time order, ties broken by a stable
key (funding before trades at the same instant, then the funding id, or the trade id with
each fill followed by its fee), so two reads give the same order. The opening balance is
the sum of every movement before ``from``, each row's balance the running sum after it,
and the closing balance the opening plus the rows': when nothing is missing from the
ledger, a statement up to now closes at ``accounts.cash`` (the reconciler's conservation
check, ``brokercore.consumers.reconcile``). Days are the exchange's (its session's time
zone): ``from`` and ``to`` both count whole.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
from psycopg import AsyncConnection

from brokercore.broker.money import rupees
from brokercore.read.answers import Statement, StatementRow

__all__ = [
    "MAX_DAYS",
    "MAX_ROWS",
    "StatementQuery",
    "TooLarge",
    "statement",
    "to_csv",
]

MAX_DAYS = 366
"""Days one statement may span."""

MAX_ROWS = 20_000
"""Rows one statement may have (a longer one: ask for fewer days)."""


class StatementQuery(msgspec.Struct, frozen=True):
    """GET /statement: the first and last day (both included; default: the 30 days up to
    today) and the answer's format (or ``Accept: text/csv``)."""

    start: date | None = msgspec.field(default=None, name="from")
    end: date | None = msgspec.field(default=None, name="to")
    format: Literal["json", "csv"] | None = None


class TooLarge(ValueError):
    """More than MAX_ROWS rows."""


# Every cash movement of the account (a, from the caller), with its sort key.
_MOVES = """
SELECT f.at, 0 AS grp, f.funding_id AS n, '' AS t, 0 AS r, f.kind,
       CASE f.kind WHEN 'DEPOSIT' THEN f.amount ELSE -f.amount END AS amount,
       NULL::text AS symbol, NULL::bigint AS quantity, NULL::bigint AS price, f.reference
  FROM funding f WHERE f.account_id = a.account_id AND f.kind IN ('DEPOSIT', 'WITHDRAWAL')
UNION ALL
SELECT x.executed_at, 1, 0, x.trade_id || '/' || x.side, 0, x.side,
       CASE x.side WHEN 'SELL' THEN 1 ELSE -1 END * x.price * x.quantity,
       x.symbol, x.quantity, x.price, x.trade_id
  FROM fills x WHERE x.account_id = a.account_id
UNION ALL
SELECT x.executed_at, 1, 0, x.trade_id || '/' || x.side, 1, 'FEE', -fi.amount,
       x.symbol, NULL, NULL, x.trade_id
  FROM fills x JOIN fee_income fi ON fi.trade_id = x.trade_id AND fi.side = x.side
 WHERE x.account_id = a.account_id"""

_OPENING = f"""
SELECT coalesce(sum(m.amount), 0)::bigint
  FROM accounts a CROSS JOIN LATERAL ({_MOVES}) m
 WHERE a.user_id = %(user)s AND m.at < %(start)s"""

_ROWS = f"""
SELECT m.at, m.kind, m.symbol, m.quantity, m.price, m.amount, m.reference
  FROM accounts a CROSS JOIN LATERAL ({_MOVES}) m
 WHERE a.user_id = %(user)s AND m.at >= %(start)s AND m.at < %(end)s
 ORDER BY m.at, m.grp, m.n, m.t, m.r
 LIMIT %(limit)s"""


async def statement(
    conn: AsyncConnection, user: str, first: date, last: date, zone: ZoneInfo
) -> Statement | None:
    """The user's statement from day ``first`` to day ``last`` (both included, days of
    ``zone``); None if the user has no account. Raises ``TooLarge``. The caller's
    connection reads one snapshot (the query service's are REPEATABLE READ), so the
    opening balance and the rows agree."""
    found = await (
        await conn.execute("SELECT 1 FROM accounts WHERE user_id = %s", (user,))
    ).fetchone()
    if found is None:
        return None
    start = datetime.combine(first, time(0), tzinfo=zone)
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone)
    params = {"user": user, "start": start, "end": end, "limit": MAX_ROWS + 1}
    row = await (await conn.execute(_OPENING, params)).fetchone()
    opening = row[0] if row is not None else 0
    moves = await (await conn.execute(_ROWS, params)).fetchall()
    if len(moves) > MAX_ROWS:
        raise TooLarge(f"more than {MAX_ROWS} movements; ask for fewer days")
    balance = opening
    rows = []
    for at, kind, symbol, quantity, price, amount, reference in moves:
        balance += amount
        rows.append(
            StatementRow(
                at.astimezone(UTC).isoformat(),
                kind,
                symbol,
                quantity,
                rupees(price),
                rupees(amount),
                rupees(balance),
                reference,
            )
        )
    return Statement(
        first.isoformat(), last.isoformat(), zone.key, rupees(opening), rupees(balance), rows
    )


CSV_HEADER = (
    "time (UTC)",
    "type",
    "symbol",
    "quantity",
    "price (INR)",
    "amount (INR)",
    "balance (INR)",
    "reference",
)
"""The CSV's columns: money in rupees with two decimals, times ISO 8601 UTC."""


def to_csv(s: Statement) -> str:
    """The statement as CSV: a header row, an OPENING BALANCE row (at the start of
    ``from``), the movements, a CLOSING BALANCE row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    writer.writerow(("", "OPENING BALANCE", "", "", "", "", s.opening_balance, ""))
    for r in s.rows:
        writer.writerow(
            (
                r.time,
                r.type,
                r.symbol or "",
                "" if r.quantity is None else r.quantity,
                r.price or "",
                r.amount,
                r.balance,
                _cell(r.reference or ""),
            )
        )
    writer.writerow(("", "CLOSING BALANCE", "", "", "", "", s.closing_balance, ""))
    return out.getvalue()


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (CSV injection): one that
    starts with = + - @ gets a leading apostrophe."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
