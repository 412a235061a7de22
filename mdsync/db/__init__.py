"""The database: SQLite in the data dir (the default), or PostgreSQL when `database.url` is set.

Both engines have one API (`mdsync/db/base.py`): write jobs `fn(tx, *args)` grouped by one writer
thread into one transaction each with its own savepoint (group commit), and async reads
`one`/`all`/`value`/`lookup`. SQL is written once with `?` placeholders; SQL that differs between
the engines lives beside the store that needs it, chosen by `db.engine` or `tx.engine`
("sqlite" or "postgresql"). docs/architecture.md "Databases" says more.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from mdsync.db.migrate import Migration, apply_migrations, apply_pg_migrations
from mdsync.db.base import MAX_BATCH, Database, Tx, WriterStats, cancelled, new_id
from mdsync.db.sqlite import SqliteDatabase, connect

if TYPE_CHECKING:
    from mdsync.config import Settings

__all__ = ["MAX_BATCH", "Database", "IntegrityError", "SqliteDatabase", "Tx", "WriterStats", "cancelled", "connect",
           "database_for", "describe", "migrate", "new_id", "read_only", "run_offline"]

# a unique, foreign-key or check constraint refused a statement, on either engine
IntegrityError = (sqlite3.IntegrityError, psycopg.errors.IntegrityError)


def database_for(settings: Settings, *, readers: int | None = None) -> Database:
    """The database `settings` name (not yet open: `await db.open()` migrates and connects)."""
    if settings.database.url is None:
        return SqliteDatabase(settings.db_path, readers=readers or 4,
                              autocheckpoint=settings.replica.url is None)
    from mdsync.db.postgres import PostgresDatabase

    return PostgresDatabase(settings.database.url, readers=readers or settings.database.pool_size,
                            statement_timeout=settings.database.statement_timeout)


def describe(settings: Settings) -> str:
    """Where the data lives, for messages and logs (a PostgreSQL URL without its password)."""
    if settings.database.url is None:
        return str(settings.db_path)
    from mdsync.db.postgres import describe as describe_url

    return describe_url(settings.database.url)


def run_offline(settings: Settings, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one write job in its own transaction on a fresh connection (CLI commands), after
    applying pending migrations. Safe beside a running server: the engine serializes writers."""
    if settings.database.url is None:
        from mdsync.db.sqlite import run_offline as run_sqlite

        return run_sqlite(settings.db_path, fn, *args, autocheckpoint=settings.replica.url is None)
    from mdsync.db.postgres import run_offline as run_pg

    return run_pg(settings.database.url, fn, *args, statement_timeout=settings.database.statement_timeout)


@contextlib.contextmanager
def read_only(settings: Settings) -> Iterator[Tx]:
    """A read-only view of the database on a fresh connection (CLI commands)."""
    if settings.database.url is None:
        conn = connect(settings.db_path, autocheckpoint=settings.replica.url is None)
        try:
            conn.execute("PRAGMA query_only = ON")
            yield Tx(conn)
        finally:
            conn.close()
        return
    from mdsync.db.postgres import PgTx
    from mdsync.db.postgres import connect as connect_pg

    conn = connect_pg(settings.database.url, statement_timeout=settings.database.statement_timeout)
    try:
        conn.execute("SET default_transaction_read_only = on")
        yield PgTx(conn)
    finally:
        conn.close()


def migrate(settings: Settings) -> list[Migration]:
    """Apply pending migrations now (`mdsync migrate`); the migrations applied."""
    if settings.database.url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        conn = connect(settings.db_path, autocheckpoint=settings.replica.url is None)
        try:
            return apply_migrations(conn)
        finally:
            conn.close()
    from mdsync.db.postgres import connect as connect_pg

    conn = connect_pg(settings.database.url, statement_timeout=settings.database.statement_timeout)
    try:
        return apply_pg_migrations(conn)
    finally:
        conn.close()
