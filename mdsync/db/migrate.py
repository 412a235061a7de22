"""Numbered SQL migrations (`migrations/<engine>/NNNN_name.sql`), each applied in its own transaction.

Each engine (`sqlite`, `postgresql`) has its own files, numbered and named alike: migration N
makes the same schema change on both.

Applied versions are recorded in `schema_migrations`. A database whose newest recorded version
is unknown to this code was written by a newer mdsync: we refuse to touch it.

A migration that takes a while (building the search index of a large database, say) logs a
progress line every PROGRESS_EVERY seconds, so an operator watching the log of a start that
seems stuck sees why.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mdsync import clock

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
PROGRESS_EVERY = 5.0  # seconds between progress lines of one long migration
log = logging.getLogger("mdsync.db")


class SchemaTooNew(Exception):
    """The database was migrated by a newer mdsync than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available(engine: str = "sqlite") -> list[Migration]:
    """The migrations this code knows for `engine` ("sqlite" or "postgresql"), oldest first."""
    found = []
    for entry in resources.files("mdsync.db").joinpath("migrations", engine).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


_LEDGER = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
           " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
# PostgreSQL: the advisory lock every node takes while it migrates (two nodes starting at once)
PG_MIGRATION_LOCK = 0x6D6473796E63  # "mdsync"


def applied(conn: Any, engine: str = "sqlite") -> list[int]:
    """The versions recorded in `conn`'s database (a sqlite3 or psycopg connection)."""
    conn.execute(_LEDGER + (" STRICT" if engine == "sqlite" else ""))
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def pending(conn: Any, engine: str = "sqlite") -> list[Migration]:
    done = applied(conn, engine)
    known = available(engine)
    newest_known = known[-1].version if known else 0
    if done and done[-1] > newest_known:
        raise SchemaTooNew(
            f"the database is at schema version {done[-1]}, newer than this mdsync knows "
            f"({newest_known}); upgrade mdsync before starting it on this data"
        )
    return [m for m in known if m.version not in done]


def apply_pg_migrations(conn: Any) -> list[Migration]:
    """Apply every pending PostgreSQL migration (autocommit psycopg connection), each file in one
    transaction, under an advisory lock so that nodes starting together migrate once."""
    conn.execute("SELECT pg_advisory_lock(%s)", (PG_MIGRATION_LOCK,))
    try:
        todo = pending(conn, "postgresql")
        for migration in todo:
            name = f"{migration.version:04d}_{migration.name}"
            started = time.monotonic()
            try:
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                                 (migration.version, migration.name, clock.iso()))
            except Exception as exc:
                raise RuntimeError(f"migration {name} failed: {exc}") from exc
            took = time.monotonic() - started
            if took >= PROGRESS_EVERY:
                log.info("migration %s applied in %.0f s", name, took)
        return todo
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (PG_MIGRATION_LOCK,))


def apply_migrations(conn: sqlite3.Connection) -> list[Migration]:
    """Apply every pending SQLite migration; returns the ones applied."""
    todo = pending(conn)
    for migration in todo:
        record = (
            "INSERT INTO schema_migrations (version, name, applied_at) "
            f"VALUES ({migration.version}, '{migration.name}', '{clock.iso()}');"
        )
        name = f"{migration.version:04d}_{migration.name}"
        started = time.monotonic()
        conn.set_progress_handler(_progress_logger(name, started), 1000)
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{migration.sql}\n;{record}\nCOMMIT;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise RuntimeError(f"migration {name} failed: {exc}") from exc
        finally:
            conn.set_progress_handler(None, 0)
        took = time.monotonic() - started
        if took >= PROGRESS_EVERY:
            log.info("migration %s applied in %.0f s", name, took)
    return todo


def _progress_logger(name: str, started: float):
    """A SQLite progress handler (called every 1000 VM steps: some 50 rows of an index build) that
    logs every PROGRESS_EVERY seconds."""
    next_line = started + PROGRESS_EVERY

    def progress() -> int:
        nonlocal next_line
        now = time.monotonic()
        if now >= next_line:
            log.info("migration %s still running after %.0f s (the database is being upgraded)", name, now - started)
            next_line = now + PROGRESS_EVERY
        return 0  # go on

    return progress
