"""The database: one writer with group commit (a failing job rolls back alone), read connections,
pragmas, migrations recorded, and a schema newer than the code refused."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading

import pytest

from mdsync.db import SqliteDatabase as Database
from mdsync.db.sqlite import run_offline
from mdsync.db.migrate import SchemaTooNew, available
from tests.processes import MDSYNC, subprocess_env


@pytest.fixture
async def db(tmp_path):
    database = Database(tmp_path / "data" / "mdsync.db")
    await database.open()
    await database.write(lambda tx: tx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL) STRICT"))
    yield database
    await database.close()


def hold_the_writer(db: Database) -> tuple[threading.Event, asyncio.Future]:
    """Occupy the writer thread until the event is set, so the jobs queued meanwhile pile up."""
    release = threading.Event()
    started = threading.Event()

    def blocking(tx):
        started.set()
        release.wait(10)

    future = db.submit(blocking)
    assert started.wait(10)
    return release, future


def insert(tx, body: str) -> int:
    return tx.execute("INSERT INTO notes (body) VALUES (?)", (body,)).lastrowid


def insert_then_fail(tx, body: str) -> None:
    tx.execute("INSERT INTO notes (body) VALUES (?)", (body,))
    raise ValueError(f"refusing {body}")


async def test_concurrent_writes_share_batches(db):
    batches, jobs = db.stats.batches, db.stats.jobs
    release, blocker = hold_the_writer(db)
    writes = [asyncio.ensure_future(db.write(insert, f"note {n}")) for n in range(300)]
    await asyncio.sleep(0)
    release.set()
    ids = await asyncio.gather(*writes)
    await blocker
    assert len(set(ids)) == 300
    assert db.stats.jobs - jobs == 301
    # the blocker's own batch, then the 300 that queued behind it, in one or a few commits
    assert db.stats.batches - batches <= 3
    assert await db.value("SELECT count(*) FROM notes") == 300


async def test_many_writers_without_help_still_group(db):
    before = db.stats.batches
    await asyncio.gather(*(db.write(insert, f"n{n}") for n in range(500)))
    assert await db.value("SELECT count(*) FROM notes") == 500
    assert db.stats.batches - before < 500  # at least some jobs shared a commit
    assert db.stats.depth == 0


async def test_a_failing_job_rolls_back_alone(db):
    committed_callbacks: list[str] = []
    batches = db.stats.batches

    def insert_with_callback(tx, body):
        insert(tx, body)
        tx.after_commit(lambda: committed_callbacks.append(body))

    def fail_with_callback(tx, body):
        tx.after_commit(lambda: committed_callbacks.append(body))
        insert_then_fail(tx, body)

    release, blocker = hold_the_writer(db)
    first = db.submit(insert_with_callback, "first")
    broken = db.submit(fail_with_callback, "broken")
    last = db.submit(insert_with_callback, "last")
    release.set()
    await blocker
    await first
    with pytest.raises(ValueError, match="refusing broken"):
        await broken
    await last
    assert db.stats.batches - batches == 2  # blocker alone, then the three together
    bodies = [row["body"] for row in await db.all("SELECT body FROM notes ORDER BY id")]
    assert bodies == ["first", "last"]
    assert committed_callbacks == ["first", "last"]


async def test_a_constraint_violation_fails_only_its_job(db):
    release, blocker = hold_the_writer(db)
    ok = db.submit(insert, "fine")
    bad = db.submit(lambda tx: tx.execute("INSERT INTO notes (id, body) VALUES (1, NULL)"))
    also_ok = db.submit(insert, "also fine")
    release.set()
    await blocker
    assert await ok and await also_ok
    with pytest.raises(sqlite3.IntegrityError):
        await bad
    assert await db.value("SELECT count(*) FROM notes") == 2


async def test_reads_see_commits_and_cannot_write(db):
    await db.write(insert, "visible")
    assert await db.value("SELECT body FROM notes") == "visible"
    with pytest.raises(sqlite3.OperationalError):
        await db.one("INSERT INTO notes (body) VALUES ('sneaky')")
    assert await db.value("SELECT count(*) FROM notes") == 1


async def test_writer_pragmas(db):
    def pragmas(tx):
        return {name: tx.value(f"PRAGMA {name}") for name in ("journal_mode", "synchronous", "foreign_keys",
                                                               "busy_timeout")}

    assert await db.write(pragmas) == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1,
                                       "busy_timeout": 5000}


async def test_close_finishes_queued_writes(tmp_path):
    database = Database(tmp_path / "close.db")
    await database.open()
    await database.write(lambda tx: tx.execute("CREATE TABLE t (n INTEGER) STRICT"))
    pending = [database.submit(lambda tx, n=n: tx.execute("INSERT INTO t VALUES (?)", (n,))) for n in range(100)]
    await database.close()
    assert all(f.done() and f.exception() is None for f in pending)
    with pytest.raises(RuntimeError):
        database.submit(lambda tx: None)
    conn = sqlite3.connect(tmp_path / "close.db")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    conn.close()


def test_run_offline_rolls_back_a_failing_job(tmp_path):
    path = tmp_path / "offline.db"
    run_offline(path, lambda tx: tx.execute("CREATE TABLE t (n INTEGER) STRICT"))

    def half_then_fail(tx):
        tx.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        run_offline(path, half_then_fail)
    assert run_offline(path, lambda tx: tx.value("SELECT count(*) FROM t")) == 0


# -- migrations --------------------------------------------------------------------------------------
async def test_migrations_are_applied_once_and_recorded(tmp_path):
    path = tmp_path / "m.db"
    for _ in range(2):  # a second open applies nothing new
        database = Database(path)
        await database.open()
        rows = await database.all("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        await database.close()
        assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in available()]
        assert all(r["applied_at"].endswith("Z") for r in rows)
    versions = [m.version for m in available()]
    assert versions == sorted(set(versions)) and versions[0] == 1


def _from_the_future(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z')")
    conn.commit()
    conn.close()


async def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    database = Database(path)
    await database.open()
    await database.close()
    _from_the_future(path)
    database = Database(path)
    with pytest.raises(SchemaTooNew, match="9999"):
        await database.open()


def test_serve_refuses_a_newer_schema_with_a_clear_message(tmp_path):
    data = tmp_path / "data"
    env = subprocess_env(data)
    assert subprocess.run([*MDSYNC, "migrate"], env=env, capture_output=True, timeout=60).returncode == 0
    _from_the_future(data / "mdsync.db")
    result = subprocess.run([*MDSYNC, "serve", "--host", "127.0.0.1", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "schema version 9999" in result.stderr and "upgrade mdsync" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "listening" not in result.stdout
    # and the database was not touched
    conn = sqlite3.connect(data / "mdsync.db")
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == 9999
    conn.close()


# -- lookup: indexed reads on the event loop ------------------------------------------------------
async def test_lookup_sees_every_commit_and_holds_no_snapshot(db, tmp_path):
    note = await db.write(insert, "before")
    assert (await db.lookup("SELECT body FROM notes WHERE id = ?", (note,)))["body"] == "before"
    assert await db.lookup("SELECT body FROM notes WHERE id = ?", (-1,)) is None
    # another process's connection changes the row: the next lookup sees it (no cached snapshot)
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("UPDATE notes SET body = 'after' WHERE id = ?", (note,))
    assert (await db.lookup("SELECT body FROM notes WHERE id = ?", (note,)))["body"] == "after"
    # and no read transaction stays open behind it: a full checkpoint is not blocked
    busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    other.close()
    with pytest.raises(sqlite3.OperationalError):
        await db.lookup("UPDATE notes SET body = 'no'")


def test_migrations_are_numbered_one_to_n_without_gaps_or_repeats():
    # two branches landing the same number would make every database skip one of them
    versions = [m.version for m in available()]
    assert versions == list(range(1, len(versions) + 1))
