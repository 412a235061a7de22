"""The engine layer on both engines (tests/engines.py): the same write jobs, savepoints, rows and
`?` placeholders on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from mdsync import config
from mdsync.db import IntegrityError, database_for, read_only, run_offline
from mdsync.db.postgres import translate, translate
from tests.builders import make_settings

pytestmark = pytest.mark.both_engines

TABLE = "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, n INTEGER)"


@pytest.fixture
async def db(tmp_path):
    database = database_for(make_settings(tmp_path / "data"))
    await database.open()
    await database.write(lambda tx: tx.execute(TABLE))
    yield database
    await database.close()


async def test_rows_answer_by_position_and_by_name(db, engine):
    assert db.engine == engine
    await db.write(lambda tx: tx.execute("INSERT INTO things (id, name, n) VALUES (?, ?, ?)", (1, "a", 5)))
    row = await db.one("SELECT id, name, n FROM things WHERE name = ?", ("a",))
    assert (row[0], row["name"], row["n"]) == (1, "a", 5)
    assert dict(row) == {"id": 1, "name": "a", "n": 5}
    assert await db.value("SELECT count(*) FROM things") == 1
    assert await db.lookup("SELECT name FROM things WHERE id = ?", (2,)) is None


async def test_a_failing_job_rolls_back_alone_in_its_batch(db):
    def insert(tx, i, name):
        tx.execute("INSERT INTO things (id, name) VALUES (?, ?)", (i, name))
        return i

    results = await asyncio.gather(db.write(insert, 1, "a"), db.write(insert, 2, "a"), db.write(insert, 3, "c"),
                                   return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], IntegrityError)
    assert [r["name"] for r in await db.all("SELECT name FROM things ORDER BY id")] == ["a", "c"]


async def test_a_job_may_catch_a_refused_statement_and_go_on(db):
    def upsert_by_hand(tx):
        tx.execute("INSERT INTO things (id, name) VALUES (1, 'a')")
        try:
            with tx.attempt():
                tx.execute("INSERT INTO things (id, name) VALUES (2, 'a')")
        except IntegrityError:
            tx.execute("UPDATE things SET n = 7 WHERE name = 'a'")
        return tx.value("SELECT n FROM things WHERE name = ?", ("a",))

    assert await db.write(upsert_by_hand) == 7
    assert await db.value("SELECT n FROM things WHERE id = 1") == 7


async def test_percent_signs_and_question_marks_in_literals_survive(db):
    await db.write(lambda tx: tx.execute("INSERT INTO things (id, name) VALUES (?, '50% off?')", (1,)))
    assert await db.value("SELECT name FROM things WHERE name LIKE '%off?' AND id = ?", (1,)) == "50% off?"
    assert await db.value("SELECT name FROM things WHERE name LIKE '50%'") == "50% off?"


async def test_sums_are_numbers_as_on_sqlite(db):
    await db.write(lambda tx: tx.executemany("INSERT INTO things (id, name, n) VALUES (?, ?, ?)",
                                             [(i, f"t{i}", i) for i in range(1, 5)]))
    total = await db.value("SELECT sum(n) FROM things")
    assert total == 10 and isinstance(total, int)


async def test_after_commit_callbacks_run_once_committed(db):
    seen = []

    def job(tx):
        tx.execute("INSERT INTO things (id, name) VALUES (1, 'x')")
        tx.after_commit(lambda: seen.append("done"))

    await db.write(job)
    assert seen == ["done"]


def test_offline_jobs_and_read_only_views(tmp_path):
    settings = make_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    run_offline(settings, lambda tx: tx.execute(TABLE))
    run_offline(settings, lambda tx: tx.execute("INSERT INTO things (id, name) VALUES (?, ?)", (1, "cli")))
    with pytest.raises(ZeroDivisionError):
        run_offline(settings, lambda tx: (tx.execute("INSERT INTO things (id, name) VALUES (2, 'no')"), 1 / 0))
    with read_only(settings) as tx:
        assert [r["name"] for r in tx.all("SELECT name FROM things")] == ["cli"]
        with pytest.raises(Exception):  # noqa: B017 - each engine names its refusal differently
            tx.execute("DELETE FROM things")


def test_placeholders_are_translated_outside_quotes_and_comments():
    assert translate("SELECT ? FROM t WHERE a = ? AND b LIKE 'x?%' -- why? 100%\nAND c = ?")[0] == \
        "SELECT %s FROM t WHERE a = %s AND b LIKE 'x?%%' -- why? 100%%\nAND c = %s"
    assert translate('SELECT "odd?name" FROM t WHERE x % 2 = ?')[0] == 'SELECT "odd?name" FROM t WHERE x %% 2 = %s'


async def test_numbered_placeholders_as_sqlite_reads_them(db):
    await db.write(lambda tx: tx.executemany("INSERT INTO things (id, name, n) VALUES (?1, ?2, ?1)",
                                             [(1, "a"), (2, "b")]))
    assert await db.value("SELECT name FROM things WHERE id = ?2 AND n = ?2 AND name <> ?1", ("z", 2)) == "b"
    assert await db.write(lambda tx: tx.value("SELECT count(*) FROM things WHERE n >= ?1 AND id >= ?1", (1,))) == 2
    assert translate("SELECT ?2, '?1', ?1 -- ?3") == ("SELECT %s, '?1', %s -- ?3", (1, 0))
    with pytest.raises(ValueError):
        translate("SELECT ?1, ?")


def test_a_postgresql_url_and_a_litestream_replica_are_refused_together(tmp_path):
    with pytest.raises(config.ConfigError, match="litestream"):
        config.load(None, environ={}, overrides={"database.url": "postgresql://u@127.0.0.1/db",
                                                 "replica.url": "s3://bucket/path"})
    with pytest.raises(config.ConfigError, match="database.url"):
        config.load(None, environ={}, overrides={"database.url": "mysql://u@127.0.0.1/db"})
