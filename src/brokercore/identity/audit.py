"""The audit log: every operator action (who, what, on what, before and after, when) as a
row of the append-only ``audit_log`` (migration 0010, whose triggers refuse UPDATE, DELETE
and TRUNCATE), written in the transaction of the change it records, so that no change
commits without its row and no row claims a change that was rolled back."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb

__all__ = ["CLI_ACTOR", "record", "record_blocking"]

CLI_ACTOR = "cli"
"""The actor of a change made with the ``brokercore`` command line (no user behind it)."""


async def record(
    conn: AsyncConnection[Any],
    actor: str,
    action: str,
    target: str,
    before: object,
    after: object,
) -> int:
    """Append one row (``before`` and ``after`` as JSON, None for SQL NULL) in ``conn``'s
    current transaction; its audit_id."""
    row = await (await conn.execute(_INSERT, _row(actor, action, target, before, after))).fetchone()
    assert row is not None  # an INSERT ... RETURNING returns its row
    audit_id: int = row[0]
    return audit_id


def record_blocking(
    conn: Connection[Any], actor: str, action: str, target: str, before: object, after: object
) -> int:
    """``record`` on a blocking connection (the funds service's changes go through
    brokercore.broker.funding, which is blocking, in the same transaction)."""
    row = conn.execute(_INSERT, _row(actor, action, target, before, after)).fetchone()
    assert row is not None  # an INSERT ... RETURNING returns its row
    audit_id: int = row[0]
    return audit_id


_INSERT = (
    "INSERT INTO audit_log (actor, action, target, before, after) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING audit_id"
)


def _row(actor: str, action: str, target: str, before: object, after: object) -> tuple[Any, ...]:
    return (
        actor,
        action,
        target,
        None if before is None else Jsonb(before),
        None if after is None else Jsonb(after),
    )
