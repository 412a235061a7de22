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
from mdsync.db.migrate import SchemaTooNew, apply_pg_migrations, available
from tests import prerequisites
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


# -- the PostgreSQL migrations: the same numbers and names, the same schema -------------------------
SEARCH_INTERNALS = ("docs_fts", "docs_search")  # each engine's own search index (0012)


def test_both_engines_have_the_same_migrations():
    sqlite_side = [(m.version, m.name) for m in available("sqlite")]
    assert sqlite_side == [(m.version, m.name) for m in available("postgresql")]
    assert [version for version, _ in sqlite_side] == list(range(1, len(sqlite_side) + 1))


@pytest.fixture
def pg_database():
    """Makes an empty database on the session's PostgreSQL server (tests/pgserver.py) and connects
    to it; dropped afterwards."""
    import psycopg

    from tests import engines, pgserver

    reason = pgserver.missing_reason()
    if reason:
        prerequisites.missing(reason)
    made = []

    def database(name: str):
        url = engines.cluster().create_database(name)
        made.append((name, psycopg.connect(url, autocommit=True)))
        return made[-1][1]

    yield database
    for name, conn in made:
        conn.close()
        engines.cluster().drop_database(name)


def _sqlite_schema() -> dict:
    conn = sqlite3.connect(":memory:")
    for migration in available("sqlite"):
        conn.executescript(migration.sql)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
              if not r[0].startswith(("sqlite_", *SEARCH_INTERNALS))]
    types = {"INTEGER": "bigint", "REAL": "double precision", "BLOB": "bytea", "TEXT": "text"}
    columns, uniques, foreign_keys = set(), set(), set()
    for table in tables:
        for _, name, kind, notnull, default, pk in conn.execute(f"PRAGMA table_info({table})"):
            # a rowid alias, numbered when omitted (an identity on PostgreSQL), but for the one-row
            # tables (changes_trimmed, setup_token) whose id is always 1, written explicitly
            autoincrement = pk == 1 and kind == "INTEGER" and table not in ("changes_trimmed", "setup_token")
            columns.add((table, name, types[kind], bool(notnull or pk), default is not None or autoincrement, pk))
        for _, index, unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
            if unique and origin == "u":
                uniques.add((table, tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})"))))
        for row in conn.execute(f"PRAGMA foreign_key_list({table})"):
            foreign_keys.add((table, row[3], row[2], row[4], row[6]))
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    triggers = {r[0] for r in conn.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger'")}
    conn.close()
    return {"columns": columns, "unique constraints": uniques, "foreign keys": foreign_keys, "indexes": indexes,
            "tables with triggers": triggers}


def _postgresql_schema(conn) -> dict:
    on_delete = {"a": "NO ACTION", "c": "CASCADE", "n": "SET NULL", "r": "RESTRICT", "d": "SET DEFAULT"}
    # changes_head: PostgreSQL's feed head, which SQLite keeps in sqlite_sequence (sync/changes.py)
    skip = ("schema_migrations", "changes_head", *SEARCH_INTERNALS)
    columns = set()
    for table, name, kind, notnull, has_default, identity, pk in conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, NULL), a.attnotnull, a.atthasdef,"
            "  a.attidentity = 'd', coalesce(array_position(i.indkey::int2[], a.attnum) + 1, 0)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary"
            " WHERE c.relkind = 'r'"):
        if table not in skip:  # COLLATE NOCASE became citext
            columns.add((table, name, "text" if kind == "citext" else kind, notnull, has_default or identity, pk))
    constraints = conn.execute(
        "SELECT c.conrelid::regclass::text, c.contype, c.confrelid::regclass::text, c.confdeltype,"
        "  ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
        "        JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY o),"
        "  ARRAY(SELECT attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)"
        "        JOIN pg_attribute ON attrelid = c.confrelid AND attnum = k.n ORDER BY o)"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace AND n.nspname = 'public'"
        " WHERE c.contype IN ('u', 'f')").fetchall()
    uniques = {(t, tuple(cols)) for t, kind, _, _, cols, _ in constraints if kind == "u"}
    foreign_keys = {(t, cols[0], ref, ref_cols[0], on_delete[action])
                    for t, kind, ref, action, cols, ref_cols in constraints if kind == "f" and t not in skip}
    indexes = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
        " WHERE NOT x.indisprimary AND t.relname NOT IN ('schema_migrations', 'docs_search')"
        "  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid AND k.contype = 'u')")}
    triggers = {r[0] for r in conn.execute("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger"
                                           " WHERE NOT tgisinternal")}
    return {"columns": columns, "unique constraints": uniques, "foreign keys": foreign_keys, "indexes": indexes,
            "tables with triggers": triggers}


