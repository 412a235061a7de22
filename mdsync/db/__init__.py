"""The database: one SQLite file in WAL mode.

All writes go through one writer thread fed by a queue. Jobs that arrive together share one
transaction (group commit), each inside its own savepoint so a failing job rolls back alone.
Reads use a small pool of aiosqlite connections and never block the writer (WAL).

A write job is a plain function `fn(tx, *args)` that runs SQL on a `Tx`; `await db.write(fn, ...)`
returns its result once the transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from mdsync.db.migrate import apply_migrations

log = logging.getLogger("mdsync.db")

PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA temp_store = MEMORY",
)
MAX_BATCH = 2000
_STOP = object()


def new_id() -> str:
    """A new row id (a random UUID, as text): every table's ids are made here."""
    return str(uuid.uuid4())


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


class Tx:
    """The writer's view of the current transaction, handed to every write job."""

    __slots__ = ("conn", "_after")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._after: list[Callable[[], Any]] = []

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, rows)

    def one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, tuple(params)).fetchone()

    def all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self.conn.execute(sql, tuple(params)).fetchone()
        return None if row is None else row[0]

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the event loop once this job's transaction has committed."""
        self._after.append(callback)


class _Job:
    __slots__ = ("fn", "args", "future", "enqueued")

    def __init__(self, fn, args, future):
        self.fn, self.args, self.future = fn, args, future
        self.enqueued = time.perf_counter()


class Database:
    def __init__(self, path: Path | str, *, readers: int = 4, autocheckpoint: bool = True):
        self.path = Path(path)
        self.autocheckpoint = autocheckpoint
        self._reader_count = readers
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle(range(readers))
        self._quick: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = WriterStats()

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._run_writer, args=(ready,),
                                        name="mdsync-db-writer", daemon=True)
        self._thread.start()
        await ready  # migrations ran (or raised) in the writer thread
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

    async def close(self) -> None:
        """Finish every queued write, then close all connections."""
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for conn in self._readers:
            await conn.close()
        self._readers.clear()
        if self._quick is not None:
            self._quick.close()
            self._quick = None

    # -- writes ----------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue a write job; the future resolves after its transaction commits."""
        if self._thread is None:
            raise RuntimeError("database is closed")
        future = self._loop.create_future()
        self._queue.put(_Job(fn, args, future))
        self.stats.queued += 1
        return future

    async def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        # shield: a cancelled request must not cancel a write that may already be committed
        return await asyncio.shield(self.submit(fn, *args))

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

    async def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else row[0]

    async def lookup(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """One row by primary key or unique index, read right on the event loop thread.

        For hot paths such as authenticating every request: such a read costs a few microseconds
        in SQLite, far less than the hop to a reader thread (~100 µs), and it always sees the
        latest commit (of this process or of an admin command in another). In WAL mode readers do
        not wait for writers; in the rare moment SQLite answers "busy" it goes through a reader
        connection instead, so the loop never waits on a lock. Never use it for scans.
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
    def _run_writer(self, ready: asyncio.Future) -> None:
        loop = self._loop
        try:
            conn = connect(self.path, autocheckpoint=self.autocheckpoint)
            apply_migrations(conn)
        except BaseException as exc:  # report to open(), which raises it
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    break
                batch = [job]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop = True
                        break
                    batch.append(more)
                self._commit_batch(conn, batch)
                if stop:
                    break
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[_Job, Any, BaseException | None, list]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                tx = Tx(conn)
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(tx, *job.args)
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None, tx._after))
                except BaseException as exc:  # whatever a job raises, its caller hears it; the writer lives on
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, exc, []))
            conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: every job in the batch failed
            log.error("write batch of %d failed: %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(job, None, exc, []) for job in batch]
        done = time.perf_counter()
        self.stats.record(len(batch), done - started, max(done - j.enqueued for j in batch))
        self._loop.call_soon_threadsafe(_settle_batch, outcomes)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _settle_batch(outcomes) -> None:
    for job, result, exc, after in outcomes:
        if exc is None:
            for callback in after:
                try:
                    callback()
                except Exception:
                    log.exception("after-commit callback failed")
        _settle(job.future, result, exc)


class WriterStats:
    """Counters the metrics endpoint reads: batches, jobs, commit and queueing latency."""

    def __init__(self):
        self.queued = 0
        self.jobs = 0
        self.batches = 0
        self.last_commit_seconds = 0.0
        self.max_wait_seconds = 0.0
        self.commit_seconds_total = 0.0

    @property
    def depth(self) -> int:
        return self.queued - self.jobs

    def record(self, jobs: int, commit_seconds: float, wait_seconds: float) -> None:
        self.jobs += jobs
        self.batches += 1
        self.last_commit_seconds = commit_seconds
        self.commit_seconds_total += commit_seconds
        self.max_wait_seconds = max(self.max_wait_seconds, wait_seconds)


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
        tx = Tx(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(tx, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for callback in tx._after:
            callback()
        return result
    finally:
        conn.close()
