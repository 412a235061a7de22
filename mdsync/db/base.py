"""What both engines share: write jobs, the writer thread's group commit, and its counters.

All writes go through one writer thread fed by a queue. Jobs that arrive together share one
transaction (group commit), each inside its own savepoint so a failing job rolls back alone.
A write job is a plain function `fn(tx, *args)` that runs SQL on a `Tx`; `await db.write(fn, ...)`
returns its result once the transaction holding it has committed. A job that loses to another
writer (PostgreSQL: a deadlock, a serialization failure) is undone and runs again in the next
transaction: jobs change nothing outside their transaction but through `Tx.after_commit`.

SQL is written once with `?` placeholders and runs on both engines; what differs between SQLite
and PostgreSQL lives beside the store that needs it, chosen by `db.engine` / `tx.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

log = logging.getLogger("mdsync.db")

MAX_BATCH = 2000
_STOP = object()


def new_id() -> str:
    """A new row id (a random UUID, as text): every table's ids are made here."""
    return str(uuid.uuid4())


class Tx:
    """The writer's view of the current transaction, handed to every write job.

    `conn` is the engine's own connection (sqlite3 or psycopg); jobs use the methods below,
    which take `?` placeholders on both engines.
    """

    __slots__ = ("conn", "_after", "_savepoints")
    engine: ClassVar[str] = "sqlite"

    def __init__(self, conn: Any):
        self.conn = conn
        self._after: list[Callable[[], Any]] = []
        self._savepoints = 0

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> Any:
        return self.conn.executemany(sql, rows)

    def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self.execute(sql, params).fetchall()

    def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """A nested savepoint: what runs inside is undone alone when it raises, and the job may
        go on after catching the error (on PostgreSQL a failed statement otherwise spoils the
        whole transaction). Use it around a statement expected to fail, e.g. a unique clash."""
        self._savepoints += 1
        name = f"attempt{self._savepoints}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the event loop once this job's transaction has committed."""
        self._after.append(callback)


