"""Database migrations: plain SQL files applied in name order, each exactly once.

The files are this package's own ``NNNN_name.sql`` (shipped inside the package, so an
installed, non-editable brokercore finds them too). :func:`apply_migrations` applies
those not yet applied, each in its own transaction together with its row in
``schema_migrations(version, checksum, applied_at)``, all under a Postgres advisory
lock: processes racing to migrate the same database apply every file once, the later
ones waiting and then finding nothing left to do. A file whose checksum differs from
the one recorded when it was applied is refused (:class:`MigrationError`) before
anything is applied: an applied migration is never edited, a new file is added.

A migration file runs inside a transaction, so it must not contain ``BEGIN``/``COMMIT``
or statements that cannot run in one (``CREATE INDEX CONCURRENTLY``, ``VACUUM``).

From the command line::

    python -m brokercore.db.migrations [--url URL]

applies what is missing to ``URL`` (default: ``ServiceSettings.database_url``, from
``$BROKERCORE_DATABASE_URL`` or else the development server of
``scripts/postgres/postgres.sh``) and prints what it applied.

Needs psycopg 3 (the ``services`` extra); no web framework is imported here.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors, sql

from brokercore.config import DEFAULT_DATABASE_URL, ServiceSettings

__all__ = [
    "MIGRATIONS_DIR",
    "Migration",
    "MigrationError",
    "applied_migrations",
    "apply_migrations",
    "drop_database",
    "load_migrations",
    "main",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent
"""Where brokercore's own migration files are: this package's folder."""

ADVISORY_LOCK_KEY = 0x6272_6F6B_6572_6D67  # b"brokermg": the migrator's lock, per database

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied: a changed file, a bad name, or failing SQL."""


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` is its name without ``.sql`` (e.g. ``0001_core``)."""

    version: str
    path: Path
    sql: str
    checksum: str  # sha256 of the file's bytes, hex


def drop_database(server: str, name: str, attempts: int = 50) -> None:
    """DROP DATABASE ... WITH (FORCE) on the server of ``server`` (a URL). An autovacuum
    worker in it belongs to the superuser, whom an application role may not terminate:
    it is done within moments, so try again."""
    for attempt in range(attempts):
        try:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            return
        except errors.InsufficientPrivilege:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The ``*.sql`` files of ``directory`` (default: brokercore's own), in name order."""
    directory = MIGRATIONS_DIR if directory is None else Path(directory)
    if not directory.is_dir():
        raise MigrationError(f"no migrations folder at {directory}")
    migrations = []
    for path in sorted(directory.glob("*.sql"), key=lambda p: p.name):
        data = path.read_bytes()
        try:
            sql = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{path} is not UTF-8: {exc}") from None
        migrations.append(
            Migration(
                version=path.stem, path=path, sql=sql, checksum=hashlib.sha256(data).hexdigest()
            )
        )
    return migrations


def applied_migrations(conninfo: str) -> dict[str, str]:
    """``{version: checksum}`` of what the database has applied (empty if nothing)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if exists != (True,):
            return {}
        return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


def apply_migrations(conninfo: str, directory: Path | None = None) -> list[str]:
    """Apply the migrations of ``directory`` that ``conninfo``'s database lacks.

    Returns the versions applied, in order (empty when the database is up to date).
    Raises :class:`MigrationError` if an applied file's checksum changed (nothing is
    applied then) or a file's SQL fails (its transaction is rolled back; the files
    before it stay applied).
    """
    migrations = load_migrations(directory)
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Session-level lock: held across the per-file transactions, released at the
        # end (or when the connection drops, should this process die).
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            done: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            _check_unchanged(migrations, done)
            for migration in migrations:
                if migration.version in done:
                    continue
                _apply_one(conn, migration)
                applied.append(migration.version)
        finally:
            idle = psycopg.pq.TransactionStatus.IDLE
            if not conn.closed and conn.info.transaction_status == idle:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied


def _check_unchanged(migrations: Sequence[Migration], done: Mapping[str, str]) -> None:
    changed = [m for m in migrations if m.version in done and done[m.version] != m.checksum]
    if changed:
        lines = "\n".join(
            f"  {m.version}: applied with sha256 {done[m.version]}, {m.path} now has {m.checksum}"
            for m in changed
        )
        raise MigrationError(
            "applied migrations were changed since (never edit an applied migration; "
            "add a new, higher-numbered file instead):\n" + lines
        )


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            # No parameters: psycopg sends the file as one simple query, so it may hold
            # many statements (and '%' needs no escaping).
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                (migration.version, migration.checksum),
            )
    except psycopg.Error as exc:
        diag = exc.diag
        where = f" (at character {diag.statement_position})" if diag.statement_position else ""
        raise MigrationError(
            f"migration {migration.version} ({migration.path}) failed and was rolled back: "
            f"{str(exc).strip()}{where}"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m brokercore.db.migrations",
        description="Apply brokercore's database migrations that the database lacks.",
    )
    parser.add_argument(
        "--url",
        default=None,
        help=f"Postgres URL (default: $BROKERCORE_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder of *.sql migrations (default: brokercore's own)",
    )
    args = parser.parse_args(argv)
    url = args.url or ServiceSettings.from_env().database_url
    try:
        applied = apply_migrations(url, args.dir)
    except MigrationError as exc:
        print(f"migrations: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(f"migrations: cannot connect to the database: {str(exc).strip()}", file=sys.stderr)
        return 1
    if applied:
        for version in applied:
            print(f"applied {version}")
        print(f"{len(applied)} migration(s) applied")
    else:
        total = len(load_migrations(args.dir))
        print(f"nothing to apply: all {total} migration(s) already applied")
    return 0