def test_postgresql_migrations_make_the_sqlite_schema(pg_database):
    """Every file applies to a fresh database (by the runner: each in its own transaction), and makes the tables,
    columns (INTEGER→bigint, REAL→double precision, BLOB→bytea), NOT NULLs, defaults and
    identities, primary keys, unique constraints, foreign keys with their ON DELETE, named indexes
    and triggers of the SQLite schema: the application's SQL meets the same tables on both."""
    conn = pg_database("t_migrated")
    assert [m.version for m in apply_pg_migrations(conn)] == [m.version for m in available("postgresql")]
    recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.name) for m in available("sqlite")]
    sqlite_side, pg_side = _sqlite_schema(), _postgresql_schema(conn)
    for aspect, expected in sqlite_side.items():
        assert pg_side[aspect] == expected, (aspect, sorted(pg_side[aspect] ^ expected))


def test_postgresql_schema_behaves_like_sqlite(pg_database):
    """What the types and triggers must keep: emails unique and equal ignoring case, identities,
    the search index following title, markdown, trash and purge, and purged ids retired."""
    import psycopg

    conn = pg_database("t_behaves")
    apply_pg_migrations(conn)
    conn.execute("INSERT INTO users (id, email, name, password_hash, created_at, updated_at)"
                 " VALUES ('u', 'Ada@Example.com', 'Ada', 'x', 't', 't')")
    assert conn.execute("SELECT id FROM users WHERE email = %s", ("ada@EXAMPLE.com",)).fetchone() == ("u",)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO users (id, email, name, password_hash, created_at, updated_at)"
                     " VALUES ('v', 'ADA@example.COM', 'Ada', 'x', 't', 't')")
    seqs = [conn.execute("INSERT INTO changes (workspace_id, entity, entity_id, op, at)"
                         " VALUES ('w', 'document', 'd', 'upsert', 't') RETURNING seq").fetchone()[0] for _ in range(2)]
    assert seqs[1] == seqs[0] + 1
    conn.execute("INSERT INTO workspaces (id, name, slug, created_at, updated_at) VALUES ('w', 'W', 'w', 't', 't')")

    def found(query: str) -> list[str]:
        return [r[0] for r in conn.execute("SELECT document_id FROM docs_search"
                                           " WHERE terms @@ to_tsquery('mdsync_search', %s) ORDER BY 1", (query,))]

    conn.execute("INSERT INTO documents (id, workspace_id, title, markdown, created_at, updated_at)"
                 " VALUES ('d', 'w', 'Café notes', 'Mail ada@example.com about 3.14, walrus-ish.', 't', 't')")
    assert found("'cafe':*") == found("'exam':*") == found("'14'") == found("'walrus' <-> 'ish'") == ["d"]
    conn.execute("UPDATE documents SET title = 'Renamed', markdown = 'an ibex' WHERE id = 'd'")
    assert found("'cafe':*") == [] and found("'ibex'") == found("'renamed'") == ["d"]
    conn.execute("UPDATE documents SET deleted_at = 't' WHERE id = 'd'")
    assert found("'ibex'") == []
    conn.execute("UPDATE documents SET deleted_at = NULL WHERE id = 'd'")
    assert found("'ibex'") == ["d"]
    # more distinct words than a tsvector holds (1 MB): the write succeeds, its start is indexed
    conn.execute("INSERT INTO documents (id, workspace_id, title, markdown, created_at, updated_at)"
                 " SELECT 'big', 'w', 'Big', 'opening ' || string_agg(md5(n::text), ' '), 't', 't'"
                 " FROM generate_series(1, 40000) n")
    assert found("'opening'") == ["big"]
    conn.execute("DELETE FROM workspaces WHERE id = 'w'")  # a purge's cascade
    assert conn.execute("SELECT count(*) FROM docs_search").fetchone()[0] == 0
    assert {r[0] for r in conn.execute("SELECT id FROM retired_documents WHERE workspace_id = 'w'")} == {"d", "big"}