def run_job_alone(tx: Tx, begin: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one write job in a transaction of its own on `tx`'s connection (CLI commands: no
    writer thread); its after-commit callbacks run once it has committed."""
    for attempt in range(RETRIES + 1):
        tx._after = []
        tx.conn.execute(begin)
        try:
            result = fn(tx, *args)
            tx.conn.execute("COMMIT")
            break
        except BaseException as exc:
            tx.conn.execute("ROLLBACK")
            if attempt == RETRIES or not _conflict(exc):
                raise
        time.sleep(random.uniform(0.5, 1.5) * RETRY_PAUSE * 2 ** attempt)   # lost to a server's writer
    for callback in tx._after:
        callback()
    return result


def locks_first(take: Callable[[Tx, list[Any]], None], keys: Callable[..., Iterable[Any]]) -> Callable:
    """Mark a write job whose rows of one kind the writer locks before its batch runs (decorator).

    With several writers (nodes) on one PostgreSQL, a batch holds every row its jobs locked until
    its COMMIT; two batches that lock the same rows in opposite orders deadlock, and PostgreSQL
    breaks that only after `deadlock_timeout`. So at the start of each transaction the writer
    gathers `keys(*args)` of every marked job in the batch and calls `take(tx, keys)` once, keys
    sorted: the rows of one kind are then always locked in one global order (kinds in the order of
    `take`'s name), and before anything an unmarked job locks (the change feed's head row). The
    jobs' own statements find the rows locked already. A `take` that fails for another reason
    than a conflict (e.g. a document purged meanwhile) is undone and left to the jobs, each of
    which meets its error alone, as it would have without it."""
    def mark(fn: Callable) -> Callable:
        fn.locks_first = (take, keys)
        return fn
    return mark


class _Job:
    __slots__ = ("fn", "args", "future", "enqueued")

    def __init__(self, fn, args, future):
        self.fn, self.args, self.future = fn, args, future
        self.enqueued = time.perf_counter()


class Database:
    """One database: a writer thread with group commit, and async reads (each engine's own).

    Engines implement `_open_writer` (connect + migrate, in the writer thread), `_begin`,
    `_in_transaction`, `_open_readers`/`_close_readers`, and the reads `one`, `all`, `lookup`.
    """

    engine: ClassVar[str] = ""
    tx_class: ClassVar[type[Tx]] = Tx

    def __init__(self, *, readers: int = 4):
        self._reader_count = readers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = WriterStats()

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future = self._loop.create_future()
        self._thread = threading.Thread(target=self._run_writer, args=(ready,),
                                        name="mdsync-db-writer", daemon=True)
        self._thread.start()
        await ready  # migrations ran (or raised) in the writer thread
        await self._open_readers()

    async def close(self) -> None:
        """Finish every queued write, then close all connections."""
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await self._close_readers()

    async def _open_readers(self) -> None:
        raise NotImplementedError

    async def _close_readers(self) -> None:
        raise NotImplementedError

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
    async def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def lookup(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """One row by primary key or unique index, as cheaply as the engine can (hot paths such
        as authenticating every request). Never use it for scans."""
        raise NotImplementedError

    async def value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else row[0]

    # -- other writers' commits --------------------------------------------------------------
    def listener(self) -> Any:
        """The `mdsync.db.notifications.Listener` of this database (started on first use), or
        None where no other writer can be heard (SQLite: its features poll)."""
        return None

    # -- the writer thread -----------------------------------------------------------------
    def _open_writer(self) -> Any:
        """Connect the writer and apply pending migrations (runs in the writer thread)."""
        raise NotImplementedError

    def _healthy(self, conn: Any) -> Any:
        """The writer's connection, reconnected when the engine can lose it (a database server)."""
        return conn

    def _begin(self, conn: Any) -> None:
        raise NotImplementedError

    def _in_transaction(self, conn: Any) -> bool:
        raise NotImplementedError

    def _run_writer(self, ready: asyncio.Future) -> None:
        loop = self._loop
        try:
            conn = self._open_writer()
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
                conn = self._healthy(conn)
                self._commit_batch(conn, batch)
                if stop:
                    break
        finally:
            conn.close()

    def _commit_batch(self, conn: Any, batch: list[_Job]) -> None:
        """Commit `batch` in one transaction. A job that loses to another writer (a deadlock or
        serialization failure, `_conflict`) is undone to its savepoint: the jobs before it commit,
        and it and the jobs after it run again in a new transaction after a short jittered pause
        (the other writer finishes meanwhile), in their order, at most `RETRIES` times; so a second
        writer never fails a whole batch, and no job runs twice unless a COMMIT itself lost."""
        jobs, retries = batch, 0
        while jobs:
            outcomes, jobs = self._try_batch(conn, jobs, last=retries >= RETRIES)
            self._loop.call_soon_threadsafe(_settle_batch, outcomes)
            if jobs:
                retries += 1
                self.stats.retries += 1
                log.info("write batch: %d job(s) lost to another writer, again (%d/%d)",
                         len(jobs), retries, RETRIES)
                time.sleep(random.uniform(0.5, 1.5) * RETRY_PAUSE * 2 ** (retries - 1))

    def _try_batch(self, conn: Any, batch: list[_Job], last: bool) -> tuple[list, list[_Job]]:
        """One transaction: the settled outcomes, and the jobs to run again (none when `last`)."""
        started = time.perf_counter()
        outcomes: list[tuple[_Job, Any, BaseException | None, list]] = []
        again: list[_Job] = []
        try:
            self._begin(conn)
            self._lock_first(conn, batch)
            for i, job in enumerate(batch):
                tx = self.tx_class(conn)
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(tx, *job.args)
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None, tx._after))
                except BaseException as exc:  # whatever a job raises, its caller hears it; the writer lives on
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if not last and _conflict(exc):
                        again = batch[i:]
                        break
                    outcomes.append((job, None, exc, []))
            conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: every job in the batch failed
            try:
                if self._in_transaction(conn):
                    conn.execute("ROLLBACK")
            except Exception as failed:  # a dead connection: the engine reconnects on the next batch
                log.error("rollback failed: %s", failed)
            if not last and _conflict(exc):
                outcomes, again = [], batch   # nothing of it happened: all of it again
            else:
                log.error("write batch of %d failed: %s", len(batch), exc)
                outcomes, again = [(job, None, exc, []) for job in batch], []
        done = time.perf_counter()
        if outcomes:
            self.stats.record(len(outcomes), done - started, max(done - job.enqueued for job, *_ in outcomes))
        return outcomes, again


    def _lock_first(self, conn: Any, batch: list[_Job]) -> None:
        """The rows the batch's `locks_first` jobs name, locked in one global order (see there)."""
        kinds: dict[Callable, set] = {}
        for job in batch:
            marked = getattr(job.fn, "locks_first", None)
            if marked is not None:
                take, keys = marked
                kinds.setdefault(take, set()).update(keys(*job.args))
        for take in sorted(kinds, key=lambda take: (take.__module__, take.__qualname__)):
            tx = self.tx_class(conn)
            try:
                with tx.attempt():
                    take(tx, sorted(kinds[take]))
            except Exception as exc:
                if _conflict(exc):
                    raise   # the whole batch runs again (_try_batch)
                log.warning("locking ahead of a write batch failed (%s); its jobs lock their rows", exc)


# SQLSTATEs of a transaction that lost to another writer and may simply run again: deadlock
# detected, serialization failure (PostgreSQL; SQLite has one writer)
CONFLICTS = frozenset({"40P01", "40001"})
RETRIES = 5          # new transactions a batch gets after conflicts, before the job fails with the error
RETRY_PAUSE = 0.02   # seconds before the first one (doubled each time, jittered by +-50 %)


# SQLSTATE of a statement the server cancelled (PostgreSQL: `database.statement_timeout` ran out,
# or an administrator's pg_cancel_backend): nothing is wrong with the request, the server was slow
CANCELLED = frozenset({"57014"})


def _sqlstate_in(exc: BaseException | None, codes: frozenset[str]) -> bool:
    """Whether `exc` (or what it was raised from) carries one of the SQLSTATEs `codes`."""
    seen = 0
    while exc is not None and seen < 5:
        if getattr(exc, "sqlstate", None) in codes:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _conflict(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a conflict with another writer."""
    return _sqlstate_in(exc, CONFLICTS)


def cancelled(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a statement the database cancelled
    (PostgreSQL's `statement_timeout`): the error middleware answers it 503, not 500."""
    return _sqlstate_in(exc, CANCELLED)


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
        self.retries = 0          # transactions run again after losing to another writer
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
