"""`mdsync migrate-db --to postgresql://…`: copy a SQLite data dir's database into an empty
PostgreSQL database, so the server can then run on it (`database.url`) with every client's feed
cursor, etag and token still valid: rows are copied as they are, ids and sequence numbers included.

Steps: bring the SQLite file to the newest schema; refuse a target that already holds tables;
create the schema there with the PostgreSQL migrations; copy every table both schemas have
(parents before children, by the target's foreign keys; a table that refers to itself in row
order), inside one PostgreSQL transaction, through COPY; set each identity sequence past the
largest id, and the change feed's head where SQLite's was; compare every table's row count;
commit. Nothing is written to the target unless all of it is — a failed run leaves it empty.
The SQLite file is only read (after its migrations).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mdsync.db.migrate import apply_migrations, apply_pg_migrations
from mdsync.db.postgres import connect as connect_pg
from mdsync.db.postgres import describe
from mdsync.db.sqlite import connect as connect_sqlite

# SQLite's own bookkeeping and the FTS5 index (PostgreSQL has its own search index, filled by
# its triggers as documents are copied)
SKIPPED_PREFIXES = ("sqlite_", "docs_fts")
SKIPPED = {"schema_migrations"}
BATCH = 2000


class MoveError(Exception):
    """The copy cannot be made; the message says why and nothing was written."""


@dataclass
class Report:
    target: str
    schema_version: int
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows copied (and verified)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


Progress = Callable[[str, int, int], None]  # (table, rows done in it, rows in it)


def move(db_path: Any, url: str, progress: Progress | None = None) -> Report:
    """Copy the SQLite database at `db_path` into the empty PostgreSQL database at `url`."""
    started = time.monotonic()
    source = connect_sqlite(db_path)
    try:
        apply_migrations(source)  # the newest schema on both sides
        target = connect_pg(url, statement_timeout=24 * 3600)
        try:
            return _copy(source, target, describe(url), progress, started)
        finally:
            target.close()
    finally:
        source.close()


def _copy(source: sqlite3.Connection, target: Any, where: str, progress: Progress | None, started: float) -> Report:
    existing = [r[0] for r in target.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE'")]
    if existing:
        raise MoveError(f"{where} is not empty (it has {len(existing)} tables, e.g. {sorted(existing)[0]}): "
                        "migrate-db copies into an empty database only")
    apply_pg_migrations(target)
    version = source.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    pg_version = target.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    if version != pg_version:
        raise MoveError(f"the SQLite database is at schema {version} but PostgreSQL's migrations reach {pg_version}")
    report = Report(where, version)
    source.execute("BEGIN")  # one snapshot of the source for the whole copy
    try:
        with target.transaction():
            for table in _tables_in_order(source, target):
                report.tables[table] = _copy_table(source, target, table, progress)
            _advance_sequences(target)
            _set_feed_head(source, target)
            for table, copied in report.tables.items():
                there = target.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                if there != copied:
                    raise MoveError(f"table {table}: {copied} rows copied but {there} found after the copy")
    finally:
        source.execute("ROLLBACK")
    report.seconds = time.monotonic() - started
    return report


def _tables_in_order(source: sqlite3.Connection, target: Any) -> list[str]:
    """The tables both databases have, each after the tables its foreign keys refer to."""
    mine = {r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith(SKIPPED_PREFIXES) and r[0] not in SKIPPED}
    theirs = {r[0] for r in target.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE'")}
    tables = sorted(mine & theirs)
    refers: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in target.execute(
            "SELECT DISTINCT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
            " WHERE c.contype = 'f'"):
        child, parent = child.strip('"'), parent.strip('"')
        if child in refers and parent in refers and child != parent:
            refers[child].add(parent)
    ordered: list[str] = []
    placed: set[str] = set()
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in placed and refers[t] <= placed]
        if not ready:  # a cycle between tables: none in mdsync's schema; copy the rest as listed
            ready = [t for t in tables if t not in placed]
        for t in ready:
            ordered.append(t)
            placed.add(t)
    return ordered


def _self_reference(target: Any, table: str) -> tuple[str, str] | None:
    """(column, referenced column) of a foreign key from `table` to itself, if it has one."""
    row = target.execute(
        "SELECT a.attname, b.attname FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = c.confkey[1]"
        " WHERE c.contype = 'f' AND c.conrelid = %s::regclass AND c.confrelid = c.conrelid", (table,)).fetchone()
    return None if row is None else (row[0], row[1])


def _copy_table(source: sqlite3.Connection, target: Any, table: str, progress: Progress | None) -> int:
    pg_columns = {r[0] for r in target.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s AND is_generated = 'NEVER'", (table,))}
    columns = [r[1] for r in source.execute(f'PRAGMA table_info("{table}")') if r[1] in pg_columns]
    total = source.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    listed = ", ".join(f'"{c}"' for c in columns)
    rows = source.execute(f'SELECT {listed} FROM "{table}"')
    self_ref = _self_reference(target, table)
    if self_ref is not None:
        rows = _parents_first(list(rows), columns.index(self_ref[0]), columns.index(self_ref[1]))
    done = 0
    with target.cursor().copy(f'COPY "{table}" ({listed}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(tuple(row))
            done += 1
            if progress is not None and done % BATCH == 0:
                progress(table, done, total)
    if progress is not None:
        progress(table, done, total)
    return done


def _parents_first(rows: list, ref: int, key: int) -> list:
    """Rows ordered so that a row comes after the row its self-reference names."""
    by_key = {row[key]: row for row in rows}
    placed: set = set()
    ordered: list = []
    for row in rows:
        chain = []
        while row is not None and row[key] not in placed:
            chain.append(row)
            placed.add(row[key])
            row = by_key.get(row[ref])
        ordered.extend(reversed(chain))
    return ordered


def _set_feed_head(source: sqlite3.Connection, target: Any) -> None:
    """PostgreSQL's feed head (`changes_head`, sync/changes.py) at the newest seq SQLite ever gave:
    `sqlite_sequence`, not max(seq) (the newest rows may have gone with a purged workspace), so
    no cursor already issued lies ahead of the feed and new changes are numbered after it."""
    given = source.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    newest = source.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
    target.execute("UPDATE changes_head SET seq = %s", (max(given[0] if given else 0, newest),))


def _advance_sequences(target: Any) -> None:
    """Each identity column's sequence past the largest value copied (new rows get new numbers)."""
    for table, column in target.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall():
        target.execute(
            f'SELECT setval(pg_get_serial_sequence(%s, %s), coalesce((SELECT max("{column}") FROM "{table}"), 0) + 1,'
            " false)", (f'"{table}"', column))
