"""The SQLite engine: one file in WAL mode (the default, in the data dir).

Reads use a small pool of aiosqlite connections and never block the writer (WAL); `lookup` reads
one row right on the event loop thread.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from mdsync.db.base import Database, Tx, run_job_alone
from mdsync.db.migrate import apply_migrations

PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA temp_store = MEMORY",
)


def connect(path: Path | str, *, autocheckpoint: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection with the house pragmas, in autocommit mode."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS:
        conn.execute(pragma)
    if not autocheckpoint:
        # litestream owns checkpoints while it replicates this database
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


class SqliteDatabase(Database):
    engine = "sqlite"

    def __init__(self, path: Path | str, *, readers: int = 4, autocheckpoint: bool = True):
        super().__init__(readers=readers)
        self.path = Path(path)
        self.autocheckpoint = autocheckpoint
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle(range(readers))
        self._quick: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await super().open()

    async def _open_readers(self) -> None:
        for _ in range(self._reader_count):
            conn = await aiosqlite.connect(str(self.path), isolation_level=None)
            conn.row_factory = sqlite3.Row
            for pragma in ("PRAGMA busy_timeout = 5000", "PRAGMA query_only = ON"):
                await conn.execute(pragma)
            self._readers.append(conn)
        # the connection of `lookup`: used only on the event loop thread; never waits for a lock
        self._quick = sqlite3.connect(str(self.path), isolation_level=None)
        self._quick.row_factory = sqlite3.Row
        self._quick.execute("PRAGMA busy_timeout = 0")
        self._quick.execute("PRAGMA query_only = ON")

    async def _close_readers(self) -> None:
        for conn in self._readers:
            await conn.close()
        self._readers.clear()
        if self._quick is not None:
            self._quick.close()
            self._quick = None

    # -- reads -----------------------------------------------------------------------------
    def _reader(self) -> aiosqlite.Connection:
        return self._readers[next(self._next_reader)]

    async def one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._reader().execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # one hop to the reader's thread (execute and fetch there), not one per step: on a busy
        # machine each hop waits for a thread to be scheduled (search: 10.6 → see bench/README)
        return list(await self._reader().execute_fetchall(sql, tuple(params)))

    async def lookup(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """One row by primary key or unique index, read right on the event loop thread.

        Such a read costs a few microseconds in SQLite, far less than the hop to a reader thread
        (~100 µs), and it always sees the latest commit (of this process or of an admin command
        in another). In WAL mode readers do not wait for writers; in the rare moment SQLite
        answers "busy" it goes through a reader connection instead, so the loop never waits on
        a lock.
        """
        if self._quick is None:
            raise RuntimeError("database is closed")
        try:
            # fetchall steps the statement to its end, which ends the read transaction at once
            rows = self._quick.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            return await self.one(sql, params)
        return rows[0] if rows else None

    # -- the writer thread -----------------------------------------------------------------
    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(self.path, autocheckpoint=self.autocheckpoint)
        try:
            apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _in_transaction(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction


def run_offline(path: Path | str, fn: Callable[..., Any], *args: Any, autocheckpoint: bool = True) -> Any:
    """Run one write job in its own transaction on a fresh connection (CLI commands).

    Applies pending migrations first, so admin commands work on a data dir no server has
    opened yet. Safe beside a running server: SQLite serializes the two writers. With a replica
    configured pass `autocheckpoint=False`: litestream owns the checkpoints.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, autocheckpoint=autocheckpoint)
    try:
        apply_migrations(conn)
        return run_job_alone(Tx(conn), "BEGIN IMMEDIATE", fn, *args)
    finally:
        conn.close()
